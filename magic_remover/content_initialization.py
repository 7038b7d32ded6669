"""Content initialisation: the edit branch starts from an image whose target region was pre-filled.

MagicEraser (seed 001, "content initialization", its first stage) starts removal from an image in which the object's
region was already filled by a classical inpainter, so that the diffusion model refines a plausible background
instead of having to erase the object from scratch. Here (ours, adapted to MagicRemover's two branches, no training):

1. the region is MagicRemover's automatic one (``automatic_mask`` of the target's soft map, averaged over the
   reconstruction passes made so far), or the user's ``mask_image``;
2. :func:`telea_prefill` fills it in pixel space with OpenCV's Telea inpainting (``cv2.inpaint``);
3. the filled image is encoded and brought to the edit branch's first guided timestep along the inverted trajectory's
   own noise (:func:`content_shifted_latents`), so that the edit branch leaves the reconstruction there.

No UNet pass is added: the maps come from reconstruction passes the loop makes anyway. The cost is one VAE encode and
one ``cv2.inpaint`` per image. Off by default (no evidence on Stable Diffusion); the embedded model ships it on
(``magic_remover_defaults.json``), chosen on the tuning scenes (``benchmarks/results/tuning_issue13_content_init.md``:
equal success, +2.2 dB fill with negative-prompt inversion) and ablated in ``benchmarks/results/removal.md``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: The pre-fill methods of ``content_initialization`` (None: off)
CONTENT_INITIALIZATIONS = (None, "telea", "shift")


def check_content_initialization(value) -> None:
    """Refuses an unknown ``content_initialization`` and says how to install OpenCV when it is missing."""
    if value not in CONTENT_INITIALIZATIONS:
        raise ValueError(f"`content_initialization` must be one of {CONTENT_INITIALIZATIONS}, got {value!r}.")
    if value is not None:  # both pre-fills use OpenCV's Telea (the shift fill to choose among its candidates)
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"`content_initialization={value!r}` uses OpenCV's inpainting (a dependency of magic-remover): "
                "`pip install opencv-python-headless`."
            ) from error


def telea_prefill(pixels: torch.Tensor, region: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """``pixels`` (``[B, 3, H, W]`` in [-1, 1]) with the ``region`` (``[B, 1, H, W]`` or ``[B, H, W]``, filled where
    > 0.5) inpainted by OpenCV's Telea method; pixels outside the region are returned unchanged."""
    import cv2

    region = region if region.ndim == 4 else region.unsqueeze(1)
    images = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    holes = (region.detach().float().cpu() > 0.5).to(torch.uint8) * 255
    filled = []
    for image, hole in zip(images, holes):
        array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        result = cv2.inpaint(array, np.ascontiguousarray(hole[0].numpy()), radius, cv2.INPAINT_TELEA)
        filled.append(torch.from_numpy(result).permute(2, 0, 1))
    out = torch.stack(filled).to(pixels.device, torch.float32) / 127.5 - 1
    keep = holes.to(pixels.device) == 0
    return torch.where(keep, pixels.float(), out).to(pixels.dtype)


