"""Protecting the prompt's other objects (ours, not in the paper): pure functions and the argument's checks."""

import pytest
import torch
from conftest import PROMPT, quick_removal

from magic_remover.attention_processors import (
    automatic_mask,
    default_protected_words,
    normalize_map,
    product_map,
    protected_dominance,
    protection_factor,
    top_fraction_mask,
)
from magic_remover.pipeline_magic_remover import protected_word_maps


@pytest.mark.parametrize(
    "prompt, targets, expected",
    [
        ("a red star and a yellow triangle on a sky background", ["star"], ["triangle"]),
        ("a red star and a blue star on a sky background", ["red star"], ["blue"]),
        ("an orange triangle, a pink square and a blue circle in a room", ["square"], ["triangle", "circle"]),
        (PROMPT, ["ball"], []),  # one object: nothing to protect, the scene after "on" never counts
        # a phrase ending in function words protects its last content word, never "beside" or "it"
        ("a red star and a blue circle beside it on a sky background", ["star"], ["circle"]),
    ],
)
def test_default_protects_the_other_objects_only(prompt, targets, expected):
    assert default_protected_words(prompt, targets) == expected


def _two_objects():
    """A target map on the left object that spills onto the right one, and a protected word on the right."""
    target = torch.zeros(1, 8, 8)
    target[0, :, :4] = 1.0
    target[0, :, 4:6] = 0.4  # the spill onto the neighbour
    neighbour = torch.zeros(1, 8, 8)
    neighbour[0, :, 4:6] = 1.0
    return target, neighbour


def test_protected_word_lowers_the_guidance_weight_on_its_own_region():
    target, neighbour = _two_objects()
    aggregated = torch.stack([target[0], neighbour[0]]).unsqueeze(0)  # [B, tokens, h, w]
    dominance = protected_dominance(aggregated, [[[1]]])
    torch.testing.assert_close(dominance, normalize_map(neighbour))
    plain = product_map([normalize_map(target)])
    protected = product_map(protected_word_maps([normalize_map(target)], dominance))
    assert protected[0, :, 4:6].max() < 0.5 * plain[0, :, 4:6].min()  # the neighbour's region: lowered
    torch.testing.assert_close(protected[0, :, :4], plain[0, :, :4])  # the target's own region: unchanged


def test_no_protected_word_changes_nothing():
    target, _ = _two_objects()
    assert protected_dominance(torch.rand(2, 3, 4, 4), [[], []]) is None
    torch.testing.assert_close(protection_factor(target, None), torch.ones_like(target))
    # a sample without protected words in a batch with some: its map is left as it is
    dominance = protected_dominance(torch.rand(2, 3, 8, 8), [[[2]], []])
    maps = normalize_map(torch.rand(2, 8, 8))
    torch.testing.assert_close(protected_word_maps([maps], dominance)[0][1], maps[1])


