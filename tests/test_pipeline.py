"""The pipeline end to end on tiny random components: the method's effects, state hygiene, outputs."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPT, STEPS, assert_same_state, snapshot
from tiny_components import make_test_image, tiny_components

from magic_remover import MagicRemoverInversion, MagicRemoverPipeline
from magic_remover.attention_processors import (
    EDIT,
    RemovalAttentionState,
    aggregate_cross_attention,
    attention_layer_names,
    automatic_mask,
    build_processors,
    installed_processors,
    normalize_map,
    top_fraction_mask,
)
from magic_remover.inversion import DDIMSchedule
from magic_remover.removal import RemovalContext, RemovalOptions, guided_pass
from magic_remover.tokens import find_target_tokens

# The tiny random UNet's cross-attention is weak, so the tests use a larger guidance scale than the paper's default
GUIDANCE = 30.0


@pytest.fixture(scope="module")
def removal(pipe, inversion):
    return pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS,
                attention_guidance_scale=GUIDANCE, output_type="np")  # fmt: skip


def test_null_text_inversion_reconstructs_better_than_plain_ddim(pipe, image, inversion):
    ddim = pipe.invert(image, PROMPT, num_inference_steps=STEPS, method="ddim")
    z0 = inversion.latents[0]
    errors = {}
    for name, inv in {"null-text": inversion, "ddim": ddim}.items():
        out = pipe(prompt=PROMPT, target="ball", inversion=inv, num_inference_steps=STEPS, output_type="latent",
                   inversion_method=inv.method, attention_guidance_scale=0.0)  # fmt: skip
        errors[name] = (out.reconstructions - z0).pow(2).mean().item()
    assert errors["null-text"] < 0.75 * errors["ddim"], errors


def test_negative_prompt_inversion_uses_the_prompt_as_null_embedding(pipe, image):
    inv = pipe.invert(image, PROMPT, num_inference_steps=4, method="negative-prompt")
    for step in inv.null_embeddings:
        torch.testing.assert_close(step, inv.prompt_embeds)
    assert inv.final_losses == []


def test_edit_branch_lowers_the_target_attention(removal):
    trace = removal.target_attention
    assert trace["edit"].shape == trace["reconstruction"].shape and len(trace["timesteps"]) > 0
    assert all(100 < t < 800 for t in trace["timesteps"].tolist())
    # from the second guided step on, the edit branch attends less to the target than the reconstruction
    assert torch.all(trace["edit"][1:] < trace["reconstruction"][1:]), trace


def test_result_changes_where_the_target_map_is_high(removal):
    change = np.abs(removal.images[0] - removal.reconstructions[0]).mean(-1)
    attention = removal.attention_maps[0]
    assert attention.shape == change.shape and attention.min() >= 0 and attention.max() <= 1
    high, low = attention >= np.quantile(attention, 0.8), attention <= np.quantile(attention, 0.2)
    assert change[high].mean() > 1.5 * change[low].mean(), (change[high].mean(), change[low].mean())


def test_without_guidance_the_edit_branch_is_the_reconstruction(pipe, inversion):
    out = pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS,
               attention_guidance_scale=0.0, output_type="latent")  # fmt: skip
    torch.testing.assert_close(out.images, out.reconstructions, atol=1e-4, rtol=1e-4)  # float rounding only


def test_mask_keeps_the_input_outside_it(pipe, image, inversion):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 6:22] = 255
    out = pipe(image=image, prompt=PROMPT, target="ball", inversion=inversion, mask_image=PIL.Image.fromarray(mask),
               num_inference_steps=STEPS, attention_guidance_scale=GUIDANCE)  # fmt: skip
    result, source = np.asarray(out.images[0]), np.asarray(image.convert("RGB"))
    outside = mask == 0
    np.testing.assert_array_equal(result[outside], source[outside])  # the input's own pixels, not the round trip
    assert np.abs(result[~outside].astype(int) - source[~outside]).max() > 0


def test_a_uint8_numpy_mask_means_what_the_same_pil_mask_means(pipe, image, inversion):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 6:22] = 255
    common = dict(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type="latent")
    from_numpy = pipe(mask_image=mask, **common).images
    torch.testing.assert_close(from_numpy, pipe(mask_image=PIL.Image.fromarray(mask), **common).images, rtol=0, atol=0)


def test_coloured_numpy_and_tensor_masks_act_as_their_luminance_like_pil(pipe, image, inversion, caplog):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[8:24, 6:22] = (255, 128, 0)
    grey = np.asarray(PIL.Image.fromarray(rgb).convert("L"))
    common = dict(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type="latent")
    expected = pipe(mask_image=PIL.Image.fromarray(grey), **common).images
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    for mask in (rgb, rgb.astype(np.float32) / 255, tensor, tensor[None]):
        caplog.clear()
        # PIL rounds its luminance to 8 bits, the arrays keep it exact: within a level of 8 bits
        with caplog.at_level("WARNING"):
            torch.testing.assert_close(pipe(mask_image=mask, **common).images, expected, rtol=0, atol=2e-2)
        assert "converted to grey by luminance" in caplog.text  # said, as for a coloured PIL mask


def _masked_removal(pipe, image, mask, output_type):
    return pipe(image=image, prompt=PROMPT, target="ball", mask_image=mask, num_inference_steps=3,
                inversion_method="ddim", attention_guidance_scale=GUIDANCE, output_type=output_type)  # fmt: skip


def test_a_soft_mask_value_blends_the_edit_and_the_input_in_proportion(pipe, image):
    """Soft values keep their weight: a pixel of mask value m is m * edit + (1 - m) * input, not hardened to 0 or 1."""
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 6:22] = 255
    mask[8:24, 22:26] = 64  # a soft edge
    latents = _masked_removal(pipe, image, PIL.Image.fromarray(mask), "latent").images
    result = _masked_removal(pipe, image, PIL.Image.fromarray(mask), "pt").images
    edit, source = pipe.decode_latents_to_pixels(latents), pipe._prepare_image(image, (32, 32))
    weight = torch.from_numpy(mask).float().div(255)
    expected = pipe.image_processor.postprocess(weight * edit + (1 - weight) * source, output_type="pt")
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
    soft = torch.from_numpy(mask == 64)
    for name, hard in (("edit", edit), ("input", source)):  # neither of the two hard choices
        hard = pipe.image_processor.postprocess(hard, output_type="pt")
        assert (result - hard)[..., soft].abs().max() > 1e-3, name
    # the latent blend of every step (appendix A.4) keeps the weight too: a uniform 0.25 is neither 0 nor 1
    quarter = _masked_removal(pipe, image, PIL.Image.new("L", (32, 32), 64), "latent")
    full = _masked_removal(pipe, image, PIL.Image.new("L", (32, 32), 255), "latent")
    assert (quarter.images - quarter.reconstructions).abs().max() > 1e-3
    assert (quarter.images - full.images).abs().max() > 1e-3


def test_a_coloured_mask_acts_as_its_luminance(pipe, image):
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[8:24, 6:22] = (255, 0, 0)  # luminance 76, red channel 255
    mask[8:24, 22:26] = (0, 0, 255)  # luminance 29, red channel 0
    coloured = PIL.Image.fromarray(mask)
    result = _masked_removal(pipe, image, coloured, "latent").images
    grey = _masked_removal(pipe, image, coloured.convert("L"), "latent").images
    torch.testing.assert_close(result, grey, rtol=0, atol=0)
    assert not torch.equal(result, _masked_removal(pipe, image, coloured.getchannel("R"), "latent").images)


def test_mask_is_validated_before_any_model_pass(pipe, image, inversion, caplog, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the UNet ran before the mask was checked")

    monkeypatch.setattr(pipe, "_unet_epsilon", no_model)
    base = dict(image=image, prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="all black"):
        pipe(mask_image=PIL.Image.new("L", image.size, 0), **base)
    with pytest.raises(ValueError, match="pass `image`"):
        pipe(**{**base, "image": None}, mask_image=PIL.Image.new("L", image.size, 255))
    coloured = PIL.Image.new("RGB", image.size, (255, 0, 0))
    with caplog.at_level("WARNING"), pytest.raises(AssertionError, match="UNet ran"):
        pipe(mask_image=coloured, **base)  # accepted (it gets as far as the model), with a warning
    assert "luminance" in caplog.text


def test_mask_keeps_the_edit_latent_equal_to_the_reconstruction_outside_it(pipe, inversion):
    """Appendix A.4's blend in latent space: what ``output_type="latent"`` hands to img2img has the reconstruction's
    latent outside the mask (the pixel blend after decoding cannot hide a missing latent blend here)."""
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 6:22] = 255  # latent pixels [4:12, 3:11], whose 2x2 pixel blocks are all inside
    out = pipe(prompt=PROMPT, target="ball", inversion=inversion, mask_image=PIL.Image.fromarray(mask),
               num_inference_steps=STEPS, attention_guidance_scale=GUIDANCE, output_type="latent")  # fmt: skip
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[4:12, 3:11] = False
    torch.testing.assert_close(out.images[..., outside], out.reconstructions[..., outside], rtol=0, atol=0)
    assert (out.images[..., ~outside] - out.reconstructions[..., ~outside]).abs().max() > 1e-3


def _edit_after_the_reconstruction_is_disturbed(pipe, inversion, self_attention_guidance, disturb):
    """The edit branch's result (attention guidance 0, four DDIM steps) when the reconstruction branch's latent alone
    is moved after step 1, once the branches have separated (step 0 is guided), or left alone."""

    def move_the_reconstruction(pipeline, step, timestep, tensors):
        if disturb and step == 1:
            noise = torch.randn(tensors["reconstruction_latents"].shape, generator=torch.Generator().manual_seed(0))
            return {"reconstruction_latents": tensors["reconstruction_latents"] + 0.5 * noise}
        return {}

    return pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=4, inversion_method="ddim",
                output_type="latent", attention_guidance_scale=0.0, self_attention_guidance=self_attention_guidance,
                callback_on_step_end=move_the_reconstruction,
                callback_on_step_end_tensor_inputs=["reconstruction_latents"]).images  # fmt: skip


def test_the_edit_branch_attends_to_the_reconstruction_only_through_the_self_attention_swap(pipe, image):
    """Eq. 10 is the only path from the reconstruction branch into the edit branch (without a mask): with the swap off
    the edit result cannot depend on the reconstruction's latents; with it on, their keys and values reach it.
    (test_attention_processors.py checks the swapped attention itself against softmax(Q_edit K_rec^T / sqrt(d)) V_rec.)"""
    inversion = pipe.invert(image, PROMPT, num_inference_steps=4, method="ddim")
    for swap in (False, True):
        kept = _edit_after_the_reconstruction_is_disturbed(pipe, inversion, swap, disturb=False)
        moved = _edit_after_the_reconstruction_is_disturbed(pipe, inversion, swap, disturb=True)
        if swap:
            assert (moved - kept).abs().max() > 1e-3  # the tiny model's self-attention is weak
        else:
            torch.testing.assert_close(moved, kept, rtol=0, atol=0)


def test_keep_input_outside_the_automatic_mask(pipe, image, inversion):
    base = dict(image=image, prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS,
                attention_guidance_scale=GUIDANCE, output_type="np")  # fmt: skip
    plain = pipe(**base)
    # the tiny random model's map is diffuse: a high threshold leaves part of the image outside the mask
    kept = pipe(**base, keep_input_outside_attention_mask=True, attention_mask_threshold=0.8)
    source = np.asarray(image, dtype=np.float32) / 255
    untouched = np.abs(kept.images[0] - source).max(-1) < 1e-5
    assert 0.3 < untouched.mean() < 1, untouched.mean()  # the input's own pixels, except around the target
    assert (np.abs(plain.images[0] - source).max(-1) < 1e-5).mean() < 0.05  # the autoencoder alone changes them
    attention = kept.attention_maps[0]
    assert attention[untouched].max() < 0.8 <= attention[~untouched].max()  # a pixel over the threshold is edited
    core = attention >= 0.9  # well inside the region: the edit itself
    assert core.any()
    np.testing.assert_allclose(kept.images[0][core], plain.images[0][core], atol=1e-5)
    np.testing.assert_array_equal(kept.attention_maps, plain.attention_maps)


def test_same_generator_same_result_and_reused_inversion_matches_inline(pipe, image, inversion):
    kwargs = dict(prompt=PROMPT, target="ball", num_inference_steps=STEPS, attention_guidance_scale=GUIDANCE,
                  output_type="np")  # fmt: skip
    inline = pipe(image=image, generator=torch.Generator().manual_seed(0), inversion_method="null-text", **kwargs)
    again = pipe(image=image, generator=torch.Generator().manual_seed(0), inversion_method="null-text", **kwargs)
    reused = pipe(image=image, inversion=inversion, **kwargs)  # follows the inversion's method
    np.testing.assert_array_equal(inline.images, again.images)
    np.testing.assert_allclose(inline.images, reused.images, atol=1e-5)
    np.testing.assert_allclose(inline.attention_maps, reused.attention_maps, atol=1e-5)


def test_inversion_survives_save_and_load(tmp_path, pipe, inversion):
    path = tmp_path / "inv.safetensors"
    inversion.save(path)
    loaded = MagicRemoverInversion.load(path)
    assert loaded.prompt == inversion.prompt and loaded.method == inversion.method
    torch.testing.assert_close(loaded.latents, inversion.latents)
    torch.testing.assert_close(loaded.null_embeddings, inversion.null_embeddings)
    a = pipe(inversion=loaded, target="ball", num_inference_steps=STEPS, output_type="latent").images
    b = pipe(inversion=inversion, target="ball", num_inference_steps=STEPS, output_type="latent").images
    torch.testing.assert_close(a, b)
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        MagicRemoverInversion.load(tmp_path / "other.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not an inversion"):
        MagicRemoverInversion.load(tmp_path / "plain.safetensors")


def test_state_is_unchanged_after_a_call(pipe, inversion):
    before = snapshot(pipe)
    pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type="latent")
    assert_same_state(before, snapshot(pipe))


def test_state_is_unchanged_after_a_call_that_raised(pipe, inversion):
    before = snapshot(pipe)

    def explode(pipeline, step, timestep, kwargs):
        # while the call runs, our processors are installed...
        assert any(type(p).__name__ == "SelfAttentionKVSwapProcessor" for p in pipeline.unet.attn_processors.values())
        if step == 3:
            raise RuntimeError("boom")
        return kwargs

    with pytest.raises(RuntimeError, match="boom"):
        pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS,
             callback_on_step_end=explode, output_type="latent")  # fmt: skip
    assert_same_state(before, snapshot(pipe))


def test_processors_are_set_only_where_needed(pipe, inversion):
    seen = {}

    def look(pipeline, step, timestep, kwargs):
        seen.update({name: type(p).__name__ for name, p in pipeline.unet.attn_processors.items()})
        return kwargs

    pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type="latent",
         attention_layers=["up_blocks"], self_attention_guidance=False, callback_on_step_end=look)  # fmt: skip
    captured = {n for n, kind in seen.items() if kind == "CrossAttentionCaptureProcessor"}
    assert captured and all("up_blocks" in n and "attn2" in n for n in captured)
    untouched = {n for n, kind in seen.items() if kind == "AttnProcessor2_0"}
    assert untouched == set(seen) - captured


def test_callback_reads_and_replaces_latents(pipe, inversion):
    seen = []

    def record(pipeline, step, timestep, kwargs):
        seen.append((step, int(timestep), kwargs["latents"].shape))
        if step == STEPS - 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return kwargs

    out = pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type="latent",
               callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])  # fmt: skip
    assert [s for s, _, _ in seen] == list(range(STEPS))
    assert out.images.abs().max() == 0


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types(pipe, inversion, output_type):
    out = pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type=output_type)
    if output_type == "pil":
        assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (32, 32)
    elif output_type == "np":
        assert out.images.shape == (1, 32, 32, 3) and out.images.dtype == np.float32
    elif output_type == "pt":
        assert out.images.shape == (1, 3, 32, 32) and 0 <= out.images.min() and out.images.max() <= 1
    else:
        assert out.images.shape == (1, 4, 16, 16)
    assert tuple(out.attention_maps.shape) == (1, 32, 32)
    images, maps = pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS,
                        output_type=output_type, return_dict=False)  # fmt: skip
    assert type(images) is type(out.images) and type(maps) is type(out.attention_maps)


@pytest.mark.parametrize("size", [(40, 24), (27, 45)])
def test_any_size_and_aspect_ratio(pipe, size):
    img = make_test_image(size)
    out = pipe(image=img, prompt=PROMPT, target="ball", num_inference_steps=4, inversion_method="ddim",
               attention_guidance_scale=GUIDANCE)  # fmt: skip
    assert out.images[0].size == (size[1], size[0])
    assert out.attention_maps.shape == (1, *size)
    trace = out.target_attention  # the method works at that size: the edit branch attends less to the target
    assert len(trace["timesteps"]) == 3 and torch.all(trace["edit"][1:] < trace["reconstruction"][1:]), trace


def test_a_batch_of_images_matches_single_runs(pipe, image):
    other = make_test_image(seed=3).transpose(PIL.Image.FLIP_LEFT_RIGHT)
    kwargs = dict(target="ball", num_inference_steps=4, inversion_method="ddim", attention_guidance_scale=GUIDANCE,
                  output_type="np")  # fmt: skip
    both = pipe(image=[image, other], prompt=[PROMPT, "a red ball near the table"], **kwargs)
    first = pipe(image=image, prompt=PROMPT, **kwargs)
    second = pipe(image=other, prompt="a red ball near the table", **kwargs)
    np.testing.assert_allclose(both.images[0], first.images[0], atol=2e-4)
    np.testing.assert_allclose(both.images[1], second.images[0], atol=2e-4)


class _StateKeepingTheEditMaps(RemovalAttentionState):
    """Keeps the edit pass's cross-attention, which the pipeline drops when the pass ends."""

    def start_pass(self, mode, batch=None):
        if self.mode == EDIT and self.cross_attention:
            self.edit_cross_attention = {name: p.detach() for name, p in self.cross_attention.items()}
        super().start_pass(mode, batch)


