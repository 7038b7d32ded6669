"""How long ``magic-remover batch`` takes to plan a large manifest before its first row starts (issue 25's goal:
10,000 rows in under 10 s; output naming was quadratic: 2,000 rows whose images share a file name took 140 s).

    python benchmarks/batch_plan.py --rows 10000 --images 1000

Writes ``--images`` one-pixel PNGs, all named ``photo.png`` (one per folder, the worst case for output naming: every
row wants the same ``photo-no-<target>.png``), and a CSV of ``--rows`` rows cycling over them and over three targets
of the prompt, then times each step ``batch`` runs before any model pass, with the embedded model's tokenizer:
reading the manifest, naming the outputs, checking the rows' files, checking each target against the prompt and
grouping, and the stale-temporary sweep. A second pass times a rerun (every output present, as after a finished run).
The table goes to ``benchmarks/results/batch_plan.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from magic_remover import EMBEDDED_MODEL  # noqa: E402
from magic_remover.batch import (  # noqa: E402
    RESULTS_NAME,
    assign_outputs,
    check_rows,
    plan_rows,
    read_jobs,
    read_records,
    remove_stale_temporaries,
)

RESULTS = Path(__file__).parent / "results" / "batch_plan.md"
PROMPT = "a red circle and a blue square on a striped background"  # words the embedded model knows
TARGETS = ("circle", "square", "red circle")
GOAL_SECONDS = 10.0


def write_jobs(workdir: Path, rows: int, images: int) -> Path:
    pixel = Image.new("RGB", (1, 1), (128, 128, 128))
    for index in range(images):
        folder = workdir / "images" / f"{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixel.save(folder / "photo.png")
    manifest = workdir / "jobs.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt", "target"])
        for row in range(rows):
            writer.writerow([f"images/{row % images:05d}/photo.png", PROMPT, TARGETS[(row // images) % len(TARGETS)]])
    return manifest


def plan(manifest: Path, outdir: Path, tokenizer) -> tuple[dict[str, float], tuple]:
    """Times every step ``run_batch`` takes before its first model pass; returns (seconds per step, the plan)."""
    seconds, start = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[name] = now - start
        start = now

    rows = read_jobs(manifest)
    lap("read the manifest")
    assign_outputs(rows, outdir, save_masks=True, protected=[manifest, outdir / RESULTS_NAME])
    lap("name the outputs")
    check_rows(rows)
    read_records(outdir / RESULTS_NAME)
    lap("check the rows' files")
    failed, skipped, groups = plan_rows(rows, tokenizer)
    lap("check targets, group")
    remove_stale_temporaries([row for group in groups for row in group])
    lap("sweep stale temporaries")
    return seconds, (rows, failed, skipped, groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/magic_remover_batch_plan"))
    args = parser.parse_args()

    from transformers import CLIPTokenizer

    import magic_remover.pipeline_magic_remover  # noqa: F401  (batch has imported it to load the model before it plans)

    shutil.rmtree(args.workdir, ignore_errors=True)
    manifest = write_jobs(args.workdir, args.rows, args.images)
    outdir = args.workdir / "out"
    tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED_MODEL, subfolder="tokenizer")

    first, (rows, failed, skipped, groups) = plan(manifest, outdir, tokenizer)
    assert not failed, failed[0].error
    assert len(groups) == args.images and len({r.output for r in rows}) == args.rows, (len(groups), len({r.output for r in rows}))
    for row in rows:  # a finished run: every output present, so the rerun skips every row
        row.output.parent.mkdir(parents=True, exist_ok=True)
        for path in row.outputs:
            path.touch()
    rerun, (_, _, skipped_again, _) = plan(manifest, outdir, tokenizer)
    assert len(skipped_again) == args.rows

    total_first, total_rerun = sum(first.values()), sum(rerun.values())
    verdict = "meets" if max(total_first, total_rerun) < GOAL_SECONDS else "MISSES"
    lines = [
        "# Batch planning time",
        "",
        f"`python benchmarks/batch_plan.py --rows {args.rows} --images {args.images}`: {args.rows} rows over "
        f"{args.images} images that all share the file name `photo.png` and 3 targets each, with --save-masks "
        f"(two outputs per row); {platform.python_version()}, {os.cpu_count()} CPU cores shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the end).",
        "",
        "| step | first run (s) | rerun, every output present (s) |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {first[name]:.2f} | {rerun[name]:.2f} |" for name in first],
        f"| **total before the first row** | **{total_first:.2f}** | **{total_rerun:.2f}** |",
        "",
        f"Goal: under {GOAL_SECONDS:.0f} s for 10,000 rows; this run {verdict} it.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
