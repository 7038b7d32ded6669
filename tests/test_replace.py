"""Remove, then replace: a removal's result and the target's map handed to diffusers' inpainting pipelines
(``StableDiffusionInpaintPipeline``, and ``PaintByExamplePipeline``: exemplar-based replacement inside a mask), on
tiny random components built here. Random weights paint nothing meaningful, so these tests check the plumbing: types,
sizes and the mask convention (white = repaint) as each pipeline's UNet receives them, where the outputs change, and
that the remover's shared components come back exactly as they were."""

import numpy as np
import pytest
import torch
from conftest import PROMPT, assert_same_state, snapshot
from diffusers import PaintByExamplePipeline, StableDiffusionInpaintPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
try:  # diffusers moved Paint by Example under pipelines/deprecated (0.3x)
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
except ImportError:
    from diffusers.pipelines.paint_by_example import PaintByExampleImageEncoder
from PIL import Image
from tiny_components import make_test_image, tiny_components
from transformers import CLIPImageProcessor, CLIPVisionConfig

from magic_remover import MagicRemoverPipeline

STEPS = 3


def _inpaint_unet(cross_attention_dim: int) -> UNet2DConditionModel:
    """An inpainting UNet: 4 noisy-latent channels + 1 mask channel + 4 masked-image latent channels."""
    torch.manual_seed(1)
    return UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=9, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    ).eval()  # fmt: skip


def _soft_mask(attention_map) -> Image.Image:
    """The README's conversion: the target's map in [0, 1] as a grey image, white where the object was."""
    return Image.fromarray((np.clip(attention_map, 0, 1) * 255).astype(np.uint8), mode="L")


@pytest.fixture(scope="module")
def removal():
    remover = MagicRemoverPipeline(**tiny_components())
    remover.set_progress_bar_config(disable=True)
    out = remover(image=make_test_image(), prompt=PROMPT, target="ball", num_inference_steps=STEPS,
                  inversion_method="ddim", generator=torch.Generator().manual_seed(0))  # fmt: skip
    soft = _soft_mask(out.attention_maps[0])
    # the random model's map covers much of the image; its brightest quarter makes a region with an inside and out
    cut = int(np.percentile(np.asarray(soft), 75))
    mask = soft.point(lambda v: 255 if v > cut else 0)
    return remover, out, soft, mask


def _recording_inputs(module, calls: list):
    """Records the first input (the UNet's latents, the VAE encoder's pixels) of every call of ``module``."""

    def record(_, args, kwargs):
        calls.append((args[0] if args else kwargs["sample"]).detach().clone())

    return module.register_forward_pre_hook(record, with_kwargs=True)


def _run_recording(pipe, **kwargs):
    """Runs ``pipe``; returns its image and what its UNet and VAE encoder were given."""
    unet_inputs, encoder_inputs = [], []
    hooks = [_recording_inputs(pipe.unet, unet_inputs), _recording_inputs(pipe.vae.encoder, encoder_inputs)]
    try:
        image = pipe(**kwargs, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)).images[0]
    finally:
        for hook in hooks:
            hook.remove()
    return image, unet_inputs[0], encoder_inputs


