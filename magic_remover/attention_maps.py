"""The pure functions that turn captured cross-attention into the method's maps, energies and biases.

From the captured probabilities to the target's map ``A_{t,k}`` (:func:`target_maps`, used by both branches), the
energy of eq. 7 and the research code's alternative, the automatic mask, the protection of the prompt's other objects
(ours) and MagicEraser's refocusing bias. No state, no model: every function takes tensors and returns tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


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



def protected_word_maps(normalized_words: list[torch.Tensor], dominance, cutoff: float | None = None) -> list[torch.Tensor]:
    """An object's normalised word maps lowered where a protected word dominates it, and zero where it dominates by
    more than ``1 / cutoff`` (ours, not in the paper; :func:`~attention_processors.protection_factor`)."""
    if dominance is None:
        return normalized_words
    factor = protection_factor(product_map([a.detach() for a in normalized_words]), dominance, cutoff)
    return [a * factor for a in normalized_words]




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


# ----------------------------------------------------------------------------------------------------------------
# Region refinement through the UNet's self-attention (ours, in the spirit of DiffSegmenter and iSeg)
# ----------------------------------------------------------------------------------------------------------------

#: The largest self-attention layer (in positions) whose affinity a refinement reads: 32x32. Finer layers would cost
#: a second N x N product each (SD 1.5 at 512x512 has 64x64 layers: 16M entries per head); the 32x32 ones already
#: tell which pixels belong together.
AFFINITY_MAX_POSITIONS = 32 * 32


def aggregate_self_attention(affinities: dict[str, torch.Tensor]) -> torch.Tensor:
    """The captured self-attention layers of the finest resolution among them, averaged: ``[B, N, N]``, each row a
    query's distribution over the keys (row-stochastic)."""
    if not affinities:
        raise RuntimeError("No self-attention was captured for the region refinement.")
    finest = max(a.shape[-1] for a in affinities.values())
    layers = [a.float() for a in affinities.values() if a.shape[-1] == finest]
    return sum(layers) / len(layers)


def propagate_map(soft_map: torch.Tensor, affinity: torch.Tensor, iterations: int) -> torch.Tensor:
    """A ``[B, h, w]`` map spread ``iterations`` times through a row-stochastic ``[B, N, N]`` affinity of a UNet level
    (``m <- A m``: each pixel takes the mean of the map over the pixels it attends to), at that level's resolution,
    then resized to ``(h, w)`` and normalised. Pixels that attend to the object (its whole body, its soft rim, and
    what the UNet groups with it) rise toward it; pixels that attend elsewhere fall."""
    batch, height, width = soft_map.shape
    level = layer_resolution(affinity.shape[-1], (height, width))
    spread = F.adaptive_avg_pool2d(soft_map.unsqueeze(1).float(), level).flatten(1).unsqueeze(-1)
    for _ in range(iterations):
        spread = torch.bmm(affinity.float(), spread)
    spread = spread.view(batch, 1, *level)
    if tuple(level) != (height, width):
        spread = F.interpolate(spread, size=(height, width), mode="bilinear", align_corners=False)
    return normalize_map(spread[:, 0])


def refined_region_map(soft_map: torch.Tensor, affinities: dict[str, torch.Tensor], iterations: int,
                       dominance: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """The target's soft map (``[B, h, w]`` in [0, 1], already protected) refined through the pass's self-attention
    (ours): its propagation (:func:`propagate_map`), which covers what the UNet groups with the object's core and
    drops what the core's map reached without belonging to it, weighed by ``1 - dominance`` so that it does not
    spread onto a protected object (``dominance``: the protected words' map, ``None`` without any).

    The propagation replaces the map rather than adding to it: on the embedded model's tuning scenes the larger of the
    two grew the region onto the background and the neighbours (``benchmarks/results/tuning_issue23_fill.md``)."""
    spread = propagate_map(soft_map, aggregate_self_attention(affinities), iterations)
    if dominance is not None:
        spread = spread * (1 - dominance.float().clamp(0, 1))
    return spread.clamp(0, 1).to(soft_map.dtype)


def blend(mask: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """``mask * inside + (1 - mask) * outside``: a soft mask's choice between two images or latents."""
    return mask * inside + (1 - mask) * outside


@dataclass
class TargetMaps:
    """The target's maps of one UNet pass, as both branches use them.

    ``objects[m][n]`` is word n of target object m: its normalised map, lowered where a protected word dominates it
    (with the graph of the pass, so the edit branch's energy can be differentiated through it). ``raw_attention`` is
    the mean raw attention of the targets per sample (the trace ``target_attention``), ``dominance`` the protected
    words' (``None`` without any).
    """

    objects: list[list[torch.Tensor]]
    raw_attention: torch.Tensor
    dominance: torch.Tensor | None

    def soft_mask(self) -> torch.Tensor:
        """Eq. 9's ``sum_m prod_n A_{t,k}`` in ``[0, 1]``, ``[B, h, w]``: the mask the user never drew."""
        return sum(product_map(words) for words in self.objects).clamp(0, 1)

    def weights(self) -> list[torch.Tensor]:
        """Per object, eq. 9's ``prod_n A_{t,k}`` without a graph: the weight of its energy's gradient."""
        return [product_map([a.detach() for a in words]) for words in self.objects]


def target_maps(captured: dict[str, torch.Tensor], latent_size: tuple[int, int], token_groups, protect_groups,
                protect_cutoff: float | None) -> TargetMaps:  # fmt: skip
    """From the captured cross-attention of a pass to the target's maps: all layers averaged at latent size, each
    target word's map (eq. 9 groups the words of a phrase), normalised, and protected (ours: :func:`protection_factor`,
    with ``protect_cutoff``)."""
    aggregated = aggregate_cross_attention(captured, latent_size)
    objects = word_maps(aggregated, token_groups)
    raw = sum(product_map(words) for words in objects)
    dominance = protected_dominance(aggregated, protect_groups)
    normalized = [protected_word_maps([normalize_map(w) for w in words], dominance, protect_cutoff)
                  for words in objects]  # fmt: skip
    return TargetMaps(normalized, raw.detach().flatten(1).mean(1), dominance)