def _guidance_at(pipe, inversion, targets, energy="paper", gradient_weighting="attention", step=STEPS // 2):
    """The attention-guidance term ``(eps - eps_guid) / scale`` of the edit branch at the inversion's latent of
    ``step`` (cross-attention capture only, no K/V swap), and each target word's normalised map in that pass."""
    z, timestep = inversion.latents[STEPS - step], inversion.timesteps[step]
    schedule = DDIMSchedule.from_scheduler_config(pipe.scheduler.config, STEPS)
    ctx = RemovalContext(
        state=_StateKeepingTheEditMaps(), schedule=schedule,
        epsilon=lambda latents, t, embeds: pipe._unet_epsilon(latents, t, embeds, schedule),
        guidance_scale=lambda: pipe._step_guidance_scale,
        null_embeddings=inversion.null_embeddings, prompt_embeds=inversion.prompt_embeds,
        token_groups=[[find_target_tokens(pipe.tokenizer, PROMPT, t) for t in targets]], latent_size=(16, 16),
        pixel_area=1.0, options=RemovalOptions(energy=energy, gradient_weighting=gradient_weighting),
    )  # fmt: skip
    pipe._guidance_scale = inversion.guidance_scale  # what __call__ sets; the steps read it from the pipeline
    _, cross_names = attention_layer_names(pipe.unet)
    with installed_processors(pipe.unet, build_processors(pipe.unet, ctx.state, [], cross_names)):
        eps, eps_guided, _ = guided_pass(ctx, z, step, timestep)
    aggregated = aggregate_cross_attention(ctx.state.edit_cross_attention, ctx.latent_size)
    words = {word: normalize_map(aggregated[:, find_target_tokens(pipe.tokenizer, PROMPT, word)[0]].sum(1))[0]
             for target in targets for word in target.split()}  # fmt: skip
    return (eps - eps_guided)[0], words


def test_a_list_of_targets_adds_the_guidance_of_each(pipe, inversion):
    both, _ = _guidance_at(pipe, inversion, ["ball", "grass"])
    ball, _ = _guidance_at(pipe, inversion, ["ball"])
    grass, _ = _guidance_at(pipe, inversion, ["grass"])
    torch.testing.assert_close(both, ball + grass, rtol=1e-4, atol=1e-6)
    assert ball.abs().max() > 0 and grass.abs().max() > 0


def test_a_phrase_is_guided_where_all_its_words_attend(pipe, inversion):
    """Eq. 9 for "red ball": the gradient of g(red) + g(ball) weighted by the product of the two maps, i.e.
    ``N_red * G(ball) + N_ball * G(red)`` in terms of the single words' guidance ``G(w) = N_w * grad g(w)``."""
    phrase, maps = _guidance_at(pipe, inversion, ["red ball"])
    ball, _ = _guidance_at(pipe, inversion, ["ball"])
    red, _ = _guidance_at(pipe, inversion, ["red"])
    torch.testing.assert_close(phrase, maps["red"] * ball + maps["ball"] * red, rtol=1e-3, atol=1e-6)
    assert phrase.abs().max() > 0


def test_binary_weighting_keeps_the_gradient_on_the_maps_top_fifth_only(pipe, inversion):
    soft, maps = _guidance_at(pipe, inversion, ["ball"])
    binary, _ = _guidance_at(pipe, inversion, ["ball"], gradient_weighting="binary")
    top = top_fraction_mask(maps["ball"][None], 0.2)[0]
    assert binary[:, top == 0].abs().max() == 0 and binary[:, top == 1].abs().max() > 0
    # the same gradient, weighted by the region instead of the soft map
    torch.testing.assert_close(binary * maps["ball"], soft * top, rtol=1e-3, atol=1e-7)


def test_the_quantile_energy_lowers_the_target_attention(pipe, inversion):
    out = pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, energy="quantile",
               attention_guidance_scale=GUIDANCE, output_type="latent")  # fmt: skip
    trace = out.target_attention
    assert torch.all(trace["edit"][1:] < trace["reconstruction"][1:]), trace


