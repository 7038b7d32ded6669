"""What region refinement adds to a removal's time (issue 23's goal: under 10%), and its UNet passes (none).

    python benchmarks/refinement_cost.py --scenes 3 --repeats 2

Text-only removals on the embedded model with its shipped settings, ``region_refinement`` 0 and 1 alternated in one
process on the same inversion (so both see the same load on a shared CPU); the median of the per-call ratios is
reported, with the UNet forward rows of each. Writes ``results/refinement_cost.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.removal import RESULTS, select_scenes, target_phrase, write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=50000)
    args = parser.parse_args(argv)
    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline

    torch.set_num_threads(1)
    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    hook = pipe.unet.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    ratios, seconds, forward = [], {0: [], 1: []}, {}
    try:
        for kind, scene, index in select_scenes(args.scenes, args.first_seed):
            inversion = pipe.invert(scene.image, scene.caption, num_inference_steps=20)
            for _ in range(args.repeats):
                took = {}
                for refinement in (0, 1):
                    rows.clear()
                    start = time.perf_counter()
                    pipe(image=scene.image, inversion=inversion, target=target_phrase(scene, index),
                         region_refinement=refinement, output_type="pil")  # fmt: skip
                    took[refinement] = time.perf_counter() - start
                    seconds[refinement].append(took[refinement])
                    forward[refinement] = sum(rows)
                ratios.append(took[1] / took[0])
    finally:
        hook.remove()
    text = "\n".join([
        "# What region refinement costs",
        "",
        f"Command: `python benchmarks/refinement_cost.py --scenes {args.scenes} --repeats {args.repeats}` (tuning scenes "
        f"from seed {args.first_seed}, the embedded model's shipped settings, one torch thread, a shared 2-core CPU).",
        "",
        "| region_refinement | median s per removal | UNet forward rows per removal |",
        "| --- | --- | --- |",
        *(f"| {r} | {statistics.median(seconds[r]):.2f} | {forward[r]} |" for r in (0, 1)),
        "",
        f"Time ratio (refinement 1 against 0, per call pair, median of {len(ratios)}): **{statistics.median(ratios):.3f}** "
        f"(range {min(ratios):.3f} to {max(ratios):.3f}).",
    ]) + "\n"  # fmt: skip
    write_result("refinement_cost.md", text, RESULTS)


if __name__ == "__main__":
    main()
