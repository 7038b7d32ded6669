"""The attention processors on a real diffusers ``Attention`` layer, against attention computed by hand.

Eq. 10: in the edit pass a self-attention layer attends with the edit branch's own queries to the keys and values the
reconstruction pass recorded, ``softmax(Q_edit K_rec^T / sqrt(d)) V_rec``, then through ``to_out``.
"""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from magic_remover.attention_processors import (
    CFG_BATCH,
    CONDITIONAL,
    EDIT,
    PASSTHROUGH,
    RECONSTRUCT,
    SINGLE,
    UNCONDITIONAL,
    CrossAttentionCaptureProcessor,
    RemovalAttentionState,
    SelfAttentionKVSwapProcessor,
)

DIM, HEADS, TOKENS = 16, 2, 6


def _layer(cross_attention_dim=None, seed=0) -> Attention:
    torch.manual_seed(seed)
    return Attention(query_dim=DIM, cross_attention_dim=cross_attention_dim, heads=HEADS, dim_head=DIM // HEADS,
                     bias=True).eval()  # fmt: skip


def _heads(x):
    return x.view(x.shape[0], -1, HEADS, DIM // HEADS).transpose(1, 2)


def _attend(attn, query_states, key_value_states):
    """``(to_out(softmax(Q K^T / sqrt(d)) V), softmax(...))`` with Q from ``query_states`` and K, V from
    ``key_value_states``."""
    q, k, v = _heads(attn.to_q(query_states)), _heads(attn.to_k(key_value_states)), _heads(attn.to_v(key_value_states))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)).softmax(-1)
    merged = (probs @ v).transpose(1, 2).reshape(query_states.shape[0], -1, DIM)
    return attn.to_out[1](attn.to_out[0](merged)), probs


def _by_hand(attn, query_states, key_value_states):
    return _attend(attn, query_states, key_value_states)[0]


def _swap_layer():
    attn, state = _layer(), RemovalAttentionState()
    attn.set_processor(SelfAttentionKVSwapProcessor(state, "layer.processor", AttnProcessor2_0()))
    return attn, state


@torch.no_grad()
def test_edit_pass_attends_to_the_reconstructions_keys_and_values():
    attn, state = _swap_layer()
    generator = torch.Generator().manual_seed(1)
    reconstruction, edit = torch.randn(2, 2, TOKENS, DIM, generator=generator).unbind(0)  # [uncond, cond] rows

    state.start_pass(RECONSTRUCT)
    recorded = attn(reconstruction)
    torch.testing.assert_close(recorded, _by_hand(attn, reconstruction, reconstruction), rtol=1e-5, atol=1e-6)

    state.start_pass(EDIT)
    swapped = attn(edit)
    torch.testing.assert_close(swapped, _by_hand(attn, edit, reconstruction), rtol=1e-5, atol=1e-6)  # eq. 10
    own = _by_hand(attn, edit, edit)
    assert (swapped - own).abs().max() > 1e-2  # the layer's own K/V would give something else


@torch.no_grad()
@pytest.mark.parametrize("layout, rows", [(CONDITIONAL, slice(1, 2)), (UNCONDITIONAL, slice(0, 1))])
def test_a_half_batch_edit_pass_takes_the_matching_half_of_the_recording(layout, rows):
    """The split CFG evaluates the edit branch's halves one at a time: each must attend to its own half's K/V."""
    attn, state = _swap_layer()
    generator = torch.Generator().manual_seed(2)
    reconstruction = torch.randn(2, TOKENS, DIM, generator=generator)
    edit = torch.randn(1, TOKENS, DIM, generator=generator)
    state.start_pass(RECONSTRUCT)
    attn(reconstruction)
    state.start_pass(EDIT, layout)
    torch.testing.assert_close(attn(edit), _by_hand(attn, edit, reconstruction[rows]), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_a_single_evaluation_recording_serves_a_single_evaluation_edit_pass():
    attn, state = _swap_layer()
    generator = torch.Generator().manual_seed(3)
    reconstruction, edit = torch.randn(2, 1, TOKENS, DIM, generator=generator).unbind(0)
    state.start_pass(RECONSTRUCT, SINGLE)
    attn(reconstruction)
    state.start_pass(EDIT, SINGLE)
    torch.testing.assert_close(attn(edit), _by_hand(attn, edit, reconstruction), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_edit_pass_without_a_recording_of_its_size_is_an_error_and_passthrough_is_the_original():
    attn, state = _swap_layer()
    x = torch.randn(2, TOKENS, DIM, generator=torch.Generator().manual_seed(4))
    state.start_pass(EDIT)
    with pytest.raises(RuntimeError, match="No reconstruction keys/values"):
        attn(x)
    state.start_pass(RECONSTRUCT)
    attn(x[:1])
    state.start_pass(EDIT, CFG_BATCH)  # a CFG batch of 2 cannot use one CFG-batched recording's single row
    with pytest.raises(RuntimeError, match="No reconstruction keys/values"):
        attn(x)
    state.start_pass(RECONSTRUCT, SINGLE)  # one evaluation standing for both halves (negative-prompt inversion)
    attn(x[:1])
    state.start_pass(EDIT, CFG_BATCH)  # an edit branch whose halves differ (a fill prompt): both attend to that row
    both = attn(torch.cat([x[:1], x[1:]]))
    torch.testing.assert_close(both[1:], _by_hand(attn, x[1:], x[:1]), rtol=1e-5, atol=1e-6)
    state.start_pass(PASSTHROUGH)
    torch.testing.assert_close(attn(x), _by_hand(attn, x, x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_cross_attention_capture_applies_and_records_the_conditional_halfs_probabilities():
    attn, state = _layer(cross_attention_dim=12), RemovalAttentionState()
    attn.set_processor(CrossAttentionCaptureProcessor(state, "cross.processor", AttnProcessor2_0()))
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, TOKENS, DIM, generator=generator)
    text = torch.randn(2, 4, 12, generator=generator)
    state.start_pass(RECONSTRUCT)
    out = attn(hidden, encoder_hidden_states=text)
    expected = torch.cat([_attend(attn, hidden[i : i + 1], text[i : i + 1])[0] for i in range(2)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    _, probs = _attend(attn, hidden[1:], text[1:])
    torch.testing.assert_close(state.cross_attention["cross.processor"], probs.mean(1), rtol=1e-5, atol=1e-6)

