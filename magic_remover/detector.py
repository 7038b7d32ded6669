"""A classical shape-and-colour detector for the synthetic world of :mod:`magic_remover.scenes`.

It is the "judge" of the quality benchmarks: it says which ``(shape, color)`` objects an image shows, with no
learning involved, so that generated images and removal results can be scored against their captions.

Method (numpy/scipy only):

1. **Colour classification.** Every pixel is compared with the eight palette colours of ``scenes.COLORS``, allowing
   a brightness factor (objects darkened by another object's shadow still match): ``d_c = |p - k c|`` with ``k``
   clipped to a colour-dependent range (white must stay bright and neutral). Pixels within ``tau`` are *opaque*
   candidates.
   Candidates that a see-through mixture over the background (step 2) explains clearly better are not opaque
   (purple at half opacity over a light floor looks like a dark pink).
2. **Semi-transparent objects.** *Patterned backgrounds* (stripes, checker cells: two colours in the generator's
   periodic geometry) are fitted to the image itself, so the background is known under every object; a deviating
   region is explained as ``p = (1 - a) b + a c`` with one ``(c, a)`` for the whole region (an object has one
   opacity), and background pixels that themselves look like a palette colour are ignored when an object of that
   colour is fitted (a white star across white stripes; its parts are bridged into one component). *Smooth
   backgrounds* (sky, grass, plain): an estimate is built from the non-candidate pixels (normalised Gaussian
   convolution, refined by excluding the hole-filled deviating regions); each deviating region is unmixed against
   the colours of a ring around it with ``a`` in ``[0.2, 0.92]``; pixels explained by a mixture clearly better than
   by the background alone get that colour. Soft-edged regions (clouds) are rejected by an edge-softness test.
3. **Connected components** per colour (opening, closing, hole filling). A colour that runs along the image border
   for long is background here (white stripes or light cells that no pattern fit explained): its border-touching
   components are dropped and the others kept only if clearly brighter.
4. **Shape classification by template fitting.** For each component and each of the five shapes the outline (the
   generator's geometry) is fitted by an angle search plus coordinate descent over centre, size and angle, maximising
   the IoU with the component, also against blurred-and-thresholded outlines (images decoded by a VAE round corners
   and eat star tips). Pixels of *other* colours are ignored in the IoU (occluders); a component next to one also
   starts from centres pushed outward with a larger outline (its visible part underestimates both). Pixels where
   a see-through object covers an opaque one belong to the see-through object. The best shape wins if its IoU
   is >= ``min_score``. Components that fit badly are tried as two touching same-coloured objects (the largest
   outline inside the component, plus the largest left-over part).

Validation: ``benchmarks/embedded_model.py`` (section 0) and ``tests/test_detector.py``.

Public API::

    detect(image) -> list[Detection]           # Detection(shape, color, score, area, mask, transparent)
    detect_pairs(image) -> set[(shape, color)]
    finds(image, shape, color) -> bool
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from .scenes import COLORS, SHAPES, points_in_polygon, polygon_vertices, visible_fraction
from .scenes import soft_band  # the generator's anti-aliased periodic band (~1 px soft edges)

__all__ = ["Detection", "detect", "detect_pairs", "finds", "COLOR_NAMES", "SHAPES", "to_float_image"]

COLOR_NAMES: List[str] = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], np.float32)  # (8, 3)
# brightness factor range per colour (white may not be darkened much: grey backgrounds would match)
_KMIN = np.array([0.60 if c != "white" else 0.95 for c in COLOR_NAMES], np.float32)
_KMAX = np.array([1.08 for c in COLOR_NAMES], np.float32)
# colour tolerance, relative to the detector's `tau` (white must be neutral: bright backgrounds are near-white)
_TAU_SCALE = np.array([1.0 if c != "white" else 0.65 for c in COLOR_NAMES], np.float32)

# area of the generator's shape of "radius" r, divided by r^2
_AREA_K = {"circle": np.pi, "square": 2.0, "diamond": 1.44, "triangle": 1.299, "star": 1.3225}
# inscribed-circle radius / outline radius
_INRADIUS = {"circle": 1.0, "square": 0.707, "diamond": 0.584, "triangle": 0.5, "star": 0.38}
# angle search range per shape (symmetry period, or the generator's range for the non-symmetric diamond)
_ANGLE_RANGE = {
    "circle": (0.0, 0.0),
    "square": (-np.pi / 4, np.pi / 4),
    "triangle": (-np.pi / 3, np.pi / 3),
    "star": (-np.pi / 5, np.pi / 5),
    "diamond": (-0.5, 0.5),
}


@dataclass
class Detection:
    shape: str
    color: str
    score: float  # IoU of the fitted outline with the component (occluded pixels ignored)
    area: int
    center: Tuple[float, float]  # (x, y)
    transparent: bool = False
    runner_up: Optional[Tuple[str, float]] = None
    mask: np.ndarray = field(default=None, repr=False)

    @property
    def pair(self) -> Tuple[str, str]:
        return (self.shape, self.color)


# --------------------------------------------------------------------------- helpers


def to_float_image(image) -> np.ndarray:
    """PIL / uint8 HxWx3 / float HxWx3 in [0, 1] / torch CHW in [-1, 1] -> float32 HxWx3 in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32) / 255.0
    if hasattr(image, "detach"):  # torch tensor
        t = image.detach().cpu().float()
        if t.ndim == 4:
            t = t[0]
        if t.shape[0] in (1, 3) and t.ndim == 3:
            t = t.permute(1, 2, 0)
        a = t.numpy()
        if a.min() < -1e-3:
            a = (a + 1) / 2
        return np.clip(a, 0, 1).astype(np.float32)
    a = np.asarray(image)
    if a.ndim == 4:
        a = a[0]
    if a.dtype == np.uint8:
        return a[..., :3].astype(np.float32) / 255.0
    a = a[..., :3].astype(np.float32)
    if a.max() > 1.5:  # float image in [0, 255]
        a = a / 255.0
    return np.clip(a, 0, 1)