def test_protect_names_an_absent_word_before_any_model_pass(pipe, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the UNet ran before `protect` was checked")

    monkeypatch.setattr(pipe, "_unet_epsilon", no_model)
    with pytest.raises(ValueError, match="`protect` 'tiger'"):
        quick_removal(pipe, protect=["grass", "tiger"])
    with pytest.raises(TypeError, match="`protect`"):
        quick_removal(pipe, protect=[3])


def test_protect_changes_only_where_the_protected_word_dominates(pipe):
    off = quick_removal(pipe, protect=[], attention_guidance_scale=50.0)
    on = quick_removal(pipe, protect=["grass"], attention_guidance_scale=50.0)
    assert on.shape == off.shape and torch.isfinite(on).all()
    assert not torch.equal(on, off)


TWO_OBJECTS = "a red ball and a blue square on the grass"


def test_protect_none_protects_the_prompts_other_objects(pipe):
    """The default (``protect=None``) is the prompt's other objects, reaching the guidance: the same removal as
    naming them, not the same as protecting nothing."""
    assert default_protected_words(TWO_OBJECTS, ["ball"]) == ["square"]
    automatic = quick_removal(pipe, prompt=TWO_OBJECTS, attention_guidance_scale=50.0)
    named = quick_removal(pipe, prompt=TWO_OBJECTS, protect=["square"], attention_guidance_scale=50.0)
    unprotected = quick_removal(pipe, prompt=TWO_OBJECTS, protect=[], attention_guidance_scale=50.0)
    torch.testing.assert_close(automatic, named, rtol=0, atol=0)
    assert not torch.equal(automatic, unprotected)


def _reconstruction_maps(pipe, monkeypatch, protect, **kwargs):
    """Each step's reconstruction-branch soft map of the target, and the protected words' dominance beside it."""
    steps = []
    original = pipe._reconstruction_epsilon

    def recording(ctx, latents, step_index, timestep):
        epsilon, attention, soft_mask = original(ctx, latents, step_index, timestep)
        steps.append((soft_mask.clone(), ctx.state.refocus_maps[1]))
        return epsilon, attention, soft_mask

    monkeypatch.setattr(pipe, "_reconstruction_epsilon", recording)
    quick_removal(pipe, protect=protect, **kwargs)
    monkeypatch.undo()
    return steps


def test_the_reconstruction_map_leaves_the_protected_word_where_it_dominates(pipe, monkeypatch):
    """The soft map the automatic region, refocusing and ``attention_maps`` come from is lowered where a protected
    word dominates the target, as the guidance weight is (the reconstruction branch does not depend on ``protect``,
    so the two runs see the same attention)."""
    protected = _reconstruction_maps(pipe, monkeypatch, ["grass"])
    plain = _reconstruction_maps(pipe, monkeypatch, [])
    assert len(protected) == len(plain) > 0
    lowered_somewhere = False
    for (soft, dominance), (unprotected, none) in zip(protected, plain):
        assert none is None and dominance is not None  # refocusing gets the protected words' region too
        assert torch.all(soft <= unprotected + 1e-6)
        target_dominates = dominance <= unprotected
        torch.testing.assert_close(soft[target_dominates], unprotected[target_dominates])  # the target's region
        dominates = (dominance > unprotected + 1e-3) & (unprotected > 1e-3)
        assert torch.all(soft[dominates] < unprotected[dominates])  # the protected word's region: lowered
        lowered_somewhere = lowered_somewhere or bool(dominates.any())
    assert lowered_somewhere


def test_cutoff_zeroes_the_target_only_where_a_protected_word_dominates_it_clearly():
    target, neighbour = _two_objects()
    dominance = normalize_map(neighbour)
    soft = protection_factor(target, dominance)
    cut = protection_factor(target, dominance, cutoff=0.5)
    assert torch.all(soft[0, :, 4:6] > 0)  # the soft lowering alone keeps the spill at A / D = 0.4
    assert torch.all(cut[0, :, 4:6] == 0)  # 0.4 < 0.5 * 1: the neighbour's pixels leave the target
    torch.testing.assert_close(cut[0, :, :4], soft[0, :, :4])  # the target's own region: unchanged
    # a cutoff the spill passes (0.4 >= 0.3 * 1) keeps the soft factor there
    torch.testing.assert_close(protection_factor(target, dominance, cutoff=0.3), soft)
    torch.testing.assert_close(protection_factor(target, None, cutoff=0.5), torch.ones_like(target))


def test_a_mostly_zero_map_gives_a_region_of_its_nonzero_pixels_not_the_whole_image():
    """With the cutoff most of a map may be 0; its 80% quantile is then 0, and the top 20% must not become all."""
    attention = torch.zeros(1, 8, 8)
    attention[0, 2:4, 2:4] = torch.tensor([[1.0, 0.6], [0.3, 0.1]])
    region = automatic_mask(attention)
    assert region.sum() == 4 and torch.all(region[0, 2:4, 2:4] == 1)
    assert top_fraction_mask(torch.zeros(1, 4, 4)).sum() == 0


def test_the_cutoff_takes_the_dominated_pixels_out_of_the_reconstruction_map(pipe, monkeypatch):
    """``protect_cutoff`` reaches the soft map the region and ``attention_maps`` come from: exactly 0 where the
    target's map is below c times the protected word's, the soft map elsewhere (the reconstruction branch does not
    depend on either argument, so the three runs see the same attention)."""
    cutoff = 0.9
    unprotected = _reconstruction_maps(pipe, monkeypatch, [])
    soft = _reconstruction_maps(pipe, monkeypatch, ["grass"])
    cut = _reconstruction_maps(pipe, monkeypatch, ["grass"], protect_cutoff=cutoff)
    assert len(unprotected) == len(soft) == len(cut) > 0
    zeroed = 0
    for (target, _), (lowered, dominance), (hard, _) in zip(unprotected, soft, cut):
        dominated = target < cutoff * dominance
        assert torch.all(hard[dominated] == 0)
        torch.testing.assert_close(hard[~dominated], lowered[~dominated])
        zeroed += int((dominated & (lowered > 1e-3)).sum())
    assert zeroed > 0  # the soft lowering alone had kept some of those pixels


def test_protect_cutoff_is_checked_before_any_model_pass(pipe, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the UNet ran before `protect_cutoff` was checked")

    monkeypatch.setattr(pipe, "_unet_epsilon", no_model)
    for bad in (0.0, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match="`protect_cutoff`"):
            quick_removal(pipe, protect=["grass"], protect_cutoff=bad)
    with pytest.raises(TypeError, match="`protect_cutoff`"):
        quick_removal(pipe, protect=["grass"], protect_cutoff="0.8")


def test_with_a_mask_the_cutoff_has_no_effect_and_says_so(pipe, caplog):
    """The user's mask says where the target is; the cutoff shapes the automatic region only."""
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    plain = quick_removal(pipe, protect=["grass"], mask_image=mask, attention_guidance_scale=50.0)
    with caplog.at_level("WARNING"):
        cut = quick_removal(pipe, protect=["grass"], mask_image=mask, attention_guidance_scale=50.0, protect_cutoff=0.9)
    torch.testing.assert_close(cut, plain, rtol=0, atol=0)
    assert "`protect_cutoff`" in caplog.text and "no effect" in caplog.text
    without_mask = quick_removal(pipe, protect=["grass"], attention_guidance_scale=50.0, protect_cutoff=0.9)
    assert not torch.equal(without_mask, quick_removal(pipe, protect=["grass"], attention_guidance_scale=50.0))
