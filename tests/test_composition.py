"""MagicRemover among other diffusers pipelines: from_pipe in both directions, shared components left as they were,
results handed to img2img, and the DiffusionPipeline conformance points not covered by test_pipeline.py
(dtype round trip, attention slicing, CPU offload, ``components`` into the constructor)."""

import numpy as np
import pytest
import torch
from conftest import PROMPT, assert_same_state, quick_removal, snapshot
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from tiny_components import make_test_image, tiny_components

from magic_remover import MagicRemoverPipeline

SHARED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _quiet(pipeline):
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _text_to_image(sd):
    return _quiet(sd)(PROMPT, height=32, width=32, num_inference_steps=3, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images  # fmt: skip


@pytest.fixture
def sd():
    return StableDiffusionPipeline(**tiny_components())


def _dtypes(pipeline) -> dict:
    return {n: c.dtype for n, c in pipeline.components.items() if isinstance(c, torch.nn.Module)}


# ------------------------------------------------------------------------------------------------------------------
# from_pipe
# ------------------------------------------------------------------------------------------------------------------


def test_from_pipe_shares_every_component_in_both_directions(sd):
    remover = MagicRemoverPipeline.from_pipe(sd)
    back = StableDiffusionPipeline.from_pipe(remover)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(remover)
    for pipeline in (remover, back, img2img):
        for name in SHARED:
            assert getattr(pipeline, name) is getattr(sd, name), (type(pipeline).__name__, name)
    assert type(back) is StableDiffusionPipeline and type(img2img) is StableDiffusionImg2ImgPipeline


def test_from_pipe_with_the_source_dtype_leaves_the_source_as_it_was(sd):
    sd.to(torch.bfloat16)
    remover = MagicRemoverPipeline.from_pipe(sd, dtype=torch.bfloat16)  # diffusers 0.42 name; torch_dtype is deprecated
    assert set(_dtypes(sd).values()) == {torch.bfloat16} and remover.unet is sd.unet
    assert _text_to_image(sd).shape == (1, 32, 32, 3)


def test_from_pipe_keeps_the_source_dtypes_where_diffusers_casts_them(sd):
    """diffusers 0.42's ``DiffusionPipeline.from_pipe`` ends with ``new_pipeline.to(dtype=dtype or torch.float32)``
    on the components it shares, so it casts the *source* pipeline in place. ``MagicRemoverPipeline.from_pipe`` keeps
    every shared component's dtype unless a dtype is asked for. If the diffusers half fails, diffusers changed."""
    half = StableDiffusionPipeline(**tiny_components()).to(torch.bfloat16)
    half.vae.to(torch.float32)  # mixed dtypes, as with an fp32 VAE under an fp16 UNet
    before = _dtypes(half)
    remover = MagicRemoverPipeline.from_pipe(half)
    assert _dtypes(half) == before and remover.unet is half.unet

    remover = MagicRemoverPipeline.from_pipe(sd, torch_dtype=torch.bfloat16)  # asked for: cast, as diffusers does
    assert remover.unet is sd.unet and set(_dtypes(sd).values()) == {torch.bfloat16}

    plain = StableDiffusionPipeline(**tiny_components()).to(torch.bfloat16)
    StableDiffusionImg2ImgPipeline.from_pipe(plain)  # diffusers' own from_pipe upcasts its source
    assert set(_dtypes(plain).values()) == {torch.float32}


def test_text_to_image_is_unchanged_by_a_removal_on_shared_components(sd):
    before_state, before = snapshot(sd), _text_to_image(sd)
    remover = MagicRemoverPipeline.from_pipe(sd)
    quick_removal(remover)
    quick_removal(remover, output_type="np", self_attention_guidance=True, optimization_steps=2)
    assert_same_state(before_state, snapshot(sd))
    np.testing.assert_array_equal(_text_to_image(sd), before)


def test_a_removal_feeds_img2img_as_an_image_and_as_latents(sd):
    remover = MagicRemoverPipeline.from_pipe(sd)
    img2img = _quiet(StableDiffusionImg2ImgPipeline.from_pipe(remover))
    pixels = quick_removal(remover, output_type="pil")[0]
    latents = quick_removal(remover, output_type="latent")
    as_np = quick_removal(remover, output_type="np")

    # one result in three forms: the PIL image is the array quantised, and the latents are in SD's convention (VAE
    # latents times scaling_factor), so img2img's VAE decodes them to the same result
    np.testing.assert_allclose(np.asarray(pixels, dtype=np.float32) / 255, as_np[0], atol=0.5 / 255 + 1e-6)
    with torch.no_grad():
        decoded = img2img.vae.decode(latents / img2img.vae.config.scaling_factor).sample
    np.testing.assert_allclose(img2img.image_processor.postprocess(decoded, output_type="np"), as_np, atol=1e-5)

    def refine(image):  # strength 0.4 of 3 steps: one denoising step from the given image, noised to t = 334
        return img2img(image=image, prompt=PROMPT, strength=0.4, num_inference_steps=3, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    # img2img takes the latents as its starting point: it ends near the removal (measured 0.004 mean absolute
    # difference), not where it ends from other latents (the same, mirrored: 0.16)
    from_latents, from_mirrored = refine(latents), refine(latents.flip(-1))
    assert np.abs(from_latents - as_np).mean() < 0.2 * np.abs(from_mirrored - as_np).mean()
    # and the PIL image as the pixels it holds: the same result as from the float array, up to quantisation
    from_pixels = refine(pixels)
    assert from_pixels.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(from_pixels, refine(as_np), atol=0.02)


# ------------------------------------------------------------------------------------------------------------------
# Conformance (callbacks, output types and batches are in test_pipeline.py)
# ------------------------------------------------------------------------------------------------------------------


def test_to_bfloat16_and_back_changes_nothing():
    remover = MagicRemoverPipeline(**tiny_components())
    with torch.no_grad():  # weights that bfloat16 holds exactly, so the round trip itself is lossless
        for component in remover.components.values():
            if isinstance(component, torch.nn.Module):
                for parameter in component.parameters():
                    parameter.copy_(parameter.bfloat16().float())
    before = quick_removal(remover)
    remover.to(torch.bfloat16)
    assert set(_dtypes(remover).values()) == {torch.bfloat16}
    assert torch.isfinite(quick_removal(remover)).all()
    remover.to(torch.float32)
    assert set(_dtypes(remover).values()) == {torch.float32}
    torch.testing.assert_close(quick_removal(remover), before, atol=0, rtol=0)


def test_attention_slicing_leaves_the_results_and_the_processors_intact():
    remover = MagicRemoverPipeline(**tiny_components())
    inversion = remover.invert(make_test_image(), PROMPT, num_inference_steps=3, method="ddim")
    layer_choices = {"all": "all", "up": ["up_blocks"]}  # with "up", sliced processors stay on the other layers
    plain = {key: quick_removal(remover, inversion=inversion, attention_layers=v) for key, v in layer_choices.items()}
    plain_inline = quick_removal(remover)
    remover.enable_attention_slicing(1)
    try:
        state = snapshot(remover)
        assert any("Sliced" in type(p).__name__ for p in state["processors"].values())
        sliced = {key: quick_removal(remover, inversion=inversion, attention_layers=v) for key, v in layer_choices.items()}
        sliced_inline = quick_removal(remover)  # its inversion runs through the sliced processors
        assert_same_state(state, snapshot(remover))
    finally:
        remover.disable_attention_slicing()
    for key in layer_choices:
        torch.testing.assert_close(sliced[key], plain[key], atol=1e-4, rtol=0)
    torch.testing.assert_close(sliced_inline, plain_inline, atol=1e-4, rtol=0)


def _accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return accelerator.current_accelerator().type
    return None


@pytest.mark.skipif(_accelerator() is None, reason="enable_model_cpu_offload needs an accelerator; none here")
def test_model_cpu_offload_gives_the_same_result():
    remover = MagicRemoverPipeline(**tiny_components())
    reference = MagicRemoverPipeline(**tiny_components()).to(_accelerator())
    remover.enable_model_cpu_offload(device=_accelerator())
    torch.testing.assert_close(quick_removal(remover).cpu(), quick_removal(reference).cpu(), atol=1e-4, rtol=1e-4)
    assert remover.unet.device.type == "cpu"  # offloaded again after the call


def test_components_round_trip_through_the_constructor(pipe):
    again = MagicRemoverPipeline(**pipe.components)
    for name in SHARED:
        assert getattr(again, name) is getattr(pipe, name)
    torch.testing.assert_close(quick_removal(again, output_type="pt"), quick_removal(pipe, output_type="pt"), atol=0, rtol=0)


def test_image_encoder_is_not_registered_and_from_pipe_leaves_one_behind():
    """IP-Adapter is not supported, so no `image_encoder` is registered half-way; an SD pipeline that carries one
    still converts, and keeps its encoder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    assert "image_encoder" not in MagicRemoverPipeline(**tiny_components()).components
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=32, patch_size=8,
                                                             projection_dim=8))  # fmt: skip
    sd = StableDiffusionPipeline(**tiny_components(), image_encoder=encoder)
    remover = MagicRemoverPipeline.from_pipe(sd)
    assert "image_encoder" not in remover.components and sd.image_encoder is encoder
    assert torch.isfinite(quick_removal(remover)).all()
