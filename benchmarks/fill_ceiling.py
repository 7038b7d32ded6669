"""What limits a fill given the true region: pixel fills alone, and the truth through the autoencoder, judged.

    python benchmarks/fill_ceiling.py --scenes 30          # tuning scenes (seeds from 50000)

Each candidate fills the target's true region (object and shadow, dilated by 2 px, as the removal benchmark's
ground-truth mask) and keeps the input elsewhere; ``magic_remover/judge.py`` judges it. "truth through the
autoencoder" pastes the scene without the target, encoded and decoded by the embedded model's VAE: what a perfect
latent would give, so the autoencoder's own share of the failures. "shift" and "Telea" are the pre-fills of
``content_initialization`` by themselves, no diffusion. Writes ``results/fill_ceiling.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.metrics import dilate, target_region  # noqa: E402
from benchmarks.removal import KINDS, RESULTS, select_scenes, write_result  # noqa: E402
from magic_remover.content_initialization import shift_prefill, telea_prefill  # noqa: E402
from magic_remover.detector import detect  # noqa: E402
from magic_remover.judge import FAILURES, judge  # noqa: E402


def to_pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def to_array(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=50000, help="tuning seeds, disjoint from the benchmark's")
    args = parser.parse_args(argv)
    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline

    torch.set_num_threads(1)
    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL)

    def through_vae(pixels):
        with torch.no_grad():
            return pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)

    candidates = {
        "truth through the autoencoder": lambda pixels, truth, region: through_vae(truth),
        "shift pre-fill alone": lambda pixels, truth, region: shift_prefill(pixels, region),
        "Telea pre-fill alone": lambda pixels, truth, region: telea_prefill(pixels, region),
    }
    verdicts = {name: [] for name in candidates}
    scenes = select_scenes(args.scenes, args.first_seed)
    for kind, scene, index in scenes:
        region = torch.from_numpy((dilate(target_region(scene.objects[index]), 2) > 0.5).astype(np.float32))[None, None]
        pixels, truth = to_pixels(scene.image), to_pixels(scene.objects[index].without)
        for name, fill in candidates.items():
            result = to_array(torch.where(region > 0.5, fill(pixels, truth, region), pixels))
            verdict = judge(result, scene, index, [(d.shape, d.color, d.mask) for d in detect(result)])
            verdicts[name].append((kind, verdict))
    lines = [
        "# What limits a fill given the true region",
        "",
        f"Command: `python benchmarks/fill_ceiling.py --scenes {args.scenes}` ({len(scenes)} tuning scenes from seed "
        f"{args.first_seed}); each candidate fills the true region (object and shadow, dilated by 2 px) and keeps the "
        "input elsewhere; judged by `magic_remover/judge.py`.",
        "",
        "| fill | success | target left | replaced | shadow left | neighbour damaged | by kind (" + " / ".join(KINDS) + ") |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, items in verdicts.items():
        rate = lambda key: 100 * np.mean([v[key] for _, v in items])  # noqa: E731
        by_kind = " / ".join(f"{100 * np.mean([v['success'] for k, v in items if k == kind]):.0f}%"
                             for kind in KINDS if any(k == kind for k, _ in items))  # fmt: skip
        lines.append(f"| {name} | **{rate('success'):.0f}%** | " + " | ".join(f"{rate(c):.0f}%" for c in FAILURES)
                     + f" | {by_kind} |")  # fmt: skip
    write_result("fill_ceiling.md", "\n".join(lines) + "\n", RESULTS)


if __name__ == "__main__":
    main()