def correlate(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``out[dy, dx] = sum_p first[p] * second[p + (dy, dx)]`` for every shift, circular over the arrays' (padded)
    size, by FFT. Shifts are read modulo the size: ``out[-1, 0]`` is the shift one row up."""
    spectrum = np.conj(np.fft.rfft2(first)) * np.fft.rfft2(second)
    return np.fft.irfft2(spectrum, s=first.shape)


def best_shift(image: np.ndarray, known: np.ndarray, piece: np.ndarray, context: np.ndarray, slack: float = 0.1,
               foreign: float = 0.15, candidates: int = 64, preferred=(), sample: int = 512):
    """The shift ``(dy, dx)`` whose copy of the image fills ``piece`` best: among the shifts that take ``piece`` onto
    ``known`` pixels of the image, and at least half its ``context`` (known pixels around it), those whose copy of the
    context matches it within ``1 + slack`` times the best match (mean squared difference over the context pixels
    whose copy is known), and of those the shortest whose copy brings no colour foreign to the context (95% of the
    copied pixels within ``foreign``, Euclidean RGB, of some context pixel's colour; both read at most
    ``sample`` pixels, evenly spaced, so that a large hole costs no more); failing that, of the best matches the least
    foreign. The context makes a periodic
    texture (stripes, checks) continue in phase; the shortest shift copies what lies nearest, the likeliest to be the
    same background; the colour test keeps a neighbouring object from being copied in. A ``preferred`` shift (one
    already used for a neighbouring piece) that matches as well goes first, so that a texture keeps one phase. None
    when no shift fits.

    ``image``: ``H x W x C`` float; ``known``, ``piece``, ``context``: ``H x W`` bool.
    """
    height, width = known.shape
    padded = lambda x: np.pad(x, [(0, height), (0, width)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    source = padded(known.astype(np.float64))  # the padding is outside the image: never a source
    context_p, image_p = padded(context.astype(np.float64)), padded(image)
    energy = (image_p**2).sum(axis=2)
    count = correlate(context_p, source)  # context pixels whose copy is known
    allowed = (correlate(padded(piece.astype(np.float64)), 1.0 - source) < 0.5) & (count >= 0.5 * context.sum())
    if not allowed.any():
        return None
    # sum over the context of |I(p) - I(p + d)|^2 where p + d is known, expanded into correlations
    cost = correlate(context_p, energy * source) + correlate(context_p * energy, source)
    for c in range(image.shape[2]):
        cost -= 2 * correlate(context_p * image_p[..., c], image_p[..., c] * source)
    cost = np.where(allowed, np.maximum(cost, 0.0) / np.maximum(count, 1.0), np.inf)
    dy = np.fft.fftfreq(2 * height, 1 / (2 * height))[:, None].astype(int)  # shifts as signed offsets
    dx = np.fft.fftfreq(2 * width, 1 / (2 * width))[None, :].astype(int)
    near = cost <= cost.min() * (1 + slack) + 1e-6
    distance = np.broadcast_to(dy**2 + dx**2, cost.shape)
    ranked = [np.unravel_index(n, cost.shape) for n in np.argsort(np.where(near, distance, np.inf), axis=None)]
    ranked = [(y % (2 * height), x % (2 * width)) for y, x in preferred if near[y % (2 * height), x % (2 * width)]] \
        + ranked[: min(int(near.sum()), candidates)]
    # then the best matches whatever their distance, should every near one bring in a colour foreign to the context
    ranked += [np.unravel_index(n, cost.shape) for n in np.argsort(cost, axis=None)[:candidates]]
    palette = image[context][:: max(1, int(context.sum()) // sample)]
    ys, xs = np.nonzero(piece)
    ys, xs = ys[:: max(1, len(ys) // sample)], xs[:: max(1, len(xs) // sample)]
    foreignness = []
    for row, col in ranked:
        copy = image[ys + dy[row, 0], xs + dx[0, col]]
        gap = np.sqrt(((copy[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
        foreignness.append(np.percentile(gap, 95))
        if foreignness[-1] <= foreign:
            return int(dy[row, 0]), int(dx[0, col])
    row, col = ranked[int(np.argmin(foreignness))]
    return int(dy[row, 0]), int(dx[0, col])


def shift_fill(image: np.ndarray, hole: np.ndarray, tile: int, ring: int):
    """``image`` (``H x W x C``) with ``hole`` filled by copies of known pixels, one :func:`best_shift` per square
    ``tile`` of the hole, the tile with the most known context first, its copy then known for the next tiles'
    context (not as a source). Each copy's slow difference to the pixels around the hole (a sky's gradient, the
    patchiness of grass) is then smoothed into the hole (:func:`boundary_correction`). Returns the filled image and
    the shift of each hole pixel (``H x W x 2``), or None twice when a tile finds no shift."""
    from scipy import ndimage

    filled, known = image.copy(), ~hole
    source = ~hole
    rows, cols = np.indices(hole.shape)
    pieces = [hole & (rows // tile == r) & (cols // tile == c)
              for r in range(-(-hole.shape[0] // tile)) for c in range(-(-hole.shape[1] // tile))]
    pieces = [piece for piece in pieces if piece.any()]
    used = []
    shifts = np.zeros(hole.shape + (2,), int)
    while pieces:
        contexts = [ndimage.binary_dilation(piece, iterations=ring) & known for piece in pieces]
        best = max(range(len(pieces)), key=lambda n: contexts[n].sum())
        piece, context = pieces.pop(best), contexts[best]
        shift = best_shift(np.where(known[..., None], filled, 0.0), source, piece, context, preferred=used)
        if shift is None:
            return None, None
        used = [shift] + [other for other in used if other != shift]
        ys, xs = np.nonzero(piece)
        filled[ys, xs] = image[ys + shift[0], xs + shift[1]]
        shifts[piece] = shift
        known = known | piece
    return filled + boundary_correction(image, hole, shifts, ring, sigma=tile / 2), shifts


def boundary_correction(image: np.ndarray, hole: np.ndarray, shifts: np.ndarray, ring: int, sigma: float,
                        largest: float = 0.15):
    """What to add to a hole filled by shifted copies so that it meets its surroundings: at each known pixel within
    ``ring`` of the hole, the image minus its copy by the nearest hole pixel's shift (``shifts``: ``H x W x 2``), spread
    into the hole by a normalised Gaussian (``sigma``), differences above ``largest`` (an object's edge, not a slow
    change) left out; zero outside the hole."""
    from scipy import ndimage

    height, width = hole.shape
    _, (near_y, near_x) = ndimage.distance_transform_edt(~hole, return_indices=True)
    band = ndimage.binary_dilation(hole, iterations=ring) & ~hole
    ys, xs = np.nonzero(band)
    dy, dx = shifts[near_y[ys, xs], near_x[ys, xs]].T
    ty, tx = ys + dy, xs + dx
    valid = (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)
    valid[valid] &= ~hole[ty[valid], tx[valid]]
    difference = np.zeros((len(ys), image.shape[2]))
    difference[valid] = image[ys[valid], xs[valid]] - image[ty[valid], tx[valid]]
    valid &= np.abs(difference).max(axis=1) <= largest  # an object's edge on either side: not a slow difference
    weight = np.zeros(hole.shape)
    residual = np.zeros(image.shape)
    weight[ys[valid], xs[valid]] = 1.0
    residual[ys[valid], xs[valid]] = difference[valid]
    spread = ndimage.gaussian_filter(weight, sigma)
    smooth = np.stack([ndimage.gaussian_filter(residual[..., c], sigma) for c in range(image.shape[2])], axis=-1)
    return np.where(hole[..., None] & (spread[..., None] > 1e-3), smooth / np.maximum(spread, 1e-3)[..., None], 0.0)


def shift_prefill(pixels: torch.Tensor, region: torch.Tensor, tile: int | None = None, ring: int | None = None,
                  search_side: int = 128):
    """``pixels`` (``[B, 3, H, W]`` in [-1, 1]) with the ``region`` (filled where > 0.5) copied from elsewhere in the
    same image (ours, an exemplar fill: :func:`shift_fill`, one shift per tile, each chosen by the known pixels
    around it). A texture the hole interrupts (stripes, checks) continues through it, which Telea's fill, a smear of
    the edge's colours, cannot do. Falls back to Telea's fill where a tile finds no shift. ``tile`` and ``ring``:
    the tiles' side and the context's width at the search's size (default: a quarter and 1/16 of its shorter side).
    Images larger than ``search_side`` are searched at that size (area-averaged) and copied at their own with the
    shifts scaled up, so that a 512-pixel image costs about what a 128-pixel one does."""
    region = region if region.ndim == 4 else region.unsqueeze(1)
    height, width = pixels.shape[-2:]
    factor = max(1, -(-min(height, width) // search_side))
    side = min(height, width) // factor
    tile, ring = tile or max(4, side // 4), ring or max(2, side // 16)
    smooth = telea_prefill(pixels, region).detach().float().cpu()
    out = []
    for image, hole, fallback in zip(pixels.detach().float().cpu(), region.detach().float().cpu() > 0.5, smooth):
        array, hole = image.permute(1, 2, 0).numpy().astype(np.float64), hole[0].numpy()
        if not hole.any():
            out.append(image)
            continue
        if factor == 1:
            filled, shifts = shift_fill(array, hole, tile, ring)
        else:
            small = F.avg_pool2d(image[None], factor, ceil_mode=True)[0].permute(1, 2, 0).numpy().astype(np.float64)
            small_hole = F.max_pool2d(torch.from_numpy(hole)[None, None].float(), factor, ceil_mode=True)[0, 0] > 0.5
            _, small_shifts = shift_fill(small, small_hole.numpy(), tile, ring)
            filled = None
            if small_shifts is not None:
                rows, cols = np.indices(hole.shape)
                shifts = small_shifts[rows // factor, cols // factor] * factor
                filled = copy_by_shifts(array, hole, shifts, fallback.permute(1, 2, 0).numpy())
                filled = filled + boundary_correction(array, hole, shifts, ring * factor, sigma=tile * factor / 2)
        out.append(fallback if filled is None else torch.from_numpy(filled).permute(2, 0, 1).float())
    return torch.stack(out).to(pixels.device, pixels.dtype)


def copy_by_shifts(image: np.ndarray, hole: np.ndarray, shifts: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """``image`` with each hole pixel copied from itself plus its shift, or taken from ``fallback`` where that lands
    outside the image or in the hole (the edges of a search made at a smaller size)."""
    height, width = hole.shape
    ys, xs = np.nonzero(hole)
    ty, tx = ys + shifts[ys, xs, 0], xs + shifts[ys, xs, 1]
    valid = (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)
    valid[valid] &= ~hole[ty[valid], tx[valid]]
    filled = image.copy()
    filled[ys[valid], xs[valid]] = image[ty[valid], tx[valid]]
    filled[ys[~valid], xs[~valid]] = fallback[ys[~valid], xs[~valid]]
    return filled


#: Each pre-fill by its ``content_initialization`` name
PREFILLS = {"telea": telea_prefill, "shift": shift_prefill}


def content_shifted_latents(
    latents: torch.Tensor, z0: torch.Tensor, z0_filled: torch.Tensor, region: torch.Tensor, alpha_t: float
) -> torch.Tensor:
    """The latent at timestep ``t`` of the pre-filled image, on the same noise as ``latents``.

    A DDIM latent is ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps``; replacing ``z_0`` by the filled image's latent inside
    ``region`` (``[B, 1, h, w]`` at latent size) and keeping the trajectory's ``eps`` gives
    ``z_t + sqrt(a_t) * region * (z0_filled - z0)``. Outside the region the result is ``latents`` exactly.
    """
    return latents + alpha_t**0.5 * region * (z0_filled - z0).to(latents.dtype)


class ContentInitialization:
    """One call's content initialisation: the target's soft map averaged over the reconstruction passes made before
    the edit branch leaves the reconstruction, for the region the first guided step pre-fills."""

    def __init__(self, method: str):
        self.method = method
        self.map_sum, self.map_count = None, 0

    def observe(self, soft_mask: torch.Tensor) -> None:
        total = torch.zeros_like(soft_mask) if self.map_sum is None else self.map_sum
        self.map_sum, self.map_count = total + soft_mask, self.map_count + 1

    def mean_map(self) -> torch.Tensor:
        return self.map_sum / self.map_count
