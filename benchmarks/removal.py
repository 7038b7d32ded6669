"""Removal benchmark with ground truth: MagicRemover against its baselines, side by side in one run.

    python benchmarks/removal.py            # 100 held-out scenes (seeds from 20000), all methods
    python benchmarks/removal.py --quick    # 10 scenes
    python benchmarks/removal.py --methods "MR text,Telea" --shard 0/2   # some methods, half of the scenes
    python benchmarks/removal.py --methods "MR text" --compute-only      # fill the result cache only

Each method's result image and cost per scene are cached (``results/removal_cache/<short name>.npz``); a run computes
only what its cache lacks, then judges every method whose cache covers the scenes with ``magic_remover/judge.py`` (the
old success kept as a column), so a changed judge re-scores without recomputing.

Writes ``benchmarks/results/removal.md`` (one table, the command and machine at its head) and
``benchmarks/results/removal.png`` (input, each method, ground truth, for a scene of each kind). Scenes come from
held-out seeds; defaults are tuned on seeds from 50000 (``--first-seed`` keeps the two apart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import (  # noqa: E402
    blended_latent_diffusion,
    ledits_pp_pipeline,
    ledits_pp_remove,
    prompt_to_prompt_reweight,
    telea_inpaint,
)
from benchmarks.metrics import dilate, measured, score, target_region  # noqa: E402

KINDS = ["opaque", "shadow", "transparent", "same-shape", "occluder"]
METHODS = [
    "MagicRemover (text only)",
    "MagicRemover (text only), whole image decoded",
    "MagicRemover, protect off",
    "MagicRemover + refocusing (MagicEraser)",
    "MagicRemover, content initialisation off",
    "MagicRemover, null-text inversion (paper), content initialisation off",
    "MagicRemover + GT mask",
    "MagicRemover, research-code options",
    "LEDITS++ (diffusers)",
    "Prompt-to-Prompt (attention x0)",
    "Blended latent diffusion + GT mask",
    "OpenCV Telea + GT mask",
    "Reconstruction only",
    "Ground truth (the scene without the target)",
    "Prompt-to-Prompt (attention x0), own null-text inversion",
    "MagicRemover, automatic region threshold 0.3",
    "MagicRemover, protect cutoff off (soft lowering only)",
    "MagicRemover, every connected part of the region kept",
    "MagicRemover, null-text inversion (paper)",
    "MagicRemover, fill prompt off (the previous defaults)",
    "MagicRemover + GT mask, fill prompt off",
    "MagicRemover + region refinement (1 propagation)",
    "MagicRemover + GT mask, shift pre-fill, guided from t=500",
    "MagicRemover, shift pre-fill, guided from t=500",
]
SHORT_NAMES = ["MR text", "MR decoded", "MR no protect", "MR refocus", "MR no content init", "MR null-text no c.i.", "MR + mask",
               "MR research", "LEDITS++", "P2P x0", "Blended LD", "Telea", "reconstr.", "truth", "P2P x0 null-text", "MR region 0.3",
               "MR no cutoff", "MR all parts", "MR null-text", "MR no fill", "MR + mask no fill", "MR refine",
               "MR + mask shift", "MR shift"]  # fmt: skip
#: The rows that do not run MagicRemover's removal with the model's settings: their results depend on the steps and the
#: guidance scale alone (LEDITS++ has its own settings, the others none), so a change of those settings keeps them
INDEPENDENT_OF_SETTINGS = {METHODS[i] for i in (8, 9, 10, 11, 12, 13, 14)}


def method_fingerprint(method: str, steps: int, settings: dict) -> str:
    """What a method's cached results were made with (:class:`ResultCache` refuses others)."""
    if method in INDEPENDENT_OF_SETTINGS:
        return json.dumps({"steps": steps, "guidance_scale": settings.get("guidance_scale", 7.5)}, sort_keys=True)
    return json.dumps({"steps": steps, "settings": settings}, sort_keys=True)
