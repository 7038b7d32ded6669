"""Checks and conversions of a removal's inputs that need no model: images, masks and scalar arguments.

Every check raises a ``ValueError`` or ``TypeError`` naming the argument and what was expected, before any model pass.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import logging

from .images import to_rgb
from .inversion import INVERSION_METHODS, SCALE_FREE_METHODS

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


def check_optional_fraction(value, name: str, includes_one: bool) -> None:
    """``None``, or a finite number in ``(0, 1)`` (``(0, 1]`` with ``includes_one``)."""
    if value is None:
        return
    interval = "(0, 1]" if includes_one else "(0, 1)"
    if not is_number(value):
        raise TypeError(f"`{name}` must be None or a number in {interval}, got {value!r}.")
    check_finite(value, name)
    if not (0.0 < value < 1.0 or (includes_one and value == 1.0)):
        raise ValueError(f"`{name}` must be in {interval}, got {value}.")


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
    """A numpy image's samples as float32 in [0, 1], diffusers' convention for numpy: uint8 / 255, uint16 / 65535, bool
    as 0/1 (diffusers reads only floats right), floats as they are, which must already lie in [0, 1]. Out-of-range
    values are refused, never clipped."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        return (array.astype(np.float64) / float(np.iinfo(array.dtype).max)).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
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


def diffusers_image(image, name: str = "image"):
    """One image input (not a list) in the form diffusers' ``VaeImageProcessor.preprocess`` reads right, checked.

    What the processor lacks is done here: PIL in every mode through :func:`magic_remover.images.to_rgb` (16-bit
    scaled, alpha over white); numpy ``HxW``, ``HxWxC`` or ``BxHxWxC`` of any of :func:`numpy_to_unit`'s dtypes, as
    float32 ``BxHxWx3`` in [0, 1]; tensors ``HxW``, ``CxHxW`` or ``BxCxHxW``, uint8 and bool scaled to [0, 1], as
    float32 ``Bx3xHxW``. Float tensors keep their range: [0, 1], or [-1, 1], which the processor still accepts (with
    its deprecation warning) when a value is negative, as in every diffusers pipeline. 1-channel images become grey
    RGB, 4-channel numpy images are composited over white; a 4-channel tensor would be read as latents and is refused.
    Anything outside these ranges, NaN and inf raise, naming ``name``.
    """
    if isinstance(image, PIL.Image.Image):
        return to_rgb(image)
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
        pixels = to_three_channels(torch.from_numpy(np.ascontiguousarray(unit)).permute(0, 3, 1, 2), name, "numpy HxWxC")
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()
    if isinstance(image, torch.Tensor):
        pixels = image.detach().cpu()
        pixels = pixels[None, None] if pixels.ndim == 2 else pixels[None] if pixels.ndim == 3 else pixels
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
        elif pixels.dtype == torch.bool:
            pixels = pixels.float()
        elif not pixels.is_floating_point():
            raise TypeError(f"`{name}` as a tensor must be float (in [0, 1]), uint8 or bool, got {pixels.dtype}.")
        pixels = pixels.float()
        if not torch.isfinite(pixels).all():
            raise ValueError(f"`{name}` holds NaN or inf values.")
        low, high = float(pixels.min()), float(pixels.max())
        if low < -1 - 1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"`{name}` as a float tensor must hold values in [0, 1] (diffusers' convention; [-1, 1] is also read), "
                f"got [{low:.4g}, {high:.4g}]; divide a [0, 255] image by 255."
            )
        if pixels.shape[1] == 4:
            raise ValueError(
                f"`{name}` as a tensor has 4 channels: that is read as latents, which must match the VAE's "
                "latent channels; pass RGB pixels (3 channels) in [0, 1]."
            )
        if pixels.shape[1] not in (1, 3):
            raise ValueError(f"`{name}` must have 1 or 3 channels (tensor CxHxW), got {pixels.shape[1]}.")
        # rounding may step just outside the range; the processor reads the sign of the minimum, so keep it
        pixels = pixels.clamp(-1, 1) if low < 0 else pixels.clamp(0, 1)
        return pixels.expand(-1, 3, -1, -1).contiguous()
    raise TypeError(f"`{name}` must be a PIL.Image.Image, numpy array, torch.Tensor or a list of them, got {type(image).__name__}.")


#: Reads images as a pipeline's own processor does, without resizing: the size is the pipeline's business
UNRESIZED_PROCESSOR = VaeImageProcessor(do_resize=False)


