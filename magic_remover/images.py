"""Image loading, colour-mode conversion and size limits shared by the pipeline and the command line.

Only PIL and numpy are imported here (no torch), so the command line can read and check images before it loads a
model. Every PIL mode becomes 8-bit RGB the way a viewer shows it:

- transparency (RGBA, LA, PA, P with a transparent colour, premultiplied RGBa/La) is composited over white;
- 16-bit and 32-bit integer greys (``I;16``, ``I;16B``, ``I;16L``, ``I``) are *scaled* from their 16-bit range to
  8 bits, never clipped (a plain ``convert("RGB")`` clips them, turning most 16-bit images white);
- float greys (``F``) must hold values in ``[0, 1]`` and are scaled; anything else is refused rather than guessed;
- every other mode (L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX) goes through PIL's own conversion.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

#: Modes holding 16-bit (or wider integer) samples, scaled by 65535 to 8 bits.
WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Modes carrying an alpha channel (or a premultiplied one), composited over white.
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: Background transparency is composited over.
BACKGROUND = (255, 255, 255)


def _wide_integer_to_l(image: PIL.Image.Image) -> PIL.Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode == "I" and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"a 32-bit integer image (mode 'I') must hold values in [0, 65535] to be read as 16-bit, got "
            f"[{values.min():.0f}, {values.max():.0f}]."
        )
    return PIL.Image.fromarray(np.round(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")


def _float_to_l(image: PIL.Image.Image) -> PIL.Image.Image:
    values = np.asarray(image).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("a float image (mode 'F') holds NaN or inf values.")
    if values.min() < 0 or values.max() > 1:
        raise ValueError(
            f"a float image (mode 'F') must hold values in [0, 1], got [{values.min():.4g}, {values.max():.4g}]; "
            "scale it to [0, 1] first."
        )
    return PIL.Image.fromarray(np.round(values * 255.0).astype(np.uint8), mode="L")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` as 8-bit RGB, whatever its mode (see the module docstring). An RGB image is returned as it is."""
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}.")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in WIDE_INTEGER_MODES:
        return _wide_integer_to_l(image).convert("RGB")
    if mode == "F":
        return _float_to_l(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
        canvas = PIL.Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return PIL.Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


#: The most pixels (width x height) an image file may declare: 64 megapixels, 8192x8192 (a 50-megapixel camera's
#: photo fits). Checked from the header before any pixel is decoded, so a small file claiming a huge size (a
#: decompression bomb) costs nothing; PIL's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, ~89 Mpx) only warns.
MAX_IMAGE_PIXELS = 8192 * 8192


def _png_pixel_bytes(header: bytes) -> int:
    """How many bytes of filtered scanlines a PNG with this IHDR payload decompresses to (Adam7 passes included)."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * samples * depth + 7) // 8)

    if not interlace:
        return rows(width, height)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    return sum(rows((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in passes)


def _png_is_truncated(path: Path) -> bool:
    """Whether a PNG's image data ends before its last row. PIL fills the missing rows with black without a word
    when the compressed stream itself is complete, so the rows are counted here."""
    with open(path, "rb") as handle:
        data = handle.read()
    position, header, compressed = 8, b"", []
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IHDR":
            header = data[position + 8 : position + 8 + length]
        elif kind == b"IDAT":
            compressed.append(data[position + 8 : position + 8 + length])
        elif kind == b"IEND":
            break
        position += 12 + length
    if len(header) < 13:
        return True
    expected = _png_pixel_bytes(header)
    inflater, produced = zlib.decompressobj(), 0
    try:
        for piece in compressed:
            while piece and produced <= expected:
                produced += len(inflater.decompress(piece, 1 << 20))
                piece = inflater.unconsumed_tail
        produced += len(inflater.flush()) if produced <= expected else 0
    except zlib.error:
        return True
    return produced < expected


def open_image_bounded(path: str | os.PathLike) -> PIL.Image.Image:
    """Reads an image file for the pipeline, bounded: the pixel count its header declares is checked against
    :data:`MAX_IMAGE_PIXELS` before decoding, a file with several frames or pages is refused (which one was meant
    cannot be guessed), a file whose data ends early is refused (PIL would pad it with black), and the EXIF
    orientation is applied (as diffusers' ``load_image`` does). Returns the image in its own mode; raises
    ``ValueError`` with one line naming the file for each problem, and for a missing file or a folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file.")
    if not path.is_file():
        raise ValueError(f"{path} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)  # our own, lower bound is checked below
            with PIL.Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ValueError(
                        f"{path} declares {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} this reader "
                        "decodes (images.MAX_IMAGE_PIXELS); scale it down first."
                    )
                frames = getattr(opened, "n_frames", 1)
                if frames > 1:
                    raise ValueError(f"{path} holds {frames} frames or pages; save the one to use as a single image.")
                opened.load()
                if opened.format == "PNG" and _png_is_truncated(path):
                    raise ValueError(f"{path} is truncated: its image data ends before its last row.")
                image = PIL.ImageOps.exif_transpose(opened)
    except PIL.Image.DecompressionBombError:  # a header beyond even PIL's limit: refused by PIL.Image.open itself
        raise ValueError(f"{path} declares more pixels than the {MAX_IMAGE_PIXELS:,} this reader decodes "
                         "(images.MAX_IMAGE_PIXELS); scale it down first.") from None  # fmt: skip
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, struct.error, EOFError) as error:
        raise ValueError(f"cannot read {path} as an image: {str(error).splitlines()[0] if str(error) else error!r}") from None
    return image


def load_image_rgb(path: str | os.PathLike) -> PIL.Image.Image:
    """Reads an image file as 8-bit RGB through :func:`open_image_bounded` (bounded, EXIF orientation applied),
    then :func:`to_rgb`. Every reader of an image file (CLI, ``batch``, the web page) goes through here."""
    return to_rgb(open_image_bounded(path))


def load_mask(path: str | os.PathLike) -> PIL.Image.Image:
    """Reads a mask file as 8-bit grey, exactly as :func:`load_image_rgb` reads an image (bounded, EXIF orientation
    applied, so a mask saved by the same camera or editor as its image stays aligned with it)."""
    return load_image_rgb(path).convert("L")


def fit_within(image: PIL.Image.Image, max_size: int | None) -> PIL.Image.Image:
    """``image`` scaled down (aspect kept, Lanczos) so that its longer side is at most ``max_size`` pixels; returned
    unchanged when it already fits or ``max_size`` is None."""
    if max_size is None:
        return image
    if not (isinstance(max_size, int) and not isinstance(max_size, bool) and max_size >= 1):
        raise ValueError(f"`max_size` must be a positive int or None, got {max_size!r}.")
    longer = max(image.size)
    if longer <= max_size:
        return image
    scale = max_size / longer
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, PIL.Image.LANCZOS)


def restore_size(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """The inverse of :func:`fit_within`: ``image`` resized (bicubic) to ``size`` = ``(width, height)``, PIL's order,
    i.e. ``original.size``. Returned unchanged when it already has that size."""
    size = (int(size[0]), int(size[1]))
    if image.size == size:
        return image
    return image.resize(size, PIL.Image.BICUBIC)


def trained_size(pipeline) -> int:
    """The image size a pipeline's UNet was trained at: ``unet.config.sample_size * vae_scale_factor`` (512 for
    SD 1.x, 768 for SD 2.x-v, 64 for the embedded model)."""
    sample_size = pipeline.unet.config.sample_size
    if isinstance(sample_size, (list, tuple)):
        sample_size = max(sample_size)
    return int(sample_size) * int(getattr(pipeline, "vae_scale_factor", 8))


def default_max_size(trained: int) -> int:
    """The command line's default ``--max-size`` for a model trained at ``trained`` pixels: twice that size for small
    models (the embedded 64x64 model: 128), one and a half times for Stable Diffusion (512 -> 768, 768 -> 1152),
    where memory and time grow with the square of the side; a multiple of 8 either way."""
    factor = 2.0 if trained < 512 else 1.5
    return max(8, int(round(trained * factor / 8)) * 8)


def psnr(result, reference, region: np.ndarray | None = None) -> float:
    """PSNR in dB between two 8-bit images (PIL or arrays in [0, 255]) over ``region`` (bool HxW; every pixel when
    None): ``inf`` for identical pixels, ``nan`` for an empty region. The one definition the demo, the tests, the
    training script and the benchmarks use."""
    a, b = (np.asarray(x.convert("RGB") if hasattr(x, "convert") else x, dtype=np.float64) / 255.0
            for x in (result, reference))  # fmt: skip
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    squared = (a - b) ** 2
    if region is not None:
        if not np.any(region):
            return float("nan")
        squared = squared[np.asarray(region, dtype=bool)]
    mse = squared.mean()
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


#: How far beyond its trained size (longer side, as a multiple) an input may go before the pipeline warns.
OVERSIZE_FACTOR = 4


def is_far_beyond(height: int, width: int, trained: int, factor: float = OVERSIZE_FACTOR) -> bool:
    """Whether an input of ``height x width`` is more than ``factor`` times a model's trained size on its longer side."""
    return max(height, width) > factor * trained


__all__ = [
    "ALPHA_MODES",
    "OVERSIZE_FACTOR",
    "MAX_IMAGE_PIXELS",
    "WIDE_INTEGER_MODES",
    "default_max_size",
    "fit_within",
    "is_far_beyond",
    "load_image_rgb",
    "psnr",
    "load_mask",
    "open_image_bounded",
    "restore_size",
    "to_rgb",
    "trained_size",
]
