"""Tiny, randomly initialised Stable-Diffusion-shaped components built in test code (no downloads)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WORDS = [
    "a", "photo", "of", "dog", "cat", "and", "on", "the", "grass", "red", "blue", "ball", "sky",
    "big", "small", "square", "circle", "near", "table",
]  # fmt: skip
# word-initial pieces: "snowman" becomes two tokens, and "hotdog" ends in the token of "dog"
PIECES = ["snow", "man", "hot"]
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
MAX_LENGTH = 16


def build_word_tokenizer(directory: Path, words=WORDS, pieces=PIECES, max_length=MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary is ``words`` (one token each) plus word-initial ``pieces``.

    Merges are added until every word is a single token: BPE applies the lowest-ranked merge first, so a naive chain
    per word can be pre-empted by another word's merge; each fix-up merge is appended last and cannot undo earlier ones.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for char in "abcdefghijklmnopqrstuvwxyz,.":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    wanted = {w + "</w>" for w in words} | set(pieces) | {p + "</w>" for p in pieces}

    def load() -> CLIPTokenizer:
        (directory / "vocab.json").write_text(json.dumps(vocab))
        (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)

    for _ in range(10 * sum(len(w) for w in wanted)):
        tokenizer = load()
        for token in sorted(wanted):
            final = token.endswith("</w>")
            word = token[: -len("</w>")] if final else token
            parts = tokenizer.tokenize(word)
            if not final:  # a word-initial piece: tokenise it as the start of a longer word
                prefix = []
                for part in tokenizer.tokenize(word + "zz"):
                    if "".join(prefix) == word:
                        break
                    prefix.append(part)
                if "".join(prefix) != word:
                    continue
                parts = prefix
            if len(parts) > 1:
                merges.append((parts[0], parts[1]))
                vocab.setdefault(parts[0] + parts[1], len(vocab))
                break
        else:
            break
    tokenizer = load()
    for word in words:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tokenizer("snowman", add_special_tokens=False).input_ids) == 2
    return tokenizer


def tiny_components(prediction_type: str = "epsilon", seed: int = 0) -> dict:
    torch.manual_seed(seed)
    # The tokenizer holds its vocabulary in memory once loaded, so its files need not outlive this call.
    with tempfile.TemporaryDirectory(prefix="magic_remover_tok_") as vocab_dir:
        tokenizer = build_word_tokenizer(Path(vocab_dir))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_LENGTH,
        )
    ).eval()
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()
    # as for a real SD VAE, the scaling factor gives the latents about unit variance
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(make_test_image(), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        std = vae.encode(pixels[None]).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def make_test_image(size=(32, 32), seed=0) -> PIL.Image.Image:
    """A smooth background with a bright disc: something for the map to find."""
    height, width = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([0.3 + 0.4 * yy / height, 0.5 + 0.2 * xx / width, 0.4 * np.ones_like(xx, dtype=float)], -1)
    cy, cx, radius = height * 0.5, width * 0.45, min(height, width) * 0.25
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    base[disc] = [0.9, 0.1, 0.1]
    base += rng.normal(0, 0.01, base.shape)
    return PIL.Image.fromarray((base.clip(0, 1) * 255).astype(np.uint8))
