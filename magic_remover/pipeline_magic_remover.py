"""MagicRemover (Yang et al., 2023): tuning-free, text-guided object removal with Stable Diffusion.

``__call__`` follows Algorithm 1 of the paper's appendix A.1. Sibling modules are imported relatively so this file
also loads through ``DiffusionPipeline.from_pretrained(..., custom_pipeline=<this file>, trust_remote_code=True)``.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import FromSingleFileMixin, StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import (
    USE_PEFT_BACKEND,
    BaseOutput,
    logging,
    replace_example_docstring,
    scale_lora_layers,
    unscale_lora_layers,
)
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import is_torchvision_available

if is_torchvision_available():
    from transformers import CLIPImageProcessor
else:  # transformers 5 warns when `CLIPImageProcessor` falls back to its PIL class; ask for that class by its name
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # transformers 4: the PIL class is `CLIPImageProcessor` itself
        from transformers import CLIPImageProcessor

from .attention_processors import (
    CFG_BATCH,
    CONDITIONAL,
    EDIT,
    PASSTHROUGH,
    RECONSTRUCT,
    SINGLE,
    UNCONDITIONAL,
    RemovalAttentionState,
    aggregate_cross_attention,
    default_protected_words,
    protected_dominance,
    protection_factor,
    attention_energy,
    attention_layer_names,
    automatic_mask,
    build_processors,
    installed_processors,
    normalize_map,
    product_map,
    quantile_energy,
    select_layers,
    top_fraction_mask,
    word_maps,
)
from .content_initialization import check_content_initialization, content_shifted_latents, telea_prefill
from .images import is_far_beyond, to_rgb, trained_size
from .inversion import (
    INVERSION_METHODS,
    SCALE_FREE_METHODS,
    DDIMSchedule,
    MagicRemoverInversion,
    classifier_free_guidance,
    classifier_optimization_step,
    ddim_inversion,
    ddim_step,
    direct_inversion_correction,
    null_text_optimization,
    check_inversion_model,  # issue 25
    model_fingerprint,  # issue 25
    model_name,  # issue 25
    timesteps_in_range,
    to_epsilon,
)

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
ENERGIES = ("paper", "quantile")
GRADIENT_WEIGHTINGS = ("attention", "binary")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import load_image
        >>> from magic_remover import MagicRemoverPipeline

        >>> pipe = MagicRemoverPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16, safety_checker=None
        ... ).to("cuda")
        >>> image = load_image("dog_on_grass.png")
        >>> out = pipe(image=image, prompt="a photo of a dog on the grass", target="dog")
        >>> out.images[0].save("no_dog.png")
        >>> mask = out.attention_maps[0]  # the soft mask the user never drew, in [0, 1]

        >>> # one inversion, many removals
        >>> inv = pipe.invert(image, "a photo of a dog and a ball on the grass")
        >>> no_ball = pipe(prompt=inv.prompt, target="ball", inversion=inv).images[0]
        ```
"""


@dataclass
class MagicRemoverPipelineOutput(BaseOutput):
    """
    Args:
        images: the results, at the input image's size (PIL list, ``[B, H, W, 3]`` array or ``[B, 3, H, W]`` tensor,
            or latents for ``output_type="latent"``).
        attention_maps: per image, the target's soft map in ``[0, 1]`` at image resolution, ``[B, H, W]`` (array, or
            tensor for ``"pt"``/``"latent"``): the reconstruction branch's cross-attention averaged over the guided
            steps, i.e. the mask the user never drew.
        reconstructions: the reconstruction branch's images, in the same format as ``images``.
        target_attention: mean target attention per guided step and branch (``"timesteps"``, ``"reconstruction"``,
            ``"edit"``, each ``[steps, B]``): the edit branch's falls below the reconstruction's as the object goes.
        inversion: the inversion used; pass it back as ``inversion=`` to remove something else from the same image.
        nsfw_content_detected: the safety checker's verdict, or ``None`` without one.
    """

    images: Any
    attention_maps: Any
    reconstructions: Any = None
    target_attention: dict | None = None
    inversion: MagicRemoverInversion | None = None
    nsfw_content_detected: list[bool] | None = None


DEFAULTS_FILE = "magic_remover_defaults.json"


def read_removal_defaults(folder) -> dict:
    """The tuned call settings a model folder ships in ``magic_remover_defaults.json`` (``{}`` without one).

    Keys are ``__call__`` argument names; an unknown key is a ``ValueError`` naming the file, so a typo never passes
    silently. Stable Diffusion checkpoints carry no such file and keep the paper's defaults.
    """
    path = Path(os.fspath(folder)) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    settings = json.loads(path.read_text())
    known = _CALL_ARGUMENTS
    unknown = sorted(set(settings) - known)
    if not isinstance(settings, dict) or unknown:
        raise ValueError(f"{path} names settings `__call__` does not take: {unknown}; expected a subset of {sorted(known)}.")
    return settings


#: ``invert``'s default, and ``__call__``'s without an ``inversion``: chosen by ``benchmarks/speed.py`` (not the paper's)
DEFAULT_INVERSION_METHOD = "negative-prompt"


def _with_model_defaults(renamed: dict | None = None):
    """Decorator: arguments the caller did not pass take the loaded model's tuned values (``removal_defaults``).

    An explicit argument always wins; ``renamed`` maps a settings key to this method's own name for it (``invert``
    calls the inversion method ``method``). During the call ``self._defaults_filled`` names the arguments filled in,
    so a warning meant for a user's own argument ("it has no effect here") is not raised for a model's setting.
    """
    renamed = renamed or {}

    def decorate(method):
        signature = inspect.signature(method)

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            defaults = getattr(self, "_removal_defaults", None)
            filled = []
            if defaults:
                passed = signature.bind_partial(self, *args, **kwargs).arguments
                for key, value in defaults.items():
                    name = renamed.get(key, key)
                    if name in signature.parameters and name not in passed:
                        kwargs[name] = value
                        filled.append(name)
            previous = getattr(self, "_defaults_filled", frozenset())
            self._defaults_filled = frozenset(filled)
            try:
                return method(self, *args, **kwargs)
            finally:
                self._defaults_filled = previous

        return wrapper

    return decorate


def vae_latents(encoder_output) -> torch.Tensor:
    """The deterministic latent of a VAE encoding: the posterior's mode, or ``.latents`` where the VAE has no
    distribution (``AutoencoderTiny``). diffusers' img2img ``retrieve_latents`` with ``sample_mode="argmax"`` does the
    same; importing it loads the whole Stable Diffusion pipeline package (and transformers' image-processor notices)."""
    if hasattr(encoder_output, "latent_dist"):
        return encoder_output.latent_dist.mode()
    if hasattr(encoder_output, "latents"):
        return encoder_output.latents
    raise AttributeError("The VAE's encode() output has neither `latent_dist` nor `latents`.")


def _is_number(value) -> bool:
    """A real number (Python, numpy or a 0-d tensor's ``.item()``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_finite(value, name: str) -> None:
    """NaN and inf are refused up front, naming the argument (they would surface steps later as another
    argument's ``FloatingPointError``)."""
    if _is_number(value) and not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")


def _warn_if_large(value, name: str, usual: str, limit: float) -> None:
    """A finite but absurd magnitude runs, with a warning saying what is usual."""
    if _is_number(value) and abs(float(value)) > limit:
        logger.warning(f"`{name}`={value!r} is far outside the usual {usual}; expect a broken result.")


def _negative_prompts(negative_prompt, prompt, batch: int) -> list[str]:
    """The unconditional prompts for ``encode_prompt``: as in SD, the empty prompt unless ``negative_prompt``."""
    if negative_prompt is None:
        return [""] * batch
    if prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(
            f"`negative_prompt` must be of the same type as `prompt`, got {type(negative_prompt).__name__}."
        )
    negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != batch:
        raise ValueError(f"`negative_prompt` has {len(negatives)} entries but `prompt` has {batch}.")
    return negatives


def _check_timestep_range(value, name: str, num_train_timesteps: int) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise TypeError(f"`{name}` must be a (low, high) pair of numbers in training-timestep units, got {value!r}.")
    for bound in value:
        _check_finite(bound, name)
    low, high = float(value[0]), float(value[1])
    if not (0 <= low < high <= num_train_timesteps):
        raise ValueError(f"`{name}` must satisfy 0 <= low < high <= {num_train_timesteps}, got {value!r}.")
    return low, high


def _image_batch_and_size(image, name: str) -> tuple[int, tuple[int, int]]:
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


def _numpy_to_unit(array: np.ndarray, name: str) -> np.ndarray:
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


def _to_three_channels(pixels: torch.Tensor, name: str, layout: str) -> torch.Tensor:
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
        unit = _numpy_to_unit(image, name)
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
        return _to_three_channels(pixels, name, "numpy HxWxC") * 2 - 1
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
        return (_to_three_channels((pixels.clamp(-1, 1) + 1) / 2, name, "tensor CxHxW") * 2 - 1).contiguous()
    raise TypeError(f"`{name}` must be a PIL.Image.Image, numpy array, torch.Tensor or a list of them, got {type(image).__name__}.")


#: Below this many tokens a vocabulary is a toy one (the embedded model's has 149; CLIP's 49408): a word it can only
#: spell letter by letter is a word its text encoder never learned.
SMALL_VOCABULARY = 10_000


def _check_known_word(tokenizer, word: str, ids: list[int]) -> None:
    """Refuses a target word the tokenizer does not know: one with unknown tokens (an emoji in a vocabulary without
    bytes for it), or, in a small vocabulary, one it can only spell as single characters. Such a word has no
    attention map of its own, and the removal would edit whatever the map happened to find."""
    unknown = tokenizer.unk_token_id
    if unknown is not None and unknown in ids:
        raise ValueError(
            f"`target` word {word!r} contains characters the tokenizer does not know (they become its unknown "
            f"token {tokenizer.unk_token!r}); name the object with a word of the prompt.{_known_words_hint(tokenizer)}"
        )
    if len(tokenizer) < SMALL_VOCABULARY and len(ids) > 1:
        pieces = [piece.replace("</w>", "") for piece in tokenizer.convert_ids_to_tokens(ids)]
        if any(len(piece) <= 1 for piece in pieces):
            raise ValueError(
                f"`target` word {word!r} is not in the tokenizer's {len(tokenizer)}-token vocabulary (it is spelt "
                f"{'+'.join(pieces)}): the text encoder never learned it.{_known_words_hint(tokenizer)}"
            )


def _known_words_hint(tokenizer, count: int = 12) -> str:
    """For a small vocabulary, a few of the whole words it knows; nothing for a real one."""
    if len(tokenizer) >= SMALL_VOCABULARY:
        return ""
    words = sorted(
        token[: -len("</w>")]
        for token in tokenizer.get_vocab()
        if token.endswith("</w>") and len(token) > len("</w>") + 2 and token[: -len("</w>")].isalpha()
    )
    return f" Words it knows include: {', '.join(words[:count])}." if words else ""


def _mask_arrays(mask_image) -> list[np.ndarray]:
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
    pairs = [(m, a, given) for m in masks for a, given in zip(_mask_arrays(grey_unit_mask(m)), _mask_arrays(m))]
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


def find_target_tokens(tokenizer, prompt: str, target: str) -> list[list[int]]:
    """Token positions (in the padded sequence, start token at 0) of each word of ``target`` in ``prompt``.

    Words split into several tokens keep all of them; a word or phrase that occurs several times keeps every
    occurrence; case follows the tokenizer (CLIP lower-cases). A match must start at a word boundary, so "dog" is not
    found inside "hotdog". Raises ``ValueError`` naming the target if it is not in the prompt or falls past the
    tokenizer's length limit.
    """
    words = target.split()
    if not words:
        raise ValueError(f"`target` must name a word of the prompt, got an empty string {target!r}.")
    prompt_ids = tokenizer(prompt, add_special_tokens=True).input_ids
    word_ids = [tokenizer(word, add_special_tokens=False).input_ids for word in words]
    if any(len(ids) == 0 for ids in word_ids):
        raise ValueError(f"`target` {target!r} contains a word the tokenizer maps to no token.")
    phrase = [token for ids in word_ids for token in ids]
    vocab_tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
    uses_word_ends = any(isinstance(tok, str) and tok.endswith("</w>") for tok in vocab_tokens)
    # a special token (start, end, or the unknown token an emoji becomes) ends whatever came before it
    boundaries = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id} - {None}

    def starts_word(position: int) -> bool:
        if position == 0 or not uses_word_ends:
            return True
        previous_id, previous = prompt_ids[position - 1], vocab_tokens[position - 1]
        return previous_id in boundaries or (isinstance(previous, str) and previous.endswith("</w>"))

    positions: list[list[int]] = [[] for _ in words]
    for start in range(len(prompt_ids) - len(phrase) + 1):
        if prompt_ids[start : start + len(phrase)] == phrase and starts_word(start):
            offset = start
            for n, ids in enumerate(word_ids):
                positions[n].extend(range(offset, offset + len(ids)))
                offset += len(ids)
    if not positions[0]:
        raise ValueError(f"`target` {target!r} does not occur in the prompt {prompt!r}; name a word or phrase of the prompt.")
    for word, ids in zip(words, word_ids):  # present, but perhaps as unknown tokens or spelt letter by letter
        _check_known_word(tokenizer, word, ids)
    limit = tokenizer.model_max_length - 1
    if max(max(p) for p in positions) >= limit:
        raise ValueError(
            f"`target` {target!r} falls past the tokenizer's {tokenizer.model_max_length}-token limit in the prompt; "
            "shorten the prompt."
        )
    return positions


