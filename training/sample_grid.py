#!/usr/bin/env python
"""Render a grid of samples from the tiny model for a few captions (quick visual check).

    python training/sample_grid.py --model magic_remover/models/tiny-shapes --out /tmp/samples.png
"""
import argparse
import os
import sys

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CAPTIONS = [
    "a red circle on a grass background",
    "a blue square on a sky background",
    "a yellow star and a purple triangle on a checkered background",
    "a transparent green diamond on a striped background",
    "a white circle and an orange square on a plain background",
    "a grass background",
    "a striped background",
    "a pink triangle on a sky background",
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="magic_remover/models/tiny-shapes")
    p.add_argument("--out", default="/tmp/samples.png")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    grid = Image.new("RGB", (64 * a.n, 64 * len(CAPTIONS)))
    for r, c in enumerate(CAPTIONS):
        ims = pipe([c] * a.n, num_inference_steps=a.steps, guidance_scale=a.cfg,
                   generator=torch.Generator().manual_seed(r)).images
        for i, im in enumerate(ims):
            grid.paste(im, (64 * i, 64 * r))
        print(r, c)
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(a.out)
    print("saved", a.out)


if __name__ == "__main__":
    main()
