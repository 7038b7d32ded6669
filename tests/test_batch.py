"""magic-remover batch: reading the jobs, output names, shared inversions, bad rows, resuming, and 2 processes."""

import csv
import functools
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from accelerate import PartialState
from PIL import Image
from tiny_components import make_test_image

import magic_remover
import magic_remover.batch as batch_module
from magic_remover.batch import Row, assign_outputs, read_jobs, read_records, repair_records
from magic_remover.cli import CommandError, main
from magic_remover.pipeline_magic_remover import MagicRemoverPipeline

PROMPT = "a photo of a red ball on the grass"
ROOT = Path(__file__).resolve().parent.parent
FAST = ("--inversion-method", "ddim")  # null-text inversion is 20x slower and not what these tests are about


@pytest.fixture
def calls(monkeypatch):
    """Counts pipeline inversions and removal calls; ``calls.interrupt_at = n`` raises KeyboardInterrupt (a kill)
    at the n-th removal call instead of making it."""

    class Calls:
        inversions = 0
        removals = 0
        interrupt_at = None

    invert, call = MagicRemoverPipeline.invert, MagicRemoverPipeline.__call__

    @functools.wraps(invert)  # the pipeline reads its own signature
    def counting_invert(self, *args, **kwargs):
        Calls.inversions += 1
        return invert(self, *args, **kwargs)

    @functools.wraps(call)
    def counting_call(self, *args, **kwargs):
        Calls.removals += 1
        if Calls.removals == Calls.interrupt_at:
            raise KeyboardInterrupt
        return call(self, *args, **kwargs)

    monkeypatch.setattr(MagicRemoverPipeline, "invert", counting_invert)
    monkeypatch.setattr(MagicRemoverPipeline, "__call__", counting_call)
    return Calls


