"""DDIM and null-text inversion, and the DDIM arithmetic the removal loop shares with them.

Everything here works on epsilon predictions in float32, whatever the UNet's dtype or prediction type: the
pipeline converts the UNet's output with :func:`to_epsilon` before it reaches these functions. The functions
take a ``noise_fn(latents, timestep, encoder_hidden_states) -> epsilon`` callable instead of a UNet so that they
stay independent of processors, offloading and dtypes, and so tests can call them with any function.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

NoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

INVERSION_METHODS = ("null-text", "ddim", "negative-prompt", "direct")

# Methods whose inversion does not depend on the CFG scale: reusing one at another ``guidance_scale`` is sound.
SCALE_FREE_METHODS = ("ddim", "negative-prompt", "direct")


# ----------------------------------------------------------------------------------------------------------------
# Pure DDIM arithmetic (eq. 3 with sigma = 0, and eq. 12)
# ----------------------------------------------------------------------------------------------------------------


def to_epsilon(model_output: torch.Tensor, latents: torch.Tensor, alpha_prod_t, prediction_type: str) -> torch.Tensor:
    """Converts a UNet output of any prediction type to the epsilon it implies at ``latents``."""
    alpha_prod_t = torch.as_tensor(alpha_prod_t, dtype=latents.dtype, device=latents.device)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_prod_t.sqrt() * model_output + (1 - alpha_prod_t).sqrt() * latents
    if prediction_type == "sample":
        return (latents - alpha_prod_t.sqrt() * model_output) / (1 - alpha_prod_t).sqrt()
    raise ValueError(
        f"Unsupported scheduler prediction_type {prediction_type!r}: expected 'epsilon', 'v_prediction' or 'sample'."
    )


def predict_x0(latents: torch.Tensor, epsilon: torch.Tensor, alpha_prod_t) -> torch.Tensor:
    """The "predicted x0" term of eq. 3."""
    alpha_prod_t = torch.as_tensor(alpha_prod_t, dtype=latents.dtype, device=latents.device)
    return (latents - (1 - alpha_prod_t).sqrt() * epsilon) / alpha_prod_t.sqrt()


def ddim_step(
    latents: torch.Tensor,
    epsilon_x0: torch.Tensor,
    epsilon_direction: torch.Tensor,
    alpha_prod_t,
    alpha_prod_next,
) -> torch.Tensor:
    """Deterministic DDIM move from ``alpha_prod_t`` to ``alpha_prod_next`` (eq. 3, sigma = 0).

    The two epsilons may differ: MagicRemover predicts x0 with the unguided epsilon and points the direction with the
    guided one (Algorithm 1, line 13). With ``alpha_prod_next > alpha_prod_t`` this is a denoising step, with
    ``alpha_prod_next < alpha_prod_t`` an inversion step, and with ``alpha_prod_next == alpha_prod_t`` the classifier
    optimisation re-noising of eq. 12.
    """
    alpha_prod_next = torch.as_tensor(alpha_prod_next, dtype=latents.dtype, device=latents.device)
    x0 = predict_x0(latents, epsilon_x0, alpha_prod_t)
    return alpha_prod_next.sqrt() * x0 + (1 - alpha_prod_next).sqrt() * epsilon_direction


def classifier_optimization_step(latents, epsilon, epsilon_guided, alpha_prod_t) -> torch.Tensor:
    """Eq. 12: re-noise ``latents`` in place at the same timestep with the guided epsilon as the direction."""
    return ddim_step(latents, epsilon, epsilon_guided, alpha_prod_t, alpha_prod_t)


def classifier_free_guidance(noise_uncond: torch.Tensor, noise_text: torch.Tensor, guidance_scale: float):
    """Classifier-free guidance in diffusers' convention: ``guidance_scale = 1 + s`` of the paper's eq. 5."""
    return noise_uncond + guidance_scale * (noise_text - noise_uncond)


@dataclass(frozen=True)
class DDIMSchedule:
    """The DDIM timesteps and cumulative alphas the method uses, derived from any scheduler's config.

    The pipeline's own scheduler is never stepped nor reconfigured: a private ``DDIMScheduler`` is built from its
    config, so Euler, DPM-Solver or LCM users keep their scheduler untouched while the method runs on DDIM, which
    inversion requires.
    """

    timesteps: torch.Tensor  # descending, as used for denoising
    alphas_cumprod: torch.Tensor  # float32, indexed by training timestep
    final_alpha_cumprod: float
    num_train_timesteps: int
    prediction_type: str

    @classmethod
    def from_scheduler_config(cls, config, num_inference_steps: int) -> "DDIMSchedule":
        from diffusers import DDIMScheduler
        from diffusers.utils import logging as diffusers_logging

        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # from_config warns about keys other schedulers carry
        try:
            ddim = DDIMScheduler.from_config(dict(config))
        finally:
            diffusers_logging.set_verbosity(verbosity)
        ddim.set_timesteps(num_inference_steps)
        return cls(
            timesteps=ddim.timesteps.clone().long(),
            alphas_cumprod=ddim.alphas_cumprod.clone().float(),
            final_alpha_cumprod=float(ddim.final_alpha_cumprod),
            num_train_timesteps=int(ddim.config.num_train_timesteps),
            prediction_type=str(ddim.config.prediction_type),
        )

    def __len__(self) -> int:
        return len(self.timesteps)

    def alpha(self, timestep) -> float:
        return float(self.alphas_cumprod[int(timestep)])

    def alpha_after(self, step_index: int) -> float:
        """Cumulative alpha after denoising step ``step_index`` (the next timestep, or the clean end)."""
        if step_index + 1 < len(self.timesteps):
            return self.alpha(self.timesteps[step_index + 1])
        return self.final_alpha_cumprod


# ----------------------------------------------------------------------------------------------------------------
# Which model made an inversion
# ----------------------------------------------------------------------------------------------------------------

#: Weight samples per tensor in :func:`model_fingerprint`: evenly strided, so a fine-tune or a fused LoRA (which move
#: every weight of the layers they touch) changes them, while reading them costs next to nothing.
FINGERPRINT_SAMPLES = 64


def _config_for_fingerprint(module) -> dict:
    """A component's architecture config without what says where or how it was loaded (paths, library versions,
    dtype): the same checkpoint loaded from two folders or at two precisions has the same fingerprint."""
    config = getattr(module, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    return {key: value for key, value in config.items()
            if not key.startswith("_") and key not in ("transformers_version", "torch_dtype", "dtype")}  # fmt: skip


@torch.no_grad()
def model_fingerprint(unet, text_encoder, vae) -> str:
    """A short digest of the models an inversion depends on: each component's class and config, and for every
    weight tensor its name, shape and :data:`FINGERPRINT_SAMPLES` evenly strided values rounded to float16 (so a
    float32 pipeline and its float16 copy agree). Reads no weight in full: milliseconds on Stable Diffusion."""
    digest, samples = hashlib.sha256(), []
    for name, module in (("unet", unet), ("text_encoder", text_encoder), ("vae", vae)):
        config = json.dumps(_config_for_fingerprint(module), sort_keys=True, default=str)
        weights = module.state_dict(keep_vars=True)
        layout = ";".join(f"{weight_name}:{tuple(weight.shape)}" for weight_name, weight in weights.items())
        digest.update(f"{name}:{type(module).__name__}:{config}:{layout}".encode())
        for weight in weights.values():
            if weight.is_floating_point() and weight.device.type != "meta" and weight.numel():
                flat = weight.detach().view(-1) if weight.is_contiguous() else weight.detach().reshape(-1)
                samples.append(flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES])
    if samples:  # one conversion and one copy to the CPU for all of them when they share a device and dtype
        if len({(sample.device, sample.dtype) for sample in samples}) > 1:  # offloaded or mixed-precision parts
            samples = [sample.to("cpu", torch.float16) for sample in samples]
        digest.update(torch.cat(samples).to(torch.float16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_inversion_model(inversion: "MagicRemoverInversion", unet, text_encoder, vae) -> None:
    """A ``ValueError`` naming both models when ``inversion`` was made with other weights or another architecture
    than ``unet``, ``text_encoder`` and ``vae``: its latents and embeddings mean nothing to another model (another
    checkpoint of the same architecture reconstructs badly without a word; another architecture fails deep in
    torch). Inversions saved before fingerprints were recorded are not checked."""
    if inversion.model_fingerprint is None:
        return
    here = model_fingerprint(unet, text_encoder, vae)
    if here != inversion.model_fingerprint:
        raise ValueError(
            f"`inversion` was made with another model (fingerprint {inversion.model_fingerprint}"
            f"{_named(inversion.model_name)}) than this pipeline's (fingerprint {here}{_named(model_name(unet))}); "
            "invert the image again with this pipeline."
        )


def model_name(unet) -> str | None:
    """Where the UNet was loaded from (``config._name_or_path``), for messages; None when unknown."""
    name = getattr(getattr(unet, "config", None), "_name_or_path", None)
    return str(name) if name else None


def _named(name: str | None) -> str:
    return f", {name!r}" if name else ""


# ----------------------------------------------------------------------------------------------------------------
# Inversion results
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MagicRemoverInversion:
    """A reusable inversion: pass it as ``inversion=`` to skip inverting the same image again.

    Attributes:
        latents: ``[T + 1, B, C, h, w]`` DDIM inversion trajectory, ``latents[0]`` the encoded image ``z_0`` and
            ``latents[k]`` the latent at ``timesteps[T - k]``.
        null_embeddings: ``[T, B, L, D]`` the unconditional embedding of each denoising step (``null_embeddings[i]``
            goes with ``timesteps[i]``): optimised (``"null-text"``), the empty prompt's (``"ddim"``,
            ``"direct"``) or the prompt's own (``"negative-prompt"``).
        prompt_embeds: ``[B, L, D]`` the prompt's embedding.
        timesteps: the DDIM timesteps, descending.
        prompt, num_inference_steps, guidance_scale, method: the settings it was made with.
        image_size: ``(height, width)`` of the input image; processing_size: the size it was encoded at.
        final_losses: the null-text loss at the last inner iteration of each step (empty for other methods).
        clip_skip, lora_scale: how the prompt was encoded and the UNet ran (``clip_skip`` and
            ``cross_attention_kwargs["scale"]`` of the call); a removal reusing the inversion must match them.
        model_fingerprint, model_name: which UNet, text encoder and VAE made it (:func:`model_fingerprint`, and
            where the UNet was loaded from); a removal or ``load(path, pipeline)`` with other models is refused.
    """

    latents: torch.Tensor
    null_embeddings: torch.Tensor
    prompt_embeds: torch.Tensor
    timesteps: torch.Tensor
    prompt: list[str]
    num_inference_steps: int
    guidance_scale: float
    method: str
    image_size: tuple[int, int]
    processing_size: tuple[int, int]
    final_losses: list[float] = field(default_factory=list)
    clip_skip: int | None = None
    lora_scale: float = 1.0
    model_fingerprint: str | None = None
    model_name: str | None = None

    @property
    def batch_size(self) -> int:
        return self.latents.shape[1]

    def to(self, device=None, dtype=None) -> "MagicRemoverInversion":
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() and dtype is not None else t.dtype)

        return MagicRemoverInversion(
            latents=move(self.latents),
            null_embeddings=move(self.null_embeddings),
            prompt_embeds=move(self.prompt_embeds),
            timesteps=self.timesteps.to(device),
            prompt=list(self.prompt),
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            method=self.method,
            image_size=tuple(self.image_size),
            processing_size=tuple(self.processing_size),
            final_losses=list(self.final_losses),
            clip_skip=self.clip_skip,
            lora_scale=self.lora_scale,
            model_fingerprint=self.model_fingerprint,
            model_name=self.model_name,
        )

    def save(self, path) -> None:
        """Writes the inversion to one ``.safetensors`` file (tensors, with the settings as metadata); a ``ValueError``
        naming ``path`` when its folder does not exist or it is a folder."""
        from pathlib import Path

        from safetensors.torch import save_file

        target = Path(path)
        if target.is_dir():
            raise ValueError(f"Cannot save the inversion to {target}: it is a folder; give a file name, e.g. "
                             f"{target / 'inversion.safetensors'}.")  # fmt: skip
        if not target.parent.is_dir():
            raise ValueError(f"Cannot save the inversion to {target}: the folder {target.parent} does not exist.")

        tensors = {
            "latents": self.latents.detach().float().cpu().contiguous(),
            "null_embeddings": self.null_embeddings.detach().float().cpu().contiguous(),
            "prompt_embeds": self.prompt_embeds.detach().float().cpu().contiguous(),
            "timesteps": self.timesteps.detach().cpu().contiguous(),
        }
        settings = {
            "prompt": self.prompt,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "method": self.method,
            "image_size": list(self.image_size),
            "processing_size": list(self.processing_size),
            "final_losses": self.final_losses,
            "clip_skip": self.clip_skip,
            "lora_scale": self.lora_scale,
            "model_fingerprint": self.model_fingerprint,
            "model_name": self.model_name,
        }
        save_file(tensors, str(path), metadata={"magic_remover_inversion": json.dumps(settings)})

    @classmethod
    def load(cls, path, pipeline=None) -> "MagicRemoverInversion":
        """Reads a file written by :meth:`save`, checking every field; with ``pipeline``, also that it was made with
        that pipeline's UNet, text encoder and VAE (:func:`check_inversion_model`; a removal call checks it too)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
        if "magic_remover_inversion" not in metadata:
            raise ValueError(f"{path} is not an inversion saved by MagicRemoverInversion.save().")
        try:
            settings = json.loads(metadata["magic_remover_inversion"])
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: its inversion settings are not valid JSON ({error}).") from None
        check_saved_inversion(tensors, settings, str(path))
        inversion = cls(
            **tensors,
            prompt=settings["prompt"],
            num_inference_steps=settings["num_inference_steps"],
            guidance_scale=settings["guidance_scale"],
            method=settings["method"],
            image_size=tuple(settings["image_size"]),
            processing_size=tuple(settings["processing_size"]),
            final_losses=settings["final_losses"],
            clip_skip=settings.get("clip_skip"),  # files from before these were recorded: the defaults
            lora_scale=settings.get("lora_scale", 1.0),
            model_fingerprint=settings.get("model_fingerprint"),
            model_name=settings.get("model_name"),
        )
        if pipeline is not None:
            check_inversion_model(inversion, pipeline.unet, pipeline.text_encoder, pipeline.vae)
        return inversion