def protected_token_groups(tokenizer, prompt: str, targets: list[str], protect) -> list[list[int]]:
    """Token positions of each protected word of ``prompt``: ``protect`` (words of the prompt; an absent one is a
    ``ValueError`` naming it), or for ``None`` the prompt's other objects (:func:`default_protected_words`; a word the
    tokenizer cannot find as a whole word is skipped)."""
    words = default_protected_words(prompt, targets) if protect is None else list(protect)
    groups = []
    for word in words:
        try:
            groups.append([p for positions in find_target_tokens(tokenizer, prompt, word) for p in positions])
        except ValueError as error:
            if protect is not None:
                raise ValueError(f"`protect` {word!r} is not a word of the prompt {prompt!r}: {error}") from None
    return groups


def protected_word_maps(normalized_words: list[torch.Tensor], dominance, cutoff: float | None = None) -> list[torch.Tensor]:
    """An object's normalised word maps lowered where a protected word dominates it, and zero where it dominates by
    more than ``1 / cutoff`` (ours, not in the paper; :func:`~attention_processors.protection_factor`)."""
    if dominance is None:
        return normalized_words
    factor = protection_factor(product_map([a.detach() for a in normalized_words]), dominance, cutoff)
    return [a * factor for a in normalized_words]


class MagicRemoverPipeline(
    DiffusionPipeline,
    StableDiffusionMixin,
    TextualInversionLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    FromSingleFileMixin,
):
    r"""
    Text-guided, mask-free object removal with a Stable Diffusion 1.x/2.x checkpoint (MagicRemover).

    The components of [`StableDiffusionPipeline`] less its ``image_encoder``, so ``from_pretrained`` and
    ``from_pipe`` work with any SD 1.x/2.x model (an ``image_encoder`` there is left out). IP-Adapter is not
    supported: its image tokens enter through its own attention processors, which this pipeline's replace on the
    layers it guides, so the adapter would be ignored there; rather than a registered component that does nothing,
    there is none (``feature_extractor`` stays, for the safety checker).

    The pipeline never changes its components: attention processors are set only on the layers the method needs and
    restored after each call (also when it raises), and the scheduler is only read (the method runs its DDIM steps from
    the scheduler's config).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "reconstruction_latents", "prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker=None,
        feature_extractor: CLIPImageProcessor = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__()
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("A safety checker needs a `feature_extractor`; pass one, or pass `safety_checker=None`.")
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_convert_grayscale=True
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    # ------------------------------------------------------------------------------------------------------------
    # Building blocks
    # ------------------------------------------------------------------------------------------------------------

    @property
    def removal_defaults(self) -> dict:
        """The call settings used for every argument a call leaves out: those the model folder ships in
        ``magic_remover_defaults.json`` (read by ``from_pretrained``; the embedded model's were tuned by
        ``benchmarks/tune_embedded.py``), else ``{}`` (the paper's defaults, as for Stable Diffusion checkpoints).
        An explicit argument always wins. Assign a dict to change them, ``{}`` to use the paper's."""
        return dict(getattr(self, "_removal_defaults", {}) or {})

    @removal_defaults.setter
    def removal_defaults(self, settings: dict) -> None:
        if not isinstance(settings, dict):
            raise TypeError(f"`removal_defaults` must be a dict of `__call__` arguments, got {type(settings).__name__}.")
        known = _CALL_ARGUMENTS
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"`removal_defaults` names settings `__call__` does not take: {unknown}.")
        self._removal_defaults = dict(settings)

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self):
        return getattr(self, "_interrupt", False)

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    @property
    def cross_attention_kwargs(self):
        return getattr(self, "_cross_attention_kwargs", None)

    @property
    def clip_skip(self):
        return getattr(self, "_clip_skip", None)

    @property
    def _step_guidance_scale(self) -> float:
        """The CFG scale the current step uses, read afresh at every step so that a step-end callback can change
        ``pipe._guidance_scale`` (diffusers' ``SDCFGCutoffCallback`` sets it to 0). As in ``StableDiffusionPipeline``,
        guidance off (a scale <= 1) means the conditional prediction alone, i.e. scale 1."""
        return float(self._guidance_scale) if self.do_classifier_free_guidance else 1.0

    def _prompts(self, prompt) -> list[str]:
        """The prompts as the tokenizer sees them: textual-inversion tokens expanded to their vectors' tokens."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(self, TextualInversionLoaderMixin):
            prompts = [self.maybe_convert_prompt(p, self.tokenizer) for p in prompts]
        return prompts

    def encode_prompt(
        self,
        prompt,
        device,
        num_images_per_prompt,
        do_classifier_free_guidance,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ):
        r"""Encodes ``prompt`` with [`StableDiffusionPipeline.encode_prompt`]'s signature and results.

        Returns ``(prompt_embeds, negative_prompt_embeds)`` in the text encoder's dtype, each repeated
        ``num_images_per_prompt`` times; ``negative_prompt_embeds`` (the empty prompt's unless ``negative_prompt``)
        only with ``do_classifier_free_guidance``. As in SD: textual-inversion tokens are expanded, given
        ``prompt_embeds``/``negative_prompt_embeds`` are used as they are, ``clip_skip`` takes the prompt (not the
        negative prompt) from that many layers before the last, through the final layer norm, and ``lora_scale``
        scales the text encoder's LoRA layers for this call. Unlike SD's, the LoRA scale is undone also when
        encoding raises, and the final layer norm is found in both transformers 4's layout
        (``text_encoder.text_model``) and 5's, where diffusers 0.42's ``clip_skip`` fails.
        """
        if lora_scale is not None and isinstance(self, StableDiffusionLoraLoaderMixin):
            self._lora_scale = lora_scale
        scale_text_lora = lora_scale is not None and USE_PEFT_BACKEND and self.text_encoder is not None
        if scale_text_lora:
            scale_lora_layers(self.text_encoder, lora_scale)
        try:
            prompts = None if prompt is None else self._prompts(prompt)
            batch = len(prompts) if prompts is not None else prompt_embeds.shape[0]
            if prompt_embeds is None:
                prompt_embeds = self._encode_tokens(prompts, device, clip_skip)
            encoder = self.text_encoder if self.text_encoder is not None else self.unet
            prompt_embeds = prompt_embeds.to(dtype=encoder.dtype, device=device)
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            if do_classifier_free_guidance:
                if negative_prompt_embeds is None:
                    negatives = _negative_prompts(negative_prompt, prompt, batch)
                    negative_prompt_embeds = self._encode_tokens(self._prompts(negatives), device, None,
                                                                 max_length=prompt_embeds.shape[1])  # fmt: skip
                negative_prompt_embeds = negative_prompt_embeds.to(dtype=encoder.dtype, device=device)
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        finally:
            if scale_text_lora:
                unscale_lora_layers(self.text_encoder, lora_scale)
        return prompt_embeds, negative_prompt_embeds

    def _encode_tokens(self, prompts: list[str], device, clip_skip, max_length=None) -> torch.Tensor:
        """The text encoder's hidden states for ``prompts`` padded to ``max_length`` (the tokenizer's by default)."""
        max_length = max_length or self.tokenizer.model_max_length
        inputs = self.tokenizer(
            prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        untruncated = self.tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] > inputs.input_ids.shape[-1]:
            removed = self.tokenizer.batch_decode(untruncated[:, max_length - 1 : -1])
            logger.warning(f"Only the first {max_length} tokens of the prompt are used; left out: {removed}")
        uses_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = inputs.attention_mask.to(device) if uses_mask else None
        ids = inputs.input_ids.to(device)
        if clip_skip is None:
            return self.text_encoder(ids, attention_mask=mask)[0]
        hidden = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        model = getattr(self.text_encoder, "text_model", self.text_encoder)  # transformers 4 wraps it, 5 does not
        return model.final_layer_norm(hidden)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Algorithm 1, line 1: ``z_0 = E(x_0)``, deterministic as inversion wants.

        Any VAE diffusers pairs with Stable Diffusion: the posterior's mode where the encoder gives a distribution
        (``AutoencoderKL``, ``AsymmetricAutoencoderKL``, ``ConsistencyDecoderVAE``), its ``.latents`` where it gives
        none (``AutoencoderTiny``); the choice is :func:`vae_latents`, as diffusers' img2img pipelines make it.
        """
        image = image.to(device=self._execution_device, dtype=self.vae.dtype)
        latents = vae_latents(self.vae.encode(image)).float()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def decode_latents_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents / self.vae.config.scaling_factor + shift
        image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0].float()
        if not torch.isfinite(image).all():
            raise FloatingPointError(
                "The VAE decoded NaN or inf values; in float16 use a float32 VAE (e.g. `pipe.vae.to(torch.float32)`) "
                "or an fp16-safe VAE."
            )
        return image

    def _unet_epsilon(self, latents: torch.Tensor, timestep, embeds: torch.Tensor, schedule: DDIMSchedule):
        """One UNet call, its output converted to epsilon in float32 (any prediction type, any UNet dtype)."""
        output = self.unet(
            latents.to(self.unet.dtype), timestep, encoder_hidden_states=embeds.to(self.unet.dtype),
            cross_attention_kwargs=self.cross_attention_kwargs, return_dict=False,
        )[0]
        return to_epsilon(output.float(), latents, schedule.alpha(timestep), schedule.prediction_type)

    def _cfg_epsilon(self, latents, timestep, null_embeds, prompt_embeds, guidance_scale, schedule, state=None, mode=None):
        """Algorithm 1, line 5: ``eps_t = (1 + s) eps(z_t, y) - s eps(z_t, null_t)``.

        One batched UNet call ``[unconditional, conditional]``; one call of the conditional half alone when the two
        halves are the same prediction (negative-prompt inversion: ``null_t`` is the prompt's embedding, and CFG
        reduces to it). With ``state``, the attention pass ``mode`` is started with the batch layout used.
        """
        identical = null_embeds is prompt_embeds or torch.equal(null_embeds, prompt_embeds)
        if state is not None:
            state.start_pass(mode, SINGLE if identical else CFG_BATCH)
        if identical:
            return self._unet_epsilon(latents, timestep, prompt_embeds, schedule)
        noise = self._unet_epsilon(
            torch.cat([latents, latents]), timestep, torch.cat([null_embeds, prompt_embeds]), schedule
        )
        noise_uncond, noise_text = noise.chunk(2)
        return classifier_free_guidance(noise_uncond, noise_text, guidance_scale)

    def _split_cfg_epsilon(self, ctx, latents, step_index, timestep):
        """The edit branch's CFG with only the conditional half in the autograd graph.

        The energy reads the conditional half's cross-attention alone, so the unconditional half is evaluated without
        a graph (ours: the same epsilon as the batched call, less memory and no backward through that half).
        Identical halves (negative-prompt inversion) take one evaluation.
        """
        null_embeds, prompt_embeds = ctx.null_embeddings[step_index], ctx.prompt_embeds
        if null_embeds is prompt_embeds or torch.equal(null_embeds, prompt_embeds):
            ctx.state.start_pass(EDIT, SINGLE)
            return self._unet_epsilon(latents, timestep, prompt_embeds, ctx.schedule)
        with torch.no_grad():
            ctx.state.start_pass(EDIT, UNCONDITIONAL)
            noise_uncond = self._unet_epsilon(latents.detach(), timestep, null_embeds, ctx.schedule)
        ctx.state.start_pass(EDIT, CONDITIONAL)
        noise_text = self._unet_epsilon(latents, timestep, prompt_embeds, ctx.schedule)
        return classifier_free_guidance(noise_uncond, noise_text, self._step_guidance_scale)

    def _is_latent_image(self, image) -> bool:
        """As in img2img pipelines: a tensor with the VAE's latent channel count (4 for SD) given as ``image`` is
        taken as scaled latents ``z_0`` (e.g. an earlier ``output_type="latent"`` result) and not encoded again."""
        first = image[0] if isinstance(image, list) and image else image
        channels = int(getattr(self.vae.config, "latent_channels", 4)) if getattr(self, "vae", None) else 4
        return (
            isinstance(first, torch.Tensor) and first.ndim in (3, 4) and first.shape[-3] == channels
            and channels not in (1, 3)
        )  # fmt: skip

    def _image_batch_and_size(self, image) -> tuple[int, tuple[int, int]]:
        """``(batch, (height, width))`` of ``image`` in pixels (latents count at ``vae_scale_factor`` times their size)."""
        batch, (height, width) = _image_batch_and_size(image, "image")
        if self._is_latent_image(image):
            return batch, (height * self.vae_scale_factor, width * self.vae_scale_factor)
        return batch, (height, width)

    def _check_image(self, image) -> tuple[int, tuple[int, int]]:
        """Every check on ``image`` that needs no model: form, channels, value range, finiteness, size."""
        batch, (height, width) = self._image_batch_and_size(image)
        if self._is_latent_image(image):
            latents = torch.cat(image) if isinstance(image, list) else image
            if not latents.is_floating_point() or not torch.isfinite(latents).all():
                raise ValueError("`image` given as latents must be a float tensor of finite values.")
        else:
            image_to_pixels(image, "image")
            if min(height, width) < self.vae_scale_factor:
                raise ValueError(
                    f"`image` is {height}x{width}; the autoencoder needs at least {self.vae_scale_factor} pixels a side."
                )
        trained = trained_size(self)
        if is_far_beyond(height, width, trained):
            logger.warning(
                f"`image` is {height}x{width}, far beyond the {trained}x{trained} this model was trained at: it will "
                "be slow, use much memory, and the model may not handle it well. Downscale it first (the command line's "
                "`--max-size` does this)."
            )
        return batch, (height, width)

    def _prepare_image(self, image, processing_size=None) -> torch.Tensor:
        """``image`` as ``[B, 3, h, w]`` in [-1, 1] at ``processing_size`` (default: the size rounded down to a
        multiple of ``vae_scale_factor``), resized with antialiased bicubic interpolation."""
        pixels = image_to_pixels(image, "image")
        height, width = pixels.shape[-2:]
        factor = self.vae_scale_factor
        size = tuple(processing_size) if processing_size else (height - height % factor, width - width % factor)
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
        return pixels

    def image_latents(self, image, processing_size=None) -> torch.Tensor:
        """Algorithm 1, line 1 for any ``image`` form: the encoded image, or ``image`` itself when it is latents."""
        if self._is_latent_image(image):
            latents = torch.cat(image) if isinstance(image, list) else image
            latents = latents[None] if latents.ndim == 3 else latents
            if processing_size is not None and tuple(latents.shape[-2:]) != tuple(
                s // self.vae_scale_factor for s in processing_size
            ):
                raise ValueError(f"`image` latents of size {tuple(latents.shape[-2:])} do not match the inversion's.")
            return latents.detach().float().to(self._execution_device)
        return self.encode_image(self._prepare_image(image, processing_size))

    # ------------------------------------------------------------------------------------------------------------
    # Inversion (Algorithm 1, lines 1-3)
    # ------------------------------------------------------------------------------------------------------------

    @_with_model_defaults(renamed={"inversion_method": "method"})
    @torch.no_grad()
    def invert(
        self,
        image,
        prompt: str | list[str],
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        method: str = DEFAULT_INVERSION_METHOD,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inner_steps: int = 10,
        early_stop_epsilon: float = 1e-5,
        learning_rate: float = 1e-2,
        prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> MagicRemoverInversion:
        r"""
        Inverts ``image`` under ``prompt`` (Algorithm 1, lines 1-3) and returns a reusable [`MagicRemoverInversion`].

        Args:
            image: the image(s) to invert (PIL, numpy, tensor in ``[-1, 1]``, or a list).
            prompt: a caption that names the objects to remove later, e.g. ``"a photo of a dog on the grass"``.
            num_inference_steps: DDIM steps T; the removal call must use the same number.
            guidance_scale: CFG scale ``w = 1 + s`` the null embeddings are optimised for; with ``"null-text"`` the
                removal call must use the same one (the other methods do not depend on it).
            method: ``"negative-prompt"`` (default; Miyake et al.'s negative-prompt inversion, 2023: the prompt's own
                embedding as null embedding, forward passes only, CFG then reduces to the conditional prediction,
                evaluated once; chosen by ``benchmarks/speed.py``: on the embedded model 0.18x null-text's time at
                73% held-out success against null-text's 67%, see the README's Speed section; not the paper's),
                ``"direct"`` (Ju et al.'s direct inversion, "PnP Inversion", ICLR 2024: the DDIM trajectory alone,
                T forward passes; the removal loop puts the reconstruction branch back onto it after every step and
                moves the edit branch by the same correction, so the reconstruction is exact by construction),
                ``"null-text"`` (the paper: Mokady et al.'s null-text inversion, ~``num_inner_steps`` forward and
                backward passes per step), ``"ddim"`` (plain DDIM inversion, the empty prompt as null embedding: fast,
                reconstruction drifts under CFG).
            generator: accepted for API symmetry; inversion is deterministic (the VAE posterior's mode is used).
            num_inner_steps, early_stop_epsilon, learning_rate: null-text optimisation settings (Mokady et al.).
            prompt_embeds: ``[B, L, D]`` text embeddings to use instead of encoding ``prompt`` (e.g. weighted
                prompts), as in SD; ``prompt`` is still required, as the text they were made from: the target is
                found among its tokens, so the embeddings must keep its token positions.
            clip_skip: as in SD, encode the prompt from the text encoder's ``clip_skip``-th layer from the end (1: the
                penultimate). Recorded in the inversion; a removal reusing it must use the same.
            cross_attention_kwargs: passed to the UNet's attention processors, as in SD; ``{"scale": s}`` scales
                loaded LoRA layers of the UNet and the text encoder. The scale is recorded in the inversion.
        """
        self._check_text_inputs(prompt, prompt_embeds, clip_skip, cross_attention_kwargs)
        self._check_invert_inputs(method, num_inner_steps, learning_rate, early_stop_epsilon)
        self._check_common_inputs(num_inference_steps, guidance_scale, generator)
        if image is None:
            raise ValueError("`image` is required to invert.")
        batch, image_size = self._check_image(image)
        prompts = self._check_prompt(prompt, batch)
        if prompt_embeds is not None and prompt_embeds.shape[0] != batch:
            raise ValueError(
                f"`prompt_embeds` has a batch of {prompt_embeds.shape[0]} but {batch} image(s) were given."
            )

        device = self._execution_device
        schedule = DDIMSchedule.from_scheduler_config(self.scheduler.config, num_inference_steps)
        z0 = self.image_latents(image)  # line 1
        self._cross_attention_kwargs, self._clip_skip = cross_attention_kwargs, clip_skip
        lora_scale = (cross_attention_kwargs or {}).get("scale")  # where StableDiffusionPipeline reads it
        prompt_embeds, empty = self.encode_prompt(
            prompts, device, 1, True, prompt_embeds=prompt_embeds, lora_scale=lora_scale, clip_skip=clip_skip
        )
        prompt_embeds, empty = prompt_embeds.float(), empty.float()
        noise_fn = lambda z, t, c: self._unet_epsilon(z, t, c, schedule)  # noqa: E731

        with self.progress_bar(total=num_inference_steps) as bar:
            bar.set_description("DDIM inversion")
            trajectory = ddim_inversion(noise_fn, z0, prompt_embeds, schedule, progress=bar.update)  # line 2

        losses: list[float] = []
        if method == "null-text":  # line 3, eq. 6
            with self.progress_bar(total=num_inference_steps) as bar:
                bar.set_description("Null-text optimisation")
                null_embeddings, losses = null_text_optimization(
                    noise_fn,
                    trajectory,
                    prompt_embeds,
                    empty,
                    schedule,
                    guidance_scale,
                    num_inner_steps=num_inner_steps,
                    learning_rate=learning_rate,
                    early_stop_epsilon=early_stop_epsilon,
                    progress=bar.update,
                )
        elif method in ("ddim", "direct"):  # direct: the trajectory alone; the loop corrects each step onto it
            null_embeddings = empty.unsqueeze(0).repeat(num_inference_steps, 1, 1, 1)
        else:  # negative-prompt inversion: the conditional embedding stands for the null one
            null_embeddings = prompt_embeds.unsqueeze(0).repeat(num_inference_steps, 1, 1, 1)

        return MagicRemoverInversion(
            latents=trajectory,
            null_embeddings=null_embeddings,
            prompt_embeds=prompt_embeds,
            timesteps=schedule.timesteps,
            prompt=prompts,
            num_inference_steps=num_inference_steps,
            guidance_scale=float(guidance_scale),
            method=method,
            image_size=image_size,
            processing_size=tuple(int(s) * self.vae_scale_factor for s in z0.shape[-2:]),
            final_losses=losses,
            clip_skip=clip_skip,
            lora_scale=1.0 if lora_scale is None else float(lora_scale),
            model_fingerprint=model_fingerprint(self.unet, self.text_encoder, self.vae),  # issue 25
            model_name=model_name(self.unet),  # issue 25
        )

    # ------------------------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------------------------

    def _check_invert_inputs(self, method, num_inner_steps, learning_rate, early_stop_epsilon):
        if method not in INVERSION_METHODS:
            raise ValueError(f"`method` must be one of {INVERSION_METHODS}, got {method!r}.")
        if not (isinstance(num_inner_steps, int) and not isinstance(num_inner_steps, bool) and num_inner_steps >= 1):
            raise ValueError(f"`num_inner_steps` must be a positive int, got {num_inner_steps!r}.")
        _check_finite(learning_rate, "learning_rate")
        _check_finite(early_stop_epsilon, "early_stop_epsilon")
        if not (_is_number(learning_rate) and learning_rate > 0):
            raise ValueError(f"`learning_rate` must be a number > 0, got {learning_rate!r}.")
        if not (_is_number(early_stop_epsilon) and early_stop_epsilon >= 0):
            raise ValueError(f"`early_stop_epsilon` must be a number >= 0, got {early_stop_epsilon!r}.")
        _warn_if_large(learning_rate, "learning_rate", "1e-3 to 1e-1 of null-text optimisation", 1.0)

    def _check_common_inputs(self, num_inference_steps, guidance_scale, generator):
        num_train = int(self.scheduler.config.num_train_timesteps)
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool):
            raise TypeError(f"`num_inference_steps` must be an int, got {type(num_inference_steps).__name__}.")
        if not 1 <= num_inference_steps <= num_train:
            raise ValueError(f"`num_inference_steps` must be between 1 and {num_train}, got {num_inference_steps}.")
        if not _is_number(guidance_scale):
            raise TypeError(f"`guidance_scale` must be a number, got {type(guidance_scale).__name__}.")
        _check_finite(guidance_scale, "guidance_scale")
        _warn_if_large(guidance_scale, "guidance_scale", "1 to 20 of classifier-free guidance", 50.0)
        if not guidance_scale >= 1.0:
            raise ValueError(
                f"`guidance_scale` must be >= 1 (classifier-free guidance w = 1 + s), got {guidance_scale}."
            )
        generators = generator if isinstance(generator, list) else [generator]
        if not all(g is None or isinstance(g, torch.Generator) for g in generators):
            raise TypeError(f"`generator` must be a torch.Generator, a list of them, or None, got {generator!r}.")

    def _check_prompt(self, prompt, batch: int) -> list[str]:
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

    def _check_text_inputs(self, prompt, prompt_embeds, clip_skip, cross_attention_kwargs, num_images_per_prompt=1,
                           inversion=None):  # fmt: skip
        """The arguments shared with ``StableDiffusionPipeline``'s text side, checked before any model pass."""
        if not isinstance(num_images_per_prompt, int) or isinstance(num_images_per_prompt, bool):
            raise TypeError(f"`num_images_per_prompt` must be an int, got {num_images_per_prompt!r}.")
        if num_images_per_prompt != 1:
            raise ValueError(
                f"`num_images_per_prompt` must be 1, got {num_images_per_prompt}: the removal is deterministic (DDIM "
                "with sigma = 0 from one inversion), so every image of a prompt would be the same. Pass several images "
                "(a list) or several targets instead."
            )
        if prompt_embeds is not None:
            if prompt is None and inversion is None:
                raise ValueError(
                    "`prompt_embeds` needs `prompt` as well: the target is found among the prompt's tokens, so pass "
                    "the text the embeddings were made from (or an `inversion`, which records it)."
                )
            if not isinstance(prompt_embeds, torch.Tensor):
                raise TypeError(f"`prompt_embeds` must be a torch.Tensor, got {type(prompt_embeds).__name__}.")
            width = self.unet.config.cross_attention_dim
            if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != width:
                raise ValueError(
                    f"`prompt_embeds` must be [batch, tokens, {width}] (the UNet's cross_attention_dim), got shape "
                    f"{tuple(prompt_embeds.shape)}."
                )
            if not torch.isfinite(prompt_embeds).all():
                raise ValueError("`prompt_embeds` holds NaN or inf values.")
        if clip_skip is not None:
            layers = int(self.text_encoder.config.num_hidden_layers)
            if not isinstance(clip_skip, int) or isinstance(clip_skip, bool):
                raise TypeError(f"`clip_skip` must be None or an int, got {clip_skip!r}.")
            if not 0 <= clip_skip < layers:
                raise ValueError(
                    f"`clip_skip` must be in [0, {layers - 1}] for this {layers}-layer text encoder, got {clip_skip}."
                )
        if cross_attention_kwargs is not None:
            if not isinstance(cross_attention_kwargs, dict):
                raise TypeError(
                    f"`cross_attention_kwargs` must be a dict or None, got {type(cross_attention_kwargs).__name__}."
                )
            scale = cross_attention_kwargs.get("scale", 1.0)
            if not (_is_number(scale) and math.isfinite(scale)):
                raise ValueError(
                    f"`cross_attention_kwargs['scale']` (the LoRA scale) must be a finite number, got {scale!r}."
                )

    def check_inputs(
        self,
        image,
        prompt,
        target,
        mask_image,
        inversion,
        num_inference_steps,
        guidance_scale,
        erase_lambda,
        attention_guidance_scale,
        guidance_timesteps,
        optimization_timesteps,
        optimization_steps,
        energy,
        gradient_weighting,
        inversion_method,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
        blend_outside_attention_mask=False,
        attention_mask_threshold=None,
        keep_input_outside_attention_mask=False,
        protect=None,
        protect_cutoff=None,
        refocus_w_pos=0.0,
        refocus_w_neg=0.0,
        refocus_timesteps=(700, 1000),
        content_initialization=None,
        attention_mask_components=None,
    ):
        self._check_common_inputs(num_inference_steps, guidance_scale, generator)
        num_train = int(self.scheduler.config.num_train_timesteps)
        if image is None and inversion is None:
            raise ValueError("Pass `image` (to invert) or `inversion` (from `pipe.invert`).")
        if inversion is not None and not isinstance(inversion, MagicRemoverInversion):
            raise TypeError(f"`inversion` must be a MagicRemoverInversion from `pipe.invert`, got {type(inversion).__name__}.")
        if inversion is not None:  # issue 25: made by these models, before any model pass
            check_inversion_model(inversion, self.unet, self.text_encoder, self.vae)
        batch = inversion.batch_size if inversion is not None else None
        if image is not None:
            batch = self._check_image(image)[0]
        if prompt is None and inversion is None:
            raise ValueError("`prompt` is required: a caption of the image that names the target.")
        targets = [target] if isinstance(target, str) else target
        if not (isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets)):
            raise TypeError(f"`target` must be a word or phrase of the prompt (str) or a non-empty list of them, got {target!r}.")
        if not _is_number(erase_lambda):
            raise TypeError(f"`erase_lambda` must be a number in [0, 1], got {type(erase_lambda).__name__}.")
        _check_finite(erase_lambda, "erase_lambda")
        if not 0.0 <= erase_lambda <= 1.0:
            raise ValueError(f"`erase_lambda` (lambda of eq. 7) must be in [0, 1], got {erase_lambda}.")
        if not _is_number(attention_guidance_scale):
            raise TypeError(f"`attention_guidance_scale` must be a number, got {type(attention_guidance_scale).__name__}.")
        _check_finite(attention_guidance_scale, "attention_guidance_scale")
        if attention_guidance_scale < 0:
            raise ValueError(f"`attention_guidance_scale` must be >= 0, got {attention_guidance_scale}.")
        _warn_if_large(attention_guidance_scale, "attention_guidance_scale", "0 to 10 (the paper uses 1)", 1000.0)
        _check_timestep_range(guidance_timesteps, "guidance_timesteps", num_train)
        _check_timestep_range(optimization_timesteps, "optimization_timesteps", num_train)
        if not isinstance(optimization_steps, int) or isinstance(optimization_steps, bool) or optimization_steps < 0:
            raise ValueError(f"`optimization_steps` (N of Algorithm 1) must be an int >= 0, got {optimization_steps!r}.")
        if energy not in ENERGIES:
            raise ValueError(f"`energy` must be one of {ENERGIES}, got {energy!r}.")
        if gradient_weighting not in GRADIENT_WEIGHTINGS:
            raise ValueError(f"`gradient_weighting` must be one of {GRADIENT_WEIGHTINGS}, got {gradient_weighting!r}.")
        if inversion_method not in INVERSION_METHODS:
            raise ValueError(f"`inversion_method` must be one of {INVERSION_METHODS}, got {inversion_method!r}.")
        for name, flag in [("blend_outside_attention_mask", blend_outside_attention_mask),
                           ("keep_input_outside_attention_mask", keep_input_outside_attention_mask)]:  # fmt: skip
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}` must be True or False, got {flag!r}.")
        if attention_mask_threshold is not None:
            if not _is_number(attention_mask_threshold):
                raise TypeError(
                    f"`attention_mask_threshold` must be None or a number in (0, 1), got {attention_mask_threshold!r}."
                )
            _check_finite(attention_mask_threshold, "attention_mask_threshold")
            if not 0.0 < attention_mask_threshold < 1.0:
                raise ValueError(f"`attention_mask_threshold` must be in (0, 1), got {attention_mask_threshold}.")
        if attention_mask_components is not None and (
            isinstance(attention_mask_components, bool)
            or not isinstance(attention_mask_components, int)
            or attention_mask_components < 1
        ):
            raise ValueError(
                f"`attention_mask_components` must be None or an int >= 1, got {attention_mask_components!r}."
            )
        automatic_mask_used = mask_image is None and (
            blend_outside_attention_mask or keep_input_outside_attention_mask or content_initialization is not None
        )
        for name, value in (("attention_mask_threshold", attention_mask_threshold),
                            ("attention_mask_components", attention_mask_components)):  # fmt: skip
            if value is not None and not automatic_mask_used and name not in getattr(self, "_defaults_filled", ()):
                logger.warning(
                    f"`{name}` only shapes the automatic mask of `blend_outside_attention_mask`, "
                    "`keep_input_outside_attention_mask` and `content_initialization`, which are off or replaced by "
                    "`mask_image` in this call: it has no effect."
                )
        if keep_input_outside_attention_mask and mask_image is None:
            if image is None:
                raise ValueError(
                    "`keep_input_outside_attention_mask` takes the input's pixels outside the automatic mask: pass "
                    "`image` along with `inversion`."
                )
            if output_type == "latent":
                raise ValueError(
                    "`keep_input_outside_attention_mask` works on decoded images; use another `output_type` than "
                    "'latent' or turn it off."
                )
            if self._is_latent_image(image):
                raise ValueError(
                    "`keep_input_outside_attention_mask` takes the input's pixels, but `image` is latents; pass the "
                    "image itself or turn it off."
                )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be a subset of {self._callback_tensor_inputs}, "
                f"got {callback_on_step_end_tensor_inputs}."
            )
        if mask_image is not None:
            if image is None and inversion is None:
                raise ValueError("`mask_image` needs an `image` or an `inversion`.")
            mask_batch, mask_size = _image_batch_and_size(mask_image, "mask_image")
            reference = self._image_batch_and_size(image)[1] if image is not None else tuple(inversion.image_size)
            if mask_size != tuple(reference):
                raise ValueError(f"`mask_image` is {mask_size[0]}x{mask_size[1]} but the image is {reference[0]}x{reference[1]}.")
            if image is None and output_type != "latent":
                raise ValueError(
                    "With `mask_image` the result outside the mask is the input's own pixels: pass `image` along with "
                    "`inversion`."
                )
            check_mask_values(mask_image)
        for name, weight in (("refocus_w_pos", refocus_w_pos), ("refocus_w_neg", refocus_w_neg)):
            if not (_is_number(weight) and weight >= 0):
                raise ValueError(f"`{name}` (MagicEraser's refocusing weight) must be a number >= 0, got {weight!r}.")
        _check_timestep_range(refocus_timesteps, "refocus_timesteps", num_train)
        check_content_initialization(content_initialization)
        self._check_targets_in_prompt(prompt if prompt is not None else inversion.prompt, targets, batch)
        if protect is not None:
            words = [protect] if isinstance(protect, str) else protect
            if not (isinstance(words, (list, tuple)) and all(isinstance(w, str) and w.strip() for w in words)):
                raise TypeError(f"`protect` must be None, a word of the prompt (str) or a list of them, got {protect!r}.")
            prompts = [prompt] if isinstance(prompt, str) else (prompt or (inversion.prompt if inversion else []))
            for text in prompts:  # an absent word is named now, before any model pass
                protected_token_groups(self.tokenizer, self._prompts([text])[0], list(targets), list(words))
        if protect_cutoff is not None:
            if not _is_number(protect_cutoff):
                raise TypeError(f"`protect_cutoff` must be None or a number in (0, 1], got {protect_cutoff!r}.")
            _check_finite(protect_cutoff, "protect_cutoff")
            if not 0.0 < protect_cutoff <= 1.0:
                raise ValueError(f"`protect_cutoff` must be in (0, 1], got {protect_cutoff}.")
            if mask_image is not None and "protect_cutoff" not in getattr(self, "_defaults_filled", ()):
                logger.warning("`protect_cutoff` shapes the automatic region, which `mask_image` replaces: it has no effect.")
        return targets

    def _check_targets_in_prompt(self, prompt, targets, batch) -> None:
        """Looks the targets' tokens up before any model pass: a typo must not cost an inversion."""
        for text in self._check_prompt(prompt, batch):
            for target in targets:
                find_target_tokens(self.tokenizer, text, target)

    def _check_inversion_matches(self, inversion, prompts, num_inference_steps, guidance_scale, method, schedule, z0):
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

    def _check_inversion_text_matches(self, inversion, prompt_embeds, clip_skip, cross_attention_kwargs):
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

    # ------------------------------------------------------------------------------------------------------------
    # The attention guidance (eq. 7-9, 13)
    # ------------------------------------------------------------------------------------------------------------

    def _guided_epsilon(self, ctx, latents, step_index, timestep):
        """One edit-branch evaluation: ``(eps_t, eps_t^guid, mean target attention)`` at ``latents``.

        Eq. 8/9: ``eps^guid = eps + sum_m (prod_n A_{t,k}) * grad_z sum_n g(t, k, lambda)``, gated by the user's
        mask (eq. 13) if there is one. The gradient is taken with respect to the latents only, in float32.
        """
        z = latents.detach().requires_grad_(True)
        with torch.enable_grad():
            epsilon = self._split_cfg_epsilon(ctx, z, step_index, timestep)
            aggregated = aggregate_cross_attention(ctx.state.cross_attention, ctx.latent_size)
            objects = word_maps(aggregated, ctx.token_groups)
            target_attention = sum(product_map(words) for words in objects).detach().flatten(1).mean(1)
            guidance = torch.zeros_like(z)
            if ctx.attention_guidance_scale > 0:
                dominance = protected_dominance(aggregated, ctx.protect_groups)
                for m, words in enumerate(objects):
                    normalized = protected_word_maps([normalize_map(word) for word in words], dominance,
                                                     ctx.protect_cutoff)
                    if ctx.energy == "paper":
                        energy = sum(attention_energy(a, ctx.erase_lambda, ctx.pixel_area) for a in normalized)  # eq. 7
                    else:
                        energy = sum(quantile_energy(a) for a in normalized)
                    (gradient,) = torch.autograd.grad(energy.sum(), z, retain_graph=m < len(objects) - 1)
                    weight = product_map([a.detach() for a in normalized]).unsqueeze(1)  # eq. 9: prod_n A_{t,k}
                    if ctx.gradient_weighting == "binary":
                        weight = top_fraction_mask(weight, 0.2)
                    guidance = guidance + weight * gradient
        ctx.state.start_pass(PASSTHROUGH)
        if ctx.latent_mask is not None:
            guidance = guidance * ctx.latent_mask  # eq. 13
        if not torch.isfinite(guidance).all():
            raise FloatingPointError(
                f"The attention-guidance gradient is NaN or inf at timestep {int(timestep)}; lower "
                "`attention_guidance_scale`, or run the UNet in float32."
            )
        epsilon = epsilon.detach()
        # Eq. 8 writes "+ A * grad g". Algorithm 1 (line 13, eq. 12) feeds the guided epsilon only into the direction
        # term, so it moves z by +sqrt(1 - alpha) * (eps_guid - eps): descending the energy, the erasing direction
        # and the "gradient descent on z_t" of section 3.4, needs the minus sign.
        return epsilon, epsilon - ctx.attention_guidance_scale * guidance, target_attention

    def _reconstruction_epsilon(self, ctx, latents, step_index, timestep):
        """The reconstruction branch: plain CFG with ``null_t``; records K_rec, V_rec and the target's map."""
        epsilon = self._cfg_epsilon(
            latents, timestep, ctx.null_embeddings[step_index], ctx.prompt_embeds, self._step_guidance_scale,
            ctx.schedule, ctx.state, RECONSTRUCT,
        )
        aggregated = aggregate_cross_attention(ctx.state.cross_attention, ctx.latent_size)
        objects = word_maps(aggregated, ctx.token_groups)
        raw = sum(product_map(words) for words in objects)
        dominance = protected_dominance(aggregated, ctx.protect_groups)
        soft_mask = sum(
            product_map(protected_word_maps([normalize_map(w) for w in words], dominance, ctx.protect_cutoff))
            for words in objects
        ).clamp(0, 1)
        ctx.state.refocus_maps = (soft_mask, dominance)  # where the edit pass may refocus (MagicEraser)
        return epsilon, raw.flatten(1).mean(1), soft_mask

    def _content_initialized_latents(self, image, inversion, latents, target_map, pixel_mask, latent_mask, threshold,
                                     components, alpha_t):  # fmt: skip
        """``latents`` (z_t of the reconstruction) moved onto the pre-filled input inside the target's region
        (``content_initialization``): the user's mask, else the automatic region of ``target_map`` (the target's
        soft map averaged over the reconstruction passes so far)."""
        processing_size = tuple(inversion.processing_size)
        z0 = inversion.latents[0].to(latents.device, torch.float32)
        if image is not None and not self._is_latent_image(image):
            source = self._prepare_image(image, processing_size).to(latents.device)
        else:  # only latents or an inversion: the autoencoder's round trip of the input stands in for it
            source = self.decode_latents_to_pixels(z0).float().clamp(-1, 1)
        if latent_mask is not None:
            region = latent_mask
            pixel_region = F.interpolate(pixel_mask, size=processing_size, mode="bilinear", align_corners=False)
        else:
            region = automatic_mask(normalize_map(target_map).clamp(0, 1), threshold, components).unsqueeze(1)
            pixel_region = F.interpolate(region, size=processing_size, mode="nearest")
        filled = telea_prefill(source, pixel_region)
        z0_filled = self.encode_image(filled.to(self.vae.dtype))
        return content_shifted_latents(latents, z0, z0_filled.float(), region.to(latents.dtype), alpha_t)

    # ------------------------------------------------------------------------------------------------------------
    # Algorithm 1
    # ------------------------------------------------------------------------------------------------------------

    @_with_model_defaults()
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image=None,
        prompt: str | list[str] | None = None,
        target: str | list[str] | None = None,
        mask_image=None,
        inversion: MagicRemoverInversion | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        erase_lambda: float = 0.8,
        attention_guidance_scale: float = 1.0,
        guidance_timesteps: tuple[float, float] = (100, 800),
        optimization_timesteps: tuple[float, float] = (500, 800),
        optimization_steps: int = 1,
        attention_layers: str | list[str] = "all",
        self_attention_guidance: bool = True,
        energy: str = "paper",
        gradient_weighting: str = "attention",
        blend_outside_attention_mask: bool = False,
        attention_mask_threshold: float | None = None,
        attention_mask_components: int | None = None,
        keep_input_outside_attention_mask: bool = False,
        protect: str | list[str] | None = None,
        protect_cutoff: float | None = None,
        refocus_w_pos: float = 0.0,
        refocus_w_neg: float = 0.0,
        refocus_timesteps: tuple[float, float] = (700, 1000),
        content_initialization: str | None = None,
        inversion_method: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""
        Removes ``target`` from ``image`` (Algorithm 1 of the MagicRemover paper).

        Args:
            image: the input image(s): PIL, numpy ``HxWxC`` in ``[0, 1]``, tensor in ``[-1, 1]``, or a list. Any size;
                the result comes back at this size. May be omitted when ``inversion`` is given.
            prompt: a caption of the image that names the target, e.g. ``"a photo of a dog on the grass"``.
            target: the word or phrase of ``prompt`` to erase (``k`` in the paper), or a list of them. A phrase of n
                words is erased where all its words attend (eq. 9: product of their maps).
            mask_image: optional; white where removal may happen (soft values weigh in between). It gates the
                gradient (eq. 13) and keeps the edit latent outside it equal to the reconstruction's (appendix A.4); the
                decoded result outside it is the input's own pixels (ours: the autoencoder's round trip would blur
                them), so ``image`` is needed with it. An all-black mask is a ``ValueError``; a coloured one is
                converted by luminance with a warning.
            inversion: a [`MagicRemoverInversion`] from [`~MagicRemoverPipeline.invert`]; skips inversion. Its
                settings must match this call's.
            num_inference_steps: DDIM steps T.
            guidance_scale: classifier-free guidance ``w = 1 + s`` (eq. 5). Read at every step through
                ``pipe.guidance_scale``, so a step-end callback may change ``pipe._guidance_scale`` mid-call (e.g.
                diffusers' ``SDCFGCutoffCallback``; a scale <= 1 turns guidance off, the conditional prediction alone,
                as in SD). Both branches then use the new scale. A ``"null-text"`` inversion's embeddings were
                optimised so that CFG at the inversion's scale retraces the inverted trajectory: at another scale the
                reconstruction branch drifts from the input image from that step on, and the edit branch with it
                (``"direct"`` is put back on the trajectory after every step and does not drift; ``"ddim"`` and
                ``"negative-prompt"`` never depended on the scale).
            erase_lambda: lambda of eq. 7, in ``[0, 1]``. Lower erases more (shadows, reflections) at the risk of tone
                shifts (paper, appendix A.3). Default 0.8 (paper).
            attention_guidance_scale: multiplies the attention-guidance term of eq. 8/9 (the paper uses 1). The energy
                is an L1 norm over image pixels as in the paper, so at 512x512 the default reproduces the paper.
            guidance_timesteps: ``(100, t2)``, where attention guidance runs, in training-timestep units
                (paper: 100 < t < 800).
            optimization_timesteps: ``(t1, t2)``, where classifier optimisation (eq. 12) runs (paper: 500 < t < 800).
            optimization_steps: N of Algorithm 1, re-noising repetitions per step inside ``optimization_timesteps``.
            attention_layers: cross-attention layers that feed ``A_{t,k}``: ``"all"`` (paper: all resolutions), or
                exact names of layers or of the modules holding them, such as ``["up_blocks", "mid_block"]`` or
                ``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"`` (``.processor`` suffix optional), compared
                component by component (``"up_blocks.1"`` never selects ``"up_blocks.10"``). A pattern only when asked
                for: ``re.compile(...)`` or ``"re:<regex>"``, matched on whole dot-separated components. Unknown names
                raise ``ValueError``; see :func:`~attention_processors.select_layers`.
            self_attention_guidance: eq. 10, the edit branch attends to the reconstruction branch's keys and values
                (paper). ``False`` is an ablation.
            energy: ``"paper"`` (eq. 7, default) or ``"quantile"`` (the authors' research code: squared distance from
                the map's minimum on its top-20% pixels). The paper's form is the default because lambda acts through
                it; the research code computes lambda but never uses it.
            gradient_weighting: ``"attention"`` (eq. 8: the gradient times the soft map, default; keeps soft, semi
                transparent edges soft) or ``"binary"`` (research code: times the map's top-20% region).
            blend_outside_attention_mask: research-code option: after each guided step, replace the edit latent
                outside the automatic mask (see ``attention_mask_threshold``) by the reconstruction's. Off by default:
                the paper keeps the background through eq. 10 and the soft weighting, without a hard mask.
            attention_mask_threshold: where the automatic mask lies (used by the two options around it and by
                ``content_initialization``, and without effect, with a logged warning, when none is on). ``None``
                (default): the research code's region, the map's top 20% united with its part >= 0.25. A number in
                ``(0, 1)``: the part of the normalised map at or above it, grown by one latent pixel. The top-20% region
                is a fixed share of the image, so around a small object it spills onto its neighbours; a threshold
                follows the object but can leave a shadow outside (``benchmarks/results/tuning.md``: on the embedded
                model 0.3 removes more targets cleanly, with less of the shadow filled).
            attention_mask_components: keep only the ``k`` connected parts of the automatic mask that hold the most
                of the target's map, per target (ours, not in the paper; ``strongest_components``). A target word
                also attends, more weakly, to what looks like its target (same colour, same shape), and that second
                blob is where neighbours get lost. ``None`` (default): every part, as the research code. The
                embedded model ships 1, chosen on 40 tuning scenes
                (``benchmarks/results/tuning_issue13_components_a.md`` and ``_b.md``). Pass ``None`` to remove
                several separate objects named by one word ("the birds"). No effect with ``mask_image``.
            keep_input_outside_attention_mask: after decoding, take the input image's own pixels outside the automatic
                mask (the step-averaged map, upsampled bilinearly: a soft edge one latent pixel wide). The
                autoencoder's round trip then touches nothing outside the object's region, which matters when the
                autoencoder is lossy. Not in the paper; off by default. Needs ``image`` and a decoded ``output_type``;
                with ``mask_image`` the user's mask decides instead.
            protect: words of ``prompt`` naming what must stay (ours, not in the paper): where a protected word's
                cross-attention map dominates the target's, the target's map is lowered in proportion
                (``min(1, A / D)``), and with it the guidance weight, the energy's support and the automatic region.
                ``None`` (default): the prompt's other objects, the last content word of each noun phrase without
                the target, the scene after "on"/"in"/"over"/"against" left out (``default_protected_words``:
                "a red star and a yellow triangle on a sky background" protects "triangle" when removing "star").
                ``[]`` turns it off. A word absent from the prompt is a ``ValueError`` naming it.
            protect_cutoff: ``c`` in ``(0, 1]`` (ours): where the target's map is below ``c`` times the strongest
                protected word's, the pixel is that object's and the target's map is 0 there, not merely lowered, so
                it leaves the automatic region, the guidance weight and the energy's support entirely
                (``protection_factor``). ``None`` (default): the soft lowering alone. The embedded model ships 0.7,
                chosen on 40 tuning scenes (``benchmarks/results/tuning_issue13_cutoff_a.md`` and ``_b.md``); no
                effect without protected words, nor with ``mask_image``: the user's mask already says where the
                target is, and zeroing its map inside the mask would stop the removal there (the soft lowering
                still applies).
            refocus_w_pos, refocus_w_neg: MagicEraser's semantics-aware self-attention refocusing (seed 001, its
                training-free part; not in MagicRemover): in the edit pass's self-attention, queries inside the
                target's soft region get ``+w_pos`` added to their logits toward background keys (low target and
                protected maps) and ``-w_neg`` toward keys on the target and the protected objects, so the hole is
                filled from the background (``refocusing_bias``). Needs ``self_attention_guidance``. 0, 0 (default):
                off. The reconstruction branch never sees it.
            refocus_timesteps: ``(low, high)`` where refocusing runs, training-timestep units (MagicEraser: the
                early steps, t from 1 to 0.7 of the schedule: ``(700, 1000)``).
            content_initialization: MagicEraser's content initialisation (seed 001, its first stage; not in
                MagicRemover): ``"telea"`` pre-fills the target's automatic region (or ``mask_image``) of the input
                with OpenCV's Telea inpainting, and the edit branch leaves the reconstruction at the first guided
                step from that image's latent on the trajectory's noise (``content_shifted_latents``). No extra UNet
                pass: one VAE encode and one ``cv2.inpaint``. ``None`` (default): off; the embedded model ships it on.
            inversion_method: ``"negative-prompt"`` (chosen by the speed benchmark), ``"null-text"`` (the paper's),
                ``"direct"`` or ``"ddim"``; see [`~invert`]. ``None`` (default): the method of ``inversion`` when
                one is given, else ``invert``'s default (``"negative-prompt"``).
            generator: accepted for API symmetry; the method is deterministic (DDIM with sigma = 0).
            prompt_embeds: text embeddings to use instead of encoding ``prompt``, see [`~invert`]; the prompt text
                is still needed (``prompt``, or the ``inversion``'s) because the target is found among its tokens.
                With ``inversion`` they must equal the inversion's.
            num_images_per_prompt: must be 1 (``ValueError`` otherwise): from one inversion the method is
                deterministic, so more images per prompt would be copies. Pass several images or targets instead.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return a [`MagicRemoverPipelineOutput`] (default) or a tuple ``(images, attention_maps)``.
            cross_attention_kwargs: passed to the attention processors, as in SD; ``{"scale": s}`` is the LoRA scale
                of the UNet and the text encoder. With ``inversion`` the scale must be the inversion's.
            clip_skip: layers to skip at the end of the text encoder, as in SD (see [`~invert`]); with ``inversion``
                it must be the inversion's.
            callback_on_step_end: called as ``callback(pipe, step, timestep, callback_kwargs)`` after each step; may
                return replacements for the tensors named in ``callback_on_step_end_tensor_inputs`` (``"latents"``
                is the edit branch's latent, ``"reconstruction_latents"`` the reconstruction branch's).

        Examples:
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if inversion_method is None:  # a given inversion says how it was made; else invert's default
            inversion_method = getattr(inversion, "method", None) or DEFAULT_INVERSION_METHOD
        self._check_text_inputs(
            prompt, prompt_embeds, clip_skip, cross_attention_kwargs, num_images_per_prompt, inversion
        )
        targets = self.check_inputs(
            image, prompt, target, mask_image, inversion, num_inference_steps, guidance_scale, erase_lambda,
            attention_guidance_scale, guidance_timesteps, optimization_timesteps, optimization_steps, energy,
            gradient_weighting, inversion_method, generator, output_type, callback_on_step_end_tensor_inputs,
            blend_outside_attention_mask, attention_mask_threshold, keep_input_outside_attention_mask, protect,
            protect_cutoff, refocus_w_pos, refocus_w_neg, refocus_timesteps, content_initialization,
            attention_mask_components,
        )  # fmt: skip
        protect = [protect] if isinstance(protect, str) else protect
        self._interrupt = False
        self._guidance_scale = guidance_scale
        self._cross_attention_kwargs, self._clip_skip = cross_attention_kwargs, clip_skip
        device = self._execution_device
        schedule = DDIMSchedule.from_scheduler_config(self.scheduler.config, num_inference_steps)

        # Lines 1-3: z_0 = E(x_0), DDIM inversion, null-text optimisation (or a given inversion)
        if inversion is None:
            inversion = self.invert(image, prompt, num_inference_steps, guidance_scale, inversion_method, generator,
                                    prompt_embeds=prompt_embeds, clip_skip=clip_skip,
                                    cross_attention_kwargs=cross_attention_kwargs)  # fmt: skip
        else:
            batch, size = self._image_batch_and_size(image) if image is not None else (inversion.batch_size, None)
            if size is not None and (tuple(size) != tuple(inversion.image_size) or batch != inversion.batch_size):
                raise ValueError(
                    f"`inversion` was made from {inversion.batch_size} image(s) of size {tuple(inversion.image_size)}; "
                    f"this `image` ({batch} of size {tuple(size)}) does not match it."
                )
            prompts = self._check_prompt(prompt if prompt is not None else inversion.prompt, batch)
            z0 = None
            if image is not None:
                z0 = self.image_latents(image, tuple(inversion.processing_size))
            self._check_inversion_matches(
                inversion, prompts, num_inference_steps, guidance_scale, inversion_method, schedule, z0
            )
            self._check_inversion_text_matches(inversion, prompt_embeds, clip_skip, cross_attention_kwargs)
        inversion = inversion.to(device)
        prompts, batch = list(inversion.prompt), inversion.batch_size
        latent_size = tuple(inversion.latents.shape[-2:])
        image_size = tuple(inversion.image_size)

        # The target words k of the prompt (eq. 9 groups the words of one phrase)
        token_groups = [[find_target_tokens(self.tokenizer, p, t) for t in targets] for p in self._prompts(prompts)]
        protect_groups = [protected_token_groups(self.tokenizer, p, targets, protect) for p in self._prompts(prompts)]

        pixel_mask = latent_mask = None
        if mask_image is not None:
            pixel_mask = self.mask_processor.preprocess(
                grey_unit_mask(mask_image), height=image_size[0], width=image_size[1]
            )
            pixel_mask = pixel_mask.float().to(device).expand(batch, -1, -1, -1)
            latent_mask = F.interpolate(pixel_mask, size=latent_size, mode="bilinear", align_corners=False)

        ctx = _RemovalContext(
            state=RemovalAttentionState(),
            schedule=schedule,
            null_embeddings=inversion.null_embeddings,
            prompt_embeds=inversion.prompt_embeds,
            token_groups=token_groups,
            protect_groups=protect_groups,
            # a user's mask already says where the target is: the cutoff shapes the automatic region only
            protect_cutoff=None if protect_cutoff is None or mask_image is not None else float(protect_cutoff),
            latent_size=latent_size,
            erase_lambda=float(erase_lambda),
            attention_guidance_scale=float(attention_guidance_scale),
            pixel_area=float(self.vae_scale_factor**2),
            energy=energy,
            gradient_weighting=gradient_weighting,
            latent_mask=latent_mask,
        )
        self_names, cross_names = attention_layer_names(self.unet)
        cross_names = select_layers(cross_names, attention_layers, "attention_layers")
        processors = build_processors(self.unet, ctx.state, self_names if self_attention_guidance else [], cross_names)

        timesteps = schedule.timesteps
        guided = timesteps_in_range(timesteps, *guidance_timesteps)  # paper: 100 < t < t2
        optimized = timesteps_in_range(timesteps, *optimization_timesteps)  # paper: t1 < t < t2
        refocused = timesteps_in_range(timesteps, *refocus_timesteps)  # MagicEraser: early steps only
        refocus = (float(refocus_w_pos), float(refocus_w_neg)) if refocus_w_pos or refocus_w_neg else None
        # the automatic region keeps this many connected parts: attention_mask_components per target (ours)
        region_components = None if attention_mask_components is None else attention_mask_components * len(targets)
        self._num_timesteps = len(timesteps)

        # Line 4 onwards: both branches start from z_T
        reconstruction_latents = inversion.latents[-1].clone()
        latents = reconstruction_latents.clone()
        edit_diverged = False  # until the first guided step the edit branch equals the reconstruction exactly
        map_sum, map_count = torch.zeros(batch, *latent_size, device=device), 0
        early_sum, early_count = torch.zeros(batch, *latent_size, device=device), 0  # maps until the first guided step
        trace_t, trace_rec, trace_edit = [], [], []

        try:
            with installed_processors(self.unet, processors), self.progress_bar(total=len(timesteps)) as bar:
                bar.set_description("MagicRemover")
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    alpha_t, alpha_next = schedule.alpha(t), schedule.alpha_after(i)

                    # Reconstruction branch (plain CFG with null_t); records K_rec, V_rec for eq. 10
                    eps_rec, rec_attention, soft_mask = self._reconstruction_epsilon(ctx, reconstruction_latents, i, t)
                    ctx.state.refocus_weights = refocus if refocused[i] else None  # edit pass only (MagicEraser)
                    if guided[i]:
                        map_sum, map_count = map_sum + soft_mask, map_count + 1
                    if content_initialization is not None and not edit_diverged:
                        early_sum, early_count = early_sum + soft_mask, early_count + 1
                        if guided[i]:  # MagicEraser's content initialisation: leave from the pre-filled image
                            latents = self._content_initialized_latents(
                                image, inversion, latents, early_sum / early_count, pixel_mask, latent_mask,
                                attention_mask_threshold, region_components, alpha_t,
                            )  # fmt: skip
                            edit_diverged = True

                    if guided[i]:
                        # Lines 5-6: eps_t and eps_t^guid (eq. 8/9)
                        eps, eps_guided, edit_attention = self._guided_epsilon(ctx, latents, i, t)
                        if optimized[i]:
                            # Lines 8-11: classifier optimisation, re-noise in place at t (eq. 12)
                            for _ in range(optimization_steps):
                                latents = classifier_optimization_step(latents, eps, eps_guided, alpha_t)
                                eps, eps_guided, edit_attention = self._guided_epsilon(ctx, latents, i, t)
                        # Line 13: x0 from the unguided eps, direction from the guided one
                        latents = ddim_step(latents, eps, eps_guided, alpha_t, alpha_next)
                        edit_diverged = True
                        trace_t.append(int(t))
                        trace_rec.append(rec_attention)
                        trace_edit.append(edit_attention)
                    elif edit_diverged:
                        eps = self._cfg_epsilon(
                            latents, t, ctx.null_embeddings[i], ctx.prompt_embeds, self._step_guidance_scale, schedule,
                            ctx.state, EDIT,
                        )
                        ctx.state.start_pass(PASSTHROUGH)
                        latents = ddim_step(latents, eps, eps, alpha_t, alpha_next)

                    reconstruction_latents = ddim_step(reconstruction_latents, eps_rec, eps_rec, alpha_t, alpha_next)
                    if not edit_diverged:
                        latents = reconstruction_latents.clone()
                    if inversion.method == "direct":  # PnP Inversion: both branches back onto the inverted trajectory
                        inverted_next = inversion.latents[len(timesteps) - i - 1]
                        reconstruction_latents, latents = direct_inversion_correction(
                            inverted_next, reconstruction_latents, latents
                        )

                    if latent_mask is not None:  # appendix A.4: outside the mask, the reconstruction
                        latents = latent_mask * latents + (1 - latent_mask) * reconstruction_latents
                    elif blend_outside_attention_mask and guided[i]:
                        auto = automatic_mask(soft_mask, attention_mask_threshold, region_components).unsqueeze(1)
                        latents = auto * latents + (1 - auto) * reconstruction_latents

                    if not torch.isfinite(latents).all():
                        raise FloatingPointError(
                            f"The edit latents became NaN or inf at timestep {int(t)}; lower `attention_guidance_scale`"
                            " or run in float32."
                        )
                    if callback_on_step_end is not None:
                        available = {
                            "latents": latents,
                            "reconstruction_latents": reconstruction_latents,
                            "prompt_embeds": ctx.prompt_embeds,
                        }
                        callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                        callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                        latents = callback_outputs.pop("latents", latents)
                        reconstruction_latents = callback_outputs.pop("reconstruction_latents", reconstruction_latents)
                        if not edit_diverged and not torch.equal(latents, reconstruction_latents):
                            edit_diverged = True
                    bar.update()
        finally:
            ctx.state.clear()

        # The target's soft map at image resolution (the mask the user never drew)
        if map_count == 0:
            map_sum, map_count = soft_mask, 1
        latent_map = normalize_map(map_sum / map_count).clamp(0, 1)
        attention_maps = F.interpolate(latent_map.unsqueeze(1), size=image_size, mode="bilinear", align_corners=False)
        attention_maps = attention_maps[:, 0].clamp(0, 1)

        target_attention = None
        if trace_t:
            target_attention = {
                "timesteps": torch.tensor(trace_t),
                "reconstruction": torch.stack(trace_rec).cpu(),
                "edit": torch.stack(trace_edit).cpu(),
            }

        if output_type == "latent":
            images, reconstructions, nsfw = latents, reconstruction_latents, None
        else:
            images = self._to_image_size(self.decode_latents_to_pixels(latents), image_size)
            reconstructions = self._to_image_size(self.decode_latents_to_pixels(reconstruction_latents), image_size)
            if pixel_mask is not None:  # as every mask-based remover: outside the mask, the input's own pixels
                source = self._prepare_image(image, image_size).to(images.device)
                images = pixel_mask * images + (1 - pixel_mask) * source
            elif keep_input_outside_attention_mask:  # not in Algorithm 1: only the target's region is decoded
                region = automatic_mask(latent_map, attention_mask_threshold, region_components).unsqueeze(1)
                region = F.interpolate(region, size=image_size, mode="bilinear", align_corners=False)
                source = self._prepare_image(image, image_size).to(images.device)
                images = region * images + (1 - region) * source
            images, nsfw = self.run_safety_checker(images, device, ctx.prompt_embeds.dtype)
            images = self.image_processor.postprocess(images, output_type=output_type)
            reconstructions = self.image_processor.postprocess(reconstructions, output_type=output_type)
            attention_maps = attention_maps if output_type == "pt" else attention_maps.cpu().numpy()

        self.maybe_free_model_hooks()
        if not return_dict:
            return images, attention_maps
        return MagicRemoverPipelineOutput(
            images=images,
            attention_maps=attention_maps,
            reconstructions=reconstructions,
            target_attention=target_attention,
            inversion=inversion,
            nsfw_content_detected=nsfw,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``DiffusionPipeline.from_pretrained``, returning this class.

        A folder written by :meth:`save_pretrained` carries ``pipeline.py``. When that code is byte-identical to this
        installation's, the folder loads as this class (see :meth:`load_config`) and none of its code is imported;
        any other code, and any custom component module, still needs the user's explicit ``trust_remote_code=True``,
        as diffusers requires.
        """
        folder = Path(os.fspath(pretrained_model_name_or_path))
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipeline, cls) and type(pipeline).__name__ == cls.__name__:
            pipeline = cls(**pipeline.components)
        if folder.is_dir():  # the model's tuned settings, used for every argument a call leaves out
            pipeline._removal_defaults = read_removal_defaults(folder)
        return pipeline

    # --- issue 25 (trust never widened): begin ------------------------------------------------------------------
    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``ConfigMixin.load_config``; a local folder that names ``["pipeline", <this class>]`` and carries this
        installation's exact code gets this class's plain name, so diffusers uses this class instead of importing the
        folder's copy. Trust is not widened: custom component modules still need ``trust_remote_code=True``."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        folder = Path(os.fspath(pretrained_model_name_or_path))
        if config.get("_class_name") == ["pipeline", cls.__name__] and folder.is_dir() and _carries_this_code(folder):
            config["_class_name"] = cls.__name__
        return loaded
    # --- issue 25: end --------------------------------------------------------------------------------------------

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """``DiffusionPipeline.from_pipe`` that leaves the source pipeline's components as they are.

        diffusers' ``from_pipe`` ends with ``new_pipeline.to(dtype=dtype or torch.float32)`` on the components it
        shares, casting the *source* pipeline in place (a float16 pipeline becomes float32). Without ``dtype`` (or
        ``torch_dtype``) this override keeps every shared component's own dtype; asking for a dtype still casts the
        shared components, as in diffusers.
        """
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs.pop("dtype", None)
            kwargs.pop("torch_dtype", None)
            modules = {name: c for name, c in pipeline.components.items() if isinstance(c, torch.nn.Module)}
            dtypes = {name: next(m.parameters()).dtype for name, m in modules.items() if any(True for _ in m.parameters())}
            main = dtypes.get("unet") or next(iter(dtypes.values()), torch.float32)
            from diffusers.pipelines import pipeline_utils

            kwargs["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = main
            new_pipeline = super().from_pipe(pipeline, **kwargs)
            for name, dtype in dtypes.items():
                if dtype != main:  # a component the single-dtype cast changed: put it back
                    modules[name].to(dtype=dtype)
            return new_pipeline
        return super().from_pipe(pipeline, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs):
        """Saves the components as ``StableDiffusionPipeline`` does, plus this pipeline's code.

        The folder gets ``pipeline.py`` and its sibling modules, and ``model_index.json`` names
        ``["pipeline", "MagicRemoverPipeline"]``, so ``DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)`` comes back as this pipeline without the package installed. With ``push_to_hub``,
        the code is uploaded together with the weights.
        """
        hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "private", "token", "commit_message") if key in kwargs}
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        write_pipeline_code(save_directory, type(self).__name__)
        if self.removal_defaults:  # the tuned settings travel with the weights
            (Path(save_directory) / DEFAULTS_FILE).write_text(json.dumps(self.removal_defaults, indent=2) + "\n")
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = hub_kwargs.get("repo_id") or Path(save_directory).name
            token = hub_kwargs.get("token")
            repo_id = create_repo(repo_id, exist_ok=True, private=hub_kwargs.get("private"), token=token).repo_id
            upload_folder(repo_id=repo_id, folder_path=save_directory, token=token,
                          commit_message=hub_kwargs.get("commit_message", "Upload MagicRemoverPipeline"))  # fmt: skip

    def _to_image_size(self, pixels: torch.Tensor, image_size) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) == tuple(image_size):
            return pixels
        return F.interpolate(pixels, size=tuple(image_size), mode="bicubic", align_corners=False, antialias=True).clamp(
            -1, 1
        )

    def run_safety_checker(self, image, device, dtype):
        if self.safety_checker is None:
            return image, None
        denormalized = (image / 2 + 0.5).clamp(0, 1)
        features = self.feature_extractor(
            self.image_processor.postprocess(image, output_type="pil"), return_tensors="pt"
        ).to(device)
        checked, has_nsfw = self.safety_checker(images=denormalized, clip_input=features.pixel_values.to(dtype))
        return checked * 2 - 1, has_nsfw


#: The arguments a removal call takes, read once from the signature (a wrapper patched onto ``__call__`` later, as
#: tests and profilers do, must not change which settings a model folder may name)
_CALL_ARGUMENTS = frozenset(inspect.signature(MagicRemoverPipeline.__call__).parameters) - {"self"}

SIBLING_MODULES = ("attention_processors.py", "content_initialization.py", "images.py", "inversion.py")


def _carries_this_code(folder: Path) -> bool:
    here = Path(__file__).resolve().parent
    pairs = [(folder / "pipeline.py", Path(__file__).resolve())] + [(folder / n, here / n) for n in SIBLING_MODULES]
    return all(saved.is_file() and saved.read_bytes() == ours.read_bytes() for saved, ours in pairs)


def write_pipeline_code(folder, class_name: str = "MagicRemoverPipeline") -> None:
    """Copies this file as ``pipeline.py`` with its sibling modules into ``folder`` and points ``model_index.json``
    (if there is one) at it: the layout ``custom_pipeline=`` and Hub model repos that carry their code expect."""
    folder, here = Path(folder), Path(__file__).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).resolve(), folder / "pipeline.py")
    for name in SIBLING_MODULES:
        shutil.copyfile(here / name, folder / name)
    index = folder / "model_index.json"
    if index.is_file():
        config = json.loads(index.read_text())
        config["_class_name"] = ["pipeline", class_name]
        index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass
class _RemovalContext:
    """Everything one removal call's steps need; built in ``__call__`` and dropped after it."""

    state: RemovalAttentionState
    schedule: DDIMSchedule
    null_embeddings: torch.Tensor
    prompt_embeds: torch.Tensor
    token_groups: list
    latent_size: tuple[int, int]
    erase_lambda: float
    attention_guidance_scale: float
    pixel_area: float
    energy: str
    gradient_weighting: str
    latent_mask: torch.Tensor | None
    protect_groups: list = field(default_factory=list)  # per sample, the protected words' token positions
    protect_cutoff: float | None = None  # below cutoff * the protected dominance, the target's map is 0