def _opaque_distance(img: np.ndarray) -> np.ndarray:
    """(H, W, 8) distance of every pixel to every palette colour, allowing a brightness factor."""
    p = img[..., None, :]  # H W 1 3
    c = _PALETTE[None, None]  # 1 1 8 3
    k = (p * c).sum(-1) / (c * c).sum(-1)
    k = np.clip(k, _KMIN, _KMAX)[..., None]
    return np.sqrt(((p - k * c) ** 2).sum(-1))


def _gauss_fill(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: smooth `values` (H, W, C) using only pixels with weight > 0."""
    w = ndi.gaussian_filter(weight.astype(np.float32), sigma, mode="nearest")
    out = np.empty_like(values)
    for ch in range(values.shape[-1]):
        out[..., ch] = ndi.gaussian_filter(values[..., ch] * weight, sigma, mode="nearest")
    return out / np.maximum(w, 1e-6)[..., None], w


def _estimate_background(img: np.ndarray, exclude: np.ndarray, sigmas=(1.5, 3.0, 6.0, 12.0)) -> np.ndarray:
    """Smooth background estimate from the pixels not in `exclude`, at several scales (fine where possible)."""
    weight = (~exclude).astype(np.float32)
    est = None
    for sigma in sigmas:
        b, w = _gauss_fill(img, weight, sigma)
        if est is None:
            est = b
            conf = w
        else:
            take = (conf < 0.25)[..., None]
            est = np.where(take, b, est)
            conf = np.maximum(conf, w)
    return est


# --------------------------------------------------------------------------- shape outlines


def _render(shape: str, cx: float, cy: float, r: float, angle: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Bool mask of pixel centres inside the outline (xx, yy: pixel-centre coordinates of the crop)."""
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    return points_in_polygon(xx, yy, polygon_vertices(shape, r, angle) + np.array([cx, cy]))


def _fit_shape(shape: str, comp: np.ndarray, valid: np.ndarray, xx, yy, cx0, cy0, area, inside_r=None, blur=True):
    """Fit one shape's outline to `comp` (bool crop); returns (iou, params).

    With `inside_r` (an inscribed radius), fit instead the largest outline that stays inside `comp`
    (score = covered pixels minus 4x pixels outside, over the component's area)."""
    if inside_r is None:
        r0 = np.sqrt(max(area, 1.0) / _AREA_K[shape])
    else:
        r0 = inside_r / _INRADIUS[shape]
    n_comp = max(np.count_nonzero(comp), 1)

    def iou(cx, cy, r, ang, sigma=0.0):
        t = _render(shape, cx, cy, r, ang, xx, yy)
        if sigma > 0:  # a blurred image (e.g. decoded by a VAE) rounds corners and eats thin tips
            t = ndi.gaussian_filter(t.astype(np.float32), sigma, mode="constant") > 0.5
        inter = np.count_nonzero(t & comp)
        if inside_r is not None:
            return (inter - 4 * np.count_nonzero(t & ~comp & valid)) / n_comp
        union = np.count_nonzero((t | comp) & valid)
        return inter / max(union, 1)

    lo, hi = _ANGLE_RANGE[shape]
    if hi > lo:
        angles = np.linspace(lo, hi, max(3, int(round((hi - lo) / 0.09))), endpoint=False)
    else:
        angles = np.array([0.0])
    cands = []
    for ang in angles:
        for rs in (0.95, 1.08):
            cands.append((iou(cx0, cy0, r0 * rs, ang), cx0, cy0, r0 * rs, ang))
    if inside_r is None and max(c[0] for c in cands) < 0.9 and not valid[ndi.binary_dilation(comp, iterations=2)].all():
        # partly hidden behind an occluder: the visible part's centroid and area underestimate the outline, so
        # also start from centres pushed out by a third of the radius, with a larger outline
        for k in range(8):
            dx, dy = np.cos(k * np.pi / 4) * r0 / 3, np.sin(k * np.pi / 4) * r0 / 3
            for ang in angles:
                cands.append((iou(cx0 + dx, cy0 + dy, r0 * 1.2, ang), cx0 + dx, cy0 + dy, r0 * 1.2, ang))
    cands.sort(key=lambda t: -t[0])
    best = None
    for start in cands[:2]:
        s, cx, cy, r, ang = start
        steps = [0.75, 0.75, 0.06, 0.06]
        for _ in range(12):
            improved = False
            for j in range(4):
                for sign in (-1, 1):
                    p = [cx, cy, r, ang]
                    if j == 2:
                        p[2] = r * (1 + sign * steps[2])
                    else:
                        p[j] = p[j] + sign * steps[j]
                    if shape == "circle" and j == 3:
                        continue
                    if shape == "diamond" and abs(p[3]) > 0.6:
                        continue
                    sc = iou(*p)
                    if sc > s + 1e-9:
                        s, (cx, cy, r, ang) = sc, p
                        improved = True
            if not improved:
                steps = [st * 0.5 for st in steps]
                if steps[0] < 0.2:
                    break
        if blur and inside_r is None:
            r_sharp, r_best = r, r
            for sigma in (0.8, 1.3, 1.8):
                for rs in (1.0, 1.06, 1.12):
                    sc = iou(cx, cy, r_sharp * rs, ang, sigma)
                    if sc > s + 1e-9:
                        s, r_best = sc, r_sharp * rs
            r = r_best
        if best is None or s > best[0]:
            best = (s, (cx, cy, r, ang))
    return best


def _classify(comp, valid, xx, yy):
    """Fit all shapes to a component; list of (iou, shape, params), best first."""
    ys, xs = np.nonzero(comp)
    area = len(xs)
    cx0, cy0 = float(xx[ys, xs].mean()), float(yy[ys, xs].mean())
    results = []
    for shape in SHAPES:
        s, params = _fit_shape(shape, comp, valid, xx, yy, cx0, cy0, area)
        results.append((s, shape, params))
    results.sort(key=lambda t: -t[0])
    return results


def _fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill the components of ~mask smaller than max_area, including those cut by the image border."""
    cc, n = ndi.label(~mask)
    if n <= 1:
        return mask
    sizes = ndi.sum(np.ones_like(cc), cc, index=np.arange(1, n + 1))
    small = np.zeros(n + 1, bool)
    small[1:] = sizes < max_area
    small[1 + int(np.argmax(sizes))] = False  # the largest part is the outside
    return mask | small[cc]


def _transparent_candidates(img: np.ndarray, opaque: np.ndarray, thr: float = 0.05) -> np.ndarray:
    """Regions that deviate from a smooth background estimate. The estimate is refined by excluding the
    (hole-filled) deviating regions, so object interiors deviate too."""
    H, W = opaque.shape
    max_hole = int(0.25 * H * W)
    excl = ndi.binary_dilation(opaque, iterations=1)
    cand = np.zeros(opaque.shape, bool)
    for it in range(6):
        bg = _estimate_background(img, excl | cand, (1.5, 3.0, 6.0, 12.0) if it else (5.0, 10.0))
        dev = np.sqrt(((img - bg) ** 2).sum(-1))
        new = _fill_small_holes(ndi.binary_closing(dev > thr, iterations=1) | opaque, max_hole) & ~opaque
        new = ndi.binary_opening(new, iterations=1)
        if np.array_equal(new, cand):
            break
        cand = new
    return cand


def _edge_softness(img: np.ndarray, comp: np.ndarray, other: np.ndarray) -> float:
    """How gradual the component's boundary is: colour change within 1-3 px on either side of the boundary,
    relative to the contrast across it (hard-edged objects ~0.1-0.4, soft clouds higher)."""
    e1 = ndi.binary_erosion(comp, iterations=1)
    e2 = ndi.binary_erosion(comp, iterations=2)
    e3 = ndi.binary_erosion(comp, iterations=3)
    d1 = ndi.binary_dilation(comp, iterations=1)
    d2 = ndi.binary_dilation(comp, iterations=2)
    d3 = ndi.binary_dilation(comp, iterations=3)
    rings = [comp & ~e1, e2 & ~e3, d1 & ~comp & ~other, d3 & ~d2 & ~other]
    if any(r.sum() < 4 for r in rings):
        return 0.0
    in1, in3, out1, out3 = (img[r].mean(0) for r in rings)
    contrast = np.linalg.norm(in3 - out3)
    return float((np.linalg.norm(in1 - in3) + np.linalg.norm(out1 - out3)) / max(contrast, 1e-3))


def _split_greedy(comp, valid, xx, yy, min_area=30):
    """Explain a component as two touching/overlapping objects: the largest outline inside it (around the
    maximum of its distance transform), and the largest left-over part."""
    dt = ndi.distance_transform_edt(comp)
    y, x = np.unravel_index(np.argmax(dt), dt.shape)
    if dt[y, x] < 3:
        return [comp]
    best = None
    for shape in SHAPES:
        sc, params = _fit_shape(shape, comp, valid, xx, yy, float(xx[y, x]), float(yy[y, x]), 0,
                                inside_r=float(dt[y, x]))
        if best is None or sc > best[0]:
            best = (sc, shape, params)
    _, shape, (cx, cy, r, ang) = best
    t1 = _render(shape, cx, cy, r, ang, xx, yy)
    rest = comp & ~ndi.binary_dilation(t1, iterations=1)
    rest = ndi.binary_opening(rest)
    cc, n = ndi.label(rest)
    if n == 0:
        return [comp]
    sizes = np.bincount(cc.ravel())[1:]
    k = int(np.argmax(sizes)) + 1
    if sizes[k - 1] < min_area:
        return [comp]
    part2 = comp & ndi.binary_dilation(cc == k, iterations=1) & ~t1
    part1 = comp & ~part2
    return [part1, part2]


# --------------------------------------------------------------------------- two-colour patterned backgrounds


def _two_means(X: np.ndarray, iters: int = 12):
    """Two colour clusters of the rows of X (brightest and darkest 30% as the start); None if one is empty."""
    lum = X.mean(1)
    a, b = X[lum >= np.quantile(lum, 0.7)].mean(0), X[lum <= np.quantile(lum, 0.3)].mean(0)
    for _ in range(iters):
        m = np.linalg.norm(X - a, axis=1) < np.linalg.norm(X - b, axis=1)
        if m.all() or (~m).all():
            return None
        a, b = X[m].mean(0), X[~m].mean(0)
    return a, b


def _pattern_weight(kind: str, params, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Weight of the second colour at every pixel: stripes (orientation index, period, phase) or checker
    cells (cell size, x offset, y offset), the generator's geometry."""
    if kind == "stripes":
        o, period, phase = params
        u = (yy, xx, (xx + yy) / np.sqrt(2), (xx - yy) / np.sqrt(2))[int(o)]
        return soft_band(u / period + phase, 1.0, period)
    cell, ox, oy = params
    px = soft_band((xx + ox) / cell, 2.0, cell)
    py = soft_band((yy + oy) / cell, 2.0, cell)
    return px * (1 - py) + py * (1 - px)


def _fit_pattern_background(img: np.ndarray, min_agree: float = 0.82, min_inliers: float = 0.5):
    """Fit a two-colour periodic background (stripes at 0/90/+-45 degrees, or checker cells with a floor's
    lighting falloff) to the image alone. Returns (background HxWx3, info) or None when the image shows none.

    The colours come from two-means on the border; every pixel is then +1 / -1 / 0 (nearer the second colour,
    nearer the first, neither: objects and shadows). Each candidate geometry's sign pattern is scored by a dot
    product with that map (checker patterns are the product of a row and a column pattern, so all offsets of
    one cell size are scored by one matrix product), the best is refined by coordinate descent on a robust
    residual, and the colours are fitted by least squares on the pixels the pattern explains."""
    H, W = img.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    border = np.zeros((H, W), bool)
    border[:3] = border[-3:] = True
    border[:, :3] = border[:, -3:] = True
    ab = _two_means(img[border])
    if ab is None:
        return None
    A, B = ab
    sep = float(np.linalg.norm(A - B))
    if sep < 0.15:
        return None
    da = np.linalg.norm(img - A, axis=-1)
    db = np.linalg.norm(img - B, axis=-1)
    inl = np.minimum(da, db) < 0.35 * sep
    S = (inl * np.where(db < da, 1.0, -1.0)).astype(np.float32)
    size = float(min(H, W))
    best = (0.0, None, None)
    phases = np.arange(48, dtype=np.float32) / 48
    S_sub = S[::2, ::2].ravel()  # the coarse search on every second pixel
    n_sub = max(float(np.abs(S_sub).sum()), 1.0)
    for o, u in enumerate((yy, xx, (xx + yy) / np.sqrt(2), (xx - yy) / np.sqrt(2))):
        u_sub = u[::2, ::2].ravel()
        for period in np.arange(0.185 * size, 0.335 * size, 0.4 * size / 64, dtype=np.float32):
            pat = np.where((u_sub[:, None] / period + phases[None]) % 1.0 >= 0.5, 1.0, -1.0).astype(np.float32)
            sc = S_sub @ pat / n_sub
            k = int(np.argmax(np.abs(sc)))
            if abs(sc[k]) > best[0]:
                best = (abs(sc[k]), "stripes", (o, float(period), float(phases[k])))
    n_inl = max(float(inl.sum()), 1.0)
    xs, ys = xx[0], yy[:, 0]
    for cell in np.arange(0.145 * size, 0.265 * size, 0.25 * size / 64, dtype=np.float32):
        offs = np.arange(0, 2 * cell, cell / 24, dtype=np.float32)
        SX = np.where(((xs[:, None] + offs[None]) / cell) % 2.0 >= 1.0, 1.0, -1.0).astype(np.float32)
        SY = np.where(((ys[:, None] + offs[None]) / cell) % 2.0 >= 1.0, 1.0, -1.0).astype(np.float32)
        sc = SY.T @ S @ SX / n_inl  # (y offset, x offset)
        k = np.unravel_index(int(np.argmax(np.abs(sc))), sc.shape)
        if abs(sc[k]) > best[0]:
            best = (abs(sc[k]), "checker", (float(cell), float(offs[k[1]]), float(offs[k[0]])))
    agree = 0.5 + 0.5 * best[0]  # fraction of the explained pixels the binary pattern gets right
    if best[1] is None or agree < min_agree:
        return None
    kind, params = best[1], list(best[2])
    light = (0.85 + 0.15 * yy / H) if kind == "checker" else np.ones_like(yy)

    def render(params, use):
        w = _pattern_weight(kind, params, xx, yy)
        X = np.stack([(1 - w) * light, w * light], -1)
        coef, *_ = np.linalg.lstsq(X[use], img[use], rcond=None)  # the two colours
        bg = X @ coef
        res = np.linalg.norm(img - bg, axis=-1)
        return bg, res, float(np.minimum(res, 0.08).mean())

    bg, res, cost = render(params, inl)
    use = res < 0.06
    # the period (cell size) is stepped about the image centre, the phase (offsets) following, so that the two
    # are not coupled: a period step alone would move the far edges by several pixels
    xc, yc = W / 2.0, H / 2.0
    uc = (yc, xc, (xc + yc) / np.sqrt(2), (xc - yc) / np.sqrt(2))[int(params[0])] if kind == "stripes" else 0.0

    def step(p, j, delta):
        p = list(p)
        if j == 1 and kind == "stripes":
            p[2] += uc / p[1] - uc / (p[1] + delta)
        elif j == 0 and kind == "checker":
            p[1] = (xc + p[1]) * (p[0] + delta) / p[0] - xc
            p[2] = (yc + p[2]) * (p[0] + delta) / p[0] - yc
        p[j] += delta
        return p

    steps = [0.0, 0.1, 0.01] if kind == "stripes" else [0.1, 0.2, 0.2]
    for _ in range(30):
        improved = False
        for j in range(3):
            for sgn in (-1, 1) if steps[j] else ():
                p = step(params, j, sgn * steps[j])
                cand = render(p, use)
                if cand[2] < cost - 1e-6:
                    params, (bg, res, cost), improved = p, cand, True
        if not improved:
            steps = [s * 0.5 for s in steps]
            if max(steps) < 2e-3:
                break
        use = res < 0.06
    inliers = float((res < 0.04).mean())
    if inliers < min_inliers:
        return None
    return bg.astype(np.float32), {"kind": kind, "params": params, "agree": agree, "inliers": inliers}


_ALPHAS = np.arange(0.2, 0.925, 0.025, dtype=np.float32)  # opacities tried for semi-transparent objects


def _over_an_object(P: np.ndarray, ci: int, alphas, tol: float = 0.045) -> np.ndarray:
    """(n,) bool: pixels explained as colour `ci` at one of `alphas` over an opaque object of another palette
    colour (of any brightness: it may lie in a shadow), i.e. where a see-through object covers another one."""
    c = _PALETTE[ci]
    best = np.full(len(P), np.inf, np.float32)
    for a in np.atleast_1d(alphas):
        under = (P - a * c) / (1 - a)  # what the pixel would show without the see-through object
        d = _opaque_distance(under[None])[0]  # (n, colours)
        d[:, ci] = np.inf
        best = np.minimum(best, (1 - a) * d.min(1))
    return best < tol


def _assign_one_opacity(res: np.ndarray, d0: np.ndarray, tol: float, min_count: int = 20, P=None) -> np.ndarray:
    """Colour index per pixel of one region (-1: none), from `res` (n, alphas, colours), the residual of
    p = (1 - a) b + a c, and `d0` (n,), the residual of the background alone.

    A semi-transparent object has one opacity: the same (c, a) holds over the whole object, which tells purple
    over a light cell from pink (a free per-pixel alpha could not). The (c, a) explaining most pixels is taken,
    then the same on what is left (a second object), while enough is left. With the pixels `P`, a (c, a) also
    takes the pixels it explains over another, opaque object."""
    ok = (res < tol) & (d0[:, None, None] > res + 0.04)
    out = np.full(len(d0), -1)
    left = np.ones(len(d0), bool)
    while left.sum() >= min_count:
        counts = (ok & left[:, None, None]).sum(0)
        ai, ci = np.unravel_index(int(np.argmax(counts)), counts.shape)
        if counts[ai, ci] < min_count:
            break
        take = ok[:, ai, ci] & left
        if P is not None:  # where the object also covers another object
            take |= left & _over_an_object(P, ci, _ALPHAS[ai])
        out[take] = ci
        left &= ~take
    return out


def _mixture_residual(img: np.ndarray, bg: np.ndarray, amin: float = 0.2, amax: float = 0.92) -> np.ndarray:
    """(H, W): how well the best palette colour at the best alpha in [amin, amax] over `bg` explains each pixel."""
    p, b = img[..., None, :], bg[..., None, :]
    dvec = _PALETTE[None, None] - b
    a = np.clip(((p - b) * dvec).sum(-1) / np.maximum((dvec * dvec).sum(-1), 1e-6), amin, amax)
    return np.linalg.norm(p - b - a[..., None] * dvec, axis=-1).min(-1)


def _palette_candidates(img: np.ndarray, bg: np.ndarray, tau: float, exclude: np.ndarray) -> tuple:
    """(nearest palette colour (H,W), opaque (H,W) bool): pixels within `tau` of a palette colour, not in
    `exclude`, and not explained clearly better as a see-through mixture over the background `bg` (purple at half
    opacity over a light cell looks like a dark pink: such pixels are left to the transparent step)."""
    d = _opaque_distance(img) / _TAU_SCALE
    lab = np.argmin(d, -1)
    dmin = np.take_along_axis(d, lab[..., None], -1)[..., 0]
    opaque = (dmin < tau) & ~exclude
    opaque &= ~(_mixture_residual(img, bg, amax=0.8) < np.minimum(dmin * _TAU_SCALE[lab] - 0.03, 0.03))
    return lab, opaque


def _regions(mask: np.ndarray, min_size: int = 20):
    """The connected regions of `mask` with at least `min_size` pixels, as bool masks."""
    cc, n = ndi.label(mask)
    for r in range(1, n + 1):
        reg = cc == r
        if reg.sum() >= min_size:
            yield reg


def _paint(labels: np.ndarray, trans: np.ndarray, reg: np.ndarray, colour: np.ndarray) -> None:
    """Label the pixels of region `reg` with `colour` (n,) as see-through, where it is not -1."""
    ys, xs = np.nonzero(reg)
    hit = colour >= 0
    labels[ys[hit], xs[hit]] = colour[hit]
    trans[ys[hit], xs[hit]] = True


def _label_pixels_on_pattern(img: np.ndarray, bg: np.ndarray, tau: float, transparent: bool):
    """Pixel labels against a known background: only pixels the background does not explain can belong to an
    object. Returns (labels, is_transparent, bg_colour): bg_colour (H,W) is the palette colour the background
    itself shows at a pixel the background explains (-1 elsewhere): an object of that colour is invisible
    there, so those pixels are ignored when its outline is fitted."""
    dev = np.linalg.norm(img - bg, axis=-1)
    # a shadow darkens the background: p = k b
    k = np.clip((img * bg).sum(-1) / np.maximum((bg * bg).sum(-1), 1e-6), 0.3, 0.97)
    shadow = (np.linalg.norm(img - k[..., None] * bg, axis=-1) < 0.04) & (dev > 0.04)
    lab, opaque = _palette_candidates(img, bg, tau, exclude=(dev <= 0.1) | shadow)
    labels = np.where(opaque, lab, -1)
    d_bg = _opaque_distance(bg) / _TAU_SCALE
    bg_lab = np.argmin(d_bg, -1)
    bg_colour = np.where((d_bg.min(-1) < 1.3 * tau) & (dev <= 0.1), bg_lab, -1)
    trans = np.zeros(opaque.shape, bool)
    if not transparent:
        return labels, trans, bg_colour
    cand = (dev > 0.06) & ~ndi.binary_dilation(opaque, iterations=1) & ~shadow
    cand = ndi.binary_opening(cand, iterations=1)
    for reg in _regions(cand):
        P, Bk = img[reg], bg[reg]
        a = _ALPHAS[None, :, None, None]
        mix = (1 - a) * Bk[:, None, None, :] + a * _PALETTE[None, None]
        res = np.linalg.norm(P[:, None, None, :] - mix, axis=-1)  # (n, alphas, colours)
        _paint(labels, trans, reg, _assign_one_opacity(res, dev[reg], tol=0.05, P=P))
    return labels, trans, bg_colour


# --------------------------------------------------------------------------- detector


def _label_pixels(img: np.ndarray, tau: float, transparent: bool):
    """Returns (labels (H,W) int in -1..7, is_transparent (H,W) bool, bg_colour (H,W) int in -1..7, whether a
    patterned background was fitted)."""
    pattern = _fit_pattern_background(img)
    if pattern is not None:
        return (*_label_pixels_on_pattern(img, pattern[0], tau, transparent), True)
    no_bg_colour = np.full(img.shape[:2], -1)
    d = _opaque_distance(img) / _TAU_SCALE
    opaque = d.min(-1) < tau
    trans = np.zeros(opaque.shape, bool)
    if not transparent:
        return np.where(opaque, np.argmin(d, -1), -1), trans, no_bg_colour, False
    # as on patterned backgrounds, against the smooth background interpolated under the palette-like pixels
    holes = _fill_small_holes(ndi.binary_dilation(opaque, iterations=1), int(0.25 * opaque.size))
    bg0 = _estimate_background(img, holes, (3.0, 6.0, 12.0))
    lab, opaque = _palette_candidates(img, bg0, tau, exclude=~opaque)
    labels = np.where(opaque, lab, -1)

    cand = _transparent_candidates(img, opaque)
    excl = ndi.binary_dilation(opaque, iterations=1)
    for reg in _regions(cand):
        ring = ndi.binary_dilation(reg, iterations=5) & ~ndi.binary_dilation(reg, iterations=1) & ~excl & ~cand
        if ring.sum() < 8:
            continue
        S = img[ring]
        if len(S) > 96:
            S = S[np.linspace(0, len(S) - 1, 96).astype(int)]
        P = img[reg]  # (R, 3)
        # a = 0: the pixel is just background, i.e. close to a good number of the ring's colours (a robust
        # nearest distance: the ring may catch a few pixels of the object itself, e.g. between a star's arms)
        dist0 = np.sqrt(((P[:, None, :] - S[None]) ** 2).sum(-1))
        kth = max(1, len(S) // 24)
        d0 = np.partition(dist0, kth, axis=1)[:, kth]
        res_all = np.full((len(P), len(COLOR_NAMES)), np.inf, np.float32)
        for ci in range(len(COLOR_NAMES)):
            dvec = _PALETTE[ci][None] - S  # (S, 3)
            num = ((P[:, None, :] - S[None]) * dvec[None]).sum(-1)
            a = np.clip(num / np.maximum((dvec * dvec).sum(-1), 1e-6)[None], 0.2, 0.92)
            res = np.sqrt(((P[:, None, :] - S[None] - a[..., None] * dvec[None]) ** 2).sum(-1)).min(1)
            ok = (res < 0.045) & (d0 > res + 0.04)
            res_all[ok, ci] = res[ok]
        best = res_all.argmin(1)
        ok = np.isfinite(res_all[np.arange(len(P)), best])
        if ok.sum() >= 20:  # the region's main colour also where it covers another object (opacity unknown here)
            main = int(np.bincount(best[ok]).argmax())
            over = ~ok & _over_an_object(P, main, _ALPHAS, tol=0.04)
            best[over], ok = main, ok | over
        _paint(labels, trans, reg, np.where(ok, best, -1))
    return labels, trans, no_bg_colour, False


def detect(
    image,
    tau: float = 0.10,
    min_area: int = 30,
    min_score: float = 0.75,
    transparent: bool = True,
    split_below: float = 0.9,
    bg_border_frac: float = 0.12,
    max_softness: float = 0.7,
    smooth: int = 0,
) -> List[Detection]:
    """Detect the coloured shapes in an image of the synthetic world.

    Args:
        image: PIL image, uint8/float HxWx3 array or CHW tensor in [-1, 1].
        tau: colour distance (RGB in [0, 1]) under which a pixel counts as a palette colour.
        min_area: smallest component (pixels, at 64x64) that can be an object.
        min_score: smallest outline IoU for a component to be reported.
        transparent: also look for semi-transparent objects (background unmixing).
    """
    img = to_float_image(image)
    if smooth:
        img = ndi.median_filter(img, size=(smooth, smooth, 1), mode="nearest")
    H, W = img.shape[:2]
    scale2 = (H * W) / (64 * 64)
    labels, trans, bg_colour, pattern = _label_pixels(img, tau, transparent)
    fg_any = labels >= 0
    dets: List[Detection] = []
    for ci, cname in enumerate(COLOR_NAMES):
        m = labels == ci
        if np.count_nonzero(m) < min_area * scale2:
            continue
        m = ndi.binary_opening(m, structure=ndi.generate_binary_structure(2, 1))
        m = ndi.binary_closing(m, structure=ndi.generate_binary_structure(2, 1)) | m
        m = ndi.binary_fill_holes(m)
        # parts of one object cut apart by background of its own colour (a white star across white stripes) are
        # one component: bridge them through those background pixels
        # (grown by a pixel: the pattern's soft edges are neither background of that colour nor object)
        own_bg = ndi.binary_dilation(bg_colour == ci, iterations=1) & ~m
        bridge = own_bg & ndi.binary_dilation(m, iterations=4)
        cc, n = ndi.label(m | bridge) if bridge.any() else ndi.label(m)
        cc = cc * m
        if n == 0:
            continue
        sizes = ndi.sum(np.ones_like(cc), cc, index=np.arange(1, n + 1))
        # A colour that runs along the image border for long is part of the background here (white stripes,
        # light checker cells): drop its border-touching components, and keep the others only if their colour
        # clearly differs from that background colour.
        border = np.zeros((H, W), bool)
        border[:2, :] = border[-2:, :] = border[:, :2] = border[:, -2:] = True
        bg_like = np.count_nonzero(m & border) > bg_border_frac * border.sum()
        if bg_like:
            touching = np.unique(cc[m & border])
            bg_light = np.quantile(img[np.isin(cc, touching[touching > 0])].mean(-1), 0.95)
        for k in range(1, n + 1):
            area = int(sizes[k - 1])
            if area < min_area * scale2:
                continue
            comp = cc == k
            if bg_like:
                if np.any(comp & border):
                    continue
                if img[comp].mean() < bg_light + 0.01:
                    continue
            soft = not pattern and trans[comp].mean() > 0.5
            if soft and _edge_softness(img, comp, fg_any & ~m) > max_softness:
                continue  # soft-edged: a cloud, not an object
            # pixels of other colours (possible occluders) and background pixels of this very colour (where the
            # object would be invisible) are ignored in the IoU
            other = (fg_any & ~m) | own_bg
            ys, xs = np.nonzero(comp)
            # crop around the component, extended beyond the image border where needed (outside the image the
            # component is absent and nothing is ignored: outlines that hang out of the image are penalised)
            pad = int(np.ceil(0.6 * np.sqrt(area))) + 3
            y0, y1 = ys.min() - pad, ys.max() + pad + 1
            x0, x1 = xs.min() - pad, xs.max() + pad + 1
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
            c_crop = np.zeros(yy.shape, bool)
            valid = np.ones(yy.shape, bool)
            iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
            c_crop[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = comp[iy0:iy1, ix0:ix1]
            valid[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = ~other[iy0:iy1, ix0:ix1]
            parts = [(c_crop, valid)]
            single = _classify(c_crop, valid, xx, yy)
            if single[0][0] < split_below:
                # maybe several same-coloured objects touching: split at the necks of the distance transform and
                # fit each part with the other parts ignored (they may occlude it)
                split = _split_greedy(c_crop, valid, xx, yy)
                if len(split) > 1:
                    fits = [_classify(pm, valid & ~(c_crop & ~pm), xx, yy) for pm in split]
                    if min(f[0][0] for f in fits) >= min_score and np.mean([f[0][0] for f in fits]) > single[0][0] + 0.05:
                        parts = list(zip(split, [None] * len(split)))
                        results_list = fits
            if len(parts) == 1:
                results_list = [single]
            tfrac = float(trans[comp].mean())
            for results in results_list:
                s, shape, params = results[0]
                if s < min_score:
                    continue
                dets.append(
                    Detection(
                        shape=shape,
                        color=cname,
                        score=float(s),
                        area=area,
                        center=(float(params[0]) , float(params[1])),
                        transparent=tfrac > 0.5,
                        runner_up=(results[1][1], float(results[1][0])),
                        mask=comp,
                    )
                )
    return dets


def detect_pairs(image, **kw) -> Set[Tuple[str, str]]:
    """The set of (shape, color) pairs found in `image`."""
    return {d.pair for d in detect(image, **kw)}


def finds(image, shape: str, color: str, **kw) -> bool:
    """True if the detector finds a `color` `shape` in `image`."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLOR_NAMES}, got {color!r}")
    return (shape, color) in detect_pairs(image, **kw)


# --------------------------------------------------------------------------- validation


def validate(seeds: Sequence[int], kind: Optional[str] = None, **kw) -> dict:
    """Detector accuracy on ground-truth scenes: per true object, found (shape+colour) or not, grouped by the
    object's kind and visibility; and false positives (pairs found that the scene does not hold)."""
    from magic_remover.scenes import make_scene

    stats = {}

    def bump(key, found):
        t, f = stats.get(key, (0, 0))
        stats[key] = (t + 1, f + int(found))

    fp = fp_scenes = scenes_all = 0
    failures = []
    for seed in seeds:
        sc = make_scene(int(seed), kind=kind)
        pairs = detect_pairs(sc.image, **kw)
        true = {(o.shape, o.color) for o in sc.objects}
        ok_all = True
        for i, o in enumerate(sc.objects):
            found = (o.shape, o.color) in pairs
            ok_all &= found
            bump("all", found)
            bump("transparent" if o.transparent else ("shadow" if o.casts_shadow else "opaque"), found)
            visible = visible_fraction(sc, i)
            bump("visible>=50%" if visible >= 0.5 else "visible<50%", found)
            if visible >= 0.5 and not o.transparent:
                bump("opaque-or-shadow, visible>=50%", found)
            if not found:
                failures.append((int(seed), o.name))
        extra = pairs - true
        fp += len(extra)
        fp_scenes += int(bool(extra))
        if extra:
            failures.append((int(seed), "FP " + ",".join(f"{c} {s}" for s, c in sorted(extra))))
        scenes_all += int(ok_all)
    return {"objects": stats, "false_positives": fp, "fp_scenes": fp_scenes, "scenes": len(seeds),
            "scenes_all_found": scenes_all, "failures": failures}  # fmt: skip


def main(argv=None):
    """Print the detector's accuracy on the ground-truth scenes of a seed range."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed0", type=int, default=20000, help="first seed (default 20000: the development range)")
    p.add_argument("--scenes", type=int, default=200, help="number of scenes (default 200)")
    p.add_argument("--failures", action="store_true", help="also list every object missed and every false positive")
    args = p.parse_args(argv)
    if args.scenes < 1:
        p.error(f"--scenes must be at least 1, got {args.scenes}")
    if args.seed0 < 0:
        p.error(f"--seed0 must be non-negative, got {args.seed0}")
    r = validate(range(args.seed0, args.seed0 + args.scenes))
    print(f"seeds {args.seed0}..{args.seed0 + args.scenes - 1}, mixed scenes")
    for key, (n, found) in r["objects"].items():
        print(f"  {key:32s} {found:4d}/{n:<4d} {found / n:6.1%}")
    print(f"  false positives: {r['false_positives']} in {r['scenes']} scenes")
    if args.failures:
        for seed, what in r["failures"]:
            print(f"  {seed} {what}")
    return r


if __name__ == "__main__":
    main()