#: The refocusing row's weights (MagicEraser's w_pos, w_neg), from benchmarks/results/tuning_issue13_A.md
REFOCUS = {"refocus_w_pos": 3.0, "refocus_w_neg": 3.0}
#: LEDITS++'s settings, from benchmarks/results/tuning_ledits.md (tuning seeds)
LEDITS_SETTINGS = {"edit_guidance_scale": 5.0, "edit_threshold": 0.9}
RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, text: str, folder: Path = RESULTS) -> None:
    """Writes a benchmark's markdown table to ``folder/name`` and prints it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    print(text)


#: Where each method's result image and cost per scene are kept, so that re-judging never recomputes a removal
CACHE = RESULTS / "removal_cache"
COST_KEYS = ("seconds", "forward", "backward", "forward_rows", "backward_rows", "peak_mib")


class ResultCache:
    """One method's results, ``CACHE/<short name>.npz``: per seed the result image (uint8 HxWx3) and its cost.

    The file records the settings the results were made with (``fingerprint``); results made with other settings
    are refused rather than mixed (a reader that only judges may pass None to take what is there). Writers add one scene at a time under a lock and replace the file atomically, so
    shards can share it and a stopped run resumes.
    """

    def __init__(self, folder: Path, method: str, fingerprint: str):
        self.path = Path(folder) / (SHORT_NAMES[METHODS.index(method)].replace(" ", "_").replace("/", "-") + ".npz")
        self.method, self.fingerprint = method, fingerprint

    def load(self) -> dict:
        """``{seed: (image, cost dict)}``, empty if nothing is cached yet."""
        if not self.path.is_file():
            return {}
        with np.load(self.path, allow_pickle=False) as data:
            if self.fingerprint is not None and str(data["fingerprint"]) != self.fingerprint:
                raise RuntimeError(f"{self.path} holds results made with other settings ({data['fingerprint']}); "
                                   f"move it away to recompute {self.method!r} with {self.fingerprint}")  # fmt: skip
            return {int(seed): (image, dict(zip(COST_KEYS, map(float, cost))))
                    for seed, image, cost in zip(data["seeds"], data["images"], data["costs"])}  # fmt: skip

    @contextlib.contextmanager
    def locked(self):
        """Holds the cache folder's lock (the folder itself: no lock file is left behind) while writing."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # closing releases the lock

    def add(self, seed: int, image, cost: dict) -> None:
        with self.locked():
            stored = self.load()  # another shard may have added scenes since this one read the file
            stored[int(seed)] = (np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, np.uint8), cost)
            seeds = sorted(stored)
            partial = self.path.with_suffix(".partial.npz")
            np.savez_compressed(partial, fingerprint=np.array(self.fingerprint), seeds=np.array(seeds),
                                images=np.stack([stored[s][0] for s in seeds]),
                                costs=np.array([[stored[s][1].get(k, 0.0) for k in COST_KEYS] for s in seeds]))  # fmt: skip
            partial.replace(self.path)
            # the detector's findings on the earlier results (``cached_detections``) no longer describe this file
            self.path.with_suffix(".detections.npz").unlink(missing_ok=True)


def target_phrase(scene, index: int) -> str:
    """The shape word, or colour and shape when another object shares the shape."""
    target = scene.objects[index]
    shared = any(o.shape == target.shape for i, o in enumerate(scene.objects) if i != index)
    return f"{target.color} {target.shape}" if shared else target.shape


def _visible(scene, index: int) -> int:
    """Pixels where the target is the topmost object."""
    covered = np.zeros_like(scene.objects[index].mask)
    for other in scene.objects[index + 1 :]:
        covered |= other.mask
    return int((scene.objects[index].mask & ~covered).sum())


