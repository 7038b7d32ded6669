"""A tiny synthetic world of coloured shapes on textured backgrounds.

Every scene comes with exact ground truth for object removal: the clean
background, per-object alpha mattes and shadow masks, and, for each object,
the scene re-rendered with only that object (and its shadow) removed.

Compositing model (all in float RGB in [0, 1], quantised to uint8 once)::

    canvas = background
    for obj in objects:                     # painter's order
        canvas = canvas * (1 - obj.shadow)  # soft darkening shadow (may be 0)
        canvas = canvas * (1 - obj.alpha) + obj.rgb * obj.alpha

Usage::

    from magic_remover.scenes import make_scene, caption_without, VOCABULARY
    scene = make_scene(1234)                       # deterministic per seed
    scene = make_scene(7, kind="shadow", num_objects=2, background="grass")

Seed convention used by this project: seeds 0..99_999 are the held-out
benchmark/test range and are never used to train the embedded model
(training uses seeds >= 1_000_000).

Only numpy and PIL are required.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "SHAPES",
    "COLORS",
    "BACKGROUNDS",
    "KINDS",
    "VOCABULARY",
    "HELDOUT_SEED_LIMIT",
    "TRAIN_SEED_OFFSET",
    "SceneObject",
    "Scene",
    "make_scene",
    "make_caption",
    "caption_without",
    "visible_fraction",
    "composite",
]

SHAPES: List[str] = ["circle", "square", "triangle", "diamond", "star"]

COLORS = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.12, 0.70, 0.20),
    "blue": (0.12, 0.28, 0.92),
    "yellow": (0.97, 0.86, 0.12),
    "purple": (0.55, 0.18, 0.75),
    "orange": (1.00, 0.55, 0.08),
    "pink": (1.00, 0.50, 0.76),
    "white": (0.96, 0.96, 0.96),
}
COLOR_NAMES: List[str] = list(COLORS)

# caption word -> texture generator (see _BACKGROUND_FUNCS)
BACKGROUNDS: List[str] = ["sky", "striped", "checkered", "grass", "plain"]

# scene kinds: "opaque" (no shadows, no transparency), "shadow" (every object
# opaque and casting a soft shadow), "transparent" (every object semi-transparent,
# no shadows), "mixed"/None (random per object).
KINDS: List[str] = ["mixed", "opaque", "shadow", "transparent"]

HELDOUT_SEED_LIMIT = 100_000  # seeds [0, HELDOUT_SEED_LIMIT) are never used for training
TRAIN_SEED_OFFSET = 1_000_000

_FUNCTION_WORDS = ["a", "an", "and", "on", "background", "transparent"]
VOCABULARY: List[str] = _FUNCTION_WORDS + COLOR_NAMES + SHAPES + BACKGROUNDS


# --------------------------------------------------------------------------- data


@dataclass(eq=False)
class SceneObject:
    shape: str
    color: str
    rgb: np.ndarray  # (3,) float
    alpha: np.ndarray  # (H, W) float32 in [0, 1] (coverage * opacity)
    mask: np.ndarray  # (H, W) bool, alpha > 0
    shadow: np.ndarray  # (H, W) float32 darkening factor in [0, 1) (zeros if none)
    shadow_mask: np.ndarray  # (H, W) bool, shadow > 0 (empty if none)
    transparent: bool
    opacity: float
    casts_shadow: bool
    center: tuple  # (x, y) in pixels
    size: float  # approximate diameter in pixels
    angle: float
    _scene: Optional["Scene"] = field(default=None, repr=False)
    _index: int = field(default=-1, repr=False)

    @property
    def name(self) -> str:
        words = (["transparent"] if self.transparent else []) + [self.color, self.shape]
        return " ".join(words)

    @property
    def bbox(self):
        """(x0, y0, x1, y1) of mask | shadow_mask, exclusive upper bounds."""
        m = self.mask | self.shadow_mask
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            return (0, 0, 0, 0)
        return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    @property
    def region(self) -> np.ndarray:
        """Bool mask of every pixel this object influences (object or shadow)."""
        return self.mask | self.shadow_mask

    @property
    def without(self) -> Image.Image:
        """The scene re-rendered with only this object (and its shadow) removed."""
        return self._scene.without(self._index)


@dataclass(eq=False)
class Scene:
    seed: int
    size: int
    kind: str
    background_kind: str
    background_float: np.ndarray  # (H, W, 3) float32 in [0, 1]
    objects: List[SceneObject]
    caption: str
    image_float: np.ndarray  # (H, W, 3) float32, un-quantised composite

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(quantize(self.image_float))

    @property
    def background(self) -> Image.Image:
        return Image.fromarray(quantize(self.background_float))

    @property
    def image_array(self) -> np.ndarray:
        return quantize(self.image_float)

    @property
    def background_array(self) -> np.ndarray:
        return quantize(self.background_float)

    def without(self, index) -> Image.Image:
        """Scene with the object(s) at `index` (int or iterable) removed."""
        drop = {index} if isinstance(index, (int, np.integer)) else set(index)
        keep = [o for i, o in enumerate(self.objects) if i not in drop]
        return Image.fromarray(quantize(composite(self.background_float, keep)))

    def without_array(self, index) -> np.ndarray:
        return np.asarray(self.without(index))

    @property
    def mask(self) -> np.ndarray:
        """Union of all object masks and shadow masks."""
        m = np.zeros((self.size, self.size), bool)
        for o in self.objects:
            m |= o.mask | o.shadow_mask
        return m

    def caption_without(self, index) -> str:
        return caption_without(self, index)


# --------------------------------------------------------------------------- compositing


def quantize(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def composite(background: np.ndarray, objects: Sequence[SceneObject]) -> np.ndarray:
    """Painter's-order composite of `objects` (shadow first, then alpha) over `background`."""
    canvas = background.astype(np.float32).copy()
    for o in objects:
        if o.casts_shadow:
            canvas *= (1.0 - o.shadow)[..., None]
        a = o.alpha[..., None]
        canvas = canvas * (1.0 - a) + o.rgb[None, None, :].astype(np.float32) * a
    return canvas


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def make_caption(objects: Sequence[SceneObject], background_kind: str) -> str:
    if not objects:
        return f"a {background_kind} background"
    parts = " and ".join(f"{_article(o.name)} {o.name}" for o in objects)
    return f"{parts} on a {background_kind} background"


