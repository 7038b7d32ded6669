"""Attention processors for MagicRemover, and the pure functions that turn captured maps into guidance.

Two processors, installed only on the layers that need them and only for the duration of one call:

* :class:`SelfAttentionKVSwapProcessor` (eq. 10): in the reconstruction pass it records each self-attention layer's
  keys and values; in the edit pass it attends with the edit branch's own queries to those recorded keys and values.
* :class:`CrossAttentionCaptureProcessor`: computes the conditional half's cross-attention probabilities with an
  explicit float32 softmax (SDPA never exposes them) and keeps their head-mean so the target's map ``A_{t,k}`` can be
  built, with its autograd graph in the edit pass.

Both read one :class:`RemovalAttentionState`, created per call and dropped after it (Prompt-to-Prompt's
``AttentionStore`` made stateless per call). Outside the reconstruction and edit passes they defer to the processor
they replaced, so LoRA or sliced processors keep working. :func:`installed_processors` restores every
original processor in ``finally``, also when the call raises.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

# The map math lives in `attention_maps`, the word lookup in `tokens`; these names are re-exported here, where code
# written before the split imports them from.
from .attention_maps import (
    AFFINITY_MAX_POSITIONS,
    aggregate_cross_attention,
    attention_energy,
    automatic_mask,
    connected_components,
    layer_resolution,
    normalize_map,
    product_map,
    protected_dominance,
    protection_factor,
    quantile_energy,
    refocusing_bias,
    strongest_components,
    top_fraction_mask,
    word_maps,
)
from .tokens import default_protected_words

RECONSTRUCT = "reconstruct"
EDIT = "edit"
PASSTHROUGH = "passthrough"

CFG_BATCH, CONDITIONAL, UNCONDITIONAL, SINGLE = "cfg", "conditional", "unconditional", "single"
BATCH_LAYOUTS = (CFG_BATCH, CONDITIONAL, UNCONDITIONAL, SINGLE)


class RemovalAttentionState:
    """What the processors share during one removal call; nothing survives the call.

    ``mode`` is set by the pipeline before each UNet call: ``"reconstruct"`` (record self-attention K/V, capture
    cross-attention without a graph), ``"edit"`` (swap K/V, capture with a graph) or ``"passthrough"``.
    ``batch`` says what the UNet call's batch holds: ``"cfg"`` (classifier-free-guidance batched as
    ``[unconditional, conditional]``), ``"conditional"`` or ``"unconditional"`` (one half alone: the edit branch
    evaluates its unconditional half without an autograd graph), or ``"single"`` (both halves are the same
    prediction, as in negative-prompt inversion, so one evaluation stands for both).
    """

    def __init__(self):
        self.mode = PASSTHROUGH
        self.batch = CFG_BATCH
        self.self_attention_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recorded_batch = CFG_BATCH  # the batch layout of the reconstruction pass that recorded them
        self.cross_attention: dict[str, torch.Tensor] = {}
        # the region refinement's (ours): whether the reconstruction pass records its self-attention probabilities
        # (head-mean, conditional rows, layers of at most AFFINITY_MAX_POSITIONS positions), and those of this pass
        self.capture_affinity = False
        self.self_affinity: dict[str, torch.Tensor] = {}
        # MagicEraser's refocusing: the reconstruction's (target region, protected region) maps of this step, and
        # (w_pos, w_neg) in the steps where the edit pass refocuses (None elsewhere)
        self.refocus_maps: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.refocus_weights: tuple[float, float] | None = None

    def start_pass(self, mode: str, batch: str = None) -> None:
        if mode not in (RECONSTRUCT, EDIT, PASSTHROUGH):
            raise ValueError(f"Unknown attention pass {mode!r}.")
        batch = CFG_BATCH if batch is None else batch
        if batch not in BATCH_LAYOUTS:
            raise ValueError(f"Unknown batch layout {batch!r}.")
        self.mode = mode
        self.batch = batch
        self.cross_attention = {}
        if mode == RECONSTRUCT:
            self.self_attention_kv = {}
            self.recorded_batch = batch
            self.self_affinity = {}

    def set_refocusing(self, maps: tuple[torch.Tensor, torch.Tensor | None], weights: tuple[float, float] | None):
        """The one writer of the refocusing state, once per step: the reconstruction's ``(target region, protected
        dominance)`` maps of this step, and ``(w_pos, w_neg)`` where the step refocuses (``None`` elsewhere)."""
        self.refocus_maps, self.refocus_weights = maps, weights

    def clear(self) -> None:
        self.mode = PASSTHROUGH
        self.batch = CFG_BATCH
        self.self_attention_kv = {}
        self.cross_attention = {}
        self.self_affinity = {}
        self.refocus_maps = self.refocus_weights = None

    def refocus_bias(self, num_pixels: int, batch_size: int) -> torch.Tensor | None:
        """The edit pass's self-attention bias at a layer of ``num_pixels`` positions, rows repeated to the UNet
        call's ``batch_size`` (CFG halves share the sample's maps); ``None`` where this step does not refocus."""
        if self.mode != EDIT or self.refocus_weights is None or self.refocus_maps is None:
            return None
        region, protected = self.refocus_maps
        size = layer_resolution(num_pixels, tuple(region.shape[-2:]))
        bias = refocusing_bias(region, protected, *self.refocus_weights, size)
        return bias.repeat(batch_size // bias.shape[0], 1, 1, 1)


def project_attention_inputs(attn, hidden_states, encoder_hidden_states, attention_mask, temb):
    """The input half of diffusers' ``AttnProcessor2_0``: returns q, k, v as ``[batch, heads, tokens, head_dim]``."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    spatial_shape = None
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        spatial_shape = (channel, height, width)
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)

    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, attention_mask, residual, spatial_shape


