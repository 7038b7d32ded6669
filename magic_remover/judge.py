"""The removal judge: a removal succeeds when the target is gone, nothing is in its place, its shadow is gone and
every neighbour is kept, each checked against the synthetic world's ground truth (the scene rendered without the
target). Each failure is its own class; a result can fail several.

The pixel tests compare the result R with the truth T and the input I, per pixel, by the largest channel difference
(RGB in [0, 1]):

* the target's *footprint* is where it changed the image: its object and shadow pixels with |I - T| > ``visible``;
* a footprint pixel is *restored* when |R - T| <= ``off``; an unrestored one is *left* when R is the input or a mix
  of input and truth that is at least half input (within ``off``): the target or its shadow still there, perhaps
  faded. Otherwise it is *new*: a colour that is neither, however near the target's it is;
* **target left**: more than ``left_fraction`` (half) of the object's footprint is left, or the detector still
  finds the target's shape and colour;
* **shadow left**: more than ``shadow_fraction`` (a quarter) of the shadow's footprint (off the object) is left;
* **replaced**: inside the target's region (object and shadow, dilated by ``dilation``), the pixels off the truth
  by more than ``off``, less those of a target or shadow judged left, form a connected blob of at least
  ``blob_area`` pixels (a recoloured target, a new object, a smear, a sliver of the target too small to count as
  left), or the detector finds an object lying mostly in that region, the truth lacks, and is not the left target;
  When the target is gone, a faint trace counts too: the difference to the truth smoothed over a pixel or so (noise
  averages out, a ghost, a pale patch or broken stripes do not) above ``faint`` over ``faint_area`` connected pixels
  around the target's place, and a blob of ``blob_area`` pixels off by ``off`` anywhere else (a new object painted
  beside the hole);
* **neighbour damaged**: on and around some other object (its visible pixels in the truth, the part the target hid
  included, and a band of 3 px for a grown or blurred outline), pixels off the truth by more than ``neighbour_off``
  amount to more than ``neighbour_fraction`` of its visible area, or its mean colour moved by more than
  ``neighbour_shift``. Pixels that belong to a neighbour in the truth are judged there, not as a replacement.

The pixel tolerances ``off`` and ``blob_area`` were calibrated on tuning seeds (``benchmarks/results/
judge_calibration.md``). The faint-trace and neighbour tests were added, and their tolerances chosen, against the eye:
135 strips labelled blind (rounds 1-3 of ``benchmarks/results/judge_labels.json``); a later round, labelled after, is
their validation (``benchmarks/results/judge_validation.md``). No removal setting is tuned on those strips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

#: The failure classes, in the order the tables show them
FAILURES = ("target_left", "replaced", "shadow_left", "neighbour_damaged")


@dataclass(frozen=True)
class Tolerances:
    visible: float = 0.06  # |input - truth| above this: the pixel shows the target or its shadow
    off: float = 0.15  # |result - truth| above this: the pixel is not the true background
    blob_area: int = 12  # connected pixels off the truth, in the target's region, that make a replacement
    left_fraction: float = 0.5  # of the object's footprint still showing it: most of it
    shadow_fraction: float = 0.25  # of the shadow's footprint still dark: a faint outline is a shadow left
    neighbour_off: float = 0.10  # |result - truth| above this, on or around a neighbour: the neighbour changed
    neighbour_fraction: float = 0.20  # such pixels, against the neighbour's own visible area: reshaped or blurred
    neighbour_shift: float = 0.04  # the neighbour's mean colour moved by more than this (a channel): recoloured
    dilation: int = 2  # pixels the target's region grows by, for what a fill may paint around its edge
    faint: float = 0.06  # the difference to the truth, smoothed (sigma 1 px), above this: a faint trace the eye sees
    faint_area: int = 20  # connected pixels of a faint trace, around the target's place, that make a replacement


def _array(image) -> np.ndarray:
    """HxWx3 float in [0, 1] from a PIL image or a uint8 array."""
    return np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64) / 255.0


def _largest_blob(mask: np.ndarray) -> int:
    labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
    return int(np.bincount(labels.ravel())[1:].max()) if count else 0


def _mix_of(R: np.ndarray, I: np.ndarray, T: np.ndarray, off: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the result is, within ``off``, a mix of the input and the truth: ``(on the mix, the truth's share)``.
    A target half erased or blurred into the background, or a shadow left faint, is such a mix; a new colour is not,
    however near the target's it is."""
    step = T - I
    share = np.clip(((R - I) * step).sum(axis=2) / np.maximum((step**2).sum(axis=2), 1e-12), 0.0, 1.0)
    return np.abs(R - (I + share[..., None] * step)).max(axis=2) <= off, share