def caption_without(scene: Scene, index) -> str:
    """Caption of `scene` with the object(s) at `index` dropped."""
    drop = {index} if isinstance(index, (int, np.integer)) else set(index)
    keep = [o for i, o in enumerate(scene.objects) if i not in drop]
    return make_caption(keep, scene.background_kind)


def visible_fraction(scene: Scene, index: int) -> float:
    """Fraction of object ``index``'s alpha that is not hidden by the objects painted after it."""
    obj = scene.objects[index]
    cover = np.ones_like(obj.alpha)
    for later in scene.objects[index + 1 :]:
        cover = cover * (1.0 - later.alpha)
    return float((obj.alpha * cover).sum() / max(obj.alpha.sum(), 1e-6))


# --------------------------------------------------------------------------- textures


def _grid(size: int):
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(c, c)  # xx, yy (pixel centres)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _value_noise(rng, size: int, cell: float) -> np.ndarray:
    """Smooth (bicubic-ish) value noise in [0, 1] with feature size ~`cell` px."""
    n = int(np.ceil(size / cell)) + 2
    g = rng.random((n, n)).astype(np.float32)
    c = (np.arange(size, dtype=np.float32) + 0.5) / cell + rng.random() * 0.999
    i0 = np.floor(c).astype(int)
    f = _smoothstep(c - i0)
    gx0 = g[:, i0] * (1 - f) + g[:, i0 + 1] * f  # (n, size) interpolate x
    out = gx0[i0, :] * (1 - f)[:, None] + gx0[i0 + 1, :] * f[:, None]
    return out