@pytest.mark.parametrize("threshold", [None, 0.4])
def test_blending_outside_the_automatic_mask_keeps_the_reconstruction_there(pipe, inversion, monkeypatch, threshold):
    """After each guided step the edit latent outside the step's automatic mask is the reconstruction's, exactly."""
    soft_masks, checked = [], []
    reconstruction_epsilon = pipe._reconstruction_epsilon

    def record_the_soft_mask(*args):
        result = reconstruction_epsilon(*args)
        soft_masks.append(result[2])
        return result

    def compare(pipeline, step, timestep, tensors):
        if 100 < int(timestep) < 800:  # the guided steps
            outside = automatic_mask(soft_masks[step], threshold)[0] == 0
            assert outside.any() and (~outside).any()
            edit, reconstruction = tensors["latents"][0], tensors["reconstruction_latents"][0]
            torch.testing.assert_close(edit[:, outside], reconstruction[:, outside], rtol=0, atol=0)
            checked.append((edit[:, ~outside] - reconstruction[:, ~outside]).abs().max())
        return {}

    monkeypatch.setattr(pipe, "_reconstruction_epsilon", record_the_soft_mask)
    pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, attention_guidance_scale=GUIDANCE,
         blend_outside_attention_mask=True, attention_mask_threshold=threshold, output_type="latent",
         callback_on_step_end=compare, callback_on_step_end_tensor_inputs=["latents", "reconstruction_latents"])  # fmt: skip
    assert len(checked) >= 5 and max(checked) > 1e-3  # inside the mask the edit is its own


