"""Calibrates the removal judge's tolerances on TUNING scenes (seeds from 50000), never on the held-out ones.

    python benchmarks/removal.py --first-seed 50000 --scenes 20 --compute-only \
        --methods "truth,reconstr.,Telea,MR text,MR + mask" --results benchmarks/results/removal_tuning
    python benchmarks/judge_calibration.py

What the ground truth fixes: the truth must pass and reconstruction (the input through the model, nothing removed)
must fail; a diffusion result's own noise, measured on the background far from every object where nothing was asked
to change, must stay under the tolerances (``off``: how far a pixel may be from the truth; ``blob_area``: how large a
connected patch of such pixels must be to be an object; ``neighbour_fraction``). Writes
``benchmarks/results/judge_calibration.md``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from magic_remover.judge import FAILURES, Tolerances, judge  # noqa: E402
from benchmarks.removal import METHODS, SHORT_NAMES, ResultCache, cached_detections, select_scenes, write_result  # noqa: E402

TUNING = Path(__file__).resolve().parent / "results" / "removal_tuning"
CALIBRATED = ["truth", "reconstr.", "Telea", "MR + mask", "MR text"]


def background_noise(image, scene, off: float) -> tuple[float, int]:
    """Fraction of far-background pixels off the truth by more than ``off``, and their largest connected patch."""
    truth = np.asarray(scene.image, np.float64) / 255  # away from every object the input is the truth
    far = ~ndi.binary_dilation(scene.mask, iterations=4)
    wrong = (np.abs(np.asarray(image, np.float64) / 255 - truth).max(axis=2) > off) & far
    labels, count = ndi.label(wrong, structure=np.ones((3, 3), bool))
    return float(wrong[far].mean()), int(np.bincount(labels.ravel())[1:].max()) if count else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=50000)
    parser.add_argument("--results", default=str(TUNING))
    args = parser.parse_args(argv)
    if args.first_seed < 50000:
        raise ValueError(f"--first-seed must be a tuning seed (50000 or more), got {args.first_seed}")
    scenes = select_scenes(args.scenes, args.first_seed)
    results = {}
    for short in CALIBRATED:
        cache = ResultCache(Path(args.results) / "removal_cache", METHODS[SHORT_NAMES.index(short)], None)
        stored = cache.load()
        results[short] = (stored, cached_detections(cache, stored))

    lines = ["# Judge calibration (tuning scenes)", "",
             f"Command: `python benchmarks/judge_calibration.py` on {len(scenes)} tuning scenes (seeds from "
             f"{args.first_seed}), results from `removal.py --compute-only --results {Path(args.results).name}`.", "",
             "## The noise a result makes where nothing was to change", "",
             "Far background: pixels more than 4 px from every object and shadow. Off: the fraction of them off the "
             "truth by more than the tolerance (largest channel); patch: the largest connected patch of them.", "",
             "| method | n | off > 0.10 | patch | off > 0.15 | patch | off > 0.20 | patch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for short, (stored, _) in results.items():
        here = [(stored[s.seed][0], s) for _, s, _ in scenes if s.seed in stored]
        if not here:
            continue
        cells = []
        for off in (0.10, 0.15, 0.20):
            noise = [background_noise(image, scene, off) for image, scene in here]
            cells += [f"{100 * np.mean([f for f, _ in noise]):.2f}%", f"{max(b for _, b in noise)}"]
        lines.append(f"| {short} | {len(here)} | " + " | ".join(cells) + " |")

    lines += ["", "## The verdicts under each candidate tolerance", "",
              "Success and each failure class (percent of the scenes). The truth must succeed and reconstruction fail.",
              "", "| off | blob area | method | n | success | " + " | ".join(FAILURES) + " |",
              "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in FAILURES) + " |"]  # fmt: skip
    for off in (0.10, 0.15, 0.20):
        for blob in (8, 12, 20):
            tolerances = replace(Tolerances(), off=off, blob_area=blob)
            for short, (stored, detections) in results.items():
                verdicts = [judge(stored[s.seed][0], s, i, detections[s.seed], tolerances)
                            for _, s, i in scenes if s.seed in stored]  # fmt: skip
                if verdicts:
                    rates = [100 * np.mean([v[k] for v in verdicts]) for k in ("success", *FAILURES)]
                    lines.append(f"| {off} | {blob} | {short} | {len(verdicts)} | " + " | ".join(f"{r:.0f}%" for r in rates) + " |")
    write_result("judge_calibration.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