def soft_band(t, period, scale):
    """Anti-aliased periodic indicator of the upper half of each period of `t`.

    `scale` = pixels per unit of t (gives ~1 px soft edges)."""
    ph = t % period
    d = np.abs(ph - 0.75 * period)
    d = np.minimum(d, period - d)
    return np.clip((0.25 * period - d) * scale + 0.5, 0.0, 1.0)


def _jitter(rng, rgb, amount=0.06):
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 1)


def _bg_sky(rng, size):
    xx, yy = _grid(size)
    t = (yy / size)[..., None]
    top = _jitter(rng, (0.20, 0.45, 0.85), 0.06)
    bottom = _jitter(rng, (0.75, 0.88, 0.98), 0.04)
    img = top * (1 - t) + bottom * t
    clouds = _smoothstep((_value_noise(rng, size, size / 3.0) - 0.55) * 3.0)[..., None]
    img = img * (1 - 0.45 * clouds) + 0.97 * 0.45 * clouds
    return img


def _bg_striped(rng, size):
    xx, yy = _grid(size)
    period = rng.uniform(0.2, 0.32) * size
    orient = rng.integers(3)
    if orient == 0:
        u = yy
    elif orient == 1:
        u = xx
    else:
        u = (xx + yy * (1 if rng.random() < 0.5 else -1)) / np.sqrt(2)
    w = soft_band(u / period + rng.random(), 1.0, period)[..., None]
    palettes = [
        ((0.92, 0.90, 0.80), (0.55, 0.70, 0.85)),
        ((0.95, 0.95, 0.95), (0.80, 0.55, 0.45)),
        ((0.85, 0.80, 0.65), (0.45, 0.55, 0.45)),
        ((0.90, 0.85, 0.90), (0.55, 0.50, 0.65)),
    ]
    a, b = palettes[rng.integers(len(palettes))]
    return _jitter(rng, a, 0.04) * (1 - w) + _jitter(rng, b, 0.04) * w


def _bg_checkered(rng, size):
    xx, yy = _grid(size)
    cell = rng.uniform(0.16, 0.25) * size
    ox, oy = rng.random(2) * cell * 2

    def soft_parity(u):
        return soft_band(u / cell, 2.0, cell)

    px = soft_parity(xx + ox)
    py = soft_parity(yy + oy)
    w = (px * (1 - py) + py * (1 - px))[..., None]  # soft XOR
    palettes = [
        ((0.85, 0.80, 0.70), (0.45, 0.35, 0.28)),
        ((0.90, 0.90, 0.90), (0.35, 0.35, 0.38)),
        ((0.80, 0.70, 0.55), (0.60, 0.45, 0.30)),
    ]
    a, b = palettes[rng.integers(len(palettes))]
    img = _jitter(rng, a, 0.04) * (1 - w) + _jitter(rng, b, 0.04) * w
    # gentle lighting falloff like a floor
    t = (yy / size)[..., None]
    return img * (0.85 + 0.15 * t)


def _bg_grass(rng, size):
    n = 0.65 * _value_noise(rng, size, size / 4.0) + 0.35 * _value_noise(rng, size, size / 8.0)
    n = n[..., None]
    dark = _jitter(rng, (0.16, 0.38, 0.12), 0.04)
    light = _jitter(rng, (0.45, 0.70, 0.25), 0.05)
    return dark * (1 - n) + light * n


def _bg_plain(rng, size):
    palette = [(0.85, 0.82, 0.75), (0.70, 0.72, 0.76), (0.55, 0.60, 0.66), (0.88, 0.80, 0.70), (0.40, 0.42, 0.45)]
    c = _jitter(rng, palette[rng.integers(len(palette))], 0.05)
    xx, yy = _grid(size)
    t = ((xx + yy) / (2 * size))[..., None]
    return c * (0.96 + 0.06 * t)


_BACKGROUND_FUNCS = {
    "sky": _bg_sky,
    "striped": _bg_striped,
    "checkered": _bg_checkered,
    "grass": _bg_grass,
    "plain": _bg_plain,
}


