#!/usr/bin/env python
"""Train the tiny text-to-image latent diffusion model shipped in magic_remover/models/tiny-shapes/.

The model is trained from scratch on the synthetic world of `magic_remover.scenes`:

  stage 1 ("ae"):   AutoencoderKL, 64x64 RGB <-> 4x16x16 latents (L1 + L2 + tiny KL),
                    trained on random 32x32 crops (fully convolutional) then full images;
                    afterwards vae.config.scaling_factor = 1 / std(latents).
  stage 2 ("unet"): UNet2DConditionModel + CLIPTextModel trained jointly with the standard
                    epsilon objective (SD-1.5 DDPM schedule, min-SNR-5 weighting), 10% caption
                    dropout to "" for classifier-free guidance, EMA weights exported.
                    From --grounding-start on, a TokenCompose-style grounding loss (Wang et al., CVPR 2024)
                    pulls each object word's cross-attention onto that object's visible region: at 4025
                    steps without it this model's cross-attention was still almost uniform over the prompt.

Data: scenes are generated freshly for every batch from seeds >= TRAIN_SEED_OFFSET (1_000_000).
Seeds 0..99_999 are the HELD-OUT range (tests/benchmarks) and are NEVER used for training; a few
held-out seeds (99_000+) are only used to *measure* autoencoder PSNR.

One command, seeded and resumable (state in <work-dir>/state.pt, written every --ckpt-minutes):

    python training/train_tiny_model.py --work-dir training/runs/tiny-shapes --resume \
        --out magic_remover/models/tiny-shapes

Every UNet checkpoint also exports an intermediate pipeline folder to --out, so a usable model
exists even if training is interrupted.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from magic_remover.attention_processors import (  # noqa: E402
    attention_layer_names,
    finish_attention_output,
    project_attention_inputs,
)
from magic_remover.images import psnr as image_psnr  # noqa: E402
from magic_remover.scenes import (  # noqa: E402
    HELDOUT_SEED_LIMIT,
    TRAIN_SEED_OFFSET,
    VOCABULARY,
    make_scene,
)
from tokenizer_build import write_tokenizer  # noqa: E402

IMAGE_SIZE = 64
LATENT_CHANNELS = 4
MAX_TOKENS = 32
MAX_OBJECTS = 3  # make_scene draws at most three objects
GROUNDING_RES = IMAGE_SIZE // 4  # latent resolution; masks are pooled further per attention level
GROUNDING_MAX_T = 800  # above this the layout is not yet decided by the noisy input (paper's guidance range top)
KEPT_ON_EXPORT = ("magic_remover_defaults.json",)  # a folder written before the settings moved to model_index.json
AE_EVAL_SEEDS = list(range(99_000, 99_128))  # held-out: evaluation only

# stage-specific seed ranges (all >= TRAIN_SEED_OFFSET, never in the held-out range)
AE_SEED_BASE = TRAIN_SEED_OFFSET
SCALE_SEED_BASE = TRAIN_SEED_OFFSET + 50_000_000
UNET_SEED_BASE = TRAIN_SEED_OFFSET + 100_000_000
assert AE_SEED_BASE >= HELDOUT_SEED_LIMIT


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- models


def build_vae(downsample: int = 4):
    """The autoencoder: 64x64 RGB <-> 4 x (64/downsample)^2 latents; the shipped model uses downsample 4."""
    from diffusers import AutoencoderKL

    blocks = {4: (32, 64, 64), 2: (32, 64)}[downsample]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
        scaling_factor=1.0,
    )


def ae_loss(vae, x):
    """Stage 1's objective: L1 + L2 reconstruction of a posterior sample, and a tiny KL. Returns (loss, l1, kl)."""
    post = vae.encode(x).latent_dist
    y = vae.decode(post.sample()).sample
    l1 = (y - x).abs().mean()
    kl = post.kl().mean()
    return l1 + ((y - x) ** 2).mean() + 1e-6 * kl, l1, kl


def build_models(vocab_size: int, bos_id: int, eos_id: int):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = build_vae()
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=64,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return vae, text_encoder, unet


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- data


