"""Tiny, randomly initialised SDXL-shaped components built in test code (no downloads), as diffusers' SDXL fast tests
build theirs: a ``text_time`` UNet, ``CLIPTextModel`` and ``CLIPTextModelWithProjection``, here with the attention
layout of SDXL base (transformer depths 1, 2 and 10: no attention in the first block, 2 and 10 layers below)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.tiny_components import MAX_LENGTH, build_word_tokenizer, tiny_components

TEXT_WIDTH = 16  # each text encoder's hidden width: the UNet's cross-attention width is twice this
PROJECTION_WIDTH = 16
TIME_EMBED_WIDTH = 4


def tiny_xl_components(seed: int = 0, transformer_depths=(1, 2, 10), force_zeros_for_empty_prompt: bool = True) -> dict:
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="magic_remover_tok_") as vocab_dir:
        tokenizer = build_word_tokenizer(Path(vocab_dir))
    with tempfile.TemporaryDirectory(prefix="magic_remover_tok_") as vocab_dir:
        tokenizer_2 = build_word_tokenizer(Path(vocab_dir))
    text_config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=TEXT_WIDTH, intermediate_size=24,
        num_attention_heads=2, num_hidden_layers=3, vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH,
        projection_dim=PROJECTION_WIDTH, hidden_act="gelu",
    )  # fmt: skip
    text_encoder = CLIPTextModel(text_config).eval()
    text_encoder_2 = CLIPTextModelWithProjection(text_config).eval()
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=tuple(transformer_depths),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_WIDTH,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_WIDTH + PROJECTION_WIDTH,
        cross_attention_dim=2 * TEXT_WIDTH,
        norm_num_groups=4,
    ).eval()
    # SD's tiny autoencoder (its scaling factor gives unit-variance latents); SDXL's config asks for the fp16 upcast
    vae = tiny_components(seed=seed)["vae"]
    vae.register_to_config(force_upcast=True)
    # SDXL ships an Euler scheduler; the method reads only its config (a DDIM schedule of its betas)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )  # fmt: skip
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": scheduler,
        "force_zeros_for_empty_prompt": force_zeros_for_empty_prompt,
    }


def tiny_xl_pipeline(**kwargs):
    """A ``MagicRemoverXLPipeline`` of :func:`tiny_xl_components` (same keywords), its progress bar off."""
    from magic_remover import MagicRemoverXLPipeline

    pipeline = MagicRemoverXLPipeline(**tiny_xl_components(**kwargs))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
