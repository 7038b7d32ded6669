"""MagicRemoverXLPipeline on tiny random SDXL components: its conditioning against diffusers' SDXL pipeline, the K/V
swap on an SDXL attention layer, the added conditioning in both branches, inversions, state restoration, loading."""

from __future__ import annotations

import json
from pathlib import Path
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

import magic_remover
from magic_remover import MagicRemoverInversion, MagicRemoverXLPipeline
from magic_remover.attention_processors import EDIT, RECONSTRUCT, SINGLE, RemovalAttentionState, installed_processors
from magic_remover.inversion import DDIMSchedule
from magic_remover.pipeline_magic_remover_xl import pack_conditioning, unpack_conditioning
from magic_remover.removal import RemovalOptions
from tests.tiny_components import make_test_image
from tests.tiny_xl_components import tiny_xl_components, tiny_xl_pipeline

PROMPT = "a photo of a red ball on the grass"
STEPS = 4
SIZE = (40, 32)  # not square, and not a multiple of 16: the size ids must follow the image


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tiny_xl_pipeline()


@pytest.fixture(scope="module")
def image():
    return make_test_image(SIZE)


def reference_conditioning(pipe, prompts, image_size, processing_size):
    """The prompt's and the null conditioning as diffusers' own SDXL pipeline computes them, on the same components."""
    zeros = pipe.config.force_zeros_for_empty_prompt
    reference = StableDiffusionXLPipeline(**pipe.components, force_zeros_for_empty_prompt=zeros)
    embeds, negative, pooled, negative_pooled = reference.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
    time_ids = reference._get_add_time_ids(tuple(image_size), (0, 0), tuple(processing_size), torch.float32,
                                           pipe.text_encoder_2.config.projection_dim)  # fmt: skip
    return (embeds, pooled), (negative, negative_pooled), time_ids.expand(len(prompts), -1)


def assert_matches_diffusers(pipe, image_size=(40, 32), processing_size=(40, 32)):
    """The pipeline's packed conditioning, unpacked, equals diffusers' SDXL encoding and size ids."""
    ours = pipe._text_conditioning([PROMPT], None, None, None, image_size, processing_size)
    references = reference_conditioning(pipe, [PROMPT], image_size, processing_size)
    for packed, (hidden, pooled) in zip(ours, references[:2]):
        got_hidden, got_pooled, got_ids = unpack_conditioning(packed, pipe.pooled_width)
        torch.testing.assert_close(got_hidden, hidden)
        torch.testing.assert_close(got_pooled, pooled)
        torch.testing.assert_close(got_ids, references[2])


@torch.no_grad()
@pytest.mark.parametrize("force_zeros", [True, False])
def test_conditioning_equals_diffusers_sdxl_encoding_and_size_ids(force_zeros):
    pipeline = MagicRemoverXLPipeline(**tiny_xl_components(force_zeros_for_empty_prompt=force_zeros))
    assert_matches_diffusers(pipeline, image_size=(41, 33), processing_size=(40, 32))
    _, null = pipeline._text_conditioning([PROMPT], None, None, None, (40, 32), (40, 32))
    hidden, pooled, _ = unpack_conditioning(null, pipeline.pooled_width)
    assert (hidden.abs().max() == 0) == force_zeros and (pooled.abs().max() == 0) == force_zeros


