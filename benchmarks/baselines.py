"""What a user would pick instead of MagicRemover, run on the same model and, where they share one, the same inversion.

* :func:`prompt_to_prompt_reweight`: the paper's appendix A.2 baseline: the target word's cross-attention multiplied
  by 0 while denoising from the same null-text inversion.
* :func:`blended_latent_diffusion`: Blended Diffusion in latent space (Avrahami et al.), the seed document 002: given
  the ground-truth mask and a prompt without the object, at every step the latent outside the mask is replaced by the
  noised original.
* :func:`telea_inpaint`: classical inpainting (OpenCV, Telea) with the ground-truth mask, standing for mask-based
  inpainters.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from magic_remover.attention_processors import (
    RemovalProcessor,
    attention_layer_names,
    finish_attention_output,
    installed_processors,
    project_attention_inputs,
)
from magic_remover.inversion import DDIMSchedule, MagicRemoverInversion, ddim_step
from magic_remover.tokens import find_target_tokens


class CrossAttentionReweightProcessor(RemovalProcessor):
    """Prompt-to-Prompt re-weighting: the conditional half's attention to ``tokens`` is multiplied by ``factor``."""

    def __init__(self, name, original, tokens: list[int], factor: float):
        super().__init__(state=None, name=name, original=original)
        self.tokens, self.factor = tokens, factor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        query, key, value, mask, residual, spatial = project_attention_inputs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        half = query.shape[0] // 2
        uncond = F.scaled_dot_product_attention(query[:half], key[:half], value[:half])
        probs = (torch.matmul(query[half:].float(), key[half:].float().transpose(-1, -2)) * attn.scale).softmax(-1)
        weights = torch.ones(probs.shape[-1], device=probs.device)
        weights[self.tokens] = self.factor
        cond = torch.matmul((probs * weights).to(value.dtype), value[half:])
        return finish_attention_output(attn, torch.cat([uncond, cond]), residual, spatial, query.dtype)


def _decode(pipe, latents) -> Image.Image:
    pixels = pipe.decode_latents_to_pixels(latents)
    return pipe.image_processor.postprocess(pixels, output_type="pil")[0]


@torch.no_grad()
def prompt_to_prompt_reweight(pipe, inversion: MagicRemoverInversion, target: str, factor: float = 0.0) -> Image.Image:
    """Denoise the null-text inversion with the target word's cross-attention scaled by ``factor`` (0 = removed)."""
    schedule = DDIMSchedule.from_scheduler_config(pipe.scheduler.config, inversion.num_inference_steps)
    tokens = [p for word in find_target_tokens(pipe.tokenizer, inversion.prompt[0], target) for p in word]
    current = pipe.unet.attn_processors
    _, cross = attention_layer_names(pipe.unet)
    processors = {name: CrossAttentionReweightProcessor(name, current[name], tokens, factor) for name in cross}
    latents = inversion.latents[-1].clone()
    with installed_processors(pipe.unet, processors):
        for i, t in enumerate(schedule.timesteps):
            eps = pipe._cfg_epsilon(latents, t, inversion.null_embeddings[i], inversion.prompt_embeds,
                                    inversion.guidance_scale, schedule)  # fmt: skip
            latents = ddim_step(latents, eps, eps, schedule.alpha(t), schedule.alpha_after(i))
    return _decode(pipe, latents)


