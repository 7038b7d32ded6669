"""The removal of Algorithm 1, written once for every model family: its options, a per-step plan, the two branches'
passes and the constraints applied after each step.

A model family plugs in through :class:`RemovalContext`'s ``epsilon`` (one UNet call converted to epsilon, given the
latents, the timestep and the family's conditioning) and through how it builds that conditioning; everything here
works on epsilons, latents and the captured attention, whatever the UNet.

Labels say whose each option is: the paper's (MagicRemover, Yang et al. 2023), the research code's, MagicEraser's
(seed 001) or ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from .attention_maps import (
    TargetMaps,
    attention_energy,
    automatic_mask,
    blend,
    quantile_energy,
    refined_region_map,
    target_maps,
    top_fraction_mask,
)
from .attention_processors import (
    CFG_BATCH,
    CONDITIONAL,
    EDIT,
    PASSTHROUGH,
    RECONSTRUCT,
    SINGLE,
    UNCONDITIONAL,
    RemovalAttentionState,
)
from .content_initialization import check_content_initialization
from .inputs import check_finite, check_optional_fraction, check_timestep_range, is_number, warn_if_large
from .inversion import (
    DDIMSchedule,
    classifier_free_guidance,
    classifier_optimization_step,
    ddim_step,
    direct_inversion_correction,
    timesteps_in_range,
)
from .tokens import prompt_without_targets

ENERGIES = ("paper", "quantile")
GRADIENT_WEIGHTINGS = ("attention", "binary")

#: (latents, timestep, conditioning) -> epsilon in float32: one UNet call, the model family's seam
EpsilonFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# The options
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemovalOptions:
    """The method's options, as ``__call__`` takes them (each documented there), checked by :meth:`check`."""

    erase_lambda: float = 0.8  # paper: lambda of eq. 7
    attention_guidance_scale: float = 1.0  # paper: 1
    guidance_timesteps: tuple[float, float] = (100, 800)  # paper
    optimization_timesteps: tuple[float, float] = (500, 800)  # paper
    optimization_steps: int = 1  # paper: N of Algorithm 1
    attention_layers: object = "all"  # paper: all resolutions
    self_attention_guidance: bool = True  # paper: eq. 10
    energy: str = "paper"  # paper's eq. 7, or the research code's "quantile"
    gradient_weighting: str = "attention"  # paper's eq. 8, or the research code's "binary"
    blend_outside_attention_mask: bool = False  # research code
    attention_mask_threshold: float | None = None  # ours (None: the research code's region)
    attention_mask_components: int | None = None  # ours
    keep_input_outside_attention_mask: bool = False  # ours
    protect: object = None  # ours
    protect_cutoff: float | None = None  # ours
    refocus_w_pos: float = 0.0  # MagicEraser
    refocus_w_neg: float = 0.0  # MagicEraser
    refocus_timesteps: tuple[float, float] = (700, 1000)  # MagicEraser
    content_initialization: str | None = None  # MagicEraser
    fill_prompt: object = None  # ours: the edit branch's text (True: the prompt without the target's phrase)
    region_refinement: int = 0  # ours: propagations of the target's map through the self-attention

    @classmethod
    def from_arguments(cls, arguments: dict) -> "RemovalOptions":
        """The options among a call's arguments (``locals()`` of ``__call__``), by their names."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls)})

    def check(self, num_train_timesteps: int) -> None:
        """Each option's type and range on its own (their interplay with the other arguments is ``check_inputs``')."""
        for name, low, high in (("erase_lambda", 0.0, 1.0), ("attention_guidance_scale", 0.0, None)):
            value = getattr(self, name)
            if not is_number(value):
                raise TypeError(f"`{name}` must be a number, got {type(value).__name__}.")
            check_finite(value, name)
            if value < low or (high is not None and value > high):
                what = "(lambda of eq. 7) must be in [0, 1]" if high is not None else "must be >= 0"
                raise ValueError(f"`{name}` {what}, got {value}.")
        warn_if_large(self.attention_guidance_scale, "attention_guidance_scale", "0 to 10 (the paper uses 1)", 1000.0)
        check_timestep_range(self.guidance_timesteps, "guidance_timesteps", num_train_timesteps)
        check_timestep_range(self.optimization_timesteps, "optimization_timesteps", num_train_timesteps)
        steps = self.optimization_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"`optimization_steps` (N of Algorithm 1) must be an int >= 0, got {steps!r}.")
        if self.energy not in ENERGIES:
            raise ValueError(f"`energy` must be one of {ENERGIES}, got {self.energy!r}.")
        if self.gradient_weighting not in GRADIENT_WEIGHTINGS:
            raise ValueError(f"`gradient_weighting` must be one of {GRADIENT_WEIGHTINGS}, got {self.gradient_weighting!r}.")
        for name in ("blend_outside_attention_mask", "keep_input_outside_attention_mask"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        check_optional_fraction(self.attention_mask_threshold, "attention_mask_threshold", includes_one=False)
        components = self.attention_mask_components
        if components is not None and (isinstance(components, bool) or not isinstance(components, int) or components < 1):
            raise ValueError(f"`attention_mask_components` must be None or an int >= 1, got {components!r}.")
        for name in ("refocus_w_pos", "refocus_w_neg"):
            if not (is_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(
                    f"`{name}` (MagicEraser's refocusing weight) must be a number >= 0, got {getattr(self, name)!r}."
                )
        check_timestep_range(self.refocus_timesteps, "refocus_timesteps", num_train_timesteps)
        check_content_initialization(self.content_initialization)
        if self.protect is not None:
            words = self.protected_words
            if not (isinstance(words, (list, tuple)) and all(isinstance(w, str) and w.strip() for w in words)):
                raise TypeError(f"`protect` must be None, a word of the prompt (str) or a list of them, got {self.protect!r}.")
        check_optional_fraction(self.protect_cutoff, "protect_cutoff", includes_one=True)
        refinement = self.region_refinement
        if isinstance(refinement, bool) or not isinstance(refinement, int) or refinement < 0:
            raise ValueError(f"`region_refinement` must be an int >= 0 (0: off), got {refinement!r}.")
        if refinement and not self.self_attention_guidance:
            raise ValueError(
                "`region_refinement` reads the self-attention that the K/V swap's processors capture; it needs "
                "`self_attention_guidance=True`."
            )
        fill = self.fill_prompt
        if not (fill is None or isinstance(fill, (bool, str))
                or (isinstance(fill, (list, tuple)) and all(isinstance(p, str) for p in fill))):  # fmt: skip
            raise TypeError(
                f"`fill_prompt` must be None, True/False, a caption (str) or a list of captions, got {fill!r}."
            )

    def check_some_step_is_guided(self, schedule: DDIMSchedule) -> None:
        """Refuses a call in which no step falls inside ``guidance_timesteps``: nothing would be removed."""
        timesteps = [int(t) for t in schedule.timesteps]
        if not any(timesteps_in_range(timesteps, *self.guidance_timesteps)):
            raise ValueError(
                f"`num_inference_steps`={len(timesteps)} puts no step inside `guidance_timesteps` "
                f"{tuple(self.guidance_timesteps)} (its timesteps are {timesteps[:10]}): nothing would be removed. "
                "Use more steps, or widen `guidance_timesteps`."
            )

    @property
    def protected_words(self):
        """``protect`` as a list of words, or ``None`` for the prompt's other objects."""
        return [self.protect] if isinstance(self.protect, str) else self.protect

    def fill_prompts(self, prompts: list[str], targets: list[str]) -> list[str] | None:
        """The edit branch's text per sample (ours), or ``None`` when it is the prompt (the paper's): ``fill_prompt``
        itself, or with ``True`` each prompt with the noun phrases holding a target dropped."""
        fill = self.fill_prompt
        if fill is None or fill is False:
            return None
        if fill is True:
            return [prompt_without_targets(prompt, targets) for prompt in prompts]
        fills = [fill] * len(prompts) if isinstance(fill, str) else list(fill)
        if len(fills) != len(prompts):
            raise ValueError(f"`fill_prompt` has {len(fills)} captions for {len(prompts)} prompt(s).")
        return fills

    def uses_automatic_mask(self, has_user_mask: bool) -> bool:
        """Whether any option reads the automatic region (a user's mask replaces it)."""
        return not has_user_mask and (
            self.blend_outside_attention_mask or self.keep_input_outside_attention_mask
            or self.content_initialization is not None
        )  # fmt: skip

    def effective_protect_cutoff(self, has_user_mask: bool) -> float | None:
        """``protect_cutoff`` where it acts: a user's mask already says where the target is, so the cutoff shapes
        the automatic region only (zeroing the map inside the user's mask would stop the removal there)."""
        return None if self.protect_cutoff is None or has_user_mask else float(self.protect_cutoff)

    def automatic_region(self, soft_mask: torch.Tensor, num_targets: int) -> torch.Tensor:
        """The mask the user never drew, from a normalised map: ``attention_mask_threshold`` says where it lies,
        ``attention_mask_components`` how many connected parts it keeps, per target (ours)."""
        components = None if self.attention_mask_components is None else self.attention_mask_components * num_targets
        return automatic_mask(soft_mask, self.attention_mask_threshold, components)


