"""``fill_prompt`` (ours): the edit branch runs on the caption without the target, the energy still on the target word."""

import pytest
import torch
from conftest import PROMPT, quick_removal

from magic_remover import MagicRemoverXLPipeline
from magic_remover.tokens import prompt_without_targets
from tests.tiny_components import make_test_image
from tests.tiny_xl_components import tiny_xl_components

FILL = "the grass"  # PROMPT without the phrase holding "ball"


@pytest.mark.parametrize(
    "prompt, targets, expected",
    [
        ("a blue triangle and an orange triangle and a red diamond on a grass background", ["red diamond"],
         "a blue triangle and an orange triangle on a grass background"),
        ("a blue triangle and an orange triangle and a red diamond on a grass background", ["diamond"],
         "a blue triangle and an orange triangle on a grass background"),
        ("A cat, a dog and a bird.", ["dog"], "A cat and a bird."),
        ("a red star on a sky background", ["star"], "a sky background"),
        (PROMPT, ["ball"], FILL),
        ("a dog", ["dog"], ""),
        ("a cat and a dog on a sofa", ["cat", "dog"], "a sofa"),
        ("a hotdog and a cat", ["dog"], "a hotdog and a cat"),  # whole words only
    ],
)  # fmt: skip
def test_prompt_without_targets_drops_the_phrases_that_hold_a_target(prompt, targets, expected):
    assert prompt_without_targets(prompt, targets) == expected


def test_fill_prompt_is_checked_before_any_model_pass(pipe, monkeypatch):
    def no_model_pass(*args, **kwargs):
        raise AssertionError("a model ran before the check")

    monkeypatch.setattr(pipe.unet, "forward", no_model_pass)
    monkeypatch.setattr(pipe.text_encoder, "forward", no_model_pass)
    with pytest.raises(TypeError, match="fill_prompt"):
        quick_removal(pipe, fill_prompt=3)
    with pytest.raises(ValueError, match="fill_prompt.*2 captions for 1"):
        quick_removal(pipe, fill_prompt=["a", "b"])


def encoded(pipe, text):
    return pipe.encode_prompt(text, pipe.device, 1, False)[0].float()


def holds(embeds, reference):
    """Whether ``embeds`` (a UNet call's conditioning, perhaps CFG-batched) holds ``reference``'s rows."""
    return any(torch.equal(block, reference) for block in embeds.float().split(reference.shape[0]))


@pytest.fixture
def unet_calls(pipe, monkeypatch):
    """Every UNet evaluation of a call: its conditioning and whether its latents are in the autograd graph."""
    calls, unet_epsilon = [], pipe._unet_epsilon

    def recording(latents, timestep, embeds, schedule):
        calls.append((embeds.detach().clone(), latents.requires_grad))
        return unet_epsilon(latents, timestep, embeds, schedule)

    monkeypatch.setattr(pipe, "_unet_epsilon", recording)
    return calls


def test_the_edit_branch_runs_on_the_fill_prompt_and_the_energy_on_the_prompt(pipe, unet_calls):
    prompt, fill = encoded(pipe, PROMPT), encoded(pipe, FILL)
    quick_removal(pipe, fill_prompt=True)
    in_graph = [embeds for embeds, grad in unet_calls if grad]
    assert in_graph and all(holds(e, prompt) and not holds(e, fill) for e in in_graph)  # the energy's target word
    assert sum(holds(e, fill) for e, _ in unet_calls) >= 3  # two guided steps and the last, unguided one
    assert holds(unet_calls[-1][0], fill)  # the last step's edit pass (unguided) is on the fill prompt too
    unet_calls.clear()
    quick_removal(pipe)
    assert not any(holds(e, fill) for e, _ in unet_calls)  # off: the paper's edit branch, on the prompt


def test_the_prompt_as_fill_prompt_gives_the_papers_result(pipe):
    paper = quick_removal(pipe, output_type="np")
    same_text = quick_removal(pipe, output_type="np", fill_prompt=PROMPT)
    other_text = quick_removal(pipe, output_type="np", fill_prompt=FILL)
    assert abs(same_text - paper).max() < 1e-4  # the split of the edit passes changes no result
    assert abs(other_text - paper).max() > 1e-3


def test_sdxl_fill_conditioning_keeps_the_size_ids_and_changes_the_result():
    torch.set_num_threads(1)
    xl = MagicRemoverXLPipeline(**tiny_xl_components())
    xl.set_progress_bar_config(disable=True)
    image = make_test_image((64, 64))
    inversion = xl.invert(image, PROMPT, num_inference_steps=3, method="ddim")
    fill = xl._fill_conditioning([FILL], inversion)
    assert fill.shape == inversion.prompt_embeds.shape
    width = xl.pooled_width
    assert torch.equal(fill[:, -1, width:], inversion.prompt_embeds[:, -1, width:])  # the same size ids
    assert not torch.equal(fill[:, :-1], inversion.prompt_embeds[:, :-1])
    kwargs = dict(image=image, target="ball", inversion=inversion, num_inference_steps=3, output_type="np")
    with_fill = xl(fill_prompt=True, **kwargs).images
    assert torch.isfinite(torch.as_tensor(with_fill)).all()
    assert abs(with_fill - xl(**kwargs).images).max() > 1e-4