def write_csv(path: Path, rows: list[dict], fields=("image", "prompt", "target")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def images(folder: Path, count: int, size=(32, 32)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for seed in range(count):
        make_test_image(size, seed=seed).save(folder / f"img{seed}.png")
        names.append(f"img{seed}.png")
    return names


def batch(jobs, outdir, model, *extra) -> int:
    return main(["batch", str(jobs), "-o", str(outdir), "--model", model, "--steps", "3", "--quiet", *FAST, *extra])


def records_by_row(outdir: Path) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {}
    for record in read_records(outdir / "results.jsonl"):
        grouped.setdefault(record["row"], []).append(record)
    return grouped


# ------------------------------------------------------------------------------------------------------------
# Reading the jobs and naming the outputs (no model)
# ------------------------------------------------------------------------------------------------------------


def test_read_jobs_from_csv_jsonl_and_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    csv_path = write_csv(tmp_path / "sub" / "jobs.csv", [
        {"image": "a.png", "prompt": PROMPT, "target": "ball", "mask": "", "output": "x/a.png"},
        {"image": "/abs/b.png", "prompt": PROMPT, "target": "grass", "mask": "m.png", "output": ""},
        {"image": "c.png", "prompt": "", "target": "ball", "mask": "", "output": ""},
    ], fields=("image", "prompt", "target", "mask", "output"))  # fmt: skip
    rows = read_jobs(csv_path)
    assert [r.image for r in rows] == [tmp_path / "sub" / "a.png", Path("/abs/b.png"), tmp_path / "sub" / "c.png"]
    assert rows[0].output == Path("x/a.png") and rows[1].output is None  # outputs: relative to OUTDIR, later
    assert rows[1].mask == tmp_path / "sub" / "m.png" and rows[0].mask is None
    assert rows[0].error is None and "missing prompt" in rows[2].error
    assert "image path lies outside the manifest's folder" in rows[1].error  # an absolute path elsewhere

    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(
        json.dumps({"image": "a.png", "prompt": PROMPT, "target": "ball"}) + "\n\n"
        + "{not json\n" + json.dumps({"image": "b.png", "prompt": PROMPT, "target": "ball", "colour": "red"}) + "\n"
        + json.dumps(["a list"]) + "\n"
    )  # fmt: skip
    rows = read_jobs(jsonl)
    assert [r.number for r in rows] == [1, 3, 4, 5]  # line numbers, blank lines skipped
    assert rows[0].error is None and rows[0].image == tmp_path / "a.png" and rows[0].target == "ball"
    assert "not a JSON object" in rows[1].error and "unknown field(s) colour" in rows[2].error
    assert "not a JSON object" in rows[3].error

    folder = tmp_path / "photos"
    images(folder, 2)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".img9.tmp.png").write_bytes(b"a temporary")
    rows = read_jobs(folder, prompt=PROMPT, target="ball")
    assert [r.image.name for r in rows] == ["img0.png", "img1.png"] and {r.target for r in rows} == {"ball"}


@pytest.mark.parametrize("case,message", [
    ("missing column", "it needs image, prompt, target"), ("unknown column", "unknown: colour"),
    ("suffix", "must end in .csv or .jsonl"), ("folder without prompt", "give --prompt and --target"),
    ("manifest with prompt", "for a folder of images"), ("absent", "do not exist"), ("empty", "holds no rows"),
])  # fmt: skip
def test_read_jobs_refuses_a_bad_manifest_as_a_whole(tmp_path, case, message):
    path, prompt = tmp_path / "jobs.csv", None
    if case == "missing column":
        write_csv(path, [{"image": "a.png", "prompt": PROMPT}], fields=("image", "prompt"))
    elif case == "unknown column":
        write_csv(path, [], fields=("image", "prompt", "target", "colour"))
    elif case == "suffix":
        path = tmp_path / "jobs.txt"
        path.write_text("image,prompt,target\n")
    elif case == "folder without prompt":
        path = tmp_path
    elif case == "manifest with prompt":
        write_csv(path, [{"image": "a.png", "prompt": PROMPT, "target": "ball"}])
        prompt = PROMPT
    elif case == "empty":
        write_csv(path, [])
    with pytest.raises(CommandError, match=message):
        read_jobs(path, prompt=prompt)


def test_derived_output_names_are_deterministic_and_never_collide(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x-no-ball.png").write_bytes(b"an input that lives in OUTDIR")

    def rows():
        return [Row(1, tmp_path / "a" / "x.png", PROMPT, "ball"), Row(2, tmp_path / "b" / "x.jpg", PROMPT, "ball"),
                Row(3, tmp_path / "a" / "x.png", PROMPT, "red ball"), Row(4, out / "x-no-ball.png", PROMPT, "grass"),
                Row(5, tmp_path / "a" / "y.png", PROMPT, "ball", output=Path("y-no-ball.png"))]  # fmt: skip

    first = rows()
    assign_outputs(first, out, save_masks=True, protected=[])
    names = [r.output.name for r in first]
    # row 1 cannot take x-no-ball.png (row 4's input); rows 1 and 2 share a stem; row 5 keeps the manifest's name
    assert names == ["x-no-ball-2.png", "x-no-ball-3.png", "x-no-red-ball.png", "x-no-ball-no-grass.png",
                     "y-no-ball.png"]
    assert [r.mask_output.name for r in first][:2] == ["x-no-ball-2-mask.png", "x-no-ball-3-mask.png"]
    assert all(r.error is None for r in first)
    every = [p for r in first for p in r.outputs]
    assert len(set(every)) == len(every)
    again = rows()
    assign_outputs(again, out, save_masks=True, protected=[])
    assert [r.outputs for r in again] == [r.outputs for r in first]  # a rerun finds the same files


def test_a_manifest_output_that_is_an_input_or_taken_is_refused(tmp_path):
    out = tmp_path / "out"
    rows = [Row(1, out / "a.png", PROMPT, "ball", output=Path("a.png")),  # would overwrite its own input
            Row(2, tmp_path / "b.png", PROMPT, "ball", mask=tmp_path / "m.png", output=tmp_path / "m.png"),
            Row(3, tmp_path / "c.png", PROMPT, "ball", output=Path("same.png")),
            Row(4, tmp_path / "d.png", PROMPT, "ball", output=Path("same.png")),
            Row(5, tmp_path / "e.png", PROMPT, "ball", output=Path("results.jsonl"))]  # fmt: skip
    assign_outputs(rows, out, save_masks=False, protected=[out / "results.jsonl"])
    assert "would overwrite the input" in rows[0].error and "would overwrite the input" in rows[1].error
    assert rows[2].error is None and "also the output of row 3" in rows[3].error
    assert "would overwrite the input" in rows[4].error


def test_a_torn_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"row": 1, "status": "done"}) + "\n" + '{"row": 2, "sta')
    assert read_records(path) == [{"row": 1, "status": "done"}]
    repair_records(path)
    assert path.read_text() == json.dumps({"row": 1, "status": "done"}) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Running on a tiny model
