"""The catalogue's hostile inputs (issue 25): inputs that try to run code, write outside their folder, lose records,
give a silently wrong result or crash. Each row names its class (security, data loss, silent wrong, poor answer)
and asserts the outcome the README's table gives; every row failed on the code before issue 25.

The pipeline-call rows of the issue (no guided step, duplicate targets, two threads on one pipeline, a folder whose
defaults ask for latents) and the web page's rows are tested beside that code (test_inputs.py, test_ui.py).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPT
from test_batch import write_csv
from test_catalogue import PassCounter, counter, tiny  # noqa: F401  (fixtures: the catalogue's tiny pipeline, counted)
from tiny_components import make_test_image, tiny_components

import magic_remover.batch as batch_module
import magic_remover.cli as cli_module
from magic_remover import MagicRemoverInversion, MagicRemoverPipeline
from magic_remover.batch import Row, assign_outputs, output_lock, read_records, repair_records
from magic_remover.cli import CommandError, main
from magic_remover.images import MAX_IMAGE_PIXELS, load_image_rgb, load_mask
from magic_remover.inversion import model_fingerprint

QUICK = dict(num_inference_steps=3, method="ddim")


@pytest.fixture
def run(tmp_path, tiny, monkeypatch, capsys):
    """Runs ``magic-remover`` in ``tmp_path`` with the tiny pipeline in place of every model load."""
    loads = []

    def load(model, threads=None, device=None, trust_remote_code=False):
        loads.append(model)
        return tiny

    monkeypatch.setattr(cli_module, "load_pipeline", load)
    monkeypatch.setattr(batch_module, "load_pipeline", load)
    monkeypatch.chdir(tmp_path)
    make_test_image((32, 32)).save(tmp_path / "photo.png")

    def command(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_info:  # argparse
            code = exit_info.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    command.loads = loads
    return command


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


def remove_args(*extra, output="out.png", image="photo.png"):
    return ["remove", image, "--prompt", PROMPT, "--target", "ball", "-o", output, "--steps", "3", "--model", "tiny",
            *extra]  # fmt: skip


def batch_args(jobs, outdir="out", *extra):
    return ["batch", jobs, "-o", outdir, "--model", "tiny", "--steps", "3", "--quiet", "--inversion-method", "ddim",
            *extra]  # fmt: skip


def write_manifest(path: Path, rows: list[dict], encoding="utf-8") -> Path:
    columns = ["image", "prompt", "target", "output"]
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def png_claiming(path: Path, width: int, height: int, rows: int) -> Path:
    """A PNG whose header claims ``width x height`` but whose data holds ``rows`` grey rows (a complete zlib stream)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * (3 * width) for _ in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Security: no code runs from a model folder without trust_remote_code; nothing is written outside -o
# ---------------------------------------------------------------------------------------------------------------

EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from diffusers import DDIMScheduler


class EvilScheduler(DDIMScheduler):
    pass