def select_scenes(count: int, first_seed: int) -> list[tuple[str, object, int]]:
    """``count`` held-out scenes spread over the kinds, as ``(kind, scene, target index)``; deterministic."""
    from magic_remover.scenes import COLOR_NAMES, HELDOUT_SEED_LIMIT, SHAPES, make_scene

    per_kind = [count // len(KINDS) + (1 if k < count % len(KINDS) else 0) for k in range(len(KINDS))]
    chosen = []
    for k, (kind, wanted) in enumerate(zip(KINDS, per_kind)):
        seed, found = first_seed + 2000 * k, 0
        while found < wanted:
            seed += 1
            if seed >= HELDOUT_SEED_LIMIT:
                raise RuntimeError("ran out of held-out seeds")
            rng = np.random.default_rng(seed)
            if kind in ("opaque", "shadow", "transparent"):
                scene, index = make_scene(seed, size=64, num_objects=2, kind=kind), 0
            elif kind == "same-shape":
                shape = SHAPES[rng.integers(len(SHAPES))]
                colors = list(rng.choice(COLOR_NAMES, size=2, replace=False))
                scene, index = make_scene(seed, size=64, num_objects=2, kind="opaque", shapes=[shape], colors=colors), 0
            else:  # the target lies on top of another object
                scene, index = make_scene(seed, size=64, num_objects=2, kind="opaque"), 1
                if (scene.objects[0].mask & scene.objects[1].mask).sum() < 12:
                    continue
            if _visible(scene, index) < 40 or any(_visible(scene, i) < 40 for i in range(len(scene.objects))):
                continue
            chosen.append((kind, scene, index))
            found += 1
    return chosen


def run(args) -> None:
    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline
    from magic_remover.scenes import caption_without

    torch.set_num_threads(args.threads)
    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    settings = pipe.removal_defaults  # the model's magic_remover_defaults.json, as every call on it uses
    model_steps = settings.pop("num_inference_steps", 50)
    steps = args.steps or model_steps
    guidance = settings.get("guidance_scale", 7.5)
    research = dict(energy="quantile", gradient_weighting="binary", blend_outside_attention_mask=True,
                    attention_mask_threshold=None, keep_input_outside_attention_mask=False)  # fmt: skip

    methods = args.methods
    ledits = ledits_pp_pipeline(pipe) if METHODS[8] in methods else None
    scenes = select_scenes(args.scenes, args.first_seed)
    fingerprints = {method: method_fingerprint(method, steps, settings) for method in METHODS}

    def scene_results(scene, index, wanted):
        """Runs the ``wanted`` methods on one scene: ``(images, costs)`` by method."""
        phrase = target_phrase(scene, index)
        region = dilate(target_region(scene.objects[index]), 2)
        mask = Image.fromarray((region * 255).astype(np.uint8))
        common = dict(image=scene.image, target=phrase, num_inference_steps=steps, output_type="pil", **settings)
        inversion, inversion_cost = None, None
        results, costs = {}, {}

        def record(method, fn, shares_inversion):
            nonlocal inversion, inversion_cost
            if method not in wanted:
                return
            if shares_inversion and inversion is None:  # one inversion per scene, the call's default method
                with measured(pipe) as inversion_cost:
                    inversion = pipe.invert(scene.image, scene.caption, num_inference_steps=steps,
                                            guidance_scale=guidance)  # fmt: skip
            with measured(pipe) as cost:
                results[method] = fn()
            if shares_inversion:
                for key in ("seconds", "forward", "backward"):
                    cost[key] += inversion_cost[key]
                cost["peak_mib"] = max(cost["peak_mib"], inversion_cost["peak_mib"])
            costs[method] = cost

        record(METHODS[0], lambda: pipe(inversion=inversion, **common).images[0], True)
        decoded = {**common, "keep_input_outside_attention_mask": False}  # the ablation of that option
        record(METHODS[1], lambda: pipe(inversion=inversion, **decoded).images[0], True)
        record(METHODS[2], lambda: pipe(inversion=inversion, **common, protect=[]).images[0], True)
        record(METHODS[3], lambda: pipe(inversion=inversion, **{**common, **REFOCUS}).images[0], True)
        no_fill = {**common, "content_initialization": None}  # the ablation of content initialisation
        record(METHODS[4], lambda: pipe(inversion=inversion, **no_fill).images[0], True)
        # the paper's inversion, compared with the row above (content initialisation off in both)
        record(METHODS[5], lambda: pipe(**no_fill, prompt=scene.caption, inversion_method="null-text").images[0], False)
        record(METHODS[6], lambda: pipe(inversion=inversion, mask_image=mask, **common).images[0], True)
        record(METHODS[7], lambda: pipe(inversion=inversion, **{**common, **research}).images[0], True)
        record(METHODS[8], lambda: ledits_pp_remove(ledits, scene.image, scene.caption, phrase, steps,
                                                    **LEDITS_SETTINGS, seed=scene.seed), False)  # fmt: skip
        record(METHODS[9], lambda: prompt_to_prompt_reweight(pipe, inversion, phrase), True)
        record(METHODS[10], lambda: blended_latent_diffusion(pipe, scene.image, region, caption_without(scene, index),
                                                             steps, guidance, seed=scene.seed), False)  # fmt: skip
        record(METHODS[11], lambda: telea_inpaint(scene.image, region), False)
        rec_settings = {**decoded, "attention_guidance_scale": 0.0}
        record(METHODS[12], lambda: pipe(inversion=inversion, **rec_settings).reconstructions[0], True)
        record(METHODS[13], lambda: scene.objects[index].without, False)  # the judge's ceiling
        # Prompt-to-Prompt as its authors pair it, with null-text inversion (the row above uses the shared one: with
        # negative-prompt inversion its CFG halves are one prediction, so the re-weighting is not amplified)
        record(METHODS[14], lambda: prompt_to_prompt_reweight(
            pipe, pipe.invert(scene.image, scene.caption, num_inference_steps=steps, guidance_scale=guidance,
                              method="null-text"), phrase), False)  # fmt: skip
        # a tighter automatic region (the map >= 0.3, grown by one latent pixel) than the research code's top 20%
        record(METHODS[15], lambda: pipe(inversion=inversion, **common, attention_mask_threshold=0.3).images[0], True)
        # the ablation of protect_cutoff: protected words lower the target's map but never zero it
        record(METHODS[16], lambda: pipe(inversion=inversion, **{**common, "protect_cutoff": None}).images[0], True)
        # the ablation of attention_mask_components: the region keeps every connected part, as the research code's
        record(METHODS[17], lambda: pipe(inversion=inversion, **{**common, "attention_mask_components": None}).images[0],
               True)  # fmt: skip
        # the paper's inversion with every shipped default (it inverts inside the call, so it shares no inversion)
        record(METHODS[18], lambda: pipe(**common, prompt=scene.caption, inversion_method="null-text").images[0], False)
        # issue 23's levers (ours): the fill prompt off, from text and with the true mask; the region refinement on
        paper_text = {**common, "fill_prompt": None}
        record(METHODS[19], lambda: pipe(inversion=inversion, **paper_text).images[0], True)
        record(METHODS[20], lambda: pipe(inversion=inversion, mask_image=mask, **paper_text).images[0], True)
        record(METHODS[21], lambda: pipe(inversion=inversion, **{**common, "region_refinement": 1}).images[0], True)
        # the fill that measured best given the true mask on tuning scenes (tuning_issue23_fill.md): the shift
        # pre-fill, and the edit branch leaving the reconstruction later (t=500), so that the pre-fill is kept more
        shifted = {**common, "content_initialization": "shift", "guidance_timesteps": (100, 500)}
        record(METHODS[22], lambda: pipe(inversion=inversion, mask_image=mask, **shifted).images[0], True)
        # the same from text: on 60 tuning scenes it measured 25% against 17% for the defaults (tuning_issue23_fill.md)
        record(METHODS[23], lambda: pipe(inversion=inversion, **shifted).images[0], True)
        return results, costs

    caches = {method: ResultCache(args.cache, method, fingerprints[method]) for method in methods}
    stored = {method: caches[method].load() for method in methods}  # a rerun resumes, and shards share the files
    shard, shards = args.shard
    for n, (kind, scene, index) in enumerate(scenes):
        missing = [m for m in methods if scene.seed not in stored[m]]
        if not missing or n % shards != shard:
            continue
        results, costs = scene_results(scene, index, missing)
        for method in missing:
            caches[method].add(scene.seed, results[method], costs[method])
            stored[method][scene.seed] = results[method], costs[method]
        print(f"[{n + 1}/{len(scenes)}] {kind:11s} seed {scene.seed} remove {target_phrase(scene, index)!r}: "
              + ", ".join(SHORT_NAMES[METHODS.index(m)] for m in missing), flush=True)  # fmt: skip
    # another shard may still be computing some: read the caches again
    unfinished = [m for m in methods if any(scene.seed not in caches[m].load() for _, scene, _ in scenes)]
    if unfinished:
        print(f"{len(unfinished)} method(s) lack scenes; the table is written by a run once every shard has finished")
    elif not args.compute_only:
        write_tables(scenes, args, fingerprints, steps, settings)


def cached_detections(cache: ResultCache, stored: dict) -> dict:
    """The detector's findings on each cached result, ``{seed: [(shape, color, mask), ...]}``, themselves cached
    beside the results (``<method>.detections.npz``): the detector is the slow part of judging."""
    from magic_remover.detector import detect

    path = cache.path.with_suffix(".detections.npz")
    found = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            for seed, shape, color, bits in zip(data["seeds"], data["shapes"], data["colors"], data["masks"]):
                found.setdefault(int(seed), []).append((str(shape), str(color), np.unpackbits(bits)))
            found.update({int(seed): [] for seed in data["empty"]})
    missing = [seed for seed in stored if seed not in found]
    for seed in missing:
        found[seed] = [(d.shape, d.color, d.mask.ravel()) for d in detect(stored[seed][0])]
    if missing:
        with cache.locked():
            _save_detections(path, found)
    return {seed: [(shape, color, mask[: stored[seed][0][..., 0].size].astype(bool).reshape(stored[seed][0].shape[:2]))
                   for shape, color, mask in dets] for seed, dets in found.items() if seed in stored}  # fmt: skip


def _save_detections(path: Path, found: dict) -> None:
    """Writes the detections atomically; ``empty`` keeps the scenes where nothing was found."""
    rows = [(seed, *d) for seed in sorted(found) for d in found[seed]]
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, seeds=np.array([r[0] for r in rows], int), shapes=np.array([r[1] for r in rows], str),
                        colors=np.array([r[2] for r in rows], str),
                        masks=np.array([np.packbits(r[3].astype(bool)) for r in rows], np.uint8).reshape(len(rows), -1),
                        empty=np.array([seed for seed in found if not found[seed]], int))  # fmt: skip
    partial.replace(path)


