"""Speed benchmark: each inversion method side by side, with the passes it needs and what it costs in quality.

    python benchmarks/speed.py                      # every section (embedded 64 and 128 px, SD-1.5 UNet, memory)
    python benchmarks/speed.py --only embedded64    # one section; results of earlier sections are kept
    python benchmarks/speed.py --only sd15 --sd-steps 3
    python benchmarks/speed.py --only sdxl --xl-size 128 --xl-steps 3   # SDXL architecture, random weights

Rows per inversion method (null-text = the paper's configuration, negative-prompt, direct, ddim). Repetitions are
interleaved (every method on one scene, then the next scene) so that machine noise hits every method alike. Writes
``benchmarks/results/speed.md``: one table per section, with the command, machine and versions at its head. Each
section is stored in ``benchmarks/results/speed_sections.json`` so they can be run one at a time and merged.

Columns: UNet rows (samples through the UNet: a CFG-batched call counts 2) forward and backward, against the method's
minimum for the settings; seconds for inversion and loop; total and its ratio to null-text; peak resident memory
growth; reconstruction PSNR with attention guidance off against the autoencoder's round trip and against the input;
removal success, neighbour lost and fill PSNR on held-out scenes of the removal benchmark (same detector and
definitions). The SD-1.5 and SDXL sections also time diffusers' own img2img on the same components, size and steps,
in the same process, and give each method's total as a ratio to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.metrics import measured, psnr, score  # noqa: E402
from benchmarks.removal import select_scenes, target_phrase, write_result  # noqa: E402

METHODS = ["null-text", "negative-prompt", "direct", "ddim"]
RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ["embedded64", "embedded128", "sd15", "gpu", "sdxl", "sdxl_gpu", "memory"]


def minimum_rows(method: str, steps: int, guided: list[bool], optimized: list[bool], optimization_steps: int,
                 inner_iterations: int = 0, fill_prompt: bool = False) -> tuple[int, int]:  # fmt: skip
    """The fewest UNet rows (forward, backward) one image needs with ``method`` for these settings.

    Inversion: T forwards (the DDIM trajectory); null-text adds, per step, the conditional prediction, its inner
    iterations (a forward and a backward each) and the final pass with the optimised embedding. Loop: the
    reconstruction branch's CFG at every step; the edit branch's CFG at each guided evaluation (one plus the
    classifier-optimisation repetitions) and at every later step; one backward (the conditional half) per guided
    evaluation. CFG costs one row where its two halves are the same prediction (negative-prompt), else two. A fill
    prompt makes the edit branch's halves differ (two rows) and adds one conditional row per guided evaluation (the
    energy's pass on the prompt).
    """
    cfg = 1 if method == "negative-prompt" else 2
    edit_cfg = 2 if fill_prompt else cfg
    inversion_forward, backward = steps, 0
    if method == "null-text":
        inversion_forward += 2 * steps + inner_iterations
        backward += inner_iterations
    first_guided = guided.index(True) if any(guided) else steps
    evaluations = sum(1 + (optimization_steps if optimized[i] else 0) for i in range(steps) if guided[i])
    after = sum(1 for i in range(first_guided, steps) if not guided[i])
    loop_forward = cfg * steps + edit_cfg * (evaluations + after) + (evaluations if fill_prompt else 0)
    return inversion_forward + loop_forward, backward + evaluations


def removal_call_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "guidance_scale"}


def run_methods(pipe, images, captions, phrases, steps, settings, success_of=None, reconstruction_scenes=0,
                methods=METHODS):
    """Every method on each image in turn; returns per-method lists of measurements."""
    from magic_remover.inversion import timesteps_in_range

    guidance = settings.get("guidance_scale", 7.5)
    call = removal_call_settings(settings)
    records = {m: [] for m in methods}
    for n, (image, caption, phrase) in enumerate(zip(images, captions, phrases)):
        for method in methods:
            with measured(pipe) as inv_cost:
                inversion = pipe.invert(image, caption, num_inference_steps=steps, guidance_scale=guidance,
                                        method=method)  # fmt: skip
            with measured(pipe) as loop_cost:
                out = pipe(image=image, target=phrase, inversion=inversion, inversion_method=method,
                           num_inference_steps=steps, guidance_scale=guidance, output_type="pil", **call)  # fmt: skip
            timesteps = inversion.timesteps.tolist()
            guided = timesteps_in_range(timesteps, *call.get("guidance_timesteps", (100, 800)))
            optimized = timesteps_in_range(timesteps, *call.get("optimization_timesteps", (500, 800)))
            inner = inv_cost["backward_rows"] if method == "null-text" else 0
            minimum = minimum_rows(method, steps, guided, optimized, call.get("optimization_steps", 1), inner,
                                   bool(call.get("fill_prompt")))  # fmt: skip
            record = {
                "forward": inv_cost["forward_rows"] + loop_cost["forward_rows"],
                "backward": inv_cost["backward_rows"] + loop_cost["backward_rows"],
                "min_forward": minimum[0],
                "min_backward": minimum[1],
                "inversion_s": inv_cost["seconds"],
                "loop_s": loop_cost["seconds"],
                "peak_mib": max(inv_cost["peak_mib"], loop_cost["peak_mib"]),
            }
            if n < reconstruction_scenes:
                record.update(reconstruction_psnr(pipe, image, inversion, phrase, steps, guidance, call, method))
            if success_of is not None:  # the removal benchmark's score: success, neighbour lost, fill PSNR
                outcome = success_of(n, out.images[0])
                record.update(success=bool(outcome["success"]), others_lost=bool(outcome["others_lost"]),
                              fill_psnr=float(outcome["fill_psnr"]))  # fmt: skip
            records[method].append(record)
        print(f"[{n + 1}/{len(images)}] " + ", ".join(
            f"{m} {records[m][-1]['inversion_s'] + records[m][-1]['loop_s']:.1f}s"
            + ("" if success_of is None else (" ok" if records[m][-1]["success"] else " --")) for m in methods
        ), flush=True)  # fmt: skip
    return records


def reconstruction_psnr(pipe, image, inversion, phrase, steps, guidance, call, method) -> dict:
    """PSNR of the reconstruction branch (attention guidance off) against the VAE round trip and the input."""
    settings = {**call, "attention_guidance_scale": 0.0, "keep_input_outside_attention_mask": False,
                "blend_outside_attention_mask": False}  # fmt: skip
    out = pipe(image=image, target=phrase, inversion=inversion, inversion_method=method, num_inference_steps=steps,
               guidance_scale=guidance, output_type="np", **settings)  # fmt: skip
    z0 = inversion.latents[0].to(pipe._execution_device)
    with torch.no_grad():
        round_trip = pipe.image_processor.postprocess(pipe.decode_latents_to_pixels(z0), output_type="np")[0]
    source = np.asarray(image.convert("RGB").resize(round_trip.shape[1::-1]), dtype=np.float32) / 255.0
    return {"psnr_round_trip": psnr(out.reconstructions[0], round_trip), "psnr_input": psnr(out.reconstructions[0], source)}


def summarise(records: dict) -> list[dict]:
    rows = []
    reference = None
    for method in records:
        items = records[method]
        def mean(key):  # over the images that carry the measurement (reconstruction PSNR: the first few)
            values = [r[key] for r in items if key in r]
            return float(np.mean(values)) if values else None

        total = mean("inversion_s") + mean("loop_s")
        if method == "null-text" or reference is None:
            reference = total  # null-text's, else the first method's
        rows.append({
            "method": method, "n": len(items), "forward": mean("forward"), "min_forward": mean("min_forward"),
            "backward": mean("backward"), "min_backward": mean("min_backward"), "inversion_s": mean("inversion_s"),
            "loop_s": mean("loop_s"), "total_s": total, "ratio": total / reference, "peak_mib": max(r["peak_mib"] for r in items),
            "psnr_round_trip": mean("psnr_round_trip"), "psnr_input": mean("psnr_input"),
            "success": None if mean("success") is None else 100 * mean("success"),
            "others_lost": None if mean("others_lost") is None else 100 * mean("others_lost"),
            "fill_psnr": mean("fill_psnr"),
        })  # fmt: skip
    return rows


def format_rows(rows: list[dict]) -> list[str]:
    def f(value, spec):
        return "-" if value is None else (f"{value:{spec}}" if np.isfinite(value) else "inf")

    def percent(value):
        return "-" if value is None else f"{value:.0f}%"

    lines = [
        "| method | n | UNet rows fwd (min) | bwd (min) | inversion s | loop s | total s | x null-text | peak MiB "
        "| rec. PSNR vs VAE round trip | vs input | success | other lost | fill PSNR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['n']} | {r['forward']:.0f} ({r['min_forward']:.0f}) | {r['backward']:.0f} "
            f"({r['min_backward']:.0f}) | {r['inversion_s']:.2f} | {r['loop_s']:.2f} | {r['total_s']:.2f} "
            f"| {r['ratio']:.2f} | {r['peak_mib']:.0f} | {f(r['psnr_round_trip'], '.1f')} | {f(r['psnr_input'], '.1f')} "
            f"| {percent(r.get('success'))} | {percent(r.get('others_lost'))} | {f(r.get('fill_psnr'), '.2f')} |"
        )
    return lines


def embedded_section(args, size: int) -> dict:
    from magic_remover.detector import finds
    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline
    from magic_remover.cli import removal_settings

    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    steps, settings = removal_settings(None, args.steps)
    settings = {k: v for k, v in settings.items() if k != "inversion_method"}
    count = args.scenes if size == 64 else args.scenes_128
    scenes = select_scenes(count, args.first_seed)
    images = [scene.image if size == 64 else scene.image.resize((size, size)) for _, scene, _ in scenes]
    captions = [scene.caption for _, scene, _ in scenes]
    phrases = [target_phrase(scene, index) for _, scene, index in scenes]
    success_of = None
    if size == 64:
        def success_of(n, result):
            _, scene, index = scenes[n]
            return score(result, scene, index, finds)

    # Scene by scene, each scene's measurements appended to a checkpoint: a rerun resumes, and ``--shard i/n``
    # processes share the scenes (the last one to finish, or a later run without --shard, writes the section)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.results) / f"speed_embedded{size}_scenes.jsonl"

    def read_checkpoint() -> dict:
        if not checkpoint.is_file():
            return {}
        return {entry["scene"]: entry["records"] for entry in map(json.loads, checkpoint.read_text().splitlines())}

    done = read_checkpoint()
    shard, shards = args.shard
    for n in range(count):
        if n in done or n % shards != shard:
            continue
        scene_success = None if success_of is None else (lambda _, result, n=n: success_of(n, result))
        scene_records = run_methods(pipe, images[n : n + 1], captions[n : n + 1], phrases[n : n + 1], steps, settings,
                                    scene_success, reconstruction_scenes=int(n < args.reconstruction_scenes))  # fmt: skip
        with checkpoint.open("a") as f:
            f.write(json.dumps({"scene": n, "records": scene_records}, default=float) + "\n")
        done[n] = scene_records
    if shards > 1:  # the scenes the other shards scored meanwhile: the last shard to finish writes the section
        done = {**read_checkpoint(), **done}
    if len(done) < count and not args.partial:
        return None  # other shards still running
    finished = sorted(done)
    records = {m: [r for n in finished for r in done[n][m]] for m in METHODS}
    count = len(finished)
    title = (f"Embedded model at {size}x{size} ({steps} steps, its shipped removal settings but the inversion, "
             f"{count} held-out scenes from seed {args.first_seed}"
             + (", success as in benchmarks/removal.py)" if size == 64 else ", upscaled; no success: the model and"
                " the detector are for 64x64)"))  # fmt: skip
    return {"title": title, "rows": summarise(records)}


def sd15_components(tokenizer_folder: Path):
    """Stable Diffusion 1.5's UNet, VAE and text encoder at their published configurations, random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    tokenizer.model_max_length = 77  # SD's sequence length (the cost of cross-attention depends on it)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip


