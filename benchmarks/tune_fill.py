"""Issue 23's levers on the tuning scenes, judged by the new judge: the fill prompt, the region refinement, the shift
pre-fill and its start, and the settings chosen under the first judge (protect cutoff, connected parts, threshold,
lambda, attention guidance), re-tuned under the new one.

    python benchmarks/tune_fill.py --scenes 15                    # from text
    python benchmarks/tune_fill.py --scenes 15 --true-mask        # given the true region (object and shadow)
    python benchmarks/tune_fill.py --scenes 30 --variants 1,15,16  # some variants (indices into VARIANTS)

Every variant starts from the embedded model's shipped settings and changes only what its name says; all run on the
same inversion per scene (negative-prompt, the default). Scenes are the removal benchmark's kinds on tuning seeds
(from 50000), never the held-out ones it reports. Each result is judged by ``magic_remover/judge.py`` and its strip
(input | result | truth) saved under ``results/tuning_issue23_strips/`` to be looked at; the table goes to
``results/tuning_issue23_fill.md`` (one section per region, text or true mask, and scene count: the latest run of
each kept; a longer run shows the variants it ran on all its scenes).
Result images are cached per variant and scene (``results/tuning_issue23_results.npz``; the cost of each in
``results/tuning_issue23_cache.json``), so a stopped run resumes, a new variant costs only its own calls, and a changed
judge re-judges every result without recomputing it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from magic_remover.judge import FAILURES, judge, strip  # noqa: E402
from benchmarks.metrics import dilate, target_region  # noqa: E402
from benchmarks.removal import KINDS, RESULTS, select_scenes, target_phrase  # noqa: E402

#: Each variant's change to the shipped settings
VARIANTS = {
    "fill prompt off (previous defaults)": {"fill_prompt": None},
    "fill prompt (shipped)": {},
    "fill prompt, guidance 1 (fill prompt alone)": {"guidance_scale": 1.0},
    "fill prompt, attention guidance off": {"attention_guidance_scale": 0.0},
    "fill prompt, region threshold 0.5": {"attention_mask_threshold": 0.5},
    "fill prompt, guidance 1, refinement 1": {"guidance_scale": 1.0, "region_refinement": 1},
    "fill prompt, guidance 1, refinement 2": {"guidance_scale": 1.0, "region_refinement": 2},
    "fill prompt, guidance 1, refinement 1, threshold 0.5": {"guidance_scale": 1.0, "region_refinement": 1,
                                                             "attention_mask_threshold": 0.5},
    "fill prompt, refinement 1": {"region_refinement": 1},
    "fill prompt, shift pre-fill": {"content_initialization": "shift"},
    "fill prompt off, shift pre-fill": {"fill_prompt": None, "content_initialization": "shift"},
    "guided from t=500": {"guidance_timesteps": (100, 500)},
    "guided from t=500, shift pre-fill": {"guidance_timesteps": (100, 500), "content_initialization": "shift"},
    "guided from t=650, shift pre-fill": {"guidance_timesteps": (100, 650), "content_initialization": "shift"},
    "guided from t=350, shift pre-fill": {"guidance_timesteps": (100, 350), "content_initialization": "shift"},
    # part 2.4: the settings chosen under the first judge (issue 13), re-tuned under the new one
    "protect cutoff 0.5": {"protect_cutoff": 0.5},
    "protect cutoff 0.9": {"protect_cutoff": 0.9},
    "protect cutoff off (soft lowering only)": {"protect_cutoff": None},
    "two connected parts": {"attention_mask_components": 2},
    "every connected part": {"attention_mask_components": None},
    "region threshold 0.3": {"attention_mask_threshold": 0.3},
    "lambda 0.6": {"erase_lambda": 0.6},
    "lambda 0.9": {"erase_lambda": 0.9},
    "attention guidance 0.3": {"attention_guidance_scale": 0.3},
}

ALL_VARIANTS = ",".join(map(str, range(len(VARIANTS))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=15)
    parser.add_argument("--first-seed", type=int, default=50000, help="tuning seeds, disjoint from the benchmark's")
    parser.add_argument("--true-mask", action="store_true", help="give the true region as mask_image")
    parser.add_argument("--variants", default=ALL_VARIANTS,
                        help="indices into VARIANTS, comma separated (default: all)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline

    torch.set_num_threads(1)
    names = [list(VARIANTS)[int(i)] for i in args.variants.split(",")]
    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    settings = pipe.removal_defaults
    steps = settings.pop("num_inference_steps")
    region_name = "true mask" if args.true_mask else "text"
    cache_path = args.results / "tuning_issue23_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    images = load_results(args.results)
    cache = {key: value for key, value in cache.items() if key in images}  # verdicts alone: made by an older judge
    strips = args.results / "tuning_issue23_strips"
    strips.mkdir(parents=True, exist_ok=True)
    scenes = select_scenes(args.scenes, args.first_seed)
    for kind, scene, index in scenes:
        phrase, inversion = target_phrase(scene, index), None
        call = dict(image=scene.image, target=phrase, num_inference_steps=steps, output_type="pil")
        if args.true_mask:
            region = dilate(target_region(scene.objects[index]), 2)
            call["mask_image"] = Image.fromarray((region * 255).astype(np.uint8))
        for name in names:
            key = f"{region_name}|{name}|{scene.seed}"
            if key in cache:
                continue
            if inversion is None:
                inversion = pipe.invert(scene.image, scene.caption, num_inference_steps=steps,
                                        guidance_scale=settings.get("guidance_scale", 7.5))  # fmt: skip
            start = time.perf_counter()
            result = pipe(inversion=inversion, **call, **{**settings, **VARIANTS[name]}).images[0]
            seconds = time.perf_counter() - start
            cache[key] = {"kind": kind, "seconds": seconds}
            images[key] = np.asarray(result.convert("RGB"), np.uint8)
            label = "".join(c for c in name if c.isalnum())[:40]
            strip(scene, index, result).save(strips / f"{region_name.replace(' ', '_')}_{scene.seed}_{label}.png")
            save_results(args.results, images)
            partial = cache_path.with_suffix(".partial")
            partial.write_text(json.dumps(cache, indent=1, sort_keys=True))
            partial.replace(cache_path)
        print(f"{kind:11s} seed {scene.seed} {phrase!r}: done", flush=True)
    write_table(judged(cache, images, scenes), scenes, args, settings, steps)


def load_results(folder: Path) -> dict:
    path = folder / "tuning_issue23_results.npz"
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return dict(zip(data["keys"].tolist(), data["images"]))


def save_results(folder: Path, images: dict) -> None:
    keys = sorted(images)
    partial = folder / "tuning_issue23_results.partial.npz"
    np.savez_compressed(partial, keys=np.array(keys), images=np.stack([images[k] for k in keys]))
    partial.replace(folder / "tuning_issue23_results.npz")


def judged(cache: dict, images: dict, scenes) -> dict:
    """Each cached result's verdict by the current judge."""
    from magic_remover.detector import detect

    by_seed = {scene.seed: (scene, index) for _, scene, index in scenes}
    out = {}
    for key, item in cache.items():
        seed = int(key.rsplit("|", 1)[1])
        if seed not in by_seed:
            continue
        scene, index = by_seed[seed]
        verdict = judge(images[key], scene, index, [(d.shape, d.color, d.mask) for d in detect(images[key])])
        out[key] = {**item, **{k: verdict[k] for k in ("success", *FAILURES)}}
    return out