"""


@pytest.fixture
def folder_with_custom_component(sd_folder, tmp_path):
    """A folder saved by MagicRemoverPipeline.save_pretrained (this package's exact code) whose scheduler is a custom
    module beside it: loading it without trust must not import that module."""
    folder = tmp_path / "model"
    MagicRemoverPipeline.from_pretrained(sd_folder).save_pretrained(folder)
    marker = tmp_path / "the-module-ran"
    (folder / "scheduler" / "evil_scheduler.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["evil_scheduler", "EvilScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder, marker


def test_security_custom_component_beside_our_code_does_not_run_through_the_api(folder_with_custom_component):
    folder, marker = folder_with_custom_component
    with pytest.raises(ValueError, match="trust_remote_code"):
        MagicRemoverPipeline.from_pretrained(folder)
    assert not marker.exists(), "the folder's module ran without trust_remote_code"


def test_security_custom_component_does_not_run_through_the_cli(folder_with_custom_component, tmp_path, monkeypatch, capsys):
    folder, marker = folder_with_custom_component
    make_test_image((32, 32)).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    code = main(["remove", "photo.png", "--prompt", PROMPT, "--target", "ball", "-o", "out.png", "--model", str(folder),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-remote-code" in one_line(err)
    assert not marker.exists() and not (tmp_path / "out.png").exists()


def test_security_a_folder_with_our_exact_code_loads_as_the_installed_class(sd_folder, tmp_path, monkeypatch):
    """Nothing of the folder is imported: the installed class is used (before, the folder's copy was imported under
    an implicit trust_remote_code=True)."""
    import diffusers.pipelines.pipeline_loading_utils as loading_utils

    folder = tmp_path / "saved"
    MagicRemoverPipeline.from_pretrained(sd_folder).save_pretrained(folder)
    imported = []
    dynamic_import = loading_utils.get_class_from_dynamic_module
    monkeypatch.setattr(loading_utils, "get_class_from_dynamic_module",
                        lambda *args, **kwargs: imported.append(args) or dynamic_import(*args, **kwargs))  # fmt: skip
    assert type(MagicRemoverPipeline.from_pretrained(folder)) is MagicRemoverPipeline
    assert imported == []


@pytest.mark.parametrize("output", ["../escape.png", "sub/../../escape.png", "ABSOLUTE", "link/escape.png"],
                         ids=["dot-dot", "dot-dot inside a folder", "absolute", "symlinked parent"])  # fmt: skip
def test_security_manifest_outputs_stay_inside_outdir(run, tmp_path, counter, output):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(outside)
    output = str(outside / "escape.png") if output == "ABSOLUTE" else output
    (outside / "escape.png").write_bytes(b"keep me") if output.startswith("/") else None
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball",
                                                   "output": output}])  # fmt: skip
    code, out, err = run(*batch_args(jobs))
    assert code == 1 and "is outside -o" in one_line(err)
    assert not (tmp_path / "escape.png").exists() and sorted(p.name for p in outside.iterdir()) in ([], ["escape.png"])
    if output.startswith("/"):
        assert (outside / "escape.png").read_bytes() == b"keep me"
    assert counter.total == 0  # refused before any model work
    (record,) = read_records(tmp_path / "out" / "results.jsonl")
    assert record["status"] == "failed" and "outside -o" in record["error"]


def test_security_results_file_that_is_a_link_is_refused(run, tmp_path, counter):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere.jsonl").write_text("")
    (tmp_path / "out" / "results.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball"}])
    code, out, err = run(*batch_args(jobs))
    assert code == 2 and "symbolic link" in one_line(err)
    assert (tmp_path / "elsewhere.jsonl").read_text() == "" and counter.total == 0 and run.loads == []


@pytest.mark.parametrize("linked", ["README.md", "pipeline.py"])
def test_security_hub_export_does_not_write_through_a_link(tmp_path, capsys, linked):
    from magic_remover.hub import export

    folder = tmp_path / "code"
    export(folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (folder / linked).unlink()
    (folder / linked).symlink_to(secret)
    assert main(["hub", "export", str(folder), "--force"]) == 2
    assert "symbolic link" in one_line(capsys.readouterr().err)
    assert secret.read_text() == "token"


def test_security_hub_push_does_not_upload_what_a_link_points_to(tmp_path):
    from magic_remover.hub import HubError, export, push

    folder = tmp_path / "code"
    export(folder)
    (tmp_path / "token").write_text("hf_secret")
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to(tmp_path / "token")
    # refused before any request: the endpoint is a closed port, so a request would fail with another message
    with pytest.raises(HubError, match="symbolic link"):
        push("user/repo", directory=folder, token="hf_dummy", endpoint="http://127.0.0.1:9")


# ---------------------------------------------------------------------------------------------------------------
# Data loss: nothing that is not a regular file is replaced; no complete record is dropped
# ---------------------------------------------------------------------------------------------------------------


def test_data_loss_remove_never_replaces_a_fifo_even_with_force(run, tmp_path, counter):
    os.mkfifo(tmp_path / "pipe.png")
    code, out, err = run(*remove_args("--force", output="pipe.png"))
    assert code == 2 and "not a regular file" in one_line(err)
    assert (tmp_path / "pipe.png").is_fifo() and counter.total == 0


def test_data_loss_remove_never_replaces_a_link_even_with_force(run, tmp_path, counter):
    (tmp_path / "kept.png").write_bytes(b"keep me")
    (tmp_path / "link.png").symlink_to(tmp_path / "kept.png")
    code, out, err = run(*remove_args("--force", output="link.png"))
    assert code == 2 and "symbolic link" in one_line(err)
    assert (tmp_path / "link.png").is_symlink() and (tmp_path / "kept.png").read_bytes() == b"keep me"


def test_data_loss_batch_never_replaces_a_fifo(run, tmp_path, counter):
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "fifo.png")
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball",
                                                   "output": "fifo.png"}])  # fmt: skip
    code, out, err = run(*batch_args(jobs))
    assert code == 1 and "not a regular file" in one_line(err)
    assert (tmp_path / "out" / "fifo.png").is_fifo() and counter.total == 0


def test_data_loss_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    first, last = {"row": 1, "status": "done"}, {"row": 2, "status": "done"}
    path.write_text(json.dumps(first) + "\n" + json.dumps(last))  # killed between the record and its newline
    assert read_records(path) == [first, last]
    repair_records(path)
    assert path.read_text() == json.dumps(first) + "\n" + json.dumps(last) + "\n"


def test_data_loss_a_rerun_does_not_turn_a_kept_record_into_skipped(run, tmp_path):
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball"}])
    assert run(*batch_args(jobs))[0] == 0
    results = tmp_path / "out" / "results.jsonl"
    results.write_text(results.read_text().rstrip("\n"))  # the only record, whole, its newline lost
    assert run(*batch_args(jobs))[0] == 0
    assert [r["status"] for r in read_records(results)] == ["done"]


# ---------------------------------------------------------------------------------------------------------------
# Silent wrong results
# ---------------------------------------------------------------------------------------------------------------


def exif_rotated(image: PIL.Image.Image, path: Path, orientation: int = 6) -> Path:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation  # Orientation: "rotate 90 CW to display"
    image.save(path, exif=exif)
    return path


def test_silent_wrong_a_mask_with_exif_orientation_is_rotated_by_remove_as_by_batch(run, tmp_path, tiny, monkeypatch):
    image = make_test_image((32, 48))  # not square: an unrotated mask has the wrong size
    exif_rotated(image, tmp_path / "photo.jpg")
    stored = np.zeros((32, 48), np.uint8)
    stored[:, :10] = 255
    exif_rotated(PIL.Image.fromarray(stored), tmp_path / "mask.png")
    seen = {}

    def capture(self, *args, **kwargs):
        seen["mask"] = kwargs["mask_image"]
        raise ValueError("captured")

    monkeypatch.setattr(type(tiny), "__call__", capture)
    run(*remove_args("--mask", "mask.png", image="photo.jpg"))
    expected = load_mask(tmp_path / "mask.png")  # what batch reads
    assert expected.size == load_image_rgb(tmp_path / "photo.jpg").size == (32, 48)
    assert np.array_equal(np.asarray(seen["mask"]), np.asarray(expected))


def test_silent_wrong_two_batch_runs_on_one_outdir_refuse_the_second(run, tmp_path, counter):
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball"}])
    with output_lock(tmp_path / "out"):  # a first run holds -o
        code, out, err = run(*batch_args(jobs))
    assert code == 2 and "Another batch run is writing into -o" in one_line(err)
    assert counter.total == 0 and not (tmp_path / "out" / "results.jsonl").exists()
    assert run(*batch_args(jobs))[0] == 0  # released with the first run


def test_a_lock_held_by_a_killed_run_does_not_block(run, tmp_path):
    (tmp_path / "out").mkdir()
    script = ("import os, signal, sys; from pathlib import Path; from magic_remover.batch import output_lock\n"
              "with output_lock(Path(sys.argv[1])):\n    os.kill(os.getpid(), signal.SIGKILL)")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], env=env)
    assert killed.returncode == -9
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball"}])
    assert run(*batch_args(jobs))[0] == 0


@pytest.fixture(scope="module")
def other_checkpoint():
    """The tiny architecture with other weights: what another fine-tune of the same base looks like."""
    pipeline = MagicRemoverPipeline(**tiny_components(seed=1))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_silent_wrong_an_inversion_used_with_another_checkpoint_is_refused(tiny, other_checkpoint, tmp_path):
    inversion = tiny.invert(make_test_image(), PROMPT, **QUICK)
    passes = PassCounter(other_checkpoint)
    try:
        with pytest.raises(ValueError, match="another model") as refused:
            other_checkpoint(inversion=inversion, target="ball", num_inference_steps=3, inversion_method="ddim")
    finally:
        passes.remove()
    assert inversion.model_fingerprint in str(refused.value)
    assert model_fingerprint(other_checkpoint.unet, other_checkpoint.text_encoder, other_checkpoint.vae) in str(refused.value)
    assert passes.total == 0
    inversion.save(tmp_path / "inv.safetensors")
    with pytest.raises(ValueError, match="another model"):
        MagicRemoverInversion.load(tmp_path / "inv.safetensors", other_checkpoint)
    assert MagicRemoverInversion.load(tmp_path / "inv.safetensors", tiny).model_fingerprint == inversion.model_fingerprint


def test_silent_wrong_an_inversion_used_with_another_architecture_is_refused_not_a_torch_error(tiny, tmp_path):
    from diffusers import UNet2DConditionModel

    components = tiny_components()
    config = dict(components["unet"].config)
    config["cross_attention_dim"] = 48  # another text width: before, "mat1 and mat2 shapes cannot be multiplied"
    components["unet"] = UNet2DConditionModel.from_config(config)
    wider = MagicRemoverPipeline(**components)
    inversion = tiny.invert(make_test_image(), PROMPT, **QUICK)
    with pytest.raises(ValueError, match="another model"):
        wider(inversion=inversion, target="ball", num_inference_steps=3, inversion_method="ddim")


def test_a_float16_copy_of_the_model_has_the_same_fingerprint():
    """An inversion moved to a half-precision copy of its pipeline is still that model's."""
    fresh, cast = tiny_components(), tiny_components()
    reference = model_fingerprint(fresh["unet"], fresh["text_encoder"], fresh["vae"])
    assert model_fingerprint(cast["unet"].half(), cast["text_encoder"].half(), cast["vae"].half()) == reference


def test_every_saved_inversion_setting_round_trips_and_gives_the_same_result_bit_for_bit(tiny, tmp_path):
    settings = dict(num_inference_steps=4, guidance_scale=5.5, clip_skip=1, cross_attention_kwargs={"scale": 0.7})
    inversion = tiny.invert(make_test_image(), PROMPT, method="null-text", num_inner_steps=2, **settings)
    inversion.save(tmp_path / "inv.safetensors")
    loaded = MagicRemoverInversion.load(tmp_path / "inv.safetensors")
    for name in ("prompt", "num_inference_steps", "guidance_scale", "method", "image_size", "processing_size",
                 "final_losses", "clip_skip", "lora_scale", "model_fingerprint", "model_name"):  # fmt: skip
        assert getattr(loaded, name) == getattr(inversion, name), name
    for name in ("latents", "null_embeddings", "prompt_embeds", "timesteps"):
        assert torch.equal(getattr(loaded, name), getattr(inversion, name)), name
    call = dict(target="ball", inversion_method="null-text", output_type="np", **settings)
    in_memory = tiny(inversion=inversion, generator=torch.Generator().manual_seed(0), **call).images
    from_file = tiny(inversion=loaded, generator=torch.Generator().manual_seed(0), **call).images
    assert np.array_equal(in_memory, from_file)
    with pytest.raises(ValueError, match="clip_skip"):  # and each one is used: another value is refused
        tiny(inversion=loaded, **{**call, "clip_skip": None})


def test_silent_wrong_a_png_with_missing_rows_is_refused_not_padded_with_black(run, tmp_path, counter):
    png_claiming(tmp_path / "short.png", 2000, 2000, rows=4)
    code, out, err = run(*remove_args(image="short.png"))
    assert code == 2 and "truncated" in one_line(err) and counter.total == 0 and run.loads == []


def test_silent_wrong_an_animation_is_refused_not_read_as_its_first_frame(tmp_path):
    frames = [make_test_image((32, 32), seed=s) for s in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="3 frames"):
        load_image_rgb(tmp_path / "anim.gif")


def test_an_interlaced_png_is_read_whole(tmp_path):
    """The truncation check counts Adam7's passes right: a complete interlaced PNG is not refused."""
    pixels = (np.random.default_rng(0).random((11, 13, 3)) * 255).astype(np.uint8)
    raw = b""
    for x, y, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        for line in pixels[y::dy, x::dx]:
            raw += b"\x00" + line.tobytes()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 13, 11, 8, 2, 0, 0, 1)
    (tmp_path / "i.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                                     + chunk(b"IEND", b""))  # fmt: skip
    assert np.array_equal(np.asarray(load_image_rgb(tmp_path / "i.png")), pixels)


# ---------------------------------------------------------------------------------------------------------------
# Poor answers: late, misleading or "unexpected" errors become one early line
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,rows,fragment", [((200000, 200000), 1, "declares more pixels"),
                                                ((10000, 10000), 4, "declares 10000x10000 pixels"),
                                                ((8192, 8193), 1, "declares 8192x8193")],
                         ids=["200000x200000 (PIL's bomb error)", "10000x10000 with 4 rows", "one row over the bound"])  # fmt: skip