SAVED_TENSORS = ("latents", "null_embeddings", "prompt_embeds", "timesteps")
SAVED_SETTINGS = ("prompt", "num_inference_steps", "guidance_scale", "method", "image_size", "processing_size",
                  "final_losses")  # fmt: skip
# absent from files saved before they were recorded
OPTIONAL_SETTINGS = ("clip_skip", "lora_scale", "model_fingerprint", "model_name")


def check_saved_inversion(tensors: dict, settings, where: str) -> None:
    """Validates a loaded inversion file (types, shapes consistent with its settings, a known method) so that a
    damaged or hand-edited file fails at ``load`` with a ``ValueError`` naming the field, not later inside a call."""

    def bad(field: str, expected: str, got) -> ValueError:
        return ValueError(f"{where}: the inversion's `{field}` must be {expected}, got {got!r}; the file is damaged "
                          "or was edited; invert the image again.")  # fmt: skip

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_size(value) -> bool:
        return isinstance(value, list) and len(value) == 2 and all(is_int(v) and v >= 1 for v in value)

    if not isinstance(settings, dict):
        raise bad("settings", "a JSON object", type(settings).__name__)
    for names, what, optional in ((SAVED_TENSORS, tensors, ()), (SAVED_SETTINGS, settings, OPTIONAL_SETTINGS)):
        missing = sorted(set(names) - set(what))
        extra = sorted(set(what) - set(names) - set(optional))
        if missing or extra:
            raise ValueError(f"{where}: the inversion file has missing {missing} or unexpected {extra} entries.")
    prompt, steps, method = settings["prompt"], settings["num_inference_steps"], settings["method"]
    if not (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)):
        raise bad("prompt", "a non-empty list of str", prompt)
    if not (is_int(steps) and steps >= 1):
        raise bad("num_inference_steps", "a positive int", steps)
    scale = settings["guidance_scale"]
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and 1 <= scale < float("inf")):
        raise bad("guidance_scale", "a finite number >= 1", scale)
    if method not in INVERSION_METHODS:
        raise bad("method", f"one of {INVERSION_METHODS}", method)
    for name in ("image_size", "processing_size"):
        if not is_size(settings[name]):
            raise bad(name, "a [height, width] pair of positive ints", settings[name])
    clip_skip, lora_scale = settings.get("clip_skip"), settings.get("lora_scale", 1.0)
    if not (clip_skip is None or (is_int(clip_skip) and clip_skip >= 0)):
        raise bad("clip_skip", "None or an int >= 0", clip_skip)
    if not (isinstance(lora_scale, (int, float)) and not isinstance(lora_scale, bool) and abs(lora_scale) < float("inf")):
        raise bad("lora_scale", "a finite number", lora_scale)
    for name in ("model_fingerprint", "model_name"):
        if not (settings.get(name) is None or isinstance(settings.get(name), str)):
            raise bad(name, "a str or null", settings.get(name))
    losses = settings["final_losses"]
    if not (isinstance(losses, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in losses)):
        raise bad("final_losses", "a list of numbers", losses)

    batch = len(prompt)
    latents, null, embeds, timesteps = (tensors[name] for name in SAVED_TENSORS)
    if latents.ndim != 5 or tuple(latents.shape[:2]) != (steps + 1, batch):
        raise bad("latents", f"[{steps + 1}, {batch}, C, h, w] (steps + 1, prompts)", tuple(latents.shape))
    if null.ndim != 4 or tuple(null.shape[:2]) != (steps, batch):
        raise bad("null_embeddings", f"[{steps}, {batch}, L, D]", tuple(null.shape))
    if tuple(embeds.shape) != tuple(null.shape[1:]):
        raise bad("prompt_embeds", f"{list(null.shape[1:])} like each null embedding", tuple(embeds.shape))
    if timesteps.ndim != 1 or len(timesteps) != steps or timesteps.is_floating_point():
        raise bad("timesteps", f"{steps} integer timesteps", tuple(timesteps.shape))
    if steps > 1 and not bool((timesteps[:-1] > timesteps[1:]).all()):
        raise bad("timesteps", "descending", timesteps.tolist())
    height, width = settings["processing_size"]
    if height % latents.shape[-2] or width % latents.shape[-1] or height // latents.shape[-2] != width // latents.shape[-1]:
        raise bad("processing_size", f"a common multiple of the latents' size {tuple(latents.shape[-2:])}", [height, width])
    for name in ("latents", "null_embeddings", "prompt_embeds"):
        if not (tensors[name].is_floating_point() and torch.isfinite(tensors[name]).all()):
            raise bad(name, "finite float values", "NaN, inf or integers")


