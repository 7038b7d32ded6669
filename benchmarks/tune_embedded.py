"""Tunes MagicRemover's settings for the embedded model on scenes outside the removal benchmark's seeds.

    python benchmarks/tune_embedded.py --scenes 15 --steps 20

Every setting runs on the same inversions (one per scene and inversion method); the table (printed, and written to
``benchmarks/results/tuning.md``, or the file named by ``--output``) gives removal success, why it failed (target left,
neighbour lost), fill and background PSNR per setting. The chosen setting is
written by hand to the model folder's ``magic_remover_defaults.json`` (read by ``from_pretrained``: the defaults of
every call on the model), with the command that justified it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.metrics import score  # noqa: E402
from benchmarks.removal import select_scenes, target_phrase, write_result  # noqa: E402


def _flags(text: str) -> list[bool]:
    values = text.split(",")
    if not all(v in ("0", "1") for v in values):
        raise argparse.ArgumentTypeError(f"expected 0/1 values separated by commas, got {text!r}")
    return [v == "1" for v in values]


def _thresholds(text: str) -> list[float | None]:
    try:
        return [None if v == "none" else float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers or 'none' separated by commas, got {text!r}") from None


def _counts(text: str) -> list[int | None]:
    try:
        return [None if v == "none" else int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers or 'none' separated by commas, got {text!r}") from None


def _weight_pairs(text: str) -> list[tuple[float, float]]:
    try:
        return [tuple(float(w) for w in pair.split(":")) for pair in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected w_pos:w_neg pairs separated by commas, got {text!r}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=50000, help="tuning seeds, disjoint from the benchmark's")
    parser.add_argument("--scales", default="1,10,30,100,300")
    parser.add_argument("--lambdas", default="0.8,0.5")
    parser.add_argument("--optimization-steps", default="1")
    parser.add_argument("--weightings", default="attention", help="gradient_weighting values, comma separated")
    parser.add_argument("--blends", default="0", type=_flags,
                        help="blend_outside_attention_mask values (0/1), comma separated (research code: 1)")
    parser.add_argument("--thresholds", default="none", type=_thresholds,
                        help="attention_mask_threshold values, comma separated ('none': the research code's region)")
    parser.add_argument("--components", default="none", type=_counts,
                        help="attention_mask_components values, comma separated ('none': every connected part)")
    parser.add_argument("--keep-input", default="0", type=_flags,
                        help="keep_input_outside_attention_mask values (0/1), comma separated")
    parser.add_argument("--protect", default="0", type=_flags,
                        help="1: protect the prompt's other objects (protect=None, automatic); 0: protect=[]")
    parser.add_argument("--protect-cutoffs", default="none", type=_thresholds,
                        help="protect_cutoff values, comma separated ('none': the soft lowering alone)")
    parser.add_argument("--refocus", default="0:0", type=_weight_pairs,
                        help="MagicEraser refocusing weights w_pos:w_neg, comma separated (0:0 = off)")
    parser.add_argument("--refocus-timesteps", default="700,1000", help="low,high of refocus_timesteps")
    parser.add_argument("--inversion-method", default="null-text",
                        help="inversion methods, comma separated (one inversion of each per scene)")
    parser.add_argument("--content-init", default="none",
                        help="content_initialization values, comma separated ('none' = off, 'telea')")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--output", default="tuning.md", help="file name under benchmarks/results/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from magic_remover.detector import finds
    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline

    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    scenes = select_scenes(args.scenes, args.first_seed)
    grid = list(itertools.product(
        [float(v) for v in args.scales.split(",")],
        [float(v) for v in args.lambdas.split(",")],
        [int(v) for v in args.optimization_steps.split(",")],
        args.weightings.split(","),
        args.blends,
        args.thresholds,
        args.components,
        args.keep_input,
        args.protect,
        args.protect_cutoffs,
        args.refocus,
        [None if v == "none" else v for v in args.content_init.split(",")],
        args.inversion_method.split(","),
    ))  # fmt: skip
    refocus_timesteps = tuple(float(v) for v in args.refocus_timesteps.split(","))
    totals = {setting: {"success": 0, "target_left": 0, "others_lost": 0, "background": 0.0, "fill": 0.0}
              for setting in grid}  # fmt: skip
    kinds = list(dict.fromkeys(kind for kind, _, _ in scenes))
    by_kind = {setting: {kind: [0, 0] for kind in kinds} for setting in grid}  # successes, scenes
    started = time.perf_counter()
    for kind, scene, index in scenes:
        inversions = {method: pipe.invert(scene.image, scene.caption, num_inference_steps=args.steps,
                                          guidance_scale=args.guidance_scale, method=method)
                      for method in args.inversion_method.split(",")}  # fmt: skip
        for setting in grid:
            (scale, erase_lambda, n_opt, weighting, blend, threshold, components, keep, protect, cutoff, (w_pos, w_neg),
             fill, method) = setting
            result = pipe(image=scene.image, inversion=inversions[method], target=target_phrase(scene, index),
                          num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                          attention_guidance_scale=scale, erase_lambda=erase_lambda, optimization_steps=n_opt,
                          gradient_weighting=weighting, blend_outside_attention_mask=blend,
                          attention_mask_threshold=threshold, attention_mask_components=components,
                          keep_input_outside_attention_mask=keep,
                          protect=None if protect else [], protect_cutoff=cutoff, refocus_w_pos=w_pos, refocus_w_neg=w_neg,
                          refocus_timesteps=refocus_timesteps, content_initialization=fill,
                          inversion_method=method).images[0]  # fmt: skip
            metrics = score(result, scene, index, finds)
            for key in ("success", "target_left", "others_lost"):
                totals[setting][key] += metrics[key]
            by_kind[setting][kind][0] += metrics["success"]
            by_kind[setting][kind][1] += 1
            totals[setting]["background"] += metrics["background_psnr"] / len(scenes)
            totals[setting]["fill"] += metrics["fill_psnr"] / len(scenes)
        print(f"{kind} {scene.seed} done ({time.perf_counter() - started:.0f} s)", flush=True)

    lines = [
        "# Tuning the embedded model's removal settings",
        "",
        f"Command: `python benchmarks/tune_embedded.py {' '.join(sys.argv[1:])}`  ",
        f"{len(scenes)} scenes from seed {args.first_seed} (outside the removal benchmark's), {args.steps} steps, "
        f"CFG {args.guidance_scale}, one inversion per scene and method shared by all settings; "
        f"refocus_timesteps {refocus_timesteps}; "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
        "",
        "| attention_guidance_scale | erase_lambda | optimization_steps | gradient_weighting "
        "| blend_outside_attention_mask | attention_mask_threshold | attention_mask_components "
        "| keep_input_outside_attention_mask "
        "| protect | protect cutoff | refocus w_pos:w_neg | content init | inversion "
        "| success | target left | other lost | fill PSNR (dB) | background PSNR (dB) "
        f"| success by kind ({', '.join(kinds)}) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for setting, t in totals.items():
        (scale, erase_lambda, n_opt, weighting, blend, threshold, components, keep, protect, cutoff, refocus, fill,
         method) = setting
        rate = {key: f"{100 * t[key] / len(scenes):.0f}%" for key in ("success", "target_left", "others_lost")}
        lines.append(f"| {scale:g} | {erase_lambda:g} | {n_opt} | {weighting} | {blend} | {threshold} | {components} "
                     f"| {keep} "
                     f"| {'auto' if protect else 'off'} | {cutoff} | {refocus[0]:g}:{refocus[1]:g} | {fill or 'off'} | {method} "
                     f"| {rate['success']} | {rate['target_left']} | {rate['others_lost']} "
                     f"| {t['fill']:.2f} | {t['background']:.2f} "
                     f"| {' / '.join(f'{100 * k / n:.0f}' for k, n in by_kind[setting].values())} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    write_result(args.output, table)


if __name__ == "__main__":
    main()
