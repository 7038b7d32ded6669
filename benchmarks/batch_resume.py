"""A batch of synthetic scenes on the embedded model, killed midway (SIGKILL) and resumed: does anything get lost or
done twice, and what does a batch cost per image?

    python benchmarks/batch_resume.py --images 100 --steps 6 --kill-after 40

Writes the scenes and their manifest under ``--workdir``, runs ``python -m magic_remover.cli batch`` there as a
subprocess, kills it with SIGKILL once ``--kill-after`` rows are recorded, reruns the same command to the end and
checks: every row has exactly one ``done`` record (or, for a result written just before the kill and not yet
recorded, one ``skipped``), every output exists and reads as an image, and no output that existed at the kill was
written again (its mtime is unchanged). The table goes to ``benchmarks/results/batch_resume.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from magic_remover.scenes import make_scene  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "batch_resume.md"


def write_scenes(folder: Path, count: int, first_seed: int) -> Path:
    """``count`` two-object scenes and a manifest removing the first object of each; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "jobs.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "prompt", "target"])
        writer.writeheader()
        for seed in range(first_seed, first_seed + count):
            scene = make_scene(seed, size=64, num_objects=2)
            scene.image.save(folder / f"scene{seed}.png")
            writer.writerow({"image": f"scene{seed}.png", "prompt": scene.caption, "target": scene.objects[0].shape})
    return manifest


def records(outdir: Path) -> list[dict]:
    path = outdir / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--kill-after", type=int, default=40, help="rows recorded before the SIGKILL")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="batch_resume_run")
    parser.add_argument("--first-seed", type=int, default=200000)
    args = parser.parse_args()

    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    manifest = write_scenes(work / "scenes", args.images, args.first_seed)
    outdir = work / "out"
    command = [sys.executable, "-m", "magic_remover.cli", "batch", str(manifest), "-o", str(outdir),
               "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip

    start = time.perf_counter()
    with open(work / "first_run.log", "w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)  # this checkout's package
        while first.poll() is None and len(records(outdir)) < args.kill_after:
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
    first_seconds = time.perf_counter() - start
    done_at_kill = len(records(outdir))
    outputs_at_kill = {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.png")}
    temporaries = [p.name for p in outdir.iterdir() if p.name.startswith(".")]

    start = time.perf_counter()
    resumed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    resume_seconds = time.perf_counter() - start
    (work / "resume.log").write_text(resumed.stdout + resumed.stderr)
    said = resumed.stdout.strip().splitlines() or [""]

    left_after_resume = [p.name for p in outdir.iterdir() if p.name.startswith(".")]
    final = records(outdir)
    per_row = Counter(r["row"] for r in final)
    statuses = Counter(r["status"] for r in final)
    outputs = sorted(outdir.glob("*.png"))
    rewritten = [name for name, mtime in outputs_at_kill.items() if (outdir / name).stat().st_mtime_ns != mtime]
    readable = sum(Image.open(p).size == (64, 64) for p in outputs)
    seconds = [r["seconds"] + r.get("inversion_seconds", 0.0) for r in final if r["status"] == "done"]
    checks = {
        "resume exit status": resumed.returncode,
        "rows with exactly one record": sum(c == 1 for c in per_row.values()),
        "rows with no record": args.images - len(per_row),
        "rows recorded twice or more": sum(c > 1 for c in per_row.values()),
        "outputs": len(outputs),
        "outputs that read as 64x64 images": readable,
        "outputs present at the kill and written again": len(rewritten),
        "temporary files at the kill (a write cut short)": len(temporaries),
        "temporary files after the resume": len(left_after_resume),
    }
    lines = [
        "# Batch killed and resumed",
        "",
        f"`python benchmarks/batch_resume.py --images {args.images} --steps {args.steps} --kill-after "
        f"{args.kill_after} --threads {args.threads}` (embedded model, {args.images} two-object scenes, one target "
        f"each, seeds {args.first_seed}+; 2 CPU cores shared with other work).",
        "",
        "| | |",
        "| --- | --- |",
        f"| first run, SIGKILL after | {first_seconds:.0f} s, {done_at_kill} rows recorded, "
        f"{len(outputs_at_kill)} outputs on disk |",
        f"| resume | {resume_seconds:.0f} s; it said `{said[0]}` and `{said[-1]}` |",
        f"| records by status | {dict(sorted(statuses.items()))} |",
        *(f"| {name} | {value} |" for name, value in checks.items()),
        f"| seconds per image (inversion + removal, from results.jsonl) | mean {sum(seconds) / max(len(seconds), 1):.2f}, "
        f"max {max(seconds, default=0):.2f} |",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = (resumed.returncode == 0 and checks["rows with exactly one record"] == args.images and not rewritten
          and len(outputs) == args.images == readable and not left_after_resume)  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