# ----------------------------------------------------------------------------------------------------------------
# Inversion algorithms
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def ddim_inversion(
    noise_fn: NoiseFn,
    z0: torch.Tensor,
    prompt_embeds: torch.Tensor,
    schedule: DDIMSchedule,
    progress: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Algorithm 1, line 2: the conditional DDIM inversion trajectory ``z_0 .. z_T`` (no CFG), ``[T + 1, ...]``.

    As in null-text inversion, the epsilon for the move to timestep t is evaluated at t from the previous latent.
    """
    ascending = schedule.timesteps.flip(0)
    trajectory = [z0.float()]
    latents = z0.float()
    for k, t in enumerate(ascending):
        alpha_from = schedule.alpha(ascending[k - 1]) if k > 0 else schedule.final_alpha_cumprod
        epsilon = noise_fn(latents, t, prompt_embeds)
        latents = ddim_step(latents, epsilon, epsilon, alpha_from, schedule.alpha(t))
        trajectory.append(latents)
        if progress is not None:
            progress()
    return torch.stack(trajectory).contiguous()  # a saved and reloaded inversion then computes bit-identically


def null_text_optimization(
    noise_fn: NoiseFn,
    trajectory: torch.Tensor,
    prompt_embeds: torch.Tensor,
    null_embeds: torch.Tensor,
    schedule: DDIMSchedule,
    guidance_scale: float,
    num_inner_steps: int = 10,
    learning_rate: float = 1e-2,
    early_stop_epsilon: float = 1e-5,
    progress: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Algorithm 1, line 3 (eq. 6): one unconditional embedding per step so that CFG retraces the trajectory.

    Mokady et al.'s settings: Adam, learning rate ``lr * (1 - i / (2T))`` at step i (``1 - i/100`` for their
    T = 50), at most ``num_inner_steps`` iterations, early stop at ``loss < eps + 2e-5 * i``. Each step starts from
    the previous step's result. The embedding and the loss are float32 whatever the UNet's dtype.
    Returns ``([T, B, L, D] embeddings, per-step final loss)``.
    """
    num_steps = len(schedule)
    null_embeds = null_embeds.detach().float().clone()
    latents = trajectory[-1].float()
    optimized, losses = [], []
    for i, t in enumerate(schedule.timesteps):
        alpha_t, alpha_next = schedule.alpha(t), schedule.alpha_after(i)
        target = trajectory[num_steps - i - 1].float()
        with torch.no_grad():
            noise_text = noise_fn(latents, t, prompt_embeds)
        null_embeds = null_embeds.detach().requires_grad_(True)
        optimizer = torch.optim.Adam([null_embeds], lr=learning_rate * (1.0 - i / (2.0 * num_steps)))
        loss_value = float("nan")
        for _ in range(num_inner_steps):
            with torch.enable_grad():
                noise_uncond = noise_fn(latents, t, null_embeds)
                epsilon = classifier_free_guidance(noise_uncond, noise_text, guidance_scale)
                loss = F.mse_loss(ddim_step(latents, epsilon, epsilon, alpha_t, alpha_next), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Null-text optimisation diverged (loss {loss.item()}) at timestep {int(t)}. Try a smaller "
                    "guidance_scale, a float32 pipeline, or method='negative-prompt'."
                )
            # Only the embedding is differentiated: ``loss.backward()`` would also fill ``.grad`` on every UNet weight
            # (never used, as large as the UNet, and a change to a component the pipeline must leave untouched).
            (gradient,) = torch.autograd.grad(loss, null_embeds)
            null_embeds.grad = gradient
            optimizer.step()
            null_embeds.grad = None
            loss_value = loss.item()
            if loss_value < early_stop_epsilon + i * 2e-5:
                break
        null_embeds = null_embeds.detach()
        optimized.append(null_embeds.clone())
        losses.append(loss_value)
        with torch.no_grad():
            noise_uncond = noise_fn(latents, t, null_embeds)
            epsilon = classifier_free_guidance(noise_uncond, noise_text, guidance_scale)
            latents = ddim_step(latents, epsilon, epsilon, alpha_t, alpha_next)
        if progress is not None:
            progress()
    return torch.stack(optimized), losses


def direct_inversion_correction(
    inverted_next: torch.Tensor, reconstruction_next: torch.Tensor, edit_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct inversion (Ju et al., "PnP Inversion", ICLR 2024): one step's correction of both branches.

    ``inverted_next`` is the DDIM inversion trajectory's latent at the step's target timestep, ``reconstruction_next``
    and ``edit_next`` the two branches' latents after the same DDIM step. The reconstruction branch is put back onto
    the inverted trajectory (so it reconstructs exactly, by construction) and the edit branch is moved by the same
    difference, so it loses the reconstruction's drift while keeping its own guidance. Returns
    ``(reconstruction, edit)``.
    """
    correction = inverted_next.to(reconstruction_next.dtype) - reconstruction_next
    return reconstruction_next + correction, edit_next + correction


def timesteps_in_range(timesteps: Sequence[int], low: float, high: float) -> list[bool]:
    """Which of ``timesteps`` fall in the open interval ``(low, high)`` (the paper's ``100 < t < 800``)."""
    return [low < int(t) < high for t in timesteps]


__all__ = [
    "DDIMSchedule",
    "INVERSION_METHODS",
    "FINGERPRINT_SAMPLES",
    "MagicRemoverInversion",
    "SCALE_FREE_METHODS",
    "classifier_free_guidance",
    "check_inversion_model",
    "classifier_optimization_step",
    "ddim_inversion",
    "ddim_step",
    "direct_inversion_correction",
    "model_fingerprint",
    "model_name",
    "null_text_optimization",
    "predict_x0",
    "timesteps_in_range",
    "to_epsilon",
]