def sd15_section(args, device="cpu", size=256, dtype=torch.float32) -> dict:
    from diffusers import StableDiffusionImg2ImgPipeline

    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline

    pipe = MagicRemoverPipeline(**sd15_components(Path(EMBEDDED_MODEL) / "tokenizer")).to(device, dtype)
    rows, costs = rows_against_img2img(pipe, args, size, args.sd_steps, StableDiffusionImg2ImgPipeline,
                                       repeats=args.sd_repeats)  # fmt: skip
    title = (f"SD-1.5-architecture UNet + VAE + text encoder (random weights) at {size}x{size}, {str(dtype)[6:]} on "
             f"{device}, {costs}")
    return {"title": title, "rows": rows}


def sdxl_components(tokenizer_folder: Path):
    """Stable Diffusion XL base's UNet, VAE and two text encoders at their published configurations, random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.13025, force_upcast=True,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    tokenizer.model_max_length = 77  # SDXL's sequence length (the cost of cross-attention depends on it)
    tokens = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, hidden_act="quick_gelu", **tokens))  # fmt: skip
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280,
        hidden_act="gelu", **tokens,
    ))  # fmt: skip
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")  # fmt: skip
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
                text_encoder_2=text_encoder_2.eval(), tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler)


def img2img_seconds(pipe, image, caption, steps, img2img_class) -> float:
    """Seconds of diffusers' own img2img on ``pipe``'s components at the same size and step count (strength 1: every
    step runs), the floor a removal is compared with: one branch, no inversion, no backward pass."""
    baseline = img2img_class.from_pipe(pipe)
    baseline.set_progress_bar_config(disable=True)
    with measured(baseline) as cost:
        baseline(prompt=caption, image=image, strength=1.0, num_inference_steps=steps, guidance_scale=7.5,
                 output_type="pil")  # fmt: skip
    return cost["seconds"]


def rows_against_img2img(pipe, args, size, steps, img2img_class, methods=METHODS, repeats=1):
    """Each method's rows on one scene at ``size`` (``repeats`` times), then diffusers' img2img on the same components,
    size and steps; returns the rows (with seconds per step and the ratio to img2img) and the title's words on them."""
    from magic_remover.scenes import make_scene

    pipe.set_progress_bar_config(disable=True)
    scene = make_scene(args.first_seed, size=64, num_objects=2, kind="opaque")
    image = scene.image.resize((size, size))
    records = run_methods(pipe, [image] * repeats, [scene.caption] * repeats, [scene.objects[0].shape] * repeats,
                          steps, {"guidance_scale": 7.5}, methods=methods)  # the paper's settings: the defaults
    baseline = img2img_seconds(pipe, image, scene.caption, steps, img2img_class)
    rows = summarise(records)
    for row in rows:
        row["seconds_per_step"] = row["total_s"] / steps
        row["img2img_s"], row["x_img2img"] = baseline, row["total_s"] / baseline
    words = (f"{steps} steps, the paper's settings; seconds per step = total / steps: "
             + ", ".join(f"{r['method']} {r['seconds_per_step']:.1f} s" for r in rows)
             + f"; diffusers' {img2img_class.__name__} on the same components, size and steps (strength 1): "
             f"{baseline:.1f} s, removal total against it: "
             + ", ".join(f"{r['method']} {r['x_img2img']:.1f}x" for r in rows))  # fmt: skip
    return rows, words