def judged(method: str, scenes, args, fingerprint: str | None):
    """Every scene's verdict and metrics for ``method`` from its cache, or None while the cache lacks scenes."""
    from magic_remover.judge import judge, strip

    cache = ResultCache(args.cache, method, fingerprint)
    stored = cache.load()
    if any(scene.seed not in stored for _, scene, _ in scenes):
        return None
    detections = cached_detections(cache, stored)
    strips = Path(args.results) / "removal_strips" / cache.path.stem
    strips.mkdir(parents=True, exist_ok=True)
    scored = {}
    for kind, scene, index in scenes:
        image, cost = stored[scene.seed]
        pairs = {(shape, color) for shape, color, _ in detections[scene.seed]}
        old = score(image, scene, index, lambda _image, shape, color: (shape, color) in pairs)
        old["old_success"] = old.pop("success")
        scored[scene.seed] = {**old, **judge(image, scene, index, detections[scene.seed]), **cost, "kind": kind}
        strip(scene, index, image).save(strips / f"{scene.seed}.png")
    return scored


def write_tables(scenes, args, fingerprints: dict, steps, settings) -> None:
    """Judges every method whose cache covers the scenes; writes removal.md (and the grid) with a row per method."""
    scored = {method: judged(method, scenes, args, fingerprints[method]) for method in METHODS}
    write_result("removal.md", make_table(scored, scenes, steps, settings, args, fingerprints), args.results)
    complete = [m for m in METHODS if scored[m] is not None and m != METHODS[13]]
    examples = {}
    for kind, scene, index in scenes:  # the first scene of each kind
        if kind not in examples:
            images = [ResultCache(args.cache, m, fingerprints[m]).load()[scene.seed][0] for m in complete]
            examples[kind] = [scene.image, *map(Image.fromarray, images), scene.objects[index].without]
    make_grid(examples, complete).save(Path(args.results) / "removal.png")