# ----------------------------------------------------------------------------------------------------------------
# The per-step plan
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    """What one denoising step does besides the reconstruction pass."""

    guided: bool  # paper: attention guidance, lines 5-13, where guidance_timesteps says (100 < t < t2)
    optimized: bool  # paper: classifier optimisation, lines 8-11, where optimization_timesteps says (t1 < t < t2)
    refocus_weights: tuple[float, float] | None  # MagicEraser: (w_pos, w_neg) in the early steps, else None


def plan_steps(timesteps, options: RemovalOptions) -> list[StepPlan]:
    guided = timesteps_in_range(timesteps, *options.guidance_timesteps)
    optimized = timesteps_in_range(timesteps, *options.optimization_timesteps)
    refocused = timesteps_in_range(timesteps, *options.refocus_timesteps)
    weights = (float(options.refocus_w_pos), float(options.refocus_w_neg))
    weights = weights if options.refocus_w_pos or options.refocus_w_neg else None
    return [StepPlan(g, o, weights if r else None) for g, o, r in zip(guided, optimized, refocused)]


# ----------------------------------------------------------------------------------------------------------------
# One call's context and the two branches' passes
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RemovalContext:
    """Everything one removal call's steps need; built in ``__call__`` and dropped after it."""

    state: RemovalAttentionState
    schedule: DDIMSchedule
    epsilon: EpsilonFn  # the model family's UNet call
    guidance_scale: Callable[[], float]  # read at every step: a step-end callback may change it
    null_embeddings: torch.Tensor  # null_t per step (Algorithm 1, line 3)
    prompt_embeds: torch.Tensor
    token_groups: list  # per sample, per target object, per word: token positions (eq. 9)
    latent_size: tuple[int, int]
    pixel_area: float  # image pixels per latent pixel: eq. 7's L1 norm runs over image pixels
    options: RemovalOptions = field(default_factory=RemovalOptions)
    plan: list[StepPlan] = field(default_factory=list)
    latent_mask: torch.Tensor | None = None  # the user's mask at latent size (eq. 13, appendix A.4)
    protect_groups: list = field(default_factory=list)  # per sample, the protected words' token positions (ours)
    fill_embeds: torch.Tensor | None = None  # the edit branch's text without the target (``fill_prompt``, ours)

    def __post_init__(self):
        self.state.capture_affinity = self.options.region_refinement > 0

    @property
    def edit_embeds(self) -> torch.Tensor:
        """The edit branch's conditioning: the fill prompt's, else the prompt's (the paper's)."""
        return self.prompt_embeds if self.fill_embeds is None else self.fill_embeds

    @property
    def protect_cutoff(self) -> float | None:
        return self.options.effective_protect_cutoff(self.latent_mask is not None)

    def automatic_region(self, soft_mask: torch.Tensor) -> torch.Tensor:
        """The automatic region of a normalised map, with as many parts per target as the options keep."""
        return self.options.automatic_region(soft_mask, len(self.token_groups[0]))

    def maps(self) -> TargetMaps:
        """The target's maps of the pass that just ran."""
        return target_maps(self.state.cross_attention, self.latent_size, self.token_groups, self.protect_groups,
                           self.protect_cutoff)  # fmt: skip


