"""The pure functions: DDIM arithmetic, energies, map aggregation, target look-up."""

import pytest
import torch

from magic_remover.attention_processors import (
    aggregate_cross_attention,
    attention_energy,
    automatic_mask,
    layer_resolution,
    normalize_map,
    product_map,
    quantile_energy,
    top_fraction_mask,
)
from magic_remover.inversion import DDIMSchedule, classifier_optimization_step, ddim_step, predict_x0, to_epsilon
from magic_remover.pipeline_magic_remover import find_target_tokens


def test_ddim_inverse_step_undoes_forward_step_with_the_same_epsilon():
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    down = ddim_step(z, eps, eps, 0.3, 0.6)
    back = ddim_step(down, eps, eps, 0.6, 0.3)
    torch.testing.assert_close(back, z, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(down, z)


def test_classifier_optimization_moves_latent_only_by_the_guidance_difference():
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(classifier_optimization_step(z, eps, eps, 0.4), z, atol=1e-5, rtol=1e-5)
    delta = torch.randn_like(z)
    moved = classifier_optimization_step(z, eps, eps + delta, 0.4)  # eq. 12
    torch.testing.assert_close(moved - z, (1 - 0.4) ** 0.5 * delta, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_to_epsilon_agrees_with_the_clean_latent_it_implies(prediction_type):
    alpha = 0.35
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    z = alpha**0.5 * x0 + (1 - alpha) ** 0.5 * eps
    output = alpha**0.5 * eps - (1 - alpha) ** 0.5 * x0 if prediction_type == "v_prediction" else x0
    recovered = to_epsilon(output, z, alpha, prediction_type)
    torch.testing.assert_close(recovered, eps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(predict_x0(z, recovered, alpha), x0, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        to_epsilon(output, z, alpha, "flow")


def test_schedule_is_read_from_any_scheduler_config_without_touching_it():
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    config = dict(euler.config)
    schedule = DDIMSchedule.from_scheduler_config(euler.config, 20)
    assert len(schedule) == 20 and schedule.timesteps[0] > schedule.timesteps[-1]
    torch.testing.assert_close(schedule.alphas_cumprod, euler.alphas_cumprod.float())
    assert dict(euler.config) == config


def test_paper_energy_vanishes_at_lambda_one_and_grows_as_lambda_falls():
    a = normalize_map(torch.rand(2, 8, 8))  # the pipeline feeds eq. 7 normalised maps
    assert torch.all(attention_energy(a, 1.0) < 1e-6)
    e_high, e_low = attention_energy(a, 0.8), attention_energy(a, 0.2)
    assert torch.all(e_low > e_high) and torch.all(e_high > 0)
    # eq. 7 is an L1 norm: area-weighting scales it linearly
    torch.testing.assert_close(attention_energy(a, 0.5, pixel_area=4.0), 4 * attention_energy(a, 0.5))


def test_energy_gradient_points_up_the_target_attention():
    a = torch.rand(1, 6, 6, requires_grad=True)
    (grad,) = torch.autograd.grad(attention_energy(normalize_map(a), 0.8).sum(), a)
    assert torch.all(grad >= 0) and grad.sum() > 0
    (grad_q,) = torch.autograd.grad(quantile_energy(normalize_map(a)).sum(), a)
    assert grad_q[a.detach() < torch.quantile(a.detach(), 0.8)].abs().max() == 0  # only the top pixels count


def test_normalize_map_spans_zero_to_one_per_sample():
    a = torch.stack([torch.rand(5, 5) * 3 + 1, torch.rand(5, 5) * 0.01])
    n = normalize_map(a)
    for sample in n:
        assert sample.min().item() == pytest.approx(0.0, abs=1e-6)
        assert sample.max().item() == pytest.approx(1.0, abs=1e-4)


def test_top_fraction_mask_and_product_map():
    a = torch.arange(100.0).view(1, 10, 10)
    assert top_fraction_mask(a, 0.2).sum() == 20
    torch.testing.assert_close(product_map([a, torch.ones_like(a) * 2]), 2 * a)


def test_automatic_mask_is_the_research_region_or_a_threshold_grown_by_one_pixel():
    a = torch.arange(100.0).view(1, 10, 10) / 99
    research = automatic_mask(a)
    assert research.sum() == 75  # the top 20% (20 pixels) united with the part >= 0.25 (75 pixels)
    peak = torch.zeros(1, 8, 8)
    peak[0, 3, 4], peak[0, 6, 6] = 1.0, 0.3
    grown = automatic_mask(peak, 0.5)
    assert grown.sum() == 9 and grown[0, 2:5, 3:6].sum() == 9  # the 3x3 block around the peak, not the weak spot
    assert automatic_mask(peak, 0.25).sum() == 9 + 9  # both spots
    assert set(grown.unique().tolist()) == {0.0, 1.0} and grown.shape == peak.shape


@pytest.mark.parametrize("size,expected", [((16, 16), {256: (16, 16), 64: (8, 8), 16: (4, 4)}),
                                           ((15, 9), {135: (15, 9), 40: (8, 5), 12: (4, 3)})])  # fmt: skip
def test_layer_resolution_follows_the_latent_height_and_width(size, expected):
    for pixels, hw in expected.items():
        assert layer_resolution(pixels, size) == hw
    with pytest.raises(ValueError):
        layer_resolution(7, size)


def test_aggregation_resizes_every_layer_to_the_latent_and_averages():
    fine = torch.zeros(1, 12 * 8, 3)
    fine[0, :, 1] = 1.0
    coarse = torch.zeros(1, 6 * 4, 3)
    coarse[0, :, 1] = 3.0
    out = aggregate_cross_attention({"a": fine, "b": coarse}, (12, 8))
    assert out.shape == (1, 3, 12, 8)
    torch.testing.assert_close(out[0, 1], torch.full((12, 8), 2.0))
    assert out[0, 0].abs().max() == 0


def test_target_tokens(pipe):
    tok = pipe.tokenizer
    # single word; the start token is position 0
    assert find_target_tokens(tok, "a photo of a dog", "dog") == [[5]]
    # case follows the tokenizer
    assert find_target_tokens(tok, "a photo of a Dog", "DOG") == [[5]]
    # a word split into several tokens keeps all of them
    assert find_target_tokens(tok, "a snowman on the grass", "snowman") == [[2, 3]]
    # a repeated word keeps every occurrence
    assert find_target_tokens(tok, "a dog and a dog", "dog") == [[2, 5]]
    # a phrase: one list per word
    assert find_target_tokens(tok, "a red ball and a blue ball", "blue ball") == [[6], [7]]
    # a word inside another word is not the word
    with pytest.raises(ValueError, match="'dog' does not occur"):
        find_target_tokens(tok, "a hotdog on the table", "dog")
    with pytest.raises(ValueError, match="'cat' does not occur"):
        find_target_tokens(tok, "a photo of a dog", "cat")
    with pytest.raises(ValueError, match="limit"):
        find_target_tokens(tok, "a a a a a a a a a a a a a a a a a a dog", "dog")
    with pytest.raises(ValueError, match="empty"):
        find_target_tokens(tok, "a photo of a dog", "  ")


def test_inversion_and_denoising_use_the_same_timestep_pairs():
    """An off-by-one between inverse and forward timesteps would break this exact round trip: with a noise that
    depends on the timestep only, denoising must retrace the inversion trajectory step by step."""
    from diffusers import DDIMScheduler

    from magic_remover.inversion import ddim_inversion

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              set_alpha_to_one=False, steps_offset=1, clip_sample=False)  # fmt: skip
    schedule = DDIMSchedule.from_scheduler_config(scheduler.config, 12)
    base = torch.randn(1, 4, 6, 6)

    def noise(latents, timestep, _):
        return base * (1 + int(timestep) / 1000)

    z0 = torch.randn(1, 4, 6, 6)
    trajectory = ddim_inversion(noise, z0, None, schedule)
    assert trajectory.shape[0] == 13
    latents = trajectory[-1]
    for i, t in enumerate(schedule.timesteps):
        eps = noise(latents, t, None)
        latents = ddim_step(latents, eps, eps, schedule.alpha(t), schedule.alpha_after(i))
        torch.testing.assert_close(latents, trajectory[len(schedule) - i - 1], atol=1e-4, rtol=1e-4)
