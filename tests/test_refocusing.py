"""MagicEraser's semantics-aware self-attention refocusing: the bias and where it acts."""

import pytest
import torch
from conftest import PROMPT
from tiny_components import make_test_image

from magic_remover.attention_processors import EDIT, RECONSTRUCT, RemovalAttentionState, refocusing_bias
from magic_remover.inversion import DDIMSchedule


def test_bias_pulls_region_queries_to_the_background_and_away_from_objects():
    region = torch.zeros(1, 4, 4)
    region[0, 0, 0] = 1.0  # the target
    protected = torch.zeros(1, 4, 4)
    protected[0, 3, 3] = 1.0  # a neighbour
    bias = refocusing_bias(region, protected, w_pos=2.0, w_neg=5.0, size=(4, 4))[0, 0]
    target, neighbour, background = 0, 15, 5
    assert bias[target, background] == pytest.approx(2.0)
    assert bias[target, target] == pytest.approx(-5.0)
    assert bias[target, neighbour] == pytest.approx(-5.0)
    assert torch.count_nonzero(bias[1:]) == 0  # queries outside the region are left alone


def test_bias_only_in_the_edit_pass_and_refocused_steps():
    state = RemovalAttentionState()
    state.refocus_maps = (torch.rand(1, 4, 4), None)
    state.start_pass(EDIT)
    assert state.refocus_bias(16, 2) is None  # weights unset: this step does not refocus
    state.refocus_weights = (1.0, 1.0)
    assert state.refocus_bias(16, 2).shape == (2, 1, 16, 16)  # both CFG halves
    assert state.refocus_bias(4, 1).shape == (1, 1, 4, 4)  # a coarser layer
    state.start_pass(RECONSTRUCT)
    assert state.refocus_bias(16, 2) is None


def test_clear_leaves_no_refocusing_for_a_later_edit_pass():
    """``clear`` (the call's ``finally``) drops the refocusing maps and weights: a processor that outlives the call,
    or a state reused, never refocuses from a finished call's maps."""
    state = RemovalAttentionState()
    state.refocus_maps, state.refocus_weights = (torch.rand(1, 4, 4), None), (1.0, 1.0)
    state.clear()
    state.start_pass(EDIT)
    assert state.refocus_maps is None and state.refocus_weights is None
    assert state.refocus_bias(16, 2) is None


def _run(pipe, **kwargs):
    return pipe(image=make_test_image(), prompt=PROMPT, target="ball", inversion_method="ddim", num_inference_steps=4,
                guidance_timesteps=(100, 1000), output_type="latent", **kwargs)  # fmt: skip


def test_reconstruction_is_bit_identical_with_refocusing_on_or_off(pipe):
    off = _run(pipe)
    on = _run(pipe, refocus_w_pos=5.0, refocus_w_neg=5.0, refocus_timesteps=(0, 1000))
    assert torch.equal(on.reconstructions, off.reconstructions)
    assert not torch.equal(on.images, off.images)  # and it does act on the edit branch


def test_refocusing_acts_only_in_refocus_timesteps(pipe):
    timesteps = [int(t) for t in DDIMSchedule.from_scheduler_config(pipe.scheduler.config, 4).timesteps]
    weights = dict(refocus_w_pos=5.0, refocus_w_neg=5.0)
    off = _run(pipe)
    no_step_inside = _run(pipe, refocus_timesteps=(timesteps[1] + 1, timesteps[0] - 1), **weights)
    assert torch.equal(no_step_inside.images, off.images)  # weights set, but no step in the range: no refocusing
    first_step = _run(pipe, refocus_timesteps=(timesteps[1], 1000), **weights)  # the open interval holds step 0 only
    every_step = _run(pipe, refocus_timesteps=(0, 1000), **weights)
    assert not torch.equal(first_step.images, off.images)
    assert not torch.equal(first_step.images, every_step.images)


def test_refocusing_weights_are_checked(pipe):
    with pytest.raises(ValueError, match="`refocus_w_neg`"):
        _run(pipe, refocus_w_neg=-1.0)
    with pytest.raises(ValueError, match="`refocus_timesteps`"):
        _run(pipe, refocus_timesteps=(900, 100))