@torch.no_grad()
def blended_latent_diffusion(pipe, image: Image.Image, mask: np.ndarray, prompt: str, num_inference_steps: int = 50,
                             guidance_scale: float = 7.5, seed: int = 0) -> Image.Image:  # fmt: skip
    """Blended latent diffusion: generate ``prompt`` inside ``mask`` (bool HxW), keep the noised original outside it
    at every step, and composite the decoded result with the input outside the mask."""
    device = pipe._execution_device
    schedule = DDIMSchedule.from_scheduler_config(pipe.scheduler.config, num_inference_steps)
    pixels = pipe.image_processor.preprocess(image).float()
    z0 = pipe.encode_image(pixels)
    latent_mask = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=z0.shape[-2:],
                                mode="bilinear", align_corners=False).to(device)  # fmt: skip
    latent_mask = (latent_mask > 0).float()  # Blended Latent Diffusion dilates the mask to the latent grid
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    text, empty = pipe.encode_prompt([prompt], device, 1, True)
    latents = noise.clone()
    for i, t in enumerate(schedule.timesteps):
        eps = pipe._cfg_epsilon(latents, t, empty, text, guidance_scale, schedule)
        latents = ddim_step(latents, eps, eps, schedule.alpha(t), schedule.alpha_after(i))
        alpha_next = schedule.alpha_after(i)
        background = alpha_next**0.5 * z0 + (1 - alpha_next) ** 0.5 * noise  # the original, noised to the next level
        latents = latent_mask * latents + (1 - latent_mask) * background
    result = np.asarray(_decode(pipe, latents), dtype=np.float32)
    keep = ~mask[..., None]
    return Image.fromarray(np.where(keep, np.asarray(image, dtype=np.float32), result).astype(np.uint8))


def telea_inpaint(image: Image.Image, mask: np.ndarray, radius: int = 3) -> Image.Image:
    """OpenCV's Telea inpainting of ``mask`` (bool HxW)."""
    import cv2

    array = np.asarray(image.convert("RGB"))
    filled = cv2.inpaint(array, mask.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
    return Image.fromarray(filled)


def ledits_pp_pipeline(pipe):
    """diffusers' ``LEditsPPPipelineStableDiffusion`` built from ``pipe``'s own components (same model, same weights).

    LEDITS++ installs its own attention processors and does not restore them (diffusers issue #13635), so it gets
    its own copy of the UNet's processor table back after each use (:func:`ledits_pp_remove` restores them).
    """
    from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusion

    # LEDITS++'s own scheduler (its paper and diffusers' docs); with DDIMScheduler, diffusers 0.42's invert() indexes
    # alphas_cumprod with a float tensor and raises IndexError
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="sde-dpmsolver++",
                                                        solver_order=2)  # fmt: skip
    ledits = LEditsPPPipelineStableDiffusion(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                             unet=pipe.unet, scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    ledits.set_progress_bar_config(disable=True)
    return ledits


def ledits_pp_remove(ledits, image: Image.Image, caption: str, target: str, num_inference_steps: int = 20,
                     source_guidance_scale: float = 3.5, edit_guidance_scale: float = 5.0,
                     edit_threshold: float = 0.9, seed: int = 0) -> Image.Image:  # fmt: skip
    """LEDITS++ mask-free concept removal: its own inversion of ``image`` under ``caption``, then ``target`` as a
    reversed editing prompt (``editing_prompt=[target]``, ``reverse_editing_direction=[True]``).

    Its default intersect mask (``use_intersect_mask=True``) cannot run on the embedded model: LEDITS++ reads
    cross-attention maps at a quarter of the latent's resolution from the down and up blocks (SD's 16x16 of a 64x64
    latent), and the embedded UNet's 16x16 latent has cross-attention there only at 16x16 and 8x8 (4x4 is its mid
    block): ``aggregate_attention`` finds no map and raises "torch.cat(): expected a non-empty list of Tensors". So
    it runs with its implicit (noise-estimate) mask only, ``edit_threshold`` being that mask's quantile."""
    processors = dict(ledits.unet.attn_processors)
    try:
        ledits.invert(image=image, source_prompt=caption, source_guidance_scale=source_guidance_scale,
                      num_inversion_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed))  # fmt: skip
        out = ledits(editing_prompt=[target], reverse_editing_direction=[True], edit_guidance_scale=[edit_guidance_scale],
                     edit_threshold=[edit_threshold], use_intersect_mask=False, use_cross_attn_mask=False,
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
    finally:
        ledits.unet.set_attn_processor(processors)
    return out.images[0].resize(image.size, Image.BICUBIC) if out.images[0].size != image.size else out.images[0]