@pytest.mark.parametrize("scheduler", ["v_prediction", "euler"])
def test_scheduler_aware(scheduler):
    from diffusers import EulerDiscreteScheduler

    components = tiny_components(prediction_type="v_prediction" if scheduler == "v_prediction" else "epsilon")
    if scheduler == "euler":
        components["scheduler"] = EulerDiscreteScheduler.from_config(components["scheduler"].config)
    remover = MagicRemoverPipeline(**components)
    remover.set_progress_bar_config(disable=True)
    before = snapshot(remover)
    out = remover(image=make_test_image(), prompt=PROMPT, target="ball", num_inference_steps=6,
                  attention_guidance_scale=GUIDANCE, output_type="latent")  # fmt: skip
    assert torch.isfinite(out.images).all()
    assert torch.all(out.target_attention["edit"][1:] < out.target_attention["reconstruction"][1:])
    assert_same_state(before, snapshot(remover))


def test_half_precision_keeps_the_numerics_in_float32():
    remover = MagicRemoverPipeline(**tiny_components()).to(torch.bfloat16)
    remover.set_progress_bar_config(disable=True)
    before = snapshot(remover)
    inv = remover.invert(make_test_image(), PROMPT, num_inference_steps=4, num_inner_steps=2)
    assert inv.null_embeddings.dtype == torch.float32 and inv.latents.dtype == torch.float32
    out = remover(inversion=inv, target="ball", num_inference_steps=4, attention_guidance_scale=GUIDANCE,
                  output_type="np")  # fmt: skip
    assert np.isfinite(out.images).all()
    assert remover.unet.dtype == torch.bfloat16
    assert_same_state(before, snapshot(remover))