@torch.no_grad()
def test_unet_epsilon_equals_a_direct_sdxl_unet_call(pipe):
    """Our UNet call with the packed conditioning against the UNet called with diffusers' conditioning."""
    (hidden, pooled), _, time_ids = reference_conditioning(pipe, [PROMPT], (40, 32), (40, 32))
    packed, _ = pipe._text_conditioning([PROMPT], None, None, None, (40, 32), (40, 32))
    schedule = DDIMSchedule.from_scheduler_config(pipe.scheduler.config, STEPS)
    latents = torch.randn(1, 4, 20, 16, generator=torch.Generator().manual_seed(0))
    t = schedule.timesteps[1]
    expected = pipe.unet(latents, t, encoder_hidden_states=hidden,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample  # fmt: skip
    torch.testing.assert_close(pipe._unet_epsilon(latents, t, packed, schedule), expected)


@torch.no_grad()
def test_the_comparison_with_diffusers_catches_a_dropped_second_encoder_or_dropped_size_ids(pipe, monkeypatch):
    """Deliberate defects in the adapter make the reference comparisons fail."""
    first_encoder_only = lambda prompts, device, clip_skip, max_length=None: pack_conditioning(  # noqa: E731
        torch.cat([pipe.text_encoder(pipe.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids,
                                     output_hidden_states=True).hidden_states[-2]] * 2, dim=-1),
        pipe.text_encoder_2(pipe.tokenizer_2(prompts, padding="max_length", return_tensors="pt").input_ids).text_embeds,
    )  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(pipe, "_encode_tokens", first_encoder_only)
        with pytest.raises(AssertionError):
            assert_matches_diffusers(pipe)
    assert_matches_diffusers(pipe)  # and passes without the defect

    original = MagicRemoverXLPipeline._unet_conditioning

    def zero_size_ids(self, embeds):
        conditioning = original(self, embeds)
        conditioning["added_cond_kwargs"]["time_ids"] = torch.zeros_like(conditioning["added_cond_kwargs"]["time_ids"])
        return conditioning

    with monkeypatch.context() as patch:
        patch.setattr(MagicRemoverXLPipeline, "_unet_conditioning", zero_size_ids)
        with pytest.raises(AssertionError):
            test_unet_epsilon_equals_a_direct_sdxl_unet_call(pipe)


def _layer_inputs_and_output(module):
    recorded = {}
    pre = module.register_forward_pre_hook(lambda m, args, kwargs: recorded.update(input=args[0] if args else kwargs["hidden_states"]),
                                           with_kwargs=True)  # fmt: skip
    post = module.register_forward_hook(lambda m, args, output: recorded.update(output=output))
    return recorded, (pre, post)


def _attend_by_hand(layer, query_states, key_value_states):
    """``to_out(softmax(Q K^T / sqrt(d)) V)`` with Q from ``query_states``, K and V from ``key_value_states``."""
    heads, batch = layer.heads, query_states.shape[0]

    def split(x):
        return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

    q, k, v = split(layer.to_q(query_states)), split(layer.to_k(key_value_states)), split(layer.to_v(key_value_states))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    merged = (probs @ v).transpose(1, 2).reshape(batch, -1, heads * q.shape[-1])
    return layer.to_out[1](layer.to_out[0](merged))


@torch.no_grad()
def test_edit_pass_attends_to_the_reconstructions_keys_and_values_on_an_sdxl_depth_10_layer(pipe):
    """Eq. 10 on SDXL's layout: the tenth transformer block of the deepest block attends with the edit pass's queries
    to the keys and values the reconstruction pass recorded, softmax(Q_edit K_rec^T / sqrt(d)) V_rec, by hand."""
    name = "down_blocks.2.attentions.1.transformer_blocks.9.attn1"
    layer = pipe.unet.get_submodule(name)
    state = RemovalAttentionState()
    processors = pipe._removal_processors(state, RemovalOptions())
    assert f"{name}.processor" in processors and len(processors) == len(pipe.unet.attn_processors)
    packed, _ = pipe._text_conditioning([PROMPT], None, None, None, (40, 32), (40, 32))
    schedule = DDIMSchedule.from_scheduler_config(pipe.scheduler.config, STEPS)
    generator = torch.Generator().manual_seed(1)
    reconstruction, edit = torch.randn(2, 1, 4, 20, 16, generator=generator).unbind(0)
    t = schedule.timesteps[1]
    recorded, hooks = _layer_inputs_and_output(layer)
    try:
        with installed_processors(pipe.unet, processors):
            state.start_pass(RECONSTRUCT, SINGLE)
            pipe._unet_epsilon(reconstruction, t, packed, schedule)
            rec_input = recorded["input"]
            state.start_pass(EDIT, SINGLE)
            pipe._unet_epsilon(edit, t, packed, schedule)
    finally:
        for hook in hooks:
            hook.remove()
        state.clear()
    expected = _attend_by_hand(layer, recorded["input"], rec_input)
    torch.testing.assert_close(recorded["output"], expected, rtol=1e-4, atol=1e-5)
    own = _attend_by_hand(layer, recorded["input"], recorded["input"])
    assert (own - expected).abs().max() > 1e-3  # the layer's own keys and values would give something else


def test_added_conditioning_reaches_both_branches(pipe, image):
    """Every UNet call of a removal, the reconstruction's CFG batches and the guided edit passes alike, gets the
    pooled embeddings and this image's size ids."""
    calls = []

    def record(module, args, kwargs):
        calls.append((torch.is_grad_enabled(), kwargs["encoder_hidden_states"].shape[0],
                      {k: v.detach().clone() for k, v in kwargs["added_cond_kwargs"].items()}))  # fmt: skip

    packed, null = pipe._text_conditioning([PROMPT], None, None, None, SIZE, SIZE)
    _, prompt_pooled, time_ids = unpack_conditioning(packed, pipe.pooled_width)
    _, null_pooled, _ = unpack_conditioning(null, pipe.pooled_width)
    inversion = pipe.invert(image, PROMPT, num_inference_steps=STEPS, method="ddim")
    hook = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type="latent")
    finally:
        hook.remove()
    edit_calls = [c for c in calls if c[0]]
    cfg_calls = [c for c in calls if not c[0] and c[1] == 2]
    assert edit_calls and cfg_calls
    for _, batch, added in calls:
        torch.testing.assert_close(added["time_ids"], time_ids.expand(batch, -1))
    for _, _, added in edit_calls:  # the guided edit pass's conditional half
        torch.testing.assert_close(added["text_embeds"], prompt_pooled)
    for _, _, added in cfg_calls:  # [null, prompt]
        torch.testing.assert_close(added["text_embeds"], torch.cat([null_pooled, prompt_pooled]))
    assert prompt_pooled.abs().max() > 0 and tuple(time_ids[0].tolist()) == (*SIZE, 0, 0, *SIZE)


