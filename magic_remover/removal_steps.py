"""The steps of a removal call that every model family shares: a mixin for the pipeline classes.

Between the checks and the denoising loop, ``__call__`` gets its inversion, the user's mask, the call's
:class:`~removal.RemovalContext` and the processors to install from here; after the loop, the decoded output. What is
specific to a model family (text encoding, the UNet call, the autoencoder) stays in its pipeline class.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from .attention_maps import blend, normalize_map
from .attention_processors import RemovalAttentionState, attention_layer_names, build_processors, select_layers
from .inputs import check_inversion_matches, check_inversion_text_matches, check_prompt, grey_unit_mask
from .inversion import MagicRemoverInversion
from .removal import RemovalBranches, RemovalContext, RemovalOptions, plan_steps, reconstruction_pass
from .tokens import find_target_tokens, protected_token_groups


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


#: UNet (by id) -> (thread, depth) of the removal call running on it: processors and per-call state are the call's
_RUNNING_CALLS: dict[int, tuple[int, int]] = {}
_RUNNING_CALLS_LOCK = threading.Lock()


def one_call_at_a_time(method):
    """Decorator for ``__call__`` and ``invert``: while a call runs on a UNet, a call from another thread on a pipeline
    holding that UNet (``from_pipe`` shares it) raises a ``RuntimeError`` before it touches anything; the same thread
    may nest (``__call__`` runs ``invert``). The running call finishes, and restores the processors, undisturbed."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        key, me = id(self.unet), threading.get_ident()
        with _RUNNING_CALLS_LOCK:
            owner, depth = _RUNNING_CALLS.get(key, (me, 0))
            if owner != me:
                raise RuntimeError(
                    f"This {type(self).__name__}'s UNet is running a call in another thread; its attention processors "
                    "and per-call state belong to that call. Wait for it, or give each thread its own pipeline."
                )
            _RUNNING_CALLS[key] = (me, depth + 1)
        try:
            return method(self, *args, **kwargs)
        finally:
            with _RUNNING_CALLS_LOCK:
                if depth == 0:
                    del _RUNNING_CALLS[key]
                else:
                    _RUNNING_CALLS[key] = (me, depth)

    return wrapper


