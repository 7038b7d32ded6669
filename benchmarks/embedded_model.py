#!/usr/bin/env python
"""Quality benchmark of the embedded tiny text-to-image model (issue 3).

Measures, on held-out scenes of ``magic_remover.scenes`` (seeds ``--seed0 .. --seed0 + N - 1``, all < 100000,
never used in training):

0. the shape-and-colour detector of ``magic_remover/detector.py`` on ground-truth scenes (it is the judge of 2.);
1. autoencoder reconstruction PSNR (posterior mode, decode, uint8 [0, 255]);
2. text-to-image: prompts naming one or two objects in the world's grammar, generated with the
   StableDiffusionPipeline (DDIM), judged by the detector (every named object found?);
3. attention localisation: ``MagicRemoverPipeline.invert`` + removal call, IoU of the target's attention map with
   the object's true mask, against a trivial centred-disc baseline.

Prints a markdown table and writes it to ``benchmarks/results/embedded_model.md``.

    python benchmarks/embedded_model.py                 # full: 200 scenes per section
    python benchmarks/embedded_model.py --quick         # smoke run: a few scenes, few steps
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from magic_remover import detector as det  # noqa: E402
from magic_remover.scenes import HELDOUT_SEED_LIMIT, make_scene  # noqa: E402

BARS = {
    "detector": 0.95,
    "psnr": 28.0,
    "t2i": 0.80,
    "iou": 0.50,
}
RESULTS = os.path.join(ROOT, "benchmarks", "results", "embedded_model.md")


def _pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
        f"python {platform.python_version()}"
    )


# --------------------------------------------------------------------------- 0. detector validation


def bench_detector(seeds):
    t0 = time.time()
    validation = det.validate(seeds)
    # removal check: an opaque object's `without` image must no longer show it
    n_without, ok_without = 0, 0
    for seed in seeds[: max(1, len(seeds) // 2)]:
        sc = make_scene(seed, kind="opaque")
        for i, o in enumerate(sc.objects):
            n_without += 1
            ok_without += int(not det.finds(sc.without(i), o.shape, o.color))
    return {
        "counts": validation["objects"],
        "fp": validation["false_positives"],
        "fp_scenes": validation["fp_scenes"],
        "scenes": len(seeds),
        "without": (n_without, ok_without),
        "seconds": time.time() - t0,
    }


# --------------------------------------------------------------------------- 1. autoencoder


def bench_autoencoder(vae, seeds, batch=50):
    import torch

    t0 = time.time()
    psnrs = []
    with torch.no_grad():
        for s in range(0, len(seeds), batch):
            chunk = seeds[s : s + batch]
            imgs = np.stack([make_scene(seed).image_array for seed in chunk]).astype(np.float32)
            x = torch.from_numpy(imgs / 127.5 - 1.0).permute(0, 3, 1, 2)
            z = vae.encode(x).latent_dist.mode()
            y = vae.decode(z).sample.clamp(-1, 1)
            y = ((y + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
            mse = ((y - imgs) ** 2).reshape(len(chunk), -1).mean(1)
            psnrs.extend((10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))).tolist())
    return {"psnr": float(np.mean(psnrs)), "psnr_min": float(np.min(psnrs)), "n": len(psnrs),
            "seconds": time.time() - t0}


# --------------------------------------------------------------------------- 2. text-to-image


def t2i_prompts(seeds):
    """Captions of 1- and 2-object opaque held-out scenes (alternating), in the world's grammar."""
    out = []
    for j, seed in enumerate(seeds):
        sc = make_scene(seed, num_objects=1 + (j % 2), kind="opaque")
        out.append((seed, sc.caption, [(o.shape, o.color) for o in sc.objects]))
    return out