def test_nan_is_caught_with_a_clear_error(pipe, inversion):
    def poison(pipeline, step, timestep, kwargs):
        return {"latents": torch.full_like(kwargs["latents"], float("nan"))}

    with pytest.raises(FloatingPointError, match="NaN"):
        pipe(inversion=inversion, target="ball", num_inference_steps=STEPS, callback_on_step_end=poison)


def test_only_the_conditional_half_of_the_edit_branch_builds_a_graph(pipe, image):
    """The split CFG: the energy reads the conditional half's cross-attention, so the unconditional half is evaluated
    without an autograd graph (a graph there costs memory and is never used, so no result shows it)."""
    graph_calls = []

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if torch.is_grad_enabled() and sample.requires_grad:
            graph_calls.append(kwargs["encoder_hidden_states"].detach().clone())

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = pipe(image=image, prompt=PROMPT, target="ball", num_inference_steps=4, inversion_method="ddim",
                   attention_guidance_scale=GUIDANCE, output_type="latent")  # fmt: skip
    finally:
        handle.remove()
    assert len(graph_calls) >= 3  # every guided evaluation, one graph each
    for embeds in graph_calls:
        torch.testing.assert_close(embeds, out.inversion.prompt_embeds.to(embeds.dtype), rtol=0, atol=0)