def _visible_in_truth(scene, index: int, neighbour: int) -> np.ndarray:
    """Pixels where object ``neighbour`` is the topmost object once the target is gone, its soft edge left out."""
    objects = scene.objects
    shown = ndi.binary_erosion(objects[neighbour].alpha >= 0.5 * objects[neighbour].opacity)
    for later in range(neighbour + 1, len(objects)):
        if later != index:
            shown &= ~objects[later].mask
    return shown


def _smoothed_difference(R: np.ndarray, T: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """|result - truth| averaged over a pixel or so (largest channel): pixel noise cancels, a coherent trace stays."""
    return np.abs(np.stack([ndi.gaussian_filter(R[..., c] - T[..., c], sigma) for c in range(3)], axis=-1)).max(axis=2)


def _neighbour_damage(R, T, scene, index: int, region: np.ndarray, tol: "Tolerances"):
    """The worst neighbour's off fraction and colour shift, the neighbours' pixels in the truth, and the zones judged
    for them (those pixels and a band around them, less the target's region where the truth shows no neighbour)."""
    damage = shift = 0.0
    neighbours = np.zeros_like(region)
    zones = np.zeros_like(region)
    off = np.abs(R - T).max(axis=2) > tol.neighbour_off
    for n in range(len(scene.objects)):
        if n == index:
            continue
        shown = _visible_in_truth(scene, index, n)
        if shown.sum() < 10:  # a sliver: nothing to judge it by
            continue
        own = ndi.binary_dilation(shown, iterations=1)  # its anti-aliased edge back
        zone = ndi.binary_dilation(own, iterations=3) & ~(region & ~own)
        neighbours |= own
        zones |= zone
        damage = max(damage, float(off[zone].sum() / shown.sum()))
        shift = max(shift, float(np.abs((R - T)[shown].mean(axis=0)).max()))
    return damage, shift, neighbours, zones


def judge(result, scene, index: int, detections=(), tolerances: Tolerances = Tolerances()) -> dict:
    """The verdict on ``result`` as a removal of ``scene.objects[index]``.

    ``detections``: the detector's findings on ``result``, as ``(shape, color, mask)`` (mask: bool HxW), e.g. from
    ``magic_remover.detector.detect``. Returns ``success`` and one bool per class of :data:`FAILURES`, with the measures
    behind them.
    """
    tol = tolerances
    target = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    R, I, T = _array(result), _array(scene.image), _array(target.without)
    if R.shape != T.shape:
        raise ValueError(f"result must be {T.shape[1]}x{T.shape[0]} like the scene, got {R.shape[1]}x{R.shape[0]}")
    off = np.abs(R - T).max(axis=2) > tol.off
    footprint = np.abs(I - T).max(axis=2) > tol.visible
    mixed, share = _mix_of(R, I, T, tol.off)
    left = footprint & off & mixed & (share < 0.5)  # still at least half the input
    # the shadow also falls under the object: there a left shadow is the truth darkened, which the input never shows
    shadow_mixed, shadow_share = _mix_of(R, T * (1.0 - target.shadow[..., None]), T, tol.off)
    shadow_kept = target.shadow_mask & off & shadow_mixed & (shadow_share < 0.5)

    object_print = footprint & target.mask
    shadow_print = footprint & target.shadow_mask & ~target.mask
    left_object = left[object_print].mean() if object_print.any() else 0.0
    left_shadow = (left | shadow_kept)[shadow_print].mean() if shadow_print.any() else 0.0
    target_found = any((shape, color) == (target.shape, target.color) for shape, color, _ in detections)
    target_left = bool(left_object > tol.left_fraction or target_found)
    shadow_left = bool(left_shadow > tol.shadow_fraction and left_shadow * shadow_print.sum() >= 5)

    # What is off the truth in the region and not explained by a target or shadow judged left is something in its
    # place: a new object, a recoloured target, a smear, or a sliver of the target too small to count as left.
    # (a target judged left explains its faded or blurred edge too: any mix of it, or of its colour, and the truth)
    explained = np.zeros_like(left)
    if target_left:
        explained |= (footprint & mixed) | _mix_of(R, np.broadcast_to(target.rgb, T.shape), T, tol.off)[0]
    if shadow_left:
        explained |= target.shadow_mask & (shadow_mixed | (footprint & mixed))
    region = ndi.binary_dilation(target.mask | target.shadow_mask, iterations=tol.dilation)
    damage, shift, neighbours, zones = _neighbour_damage(R, T, scene, index, region, tol)
    blob = _largest_blob(off & region & ~explained & ~neighbours)
    faint_blob = elsewhere = 0
    if not target_left:  # a left target is judged as such; beyond it, what the eye sees of a fill that is not the truth
        around = ndi.binary_dilation(region, iterations=3)
        # smoothed, so that noise cancels; the pixel itself off by half as much, so that a small strong blob, spread
        # by the smoothing, is judged at its own size
        trace = (_smoothed_difference(R, T) > tol.faint) & (np.abs(R - T).max(axis=2) > tol.faint / 2)
        faint_blob = _largest_blob(trace & around & ~zones & ~explained)
        elsewhere = _largest_blob(off & ~around & ~zones)
    pairs_in_truth = {(o.shape, o.color) for o in others}
    # an object found in the region that the truth lacks, unless it is the left target seen as another shape
    foreign = [(shape, color) for shape, color, mask in detections
               if (shape, color) not in pairs_in_truth and (shape, color) != (target.shape, target.color)
               and mask.sum() and (mask & region).sum() > 0.5 * mask.sum()
               and (mask & explained).sum() <= 0.5 * mask.sum()]  # fmt: skip

    verdict = {
        "target_left": target_left,
        "replaced": bool(blob >= tol.blob_area or foreign or faint_blob >= tol.faint_area or elsewhere >= tol.blob_area),
        "shadow_left": shadow_left,
        "neighbour_damaged": bool(damage > tol.neighbour_fraction or shift > tol.neighbour_shift),
    }
    return {
        "success": not any(verdict.values()),
        **verdict,
        "left_object_fraction": float(left_object),
        "left_shadow_fraction": float(left_shadow),
        "largest_blob": blob,
        "faint_blob": faint_blob,
        "blob_elsewhere": elsewhere,
        "foreign_detections": foreign,
        "neighbour_off_fraction": damage,
        "neighbour_colour_shift": shift,
    }


def tolerances_text(tolerances: Tolerances = Tolerances()) -> str:
    return ", ".join(f"{k} {v}" for k, v in asdict(tolerances).items())


def strip(scene, index: int, result, scale: int = 4) -> Image.Image:
    """Input | result | truth side by side, enlarged by ``scale`` (nearest) so that a remnant can be seen."""
    tiles = [scene.image, Image.fromarray(np.asarray(result, np.uint8)) if not hasattr(result, "convert") else result,
             scene.objects[index].without]  # fmt: skip
    size = scene.size * scale
    canvas = Image.new("RGB", (3 * size + 2 * scale, size), "white")
    for n, tile in enumerate(tiles):
        canvas.paste(tile.convert("RGB").resize((size, size), Image.NEAREST), (n * (size + scale), 0))
    return canvas