def _mean(values):
    """Mean over the images; a PSNR of identical pixels is infinite, so if any image is infinite the mean is too."""
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if any(math.isinf(v) for v in values):
        return float("inf")
    return sum(values) / len(values) if values else float("nan")


def make_table(scored: dict, scenes, steps, settings, args, fingerprints: dict) -> str:
    from magic_remover.judge import tolerances_text
    from magic_remover.pipeline_magic_remover import DEFAULT_INVERSION_METHOD

    inversion_method = settings.get("inversion_method", DEFAULT_INVERSION_METHOD)
    counts = {k: sum(1 for kind, _, _ in scenes if kind == k) for k in KINDS}
    command = "python benchmarks/removal.py " + " ".join(sys.argv[1:])
    lines = [
        "# Removal benchmark",
        "",
        f"Command: `{command.strip()}` (judging the cached results in `{Path(args.cache).name}/`)  ",
        f"Judged on {platform.machine()}, torch {torch.__version__}, on {time.strftime('%Y-%m-%d')}.  ",
        f"Model: the embedded tiny-shapes model; {len(scenes)} held-out scenes (seeds from {args.first_seed}): "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; {steps} DDIM steps; MagicRemover settings {settings or 'paper defaults'}.",
        "",
        "Success (the judge, `magic_remover/judge.py`, validated by eye in `judge_validation.md`): the target is gone, "
        "nothing is in its place, its shadow is gone and every neighbour is kept; each failure is its own column and "
        "a result can fail several. Target left: more than half of the object's pixels still nearer the input than the "
        "truth, or the detector still finds it. Replaced: a blob of pixels off the truth in the target's region, or "
        "an object found there that the truth does not hold (a recoloured target is a replacement). Shadow left: a "
        "quarter of the shadow's pixels still dark. Neighbour damaged: a tenth of another object's visible pixels off "
        f"the truth. Tolerances: {tolerances_text()}. Old success: the previous definition (the detector no longer "
        "finds the target and still finds every other object), kept for continuity. Fill PSNR: inside the target's "
        "region against the scene rendered without it. Background PSNR: outside the region dilated by 3 px, against "
        "the input (inf: untouched). Time and UNet passes (measured when the result was made, on a shared CPU: "
        "compare within the table) include the inversion for the methods that use it (one per scene, shared, made "
        f"with the call's default method: {inversion_method}; the null-text rows make their own).",
        "",
        "| method | kind | n | success | target left | replaced | shadow left | neighbour damaged | old success "
        "| fill PSNR (dB) | background PSNR (dB) | s / image | UNet fwd / bwd |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        if scored[method] is None:
            cached = len(ResultCache(args.cache, method, fingerprints[method]).load())
            lines.append(f"| {method} | all | {cached} of {len(scenes)} | not re-scored: its run had not finished "
                         + "| — " * 9 + "|")  # fmt: skip
            continue
        first_row = True
        for kind in KINDS + ["all"]:
            items = [r for r in scored[method].values() if kind in ("all", r["kind"])]
            if not items:  # a few scenes (--quick, --scenes N) need not hold every kind
                continue
            rate = {key: 100 * sum(r[key] for r in items) / len(items)
                    for key in ("success", *("target_left", "replaced", "shadow_left", "neighbour_damaged"), "old_success")}  # fmt: skip
            lines.append(
                f"| {method if first_row else ''} | {kind} | {len(items)} | **{rate['success']:.0f}%** "
                f"| {rate['target_left']:.0f}% | {rate['replaced']:.0f}% | {rate['shadow_left']:.0f}% "
                f"| {rate['neighbour_damaged']:.0f}% | {rate['old_success']:.0f}% "
                f"| {_mean([r['fill_psnr'] for r in items]):.2f} | {_mean([r['background_psnr'] for r in items]):.2f} "
                f"| {_mean([r['seconds'] for r in items]):.2f} "
                f"| {_mean([r['forward'] for r in items]):.0f} / {_mean([r['backward'] for r in items]):.0f} |"
            )
            first_row = False
    return "\n".join(lines) + "\n"


def make_grid(examples: dict, methods: list[str], scale: int = 3) -> Image.Image:
    labels = ["input", *(SHORT_NAMES[METHODS.index(m)] for m in methods), "ground truth"]
    tile, label_h, kind_w = 64 * scale, 14, 80
    kinds = list(examples)
    canvas = Image.new("RGB", (kind_w + len(labels) * (tile + 2), label_h + len(kinds) * (tile + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((kind_w + c * (tile + 2) + 2, 1), label, fill="black")
    for r, kind in enumerate(kinds):
        y = label_h + r * (tile + 2)
        draw.text((2, y + tile // 2), kind, fill="black")
        for c, image in enumerate(examples[kind]):
            canvas.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (kind_w + c * (tile + 2), y))
    return canvas


def _methods(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in SHORT_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; expected some of {SHORT_NAMES}")
    return [METHODS[SHORT_NAMES.index(name)] for name in names]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=None, help="number of scenes (default 100, --quick 10)")
    parser.add_argument("--quick", action="store_true", help="10 scenes")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the embedded model's)")
    parser.add_argument("--first-seed", type=int, default=20000, help="first held-out seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--results", default=str(RESULTS), help="folder for removal.md and removal.png")
    parser.add_argument("--methods", type=_methods, default=list(METHODS),
                        help="methods to run, by short name, comma separated: " + ", ".join(SHORT_NAMES))
    parser.add_argument("--shard", type=lambda v: tuple(int(x) for x in v.split("/")), default=(0, 1),
                        help="i/n: run only scenes with index %% n == i (checkpointed; a run without --shard, or the "
                             "last shard to finish, writes the table)")
    parser.add_argument("--cache", default=None,
                        help="folder of the per-method result caches (default: <results>/removal_cache)")
    parser.add_argument("--compute-only", action="store_true",
                        help="fill the caches for --methods and stop; a later run without it judges and writes the table")
    args = parser.parse_args(argv)
    args.cache = Path(args.cache or Path(args.results) / "removal_cache")
    args.scenes = args.scenes or (10 if args.quick else 100)
    run(args)


if __name__ == "__main__":
    main()