def sdxl_section(args, device="cpu", size=None, dtype=torch.float32) -> dict:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from magic_remover import EMBEDDED_MODEL, MagicRemoverXLPipeline

    size = size or args.xl_size
    pipe = MagicRemoverXLPipeline(**sdxl_components(Path(EMBEDDED_MODEL) / "tokenizer")).to(device, dtype)
    rows, costs = rows_against_img2img(pipe, args, size, args.xl_steps, StableDiffusionXLImg2ImgPipeline,
                                       methods=args.xl_methods.split(","))  # fmt: skip
    title = (f"SDXL-base-architecture UNet + VAE + two text encoders (random weights) at {size}x{size}, "
             f"{str(dtype)[6:]} on {device}, {costs}")
    return {"title": title, "rows": rows}


#: The prepared GPU rows: what each measures, its section function, its image size, and the command that runs it
GPU_SECTIONS = {
    "gpu": ("SD-1.5 architecture at 512x512", sd15_section, 512, "python benchmarks/speed.py --only gpu"),
    "sdxl_gpu": ("SDXL architecture at 1024x1024", sdxl_section, 1024,
                 "python benchmarks/speed.py --only sdxl_gpu --xl-steps 30"),
}  # fmt: skip


def gpu_section(name: str, args) -> dict:
    what, section, size, _ = GPU_SECTIONS[name]
    if not torch.cuda.is_available():
        return {"title": f"{what}, float16 on a GPU: not measured: no GPU", "rows": []}
    return section(args, device="cuda", size=size, dtype=torch.float16)