def image_to_pixels(image, name: str = "image", processor: VaeImageProcessor | None = None) -> torch.Tensor:
    """Any documented image form (see :func:`diffusers_image`), or a list of single images, as a float32
    ``[B, 3, H, W]`` tensor in ``[-1, 1]`` at its own size, through ``processor.preprocess`` (a pipeline's
    ``image_processor``; by default one that never resizes)."""
    processor = processor or UNRESIZED_PROCESSOR
    images = image if isinstance(image, list) else [image]
    batches = []
    for item in images:
        ready = diffusers_image(item, name)
        height, width = (ready.height, ready.width) if isinstance(ready, PIL.Image.Image) else (
            ready.shape[1:3] if isinstance(ready, np.ndarray) else ready.shape[-2:]
        )  # fmt: skip
        # the size it has: a resizing processor leaves it as it is, and the pipeline resizes as it needs
        batches.append(processor.preprocess(ready, height=int(height), width=int(width)).float())
    # one memory layout for every form, so the same pixels give the same numbers: the autoencoder's convolutions
    # round differently on channels-last and contiguous inputs; channels-last is what PIL images come as
    return torch.cat(batches).contiguous(memory_format=torch.channels_last)


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
    """``mask_image`` as grey float32 values in [0, 1], the form diffusers' mask processor reads right: uint8 masks
    (numpy or tensor, 0..255) and uint16 numpy masks scaled to [0, 1], as such images are; bool masks as 0/1, every
    other dtype (float16, int64 0/1 masks, ...) as float32 by value; coloured numpy (``[H, W, C]``,
    ``[B, H, W, C]``) and tensor (``[C, H, W]``, ``[B, C, H, W]``) masks turned grey by luminance, as PIL masks are
    (the processor would read their channels as a batch of masks). PIL masks and grey arrays are returned as they
    are."""
    if isinstance(mask_image, list):
        return [grey_unit_mask(m) for m in mask_image]
    if isinstance(mask_image, np.ndarray):
        if mask_image.dtype in (np.uint8, np.uint16):
            mask_image = mask_image.astype(np.float32) / float(np.iinfo(mask_image.dtype).max)
        elif mask_image.dtype != np.float32:  # bool as 0/1, other integers and floats by value (checked to [0, 1])
            mask_image = mask_image.astype(np.float32)
        if mask_image.ndim >= 3 and mask_image.shape[-1] in (3, 4):
            mask_image = (mask_image[..., :3].astype(np.float32) @ np.asarray(LUMINANCE, np.float32))[..., None]
    if isinstance(mask_image, torch.Tensor):  # as tensor images: uint8 over 255, bool as 0/1, the rest by value
        mask_image = mask_image.float() / 255.0 if mask_image.dtype == torch.uint8 else mask_image.float()
    if isinstance(mask_image, torch.Tensor) and mask_image.ndim >= 3 and mask_image.shape[-3] in (3, 4):
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
                f"`mask_image` as an array or tensor must hold values in [0, 1] (uint8: 0..255), got {array.min():g} "
                f"to {array.max():g}; pass uint8 (0..255), a PIL image, or divide by 255."
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


def check_invert_inputs(method, num_inner_steps, learning_rate, early_stop_epsilon) -> None:
    """``invert``'s own arguments."""
    if method not in INVERSION_METHODS:
        raise ValueError(f"`method` must be one of {INVERSION_METHODS}, got {method!r}.")
    if not (isinstance(num_inner_steps, int) and not isinstance(num_inner_steps, bool) and num_inner_steps >= 1):
        raise ValueError(f"`num_inner_steps` must be a positive int, got {num_inner_steps!r}.")
    check_finite(learning_rate, "learning_rate")
    check_finite(early_stop_epsilon, "early_stop_epsilon")
    if not (is_number(learning_rate) and learning_rate > 0):
        raise ValueError(f"`learning_rate` must be a number > 0, got {learning_rate!r}.")
    if not (is_number(early_stop_epsilon) and early_stop_epsilon >= 0):
        raise ValueError(f"`early_stop_epsilon` must be a number >= 0, got {early_stop_epsilon!r}.")
    warn_if_large(learning_rate, "learning_rate", "1e-3 to 1e-1 of null-text optimisation", 1.0)