def _expected_channels(pipe, result: Image.Image, mask: Image.Image, keep_outside_value: float):
    """What a 9-channel inpainting UNet should see for ``mask`` (white = repaint): the mask channel at latent size
    (1 = repaint for SD inpaint, 0 = repaint for Paint by Example, which inverts it), and the latents of the image
    with the white region blanked."""
    white = torch.from_numpy(np.asarray(mask) >= 128).float()[None, None]
    latent_size = (result.height // pipe.vae_scale_factor, result.width // pipe.vae_scale_factor)
    mask_channel = torch.nn.functional.interpolate(white, size=latent_size)
    if keep_outside_value == 0.0:
        mask_channel = 1 - mask_channel
    pixels = torch.from_numpy(np.asarray(result, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    masked = pixels * (white < 0.5)
    return mask_channel, masked


def test_the_result_and_map_are_what_inpainting_pipelines_take(removal):
    _, out, soft, mask = removal
    result = out.images[0]
    assert isinstance(result, Image.Image) and result.mode == "RGB" and result.size == make_test_image().size
    assert soft.mode == "L" and soft.size == result.size and mask.size == result.size
    white = np.asarray(mask) == 255
    assert 0 < white.mean() < 0.5 and set(np.unique(np.asarray(mask))) == {0, 255}
    attention = out.attention_maps[0]
    assert attention[white].min() > attention[~white].max() - 1 / 255  # white exactly where the map is highest
    # diffusers reads it as 1 = repaint (its mask processor: grey, [0, 1], binarised at 0.5)
    processor = VaeImageProcessor(vae_scale_factor=2, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    read = processor.preprocess(mask, height=result.height, width=result.width)[0, 0].numpy()
    assert np.array_equal(read == 1, white)


def test_sd_inpainting_repaints_where_the_mask_is_white(removal):
    remover, out, _, mask = removal
    result = out.images[0]
    shared = {name: remover.components[name] for name in ("vae", "text_encoder", "tokenizer", "scheduler")}
    inpaint = StableDiffusionInpaintPipeline(**shared, unet=_inpaint_unet(32), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    inpaint.set_progress_bar_config(disable=True)
    painted, sample, encoded = _run_recording(inpaint, prompt="a photo of a cat on the grass", image=result,
                                              mask_image=mask, height=result.height, width=result.width)  # fmt: skip
    mask_channel, masked = _expected_channels(inpaint, result, mask, keep_outside_value=1.0)
    assert sample.shape[1] == 9 and sample.shape[-2:] == mask_channel.shape[-2:]
    torch.testing.assert_close(sample[:1, 4:5], mask_channel)  # [latents, mask, masked image]; 1 = repaint
    # the image it conditions on is the removal's result with the white region blanked
    assert any(torch.allclose(pixels, masked, atol=1e-6) for pixels in encoded)
    assert painted.size == result.size and painted.mode == "RGB"

    # a 9-channel model regenerates every pixel; diffusers' overlay (what padding_mask_crop applies) keeps the
    # removal's result outside the white region and the new paint inside it
    kept = np.asarray(inpaint.image_processor.apply_overlay(mask, result, painted), dtype=np.int16)
    white = np.asarray(mask) == 255
    assert np.array_equal(kept[~white], np.asarray(result, dtype=np.int16)[~white])
    assert np.abs(kept[white] - np.asarray(result, dtype=np.int16)[white]).mean() > 1


@pytest.fixture(scope="module")
def paint_by_example(removal):
    remover = removal[0]
    torch.manual_seed(2)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
                              image_size=32, patch_size=4, projection_dim=32)  # fmt: skip
    encoder = PaintByExampleImageEncoder(vision, proj_size=32).eval()
    features = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = PaintByExamplePipeline(vae=remover.vae, image_encoder=encoder, unet=_inpaint_unet(32),
                                  scheduler=remover.scheduler, safety_checker=None, feature_extractor=features)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_paint_by_example_paints_the_exemplar_where_the_mask_is_white(removal, paint_by_example):
    _, out, _, mask = removal
    result = out.images[0]
    exemplar = Image.new("RGB", (48, 48), (240, 200, 40))  # "a cat": any picture of the thing to paint in
    painted, sample, encoded = _run_recording(paint_by_example, example_image=exemplar, image=result,
                                              mask_image=mask, height=result.height, width=result.width)  # fmt: skip
    # Paint by Example takes white = repaint like SD inpainting, and inverts it for its UNet (1 = keep), which it
    # gives after the masked image's latents: channels [latents, masked image, mask]
    mask_channel, masked = _expected_channels(paint_by_example, result, mask, keep_outside_value=0.0)
    assert sample.shape[1] == 9
    torch.testing.assert_close(sample[:1, 8:9], mask_channel)
    assert any(torch.allclose(pixels, masked, atol=1e-6) for pixels in encoded)
    assert painted.size == result.size and painted.mode == "RGB"
    kept = np.asarray(paint_by_example.image_processor.apply_overlay(mask, result, painted), dtype=np.int16)
    white = np.asarray(mask) == 255
    assert np.array_equal(kept[~white], np.asarray(result, dtype=np.int16)[~white])
    assert np.abs(kept[white] - np.asarray(result, dtype=np.int16)[white]).mean() > 1


def test_the_remover_is_untouched_by_the_pipelines_it_fed(removal, paint_by_example):
    remover, out, _, mask = removal
    before = snapshot(remover)
    parameters = {name: {k: v.clone() for k, v in c.state_dict().items()}
                  for name, c in remover.components.items() if isinstance(c, torch.nn.Module)}  # fmt: skip
    scheduler_config = dict(remover.scheduler.config)
    result = out.images[0]

    inpaint = StableDiffusionInpaintPipeline(vae=remover.vae, text_encoder=remover.text_encoder,
                                             tokenizer=remover.tokenizer, scheduler=remover.scheduler,
                                             unet=_inpaint_unet(32), safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)  # fmt: skip
    inpaint.set_progress_bar_config(disable=True)
    inpaint("a cat", image=result, mask_image=mask, height=32, width=32, num_inference_steps=STEPS)
    paint_by_example(example_image=Image.new("RGB", (32, 32), "orange"), image=result, mask_image=mask, height=32,
                     width=32, num_inference_steps=STEPS)  # fmt: skip

    assert_same_state(before, snapshot(remover))  # processors identical, dtypes, devices, flags, modes
    assert dict(remover.scheduler.config) == scheduler_config
    for name, state in parameters.items():
        for key, value in remover.components[name].state_dict().items():
            assert torch.equal(value, state[key]), f"{name}.{key} changed"
    again = remover(image=make_test_image(), prompt=PROMPT, target="ball", num_inference_steps=STEPS,
                    inversion_method="ddim", generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(again), np.asarray(result))