def _round_trip(pipe, image, method):
    """``(inversion, removal, relative squared error of the reconstruction branch's z_0)``."""
    kwargs = {"num_inner_steps": 5, "learning_rate": 5e-2} if method == "null-text" else {}
    inversion = pipe.invert(image, PROMPT, num_inference_steps=STEPS, method=method, **kwargs)
    z0 = inversion.latents[0]
    out = pipe(prompt=PROMPT, target="ball", inversion=inversion, num_inference_steps=STEPS, output_type="latent")
    return inversion, out, ((out.reconstructions - z0).pow(2).mean() / z0.pow(2).mean()).item()


@pytest.fixture(scope="module")
def ddim_error(pipe, image):
    with torch.no_grad():
        return _round_trip(pipe, image, "ddim")[2]


@torch.no_grad()
@pytest.mark.parametrize("method", ["negative-prompt", "direct", "null-text"])
def test_inversion_round_trip_per_method(pipe, image, method, ddim_error, tmp_path):
    """The reconstruction branch returns to z_0: exactly with direct inversion, and closer than plain DDIM inversion
    under CFG with null-text (eq. 6) and negative-prompt inversion (the random tiny UNet keeps both far from exact);
    the edit branch moves; a saved and loaded inversion gives the same removal."""
    inversion, out, error = _round_trip(pipe, image, method)
    bound = {"direct": 1e-10, "null-text": 0.75 * ddim_error, "negative-prompt": 0.5 * ddim_error}[method]
    assert error < bound, (method, error, ddim_error)
    assert (out.images - out.reconstructions).abs().max() > 1e-3  # the edit branch moved
    inversion.save(tmp_path / "inversion")
    loaded = MagicRemoverInversion.load(tmp_path / "inversion")
    again = pipe(prompt=PROMPT, target="ball", inversion=loaded, num_inference_steps=STEPS, output_type="latent")
    torch.testing.assert_close(again.images, out.images, rtol=0, atol=0)