def memory_section(args) -> dict:
    """Resident memory over 50 removals with the embedded model's settings (its default inversion)."""
    import psutil

    from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline
    from magic_remover.cli import removal_settings
    from magic_remover.pipeline_magic_remover import DEFAULT_INVERSION_METHOD

    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    steps, settings = removal_settings(None, args.steps)
    method = settings.get("inversion_method", DEFAULT_INVERSION_METHOD)
    _, scene, index = select_scenes(1, args.first_seed)[0]
    process, rss = psutil.Process(), []
    for _ in range(50):
        pipe(image=scene.image, prompt=scene.caption, target=target_phrase(scene, index), num_inference_steps=steps,
             **settings)  # fmt: skip
        rss.append(process.memory_info().rss / 2**20)
    grads = [n for c in pipe.components.values() if isinstance(c, torch.nn.Module)
             for n, p in c.named_parameters() if p.grad is not None]  # fmt: skip
    title = (f"Memory over 50 removals (embedded model, its settings, {method} inversion, {steps} steps): resident set after call 5 "
             f"{rss[4]:.0f} MiB, after call 50 {rss[-1]:.0f} MiB (growth {rss[-1] - rss[4]:+.0f} MiB); parameters "
             f"holding a .grad afterwards: {len(grads)}")
    return {"title": title, "rows": []}