def finish_attention_output(attn, hidden_states, residual, spatial_shape, dtype):
    """The output half of ``AttnProcessor2_0``: merge heads, project, restore the spatial layout."""
    batch_size, heads, tokens, head_dim = hidden_states.shape
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, tokens, heads * head_dim).to(dtype)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if spatial_shape is not None:
        channel, height, width = spatial_shape
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


class RemovalProcessor:
    """A processor of one removal call: it reads the call's ``state`` and defers to the layer's ``original``
    processor outside the reconstruction and edit passes (so LoRA or sliced processors keep working there)."""

    def __init__(self, state: RemovalAttentionState, name: str, original):
        self.state = state
        self.name = name
        self.original = original

    def passthrough(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs):
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


class SelfAttentionKVSwapProcessor(RemovalProcessor):
    """Eq. 10: ``Attention(Q_edit, K_rec, V_rec)`` in the edit pass; records ``K_rec, V_rec`` in the reconstruction pass."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        mode = self.state.mode
        if mode == PASSTHROUGH:
            return self.passthrough(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        query, key, value, mask, residual, spatial = project_attention_inputs(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        if mode == RECONSTRUCT:
            self.state.self_attention_kv[self.name] = (key.detach(), value.detach())
            if self.state.capture_affinity and query.shape[-2] <= AFFINITY_MAX_POSITIONS:
                self.state.self_affinity[self.name] = self_attention_affinity(query, key, attn.scale, self.state.batch)
        else:
            key, value = recorded_half(self.state.self_attention_kv.get(self.name), self.state.batch, key.shape[0],
                                       self.state.recorded_batch)  # fmt: skip
            if key is None:
                raise RuntimeError(f"No reconstruction keys/values recorded for {self.name} before the edit pass.")
            bias = self.state.refocus_bias(query.shape[-2], query.shape[0])  # MagicEraser's refocusing, if on
            if bias is not None:
                mask = bias.to(query.dtype) if mask is None else mask + bias.to(mask.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return finish_attention_output(attn, out, residual, spatial, query.dtype)


def self_attention_affinity(query: torch.Tensor, key: torch.Tensor, scale: float, batch_layout: str) -> torch.Tensor:
    """The self-attention probabilities of a reconstruction pass's conditional rows, averaged over heads, in float32:
    ``[B, N, N]`` (what the region refinement propagates the target's map through)."""
    rows = slice(query.shape[0] // 2, None) if batch_layout == CFG_BATCH else slice(None)
    scores = torch.matmul(query[rows].float(), key[rows].float().transpose(-1, -2)) * scale
    return scores.softmax(dim=-1).mean(dim=1).detach()


def recorded_half(recorded, batch_layout: str, batch_size: int, recorded_layout: str = CFG_BATCH):
    """The reconstruction's recorded ``(K, V)`` rows (recorded in a pass laid out as ``recorded_layout``) that go with
    an edit pass of ``batch_size`` rows laid out as ``batch_layout``; ``(None, None)`` if nothing fits. A CFG-batched
    recording ``[uncond, cond]`` gives one half to a half-batch edit call; a single-evaluation recording (identical
    halves) serves any layout of its size, and both halves of a CFG-batched edit call of twice its size (the edit
    branch's halves differ from the reconstruction's when it runs on a fill prompt)."""
    if recorded is None:
        return None, None
    key, value = recorded
    if key.shape[0] == batch_size:
        return key, value
    if recorded_layout == SINGLE and batch_layout == CFG_BATCH and 2 * key.shape[0] == batch_size:
        return torch.cat([key, key]), torch.cat([value, value])
    if key.shape[0] == 2 * batch_size and batch_layout in (CONDITIONAL, UNCONDITIONAL):
        rows = slice(batch_size, None) if batch_layout == CONDITIONAL else slice(0, batch_size)
        return key[rows], value[rows]
    return None, None


class CrossAttentionCaptureProcessor(RemovalProcessor):
    """Captures the conditional half's cross-attention probabilities, ``[B, pixels, tokens]`` averaged over heads.

    The softmax runs in float32 (it feeds the energy and its gradient) and its output is also what the layer uses,
    so the captured map is exactly the attention the UNet applied and the gradient flows through it.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if self.state.mode == PASSTHROUGH:
            return self.passthrough(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        query, key, value, mask, residual, spatial = project_attention_inputs(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        # Rows [0, half) are unconditional (no map needed), rows [half, end) conditional (captured)
        half = {CFG_BATCH: query.shape[0] // 2, CONDITIONAL: 0, SINGLE: 0}.get(self.state.batch, query.shape[0])
        parts = []
        if half > 0:
            parts.append(F.scaled_dot_product_attention(
                query[:half], key[:half], value[:half], attn_mask=None if mask is None else mask[:half]
            ))  # fmt: skip
        if half < query.shape[0]:
            scores = torch.matmul(query[half:].float(), key[half:].float().transpose(-1, -2)) * attn.scale
            if mask is not None:
                scores = scores + mask[half:].float()
            probs = scores.softmax(dim=-1)
            parts.append(torch.matmul(probs.to(value.dtype), value[half:]))
            self.state.cross_attention[self.name] = probs.mean(dim=1)
        return finish_attention_output(attn, torch.cat(parts), residual, spatial, query.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Installation
# ----------------------------------------------------------------------------------------------------------------


def attention_layer_names(unet) -> tuple[list[str], list[str]]:
    """Processor names (as in ``unet.attn_processors``) of the self- and the cross-attention layers."""
    self_names, cross_names = [], []
    for name, module in unet.named_modules():
        if hasattr(module, "set_processor") and hasattr(module, "is_cross_attention"):
            (cross_names if module.is_cross_attention else self_names).append(f"{name}.processor")
    return self_names, cross_names


PATTERN_PREFIX = "re:"


def _layer_path(name: str) -> str:
    return name[: -len(".processor")] if name.endswith(".processor") else name


def _on_component_boundaries(pattern: re.Pattern) -> re.Pattern:
    """``pattern`` required to start where a dot-separated component starts and to end where one ends."""
    return re.compile(rf"(?:^|(?<=\.))(?:{pattern.pattern})(?=\.|$)", pattern.flags)


def select_layers(names: Sequence[str], selection, argument: str) -> list[str]:
    """The names of ``names`` (processor names, as in ``unet.attn_processors``) that ``selection`` picks, in order.

    ``selection`` is ``"all"`` (or ``None``), or one item or a list of items, each of them

    * an exact name: a layer (``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``, with or without the
      ``.processor`` suffix) or a module that holds layers (``"up_blocks"``, ``"up_blocks.1"``, ``"mid_block"``),
      which picks every layer inside it. Names are compared component by component, so ``"up_blocks.1"`` never picks
      ``"up_blocks.10"``; a name that is neither raises ``ValueError`` naming it;
    * a pattern, only when asked for one: a compiled ``re.Pattern`` or a string prefixed ``"re:"``. It must match
      whole dot-separated components of a layer's path, from the start of one to the end of one, so
      ``"re:attentions\\.0"`` picks ``...attentions.0...`` but not ``...attentions.01...``, and ``"re:blocks\\.1"``
      does not match inside ``up_blocks.1``. A pattern that picks nothing raises ``ValueError``.

    Ours: diffusers' PAG pipelines match fragments as substrings (``"blocks.1"`` also picks ``"blocks.10"``).
    """
    if selection is None or (isinstance(selection, str) and selection == "all"):
        return list(names)
    items = [selection] if isinstance(selection, (str, re.Pattern)) else selection
    try:
        items = list(items)
    except TypeError:
        items = None
    if not items or not all(isinstance(item, (str, re.Pattern)) for item in items):
        raise TypeError(
            f"`{argument}` must be 'all', a layer or module name, a pattern (re.compile(...) or 're:...'), or a "
            f"non-empty list of them, got {selection!r}."
        )
    paths = {name: _layer_path(name) for name in names}
    modules = {".".join(path.split(".")[:k]) for path in paths.values() for k in range(1, path.count(".") + 2)}
    chosen, unknown, empty = set(), [], []
    for item in items:
        if isinstance(item, str) and not item.startswith(PATTERN_PREFIX):
            path = _layer_path(item)
            if path not in modules:
                unknown.append(item)
            chosen.update(n for n, p in paths.items() if p == path or p.startswith(path + "."))
            continue
        try:
            pattern = re.compile(item[len(PATTERN_PREFIX) :]) if isinstance(item, str) else item
        except re.error as error:
            raise ValueError(f"`{argument}` pattern {item!r} is not a valid regular expression: {error}.") from None
        anchored = _on_component_boundaries(pattern)
        picked = {n for n, p in paths.items() if anchored.search(p)}
        if not picked:
            empty.append(item if isinstance(item, str) else f"re.compile({pattern.pattern!r})")
        chosen |= picked
    examples = sorted({p.split(".")[0] for p in paths.values()}) + [_layer_path(names[0])] if names else []
    if unknown:
        raise ValueError(
            f"`{argument}`: {unknown} name no attention layer or module of the UNet. Give exact names such as "
            f"{examples}, or a pattern as 're:<regex>' or re.compile(...)."
        )
    if empty:
        raise ValueError(
            f"`{argument}`: the pattern(s) {empty} match none of the UNet's attention layers, e.g. {examples}."
        )
    return [name for name in names if name in chosen]


@contextmanager
def installed_processors(unet, processors: dict):
    """Sets ``processors`` (name -> processor) on exactly those layers and restores the originals on exit.

    Layers are addressed one by one (``set_attn_processor`` with a dict would need every layer and pops the dict),
    so every other layer keeps whatever processor it had.
    """
    originals = {}
    try:
        for name, processor in processors.items():
            module = unet.get_submodule(name[: -len(".processor")])
            originals[name] = module.processor
            module.set_processor(processor)
        yield
    finally:
        for name, processor in originals.items():
            unet.get_submodule(name[: -len(".processor")]).set_processor(processor)


def build_processors(unet, state: RemovalAttentionState, self_names: Iterable[str], cross_names: Iterable[str]) -> dict:
    current = unet.attn_processors
    processors = {name: SelfAttentionKVSwapProcessor(state, name, current[name]) for name in self_names}
    processors.update({name: CrossAttentionCaptureProcessor(state, name, current[name]) for name in cross_names})
    return processors


__all__ = [
    "BATCH_LAYOUTS",
    "CFG_BATCH",
    "CONDITIONAL",
    "EDIT",
    "PASSTHROUGH",
    "RECONSTRUCT",
    "SINGLE",
    "UNCONDITIONAL",
    "CrossAttentionCaptureProcessor",
    "aggregate_cross_attention",  # re-exported
    "attention_energy",  # re-exported
    "automatic_mask",  # re-exported
    "connected_components",  # re-exported
    "default_protected_words",  # re-exported
    "layer_resolution",  # re-exported
    "normalize_map",  # re-exported
    "product_map",  # re-exported
    "protected_dominance",  # re-exported
    "protection_factor",  # re-exported
    "quantile_energy",  # re-exported
    "refocusing_bias",  # re-exported
    "strongest_components",  # re-exported
    "top_fraction_mask",  # re-exported
    "word_maps",  # re-exported
    "RemovalAttentionState",
    "RemovalProcessor",
    "SelfAttentionKVSwapProcessor",
    "attention_layer_names",
    "build_processors",
    "finish_attention_output",
    "installed_processors",
    "project_attention_inputs",
    "recorded_half",
    "select_layers",
]