def _snapshot(pipe):
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    return {
        "processors": dict(pipe.unet.attn_processors),
        "dtypes": {n: next(m.parameters()).dtype for n, m in modules.items()},
        "requires_grad": {n: [p.requires_grad for p in m.parameters()] for n, m in modules.items()},
        "grads": sum(p.grad is not None for m in modules.values() for p in m.parameters()),
        "scheduler": dict(pipe.scheduler.config),
    }


def _assert_as_found(before, after):
    assert after["processors"].keys() == before["processors"].keys()
    assert all(after["processors"][k] is v for k, v in before["processors"].items())
    assert after["dtypes"] == before["dtypes"] and after["requires_grad"] == before["requires_grad"]
    assert after["grads"] == 0 and after["scheduler"] == before["scheduler"]


def test_processors_and_state_restored_after_a_call_and_after_a_raise(image):
    pipeline = MagicRemoverXLPipeline(**tiny_xl_components())
    pipeline.set_progress_bar_config(disable=True)
    pipeline.vae.to(torch.float16)  # SDXL's fp16 VAE: upcast for the call, back to float16 after it
    before = _snapshot(pipeline)
    out = pipeline(image=image, prompt=PROMPT, target="ball", num_inference_steps=STEPS, inversion_method="null-text",
                   output_type="np")  # fmt: skip
    assert np.isfinite(out.images).all() and out.images.shape == (1, *SIZE, 3)
    _assert_as_found(before, _snapshot(pipeline))

    def fail(pipe, step, timestep, tensors):
        assert any(True for _ in pipe.unet.attn_processors.values())
        raise RuntimeError("stop at step 1")

    with pytest.raises(RuntimeError, match="stop at step 1"):
        pipeline(image=image, prompt=PROMPT, target="ball", num_inference_steps=STEPS, callback_on_step_end=fail)
    _assert_as_found(before, _snapshot(pipeline))

    def broken_decode(*args, **kwargs):
        assert pipeline.vae.dtype == torch.float32  # upcast while it runs
        raise FloatingPointError("decoder failed")

    pipeline.vae.decode = broken_decode
    with pytest.raises(FloatingPointError, match="decoder failed"):
        pipeline(image=image, prompt=PROMPT, target="ball", num_inference_steps=STEPS)
    del pipeline.vae.decode
    _assert_as_found(before, _snapshot(pipeline))


def test_the_same_input_checks_before_any_model_pass(pipe, image, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model pass ran before the checks")

    monkeypatch.setattr(pipe.unet, "forward", no_model)
    with pytest.raises(ValueError, match="sofa"):
        pipe(image=image, prompt=PROMPT, target="sofa")
    with pytest.raises(ValueError, match="erase_lambda"):
        pipe(image=image, prompt=PROMPT, target="ball", erase_lambda=2.0)
    with pytest.raises(ValueError, match="packed form"):  # SDXL's embeddings without the packed row
        pipe(image=image, prompt=PROMPT, target="ball", prompt_embeds=torch.zeros(1, 16, 32))


def test_module_holds_one_pipeline_class_and_is_exported():
    import magic_remover.pipeline_magic_remover_xl as module

    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, DiffusionPipeline)]
    assert classes == [MagicRemoverXLPipeline, DiffusionPipeline] or classes == [DiffusionPipeline, MagicRemoverXLPipeline]
    assert magic_remover.XL_PIPELINE_FILE == module.__file__


def _removal(pipeline, image):
    return pipeline(image=image, prompt=PROMPT, target="ball", num_inference_steps=2, output_type="latent").images


