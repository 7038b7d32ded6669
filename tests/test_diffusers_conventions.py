"""diffusers conventions: guidance read at every step, encode_prompt as in StableDiffusionPipeline (clip_skip,
prompt_embeds, textual inversion, LoRA scale), num_images_per_prompt."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from conftest import PROMPT, assert_same_state, snapshot
from diffusers import StableDiffusionPipeline
from diffusers.callbacks import SDCFGCutoffCallback
from tiny_components import make_test_image, tiny_components

from magic_remover import MagicRemoverInversion, MagicRemoverPipeline

STEPS = 4
REMOVAL = dict(target="ball", num_inference_steps=STEPS, inversion_method="ddim", attention_guidance_scale=50.0,
               guidance_timesteps=(0, 1000), optimization_timesteps=(0, 0.5), output_type="latent")  # fmt: skip


def _fresh():
    pipeline = MagicRemoverPipeline(**tiny_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def ddim_inversion(pipe):  # "ddim" does not depend on the CFG scale, so one inversion serves every scale
    return pipe.invert(make_test_image(), PROMPT, num_inference_steps=STEPS, method="ddim")


# ------------------------------------------------------------------------------------------------------------------
# 1. guidance_scale read at every step
# ------------------------------------------------------------------------------------------------------------------


def _set_guidance_at(step, scale, seen):
    def callback(pipeline, i, t, kwargs):
        seen.append(pipeline.guidance_scale)
        if i == step:
            pipeline._guidance_scale = scale
        return kwargs

    return callback


def test_sd_cfg_cutoff_callback_turns_guidance_off_from_its_step(pipe, ddim_inversion):
    run = lambda **kw: pipe(prompt=PROMPT, inversion=ddim_inversion, **REMOVAL, **kw).images  # noqa: E731
    plain = run()
    cut = run(callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1))
    assert pipe.guidance_scale == 0.0 and not pipe.do_classifier_free_guidance  # what the callback left
    seen = []
    by_hand = run(callback_on_step_end=_set_guidance_at(1, 1.0, seen))  # guidance off = the conditional prediction
    assert seen == [7.5, 7.5, 1.0, 1.0]
    torch.testing.assert_close(cut, by_hand, atol=1e-6, rtol=0)
    assert (cut - plain).abs().max() > 1e-3
    # a change after the last step reads nothing: the result is the plain one
    torch.testing.assert_close(run(callback_on_step_end=_set_guidance_at(STEPS - 1, 1.0, [])), plain, atol=0, rtol=0)


def test_a_new_scale_mid_call_is_used_by_the_remaining_steps(pipe, ddim_inversion):
    run = lambda **kw: pipe(prompt=PROMPT, inversion=ddim_inversion, **REMOVAL, **kw).images  # noqa: E731
    switched = run(callback_on_step_end=_set_guidance_at(0, 3.0, []))
    assert (switched - run()).abs().max() > 1e-3
    # the first step at 7.5 then 3.0 differs from 3.0 throughout, which only the step-wise read can give
    assert (switched - run(guidance_scale=3.0)).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------------------------
# 4. encode_prompt
# ------------------------------------------------------------------------------------------------------------------


@contextmanager
def _sd(remover):
    """An SD pipeline on the same components. diffusers 0.42's ``clip_skip`` reads
    ``text_encoder.text_model.final_layer_norm``, transformers 4's layout; in transformers 5 the layer norm sits on the
    model itself, so SD is shown the same module under the old path while it runs."""
    encoder = remover.text_encoder
    patched = not hasattr(encoder, "text_model")
    if patched:
        encoder.text_model = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    try:
        yield StableDiffusionPipeline(**remover.components, requires_safety_checker=False)
    finally:
        if patched:
            del encoder.text_model


@pytest.mark.parametrize("clip_skip,copies", [(None, 1), (1, 1), (0, 2)])
def test_encode_prompt_is_stable_diffusions(pipe, clip_skip, copies):
    args = ([PROMPT, "a cat"], "cpu", copies, True)
    ours = pipe.encode_prompt(*args, negative_prompt=["a dog", ""], clip_skip=clip_skip)
    with _sd(pipe) as sd:
        theirs = sd.encode_prompt(*args, negative_prompt=["a dog", ""], clip_skip=clip_skip)
    assert ours[0].shape == (2 * copies, 16, 32)
    for mine, sd in zip(ours, theirs):
        torch.testing.assert_close(mine, sd, atol=0, rtol=0)


def test_clip_skip_changes_the_inversions_embeddings_as_in_sd_and_is_checked_on_reuse(pipe, tmp_path):
    plain, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    with _sd(pipe) as sd:
        skipped, _ = sd.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=1)
    assert (plain - skipped).abs().max() > 1e-3
    inversion = pipe.invert(make_test_image(), PROMPT, num_inference_steps=3, method="ddim", clip_skip=1)
    torch.testing.assert_close(inversion.prompt_embeds, skipped.float(), atol=0, rtol=0)
    assert inversion.clip_skip == 1
    inversion.save(tmp_path / "skipped.safetensors")
    assert MagicRemoverInversion.load(tmp_path / "skipped.safetensors").clip_skip == 1
    with pytest.raises(ValueError, match="clip_skip=1"):
        pipe(inversion=inversion, target="ball", num_inference_steps=3, inversion_method="ddim")
    out = pipe(inversion=inversion, target="ball", num_inference_steps=3, inversion_method="ddim", clip_skip=1,
               output_type="latent")  # fmt: skip
    assert torch.isfinite(out.images).all()


def test_prompt_embeds_give_what_the_prompt_gives(pipe):
    image = make_test_image()
    embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    from_text = pipe(image=image, prompt=PROMPT, **REMOVAL)
    from_embeds = pipe(image=image, prompt=PROMPT, prompt_embeds=embeds, **REMOVAL)
    torch.testing.assert_close(from_embeds.inversion.latents, from_text.inversion.latents, atol=0, rtol=0)
    torch.testing.assert_close(from_embeds.images, from_text.images, atol=0, rtol=0)
    # with the inversion, the same embeddings are accepted and other ones refused
    again = pipe(inversion=from_text.inversion, prompt_embeds=embeds, **REMOVAL).images
    torch.testing.assert_close(again, from_text.images, atol=0, rtol=0)
    with pytest.raises(ValueError, match="`prompt_embeds` differ"):
        pipe(inversion=from_text.inversion, prompt_embeds=embeds + 0.1, **REMOVAL)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"prompt": None}, ValueError, "`prompt_embeds` needs `prompt`"),
        ({"prompt_embeds": torch.zeros(1, 16, 7)}, ValueError, r"`prompt_embeds` must be \[batch, tokens, 32\]"),
        ({"prompt_embeds": torch.zeros(2, 16, 32)}, ValueError, "`prompt_embeds` has a batch of 2"),
        ({"prompt_embeds": torch.full((1, 16, 32), float("nan"))}, ValueError, "NaN"),
        ({"prompt_embeds": [[0.0]]}, TypeError, "`prompt_embeds` must be a torch.Tensor"),
        ({"clip_skip": 2}, ValueError, r"`clip_skip` must be in \[0, 1\]"),
        ({"clip_skip": 1.0}, TypeError, "`clip_skip`"),
        ({"cross_attention_kwargs": {"scale": float("inf")}}, ValueError, "LoRA scale"),
        ({"cross_attention_kwargs": [("scale", 1)]}, TypeError, "`cross_attention_kwargs`"),
        ({"num_images_per_prompt": 2}, ValueError, "`num_images_per_prompt` must be 1.*deterministic"),
        ({"num_images_per_prompt": "1"}, TypeError, "`num_images_per_prompt`"),
    ],
)
def test_text_arguments_are_checked_before_any_model_pass(pipe, kwargs, error, match):
    embeds = torch.zeros(1, 16, 32)
    call = {"image": make_test_image(), "prompt": PROMPT, "prompt_embeds": embeds, **REMOVAL, **kwargs}
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error, match=match):
            pipe(**call)
    finally:
        hook.remove()
    assert not calls


def test_textual_inversion_with_several_vectors_inverts_and_reuses():
    remover = _fresh()
    torch.manual_seed(0)
    remover.load_textual_inversion({"<sks>": torch.randn(2, 32)})  # two vectors: "<sks> <sks>_1" to the tokenizer
    prompt = "a photo of a <sks> red ball on the grass"
    out = remover(image=make_test_image(), prompt=prompt, **REMOVAL)
    with _sd(remover) as sd:
        expected, _ = sd.encode_prompt(prompt, "cpu", 1, False)
    torch.testing.assert_close(out.inversion.prompt_embeds, expected.float(), atol=0, rtol=0)
    assert out.inversion.prompt == [prompt]  # the user's text, expanded only where tokens are looked up
    again = remover(prompt=out.inversion.prompt, inversion=out.inversion, **REMOVAL).images
    torch.testing.assert_close(again, out.images, atol=0, rtol=0)


def _lora_scalings(pipeline):
    return {f"{component}.{name}": dict(module.scaling)
            for component in ("unet", "text_encoder")
            for name, module in getattr(pipeline, component).named_modules() if hasattr(module, "scaling")}  # fmt: skip


def test_lora_scale_through_cross_attention_kwargs(tmp_path):
    peft = pytest.importorskip("peft")
    base, remover = _fresh(), _fresh()
    torch.manual_seed(1)
    lora = dict(r=2, lora_alpha=2, init_lora_weights=False)  # random B: the adapters change the outputs
    remover.unet.add_adapter(peft.LoraConfig(target_modules=["to_q", "to_k", "to_v", "to_out.0"], **lora))
    peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], **lora),
                                 remover.text_encoder)  # fmt: skip
    scalings, state = _lora_scalings(remover), snapshot(remover)
    assert scalings and all(s == {"default": 1.0} for s in scalings.values())

    image, run = make_test_image(), dict(REMOVAL, output_type="latent")
    reference = base(image=image, prompt=PROMPT, **run)
    off = remover(image=image, prompt=PROMPT, cross_attention_kwargs={"scale": 0.0}, **run)
    torch.testing.assert_close(off.inversion.prompt_embeds, reference.inversion.prompt_embeds, atol=0, rtol=0)
    torch.testing.assert_close(off.images, reference.images, atol=1e-6, rtol=0)
    half = remover(image=image, prompt=PROMPT, cross_attention_kwargs={"scale": 0.5}, **run)
    full = remover(image=image, prompt=PROMPT, **run)
    assert (half.images - off.images).abs().max() > 1e-3 and (full.images - half.images).abs().max() > 1e-3
    assert half.inversion.lora_scale == 0.5 and full.inversion.lora_scale == 1.0
    half.inversion.save(tmp_path / "half.safetensors")
    assert MagicRemoverInversion.load(tmp_path / "half.safetensors").lora_scale == 0.5
    with pytest.raises(ValueError, match="LoRA scale"):
        remover(inversion=half.inversion, **run)
    assert _lora_scalings(remover) == scalings  # scaled and unscaled as SD does

    def fail(*args):
        raise RuntimeError("the text encoder failed")

    hook = remover.text_encoder.encoder.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="text encoder failed"):
            remover(image=image, prompt=PROMPT, cross_attention_kwargs={"scale": 0.5}, **run)
    finally:
        hook.remove()
    assert _lora_scalings(remover) == scalings  # also when encoding raises
    assert_same_state(state, snapshot(remover))
