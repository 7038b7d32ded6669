"""Images in and out of latent space for a MagicRemover pipeline: a mixin for the pipeline classes.

Every image form the pipeline takes (PIL, numpy, tensors, lists, or latents given as ``image``) is checked, resized to
a multiple of the autoencoder's factor and encoded deterministically; results are decoded and brought back to the
input's size. A model family whose autoencoder needs more (SDXL's float16 upcast) overrides ``encode_image`` and
``decode_latents_to_pixels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils import logging

from .images import is_far_beyond, trained_size
from .inputs import image_batch_and_size, image_to_pixels

logger = logging.get_logger(__name__)


def vae_latents(encoder_output) -> torch.Tensor:
    """The deterministic latent of a VAE encoding: the posterior's mode, or ``.latents`` where the VAE has no
    distribution (``AutoencoderTiny``). diffusers' img2img ``retrieve_latents`` with ``sample_mode="argmax"`` does the
    same; importing it loads the whole Stable Diffusion pipeline package (and transformers' image-processor notices)."""
    if hasattr(encoder_output, "latent_dist"):
        return encoder_output.latent_dist.mode()
    if hasattr(encoder_output, "latents"):
        return encoder_output.latents
    raise AttributeError("The VAE's encode() output has neither `latent_dist` nor `latents`.")


class LatentImageMixin:
    """Needs ``vae``, ``vae_scale_factor`` and ``_execution_device`` (a ``DiffusionPipeline`` with an autoencoder)."""

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
        batch, (height, width) = image_batch_and_size(image, "image")
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
        multiple of ``vae_scale_factor``), read by the pipeline's ``image_processor`` as diffusers reads images
        (tensors and numpy in [0, 1]) and resized with antialiased bicubic interpolation."""
        pixels = image_to_pixels(image, "image", self.image_processor)
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

    def _to_image_size(self, pixels: torch.Tensor, image_size) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) == tuple(image_size):
            return pixels
        return F.interpolate(pixels, size=tuple(image_size), mode="bicubic", align_corners=False, antialias=True).clamp(
            -1, 1
        )
