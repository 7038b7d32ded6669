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

import math
import re
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

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
        self.cross_attention: dict[str, torch.Tensor] = {}
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

    def clear(self) -> None:
        self.mode = PASSTHROUGH
        self.batch = CFG_BATCH
        self.self_attention_kv = {}
        self.cross_attention = {}
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


def _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb):
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


def _finish(attn, hidden_states, residual, spatial_shape, dtype):
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


class _RemovalProcessor:
    def __init__(self, state: RemovalAttentionState, name: str, original):
        self.state = state
        self.name = name
        self.original = original

    def _passthrough(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs):
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


class SelfAttentionKVSwapProcessor(_RemovalProcessor):
    """Eq. 10: ``Attention(Q_edit, K_rec, V_rec)`` in the edit pass; records ``K_rec, V_rec`` in the reconstruction pass."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        mode = self.state.mode
        if mode == PASSTHROUGH:
            return self._passthrough(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        query, key, value, mask, residual, spatial = _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if mode == RECONSTRUCT:
            self.state.self_attention_kv[self.name] = (key.detach(), value.detach())
        else:
            key, value = recorded_half(self.state.self_attention_kv.get(self.name), self.state.batch, key.shape[0])
            if key is None:
                raise RuntimeError(f"No reconstruction keys/values recorded for {self.name} before the edit pass.")
            bias = self.state.refocus_bias(query.shape[-2], query.shape[0])  # MagicEraser's refocusing, if on
            if bias is not None:
                mask = bias.to(query.dtype) if mask is None else mask + bias.to(mask.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return _finish(attn, out, residual, spatial, query.dtype)


def recorded_half(recorded, batch_layout: str, batch_size: int):
    """The reconstruction's recorded ``(K, V)`` rows that go with an edit pass of ``batch_size`` rows laid out as
    ``batch_layout``; ``(None, None)`` if nothing fits. A CFG-batched recording ``[uncond, cond]`` gives one half to
    a half-batch edit call; a single-evaluation recording (identical halves) serves any layout of its size."""
    if recorded is None:
        return None, None
    key, value = recorded
    if key.shape[0] == batch_size:
        return key, value
    if key.shape[0] == 2 * batch_size and batch_layout in (CONDITIONAL, UNCONDITIONAL):
        rows = slice(batch_size, None) if batch_layout == CONDITIONAL else slice(0, batch_size)
        return key[rows], value[rows]
    return None, None


class CrossAttentionCaptureProcessor(_RemovalProcessor):
    """Captures the conditional half's cross-attention probabilities, ``[B, pixels, tokens]`` averaged over heads.

    The softmax runs in float32 (it feeds the energy and its gradient) and its output is also what the layer uses,
    so the captured map is exactly the attention the UNet applied and the gradient flows through it.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if self.state.mode == PASSTHROUGH:
            return self._passthrough(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        query, key, value, mask, residual, spatial = _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
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
        return _finish(attn, torch.cat(parts), residual, spatial, query.dtype)


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


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: maps, energy, weights
# ----------------------------------------------------------------------------------------------------------------


def layer_resolution(num_pixels: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` of a UNet level with ``num_pixels`` positions: ``ceil(size / 2^k)`` for some level k."""
    height, width = latent_size
    for level in range(8):
        h, w = math.ceil(height / 2**level), math.ceil(width / 2**level)
        if h * w == num_pixels:
            return h, w
    raise ValueError(f"Cannot place an attention map of {num_pixels} pixels on a {height}x{width} latent.")


def aggregate_cross_attention(maps: dict[str, torch.Tensor], latent_size: tuple[int, int]) -> torch.Tensor:
    """All captured layers resized to the latent's height and width and averaged: ``[B, tokens, h, w]``."""
    if not maps:
        raise RuntimeError("No cross-attention was captured; is the UNet conditioned through cross-attention?")
    total = None
    for probs in maps.values():
        batch, pixels, tokens = probs.shape
        h, w = layer_resolution(pixels, latent_size)
        layer = probs.transpose(1, 2).reshape(batch, tokens, h, w).float()
        if (h, w) != tuple(latent_size):
            layer = F.interpolate(layer, size=tuple(latent_size), mode="bilinear", align_corners=False)
        total = layer if total is None else total + layer
    return total / len(maps)


def word_maps(aggregated: torch.Tensor, token_groups) -> list[list[torch.Tensor]]:
    """Per target object m and word n, the word's map ``A_{t,k}``: ``[B, h, w]``, summed over the word's tokens.

    ``token_groups[b][m][n]`` lists the token positions of word n of object m in sample b's prompt.
    """
    batch = aggregated.shape[0]
    num_objects = len(token_groups[0])
    result = []
    for m in range(num_objects):
        words = []
        for n in range(len(token_groups[0][m])):
            words.append(torch.stack([aggregated[b, token_groups[b][m][n]].sum(0) for b in range(batch)]))
        result.append(words)
    return result


def normalize_map(attention_map: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalisation per sample with the statistics detached, so that the energy's gradient lowers the raw
    attention of the target rather than reshaping the map to game the normalisation."""
    flat = attention_map.flatten(1)
    low = flat.min(dim=1).values.detach().view(-1, *([1] * (attention_map.ndim - 1)))
    high = flat.max(dim=1).values.detach().view(-1, *([1] * (attention_map.ndim - 1)))
    return (attention_map - low) / (high - low + eps)


def attention_energy(attention_map: torch.Tensor, erase_lambda: float, pixel_area: float = 1.0) -> torch.Tensor:
    """Eq. 7: ``g = || A - [min A + lambda (max A - min A)] A ||_1`` per sample.

    The bracket is a constant of the step (detached). The L1 norm runs over the image's pixels as in the paper; the map
    lives at latent resolution, so each latent pixel stands for ``pixel_area`` image pixels.
    """
    flat = attention_map.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    threshold = (low + erase_lambda * (high - low)).detach().unsqueeze(1)
    return (flat - threshold * flat).abs().sum(dim=1) * pixel_area


def quantile_energy(attention_map: torch.Tensor, quantile: float = 0.8) -> torch.Tensor:
    """The authors' research-code energy: on the pixels at or above the map's ``quantile``, the mean squared distance
    of A from its minimum."""
    flat = attention_map.flatten(1)
    threshold = torch.quantile(flat.detach(), quantile, dim=1, keepdim=True)
    selected = (flat >= threshold).float()
    low = flat.min(dim=1, keepdim=True).values.detach()
    return ((flat - low) ** 2 * selected).sum(dim=1) / selected.sum(dim=1).clamp_min(1.0)


def top_fraction_mask(attention_map: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """Binary mask of the top ``fraction`` of each sample's map (the research code's gradient gate).

    Pixels of value 0 are never in it: where ``protect_cutoff`` zeroed most of a map, its quantile is 0 and ``>=``
    alone would select the whole image.
    """
    flat = attention_map.flatten(1)
    threshold = torch.quantile(flat, 1.0 - fraction, dim=1, keepdim=True)
    return ((flat >= threshold) & (flat > 0)).float().view_as(attention_map)


def automatic_mask(attention_map: torch.Tensor, threshold: float | None = None, components: int | None = None) -> torch.Tensor:
    """The mask the user never drew, from a normalised ``(B, h, w)`` map in ``[0, 1]``, as 0/1 floats.

    ``threshold=None``: the research code's region, the map's top 20% united with its part >= 0.25. A number: the
    part of the map >= ``threshold``, grown by one pixel of the map's grid (one latent pixel), so that the soft rim
    of the object is inside. The top-20% region is a fixed share of the image, larger than a
    small object, so it reaches the neighbours; a threshold follows the object's own size.
    ``components``: keep only that many connected parts of it (:func:`strongest_components`); ``None``: all.
    """
    if threshold is None:
        region = (top_fraction_mask(attention_map, 0.2) + (attention_map >= 0.25).float()).clamp(0, 1)
    else:
        region = (attention_map >= threshold).float().unsqueeze(1)
        region = F.max_pool2d(region, kernel_size=3, stride=1, padding=1)[:, 0]
    return region if components is None else strongest_components(region, attention_map, components)


def connected_components(region: torch.Tensor) -> torch.Tensor:
    """Labels of the 8-connected parts of a 0/1 ``(B, h, w)`` mask: 0 outside it, inside it the largest flat index
    (+1) of the part's pixels. Pure torch (batched, on the mask's device): every pixel takes the largest label of its
    neighbours until nothing changes, at most ``h * w`` rounds."""
    batch, height, width = region.shape
    inside = region > 0
    start = torch.arange(1, height * width + 1, device=region.device, dtype=torch.float32).view(1, height, width)
    labels = torch.where(inside, start.expand(batch, -1, -1), torch.zeros((), device=region.device))
    for _ in range(height * width):
        grown = F.max_pool2d(labels.unsqueeze(1), kernel_size=3, stride=1, padding=1)[:, 0]
        grown = torch.where(inside, grown, torch.zeros((), device=region.device))
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def strongest_components(region: torch.Tensor, attention_map: torch.Tensor, count: int = 1) -> torch.Tensor:
    """The ``count`` connected parts of ``region`` that hold the most of ``attention_map``'s mass (ours).

    A target word also attends, more weakly, to objects that look like its target (the same colour, the same shape);
    such a second blob becomes a part of the automatic region apart from the target's, and removal there loses the
    neighbour. Keeping the parts with the most attention mass drops it; a sample with ``count`` parts or fewer is
    left as it is.
    """
    labels = connected_components(region)
    mass = torch.zeros(labels.shape[0], labels[0].numel() + 1, device=region.device)
    mass.scatter_add_(1, labels.flatten(1), attention_map.detach().float().flatten(1) * (labels.flatten(1) > 0))
    mass[:, 0] = -1.0  # label 0 is outside the region
    kept = mass.topk(min(count, mass.shape[1]), dim=1).indices
    keep = (labels.flatten(1).unsqueeze(-1) == kept.unsqueeze(1)).any(-1) & (labels.flatten(1) > 0)
    return keep.view_as(region).to(region.dtype)


def product_map(words: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 9's ``prod_n A_{t,k}`` over an object's (normalised) word maps."""
    result = words[0]
    for word in words[1:]:
        result = result * word
    return result


# ----------------------------------------------------------------------------------------------------------------
# Protecting the prompt's other objects (ours, not in the paper)
# ----------------------------------------------------------------------------------------------------------------

#: Function words that never name an object to protect (a fixed English list).
STOP_WORDS = frozenset(
    "a an the this that these those of on in at over under against with without and or but to from by for near "
    "beside behind above below next its it is are photo picture image".split()
)
#: Words that open the scene the objects lie on ("... on a sky background"): what follows is not protected.
SCENE_PREPOSITIONS = ("on", "in", "over", "against")
PHRASE_SEPARATORS = ("and", "with")


def default_protected_words(prompt: str, targets: Sequence[str]) -> list[str]:
    """The prompt's other objects: for each noun phrase that does not hold a target, its last content word.

    Works on words, not tokens, so it holds for any tokenizer. The prompt is cut at the first of
    ``SCENE_PREPOSITIONS`` (what follows is the background the objects lie on, the region removal fills from), the
    rest split into phrases at commas and ``PHRASE_SEPARATORS``. A phrase containing a whole target phrase is the
    target's and gives nothing; every other phrase gives its last word that is neither a function word
    (``STOP_WORDS``) nor a target word: "a red star and a yellow triangle on a sky background" with target "star"
    protects "triangle"; with target "red star" beside "a blue star", it protects "blue".
    """
    words = [w.strip(".;:!?\"'()").lower() for w in prompt.replace(",", " , ").split()]
    for n, word in enumerate(words):
        if n > 0 and word in SCENE_PREPOSITIONS:
            words = words[:n]
            break
    target_words = {w.lower() for t in targets for w in t.split()}
    phrases, current = [], []
    for word in words + [","]:
        if word in PHRASE_SEPARATORS or word in (",", ""):
            if current:
                phrases.append(current)
            current = []
        else:
            current.append(word)
    protected = []
    for phrase in phrases:
        text = " " + " ".join(phrase) + " "
        if any(" " + t.lower() + " " in text for t in targets):
            continue
        content = [w for w in phrase if w not in STOP_WORDS and w not in target_words]
        if content and content[-1] not in protected:
            protected.append(content[-1])
    return protected


def protected_dominance(aggregated: torch.Tensor, protect_groups) -> torch.Tensor | None:
    """Per pixel, the largest normalised map among the protected words, ``[B, h, w]`` (``None`` without any).

    ``protect_groups[b]`` lists, per protected word, its token positions in sample b's prompt (samples may protect
    different numbers of words; one without any gets zeros, which protect nothing).
    """
    if not any(protect_groups):
        return None
    per_sample = []
    for b, groups in enumerate(protect_groups):
        maps = [normalize_map(aggregated[b : b + 1, tokens].sum(1)) for tokens in groups]
        per_sample.append(torch.cat(maps).amax(0) if maps else torch.zeros_like(aggregated[b, 0]))
    return torch.stack(per_sample).detach()


def protection_factor(target_map: torch.Tensor, dominance: torch.Tensor | None, cutoff: float | None = None,
                      eps: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """How much of the target's normalised map to keep: ``min(1, A / D)``, with D the protected words' dominance.

    Where a protected object's map dominates the target's (D > A) the target's map is lowered in proportion, so the
    guidance weight, the energy's support and the automatic region all leave the neighbour; where the target
    dominates nothing changes. Detached: it reshapes where the guidance acts, not what its gradient lowers.

    ``cutoff`` c (ours, ``protect_cutoff``): where ``A < c * D`` the pixel is the protected object's and the factor
    is 0, so it leaves the target's region entirely. The soft factor alone keeps a dominated pixel at ``A^2 / D``,
    which the automatic region (its top 20%) still takes in when the target is small and its neighbour close.
    """
    if dominance is None:
        return torch.ones_like(target_map)
    target_map = target_map.detach()
    factor = (target_map / (dominance + eps)).clamp(max=1.0)
    if cutoff is not None:
        factor = factor * (target_map >= cutoff * dominance).to(factor.dtype)
    return factor


# ----------------------------------------------------------------------------------------------------------------
# Semantics-aware self-attention refocusing (MagicEraser, seed 001; its training-free part)
# ----------------------------------------------------------------------------------------------------------------


def refocusing_bias(region: torch.Tensor, protected: torch.Tensor | None, w_pos: float, w_neg: float,
                    size: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """MagicEraser's ``M = W_pos * Mask_pos - W_neg * Mask_neg`` for the queries of the region to fill.

    The soft maps stand in for MagicEraser's panoptic segmentation: ``region`` (the target's normalised map, ``[B, h,
    w]`` in [0, 1]) is the masked part m, ``protected`` (the protected words' dominance, or ``None``) plus the region
    itself the negative part n (the object and what looks like it), and what is neither the positive part p, the
    background. Query q gets ``region[q] * (w_pos * p[k] - w_neg * n[k])`` added to its logit toward key k, so a
    query outside the region is left alone. Returned as ``[B, 1, N, N]`` at ``size``, an additive ``attn_mask`` for
    SDPA (in logit units: SDPA adds it after the 1/sqrt(d) scaling).
    """
    def at_size(soft):
        soft = soft.unsqueeze(1).float()
        if tuple(soft.shape[-2:]) != tuple(size):
            soft = F.interpolate(soft, size=tuple(size), mode="bilinear", align_corners=False)
        return soft.flatten(1).clamp(0, 1)

    queries = at_size(region)
    other = at_size(protected) if protected is not None else torch.zeros_like(queries)
    negative = torch.maximum(queries, other)
    positive = (1 - queries) * (1 - other)
    keys = w_pos * positive - w_neg * negative
    return (queries[:, :, None] * keys[:, None, :]).unsqueeze(1)



__all__ = [
    "BATCH_LAYOUTS",
    "CFG_BATCH",
    "CONDITIONAL",
    "SINGLE",
    "UNCONDITIONAL",
    "CrossAttentionCaptureProcessor",
    "RemovalAttentionState",
    "SelfAttentionKVSwapProcessor",
    "aggregate_cross_attention",
    "attention_energy",
    "attention_layer_names",
    "automatic_mask",
    "build_processors",
    "connected_components",
    "default_protected_words",
    "protected_dominance",
    "protection_factor",
    "refocusing_bias",
    "installed_processors",
    "layer_resolution",
    "normalize_map",
    "product_map",
    "quantile_energy",
    "recorded_half",
    "select_layers",
    "strongest_components",
    "top_fraction_mask",
    "word_maps",
]