# ------------------------------------------------------------------------------------------------------------


def test_one_inversion_per_image_is_shared_by_its_targets(tmp_path, tiny_model, calls):
    names = images(tmp_path, 2)
    jobs = write_csv(tmp_path / "jobs.csv", [
        {"image": names[0], "prompt": PROMPT, "target": "ball"},
        {"image": names[1], "prompt": PROMPT, "target": "ball"},
        {"image": names[0], "prompt": PROMPT, "target": "grass"},  # same image and prompt as row 1, not adjacent
        {"image": names[0], "prompt": PROMPT, "target": "red ball"},
    ])  # fmt: skip
    assert batch(jobs, tmp_path / "out", tiny_model, "--save-masks") == 0
    assert calls.inversions == 2 and calls.removals == 4
    produced = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert produced == sorted(["results.jsonl"] + [f"{stem}{end}" for stem in
                              ["img0-no-ball", "img1-no-ball", "img0-no-grass", "img0-no-red-ball"]
                              for end in (".png", "-mask.png")])  # fmt: skip
    assert Image.open(tmp_path / "out" / "img0-no-grass-mask.png").mode == "L"
    records = records_by_row(tmp_path / "out")
    assert sorted(records) == [1, 2, 3, 4] and all(len(r) == 1 and r[0]["status"] == "done" for r in records.values())
    record = records[3][0]
    assert record["output"] == "img0-no-grass.png" and record["mask_output"] == "img0-no-grass-mask.png"
    assert record["settings"]["num_inference_steps"] == 3 and record["settings"]["inversion_method"] == "ddim"
    assert record["seconds"] > 0 and record["error"] is None
    assert records[1][0]["inversion_seconds"] == records[3][0]["inversion_seconds"]  # one inversion for both


def test_bad_rows_are_reported_and_the_others_done(tmp_path, tiny_model, calls, capsys):
    names = images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    before = {name: (tmp_path / name).read_bytes() for name in names}
    jobs = write_csv(tmp_path / "jobs.csv", [
        {"image": names[0], "prompt": PROMPT, "target": "ball", "output": ""},
        {"image": "broken.png", "prompt": PROMPT, "target": "ball", "output": ""},
        {"image": names[1], "prompt": PROMPT, "target": "dog", "output": ""},
        {"image": names[1], "prompt": PROMPT, "target": "ball", "output": str(tmp_path / names[0])},
        {"image": "nowhere.png", "prompt": PROMPT, "target": "ball", "output": ""},
        {"image": names[1], "prompt": PROMPT, "target": "grass", "output": ""},
    ], fields=("image", "prompt", "target", "output"))  # fmt: skip
    assert batch(jobs, tmp_path / "out", tiny_model) == 1
    err = capsys.readouterr().err
    assert "row 2" in err and "row 3" in err and "'dog' does not occur" in err
    assert "row 4" in err and "would overwrite the input" in err and "row 5" in err and "does not exist" in err
    records = records_by_row(tmp_path / "out")
    status = {row: r[-1]["status"] for row, r in records.items()}
    assert status == {1: "done", 2: "failed", 3: "failed", 4: "failed", 5: "failed", 6: "done"}
    assert "cannot read" in records[2][0]["error"]
    assert {name: (tmp_path / name).read_bytes() for name in names} == before  # no input touched
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img0-no-ball.png", "img1-no-grass.png"]
    assert calls.inversions == 2  # the refused rows cost no model pass; the broken image fails at reading