def test_poor_a_header_claiming_too_many_pixels_is_one_line_exit_2(run, tmp_path, counter, size, rows, fragment):
    png_claiming(tmp_path / "bomb.png", *size, rows=rows)
    code, out, err = run(*remove_args(image="bomb.png"))
    assert code == 2 and fragment in one_line(err) and "MAX_IMAGE_PIXELS" in err
    assert counter.total == 0 and run.loads == [] and not (tmp_path / "out.png").exists()


def test_poor_a_bomb_as_mask_is_one_line_exit_2(run, tmp_path, counter):
    png_claiming(tmp_path / "mask.png", 200000, 200000, rows=1)
    code, out, err = run(*remove_args("--mask", "mask.png"))
    assert code == 2 and "Cannot read the mask" in one_line(err) and run.loads == []


def test_bound_is_checked_before_decoding(tmp_path, monkeypatch):
    """The bound is read from the header: a refused file is never decoded."""
    png_claiming(tmp_path / "big.png", 9000, 9000, rows=1)
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        load_image_rgb(tmp_path / "big.png")
    assert MAX_IMAGE_PIXELS == 8192 * 8192


def test_poor_a_latin1_manifest_is_named(run, tmp_path):
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": "a photo of a ball on the café",
                                                   "target": "ball"}], encoding="latin-1")  # fmt: skip
    code, out, err = run(*batch_args(jobs))
    line = one_line(err)
    assert code == 2 and str(jobs) in line and "not UTF-8" in line and run.loads == []


