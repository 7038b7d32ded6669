"""MagicRemover on Stable Diffusion XL: the method of ``pipeline_magic_remover.py`` with SDXL's conditioning.

The removal (inversion, both branches, every option) is the Stable Diffusion pipeline's, inherited; this file holds
what SDXL adds: two text encoders and tokenizers with a pooled embedding, the size ids (``add_time_ids``), zeros for
the empty prompt (``force_zeros_for_empty_prompt``) and the autoencoder's float32 upcast. The method carries one
embedding tensor per branch (``prompt_embeds``, the inversion's ``null_embeddings``), so SDXL's extra conditioning
travels packed into that tensor as one more row (:func:`pack_conditioning`): batching for classifier-free guidance,
the negative-prompt inversion's "same halves" test, null-text optimisation and ``MagicRemoverInversion.save`` then
work on it unchanged. The UNet call unpacks it (``_unet_conditioning``).

Loads with ``DiffusionPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0", custom_pipeline=<this
file>, trust_remote_code=True)``: the module has exactly one ``DiffusionPipeline`` subclass (its base is imported
under a name deleted below).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .model_loading import read_settings
from .pipeline_code import drop_other_pipeline_classes, relative_imports, write_code
from .pipeline_magic_remover import MagicRemoverPipeline as StableDiffusionRemover

# diffusers' `custom_pipeline=<file>` copies only the sibling modules a pipeline file imports itself, not theirs in
# turn (its Hub route follows them): the base's modules are imported here as well, so that they all travel along.
from .attention_maps import normalize_map  # noqa: E402,F401
from .attention_processors import installed_processors  # noqa: E402,F401
from .content_initialization import PREFILLS  # noqa: E402,F401
from .images import trained_size  # noqa: E402,F401
from .inputs import check_prompt  # noqa: E402,F401
from .inversion import MagicRemoverInversion  # noqa: E402,F401
from .latent_images import vae_latents  # noqa: E402,F401
from .removal import RemovalOptions  # noqa: E402,F401
from .removal_steps import MagicRemoverPipelineOutput  # noqa: E402,F401
from .tokens import find_target_tokens  # noqa: E402,F401

#: SDXL's size ids: original size (h, w), crop's top left (y, x), target size (h, w)
TIME_ID_COUNT = 6


def pack_conditioning(hidden_states: torch.Tensor, pooled: torch.Tensor, time_ids: torch.Tensor | None = None):
    """``[B, L, D]`` hidden states, ``[B, P]`` pooled embedding and ``[B, 6]`` size ids as one ``[B, L + 1, D]`` tensor:
    the last row holds the pooled embedding, then the size ids (zeros until they are known), then zeros."""
    batch, _, width = hidden_states.shape
    pooled_width = pooled.shape[-1]
    if pooled_width + TIME_ID_COUNT > width:
        raise ValueError(f"A pooled embedding of width {pooled_width} and the size ids do not fit a row of {width}.")
    row = hidden_states.new_zeros(batch, 1, width)
    row[:, 0, :pooled_width] = pooled.to(row.dtype)
    if time_ids is not None:
        row[:, 0, pooled_width : pooled_width + TIME_ID_COUNT] = time_ids.to(row.dtype)
    return torch.cat([hidden_states, row], dim=1)


def unpack_conditioning(packed: torch.Tensor, pooled_width: int):
    """The inverse of :func:`pack_conditioning`: ``(hidden states, pooled embedding, size ids)``."""
    row = packed[:, -1]
    return packed[:, :-1], row[:, :pooled_width], row[:, pooled_width : pooled_width + TIME_ID_COUNT]


def with_time_ids(packed: torch.Tensor, time_ids: torch.Tensor, pooled_width: int) -> torch.Tensor:
    """``packed`` with its size ids replaced by ``time_ids`` (``[6]`` or ``[B, 6]``)."""
    hidden_states, pooled, _ = unpack_conditioning(packed, pooled_width)
    return pack_conditioning(hidden_states, pooled, time_ids.to(packed).expand(packed.shape[0], -1))


class MagicRemoverXLPipeline(StableDiffusionRemover):
    r"""
    Text-guided, mask-free object removal with a Stable Diffusion XL checkpoint (MagicRemover), e.g.
    ``stabilityai/stable-diffusion-xl-base-1.0``.

    The components of [`StableDiffusionXLPipeline`] less its ``image_encoder`` and ``feature_extractor`` (IP-Adapter
    is not supported, as in [`MagicRemoverPipeline`]); SDXL ships no safety checker. ``invert`` and ``__call__`` take
    the arguments of [`MagicRemoverPipeline`] and act the same; ``prompt_embeds`` there are this pipeline's packed
    form (what :meth:`encode_prompt` returns and an inversion records, :func:`pack_conditioning`). The size ids are
    SDXL's defaults for an image: the input's size as original size, no crop, the size it is processed at as target.
    ``clip_skip`` counts from the penultimate layer, as in SDXL. LoRA scales reach the first text encoder only.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = []
    _exclude_from_cpu_offload = []

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        force_zeros_for_empty_prompt: bool = True,
        removal_defaults: dict | None = None,
    ):
        DiffusionPipeline.__init__(self)  # the base's __init__ registers SD's components, not these
        self.register_modules(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        )  # fmt: skip
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self._set_image_processors()
        self.register_removal_defaults(removal_defaults)  # the model's tuned settings, kept in model_index.json

    @property
    def pooled_width(self) -> int:
        """The width of the second text encoder's pooled (projected) embedding."""
        return int(self.text_encoder_2.config.projection_dim)

    # ------------------------------------------------------------------------------------------------------------
    # SDXL's conditioning
    # ------------------------------------------------------------------------------------------------------------

    def _encode_tokens(self, prompts: list[str], device, clip_skip, max_length=None) -> torch.Tensor:
        """Both text encoders' hidden states side by side (the penultimate layer, or ``clip_skip`` more layers before
        it), and the second encoder's pooled embedding, packed (:func:`pack_conditioning`). Both tokenizers pad to their
        own length; ``max_length`` (the base's, for longer user embeddings) does not apply to the packed form."""
        layer = -2 if clip_skip is None else -(clip_skip + 2)
        hidden_states = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids  # fmt: skip
            output = encoder(ids.to(device), output_hidden_states=True)
            hidden_states.append(output.hidden_states[layer])
        return pack_conditioning(torch.cat(hidden_states, dim=-1), output.text_embeds)

    def size_ids(self, image_size, processing_size) -> torch.Tensor:
        """SDXL's ``add_time_ids`` for an image: original size ``image_size``, crop at (0, 0), target size
        ``processing_size``; checked against the UNet's added-embedding width, as diffusers' SDXL pipelines do."""
        ids = [*map(int, image_size), 0, 0, *map(int, processing_size)]
        expected = self.unet.add_embedding.linear_1.in_features
        given = self.unet.config.addition_time_embed_dim * len(ids) + self.pooled_width
        if given != expected:
            raise ValueError(
                f"The UNet expects an added embedding of width {expected}, but size ids and the second text encoder's "
                f"projection make {given}: check `unet.config.addition_time_embed_dim` and "
                "`text_encoder_2.config.projection_dim`."
            )
        return torch.tensor(ids, dtype=torch.float32)

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):  # fmt: skip
        """The base's, in the packed form, with SDXL's zeros (hidden states and pooled embedding) for the empty negative
        prompt when ``force_zeros_for_empty_prompt``, as diffusers' SDXL pipelines do."""
        zeros = negative_prompt is None and negative_prompt_embeds is None and self.config.force_zeros_for_empty_prompt
        prompt_embeds, negative_prompt_embeds = super().encode_prompt(
            prompt, device, num_images_per_prompt, do_classifier_free_guidance and not zeros, negative_prompt,
            prompt_embeds, negative_prompt_embeds, lora_scale, clip_skip,
        )  # fmt: skip
        if do_classifier_free_guidance and zeros:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
        return prompt_embeds, negative_prompt_embeds

    def _text_conditioning(self, prompts, prompt_embeds, lora_scale, clip_skip, image_size, processing_size):
        """The base's prompt and null conditioning (the null one SDXL's zeros, see :meth:`encode_prompt`) with this
        image's size ids."""
        prompt_embeds, null = super()._text_conditioning(prompts, prompt_embeds, lora_scale, clip_skip, image_size,
                                                         processing_size)  # fmt: skip
        time_ids = self.size_ids(image_size, processing_size)
        return tuple(with_time_ids(embeds, time_ids, self.pooled_width) for embeds in (prompt_embeds, null))

    def _unet_conditioning(self, embeds: torch.Tensor) -> dict:
        """Unpacks the hidden states, the pooled embedding and the size ids for the UNet. Null-text optimisation
        (eq. 6) optimises the null text's hidden states only: the pooled embedding and the size ids are detached, so
        they get no gradient and stay as encoded."""
        hidden_states, pooled, time_ids = unpack_conditioning(embeds, self.pooled_width)
        dtype = self.unet.dtype
        added = {"text_embeds": pooled.detach().to(dtype), "time_ids": time_ids.detach().to(dtype)}
        return {"encoder_hidden_states": hidden_states.to(dtype), "added_cond_kwargs": added}

    def _check_text_inputs(self, prompt, prompt_embeds, clip_skip, cross_attention_kwargs, num_images_per_prompt=1,
                           inversion=None):  # fmt: skip
        """The base's checks, and ``prompt_embeds`` in the packed form: one row more than the tokenizer's length."""
        rows = int(self.tokenizer.model_max_length) + 1
        if isinstance(prompt_embeds, torch.Tensor) and prompt_embeds.ndim == 3 and prompt_embeds.shape[1] != rows:
            raise ValueError(
                f"`prompt_embeds` must be this pipeline's packed form [batch, {rows}, width] (from "
                f"`pipe.encode_prompt` or an inversion's `prompt_embeds`), got shape {tuple(prompt_embeds.shape)}."
            )
        super()._check_text_inputs(prompt, prompt_embeds, clip_skip, cross_attention_kwargs, num_images_per_prompt,
                                   inversion)  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------
    # SDXL's autoencoder
    # ------------------------------------------------------------------------------------------------------------

    @contextmanager
    def _vae_in_float32(self):
        """SDXL's autoencoder overflows in float16; as diffusers' SDXL pipelines do when its config says
        ``force_upcast``, it runs in float32, and is put back to its own dtype afterwards (also on error)."""
        dtype = self.vae.dtype
        upcast = dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            yield
        finally:
            if upcast:
                self.vae.to(dtype=dtype)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        with self._vae_in_float32():
            return super().encode_image(image)

    def decode_latents_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        with self._vae_in_float32():
            return super().decode_latents_to_pixels(latents)

    def run_safety_checker(self, image, device, dtype):
        """SDXL has no safety checker (diffusers' SDXL pipelines have none either)."""
        return image, None