def write_table(cache: dict, scenes, args, settings: dict, steps: int) -> None:
    """This run's region's table (the variants every scene has) in ``tuning_issue23_fill.md``, whose section for the
    other region, made by its own run and its own scene count, is kept."""
    region_name = "true mask" if args.true_mask else "text"
    rows = []
    for name in VARIANTS:
        items = [cache.get(f"{region_name}|{name}|{scene.seed}") for _, scene, _ in scenes]
        if any(item is None for item in items):
            continue
        rate = lambda key: 100 * np.mean([item[key] for item in items])  # noqa: E731
        by_kind = " / ".join(f"{100 * np.mean([i['success'] for i in items if i['kind'] == k]):.0f}%"
                             for k in KINDS if any(i["kind"] == k for i in items))  # fmt: skip
        rows.append(f"| {name} | **{rate('success'):.0f}%** | {rate('target_left'):.0f}% | {rate('replaced'):.0f}% "
                    f"| {rate('shadow_left'):.0f}% | {rate('neighbour_damaged'):.0f}% | {by_kind} "
                    f"| {np.mean([i['seconds'] for i in items]):.1f} |")  # fmt: skip
    title = f"{region_name}, {len(scenes)} scenes"
    section = [f"## Region: {title}", "",
               f"Command: `python benchmarks/tune_fill.py --scenes {args.scenes}"
               + (" --true-mask" if args.true_mask else "")
               + (f" --variants {args.variants}" if args.variants != ALL_VARIANTS else "")  # what made this table
               + f"`; {len(scenes)} scenes from tuning seed "
               f"{args.first_seed} (" + ", ".join(f"{k} {sum(1 for s in scenes if s[0] == k)}" for k in KINDS) + ").",
               "",
               "| variant | success | target left | replaced | shadow left | neighbour damaged "
               "| by kind (" + " / ".join(KINDS) + ") | s |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows]  # fmt: skip
    path = args.results / "tuning_issue23_fill.md"
    sections = {}
    if path.is_file():  # keep the other sections: the other region's, and this region's with another scene count
        for block in path.read_text().split("\n## Region: ")[1:]:
            sections[block.split("\n", 1)[0].strip()] = "## Region: " + block.strip()
    sections[title] = "\n".join(section)
    lines = [
        "# Issue 23's levers on the tuning scenes",
        "",
        f"{steps} steps, the embedded model's shipped settings {settings} changed as each row says; every variant on "
        "the same negative-prompt inversion per scene; judged by `magic_remover/judge.py` (strips in "
        "`tuning_issue23_strips/`). Seconds: per removal, on a shared CPU.",
    ]
    for name in sorted(sections, key=lambda t: (t.startswith("true mask"), int(t.rsplit(", ", 1)[-1].split()[0]))):
        lines += ["", sections[name]]
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
