"""Checks and conversions of a removal's inputs that need no model: images, masks and scalar arguments.

Every check raises a ``ValueError`` or ``TypeError`` naming the argument and what was expected, before any model pass.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging

from .images import to_rgb

logger = logging.get_logger(__name__)


def is_number(value) -> bool:
    """A real number (Python, numpy or a 0-d tensor's ``.item()``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_finite(value, name: str) -> None:
    """NaN and inf are refused up front, naming the argument (they would surface steps later as another
    argument's ``FloatingPointError``)."""
    if is_number(value) and not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")


def warn_if_large(value, name: str, usual: str, limit: float) -> None:
    """A finite but absurd magnitude runs, with a warning saying what is usual."""
    if is_number(value) and abs(float(value)) > limit:
        logger.warning(f"`{name}`={value!r} is far outside the usual {usual}; expect a broken result.")


def check_timestep_range(value, name: str, num_train_timesteps: int) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(is_number(v) for v in value)):
        raise TypeError(f"`{name}` must be a (low, high) pair of numbers in training-timestep units, got {value!r}.")
    for bound in value:
        check_finite(bound, name)
    low, high = float(value[0]), float(value[1])
    if not (0 <= low < high <= num_train_timesteps):
        raise ValueError(f"`{name}` must satisfy 0 <= low < high <= {num_train_timesteps}, got {value!r}.")
    return low, high


def image_batch_and_size(image, name: str) -> tuple[int, tuple[int, int]]:
    """Validates an image input and returns ``(batch, (height, width))`` without converting it."""
    images = image if isinstance(image, list) else [image]
    if len(images) == 0:
        raise ValueError(f"`{name}` is an empty list.")
    sizes = []
    for item in images:
        if isinstance(item, PIL.Image.Image):
            sizes.append((item.height, item.width))
            batch = 1
        elif isinstance(item, np.ndarray):
            if item.ndim not in (2, 3, 4):
                raise ValueError(f"`{name}` as a numpy array must be HxW, HxWxC or BxHxWxC, got shape {item.shape}.")
            batch = item.shape[0] if item.ndim == 4 else 1
            spatial = item.shape[1:3] if item.ndim == 4 else item.shape[:2]
            sizes.append(tuple(int(s) for s in spatial))
        elif isinstance(item, torch.Tensor):
            if item.ndim not in (2, 3, 4):
                raise ValueError(f"`{name}` as a tensor must be HxW, CxHxW or BxCxHxW, got shape {tuple(item.shape)}.")
            batch = item.shape[0] if item.ndim == 4 else 1
            sizes.append(tuple(int(s) for s in item.shape[-2:]))
        else:
            raise TypeError(
                f"`{name}` must be a PIL.Image.Image, numpy array, torch.Tensor or a list of them, got {type(item).__name__}."
            )
        if len(images) > 1 and batch != 1:
            raise ValueError(f"`{name}` lists must hold single images, got a batch of {batch} inside the list.")
    if len(set(sizes)) != 1:
        raise ValueError(f"All images in `{name}` must have the same size, got {sorted(set(sizes))}.")
    batch = len(images) if len(images) > 1 else batch
    height, width = sizes[0]
    if height < 1 or width < 1:
        raise ValueError(f"`{name}` has an empty size {height}x{width}.")
    return batch, (height, width)


def numpy_to_unit(array: np.ndarray, name: str) -> np.ndarray:
    """A numpy image's samples as float64 in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1, floats as they are
    (they must already lie in [0, 1], diffusers' convention). Out-of-range values are refused, never clipped."""
    if array.dtype == np.bool_:
        return array.astype(np.float64)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float64) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"`{name}` holds NaN or inf values.")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"`{name}` as a float numpy array must hold values in [0, 1], got [{values.min():.4g}, "
                f"{values.max():.4g}]; divide 8-bit values by 255."
            )
        return values
    raise TypeError(f"`{name}` as a numpy array must be uint8, uint16, bool or float, got dtype {array.dtype}.")