def same_halves(null_embeds: torch.Tensor, prompt_embeds: torch.Tensor) -> bool:
    """Whether CFG's two halves are one prediction (negative-prompt inversion: ``null_t`` is the prompt's embedding),
    so that one UNet evaluation stands for both."""
    return null_embeds is prompt_embeds or torch.equal(null_embeds, prompt_embeds)


def cfg_epsilon(epsilon: EpsilonFn, latents, timestep, null_embeds, prompt_embeds, guidance_scale: float,
                state: RemovalAttentionState | None = None, mode: str | None = None) -> torch.Tensor:  # fmt: skip
    """Algorithm 1, line 5: ``eps_t = (1 + s) eps(z_t, y) - s eps(z_t, null_t)``.

    One batched UNet call ``[unconditional, conditional]``, or one call of the conditional half alone when the halves
    are the same prediction. With ``state``, the attention pass ``mode`` is started with the batch layout used.
    """
    identical = same_halves(null_embeds, prompt_embeds)
    if state is not None:
        state.start_pass(mode, SINGLE if identical else CFG_BATCH)
    if identical:
        return epsilon(latents, timestep, prompt_embeds)
    noise = epsilon(torch.cat([latents, latents]), timestep, torch.cat([null_embeds, prompt_embeds]))
    noise_uncond, noise_text = noise.chunk(2)
    return classifier_free_guidance(noise_uncond, noise_text, guidance_scale)