def is_sdxl_model_index(model_index: dict) -> bool:
    """Whether a model folder's ``model_index.json`` (as a dict) describes an SDXL checkpoint this pipeline loads: one
    with SDXL's second text encoder and tokenizer (the refiner, which lacks the first encoder, is not one)."""
    return all(model_index.get(name, [None])[-1] for name in ("text_encoder", "text_encoder_2", "tokenizer_2"))


def read_removal_defaults(folder) -> dict:
    """The tuned call settings a local model folder ships (``removal_defaults`` in its ``model_index.json``; ``{}``
    without any); see :func:`~model_loading.read_settings`."""
    return read_settings(folder, MagicRemoverXLPipeline.settable_arguments()) or {}


#: The sibling modules this file imports, directly or through each other: what travels with it as ``pipeline.py``
SIBLING_MODULES = tuple(relative_imports(__file__))


def write_pipeline_code(folder, class_name: str = "MagicRemoverXLPipeline") -> None:
    """Copies this file as ``pipeline.py`` with its sibling modules into ``folder``: the Hub layout of an SDXL model
    repo that carries this pipeline (see :func:`~pipeline_code.write_code`)."""
    write_code(folder, class_name, __file__)


# The base is in this module's namespace only while the class above is defined: diffusers' `custom_pipeline=` loader
# takes the one `DiffusionPipeline` subclass a pipeline file holds, and refuses a file with two.
del StableDiffusionRemover
drop_other_pipeline_classes(globals(), keep="MagicRemoverXLPipeline")
