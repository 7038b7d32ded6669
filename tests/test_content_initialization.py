"""MagicEraser's content initialisation: the edit branch leaves from the pre-filled image at the first guided step."""

import numpy as np
import pytest
import torch
from conftest import PROMPT
from tiny_components import make_test_image

import magic_remover.pipeline_magic_remover as pipeline_module
from magic_remover.content_initialization import (
    PREFILLS,
    best_shift,
    content_shifted_latents,
    shift_prefill,
    telea_prefill,
)
from magic_remover.inversion import DDIMSchedule, timesteps_in_range


def test_shift_replaces_the_clean_latent_inside_the_region_and_keeps_the_noise():
    torch.manual_seed(0)
    z0, z0_filled, noise = torch.randn(3, 1, 4, 6, 6).unbind(0)
    region = torch.zeros(1, 1, 6, 6)
    region[..., 1:4, 2:5] = 1.0
    alpha = 0.3
    latents = alpha**0.5 * z0 + (1 - alpha) ** 0.5 * noise
    shifted = content_shifted_latents(latents, z0, z0_filled, region, alpha)
    inside = region.bool().expand_as(latents)
    assert torch.equal(shifted[~inside], latents[~inside])  # outside: the trajectory's latent exactly
    expected = alpha**0.5 * z0_filled + (1 - alpha) ** 0.5 * noise  # inside: the filled image on the same noise
    torch.testing.assert_close(shifted[inside], expected[inside])


def test_telea_fills_the_hole_from_the_background_and_touches_nothing_else():
    pixels = torch.full((1, 3, 24, 24), -0.2)
    pixels[:, 0] = 0.5  # a uniform background colour
    pixels[:, :, 8:16, 8:16] = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)  # a square object
    region = torch.zeros(1, 1, 24, 24)
    region[..., 7:17, 7:17] = 1.0
    filled = telea_prefill(pixels, region)
    assert torch.equal(filled[..., region[0, 0] == 0], pixels[..., region[0, 0] == 0])
    background = pixels[0, :, 0, 0].view(3, 1, 1)
    # the object (1.5 away in red) is gone, the sky is back within 3 levels of 8 bits (quantisation and Telea)
    assert (filled[0, :, 7:17, 7:17] - background).abs().max() <= 3 / 127.5