def to_three_channels(pixels: torch.Tensor, name: str, layout: str) -> torch.Tensor:
    """``[B, C, H, W]`` in [0, 1] with C of 1 (grey), 3 (RGB) or 4 (RGBA, composited over white) -> 3 channels."""
    channels = pixels.shape[1]
    if channels == 1:
        return pixels.expand(-1, 3, -1, -1)
    if channels == 4:
        alpha = pixels[:, 3:]
        return pixels[:, :3] * alpha + (1 - alpha)
    if channels != 3:
        raise ValueError(f"`{name}` must have 1, 3 or 4 channels ({layout}), got {channels}.")
    return pixels


def image_to_pixels(image, name: str = "image") -> torch.Tensor:
    """Any documented image form as a float32 ``[B, 3, H, W]`` tensor in ``[-1, 1]``.

    PIL in any mode (converted as :func:`magic_remover.images.to_rgb` does: 16-bit scaled, alpha over white);
    numpy ``HxW``, ``HxWxC`` or ``BxHxWxC`` (uint8, uint16, bool, or float in ``[0, 1]``); tensors ``HxW``,
    ``CxHxW`` or ``BxCxHxW`` (float in ``[-1, 1]``, or uint8); lists of single images. 1-channel images become
    grey RGB, 4-channel numpy/PIL images are composited over white. Out-of-range values raise, never clip.
    """
    if isinstance(image, list):
        return torch.cat([image_to_pixels(item, name) for item in image])
    if isinstance(image, PIL.Image.Image):
        array = np.asarray(to_rgb(image), dtype=np.float32)[None] / 255.0
        return torch.from_numpy(array).permute(0, 3, 1, 2) * 2 - 1  # diffusers' layout, so its convolutions' numbers
    if isinstance(image, np.ndarray):
        unit = numpy_to_unit(image, name)
        if unit.ndim == 2:
            unit = unit[None, :, :, None]
        elif unit.ndim == 3:
            unit = unit[None]
        if unit.shape[-1] not in (1, 3, 4) and unit.shape[1] in (1, 3, 4):
            raise ValueError(
                f"`{name}` as a numpy array is channels-last (HxWxC); got shape {image.shape}, which looks "
                "channels-first: transpose it, or pass a tensor."
            )
        pixels = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32)).permute(0, 3, 1, 2)
        return to_three_channels(pixels, name, "numpy HxWxC") * 2 - 1
    if isinstance(image, torch.Tensor):
        pixels = image.detach().cpu()
        if pixels.ndim == 2:
            pixels = pixels[None, None]
        elif pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 127.5 - 1
        elif not pixels.is_floating_point():
            raise TypeError(f"`{name}` as a tensor must be float (in [-1, 1]) or uint8, got {pixels.dtype}.")
        pixels = pixels.float()
        if not torch.isfinite(pixels).all():
            raise ValueError(f"`{name}` holds NaN or inf values.")
        low, high = float(pixels.min()), float(pixels.max())
        if low < -1 - 1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"`{name}` as a tensor must hold values in [-1, 1], got [{low:.4g}, {high:.4g}] (a [0, 255] image: "
                "divide by 127.5 and subtract 1)."
            )
        if pixels.shape[1] == 4:
            raise ValueError(
                f"`{name}` as a tensor has 4 channels: that is read as latents, which must match the VAE's "
                "latent channels; pass RGB pixels (3 channels) in [-1, 1]."
            )
        return (to_three_channels((pixels.clamp(-1, 1) + 1) / 2, name, "tensor CxHxW") * 2 - 1).contiguous()
    raise TypeError(f"`{name}` must be a PIL.Image.Image, numpy array, torch.Tensor or a list of them, got {type(image).__name__}.")


