"""How localised is the embedded model's cross-attention? The diagnostic behind its map IoU.

    python benchmarks/attention_spread.py --scenes 20

For held-out scenes, inverts (plain DDIM), runs one reconstruction step at a few timesteps with the pipeline's own
capture processor, and reports per token class the mean share of the attention and the ratio of a word's attention
inside its object to outside it (1.0 = no localisation). Writes ``benchmarks/results/attention_spread.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.removal import write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=30000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline
    from magic_remover.attention_processors import (
        RECONSTRUCT,
        RemovalAttentionState,
        aggregate_cross_attention,
        attention_layer_names,
        build_processors,
        installed_processors,
    )
    from magic_remover.inversion import DDIMSchedule
    from magic_remover.scenes import make_scene

    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    schedule = DDIMSchedule.from_scheduler_config(pipe.scheduler.config, args.steps)
    state = RemovalAttentionState()
    processors = build_processors(pipe.unet, state, [], attention_layer_names(pipe.unet)[1])
    steps = [args.steps // 2, (4 * args.steps) // 5]  # a mid and a late timestep
    share, ratio = defaultdict(list), defaultdict(list)
    for seed in range(args.first_seed, args.first_seed + args.scenes):
        scene = make_scene(seed, size=64, num_objects=2, kind="opaque")
        inversion = pipe.invert(scene.image, scene.caption, num_inference_steps=args.steps, method="ddim")
        tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(scene.caption).input_ids)
        obj = scene.objects[0]
        inside = F.avg_pool2d(torch.from_numpy(obj.mask.astype(np.float32))[None, None], 4)[0, 0]
        with installed_processors(pipe.unet, processors), torch.no_grad():
            for i in steps:
                t = schedule.timesteps[i]
                state.start_pass(RECONSTRUCT)
                pipe._cfg_epsilon(inversion.latents[args.steps - i], t, inversion.null_embeddings[i],
                                  inversion.prompt_embeds, inversion.guidance_scale, schedule)  # fmt: skip
                maps = aggregate_cross_attention(state.cross_attention, inside.shape)[0]
                for j, token in enumerate(tokens):
                    word = token.replace("</w>", "")
                    kind = ("target shape" if word == obj.shape else "target colour" if word == obj.color
                            else "other words")  # fmt: skip
                    a = maps[j]
                    share[kind].append(float(a.mean()))
                    ratio[kind].append(float((a * inside).sum() / inside.sum() / ((a * (1 - inside)).sum() / (1 - inside).sum())))
    positions = pipe.tokenizer.model_max_length
    lines = [
        "# Cross-attention spread of the embedded model",
        "",
        f"Command: `python benchmarks/attention_spread.py {' '.join(sys.argv[1:])}`  ",
        f"{args.scenes} held-out opaque scenes from seed {args.first_seed}, DDIM inversion with {args.steps} steps, "
        f"reconstruction pass at timesteps {[int(schedule.timesteps[i]) for i in steps]}; attention averaged over "
        f"heads and layers. A uniform softmax over the {positions} prompt positions gives each {1 / positions:.3f}.",
        "",
        "| tokens | mean attention share per position | attention inside the target / outside |",
        "| --- | --- | --- |",
    ]
    for kind in ("target shape", "target colour", "other words"):
        lines.append(f"| {kind} | {np.mean(share[kind]):.3f} | {np.mean(ratio[kind]):.2f} |")
    text = "\n".join(lines) + "\n"
    write_result("attention_spread.md", text)


if __name__ == "__main__":
    main()