def scenes_to_tensor(scenes) -> torch.Tensor:
    arr = np.stack([s.image_array for s in scenes]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def scene_num_objects(rng: np.random.Generator):
    # 10% background-only scenes so captions like "a grass background" are learned
    return 0 if rng.random() < 0.10 else None


class AEBatches(torch.utils.data.Dataset):
    """Item k = the k-th training batch for the autoencoder (deterministic per k)."""

    def __init__(self, batch_size, total, crop_steps, crop=32):
        self.batch_size, self.total, self.crop_steps, self.crop = batch_size, total, crop_steps, crop

    def __len__(self):
        return self.total

    def __getitem__(self, k):
        rng = np.random.default_rng([k, 1])
        seeds = AE_SEED_BASE + k * self.batch_size + np.arange(self.batch_size)
        x = scenes_to_tensor([make_scene(int(s), IMAGE_SIZE, num_objects=scene_num_objects(rng)) for s in seeds])
        if k < self.crop_steps:
            c = self.crop
            out = torch.empty(x.shape[0], 3, c, c)
            for i in range(x.shape[0]):
                oy, ox = rng.integers(0, IMAGE_SIZE - c + 1, 2)
                out[i] = x[i, :, oy : oy + c, ox : ox + c]
            x = out
        return x


class UNetBatches(torch.utils.data.Dataset):
    """Item k = (scaled latents, token ids) of the k-th UNet training batch."""

    def __init__(self, batch_size, total, vae_state, vae_config, tokenizer_dir, start=0):
        self.batch_size, self.total, self.start = batch_size, total, start
        self.vae_state, self.vae_config, self.tokenizer_dir = vae_state, vae_config, tokenizer_dir
        self._vae = None
        self._tok = None

    def __len__(self):
        return self.total - self.start

    def _lazy(self):
        if self._vae is None:
            from diffusers import AutoencoderKL
            from transformers import CLIPTokenizer

            self._vae = AutoencoderKL.from_config(self.vae_config)
            self._vae.load_state_dict(self.vae_state)
            self._vae.eval().requires_grad_(False)
            self._tok = CLIPTokenizer.from_pretrained(self.tokenizer_dir)

    def __getitem__(self, i):
        k = self.start + i
        self._lazy()
        rng = np.random.default_rng([k, 2])
        seeds = UNET_SEED_BASE + k * self.batch_size + np.arange(self.batch_size)
        scenes = [make_scene(int(s), IMAGE_SIZE, num_objects=scene_num_objects(rng)) for s in seeds]
        x = scenes_to_tensor(scenes)
        g = torch.Generator().manual_seed(int(k) * 7 + 3)
        with torch.no_grad():
            dist = self._vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
            z = z * self._vae.config.scaling_factor
        captions = [s.caption for s in scenes]
        ids = self._tok(
            captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids
        masks, positions = grounding_targets(scenes, ids, self._tok)
        return z, ids, masks, positions


def object_word_positions(scene) -> list[tuple[int, int]]:
    """Token positions of (colour, shape) of every object in ``scene.caption`` (word-level tokenizer, BOS at 0).

    Mirrors ``scenes.make_caption``: "a red circle and a transparent blue square on ...".
    """
    positions, pos = [], 1
    for k, obj in enumerate(scene.objects):
        pos += (1 if k else 0) + 1  # "and", article
        pos += 1 if obj.transparent else 0
        positions.append((pos, pos + 1))
        pos += 2
    return positions


def grounding_targets(scenes, ids, tokenizer):
    """Per scene and object: its visible alpha pooled to the latent grid, and its colour/shape token positions.

    Returns ``masks [B, MAX_OBJECTS, 16, 16]`` (soft, in [0, 1]) and ``positions [B, MAX_OBJECTS, 2]`` (-1 = none).
    """
    masks = torch.zeros(len(scenes), MAX_OBJECTS, GROUNDING_RES, GROUNDING_RES)
    positions = torch.full((len(scenes), MAX_OBJECTS, 2), -1, dtype=torch.long)
    vocab = tokenizer.get_vocab()
    for b, scene in enumerate(scenes):
        for k, (cpos, spos) in enumerate(object_word_positions(scene)):
            obj = scene.objects[k]
            # the caption check guards the position arithmetic against a change of caption format
            if ids[b, cpos] != vocab[obj.color + "</w>"] or ids[b, spos] != vocab[obj.shape + "</w>"]:
                raise RuntimeError(f"caption/token mismatch for {scene.caption!r}")
            visible = obj.alpha.astype(np.float32).copy()
            for later in scene.objects[k + 1 :]:
                visible *= 1.0 - later.alpha
            m = torch.from_numpy(visible)[None, None]
            masks[b, k] = torch.nn.functional.adaptive_avg_pool2d(m, GROUNDING_RES)[0, 0]
            positions[b, k] = torch.tensor([cpos, spos])
    return masks, positions


class GroundingCaptureProcessor:
    """Training-only cross-attention processor: the softmax is computed explicitly so that its probabilities
    (mean over heads, ``[B, pixels, tokens]``) can be supervised; ``store`` is a fresh dict per step."""

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        query, key, value, mask, residual, spatial = project_attention_inputs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(dim=-1)
        self.store[self.name] = probs.mean(dim=1)
        return finish_attention_output(attn, torch.matmul(probs, value), residual, spatial, query.dtype)


def grounding_loss(store: dict, masks: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss, ``(1 - sum(A * M) / sum(A))^2``, averaged over layers, objects and both words.

    ``keep [B]`` selects the samples that are supervised (caption kept, timestep in range).
    """
    valid = (positions >= 0) & keep[:, None, None]
    valid &= (masks.flatten(2).sum(-1) > 0.5)[..., None]  # at least half a latent pixel visible
    if not bool(valid.any()):
        return masks.new_zeros(())
    losses = []
    for probs in store.values():
        batch, pixels, _ = probs.shape
        res = int(round(math.sqrt(pixels)))
        m = torch.nn.functional.adaptive_avg_pool2d(masks, res).flatten(2)  # [B, O, pixels]
        index = positions.clamp_min(0).flatten(1)  # [B, O*2]
        a = probs.transpose(1, 2).gather(1, index[..., None].expand(-1, -1, pixels))
        a = a.view(batch, MAX_OBJECTS, 2, pixels)
        inside = (a * m[:, :, None]).sum(-1) / a.sum(-1).clamp_min(1e-8)
        losses.append(((1 - inside) ** 2)[valid].mean())
    return torch.stack(losses).mean()


def _worker_init(_):
    torch.set_num_threads(1)


def loader(ds, workers):
    return torch.utils.data.DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


# --------------------------------------------------------------------------- utils


def cosine_lr(step, total, base, warmup=100, final=0.05):
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t)))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] after uint8 quantisation, averaged over images (``images.psnr`` per image)."""

    def to_uint8(images: torch.Tensor) -> np.ndarray:
        return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    return float(np.mean([image_psnr(x, y) for x, y in zip(to_uint8(a), to_uint8(b))]))


@torch.no_grad()
def eval_ae(vae) -> float:
    vae.eval()
    vals = []
    for i in range(0, len(AE_EVAL_SEEDS), 32):
        x = scenes_to_tensor([make_scene(s, IMAGE_SIZE) for s in AE_EVAL_SEEDS[i : i + 32]])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        vals.append(psnr(y, x))
    vae.train()
    return float(np.mean(vals))


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fmt_secs(s):
    s = int(s)
    return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"


# --------------------------------------------------------------------------- export


def export_pipeline(out_dir, vae, text_encoder, unet, tok_dir, state, args, final: bool):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # keep only what the pipeline needs (no .bin, no stray files)
    for dirpath, _, files in os.walk(tmp):
        for f in files:
            if f.endswith((".bin", ".pt", ".ckpt", ".pth")):
                os.remove(os.path.join(dirpath, f))
    # also ship the raw word-level BPE files (vocab.json / merges.txt) next to tokenizer.json
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(tok_dir, name), os.path.join(tmp, "tokenizer", name))
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(model_card(vae, text_encoder, unet, state, args, final))
    with open(os.path.join(tmp, "training_info.json"), "w") as f:
        json.dump(
            {
                "final": final,
                "ae_steps": state["ae_steps_done"],
                "unet_steps": state["unet_steps_done"],
                "unet_steps_planned": args.unet_steps,
                "batch_size": args.batch_size,
                "ae_psnr_db": state.get("ae_psnr"),
                "unet_loss_ema": state.get("unet_loss_ema"),
                "grounding_weight": args.grounding_weight,
                "grounding_start": args.grounding_start,
                "grounding_loss_ema": state.get("grounding_loss_ema"),
                "scaling_factor": float(vae.config.scaling_factor),
                "ae_seconds": state["ae_seconds"],
                "unet_seconds": state["unet_seconds"],
                "threads": args.threads,
                "seed": args.seed,
            },
            f,
            indent=1,
        )
    # the removal defaults chosen by benchmarks/tune_embedded.py (model_index.json's `removal_defaults`, written by
    # hand) and hand-written files survive a re-export
    old_index = os.path.join(out_dir, "model_index.json")
    if os.path.exists(old_index):
        with open(old_index) as f:
            tuned = json.load(f).get("removal_defaults")
        if tuned is not None:
            with open(os.path.join(tmp, "model_index.json")) as f:
                index = json.load(f)
            index["removal_defaults"] = tuned
            with open(os.path.join(tmp, "model_index.json"), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")
    for name in KEPT_ON_EXPORT:
        if os.path.exists(os.path.join(out_dir, name)):
            shutil.copy(os.path.join(out_dir, name), os.path.join(tmp, name))
    old = out_dir + ".old-export"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    log(f"exported pipeline -> {out_dir} ({'final' if final else 'intermediate'})")


def model_card(vae, text_encoder, unet, state, args, final):
    status = "final" if final else (
        f"INTERMEDIATE checkpoint ({state['unet_steps_done']}/{args.unet_steps} UNet steps)"
    )
    cmd = (
        "python training/train_tiny_model.py --work-dir training/runs/tiny-shapes --resume "
        f"--ae-steps {args.ae_steps} --ae-full-frac {args.ae_full_frac} --ae-threads {args.ae_threads} --unet-steps {args.unet_steps} --batch-size {args.batch_size} "
        f"--grounding-weight {args.grounding_weight} --grounding-start {args.grounding_start} "
        f"--threads {args.threads} --seed {args.seed} --out magic_remover/models/tiny-shapes"
    )
    loss = state.get("unet_loss_ema")
    return f"""# tiny-shapes: a tiny text-to-image latent diffusion model

Status: **{status}**.

A Stable-Diffusion-style pipeline (`diffusers.StableDiffusionPipeline`, no safety checker) trained
from scratch on the synthetic "shapes" world of `magic_remover.scenes` (coloured circles, squares,
triangles, diamonds and stars - some semi-transparent, some casting soft shadows - on sky, striped,
checkered, grass or plain backgrounds). It exists so that MagicRemover can be tested and
benchmarked end-to-end on CPU with exact ground truth. It only knows this world.

## Architecture

| component | details | parameters |
|---|---|---|
| vae (`AutoencoderKL`) | 64x64 RGB -> 4x16x16 latents, blocks (32, 64, 64), no attention, scaling_factor {vae.config.scaling_factor:.4f} | {n_params(vae):,} |
| text_encoder (`CLIPTextModel`) | hidden 64, 3 layers, 4 heads, 32 positions | {n_params(text_encoder):,} |
| tokenizer (`CLIPTokenizer`) | word-level BPE, {len(VOCABULARY)} words, each word = one token | - |
| unet (`UNet2DConditionModel`) | sample 16x16, blocks (32, 64, 64), cross-attention (`attn2`) at 16x16 / 8x8 / 4x4 (mid), `attention_head_dim=8` (= 8 heads in diffusers) | {n_params(unet):,} |
| scheduler (`DDIMScheduler`) | SD-1.5 schedule: scaled_linear 0.00085-0.012, 1000 steps, epsilon | - |

Vocabulary: {", ".join(VOCABULARY)}.

Caption format: `a red circle and a transparent blue square on a striped background`;
background-only scenes are captioned `a striped background`.

## Data

Scenes are generated on the fly by `magic_remover.scenes.make_scene(seed)` with seeds >= 1,000,000
(10% background-only). **Seeds 0..99,999 are held out and never used for training**; the
autoencoder PSNR is measured on held-out seeds 99,000-99,127.

## Training

Stage 1: autoencoder, {state['ae_steps_done']} steps of batch {args.batch_size} (L1 + L2 + 1e-6 KL,
random 32x32 crops then full 64x64 images); held-out PSNR **{state.get('ae_psnr', float('nan')):.2f} dB**.
Stage 2: UNet + text encoder jointly, {state['unet_steps_done']} steps of batch {args.batch_size},
epsilon objective with min-SNR-5 weighting, AdamW, 10% caption dropout (classifier-free guidance),
EMA 0.999 weights exported. From UNet step {args.grounding_start} on, a grounding loss of weight
{args.grounding_weight} (TokenCompose's token loss, Wang et al., CVPR 2024: `(1 - sum(A*M)/sum(A))^2` for the colour
and shape word of every object, A = its cross-attention at every `attn2` layer, M = the object's visible alpha pooled
to that layer's grid; timesteps below {GROUNDING_MAX_T}, captioned samples only) teaches the cross-attention to land
on the object it names: the property MagicRemover relies on and that Stable Diffusion gets from scale.
Grounding loss at export (running mean): {state.get('grounding_loss_ema') if state.get('grounding_loss_ema') is None else f"{state['grounding_loss_ema']:.3f}"}. Training loss at export (unweighted epsilon MSE, running mean): {loss if loss is None else f"{loss:.4f}"}.

Measured training time: autoencoder {fmt_secs(state['ae_seconds'])}, UNet/text encoder
{fmt_secs(state['unet_seconds'])}, on a 2-core CPU, no GPU ({args.threads} torch thread(s),
{platform.processor() or platform.machine()}).

Command (seeded, resumable; checkpoints in the git-ignored `training/runs/`):

```
{cmd}
```

## Usage

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(
    "magic_remover/models/tiny-shapes", safety_checker=None, requires_safety_checker=False)
image = pipe("a red circle on a grass background", num_inference_steps=50, guidance_scale=5.0).images[0]
```
"""


# --------------------------------------------------------------------------- training


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=os.path.join(ROOT, "training", "runs", "tiny-shapes"))
    p.add_argument("--out", default=os.path.join(ROOT, "magic_remover", "models", "tiny-shapes"))
    p.add_argument("--ae-steps", type=int, default=3000)
    p.add_argument("--ae-full-frac", type=float, default=0.05, help="last fraction of AE steps on full 64x64 images")
    p.add_argument("--ae-lr", type=float, default=1e-3)
    p.add_argument("--unet-steps", type=int, default=7000)
    p.add_argument("--unet-lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grounding-weight", type=float, default=0.05,
                   help="weight of the cross-attention grounding loss (0 disables it)")
    p.add_argument("--grounding-start", type=int, default=0,
                   help="UNet step from which the grounding loss is applied")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the UNet stage")
    p.add_argument("--ae-threads", type=int, default=1, help="torch threads for the AE stage")
    p.add_argument("--workers", type=int, default=1, help="data worker processes (scene generation + VAE encode)")
    p.add_argument("--ckpt-minutes", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if args.grounding_weight < 0:
        p.error(f"--grounding-weight must be >= 0 (0 disables the loss), got {args.grounding_weight}")
    if args.grounding_start < 0:
        p.error(f"--grounding-start must be a UNet step >= 0, got {args.grounding_start}")

    from tqdm import tqdm

    os.makedirs(args.work_dir, exist_ok=True)
    tok_dir = os.path.join(args.work_dir, "tokenizer")
    vocab = write_tokenizer(tok_dir, VOCABULARY, model_max_length=MAX_TOKENS)
    bos_id, eos_id = vocab["<|startoftext|>"], vocab["<|endoftext|>"]

    torch.manual_seed(args.seed)
    vae, text_encoder, unet = build_models(len(vocab), bos_id, eos_id)
    log(
        f"params: vae {n_params(vae):,}  text_encoder {n_params(text_encoder):,}  unet {n_params(unet):,}"
    )
    state_path = os.path.join(args.work_dir, "state.pt")
    state = {"stage": "ae", "ae_steps_done": 0, "unet_steps_done": 0, "ae_seconds": 0.0, "unet_seconds": 0.0}
    ckpt = None
    if args.resume and os.path.exists(state_path):
        ckpt = torch.load(state_path, map_location="cpu", weights_only=False)
        state.update(ckpt["state"])
        vae.load_state_dict(ckpt["vae"])
        if "scaling_factor" in state:
            vae.register_to_config(scaling_factor=state["scaling_factor"])
        log(f"resumed from {state_path}: {state}")
        if state["stage"] == "done" and args.unet_steps > state["unet_steps_done"]:
            # a finished run asked for more steps goes on training; the cosine learning rate restarts at the value
            # the longer schedule has at this step
            log(f"extending the finished run from {state['unet_steps_done']} to {args.unet_steps} UNet steps")
            state["stage"] = "unet"

    # ------------------------------------------------------------ stage 1: autoencoder
    if state["stage"] == "ae":
        torch.set_num_threads(args.ae_threads)
        opt = torch.optim.AdamW(vae.parameters(), lr=args.ae_lr, weight_decay=0.0)
        if ckpt is not None and "ae_opt" in ckpt:
            opt.load_state_dict(ckpt["ae_opt"])
        start = state["ae_steps_done"]
        crop_steps = int(args.ae_steps * (1 - args.ae_full_frac))
        ds = AEBatches(args.batch_size, args.ae_steps, crop_steps)
        sub = torch.utils.data.Subset(ds, range(start, args.ae_steps))
        vae.train()
        t0, last_ck = time.time(), time.time()
        base_secs = state["ae_seconds"]
        l1_ema = None
        bar = tqdm(total=args.ae_steps, initial=start, desc="AE", disable=args.no_progress, mininterval=5)

        def save_ae():
            state["ae_seconds"] = base_secs + time.time() - t0
            atomic_save({"state": dict(state), "vae": vae.state_dict(), "ae_opt": opt.state_dict()}, state_path)

        for step, x in enumerate(loader(sub, args.workers), start=start):
            for gparam in opt.param_groups:
                gparam["lr"] = cosine_lr(step, args.ae_steps, args.ae_lr)
            loss, l1, kl = ae_loss(vae, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            l1_ema = l1.item() if l1_ema is None else 0.98 * l1_ema + 0.02 * l1.item()
            state["ae_steps_done"] = step + 1
            bar.update(1)
            bar.set_postfix(l1=f"{l1_ema:.4f}", kl=f"{kl.item():.1f}")
            if (step + 1) % 250 == 0:
                log(f"AE step {step + 1}/{args.ae_steps} l1 {l1_ema:.4f} kl {kl.item():.1f} lr {opt.param_groups[0]['lr']:.2e}")
            if time.time() - last_ck > args.ckpt_minutes * 60:
                state["ae_psnr"] = eval_ae(vae)
                log(f"AE step {step + 1}: held-out PSNR {state['ae_psnr']:.2f} dB; checkpoint")
                save_ae()
                last_ck = time.time()
        bar.close()
        state["ae_psnr"] = eval_ae(vae)
        log(f"AE done: held-out PSNR {state['ae_psnr']:.2f} dB")
        # scaling factor = 1 / std of latents over fresh training scenes
        vae.eval()
        zs = []
        with torch.no_grad():
            for i in range(8):
                seeds = SCALE_SEED_BASE + i * 128 + np.arange(128)
                x = scenes_to_tensor([make_scene(int(s), IMAGE_SIZE) for s in seeds])
                zs.append(vae.encode(x).latent_dist.sample())
        zs = torch.cat(zs)
        std = float(zs.std())
        state["scaling_factor"] = 1.0 / std
        state["latent_mean"] = float(zs.mean())
        vae.register_to_config(scaling_factor=1.0 / std)
        log(f"latent mean {zs.mean():.4f} std {std:.4f} -> scaling_factor {1.0 / std:.5f}")
        state["stage"] = "unet"
        save_ae()
        ckpt = None

    # ------------------------------------------------------------ stage 2: UNet + text encoder
    vae.eval().requires_grad_(False)
    ema_unet, ema_te = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)
    if ckpt is not None and "unet" in ckpt:
        unet.load_state_dict(ckpt["unet"])
        text_encoder.load_state_dict(ckpt["text_encoder"])
        ema_unet.load_state_dict(ckpt["ema_unet"])
        ema_te.load_state_dict(ckpt["ema_text_encoder"])
        opt.load_state_dict(ckpt["unet_opt"])
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    for m in (ema_unet, ema_te):
        m.eval().requires_grad_(False)

    if state["stage"] == "unet":
        torch.set_num_threads(args.threads)
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(tok_dir)
        empty_ids = tok([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
        sched = make_scheduler()
        acp = sched.alphas_cumprod.float()
        snr = acp / (1 - acp)
        loss_w = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 (epsilon prediction)

        start = state["unet_steps_done"]
        ds = UNetBatches(args.batch_size, args.unet_steps, vae.state_dict(), dict(vae.config), tok_dir, start=start)
        unet.train()
        text_encoder.train()
        t0, last_ck = time.time(), time.time()
        base_secs = state["unet_seconds"]
        loss_ema = state.get("unet_loss_ema")

        def save_unet(final=False):
            state["unet_seconds"] = base_secs + time.time() - t0
            state["unet_loss_ema"] = loss_ema
            state["grounding_loss_ema"] = ground_ema
            atomic_save(
                {
                    "state": dict(state),
                    "vae": vae.state_dict(),
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "ema_unet": ema_unet.state_dict(),
                    "ema_text_encoder": ema_te.state_dict(),
                    "unet_opt": opt.state_dict(),
                },
                state_path,
            )
            export_pipeline(args.out, vae, ema_te, ema_unet, tok_dir, state, args, final=final)

        attention_store: dict = {}
        _, cross_names = attention_layer_names(unet)
        unet.set_attn_processor(
            {name: GroundingCaptureProcessor(attention_store, name) for name in cross_names}
            | {name: proc for name, proc in unet.attn_processors.items() if name not in cross_names}
        )
        ground_ema = state.get("grounding_loss_ema")

        bar = tqdm(total=args.unet_steps, initial=start, desc="UNet", disable=args.no_progress, mininterval=5)
        for i, (z, ids, masks, positions) in enumerate(loader(ds, args.workers)):
            step = start + i
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
            for gparam in opt.param_groups:
                gparam["lr"] = cosine_lr(step, args.unet_steps, args.unet_lr, warmup=300)
            drop = torch.rand(ids.shape[0], generator=g) < 0.10
            ids = torch.where(drop[:, None], empty_ids, ids)
            t = torch.randint(0, 1000, (ids.shape[0],), generator=g)
            noise = torch.randn(z.shape, generator=g)
            a = acp[t].sqrt()[:, None, None, None]
            s = (1 - acp[t]).sqrt()[:, None, None, None]
            zt = a * z + s * noise
            h = text_encoder(ids)[0]
            attention_store.clear()
            pred = unet(zt, t, h).sample
            per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
            loss = (per * loss_w[t]).mean()
            if args.grounding_weight > 0 and step >= args.grounding_start:
                ground = grounding_loss(attention_store, masks, positions, ~drop & (t < GROUNDING_MAX_T))
                loss = loss + args.grounding_weight * ground
                ground_ema = ground.item() if ground_ema is None else 0.99 * ground_ema + 0.01 * ground.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - decay)
            mse = per.mean().item()
            loss_ema = mse if loss_ema is None else 0.99 * loss_ema + 0.01 * mse
            state["unet_steps_done"] = step + 1
            bar.update(1)
            bar.set_postfix(mse=f"{loss_ema:.4f}", ground="-" if ground_ema is None else f"{ground_ema:.3f}")
            if (step + 1) % 250 == 0:
                el = base_secs + time.time() - t0
                rate = (time.time() - t0) / (i + 1)
                log(
                    f"UNet step {step + 1}/{args.unet_steps} mse(ema) {loss_ema:.4f} "
                    f"grounding(ema) {'-' if ground_ema is None else f'{ground_ema:.3f}'} lr {opt.param_groups[0]['lr']:.2e} "
                    f"{rate:.3f}s/step elapsed {fmt_secs(el)} eta {fmt_secs(rate * (args.unet_steps - step - 1))}"
                )
            if time.time() - last_ck > args.ckpt_minutes * 60:
                save_unet()
                last_ck = time.time()
        bar.close()
        state["stage"] = "done"
        save_unet(final=True)
        log("training done")
    elif state["stage"] == "done":
        export_pipeline(args.out, vae, ema_te, ema_unet, tok_dir, state, args, final=True)


if __name__ == "__main__":
    main()