def make_report(sections: dict, command: str) -> str:
    import diffusers
    import transformers

    lines = [
        "# Speed: inversion methods side by side",
        "",
        f"Command: `{command}` (sections merged from `speed_sections.json`; each section's own command is beside it).",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s); "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}.",
        "",
        "UNet rows: samples through the UNet (a CFG-batched call counts 2); in brackets the method's minimum for "
        "these settings (`minimum_rows`). Seconds are means per image; peak MiB is the largest resident-set growth of "
        "one inversion or loop. Reconstruction PSNR: attention guidance off, whole image, against the autoencoder's "
        "round trip of the input and against the input itself (the round trip's own PSNR bounds the latter). "
        "Success, other lost, fill PSNR: `benchmarks/removal.py`'s definitions (target gone and every other object "
        "kept, same detector; a neighbour no longer found; PSNR inside the target's region against the scene "
        "without it).",
    ]
    for name in SECTIONS:
        if name not in sections:
            continue
        section = sections[name]
        command_line = f"Section command: `{section['command']}`{section.get('command_note', '')}"
        lines += ["", f"## {name}", "", section["title"] + ".", "", command_line, ""]
        if section["rows"]:
            lines += format_rows(section["rows"])
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=SECTIONS, action="append", help="sections to run (default: all)")
    parser.add_argument("--scenes", type=int, default=30, help="held-out scenes at 64x64 (default 30)")
    parser.add_argument("--scenes-128", type=int, default=3, help="scenes at 128x128 (default 3)")
    parser.add_argument("--reconstruction-scenes", type=int, default=10, help="scenes with a reconstruction PSNR")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the embedded model's)")
    parser.add_argument("--sd-steps", type=int, default=3, help="DDIM steps for the SD-1.5 section (default 3)")
    parser.add_argument("--sd-repeats", type=int, default=1, help="repetitions in the SD-1.5 section")
    parser.add_argument("--xl-size", type=int, default=128, help="image size of the SDXL section (default 128)")
    parser.add_argument("--xl-steps", type=int, default=3, help="DDIM steps for the SDXL section (default 3)")
    parser.add_argument("--xl-methods", default=",".join(METHODS), help="comma-separated inversion methods (SDXL)")
    parser.add_argument("--first-seed", type=int, default=20000, help="first held-out seed (removal benchmark's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--partial", action="store_true",
                        help="summarise the scenes the checkpoint holds even if some are missing (the table says how many)")
    parser.add_argument("--shard", type=lambda v: tuple(int(x) for x in v.split("/")), default=(0, 1),
                        help="i/n: run only scenes with index %% n == i of the embedded sections (checkpointed)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    store = Path(args.results) / "speed_sections.json"
    sections = json.loads(store.read_text()) if store.is_file() else {}
    written = False
    for name in args.only or [s for s in SECTIONS if s not in ("gpu", "sdxl_gpu")]:
        started = time.perf_counter()
        if name == "embedded64":
            section = embedded_section(args, 64)
        elif name == "embedded128":
            section = embedded_section(args, 128)
        elif name == "sd15":
            section = sd15_section(args)
        elif name in GPU_SECTIONS:
            section = gpu_section(name, args)
        elif name == "sdxl":
            section = sdxl_section(args)
        else:
            section = memory_section(args)
        if section is None:
            print(f"{name}: this shard's scenes are done; the last shard to finish writes the section")
            continue
        section["command"] = command
        shard, shards = args.shard
        if shards > 1 and name in ("embedded64", "embedded128"):  # made by every shard, side by side
            section["command"] = command.replace(f"--shard {shard}/{shards}", f"--shard i/{shards}")
            section["command_note"] = f" for i = 0..{shards - 1}, side by side"
        section["seconds"] = time.perf_counter() - started
        sections = json.loads(store.read_text()) if store.is_file() else {}  # other sections may have finished
        sections[name] = section
        Path(args.results).mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(sections, indent=1, default=float) + "\n")
        written = True
    if not written:  # a shard that left its sections to another: the report keeps the commands that made it
        return
    for name, (what, _, _, run_it) in GPU_SECTIONS.items():  # the command beside it is the one that would measure it
        if name not in sections:
            sections[name] = {"title": f"{what}, float16 on a GPU: not measured: no GPU (the device tool lends none to "
                                       "this issue)", "rows": [], "command": run_it}  # fmt: skip
    write_result("speed.md", make_report(sections, command), args.results)


if __name__ == "__main__":
    main()