def test_loads_through_custom_pipeline_file_and_folder_and_from_pretrained(pipe, image, tmp_path):
    expected = _removal(pipe, image)
    sdxl_folder = tmp_path / "sdxl"
    StableDiffusionXLPipeline(**pipe.components).save_pretrained(sdxl_folder)
    from_file = DiffusionPipeline.from_pretrained(sdxl_folder, custom_pipeline=magic_remover.XL_PIPELINE_FILE,
                                                  trust_remote_code=True)  # fmt: skip
    assert type(from_file).__name__ == "MagicRemoverXLPipeline"
    torch.testing.assert_close(_removal(from_file, image), expected, rtol=1e-4, atol=1e-4)  # float rounding only

    saved = tmp_path / "saved"
    pipe.save_pretrained(saved)
    assert json.loads((saved / "model_index.json").read_text())["_class_name"] == ["pipeline", "MagicRemoverXLPipeline"]
    assert (saved / "pipeline_magic_remover.py").is_file()  # the base travels with it
    from_folder = DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert type(from_folder).__name__ == "MagicRemoverXLPipeline"
    torch.testing.assert_close(_removal(from_folder, image), expected, rtol=1e-4, atol=1e-4)  # float rounding only
    ours = MagicRemoverXLPipeline.from_pretrained(sdxl_folder)
    assert isinstance(ours, MagicRemoverXLPipeline)
    torch.testing.assert_close(_removal(ours, image), expected, rtol=1e-4, atol=1e-4)  # float rounding only


@pytest.mark.parametrize("xl_first", [True, False])
def test_an_sd_folder_and_an_sdxl_folder_load_with_their_code_in_one_process(pipe, tmp_path, xl_first):
    """diffusers runs every local folder's ``pipeline.py`` in one module object (``diffusers_modules.local.pipeline``),
    so the second family's file found the first family's class still there and was refused ("Multiple classes that
    inherit from DiffusionPipeline"); each pipeline file now drops the other's class."""
    from diffusers import StableDiffusionPipeline
    from tests.tiny_components import tiny_components

    from magic_remover.pipeline_magic_remover import write_pipeline_code as write_sd_code
    from magic_remover.pipeline_magic_remover_xl import write_pipeline_code as write_xl_code

    StableDiffusionPipeline(**tiny_components()).save_pretrained(tmp_path / "sd")
    StableDiffusionXLPipeline(**pipe.components).save_pretrained(tmp_path / "xl")
    write_sd_code(tmp_path / "sd-code")
    write_xl_code(tmp_path / "xl-code")
    order = ["xl", "sd"] if xl_first else ["sd", "xl"]
    for name in order + order:  # and once more, after the other family
        loaded = DiffusionPipeline.from_pretrained(tmp_path / name, custom_pipeline=str(tmp_path / f"{name}-code"),
                                                   trust_remote_code=True)  # fmt: skip
        assert type(loaded).__name__ == {"sd": "MagicRemoverPipeline", "xl": "MagicRemoverXLPipeline"}[name]


@pytest.mark.parametrize("sdxl_class", [StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline,
                                        StableDiffusionXLInpaintPipeline])  # fmt: skip
def test_from_pipe_both_ways(pipe, image, sdxl_class):
    sdxl = sdxl_class.from_pipe(pipe)
    assert isinstance(sdxl, sdxl_class) and sdxl.unet is pipe.unet and sdxl.text_encoder_2 is pipe.text_encoder_2
    if sdxl_class is StableDiffusionXLPipeline:  # diffusers' own pipeline runs on the shared components
        sdxl.set_progress_bar_config(disable=True)
        latents = sdxl(PROMPT, num_inference_steps=2, height=32, width=32, output_type="latent").images
        assert latents.shape == (1, 4, 16, 16) and torch.isfinite(latents).all()
    back = MagicRemoverXLPipeline.from_pipe(sdxl)
    assert isinstance(back, MagicRemoverXLPipeline) and back.unet is pipe.unet and back.tokenizer_2 is pipe.tokenizer_2
    assert back.config.force_zeros_for_empty_prompt == pipe.config.force_zeros_for_empty_prompt
    torch.testing.assert_close(_removal(back, image), _removal(pipe, image), rtol=0, atol=0)


