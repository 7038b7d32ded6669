"""Bad input gets a clear ValueError/TypeError naming the argument."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPT, STEPS
from tiny_components import make_test_image

GOOD = dict(prompt=PROMPT, target="ball", num_inference_steps=STEPS)


@pytest.mark.parametrize(
    "override,error,match",
    [
        ({"target": "cat"}, ValueError, "'cat' does not occur"),
        ({"target": ["ball", "dog"]}, ValueError, "'dog' does not occur"),
        ({"target": None}, TypeError, "`target`"),
        ({"target": 3}, TypeError, "`target`"),
        ({"target": []}, TypeError, "`target`"),
        ({"target": ""}, ValueError, "empty"),
        ({"prompt": 5}, TypeError, "`prompt`"),
        ({"prompt": ""}, ValueError, "empty prompt"),
        ({"prompt": [PROMPT, PROMPT]}, ValueError, "`prompt` has 2 entries"),
        ({"num_inference_steps": 0}, ValueError, "`num_inference_steps`"),
        ({"num_inference_steps": 2000}, ValueError, "`num_inference_steps`"),
        ({"num_inference_steps": 2.5}, TypeError, "`num_inference_steps`"),
        ({"num_inference_steps": True}, TypeError, "`num_inference_steps`"),
        ({"guidance_scale": 0.5}, ValueError, "`guidance_scale`"),
        ({"guidance_scale": "7"}, TypeError, "`guidance_scale`"),
        ({"erase_lambda": 1.5}, ValueError, "`erase_lambda`"),
        ({"erase_lambda": None}, TypeError, "`erase_lambda`"),
        ({"attention_guidance_scale": -1}, ValueError, "`attention_guidance_scale`"),
        ({"guidance_timesteps": (800, 100)}, ValueError, "`guidance_timesteps`"),
        ({"guidance_timesteps": (100, 5000)}, ValueError, "`guidance_timesteps`"),
        ({"optimization_timesteps": 500}, TypeError, "`optimization_timesteps`"),
        ({"optimization_steps": -1}, ValueError, "`optimization_steps`"),
        ({"attention_layers": ["no_such_block"]}, ValueError, "`attention_layers`"),
        ({"attention_layers": [3]}, TypeError, "`attention_layers`"),
        ({"energy": "l2"}, ValueError, "`energy`"),
        ({"gradient_weighting": "soft"}, ValueError, "`gradient_weighting`"),
        ({"blend_outside_attention_mask": "yes"}, TypeError, "`blend_outside_attention_mask`"),
        ({"attention_mask_threshold": 1.0}, ValueError, "`attention_mask_threshold`"),
        ({"attention_mask_threshold": "0.4"}, TypeError, "`attention_mask_threshold`"),
        ({"keep_input_outside_attention_mask": 1}, TypeError, "`keep_input_outside_attention_mask`"),
        ({"keep_input_outside_attention_mask": True, "output_type": "latent"}, ValueError, "decoded images"),
        ({"inversion_method": "edict"}, ValueError, "`inversion_method`"),
        ({"output_type": "jpeg"}, ValueError, "`output_type`"),
        ({"generator": 0}, TypeError, "`generator`"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "callback_on_step_end_tensor_inputs"),
        ({"image": "photo.png"}, TypeError, "`image`"),
        ({"image": np.zeros((4, 4, 4, 4, 3))}, ValueError, "`image`"),
        ({"image": None}, ValueError, "`image`"),
        ({"image": [make_test_image(), make_test_image((16, 16))]}, ValueError, "same size"),
        ({"mask_image": PIL.Image.new("L", (16, 16))}, ValueError, "`mask_image` is 16x16"),
        ({"mask_image": "mask.png"}, TypeError, "`mask_image`"),
        ({"inversion": {"latents": 0}}, TypeError, "`inversion`"),
    ],
)
def test_bad_input_is_named(pipe, image, override, error, match):
    kwargs = {"image": image, **GOOD, **override}
    with pytest.raises(error, match=match):
        pipe(**kwargs)


@pytest.mark.parametrize(
    "override,match",
    [
        ({"num_inference_steps": STEPS + 1}, "num_inference_steps=10"),
        ({"guidance_scale": 5.0}, "guidance_scale=7.5"),
        ({"inversion_method": "ddim"}, "method"),
        ({"prompt": "a photo of a red ball on the table"}, "prompt"),
    ],
)
def test_inversion_made_with_other_settings_is_refused(pipe, inversion, override, match):
    with pytest.raises(ValueError, match=match):
        pipe(**{**GOOD, "inversion": inversion, **override})


def test_inversion_of_another_image_is_refused(pipe, inversion):
    other = PIL.Image.fromarray(255 - np.asarray(make_test_image()))
    with pytest.raises(ValueError, match="different image"):
        pipe(image=other, inversion=inversion, **GOOD)
    with pytest.raises(ValueError, match="does not match"):
        pipe(image=make_test_image((48, 48)), inversion=inversion, **GOOD)


def test_keeping_the_input_without_the_input_keeps_its_reconstruction_with_a_notice(pipe, inversion, caplog):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            out = pipe(inversion=inversion, keep_input_outside_attention_mask=True, output_type="pt", **GOOD)
    finally:
        diffusers_logging.disable_propagation()
    assert any("pass `image` along with `inversion`" in r.getMessage() for r in caplog.records)
    with_image = pipe(image=make_test_image(), inversion=inversion, keep_input_outside_attention_mask=True,
                      output_type="pt", **GOOD)  # fmt: skip
    assert out.images.shape == with_image.images.shape
    assert not torch.equal(out.images, with_image.images)  # the input's own pixels are not what the fallback keeps


def test_invert_checks_its_inputs(pipe, image):
    with pytest.raises(ValueError, match="`method`"):
        pipe.invert(image, PROMPT, method="pnp")
    with pytest.raises(ValueError, match="`num_inner_steps`"):
        pipe.invert(image, PROMPT, num_inner_steps=0)
    with pytest.raises(TypeError, match="`prompt`"):
        pipe.invert(image, None)
    with pytest.raises(ValueError, match="`image`"):
        pipe.invert(None, PROMPT)
    with pytest.raises(ValueError, match="`learning_rate`"):
        pipe.invert(image, PROMPT, learning_rate=0)
    with pytest.raises(ValueError, match="`early_stop_epsilon`"):
        pipe.invert(image, PROMPT, early_stop_epsilon="small")
    with pytest.raises(ValueError, match="`image` as a tensor"):
        pipe.invert(torch.zeros(1, 1, 1, 3, 8, 8), PROMPT)


def test_a_threshold_without_an_automatic_mask_is_flagged(pipe, inversion, caplog):
    """`attention_mask_threshold` alone changes nothing; the user is told so instead of tuning a dead knob."""
    with caplog.at_level("WARNING"):
        pipe(inversion=inversion, attention_mask_threshold=0.4, **GOOD)
    assert "`attention_mask_threshold`" in caplog.text and "no effect" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        pipe(inversion=inversion, attention_mask_threshold=0.4, blend_outside_attention_mask=True, **GOOD)
    assert "`attention_mask_threshold`" not in caplog.text


def test_a_models_region_setting_is_not_flagged_only_the_users_own(pipe, inversion, caplog):
    """A model that ships `attention_mask_components` must not warn on every call with a `mask_image` (the mask
    replaces the automatic region); the same value passed by the user is flagged."""
    mask = np.ones((32, 32), dtype=np.float32)
    saved = pipe.removal_defaults
    try:
        pipe.removal_defaults = {"attention_mask_components": 1}
        with caplog.at_level("WARNING"):
            pipe(inversion=inversion, image=make_test_image(), mask_image=mask, **GOOD)
        assert "`attention_mask_components`" not in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING"):
            pipe(inversion=inversion, image=make_test_image(), mask_image=mask, attention_mask_components=1, **GOOD)
        assert "`attention_mask_components`" in caplog.text and "no effect" in caplog.text
    finally:
        pipe.removal_defaults = saved
    assert getattr(pipe, "_defaults_filled", frozenset()) == frozenset()