def mask_arrays(mask_image) -> list[np.ndarray]:
    """Each mask as a float ``[H, W]`` or ``[H, W, C]`` array, on its own scale (``0..255`` for PIL)."""
    masks = mask_image if isinstance(mask_image, list) else [mask_image]
    arrays = []
    for mask in masks:
        if isinstance(mask, PIL.Image.Image):
            arrays.append(np.asarray(mask.convert("RGB") if mask.mode not in ("L", "1", "I", "F") else mask, np.float32))
        elif isinstance(mask, torch.Tensor):
            array = mask.detach().float().cpu().numpy()
            arrays.extend(np.moveaxis(a, 0, -1) if a.ndim == 3 else a for a in (array if array.ndim == 4 else [array]))
        else:
            arrays.extend(np.asarray(a, np.float32) for a in (mask if mask.ndim == 4 else [mask]))
    return arrays


LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")


def grey_unit_mask(mask_image):
    """``mask_image`` as grey values in [0, 1], the form diffusers' mask processor reads right: integer numpy masks
    (uint8 0..255, uint16 0..65535) scaled to [0, 1], as integer numpy images are; coloured numpy (``[H, W, C]``,
    ``[B, H, W, C]``) and tensor (``[C, H, W]``, ``[B, C, H, W]``) masks turned grey by luminance, as PIL masks are
    (the processor would read their channels as a batch of masks). PIL masks and grey arrays are returned as they
    are."""
    if isinstance(mask_image, list):
        return [grey_unit_mask(m) for m in mask_image]
    if isinstance(mask_image, np.ndarray):
        if mask_image.dtype in (np.uint8, np.uint16):
            mask_image = mask_image.astype(np.float32) / float(np.iinfo(mask_image.dtype).max)
        if mask_image.ndim >= 3 and mask_image.shape[-1] in (3, 4):
            mask_image = (mask_image[..., :3].astype(np.float32) @ np.asarray(LUMINANCE, np.float32))[..., None]
    elif isinstance(mask_image, torch.Tensor) and mask_image.ndim >= 3 and mask_image.shape[-3] in (3, 4):
        weights = torch.tensor(LUMINANCE, dtype=mask_image.dtype, device=mask_image.device).view(3, 1, 1)
        mask_image = (mask_image[..., :3, :, :] * weights).sum(-3, keepdim=True)
    return mask_image


def check_mask_values(mask_image) -> None:
    """A user mask is white (1) where removal may happen; soft values keep their weight.

    An all-black mask (nothing to remove) is a ``ValueError``; a coloured RGB mask is converted by luminance, as
    ``PIL.Image.convert("L")`` does, with a logged warning; a float array or tensor outside [0, 1] is a ``ValueError``
    (integer numpy masks are scaled, see :func:`grey_unit_mask`). Runs before any model pass.
    """
    masks = mask_image if isinstance(mask_image, list) else [mask_image]
    # values are checked as the processor will read them (grey, in [0, 1]); colour on the mask as it was given
    pairs = [(m, a, given) for m in masks for a, given in zip(mask_arrays(grey_unit_mask(m)), mask_arrays(m))]
    for mask, array, given in pairs:
        if not np.isfinite(array).all():
            raise ValueError("`mask_image` holds NaN or inf values; expected values in [0, 1] (or 0..255 for PIL).")
        if not isinstance(mask, PIL.Image.Image) and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"`mask_image` as a float array or tensor must hold values in [0, 1], got {array.min():g} to "
                f"{array.max():g}; pass uint8 numpy (0..255), a PIL image, or divide by 255."
            )
        if array.max() <= 0:
            raise ValueError("`mask_image` is all black: nothing would be removed. Paint the target's region white.")
        if given.ndim == 3 and given.shape[-1] >= 3 and not (
            np.array_equal(given[..., 0], given[..., 1]) and np.array_equal(given[..., 1], given[..., 2])
        ):
            logger.warning(
                "`mask_image` is coloured; it is converted to grey by luminance (0.299 R + 0.587 G + 0.114 B). "
                "Pass a greyscale mask to say exactly where removal may happen."
            )