def test_the_file_imports_every_module_it_needs_itself():
    """diffusers' ``custom_pipeline=<file>`` copies only the modules the file imports directly (its local route does
    not follow imports of imports): each module of the transitive set must be a direct import, or a fresh module cache
    fails to import the base (and a stale one imports old code)."""
    from diffusers.utils.dynamic_modules_utils import get_relative_import_files, get_relative_imports

    from magic_remover.pipeline_magic_remover_xl import SIBLING_MODULES

    transitive = {Path(path).name for path in get_relative_import_files(magic_remover.XL_PIPELINE_FILE)}
    direct = {f"{name}.py" for name in get_relative_imports(magic_remover.XL_PIPELINE_FILE)}
    assert transitive == direct == set(SIBLING_MODULES)
    assert "pipeline_magic_remover.py" in direct


def test_hub_layout_written_for_the_xl_class(tmp_path):
    from magic_remover.pipeline_magic_remover_xl import SIBLING_MODULES, write_pipeline_code

    write_pipeline_code(tmp_path)
    assert (tmp_path / "pipeline.py").read_text() == Path(magic_remover.XL_PIPELINE_FILE).read_text()
    assert {p.name for p in tmp_path.iterdir()} == {"pipeline.py", *SIBLING_MODULES}


def test_sdxl_model_index_is_recognised(pipe, tmp_path):
    from magic_remover.pipeline_magic_remover_xl import is_sdxl_model_index

    StableDiffusionXLPipeline(**pipe.components).save_pretrained(tmp_path / "sdxl")
    assert is_sdxl_model_index(json.loads((tmp_path / "sdxl" / "model_index.json").read_text()))
    sd_index = {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    assert not is_sdxl_model_index(sd_index)
    refiner = {"text_encoder": [None, None], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
               "tokenizer_2": ["transformers", "CLIPTokenizer"]}  # fmt: skip
    assert not is_sdxl_model_index(refiner)


def test_the_command_line_loader_picks_the_xl_pipeline_for_an_sdxl_folder(pipe, tmp_path):
    """`remove`, `batch` and the page load through cli_common.load_pipeline: an SDXL base folder (both text encoders)
    becomes MagicRemoverXLPipeline, a Stable Diffusion folder MagicRemoverPipeline."""
    from diffusers import StableDiffusionPipeline
    from tests.tiny_components import tiny_components

    from magic_remover.cli_common import load_pipeline

    StableDiffusionXLPipeline(**pipe.components).save_pretrained(tmp_path / "xl")
    StableDiffusionPipeline(**tiny_components()).save_pretrained(tmp_path / "sd")
    assert type(load_pipeline(str(tmp_path / "xl"), device="cpu")) is MagicRemoverXLPipeline
    assert type(load_pipeline(str(tmp_path / "sd"), device="cpu")) is magic_remover.MagicRemoverPipeline


def test_hub_export_xl_writes_a_code_repo_that_loads_on_an_sdxl_folder(pipe, image, tmp_path):
    """`magic-remover hub export --xl`: pipeline.py is the XL file with exactly its sibling modules, and the folder
    loads as `custom_pipeline=` on an SDXL checkpoint."""
    from magic_remover.cli import main
    from magic_remover.hub import code_files

    assert main(["hub", "export", str(tmp_path / "code"), "--xl"]) == 0
    written = {p.name for p in (tmp_path / "code").iterdir()}
    assert written == set(code_files(xl=True)) and "pipeline_magic_remover.py" in written
    assert (tmp_path / "code" / "pipeline.py").read_bytes() == Path(magic_remover.XL_PIPELINE_FILE).read_bytes()
    StableDiffusionXLPipeline(**pipe.components).save_pretrained(tmp_path / "sdxl")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "sdxl", custom_pipeline=str(tmp_path / "code"),
                                               trust_remote_code=True)  # fmt: skip
    assert type(loaded).__name__ == "MagicRemoverXLPipeline"