@pytest.mark.parametrize("output,fragment", [("result.xyz", "PIL cannot save '.xyz'"), ("result.psd", "PIL cannot save '.psd'"),
                                             ("taken", "is a folder")])  # fmt: skip
def test_poor_manifest_outputs_that_cannot_be_written_fail_before_any_model_work(run, tmp_path, counter, output, fragment):
    (tmp_path / "out" / "taken").mkdir(parents=True)
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball",
                                                   "output": output},
                                                  {"image": "photo.png", "prompt": PROMPT, "target": "grass"}])  # fmt: skip
    code, out, err = run(*batch_args(jobs))
    assert code == 1 and fragment in one_line(err)  # the other row runs
    assert counter.total > 0  # (the good row's passes) ...
    statuses = {r["row"]: (r["status"], r.get("seconds")) for r in read_records(tmp_path / "out" / "results.jsonl")}
    assert statuses[1] == ("failed", 0.0) and statuses[2][0] == "done"  # ... none spent on the refused row


def test_poor_batch_seed_beyond_64_bits_is_refused_at_parse_time(run, tmp_path):
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball"}])
    code, out, err = run(*batch_args(jobs, "out", "--seed", str(2**64)))
    assert code == 2 and "--seed: expected an integer from 0 to 2**64 - 1" in one_line(err) and run.loads == []


