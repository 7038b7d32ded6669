"""Why text-only removal fails where it fails: the target word's cross-attention, by outcome.

    python benchmarks/failure_attention.py --shard 0/2     # and --shard 1/2 beside it: the last one writes the table

Runs MagicRemover with the embedded model's shipped settings on the removal benchmark's scenes (the same seeds and
judge as ``benchmarks/removal.py``) and splits them by outcome: success, target left, neighbour lost. For each group
it reports, from the call's public outputs only:

* **target attention**: the target word's mean cross-attention probability over the image, averaged over the guided
  reconstruction passes (``target_attention["reconstruction"]``): how strongly the model attends to the word at all;
* **map on target / on neighbour**: the share of the target's soft map (``attention_maps``, the map the automatic
  region comes from) that lies on the target's true region (object and shadow), and on the other objects' visible
  pixels outside it;
* **region on neighbour**: the share of the neighbours' visible pixels that the result changed (outside the
  automatic region the result is the input's own pixels, so this is the region it was composited with).

A region can only keep a neighbour that the map leaves: if the map puts as much of its mass on the neighbour as on
the target, no threshold, cutoff or choice of parts can separate them. Writes
``benchmarks/results/failure_attention.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.metrics import score, target_region  # noqa: E402
from benchmarks.removal import KINDS, RESULTS, select_scenes, target_phrase, write_result  # noqa: E402

OUTCOMES = ["success", "target left", "neighbour lost"]


def outcome(metrics: dict) -> str:
    """One label per scene; a scene that both keeps the target and loses a neighbour counts as target left."""
    if metrics["success"]:
        return "success"
    return "target left" if metrics["target_left"] else "neighbour lost"


def map_shares(attention_map: np.ndarray, region: np.ndarray, scene, index: int) -> dict:
    """Where the soft map and the automatic region lie, against the true target region and the neighbours."""
    target = target_region(scene.objects[index])
    neighbours = np.zeros_like(target)
    for i, obj in enumerate(scene.objects):
        if i != index:
            neighbours |= obj.mask
    neighbours &= ~target
    total = float(attention_map.sum()) + 1e-8
    return {
        "map_on_target": float(attention_map[target].sum()) / total,
        "map_on_neighbour": float(attention_map[neighbours].sum()) / total,
        "region_on_neighbour": float(region[neighbours].mean()) if neighbours.any() else 0.0,
    }


def run_scenes(args, shard: int, shards: int, checkpoint: Path) -> None:
    from magic_remover.detector import finds
    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline

    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    done = {json.loads(line)["seed"] for line in checkpoint.read_text().splitlines()} if checkpoint.exists() else set()
    for n, (kind, scene, index) in enumerate(select_scenes(args.scenes, args.first_seed)):
        if n % shards != shard or scene.seed in done:
            continue
        out = pipe(image=scene.image, prompt=scene.caption, target=target_phrase(scene, index), output_type="np")
        result = (out.images[0] * 255).round().astype(np.uint8)
        # the region the result was composited with: where it differs from the input
        region = np.abs(out.images[0] - scene.image_array / 255.0).max(-1) > 1.5 / 255
        metrics = score(result, scene, index, finds)
        row = {"seed": scene.seed, "kind": kind, "outcome": outcome(metrics),
               "target_attention": float(out.target_attention["reconstruction"].mean()),
               **map_shares(out.attention_maps[0], region, scene, index)}  # fmt: skip
        with checkpoint.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(kind, scene.seed, row["outcome"], flush=True)


def table(rows: list[dict], command: str) -> str:
    groups = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["outcome"])].append(row)
        groups[("all", row["outcome"])].append(row)
    lines = [
        "# The target word's attention, by removal outcome",
        "",
        f"Command: `{command}`  ",
        f"{len(rows)} scenes of `benchmarks/removal.py` (the same seeds and detector), the embedded model's shipped "
        "settings. Target attention: the target word's mean cross-attention probability over the image in the guided "
        "reconstruction passes (for a colour-and-shape target, same-shape scenes, the product of the two words' maps, "
        "so compare it within a kind). Map on target / neighbour: the share of the target's soft map on its true region "
        "(object and shadow) and on the other objects' pixels outside it. Region on neighbour: the share of the "
        "neighbours' pixels the result changed (the automatic region it was composited with).",
        "",
        "| kind | outcome | n | target attention (x1000) | map on target | map on neighbour | region on neighbour |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS + ["all"]:
        for name in OUTCOMES:
            group = groups.get((kind, name), [])
            if not group:
                continue
            mean = {key: float(np.mean([r[key] for r in group]))
                    for key in ("target_attention", "map_on_target", "map_on_neighbour", "region_on_neighbour")}  # fmt: skip
            lines.append(f"| {kind} | {name} | {len(group)} | {1000 * mean['target_attention']:.1f} "
                         f"| {mean['map_on_target']:.2f} | {mean['map_on_neighbour']:.2f} "
                         f"| {mean['region_on_neighbour']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=20000, help="the removal benchmark's held-out seeds")
    parser.add_argument("--shard", default="0/1", help="i/n: this process takes every n-th scene from the i-th")
    parser.add_argument("--output", default="failure_attention.md", help="file name under benchmarks/results/")
    args = parser.parse_args(argv)
    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        if not 0 <= shard < shards:
            raise ValueError
    except ValueError:
        parser.error(f"--shard expects i/n with 0 <= i < n, got {args.shard!r}")
    torch.set_num_threads(1)

    RESULTS.mkdir(parents=True, exist_ok=True)
    checkpoint = RESULTS / f"failure_attention_checkpoint_{args.scenes}_{args.first_seed}.jsonl"
    run_scenes(args, shard, shards, checkpoint)
    rows = [json.loads(line) for line in checkpoint.read_text().splitlines()]
    if len({r["seed"] for r in rows}) < args.scenes:
        print(f"{len(rows)} of {args.scenes} scenes done; the last shard to finish writes the table")
        return
    command = f"python benchmarks/failure_attention.py --scenes {args.scenes} --first-seed {args.first_seed}"
    write_result(args.output, table(rows, command + f" --shard i/{shards} (each i from 0)"))
    checkpoint.unlink(missing_ok=True)  # both shards may finish at once


if __name__ == "__main__":
    main()
