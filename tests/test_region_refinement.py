"""Region refinement through the UNet's self-attention (ours): the target's map spread where the UNet says pixels
belong together, at the latent's height and width, with no extra UNet pass."""

import pytest
import torch
from conftest import quick_removal

from magic_remover.attention_maps import aggregate_self_attention, propagate_map, refined_region_map
from magic_remover.attention_processors import (
    CFG_BATCH,
    RECONSTRUCT,
    SINGLE,
    RemovalAttentionState,
    SelfAttentionKVSwapProcessor,
    self_attention_affinity,
)


def grouping_affinity(groups: torch.Tensor) -> torch.Tensor:
    """A row-stochastic ``[1, N, N]`` affinity in which each pixel attends evenly to the pixels of its own group."""
    same = (groups.flatten()[:, None] == groups.flatten()[None, :]).float()
    return (same / same.sum(1, keepdim=True)).unsqueeze(0)


def test_a_seed_spreads_within_its_group_and_not_beyond():
    groups = torch.zeros(4, 4, dtype=torch.long)
    groups[:, 2:] = 1  # left and right halves
    groups[0, 0] = 2  # a lone pixel of its own
    seed = torch.zeros(1, 4, 4)
    seed[0, 3, 0] = 1.0  # one pixel of the left half
    spread = propagate_map(seed, grouping_affinity(groups), iterations=1)
    left = (groups == 0)
    assert torch.allclose(spread[0][left], torch.ones(int(left.sum())))  # the whole group, evenly, normalised
    assert spread[0][groups == 1].abs().max() == 0 and spread[0, 0, 0] == 0  # nothing beyond it


def test_each_pixel_takes_the_map_of_the_pixels_it_attends_to():
    affinity = torch.eye(4).unsqueeze(0)
    affinity[0, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # pixel 0 attends to pixel 3 only
    seed = torch.zeros(1, 2, 2)
    seed[0, 1, 1] = 1.0  # pixel 3
    spread = propagate_map(seed, affinity, iterations=1)[0].flatten()
    assert spread.tolist() == [1.0, 0.0, 0.0, 1.0]  # A m, not A^T m: pixel 3 does not take pixel 0's


def test_the_refined_map_follows_the_latents_height_and_width():
    latent = (6, 4)  # not square; the affinity is the next level's, 3x2
    groups = torch.tensor([[0, 1], [0, 1], [0, 1]])
    seed = torch.zeros(1, *latent)
    seed[0, 0, 0] = 1.0
    spread = propagate_map(seed, grouping_affinity(groups), iterations=2)
    assert spread.shape == (1, *latent)
    assert spread[0, :, 0].min() > 0.5 and spread[0, :, 3].max() < 0.5  # the left column, the whole height


def test_a_protected_object_stays_out_of_the_refined_region():
    groups = torch.zeros(4, 4, dtype=torch.long)
    groups[2:] = 1  # top and bottom halves
    seed = torch.zeros(1, 4, 4)
    seed[0, 0, 0] = 1.0
    dominance = torch.zeros(1, 4, 4)
    dominance[0, :, 3] = 1.0  # a protected object on the right column
    affinities = {"a": grouping_affinity(groups)}
    refined = refined_region_map(seed, affinities, 1, dominance)
    assert refined[0, :2, :3].min() > 0.9  # the seed's group
    assert refined[0, :, 3].max() == 0 and refined[0, 2:].max() == 0  # not the protected column, nor the other group
    assert torch.allclose(refined_region_map(seed, affinities, 1, None)[0, :2], torch.ones(2, 4))


def test_the_refined_map_drops_what_the_core_reached_without_belonging_to_it():
    groups = torch.zeros(4, 4, dtype=torch.long)
    groups[:, 2:] = 1
    seed = torch.zeros(1, 4, 4)
    seed[0, :, :2] = 1.0  # the object, the left half
    seed[0, 0, 3] = 0.6  # a stray pixel of the word's map on the other group
    refined = refined_region_map(seed, {"a": grouping_affinity(groups)}, 1, None)
    assert refined[0, 0, 3] < 0.2 and refined[0, :, :2].min() > 0.99


def test_the_finest_captured_level_is_the_one_propagated():
    fine, coarse = torch.full((1, 16, 16), 1 / 16), torch.full((1, 4, 4), 1 / 4)
    assert aggregate_self_attention({"a": coarse, "b": fine, "c": fine * 0 + 1 / 16}).shape == (1, 16, 16)
    with pytest.raises(RuntimeError, match="self-attention"):
        aggregate_self_attention({})


def test_the_affinity_is_the_conditional_rows_head_mean_softmax():
    torch.manual_seed(0)
    query, key = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)  # [uncond, cond] x 3 heads x 5 positions
    affinity = self_attention_affinity(query, key, 0.5, CFG_BATCH)
    expected = torch.softmax(query[1:] @ key[1:].transpose(-1, -2) * 0.5, dim=-1).mean(1)
    assert torch.allclose(affinity, expected) and torch.allclose(affinity.sum(-1), torch.ones(1, 5))
    assert self_attention_affinity(query, key, 0.5, SINGLE).shape == (2, 5, 5)


def test_the_processor_records_the_affinity_only_when_asked(pipe):
    name = next(n for n in pipe.unet.attn_processors if n.endswith("attn1.processor"))
    layer = dict(pipe.unet.named_modules())[name[: -len(".processor")]]
    state = RemovalAttentionState()
    processor = SelfAttentionKVSwapProcessor(state, name, layer.processor)
    hidden = torch.randn(1, 16, layer.to_q.in_features)
    for capture in (False, True):
        state.capture_affinity = capture
        state.start_pass(RECONSTRUCT, SINGLE)
        processor(layer, hidden)
        assert (name in state.self_affinity) is capture
    assert state.self_affinity[name].shape == (1, 16, 16)


def test_refinement_reaches_the_region_and_is_checked_before_any_model_pass(pipe, monkeypatch):
    plain = quick_removal(pipe, output_type="pt", attention_mask_threshold=0.5, blend_outside_attention_mask=True)
    refined = quick_removal(pipe, output_type="pt", attention_mask_threshold=0.5, blend_outside_attention_mask=True,
                            region_refinement=2)  # fmt: skip
    assert (refined - plain).abs().max() > 1e-4

    def no_model_pass(*args, **kwargs):
        raise AssertionError("a model ran before the check")

    monkeypatch.setattr(pipe.unet, "forward", no_model_pass)
    for value in (-1, True, 1.5):
        with pytest.raises(ValueError, match="region_refinement"):
            quick_removal(pipe, region_refinement=value)
    with pytest.raises(ValueError, match="self_attention_guidance"):
        quick_removal(pipe, region_refinement=1, self_attention_guidance=False)


def test_with_a_mask_the_refinement_has_no_effect_and_says_so(pipe, caplog):
    """The user's mask is the region: refining the automatic one changes nothing, and the call says so."""
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    plain = quick_removal(pipe, mask_image=mask, blend_outside_attention_mask=True)
    with caplog.at_level("WARNING"):
        refined = quick_removal(pipe, mask_image=mask, blend_outside_attention_mask=True, region_refinement=2)
    torch.testing.assert_close(refined, plain, rtol=0, atol=0)
    assert "`region_refinement`" in caplog.text and "no effect" in caplog.text