def test_a_killed_run_resumes_with_nothing_lost_and_nothing_done_twice(tmp_path, tiny_model, calls, capsys):
    names = images(tmp_path, 3)
    jobs = write_csv(tmp_path / "jobs.csv", [{"image": n, "prompt": PROMPT, "target": t}
                                             for n in names for t in ("ball", "grass")])  # fmt: skip
    out = tmp_path / "out"
    calls.interrupt_at = 4  # killed while removing the second target of the second image
    assert batch(jobs, out, tiny_model) == 130
    assert "interrupted after 3 row(s)" in capsys.readouterr().err
    assert sorted(records_by_row(out)) == [1, 2, 3]  # every finished row recorded at once
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert sorted(written) == ["img0-no-ball.png", "img0-no-grass.png", "img1-no-ball.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind

    calls.inversions = calls.removals = 0
    calls.interrupt_at = None
    assert main(["batch", str(jobs), "-o", str(out), "--model", tiny_model, "--steps", "3", *FAST]) == 0
    said = capsys.readouterr().out
    assert "3 skipped (outputs complete)" in said and "3 done, 3 skipped, 0 failed" in said
    assert calls.removals == 3 and calls.inversions == 2  # img1 again (its inversion was lost in the kill), img2
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written  # nothing written twice
    records = records_by_row(out)
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    assert all(len(r) == 1 and r[0]["status"] == "done" for r in records.values())
    assert len(list(out.glob("*.png"))) == 6

    lines = (out / "results.jsonl").read_text().splitlines()  # a kill between a write and its record:
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert batch(jobs, out, tiny_model) == 0 and calls.removals == 3  # nothing redone
    assert [r["status"] for r in records_by_row(out)[int(json.loads(lines[-1])["row"])]] == ["skipped"]


def test_a_row_is_recorded_done_only_once_its_image_is_saved(tmp_path, tiny_model, monkeypatch):
    """A kill while the second row's image is written (after its removal) leaves no "done" record without its image;
    the same command then finishes that row."""
    names = images(tmp_path, 1)
    jobs = write_csv(tmp_path / "jobs.csv", [{"image": names[0], "prompt": PROMPT, "target": t}
                                             for t in ("ball", "grass")])  # fmt: skip
    out = tmp_path / "out"
    write, writes = batch_module.write_image_atomically, []

    def killed_at_the_second_write(*args, **kwargs):
        writes.append(args[1])
        if len(writes) == 2:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    monkeypatch.setattr(batch_module, "write_image_atomically", killed_at_the_second_write)
    assert batch(jobs, out, tiny_model) == 130
    assert len(writes) == 2
    for record in read_records(out / "results.jsonl"):
        if record["status"] == "done":
            assert (out / record["output"]).is_file(), record
    assert [r["status"] for r in records_by_row(out).get(2, [])] == []  # the row whose image was not saved
    monkeypatch.setattr(batch_module, "write_image_atomically", write)
    assert batch(jobs, out, tiny_model) == 0
    assert [r[-1]["status"] for r in records_by_row(out).values()] == ["done", "done"]
    assert (out / "img0-no-grass.png").is_file()


def test_a_torn_results_line_is_repaired_before_the_next_record(tmp_path, tiny_model):
    """A kill while a record was written leaves a torn last line: the next run's records start on their own line."""
    names = images(tmp_path, 1)
    jobs = write_csv(tmp_path / "jobs.csv", [{"image": names[0], "prompt": PROMPT, "target": "ball"}])
    out = tmp_path / "out"
    assert batch(jobs, out, tiny_model) == 0
    results = out / "results.jsonl"
    line = results.read_text()
    results.write_text(line[: len(line) // 2])  # the only record, torn: row 1's output exists but is unrecorded
    assert batch(jobs, out, tiny_model) == 0
    lines = results.read_text().splitlines()
    assert [json.loads(text)["status"] for text in lines] == ["skipped"]  # every line whole, the torn one gone


def test_large_inputs_are_processed_at_max_size_and_returned_at_their_size(tmp_path, tiny_model):
    make_test_image((48, 40)).save(tmp_path / "wide.png")
    size = Image.open(tmp_path / "wide.png").size
    assert max(size) == 48
    assert main(["batch", str(tmp_path), "--prompt", PROMPT, "--target", "ball", "-o", str(tmp_path / "out"),
                 "--model", tiny_model, "--steps", "3", "--max-size", "24", "--quiet", "--save-masks", *FAST]) == 0
    assert Image.open(tmp_path / "out" / "wide-no-ball.png").size == size
    assert Image.open(tmp_path / "out" / "wide-no-ball-mask.png").size == size
    (record,) = read_records(tmp_path / "out" / "results.jsonl")
    assert sorted(record["processed_size"]) == [20, 24] and record["settings"]["max_size"] == 24


def test_the_input_folder_is_refused_as_outdir(tmp_path, tiny_model, capsys):
    images(tmp_path, 1)
    assert main(["batch", str(tmp_path), "--prompt", PROMPT, "--target", "ball", "-o", str(tmp_path)]) == 2
    assert "is the folder of input images" in capsys.readouterr().err


def test_help_lists_batch_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "batch" in text and "magic-remover batch jobs.csv -o removed/" in text and "accelerate launch" in text


# ------------------------------------------------------------------------------------------------------------
# Two processes through accelerate's own launcher
# ------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_accelerate_processes_equal_one_process_image_for_image(tmp_path, tiny_model):
    names = images(tmp_path, 3)
    rows = [{"image": n, "prompt": PROMPT, "target": "ball"} for n in names]
    rows.insert(1, {"image": names[0], "prompt": PROMPT, "target": "grass"})
    jobs = write_csv(tmp_path / "jobs.csv", rows)
    assert batch(jobs, tmp_path / "single", tiny_model, "--threads", "1") == 0

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    # Without CUDA, --multi_gpu makes accelerate start its processes through torchrun; batch runs them on the CPU over
    # gloo. (accelerate's --cpu alone starts one process unless an MPI hostfile is given.)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               "-m", "magic_remover.cli", "batch", str(jobs), "-o", str(tmp_path / "two"), "--model", tiny_model,
               "--steps", "3", "--threads", "1", "--quiet", *FAST]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    single = sorted(p.name for p in (tmp_path / "single").glob("*.png"))
    assert len(single) == 4 and sorted(p.name for p in (tmp_path / "two").glob("*.png")) == single
    for name in single:  # the same image for each row; not byte for byte: on some CPUs (AMD EPYC) the processes'
        # oneDNN kernels round differently from the test process's (measured: 1 level of 8 bits, <= 0.1% of pixels),
        # while a row done with another target or image differs in far more pixels, by far more
        two = np.asarray(Image.open(tmp_path / "two" / name), dtype=np.int16)
        one = np.asarray(Image.open(tmp_path / "single" / name), dtype=np.int16)
        assert two.shape == one.shape and np.abs(two - one).max() <= 1, name
        assert (two != one).mean() <= 0.01, name
    records = read_records(tmp_path / "two" / "results.jsonl")
    assert Counter(r["row"] for r in records) == Counter({1: 1, 2: 1, 3: 1, 4: 1})  # none twice, none skipped
    assert {r["status"] for r in records} == {"done"} and {r["process"] for r in records} == {0, 1}
    by_row = {r["row"]: r["process"] for r in records}
    assert by_row[1] == by_row[2]  # the two targets of img0 stayed in one process, sharing its inversion
    assert not list((tmp_path / "two").glob("results.process-*"))  # merged into results.jsonl


@pytest.mark.skipif(not (Path(magic_remover.EMBEDDED_MODEL) / "model_index.json").is_file(),
                    reason="the embedded model has not been trained into this checkout")  # fmt: skip
def test_batch_runs_on_the_embedded_model_with_its_tuned_settings(tmp_path, calls):
    from magic_remover.scenes import make_scene

    scene = make_scene(5, size=64, num_objects=2)
    scene.image.save(tmp_path / "scene.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"image": "scene.png", "prompt": scene.caption, "target": o.shape}) + "\n"
                            for o in scene.objects))  # fmt: skip
    assert main(["batch", str(jobs), "-o", str(tmp_path / "out"), "--steps", "3", "--quiet", *FAST]) == 0
    assert calls.inversions == 1 and calls.removals == 2
    records = read_records(tmp_path / "out" / "results.jsonl")
    assert [r["status"] for r in records] == ["done", "done"]
    assert records[0]["settings"]["keep_input_outside_attention_mask"] is True  # the model's tuned settings
    for record in records:
        assert Image.open(tmp_path / "out" / record["output"]).size == (64, 64)


def test_batch_inversion_choices_are_the_pipelines():
    from magic_remover.batch import BATCH_INVERSION_METHODS
    from magic_remover.inversion import INVERSION_METHODS

    assert sorted(BATCH_INVERSION_METHODS) == sorted(INVERSION_METHODS)


class _OneOfTwoProcesses:
    """What accelerate's ``PartialState`` is to process ``index`` of two, with accelerate's own split: the
    processes run one after the other here, so the test sees each one's share without a launcher."""

    num_processes = 2
    device = "cpu"
    split_between_processes = PartialState.split_between_processes

    def __init__(self, index: int):
        self.process_index, self.is_main_process = index, index == 0

    def wait_for_everyone(self):
        pass


def test_two_processes_share_the_rows_without_overlap_or_gap_and_keep_groups_whole(tmp_path, tiny_model, monkeypatch):
    names = images(tmp_path, 3)
    rows = [{"image": n, "prompt": PROMPT, "target": t} for n in names for t in ("ball", "grass")]
    rows.append({"image": names[1], "prompt": PROMPT, "target": "red ball"})  # groups of 2, 3 and 2 rows
    jobs = write_csv(tmp_path / "jobs.csv", rows)
    taken = []  # (process, row numbers of one group), instead of running the group

    def run_group(pipe, group, settings, outdir, results, process, done_so_far, say, prefix):
        taken.append((process, [row.number for row in group]))

    monkeypatch.setattr(batch_module, "_run_group", run_group)
    for index in (0, 1):
        monkeypatch.setattr(batch_module, "process_state", functools.partial(_OneOfTwoProcesses, index))
        assert batch(jobs, tmp_path / "out", tiny_model) == 0
    every = [number for _, numbers in taken for number in numbers]
    assert sorted(every) == list(range(1, len(rows) + 1))  # each row once: none in both processes, none dropped
    assert {process for process, _ in taken} == {0, 1}
    image_of = {number: rows[number - 1]["image"] for number in every}
    process_of = {number: process for process, numbers in taken for number in numbers}
    for number, image in image_of.items():  # an image's rows share one process (and its one inversion)
        assert {process_of[n] for n in image_of if image_of[n] == image} == {process_of[number]}