@pytest.mark.parametrize("kind", ["a folder", "not UTF-8", "a malformed line"])
def test_poor_an_unreadable_results_file_is_one_line_naming_it(run, tmp_path, kind):
    results = tmp_path / "out" / "results.jsonl"
    results.parent.mkdir()
    if kind == "a folder":
        results.mkdir()
    elif kind == "not UTF-8":
        results.write_bytes(b'{"row": 1, "status": "d\xe9ne"}\n')
    else:
        results.write_text('{"row": 1, "status": "done"}\nnot a record\n{"row": 2, "status": "done"}\n')
    before = None if kind == "a folder" else results.read_bytes()
    jobs = write_manifest(tmp_path / "jobs.csv", [{"image": "photo.png", "prompt": PROMPT, "target": "ball"}])
    code, out, err = run(*batch_args(jobs))
    assert code == 2 and "results file" in one_line(err) and "out/results.jsonl" in err and run.loads == []
    assert before is None or results.read_bytes() == before  # never silently restarted


def test_poor_output_naming_is_linear_in_rows_sharing_an_image_name(tmp_path, monkeypatch):
    """3000 rows whose images share one file name: each row's name is found in a bounded number of look-ups (before,
    the n-th row tried n names, each resolved on disk: 4.5 million look-ups, 149 s)."""
    lookups = []
    normcase = os.path.normcase  # every name tried becomes a key through it, resolved or not
    monkeypatch.setattr(os.path, "normcase", lambda path: lookups.append(1) or normcase(path))
    rows = [Row(n, tmp_path / f"d{n}" / "photo.png", PROMPT, "ball") for n in range(1, 3001)]
    assign_outputs(rows, tmp_path / "out", save_masks=True, protected=[])
    assert len({row.output for row in rows}) == 3000 and rows[-1].output.name == "photo-no-ball-3000.png"
    assert len(lookups) <= 6 * len(rows), len(lookups)


