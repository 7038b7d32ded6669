"""Tunes the LEDITS++ baseline's two settings on the tuning seeds (from 50000), as MagicRemover's are tuned.

    python benchmarks/tune_ledits.py --scenes 5 --edit-scales 2,5 --thresholds 0.75,0.9

Writes ``benchmarks/results/tuning_ledits.md``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import ledits_pp_pipeline, ledits_pp_remove  # noqa: E402
from benchmarks.metrics import score  # noqa: E402
from benchmarks.removal import select_scenes, target_phrase, write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=50000)
    parser.add_argument("--edit-scales", default="2,5")
    parser.add_argument("--thresholds", default="0.75,0.9")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from magic_remover.detector import finds
    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline

    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    ledits = ledits_pp_pipeline(pipe)
    grid = list(itertools.product([float(v) for v in args.edit_scales.split(",")],
                                  [float(v) for v in args.thresholds.split(",")]))  # fmt: skip
    totals = {g: {"success": 0, "target_left": 0, "others_lost": 0, "fill": 0.0, "background": 0.0} for g in grid}
    scenes = select_scenes(args.scenes, args.first_seed)
    started = time.perf_counter()
    for kind, scene, index in scenes:
        for scale, threshold in grid:
            result = ledits_pp_remove(ledits, scene.image, scene.caption, target_phrase(scene, index), args.steps,
                                      edit_guidance_scale=scale, edit_threshold=threshold, seed=scene.seed)  # fmt: skip
            metrics = score(result, scene, index, finds)
            for key in ("success", "target_left", "others_lost"):
                totals[(scale, threshold)][key] += metrics[key]
            totals[(scale, threshold)]["fill"] += metrics["fill_psnr"] / len(scenes)
            totals[(scale, threshold)]["background"] += metrics["background_psnr"] / len(scenes)
        print(f"{kind} {scene.seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    lines = [
        "# Tuning the LEDITS++ baseline on the embedded model",
        "",
        f"Command: `python benchmarks/tune_ledits.py {' '.join(sys.argv[1:])}`  ",
        f"{len(scenes)} scenes from seed {args.first_seed}, {args.steps} steps, implicit mask only (see "
        f"`benchmarks/baselines.py`); {(time.perf_counter() - started) / 60:.1f} min.",
        "",
        "| edit_guidance_scale | edit_threshold | success | target left | other lost | fill PSNR (dB) | background PSNR (dB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (scale, threshold), t in totals.items():
        rate = {k: f"{100 * t[k] / len(scenes):.0f}%" for k in ("success", "target_left", "others_lost")}
        lines.append(f"| {scale:g} | {threshold:g} | {rate['success']} | {rate['target_left']} | {rate['others_lost']} "
                     f"| {t['fill']:.2f} | {t['background']:.2f} |")  # fmt: skip
    write_result("tuning_ledits.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