class RemovalStepsMixin:
    """Needs a ``DiffusionPipeline`` with ``unet``, ``tokenizer``, ``mask_processor``, ``invert``, ``_unet_epsilon``
    and the :class:`~latent_images.LatentImageMixin` methods."""

    def _reconstruction_epsilon(self, ctx: RemovalContext, latents, step_index, timestep):
        """The reconstruction branch's pass (:func:`~removal.reconstruction_pass`): ``(eps, attention, soft map)``."""
        return reconstruction_pass(ctx, latents, step_index, timestep)

    def _inversion_for_call(self, image, prompt, inversion, method, schedule, guidance_scale, generator, prompt_embeds,
                            clip_skip, cross_attention_kwargs) -> MagicRemoverInversion:  # fmt: skip
        """Lines 1-3 of Algorithm 1 for this call, or the given ``inversion`` once checked against it."""
        num_inference_steps = len(schedule.timesteps)
        if inversion is None:
            inversion = self.invert(image, prompt, num_inference_steps, guidance_scale, method, generator,
                                    prompt_embeds=prompt_embeds, clip_skip=clip_skip,
                                    cross_attention_kwargs=cross_attention_kwargs)  # fmt: skip
            return inversion.to(self._execution_device)
        batch, size = self._image_batch_and_size(image) if image is not None else (inversion.batch_size, None)
        if size is not None and (tuple(size) != tuple(inversion.image_size) or batch != inversion.batch_size):
            raise ValueError(
                f"`inversion` was made from {inversion.batch_size} image(s) of size {tuple(inversion.image_size)}; "
                f"this `image` ({batch} of size {tuple(size)}) does not match it."
            )
        prompts = check_prompt(prompt if prompt is not None else inversion.prompt, batch)
        z0 = None if image is None else self.image_latents(image, tuple(inversion.processing_size))
        check_inversion_matches(inversion, prompts, num_inference_steps, guidance_scale, method, schedule, z0)
        check_inversion_text_matches(inversion, prompt_embeds, clip_skip, cross_attention_kwargs)
        return inversion.to(self._execution_device)

    def _pixel_mask(self, mask_image, inversion) -> torch.Tensor | None:
        """The user's mask as ``[B, 1, H, W]`` in [0, 1] at the image's size (``None`` without one)."""
        if mask_image is None:
            return None
        height, width = inversion.image_size
        pixel_mask = self.mask_processor.preprocess(grey_unit_mask(mask_image), height=height, width=width)
        return pixel_mask.float().to(self._execution_device).expand(inversion.batch_size, -1, -1, -1)

    def _removal_context(self, inversion, schedule, targets, options, pixel_mask) -> RemovalContext:
        """This call's context: the UNet as the steps call it, the target and protected words' tokens (eq. 9, ours),
        the per-step plan and the user's mask at latent size."""
        prompts = self._prompts(list(inversion.prompt))
        latent_size = tuple(inversion.latents.shape[-2:])
        latent_mask = None
        if pixel_mask is not None:
            latent_mask = F.interpolate(pixel_mask, size=latent_size, mode="bilinear", align_corners=False)
        return RemovalContext(
            state=RemovalAttentionState(),
            schedule=schedule,
            epsilon=lambda latents, t, embeds: self._unet_epsilon(latents, t, embeds, schedule),
            guidance_scale=lambda: self._step_guidance_scale,
            null_embeddings=inversion.null_embeddings,
            prompt_embeds=inversion.prompt_embeds,
            token_groups=[[find_target_tokens(self.tokenizer, p, t) for t in targets] for p in prompts],
            protect_groups=[protected_token_groups(self.tokenizer, p, targets, options.protected_words) for p in prompts],
            latent_size=latent_size,
            pixel_area=float(self.vae_scale_factor**2),
            options=options,
            plan=plan_steps(schedule.timesteps, options),
            latent_mask=latent_mask,
            fill_embeds=self._fill_conditioning(options.fill_prompts(prompts, targets), inversion),
        )

    def _fill_conditioning(self, fill_prompts, inversion) -> torch.Tensor | None:
        """The fill prompts' conditioning, encoded as the inversion encoded its prompt (``None`` without them)."""
        if fill_prompts is None:
            return None
        embeds, _ = self._text_conditioning(fill_prompts, None, inversion.lora_scale, inversion.clip_skip,
                                            tuple(inversion.image_size), tuple(inversion.processing_size))  # fmt: skip
        return embeds.to(inversion.prompt_embeds.device, inversion.prompt_embeds.dtype)

    def _removal_processors(self, state: RemovalAttentionState, options: RemovalOptions) -> dict:
        """Eq. 10's K/V swap on the self-attention layers (unless ``self_attention_guidance=False``) and the capture of
        ``A_{t,k}`` on the cross-attention layers ``attention_layers`` picks: nowhere else."""
        self_names, cross_names = attention_layer_names(self.unet)
        cross_names = select_layers(cross_names, options.attention_layers, "attention_layers")
        return build_processors(self.unet, state, self_names if options.self_attention_guidance else [], cross_names)

    def _step_end(self, callback, tensor_names, step_index, timestep, branches: RemovalBranches, ctx) -> None:
        """diffusers' ``callback_on_step_end``: it may replace either branch's latents."""
        if callback is None:
            return
        available = {"latents": branches.latents, "reconstruction_latents": branches.reconstruction,
                     "prompt_embeds": ctx.prompt_embeds}  # fmt: skip
        outputs = callback(self, step_index, timestep, {k: available[k] for k in tensor_names}) or {}
        branches.latents = outputs.pop("latents", branches.latents)
        branches.reconstruction = outputs.pop("reconstruction_latents", branches.reconstruction)
        if not branches.diverged and not torch.equal(branches.latents, branches.reconstruction):
            branches.diverged = True

    def _input_pixels(self, image, inversion) -> torch.Tensor:
        """The input at its own size in [-1, 1]; given only an ``inversion``, the autoencoder's reconstruction of the
        image it was made from (``inversion.latents[0]``), the closest to it the inversion holds."""
        if image is not None:
            return self._prepare_image(image, tuple(inversion.image_size))
        reconstruction = self.decode_latents_to_pixels(inversion.latents[0]).clamp(-1, 1)
        return self._to_image_size(reconstruction, tuple(inversion.image_size))

    def _removal_output(self, branches: RemovalBranches, ctx, inversion, image, pixel_mask, output_type, return_dict):
        """Decoded results at the input's size, the input's own pixels outside the user's mask or (with
        ``keep_input_outside_attention_mask``) the automatic region, and the target's map at image resolution."""
        image_size = tuple(inversion.image_size)
        latent_map = normalize_map(branches.mean_map()).clamp(0, 1)
        attention_maps = F.interpolate(latent_map.unsqueeze(1), size=image_size, mode="bilinear", align_corners=False)
        attention_maps = attention_maps[:, 0].clamp(0, 1)
        if output_type == "latent":
            images, reconstructions, nsfw = branches.latents, branches.reconstruction, None
        else:
            images = self._to_image_size(self.decode_latents_to_pixels(branches.latents), image_size)
            reconstructions = self._to_image_size(self.decode_latents_to_pixels(branches.reconstruction), image_size)
            region = pixel_mask  # as every mask-based remover: outside the mask, the input's own pixels
            if region is None and ctx.options.keep_input_outside_attention_mask:  # ours: only the target is decoded
                region = ctx.automatic_region(latent_map).unsqueeze(1)
                region = F.interpolate(region, size=image_size, mode="bilinear", align_corners=False)
            if region is not None:
                images = blend(region, images, self._input_pixels(image, inversion).to(images.device))
            images, nsfw = self.run_safety_checker(images, self._execution_device, ctx.prompt_embeds.dtype)
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
            target_attention=branches.target_attention(),
            inversion=inversion,
            nsfw_content_detected=nsfw,
        )