def detector_ceilings(vae, prompts):
    """How many prompts the detector confirms on the same captions' ground-truth images, and on those images after
    the autoencoder's round trip: what a perfect generator could at best produce once decoded."""
    import torch

    gt_ok = rec_ok = 0
    scenes = [make_scene(seed, num_objects=len(objs), kind="opaque") for seed, _, objs in prompts]
    for sc, (seed, cap, objs) in zip(scenes, prompts):
        pairs = det.detect_pairs(sc.image)
        gt_ok += int(all(o in pairs for o in objs))
    with torch.no_grad():
        for s in range(0, len(scenes), 50):
            chunk = scenes[s : s + 50]
            x = torch.from_numpy(np.stack([sc.image_array for sc in chunk]).astype(np.float32) / 127.5 - 1.0)
            y = vae.decode(vae.encode(x.permute(0, 3, 1, 2)).latent_dist.mode()).sample.clamp(-1, 1)
            y = ((y + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
            for im, (seed, cap, objs) in zip(y, prompts[s : s + 50]):
                pairs = det.detect_pairs(im)
                rec_ok += int(all(o in pairs for o in objs))
    return gt_ok, rec_ok


def bench_t2i(pipe, seeds, steps, guidance, batch=16, save_grid=None):
    import torch

    t0 = time.time()
    prompts = t2i_prompts(seeds)
    per = []
    images_all = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s : s + batch]
        gens = [torch.Generator().manual_seed(int(seed)) for seed, _, _ in chunk]
        out = pipe(
            [c for _, c, _ in chunk],
            height=64,
            width=64,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
        )
        for (seed, cap, objs), img in zip(chunk, out.images):
            img8 = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
            images_all.append(img8)
            found_pairs = det.detect_pairs(img8)
            hits = [o in found_pairs for o in objs]
            extra = found_pairs - set(objs)
            per.append({"seed": seed, "caption": cap, "n": len(objs), "hits": hits, "extra": len(extra)})
    if save_grid and images_all:
        from PIL import Image

        k = min(len(images_all), 64)
        cols = 8
        rows = (k + cols - 1) // cols
        grid = np.full((rows * 66, cols * 66, 3), 255, np.uint8)
        for i in range(k):
            r, c = divmod(i, cols)
            grid[r * 66 + 1 : r * 66 + 65, c * 66 + 1 : c * 66 + 65] = images_all[i]
        Image.fromarray(grid).save(save_grid)
    gt_ok, rec_ok = detector_ceilings(pipe.vae, prompts)

    def frac(rows):
        return float(np.mean([all(r["hits"]) for r in rows])) if rows else float("nan")

    return {
        "all_found": frac(per),
        "one": frac([r for r in per if r["n"] == 1]),
        "two": frac([r for r in per if r["n"] == 2]),
        "object_recall": float(np.mean([h for r in per for h in r["hits"]])),
        "extra_per_image": float(np.mean([r["extra"] for r in per])),
        "gt_ceiling": gt_ok / len(prompts),
        "rec_ceiling": rec_ok / len(prompts),
        "n": len(per),
        "seconds": time.time() - t0,
    }


# --------------------------------------------------------------------------- 3. attention localisation


def _iou(a, b):
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def _top_k_mask(m, k):
    k = int(max(1, min(k, m.size)))
    flat = m.reshape(-1)
    idx = np.argsort(-flat, kind="stable")[:k]
    out = np.zeros(m.size, bool)
    out[idx] = True
    return out.reshape(m.shape)


def _centred_disc(shape, area):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    d2 = (xx - w / 2) ** 2 + (yy - h / 2) ** 2
    return _top_k_mask(-d2, area)


def attention_items(seeds):
    """(seed, scene, target, object) per held-out scene: the first object whose shape word is unique in the
    caption, target = that shape word; if every shape word repeats, the first object and "colour shape"."""
    items = []
    for seed in seeds:
        sc = make_scene(seed)
        counts = {}
        for p in sc.objects:
            counts[p.shape] = counts.get(p.shape, 0) + 1
        unique = [p for p in sc.objects if counts[p.shape] == 1]
        o = unique[0] if unique else sc.objects[0]
        target = o.shape if unique else f"{o.color} {o.shape}"
        items.append((seed, sc, target, o))
    return items


def bench_attention(mpipe, seeds, steps, method, inner_steps, guidance, batch=8):
    t0 = time.time()
    items = attention_items(seeds)
    groups = {}
    for it in items:
        groups.setdefault(it[2], []).append(it)
    rows = []
    t_inv = t_call = 0.0
    for target, its in sorted(groups.items()):
        for s in range(0, len(its), batch):
            chunk = its[s : s + batch]
            ta = time.time()
            inv = mpipe.invert(
                [it[1].image for it in chunk],
                [it[1].caption for it in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                method=method,
                num_inner_steps=inner_steps,
            )
            tb = time.time()
            out = mpipe(
                inversion=inv,
                target=target,
                num_inference_steps=steps,
                guidance_scale=guidance,
                inversion_method=method,
                output_type="np",
            )
            t_inv += tb - ta
            t_call += time.time() - tb
            maps = np.asarray(out.attention_maps)
            for (seed, sc, tgt, o), amap in zip(chunk, maps):
                true = o.mask
                area = int(true.sum())
                npx = true.size
                top20 = _top_k_mask(amap, round(0.2 * npx))
                topa = _top_k_mask(amap, area)
                disc20 = _centred_disc(true.shape, round(0.2 * npx))
                disca = _centred_disc(true.shape, area)
                rows.append(
                    {
                        "seed": seed,
                        "target": tgt,
                        "iou_top20": _iou(top20, true),
                        "iou_top20_max": min(area, round(0.2 * npx)) / max(area, round(0.2 * npx)),
                        "iou_topA": _iou(topa, true),
                        "iou_half": _iou(amap >= 0.5, true),
                        "base_top20": _iou(disc20, true),
                        "base_topA": _iou(disca, true),
                        "hit": bool(true[np.unravel_index(np.argmax(amap), amap.shape)]),
                    }
                )
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {
        **{k: mean(k) for k in ("iou_top20", "iou_top20_max", "iou_topA", "iou_half", "base_top20", "base_topA",
                                "hit")},
        "n": len(rows),
        "seconds": time.time() - t0,
        "t_invert": t_inv,
        "t_call": t_call,
    }


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: magic_remover.EMBEDDED_MODEL)")
    p.add_argument("--scenes", type=int, default=200, help="held-out scenes per section (default 200)")
    p.add_argument("--seed0", type=int, default=10000, help="first held-out seed (default 10000)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps for text-to-image (default 25)")
    # 3.0 was chosen on prompts from seeds 60000..60099 (not the benchmark's): CFG 2-3 confirmed more prompts than
    # Stable Diffusion's 7.5 (shipped model 7-9% against 5%; benchmarks/results/t2i_guidance_sweep.md)
    p.add_argument("--guidance", type=float, default=3.0, help="CFG scale for text-to-image (default 3.0)")
    p.add_argument("--attn-scenes", type=int, default=None, help="scenes for the attention section (default --scenes)")
    p.add_argument("--attn-steps", type=int, default=20, help="DDIM steps of inversion + removal (default 20)")
    p.add_argument("--attn-method", default="null-text", choices=["null-text", "ddim", "negative-prompt"])
    p.add_argument("--attn-inner-steps", type=int, default=10, help="null-text inner steps (default 10)")
    p.add_argument("--attn-guidance", type=float, default=7.5)
    p.add_argument("--attn-batch", type=int, default=8)
    p.add_argument("--sections", default="detector,ae,t2i,attention")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 scenes, 4 steps, ddim inversion")
    p.add_argument("--out", default=RESULTS, help="markdown output (default benchmarks/results/embedded_model.md)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        args.scenes = min(args.scenes, 8)
        args.steps = min(args.steps, 4)
        args.attn_steps = min(args.attn_steps, 4)
        args.attn_method = "ddim"
        args.attn_batch = 4
        args.attn_scenes = min(args.attn_scenes or 2, 2)
    attn_n = args.attn_scenes or args.scenes
    seeds = list(range(args.seed0, args.seed0 + args.scenes))
    attn_seeds = list(range(args.seed0, args.seed0 + attn_n))
    if max(seeds + attn_seeds) >= HELDOUT_SEED_LIMIT:
        p.error(f"seeds must stay below {HELDOUT_SEED_LIMIT} (held-out range)")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)  # before hours of work, not after

    from magic_remover import EMBEDDED_MODEL

    model_dir = args.model or EMBEDDED_MODEL
    need_model = any(s in sections for s in ("ae", "t2i", "attention"))
    info = {}
    snapshot = None
    if need_model:
        if not os.path.exists(os.path.join(model_dir, "model_index.json")):
            p.error(f"no model at {model_dir} (model_index.json missing)")
        # snapshot the folder: the trainer may replace an intermediate export while we run
        snapshot = tempfile.mkdtemp(prefix="mr_bench_model_")
        shutil.copytree(model_dir, os.path.join(snapshot, "m"))
        model_path = os.path.join(snapshot, "m")
        ti = os.path.join(model_path, "training_info.json")
        if os.path.exists(ti):
            with open(ti) as f:
                info = json.load(f)

    cmd = "python " + " ".join([os.path.relpath(os.path.abspath(__file__), ROOT)] + (argv if argv is not None
                                                                                       else sys.argv[1:]))
    started = _dt.datetime.now(_dt.timezone.utc)
    res = {}
    timings = {}
    pipe = mpipe = None
    if need_model:
        from diffusers import StableDiffusionPipeline

        from magic_remover import MagicRemoverPipeline

        tl = time.time()
        pipe = StableDiffusionPipeline.from_pretrained(model_path, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        timings["load"] = time.time() - tl

    def log(msg):
        print(f"[{_dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)

    if "detector" in sections:
        log(f"detector validation on {len(seeds)} ground-truth scenes ...")
        res["detector"] = bench_detector(seeds)
        log(f"  done in {res['detector']['seconds']:.1f}s")
    if "ae" in sections:
        log("autoencoder PSNR ...")
        res["ae"] = bench_autoencoder(pipe.vae, seeds)
        log(f"  {res['ae']['psnr']:.2f} dB in {res['ae']['seconds']:.1f}s")
    if "t2i" in sections:
        log(f"text-to-image on {len(seeds)} prompts ...")
        grid = os.path.join(os.path.dirname(args.out), "embedded_model_t2i_samples.png") if not args.quick else None
        res["t2i"] = bench_t2i(pipe, seeds, args.steps, args.guidance, save_grid=grid)
        log(f"  {res['t2i']['all_found']:.3f} in {res['t2i']['seconds']:.1f}s")
    if "attention" in sections:
        log(f"attention localisation on {len(attn_seeds)} scenes ({args.attn_method}, {args.attn_steps} steps) ...")
        mpipe = MagicRemoverPipeline.from_pretrained(model_path, safety_checker=None, requires_safety_checker=False)
        mpipe.removal_defaults = {}  # this benchmark's attention figures were measured with the paper's settings
        mpipe.set_progress_bar_config(disable=True)
        res["attention"] = bench_attention(
            mpipe, attn_seeds, args.attn_steps, args.attn_method, args.attn_inner_steps, args.attn_guidance,
            batch=args.attn_batch,
        )
        log(f"  IoU {res['attention']['iou_top20']:.3f} in {res['attention']['seconds']:.1f}s")

    md = render(args, res, info, model_dir, cmd, started, timings, seeds, attn_seeds)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(md)
    if snapshot:
        shutil.rmtree(snapshot, ignore_errors=True)
    return res


def render(args, res, info, model_dir, cmd, started, timings, seeds, attn_seeds) -> str:
    L = []
    L.append("# Embedded model quality benchmark (issue 3)")
    L.append("")
    L.append(f"- Command: `{cmd}`")
    L.append(f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}")
    L.append(f"- Machine: {_machine()}")
    rel = os.path.relpath(model_dir, ROOT) if os.path.abspath(model_dir).startswith(ROOT) else model_dir
    if info:
        status = "final" if info.get("final") else (
            f"INTERMEDIATE export ({info.get('unet_steps')}/{info.get('unet_steps_planned')} UNet steps)")
        L.append(f"- Model: `{rel}` ({status}; AE steps {info.get('ae_steps')}, training-time AE PSNR "
                 f"{info.get('ae_psnr_db')})")
    elif "ae" in res or "t2i" in res or "attention" in res:
        L.append(f"- Model: `{rel}`")
    L.append(f"- Held-out seeds: {seeds[0]}..{seeds[-1]} ({len(seeds)} scenes)"
             + (" — QUICK smoke run, figures not meaningful" if args.quick else ""))
    L.append("")
    L.append("| # | Metric | Value | Bar | Result | Time |")
    L.append("|---|---|---|---|---|---|")
    if "detector" in res:
        d = res["detector"]
        n, k = d["counts"]["all"]
        acc = k / n
        L.append(f"| 0 | Detector accuracy on ground-truth scenes (objects found, shape+colour; {d['scenes']} mixed "
                 f"scenes, {n} objects) | {acc:.1%} | >= {BARS['detector']:.0%} | {_pf(acc >= BARS['detector'])} | "
                 f"{d['seconds']:.0f}s |")
    if "ae" in res:
        a = res["ae"]
        L.append(f"| 1 | Autoencoder reconstruction PSNR (posterior mode, uint8; mean of {a['n']}) | "
                 f"{a['psnr']:.2f} dB | >= {BARS['psnr']:.0f} dB | {_pf(a['psnr'] >= BARS['psnr'])} | "
                 f"{a['seconds']:.0f}s |")
    if "t2i" in res:
        t = res["t2i"]
        L.append(f"| 2 | Text-to-image: samples where the detector finds every named object ({t['n']} prompts, "
                 f"DDIM {args.steps} steps, CFG {args.guidance}) | {t['all_found']:.1%} | >= {BARS['t2i']:.0%} | "
                 f"{_pf(t['all_found'] >= BARS['t2i'])} | {t['seconds']:.0f}s |")
    if "attention" in res:
        r = res["attention"]
        how = f"{args.attn_method} inversion, {args.attn_steps} steps"
        if args.attn_method == "null-text":
            how += f", {args.attn_inner_steps} inner steps"
        L.append(f"| 3 | Attention localisation: mean IoU of the map's top-20% region with the object mask "
                 f"({r['n']} scenes, {how}) | {r['iou_top20']:.3f} | >= {BARS['iou']:.2f} | "
                 f"{_pf(r['iou_top20'] >= BARS['iou'])} | {r['seconds']:.0f}s |")
        L.append(f"| 3b | same, region = the map's top-N pixels, N = object area | {r['iou_topA']:.3f} | "
                 f">= {BARS['iou']:.2f} | {_pf(r['iou_topA'] >= BARS['iou'])} | |")
    L.append("")

    if "detector" in res:
        d = res["detector"]
        L.append("**Detector details** (ground truth, `magic_remover/detector.py`):")
        L.append("")
        L.append("| Objects | Found | Accuracy |")
        L.append("|---|---|---|")
        order = ["all", "opaque", "shadow", "transparent", "visible>=50%", "visible<50%",
                 "opaque-or-shadow, visible>=50%"]
        for key in order:
            if key in d["counts"]:
                n, k = d["counts"][key]
                L.append(f"| {key} | {k}/{n} | {k / n:.1%} |")
        nw, ow = d["without"]
        L.append("")
        L.append(f"False positives (detected shape+colour pairs not in the scene): {d['fp']} in {d['scenes']} scenes "
                 f"({d['fp'] / d['scenes']:.2f} per scene; {d['fp_scenes']} scenes with any). "
                 f"Removed opaque objects (`obj.without`) no longer found: {ow}/{nw} ({ow / max(nw, 1):.1%}). "
                 "'visible' = fraction of the object's alpha not hidden by objects in front of it.")
        L.append("")
    if "ae" in res:
        a = res["ae"]
        L.append(f"**Autoencoder**: mean {a['psnr']:.2f} dB, worst scene {a['psnr_min']:.2f} dB.")
        L.append("")
    if "t2i" in res:
        t = res["t2i"]
        L.append(f"**Text-to-image**: prompts are captions of held-out opaque scenes with 1 or 2 objects "
                 f"(alternating), e.g. \"{t2i_prompts(seeds[:2])[1][1]}\"; seeded generator per prompt, 64x64. "
                 f"All found: 1-object prompts {t['one']:.1%}, 2-object prompts {t['two']:.1%}; per named object "
                 f"{t['object_recall']:.1%}; unnamed detections {t['extra_per_image']:.2f} per image. "
                 f"Detector on the ground-truth images of the same captions: {t['gt_ceiling']:.1%}; on those images "
                 f"encoded and decoded by the model's autoencoder: {t['rec_ceiling']:.1%} (the realistic ceiling: "
                 "the 16x16 latent blurs small stars and diamond tips).")
        L.append("")
    if "attention" in res:
        r = res["attention"]
        L.append(f"**Attention localisation** (`pipe.invert(image, caption, method=\"{args.attn_method}\")` then "
                 f"`pipe(inversion=inv, target=...)`, map = `out.attention_maps[0]` from the reconstruction branch; "
                 f"target = the shape word of the first object whose shape is unique in the caption (else \"colour shape\"); "
                 f"{len(attn_seeds)} mixed held-out scenes, seeds {attn_seeds[0]}..{attn_seeds[-1]}):")
        L.append("")
        L.append("| Region | Map IoU | Centred-disc baseline IoU |")
        L.append("|---|---|---|")
        L.append(f"| top 20% of pixels | {r['iou_top20']:.3f} | {r['base_top20']:.3f} |")
        L.append(f"| top N pixels, N = object area | {r['iou_topA']:.3f} | {r['base_topA']:.3f} |")
        L.append(f"| map >= 0.5 | {r['iou_half']:.3f} | |")
        L.append("")
        L.append(f"The objects cover less than 20% of the image, so the top-20% IoU is bounded by area/20%: its "
                 f"mean upper bound here is {r['iou_top20_max']:.3f} (a perfect map scores that). The map's maximum "
                 f"falls on the object in {r['hit']:.1%} of scenes. Time: inversion {r['t_invert']:.0f}s, removal "
                 f"calls {r['t_call']:.0f}s.")
        L.append("")
    if timings.get("load"):
        L.append(f"Model load: {timings['load']:.1f}s.")
        L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    main()