def split_cfg_epsilon(ctx: RemovalContext, latents, step_index: int, timestep) -> torch.Tensor:
    """The edit branch's CFG with only the conditional half in the autograd graph (ours: the energy reads the
    conditional half's cross-attention alone; the same epsilon as the batched call, less memory).

    With a fill prompt (ours) the epsilon is CFG on the fill prompt, outside the graph, and one more conditional
    evaluation on the prompt, in the graph, gives the energy its target-word attention (the fill prompt has no
    target word): the energy still moves the latents off the target while the text no longer asks for it."""
    if ctx.fill_embeds is not None:
        with torch.no_grad():
            epsilon = cfg_epsilon(ctx.epsilon, latents.detach(), timestep, ctx.null_embeddings[step_index],
                                  ctx.fill_embeds, ctx.guidance_scale(), ctx.state, EDIT)  # fmt: skip
        ctx.state.start_pass(EDIT, CONDITIONAL)
        ctx.epsilon(latents, timestep, ctx.prompt_embeds)  # its cross-attention, for the energy
        return epsilon
    null_embeds, prompt_embeds = ctx.null_embeddings[step_index], ctx.prompt_embeds
    if same_halves(null_embeds, prompt_embeds):
        ctx.state.start_pass(EDIT, SINGLE)
        return ctx.epsilon(latents, timestep, prompt_embeds)
    with torch.no_grad():
        ctx.state.start_pass(EDIT, UNCONDITIONAL)
        noise_uncond = ctx.epsilon(latents.detach(), timestep, null_embeds)
    ctx.state.start_pass(EDIT, CONDITIONAL)
    noise_text = ctx.epsilon(latents, timestep, prompt_embeds)
    return classifier_free_guidance(noise_uncond, noise_text, ctx.guidance_scale())


def reconstruction_pass(ctx: RemovalContext, latents, step_index: int, timestep):
    """The reconstruction branch: plain CFG with ``null_t``; records K_rec, V_rec for eq. 10 and the target's map.

    Returns ``(epsilon, mean target attention, soft mask)``. It is the one writer of the step's refocusing state
    (MagicEraser): the edit pass refocuses on this pass's soft mask and protected dominance.
    """
    epsilon = cfg_epsilon(ctx.epsilon, latents, timestep, ctx.null_embeddings[step_index], ctx.prompt_embeds,
                          ctx.guidance_scale(), ctx.state, RECONSTRUCT)  # fmt: skip
    maps = ctx.maps()
    soft_mask = maps.soft_mask()
    if ctx.options.region_refinement:  # ours: the whole object, through the pass's own self-attention
        soft_mask = refined_region_map(soft_mask, ctx.state.self_affinity, ctx.options.region_refinement,
                                       maps.dominance)  # fmt: skip
    plan = ctx.plan[step_index] if ctx.plan else None
    ctx.state.set_refocusing((soft_mask, maps.dominance), plan.refocus_weights if plan else None)
    return epsilon, maps.raw_attention, soft_mask


def guided_pass(ctx: RemovalContext, latents, step_index: int, timestep):
    """One edit-branch evaluation: ``(eps_t, eps_t^guid, mean target attention)`` at ``latents``.

    Eq. 8/9: ``eps^guid = eps - s * sum_m (prod_n A_{t,k}) * grad_z sum_n g(t, k, lambda)``, gated by the user's mask
    (eq. 13) if there is one. The gradient is taken with respect to the latents only, in float32.
    """
    options = ctx.options
    z = latents.detach().requires_grad_(True)
    with torch.enable_grad():
        epsilon = split_cfg_epsilon(ctx, z, step_index, timestep)
        maps = ctx.maps()
        guidance = torch.zeros_like(z)
        if options.attention_guidance_scale > 0:
            for m, (words, weight) in enumerate(zip(maps.objects, maps.weights())):
                if options.energy == "paper":  # eq. 7
                    energy = sum(attention_energy(a, float(options.erase_lambda), ctx.pixel_area) for a in words)
                else:  # the research code's
                    energy = sum(quantile_energy(a) for a in words)
                (gradient,) = torch.autograd.grad(energy.sum(), z, retain_graph=m < len(maps.objects) - 1)
                weight = weight.unsqueeze(1)  # eq. 9: prod_n A_{t,k}
                if options.gradient_weighting == "binary":  # the research code's
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
    # term, so it moves z by +sqrt(1 - alpha) * (eps_guid - eps): descending the energy, the erasing direction and the
    # "gradient descent on z_t" of section 3.4, needs the minus sign.
    return epsilon, epsilon - float(options.attention_guidance_scale) * guidance, maps.raw_attention