# --------------------------------------------------------------------------- shapes

_SS = 4  # supersampling factor for polygon coverage


def polygon_vertices(shape: str, radius: float, angle: float) -> np.ndarray:
    """Outline of a non-circular shape around the origin (public: the benchmark's detector fits these outlines)."""
    if shape == "square":
        k = np.arange(4)
        th = angle + np.pi / 4 + k * np.pi / 2
        r = np.full(4, radius)
    elif shape == "diamond":
        k = np.arange(4)
        th = angle + k * np.pi / 2
        r = np.array([radius, radius * 0.72, radius, radius * 0.72])
    elif shape == "triangle":
        k = np.arange(3)
        th = angle - np.pi / 2 + k * 2 * np.pi / 3
        r = np.full(3, radius)
    elif shape == "star":
        k = np.arange(10)
        th = angle - np.pi / 2 + k * np.pi / 5
        r = np.where(k % 2 == 0, radius, radius * 0.45)
    else:
        raise ValueError(shape)
    return np.stack([r * np.cos(th), r * np.sin(th)], axis=1)


def points_in_polygon(px, py, verts):
    """Vectorised even-odd rule."""
    inside = np.zeros(px.shape, bool)
    n = len(verts)
    for i in range(n):
        x0, y0 = verts[i]
        x1, y1 = verts[(i + 1) % n]
        cond = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= cond & (px < xint)
    return inside


def _shape_coverage(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    cov = np.zeros((size, size), np.float32)
    x0 = max(int(np.floor(cx - radius - 2)), 0)
    x1 = min(int(np.ceil(cx + radius + 2)), size)
    y0 = max(int(np.floor(cy - radius - 2)), 0)
    y1 = min(int(np.ceil(cy + radius + 2)), size)
    if x1 <= x0 or y1 <= y0:
        return cov
    if shape == "circle":
        xs = np.arange(x0, x1, dtype=np.float32) + 0.5
        ys = np.arange(y0, y1, dtype=np.float32) + 0.5
        d = np.sqrt((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2) - radius
        cov[y0:y1, x0:x1] = np.clip(0.5 - d, 0.0, 1.0)
        return cov
    verts = polygon_vertices(shape, radius, angle) + np.array([cx, cy])
    sub = (np.arange(_SS, dtype=np.float32) + 0.5) / _SS
    xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + sub[None, :]).reshape(-1)
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + sub[None, :]).reshape(-1)
    px, py = np.meshgrid(xs, ys)
    ins = points_in_polygon(px, py, verts).astype(np.float32)
    h, w = y1 - y0, x1 - x0
    cov[y0:y1, x0:x1] = ins.reshape(h, _SS, w, _SS).mean(axis=(1, 3))
    return cov


def _blur(x: np.ndarray, radius: int) -> np.ndarray:
    """Separable binomial blur (finite support, zero padding)."""
    k = np.array([1.0], np.float32)
    for _ in range(2 * radius):
        k = np.convolve(k, [0.5, 0.5])
    r = radius
    p = np.pad(x, r)
    out = np.zeros_like(p)
    for i, w in enumerate(k):
        out[:, r:-r] += w * p[:, i : i + p.shape[1] - 2 * r]
    p = out
    out = np.zeros_like(p)
    for i, w in enumerate(k):
        out[r:-r, :] += w * p[i : i + p.shape[0] - 2 * r, :]
    return out[r:-r, r:-r]