def check_common_inputs(num_inference_steps, guidance_scale, generator, num_train: int) -> None:
    """The arguments ``invert`` and ``__call__`` share; ``num_train`` is the scheduler's training timesteps."""
    num_train = int(num_train)
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool):
        raise TypeError(f"`num_inference_steps` must be an int, got {type(num_inference_steps).__name__}.")
    if not 1 <= num_inference_steps <= num_train:
        raise ValueError(f"`num_inference_steps` must be between 1 and {num_train}, got {num_inference_steps}.")
    if not is_number(guidance_scale):
        raise TypeError(f"`guidance_scale` must be a number, got {type(guidance_scale).__name__}.")
    check_finite(guidance_scale, "guidance_scale")
    warn_if_large(guidance_scale, "guidance_scale", "1 to 20 of classifier-free guidance", 50.0)
    if not guidance_scale >= 1.0:
        raise ValueError(
            f"`guidance_scale` must be >= 1 (classifier-free guidance w = 1 + s), got {guidance_scale}."
        )
    generators = generator if isinstance(generator, list) else [generator]
    if not all(g is None or isinstance(g, torch.Generator) for g in generators):
        raise TypeError(f"`generator` must be a torch.Generator, a list of them, or None, got {generator!r}.")


def check_prompt(prompt, batch: int) -> list[str]:
    """``prompt`` as one caption per image."""
    if isinstance(prompt, str):
        prompts = [prompt] * batch
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise TypeError(f"`prompt` must be a str or a non-empty list of str, got {prompt!r}.")
    if len(prompts) != batch:
        raise ValueError(f"`prompt` has {len(prompts)} entries but {batch} image(s) were given.")
    if any(not p.strip() for p in prompts):
        raise ValueError("`prompt` must describe the image and name the target; got an empty prompt.")
    return prompts


def check_inversion_matches(inversion, prompts, num_inference_steps, guidance_scale, method, schedule, z0):
    def mismatch(what, made, used):
        raise ValueError(
            f"`inversion` was made with {what}={made!r} but this call uses {used!r}; call with the inversion's "
            f"settings or run `pipe.invert` again with these."
        )

    if inversion.num_inference_steps != num_inference_steps:
        mismatch("num_inference_steps", inversion.num_inference_steps, num_inference_steps)
    if inversion.method not in SCALE_FREE_METHODS and abs(inversion.guidance_scale - float(guidance_scale)) > 1e-6:
        mismatch("guidance_scale", inversion.guidance_scale, guidance_scale)
    if inversion.method != method:
        mismatch("method (`inversion_method`)", inversion.method, method)
    if list(inversion.prompt) != list(prompts):
        mismatch("prompt", inversion.prompt, prompts)
    if not torch.equal(inversion.timesteps.cpu(), schedule.timesteps.cpu()):
        raise ValueError(
            "`inversion` was made with other timesteps than this pipeline's scheduler config gives; "
            "invert again with this pipeline's scheduler."
        )
    if z0 is not None:
        made = inversion.latents[0].to(z0.device)
        if made.shape != z0.shape:
            raise ValueError(
                f"`inversion` was made from an image of size {tuple(inversion.image_size)} (batch "
                f"{inversion.batch_size}); this `image` does not match it."
            )
        if (made - z0).abs().mean() > 0.05 * z0.abs().mean() + 1e-6:
            raise ValueError("`inversion` was made from a different image than `image`; invert this image first.")

def check_inversion_text_matches(inversion, prompt_embeds, clip_skip, cross_attention_kwargs):
    """What the inversion's embeddings and trajectory depend on besides ``_check_inversion_matches``' settings."""
    lora_scale = float((cross_attention_kwargs or {}).get("scale", 1.0))
    recorded = [
        ("clip_skip", inversion.clip_skip, clip_skip),
        ("cross_attention_kwargs['scale'] (LoRA scale)", inversion.lora_scale, lora_scale),
    ]
    for what, made, used in recorded:
        if made != used:
            raise ValueError(
                f"`inversion` was made with {what}={made!r} but this call uses {used!r}; call with the "
                "inversion's settings or run `pipe.invert` again with these."
            )
    if prompt_embeds is not None:
        made = inversion.prompt_embeds
        if made.shape != prompt_embeds.shape or not torch.allclose(
            made, prompt_embeds.to(made.device, torch.float32), atol=1e-5
        ):
            raise ValueError("`prompt_embeds` differ from the embeddings `inversion` was made with.")