def edit_pass(ctx: RemovalContext, latents, step_index: int, timestep) -> torch.Tensor:
    """The edit branch outside the guided steps: plain CFG with the K/V swap of eq. 10 (and refocusing), on the fill
    prompt when there is one."""
    epsilon = cfg_epsilon(ctx.epsilon, latents, timestep, ctx.null_embeddings[step_index], ctx.edit_embeds,
                          ctx.guidance_scale(), ctx.state, EDIT)  # fmt: skip
    ctx.state.start_pass(PASSTHROUGH)
    return epsilon


# ----------------------------------------------------------------------------------------------------------------
# The two branches' state across steps
# ----------------------------------------------------------------------------------------------------------------


class RemovalBranches:
    """The two branches' latents and what the loop records about them.

    Both start from ``z_T``; until the edit branch first moves on its own (a guided step, content initialisation or a
    callback) it equals the reconstruction exactly, and is not computed separately.
    """

    def __init__(self, z_T: torch.Tensor):
        self.reconstruction = z_T.clone()
        self.latents = self.reconstruction.clone()
        self.diverged = False
        batch, size, device = z_T.shape[0], tuple(z_T.shape[-2:]), z_T.device
        self.map_sum, self.map_count = torch.zeros(batch, *size, device=device), 0
        self.last_soft_mask = None
        self.trace_timesteps, self.trace_reconstruction, self.trace_edit = [], [], []

    def record(self, plan: StepPlan, soft_mask: torch.Tensor) -> None:
        """The reconstruction's map, averaged over the guided steps into ``attention_maps``."""
        self.last_soft_mask = soft_mask
        if plan.guided:
            self.map_sum, self.map_count = self.map_sum + soft_mask, self.map_count + 1

    def record_guided(self, timestep, reconstruction_attention, edit_attention) -> None:
        self.trace_timesteps.append(int(timestep))
        self.trace_reconstruction.append(reconstruction_attention)
        self.trace_edit.append(edit_attention)

    def mean_map(self) -> torch.Tensor:
        """The soft map averaged over the guided steps (the last step's without any)."""
        return self.map_sum / self.map_count if self.map_count else self.last_soft_mask

    def target_attention(self) -> dict | None:
        if not self.trace_timesteps:
            return None
        return {
            "timesteps": torch.tensor(self.trace_timesteps),
            "reconstruction": torch.stack(self.trace_reconstruction).cpu(),
            "edit": torch.stack(self.trace_edit).cpu(),
        }


def guided_step(ctx: RemovalContext, latents, step_index: int, timestep, alpha_t, alpha_next):
    """Lines 5-13 of Algorithm 1 on the edit branch: ``(z_{t-1}, mean target attention)``."""
    eps, eps_guided, attention = guided_pass(ctx, latents, step_index, timestep)  # lines 5-6, eq. 8/9
    if ctx.plan[step_index].optimized:  # lines 8-11: classifier optimisation, re-noise in place at t (eq. 12)
        for _ in range(ctx.options.optimization_steps):
            latents = classifier_optimization_step(latents, eps, eps_guided, alpha_t)
            eps, eps_guided, attention = guided_pass(ctx, latents, step_index, timestep)
    return ddim_step(latents, eps, eps_guided, alpha_t, alpha_next), attention  # line 13


def constrain(ctx: RemovalContext, branches: RemovalBranches, inversion, step_index: int) -> None:
    """What holds after each step, in this order: direct inversion puts both branches back onto the inverted
    trajectory (Ju et al.), the user's mask keeps the reconstruction outside it (appendix A.4), or the research
    code's blend does so outside the automatic region on guided steps."""
    if inversion.method == "direct":
        inverted_next = inversion.latents[len(ctx.plan) - step_index - 1]
        branches.reconstruction, branches.latents = direct_inversion_correction(
            inverted_next, branches.reconstruction, branches.latents
        )
    if ctx.latent_mask is not None:
        branches.latents = blend(ctx.latent_mask, branches.latents, branches.reconstruction)
    elif ctx.options.blend_outside_attention_mask and ctx.plan[step_index].guided:
        region = ctx.automatic_region(branches.last_soft_mask).unsqueeze(1)
        branches.latents = blend(region, branches.latents, branches.reconstruction)
    if not torch.isfinite(branches.latents).all():
        raise FloatingPointError(
            f"The edit latents became NaN or inf at timestep {int(ctx.schedule.timesteps[step_index])}; lower "
            "`attention_guidance_scale` or run in float32."
        )