def _shift(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(x)
    h, w = x.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = x[ys, xs]
    return out


# --------------------------------------------------------------------------- scene


def make_scene(
    seed: int,
    size: int = 64,
    num_objects: Optional[int] = None,
    kind: Optional[str] = None,
    background: Optional[str] = None,
    shapes: Optional[Sequence[str]] = None,
    colors: Optional[Sequence[str]] = None,
) -> Scene:
    """Generate a deterministic scene.

    Args:
        seed: any non-negative int; the scene is a pure function of all arguments.
        size: image side in pixels (objects scale with it).
        num_objects: 0..3 (default: random 1..3).  0 gives a background-only scene.
        kind: "mixed" (default), "opaque", "shadow" or "transparent".
        background: force one of BACKGROUNDS.
        shapes / colors: force the shape / colour of object i (lists, cycled if short).
    """
    kind = kind or "mixed"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([int(seed), 0x5CE7E])
    s = size / 64.0

    bg_kind = background or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if bg_kind not in _BACKGROUND_FUNCS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {bg_kind!r}")
    bg = np.clip(_BACKGROUND_FUNCS[bg_kind](rng, size), 0, 1).astype(np.float32)

    n = int(rng.integers(1, 4)) if num_objects is None else int(num_objects)
    # one light direction per scene
    light = rng.integers(4)
    sdx, sdy = [(1, 1), (-1, 1), (1, 1), (-1, 1)][light]
    occupied = np.zeros((size, size), np.float32)
    used = set()
    objects: List[SceneObject] = []
    for i in range(n):
        shape = shapes[i % len(shapes)] if shapes else None
        color = colors[i % len(colors)] if colors else None
        # avoid exact duplicates (same colour+shape) so captions are unambiguous
        for _ in range(50):
            sh = shape or SHAPES[rng.integers(len(SHAPES))]
            co = color or COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
            if (sh, co) not in used or (shape and color):
                break
        used.add((sh, co))
        best = None
        for attempt in range(30):
            diam = rng.uniform(14, 30) * s
            r = diam / 2
            if sh == "star":
                r *= 1.15
            elif sh == "square":
                r *= 1.2
            margin = r * 0.8
            cx = rng.uniform(margin, size - margin)
            cy = rng.uniform(margin, size - margin)
            ang = rng.uniform(-0.35, 0.35) if sh != "circle" else 0.0
            cov = _shape_coverage(sh, size, cx, cy, r, ang)
            area = cov.sum()
            overlap = (cov * occupied).sum() / max(area, 1e-6)
            if best is None or overlap < best[0]:
                best = (overlap, diam, r, cx, cy, ang, cov)
            if overlap < 0.35:
                break
        _, diam, r, cx, cy, ang, cov = best
        occupied = np.maximum(occupied, cov)

        if kind == "transparent":
            transparent = True
        elif kind in ("opaque", "shadow"):
            transparent = False
        else:
            transparent = rng.random() < 0.25
        opacity = float(rng.uniform(0.3, 0.7)) if transparent else 1.0
        if kind == "shadow":
            casts = True
        elif kind in ("opaque", "transparent") or transparent:
            casts = False
        else:
            casts = rng.random() < 0.45

        rgb = _jitter(rng, COLORS[co], 0.035)
        alpha = (cov * opacity).astype(np.float32)
        if casts:
            off = max(2, int(round(rng.uniform(2, 4.5) * s)))
            strength = rng.uniform(0.35, 0.55)
            shadow = _blur(_shift(cov, sdx * off, sdy * off), max(1, int(round(2 * s)))) * strength
            shadow = np.clip(shadow, 0, 0.95).astype(np.float32)
        else:
            shadow = np.zeros((size, size), np.float32)
        objects.append(
            SceneObject(
                shape=sh,
                color=co,
                rgb=rgb,
                alpha=alpha,
                mask=alpha > 0,
                shadow=shadow,
                shadow_mask=shadow > 0,
                transparent=transparent,
                opacity=opacity,
                casts_shadow=casts,
                center=(float(cx), float(cy)),
                size=float(diam),
                angle=float(ang),
            )
        )

    image = composite(bg, objects)
    scene = Scene(
        seed=int(seed),
        size=size,
        kind=kind,
        background_kind=bg_kind,
        background_float=bg,
        objects=objects,
        caption=make_caption(objects, bg_kind),
        image_float=image,
    )
    for i, o in enumerate(objects):
        o._scene = scene
        o._index = i
    return scene