def _stripes(size=48, period=6):
    """Vertical stripes, red and blue, ``[1, 3, size, size]`` in [-1, 1]."""
    columns = (torch.arange(size) // (period // 2)) % 2
    pixels = torch.empty(1, 3, size, size)
    pixels[0, 0] = torch.where(columns == 0, 0.8, -0.8).float().view(1, -1)
    pixels[0, 1] = -0.5
    pixels[0, 2] = -pixels[0, 0]
    return pixels


def test_the_shift_fill_continues_a_periodic_texture_through_the_hole_exactly():
    truth = _stripes()
    pixels = truth.clone()
    pixels[..., 14:30, 17:33] = torch.tensor([0.9, 0.9, -0.9]).view(3, 1, 1)  # a yellow object
    region = torch.zeros(1, 1, 48, 48)
    region[..., 13:31, 16:34] = 1
    filled = shift_prefill(pixels, region)
    assert torch.equal(filled[..., region[0, 0] == 0], pixels[..., region[0, 0] == 0])
    torch.testing.assert_close(filled, truth)  # the stripes in phase, the object gone
    assert (telea_prefill(pixels, region) - truth).abs().max() > 0.5  # which a smear of the edge's colours is not


def test_the_shift_fill_does_not_copy_a_neighbouring_object_in():
    """The shortest shift that continues the stripes is one period, 6 columns, right (left is the image's edge); it
    would copy the green square lying inside its source, clear of its context: the colour test sends the copy to the
    next shortest, 8 rows down (the stripes run down; the copy clears the hole)."""
    from scipy import ndimage

    truth = _stripes(period=6)[0].permute(1, 2, 0).double().numpy()
    image = truth.copy()
    image[7:13, 12:16] = (-0.9, 0.9, -0.9)  # the green square, inside the hole's copy shifted by (0, +6)
    hole = np.zeros((48, 48), bool)
    hole[6:14, 4:10] = True
    context = ndimage.binary_dilation(hole, iterations=2) & ~hole
    dy, dx = best_shift(image, ~hole, hole, context)
    copy = image[6 + dy : 14 + dy, 4 + dx : 10 + dx]
    np.testing.assert_allclose(copy, truth[6:14, 4:10])  # stripes in phase, no green
    assert (dy, dx) == (8, 0)
    assert best_shift(image, ~hole, hole, context, foreign=np.inf) == (0, 6)  # without the test: the square


def test_the_shift_fill_meets_a_gradient_around_the_hole(monkeypatch):
    """On a sky-like ramp a copy (one tile: one shift) is off by a constant: the boundary correction takes it out."""
    import magic_remover.content_initialization as module

    rows, cols = np.indices((40, 40)) / 40.0
    truth = np.stack([rows - 0.5, 0.3 * cols, -rows], axis=-1)
    hole = np.zeros((40, 40), bool)
    hole[14:26, 15:25] = True
    image = np.where(hole[..., None], 0.9, truth)
    filled, shifts = module.shift_fill(image, hole, tile=40, ring=3)
    assert np.abs(filled - truth)[hole].max() < 1e-6
    assert (shifts[hole] == shifts[hole][0]).all()  # one tile, one shift
    monkeypatch.setattr(module, "boundary_correction", lambda image, hole, *args, **kwargs: np.zeros_like(image))
    assert np.abs(module.shift_fill(image, hole, tile=40, ring=3)[0] - truth)[hole].max() > 0.05


def test_a_large_image_is_searched_small_and_copied_at_its_own_size():
    truth = _stripes(size=192, period=12)
    pixels = truth.clone()
    pixels[..., 60:110, 70:130] = torch.tensor([0.9, 0.9, -0.9]).view(3, 1, 1)
    region = torch.zeros(1, 1, 192, 192)
    region[..., 56:114, 66:134] = 1
    filled = shift_prefill(pixels, region, search_side=64)  # searched at 64 x 64, a third of the size
    assert torch.equal(filled[..., region[0, 0] == 0], pixels[..., region[0, 0] == 0])
    error = (filled - truth).abs().amax(dim=1)[0][region[0, 0] > 0]
    assert (error < 0.05).float().mean() > 0.95  # the stripes continue in phase, at full resolution


def test_the_shift_fill_falls_back_to_telea_when_no_copy_fits():
    pixels = _stripes(size=16)
    region = torch.ones(1, 1, 16, 16)
    region[..., 0, 0] = 0  # nothing but one pixel is known: no tile finds a source
    torch.testing.assert_close(shift_prefill(pixels, region), telea_prefill(pixels, region))


def test_the_pipeline_prefills_with_the_method_named(pipe, spy):
    _run(pipe, content_initialization="shift")
    assert len(spy["shift_prefill"]) == 1 and not spy["telea"]
    (source, pixel_region), filled = spy["shift_prefill"][0]
    assert torch.equal(filled[..., pixel_region[0, 0] <= 0.5], source[..., pixel_region[0, 0] <= 0.5])


def _run(pipe, **kwargs):
    return pipe(image=make_test_image(), prompt=PROMPT, target="ball", inversion_method="ddim", num_inference_steps=4,
                guidance_timesteps=(100, 700), output_type="latent", **kwargs)  # fmt: skip


@pytest.fixture
def spy(monkeypatch):
    """Records each call of the pipeline's content shift and pre-fills (arguments and result)."""
    calls = {"shift": [], "telea": [], "shift_prefill": []}

    def recording(name, fn):
        def wrapper(*args):
            result = fn(*args)
            calls[name].append((args, result))
            return result

        return wrapper

    monkeypatch.setattr(pipeline_module, "content_shifted_latents", recording("shift", content_shifted_latents))
    monkeypatch.setitem(PREFILLS, "telea", recording("telea", telea_prefill))
    monkeypatch.setitem(PREFILLS, "shift", recording("shift_prefill", shift_prefill))
    return calls


def test_the_edit_branch_leaves_from_the_prefilled_latent_at_the_first_guided_step(pipe, spy):
    seen = {}

    def callback(pipeline, step, timestep, tensors):
        seen[step] = tensors["reconstruction_latents"].clone()
        return {}

    off = _run(pipe)
    on = _run(pipe, content_initialization="telea", callback_on_step_end=callback,
              callback_on_step_end_tensor_inputs=["latents", "reconstruction_latents"])  # fmt: skip
    assert len(spy["shift"]) == 1 and len(spy["telea"]) == 1
    schedule = DDIMSchedule.from_scheduler_config(pipe.scheduler.config, 4)
    first = timesteps_in_range(schedule.timesteps, 100, 700).index(True)
    assert first > 0
    (latents, z0, z0_filled, region, alpha_t), shifted = spy["shift"][0]
    assert alpha_t == schedule.alpha(schedule.timesteps[first])  # brought to the first guided timestep ...
    assert torch.equal(latents, seen[first - 1])  # ... from the reconstruction's latent there
    assert torch.equal(z0, off.inversion.latents[0])
    assert region.sum() > 0 and not torch.equal(z0_filled, z0)
    assert torch.equal(on.reconstructions, off.reconstructions)  # the reconstruction branch never sees it
    assert not torch.equal(on.images, off.images)


def test_with_a_mask_the_prefill_fills_the_mask(pipe, spy):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 6:22] = 255
    _run(pipe, content_initialization="telea", mask_image=mask)
    (_, pixel_region), _ = spy["telea"][0]
    assert torch.equal(pixel_region[0, 0] > 0.5, torch.from_numpy(mask > 0))
    (_, _, _, region, _), _ = spy["shift"][0]
    # the shift follows the mask at latent size (the tiny VAE halves it): 1 well inside, 0 well outside
    assert region.shape[-2:] == (16, 16)
    assert (region[0, 0, 5:11, 4:10] == 1).all() and region[0, 0, :3].sum() == 0 and region[0, 0, 13:].sum() == 0


def test_content_initialization_adds_no_unet_pass(pipe):
    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        _run(pipe)
        without = list(calls)
        calls.clear()
        _run(pipe, content_initialization="telea")
    finally:
        hook.remove()
    assert calls == without


def test_an_unknown_content_initialization_is_refused_before_any_model_pass(pipe):
    with pytest.raises(ValueError, match="`content_initialization` must be one of"):
        _run(pipe, content_initialization="lama")
