"""MagicRemover (Yang et al., 2023): tuning-free, text-guided object removal with Stable Diffusion.

``__call__`` follows Algorithm 1 of the paper's appendix A.1. Sibling modules are imported relatively so this file
also loads through ``DiffusionPipeline.from_pretrained(..., custom_pipeline=<this file>, trust_remote_code=True)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

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

from .attention_maps import normalize_map
from .attention_processors import installed_processors
from .content_initialization import PREFILLS, ContentInitialization, content_shifted_latents
from .inputs import (
    check_common_inputs,
    check_invert_inputs,
    check_mask_values,
    check_prompt,
    image_batch_and_size,
    is_number,
)
from .inversion import (
    INVERSION_METHODS,
    DDIMSchedule,
    MagicRemoverInversion,
    ddim_inversion,
    check_inversion_model,
    ddim_step,
    model_fingerprint,
    model_name,
    null_text_optimization,
    to_epsilon,
)
from .latent_images import LatentImageMixin
from .model_loading import MagicRemoverLoadingMixin, read_settings, with_model_defaults
from .pipeline_code import drop_other_pipeline_classes, relative_imports, write_code
from .removal import (
    RemovalBranches,
    RemovalOptions,
    cfg_epsilon,
    constrain,
    edit_pass,
    guided_step,
)
from .removal_steps import RemovalStepsMixin, one_call_at_a_time
from .tokens import check_distinct_targets, find_target_tokens, negative_prompts, protected_token_groups

# diffusers copies only this file's direct relative imports into its module cache (`check_imports`), so every module
# a sibling imports is imported here too: `images` is `inputs`' and `latent_images`'
from .images import to_rgb  # noqa: E402,F401

# Re-exported where code written before the split imports them from
from .attention_maps import protected_word_maps  # noqa: E402,F401
from .latent_images import vae_latents  # noqa: E402,F401
from .model_loading import DEFAULTS_FILE  # noqa: E402,F401
from .removal_steps import MagicRemoverPipelineOutput  # noqa: E402,F401

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

#: ``invert``'s default, and ``__call__``'s without an ``inversion``: chosen by ``benchmarks/speed.py`` (not the paper's)
DEFAULT_INVERSION_METHOD = "negative-prompt"

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import load_image
        >>> from magic_remover import MagicRemoverPipeline

        >>> pipe = MagicRemoverPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", dtype=torch.float16, safety_checker=None
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


class MagicRemoverPipeline(
    MagicRemoverLoadingMixin,
    RemovalStepsMixin,
    LatentImageMixin,
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
        removal_defaults: dict | None = None,
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
        self._set_image_processors()
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self.register_removal_defaults(removal_defaults)

    def _set_image_processors(self) -> None:
        """The autoencoder's scale factor and the processors for images and masks, from the registered ``vae``."""
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_convert_grayscale=True
        )

    # ------------------------------------------------------------------------------------------------------------
    # Building blocks
    # ------------------------------------------------------------------------------------------------------------

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
                    negatives = negative_prompts(negative_prompt, prompt, batch)
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

    def _unet_epsilon(self, latents: torch.Tensor, timestep, embeds: torch.Tensor, schedule: DDIMSchedule):
        """One UNet call, its output converted to epsilon in float32 (any prediction type, any UNet dtype)."""
        output = self.unet(
            latents.to(self.unet.dtype), timestep, **self._unet_conditioning(embeds),
            cross_attention_kwargs=self.cross_attention_kwargs, return_dict=False,
        )[0]
        return to_epsilon(output.float(), latents, schedule.alpha(timestep), schedule.prediction_type)

    def _unet_conditioning(self, embeds: torch.Tensor) -> dict:
        """The UNet's conditioning arguments from one embedding tensor, the form the method carries (and the inversion
        stores) for each branch: here the text encoder's hidden states. A model family with more conditioning (SDXL's
        pooled embedding and size ids) packs it into that tensor and unpacks it here."""
        return {"encoder_hidden_states": embeds.to(self.unet.dtype)}

    def _text_conditioning(self, prompts, prompt_embeds, lora_scale, clip_skip, image_size, processing_size):
        """``(prompt, null)`` conditioning of an inversion, float32: the prompt's and the empty prompt's embeddings.
        ``image_size`` and ``processing_size`` (the input's size, and the size it is encoded at) are for model
        families whose conditioning depends on them (SDXL's size ids)."""
        prompt_embeds, empty = self.encode_prompt(
            prompts, self._execution_device, 1, True, prompt_embeds=prompt_embeds, lora_scale=lora_scale,
            clip_skip=clip_skip,
        )  # fmt: skip
        return prompt_embeds.float(), empty.float()

    def _cfg_epsilon(self, latents, timestep, null_embeds, prompt_embeds, guidance_scale, schedule, state=None, mode=None):
        """Algorithm 1, line 5 with this pipeline's UNet (:func:`~removal.cfg_epsilon`)."""
        epsilon = lambda z, t, embeds: self._unet_epsilon(z, t, embeds, schedule)  # noqa: E731
        return cfg_epsilon(epsilon, latents, timestep, null_embeds, prompt_embeds, guidance_scale, state, mode)

    # ------------------------------------------------------------------------------------------------------------
    # Inversion (Algorithm 1, lines 1-3)
    # ------------------------------------------------------------------------------------------------------------

    @one_call_at_a_time
    @with_model_defaults(renamed={"inversion_method": "method"})
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
        check_invert_inputs(method, num_inner_steps, learning_rate, early_stop_epsilon)
        check_common_inputs(num_inference_steps, guidance_scale, generator, self.scheduler.config.num_train_timesteps)
        if image is None:
            raise ValueError("`image` is required to invert.")
        batch, image_size = self._check_image(image)
        prompts = check_prompt(prompt, batch)
        if prompt_embeds is not None and prompt_embeds.shape[0] != batch:
            raise ValueError(
                f"`prompt_embeds` has a batch of {prompt_embeds.shape[0]} but {batch} image(s) were given."
            )

        schedule = DDIMSchedule.from_scheduler_config(self.scheduler.config, num_inference_steps)
        z0 = self.image_latents(image)  # line 1
        processing_size = tuple(int(s) * self.vae_scale_factor for s in z0.shape[-2:])
        self._cross_attention_kwargs, self._clip_skip = cross_attention_kwargs, clip_skip
        lora_scale = (cross_attention_kwargs or {}).get("scale")  # where StableDiffusionPipeline reads it
        prompt_embeds, empty = self._text_conditioning(prompts, prompt_embeds, lora_scale, clip_skip, image_size,
                                                       processing_size)  # fmt: skip
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
            processing_size=processing_size,
            final_losses=losses,
            clip_skip=clip_skip,
            lora_scale=1.0 if lora_scale is None else float(lora_scale),
            model_fingerprint=model_fingerprint(self.unet, self.text_encoder, self.vae),
            model_name=model_name(self.unet),
        )

    # ------------------------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------------------------

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
            if not (is_number(scale) and math.isfinite(scale)):
                raise ValueError(
                    f"`cross_attention_kwargs['scale']` (the LoRA scale) must be a finite number, got {scale!r}."
                )

    def check_inputs(
        self,
        *,
        image,
        prompt,
        target,
        mask_image,
        inversion,
        inversion_method,
        num_inference_steps,
        guidance_scale,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
        options: RemovalOptions,
    ) -> list[str]:
        """Every check of a removal call that needs no model pass; returns the targets as a list."""
        check_common_inputs(num_inference_steps, guidance_scale, generator, self.scheduler.config.num_train_timesteps)
        if image is None and inversion is None:
            raise ValueError("Pass `image` (to invert) or `inversion` (from `pipe.invert`).")
        if inversion is not None and not isinstance(inversion, MagicRemoverInversion):
            raise TypeError(f"`inversion` must be a MagicRemoverInversion from `pipe.invert`, got {type(inversion).__name__}.")
        if inversion is not None:  # made by these models: refused before any model pass
            check_inversion_model(inversion, self.unet, self.text_encoder, self.vae)
        batch = self._check_image(image)[0] if image is not None else inversion.batch_size
        if prompt is None and inversion is None:
            raise ValueError("`prompt` is required: a caption of the image that names the target.")
        targets = [target] if isinstance(target, str) else target
        if not (isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets)):
            raise TypeError(f"`target` must be a word or phrase of the prompt (str) or a non-empty list of them, got {target!r}.")
        check_distinct_targets(targets)
        options.check(int(self.scheduler.config.num_train_timesteps))
        options.check_some_step_is_guided(DDIMSchedule.from_scheduler_config(self.scheduler.config, num_inference_steps))
        if inversion_method not in INVERSION_METHODS:
            raise ValueError(f"`inversion_method` must be one of {INVERSION_METHODS}, got {inversion_method!r}.")
        self._warn_about_options_without_effect(options, mask_image is not None)
        if options.keep_input_outside_attention_mask and mask_image is None:
            if image is None:  # README's reuse, `pipe(inversion=inv, ...)`, on a model that ships the option on
                logger.warning(
                    "`keep_input_outside_attention_mask` without `image`: outside the automatic mask the result keeps "
                    "the autoencoder's reconstruction of the inverted image; pass `image` along with `inversion` to "
                    "keep its own pixels."
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
            self._check_mask(mask_image, image, inversion, output_type)
        prompts = check_prompt(prompt if prompt is not None else inversion.prompt, batch)
        for text in prompts:  # looked up before any model pass: a typo must not cost an inversion
            for target in targets:
                find_target_tokens(self.tokenizer, text, target)
            if options.protect is not None:  # an absent word is named now
                words = list(options.protected_words)
                protected_token_groups(self.tokenizer, self._prompts([text])[0], list(targets), words)
        options.fill_prompts(prompts, list(targets))  # a fill prompt per image
        return list(targets)

    def _warn_about_options_without_effect(self, options: RemovalOptions, has_user_mask: bool) -> None:
        """A user's option that cannot act in this call is named in a warning (a model's setting is not)."""
        filled = getattr(self, "_defaults_filled", ())
        for name in ("attention_mask_threshold", "attention_mask_components"):
            if getattr(options, name) is not None and not options.uses_automatic_mask(has_user_mask) and name not in filled:
                logger.warning(
                    f"`{name}` only shapes the automatic mask of `blend_outside_attention_mask`, "
                    "`keep_input_outside_attention_mask` and `content_initialization`, which are off or replaced by "
                    "`mask_image` in this call: it has no effect."
                )
        if options.protect_cutoff is not None and has_user_mask and "protect_cutoff" not in filled:
            logger.warning("`protect_cutoff` shapes the automatic region, which `mask_image` replaces: it has no effect.")
        if options.region_refinement and has_user_mask and "region_refinement" not in filled:
            logger.warning("`region_refinement` refines the automatic region, which `mask_image` replaces: it has no effect.")

    def _check_mask(self, mask_image, image, inversion, output_type) -> None:
        if image is None and inversion is None:
            raise ValueError("`mask_image` needs an `image` or an `inversion`.")
        mask_size = image_batch_and_size(mask_image, "mask_image")[1]
        reference = self._image_batch_and_size(image)[1] if image is not None else tuple(inversion.image_size)
        if mask_size != tuple(reference):
            raise ValueError(f"`mask_image` is {mask_size[0]}x{mask_size[1]} but the image is {reference[0]}x{reference[1]}.")
        if image is None and output_type != "latent":
            raise ValueError(
                "With `mask_image` the result outside the mask is the input's own pixels: pass `image` along with "
                "`inversion`."
            )
        check_mask_values(mask_image)

    # ------------------------------------------------------------------------------------------------------------
    # The removal's steps (Algorithm 1; the passes themselves are `removal.py`'s)
    # ------------------------------------------------------------------------------------------------------------

    def _content_initialized_latents(self, image, inversion, latents, target_map, pixel_mask, ctx, alpha_t):
        """``latents`` (z_t of the reconstruction) moved onto the pre-filled input inside the target's region
        (``content_initialization``): the user's mask, else the automatic region of ``target_map`` (the target's
        soft map averaged over the reconstruction passes so far)."""
        processing_size = tuple(inversion.processing_size)
        z0 = inversion.latents[0].to(latents.device, torch.float32)
        if image is not None and not self._is_latent_image(image):
            source = self._prepare_image(image, processing_size).to(latents.device)
        else:  # only latents or an inversion: the autoencoder's round trip of the input stands in for it
            source = self.decode_latents_to_pixels(z0).float().clamp(-1, 1)
        if ctx.latent_mask is not None:
            region = ctx.latent_mask
            pixel_region = F.interpolate(pixel_mask, size=processing_size, mode="bilinear", align_corners=False)
        else:
            region = ctx.automatic_region(normalize_map(target_map).clamp(0, 1)).unsqueeze(1)
            pixel_region = F.interpolate(region, size=processing_size, mode="nearest")
        filled = PREFILLS[ctx.options.content_initialization](source, pixel_region)
        z0_filled = self.encode_image(filled.to(self.vae.dtype))
        return content_shifted_latents(latents, z0, z0_filled.float(), region.to(latents.dtype), alpha_t)

    # ------------------------------------------------------------------------------------------------------------
    # Algorithm 1
    # ------------------------------------------------------------------------------------------------------------

    @one_call_at_a_time
    @with_model_defaults()
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
        fill_prompt: bool | str | list[str] | None = None,
        region_refinement: int = 0,
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
                pass: one VAE encode and one ``cv2.inpaint``. ``"shift"`` (ours) pre-fills with copies of the image's
                own pixels instead, one shift per tile of the region, chosen by the known pixels around it
                (``shift_prefill``): a texture the object interrupts (stripes, checks) continues through the hole.
                ``None`` (default): off; the embedded model ships it on.
            fill_prompt: the edit branch's text (ours, not in the paper): ``True`` is ``prompt`` without the noun
                phrases that hold the target (``prompt_without_targets``: "a cat and a dog on the grass" without "dog"
                is "a cat on the grass"), a string or list of strings that text itself. The branch then fills the
                target's place with what the caption says is there instead of with what names the target: with the
                prompt, the model paints an object of the target's shape, often in another colour, in the hole. The
                energy still reads the target word's attention, from one more conditional UNet evaluation per guided
                pass. ``None`` (default): the prompt, as in the paper; the embedded model ships ``True``.
            region_refinement: ``k`` (ours, in the spirit of DiffSegmenter and iSeg): the reconstruction's map of the
                target is spread ``k`` times through the same pass's self-attention (``refined_region_map``: each
                pixel takes the map's mean over the pixels it attends to, at the finest level of at most 32x32), so
                the automatic region, content initialisation and the blends cover the whole object where the word's
                map marks only its core; protected objects stay out. No extra UNet pass. 0 (default): off.
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
        options = RemovalOptions.from_arguments(locals())  # each option acts in one place of `removal.py`
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if inversion_method is None:  # a given inversion says how it was made; else invert's default
            inversion_method = getattr(inversion, "method", None) or DEFAULT_INVERSION_METHOD

        # 1. Check inputs, all before any model pass
        self._check_text_inputs(prompt, prompt_embeds, clip_skip, cross_attention_kwargs, num_images_per_prompt,
                                inversion)  # fmt: skip
        targets = self.check_inputs(
            image=image, prompt=prompt, target=target, mask_image=mask_image, inversion=inversion,
            inversion_method=inversion_method, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=generator, output_type=output_type, options=options,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        self._interrupt, self._guidance_scale = False, guidance_scale
        self._cross_attention_kwargs, self._clip_skip = cross_attention_kwargs, clip_skip
        schedule = DDIMSchedule.from_scheduler_config(self.scheduler.config, num_inference_steps)

        # 2. Lines 1-3: z_0 = E(x_0), DDIM inversion, null-text optimisation (eq. 6), or the given inversion
        inversion = self._inversion_for_call(image, prompt, inversion, inversion_method, schedule, guidance_scale,
                                             generator, prompt_embeds, clip_skip, cross_attention_kwargs)  # fmt: skip

        # 3. The target words k (eq. 9), the protected words (ours), the user's mask (eq. 13), the per-step plan
        pixel_mask = self._pixel_mask(mask_image, inversion)
        ctx = self._removal_context(inversion, schedule, targets, options, pixel_mask)
        branches = RemovalBranches(inversion.latents[-1])  # line 4: both branches start from z_T
        prefill = ContentInitialization(options.content_initialization) if options.content_initialization else None
        self._num_timesteps = len(schedule.timesteps)

        # 4. Denoising loop, lines 4-14, with the processors of eq. 10 installed only for it
        try:
            with installed_processors(self.unet, self._removal_processors(ctx.state, options)), self.progress_bar(
                total=len(schedule.timesteps)
            ) as bar:
                bar.set_description("MagicRemover")
                for i, t in enumerate(schedule.timesteps):
                    if self.interrupt:
                        continue
                    step, alpha_t, alpha_next = ctx.plan[i], schedule.alpha(t), schedule.alpha_after(i)
                    # reconstruction branch: CFG with null_t (eq. 5); records K_rec, V_rec (eq. 10) and A_{t,k}
                    eps_rec, rec_attention, soft_mask = self._reconstruction_epsilon(ctx, branches.reconstruction, i, t)
                    branches.record(step, soft_mask)
                    if prefill is not None and not branches.diverged:  # MagicEraser: leave from a pre-filled image
                        prefill.observe(soft_mask)
                        if step.guided:
                            branches.latents = self._content_initialized_latents(
                                image, inversion, branches.latents, prefill.mean_map(), pixel_mask, ctx, alpha_t
                            )
                            branches.diverged = True
                    if step.guided:  # lines 5-13: eq. 8/9, classifier optimisation (eq. 12), the DDIM step (eq. 3)
                        branches.latents, edit_attention = guided_step(ctx, branches.latents, i, t, alpha_t, alpha_next)
                        branches.diverged = True
                        branches.record_guided(t, rec_attention, edit_attention)
                    elif branches.diverged:  # unguided edit step, still attending to K_rec, V_rec (eq. 10)
                        eps = edit_pass(ctx, branches.latents, i, t)
                        branches.latents = ddim_step(branches.latents, eps, eps, alpha_t, alpha_next)
                    branches.reconstruction = ddim_step(branches.reconstruction, eps_rec, eps_rec, alpha_t, alpha_next)
                    if not branches.diverged:
                        branches.latents = branches.reconstruction.clone()
                    constrain(ctx, branches, inversion, i)  # direct inversion, mask (appendix A.4), blend
                    self._step_end(callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, branches, ctx)
                    bar.update()
        finally:
            ctx.state.clear()

        # 5. Decode at the input's size; the target's soft map at image resolution
        return self._removal_output(branches, ctx, inversion, image, pixel_mask, output_type, return_dict)

    def run_safety_checker(self, image, device, dtype):
        if self.safety_checker is None:
            return image, None
        denormalized = (image / 2 + 0.5).clamp(0, 1)
        features = self.feature_extractor(
            self.image_processor.postprocess(image, output_type="pil"), return_tensors="pt"
        ).to(device)
        checked, has_nsfw = self.safety_checker(images=denormalized, clip_input=features.pixel_values.to(dtype))
        return checked * 2 - 1, has_nsfw


def read_removal_defaults(folder) -> dict:
    """The tuned call settings a local model folder ships (``removal_defaults`` in its ``model_index.json``; ``{}``
    without any); see :func:`~model_loading.read_settings`."""
    return read_settings(folder, MagicRemoverPipeline.settable_arguments()) or {}


#: The sibling modules this file imports, directly or through each other: what travels with it as ``pipeline.py``
SIBLING_MODULES = tuple(relative_imports(__file__))


def write_pipeline_code(folder, class_name: str = "MagicRemoverPipeline") -> None:
    """Copies this file as ``pipeline.py`` with its sibling modules into ``folder`` (see :func:`~pipeline_code.write_code`)."""
    write_code(folder, class_name, __file__)


drop_other_pipeline_classes(globals(), keep="MagicRemoverPipeline")