def test_poor_saving_an_inversion_into_a_missing_folder_names_it(tiny, tmp_path):
    inversion = tiny.invert(make_test_image(), PROMPT, **QUICK)
    with pytest.raises(ValueError, match=f"the folder {tmp_path / 'missing'} does not exist"):
        inversion.save(tmp_path / "missing" / "inv.safetensors")
    with pytest.raises(ValueError, match="it is a folder"):
        inversion.save(tmp_path)


def test_no_import_circles_between_the_commands():
    """cli imports batch and hub (to register them); neither imports cli back (issue 26's circles)."""
    import ast

    package = Path(cli_module.__file__).parent
    for name in ("batch.py", "hub.py", "cli_common.py"):
        tree = ast.parse((package / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert "cli" not in imported, name


def test_commands_keep_their_names_where_users_import_them():
    assert cli_module.CommandError is CommandError is batch_module.CommandError


def test_security_manifest_inputs_stay_in_the_manifests_folder(tmp_path):
    """A manifest names files beside or below it: ``..``, an absolute path elsewhere and a linked folder that leads
    out are row errors before any model work; an absolute path inside and a link that stays inside are fine."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "jobs" / "out").symlink_to(tmp_path / "secret")
    (tmp_path / "jobs" / "same").symlink_to(tmp_path / "jobs")
    rows = batch_module.read_jobs(write_csv(tmp_path / "jobs" / "jobs.csv", [
        {"image": "../secret/a.png", "prompt": PROMPT, "target": "ball", "mask": ""},
        {"image": str(tmp_path / "secret" / "a.png"), "prompt": PROMPT, "target": "ball", "mask": ""},
        {"image": "out/a.png", "prompt": PROMPT, "target": "ball", "mask": ""},
        {"image": "a.png", "prompt": PROMPT, "target": "ball", "mask": "../m.png"},
        {"image": str(tmp_path / "jobs" / "a.png"), "prompt": PROMPT, "target": "ball", "mask": "same/m.png"},
    ], fields=("image", "prompt", "target", "mask")))  # fmt: skip
    assert ["outside the manifest's folder" in (r.error or "") for r in rows] == [True, True, True, True, False]
    assert "mask path" in rows[3].error and "image" not in rows[3].error.split("path")[0]
