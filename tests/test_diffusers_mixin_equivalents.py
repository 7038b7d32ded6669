"""What diffusers' own pipeline test mixins (``PipelineTesterMixin`` and siblings, run by hand against this pipeline
on tiny components) found, kept as the project's own checks: CI cannot fetch diffusers' test files.

``test_pt_np_pil_inputs_equivalent`` and ``test_latents_input`` are kept in ``test_image_forms.py``. The rest:

- ``test_pipeline_call_signature``: every parameter diffusers expects of an image-variation pipeline is a ``__call__``
  parameter, but ``negative_prompt``/``negative_prompt_embeds`` (not accepted by design: the unconditional embedding
  of every step is the inversion's, optimised or chosen so that the reconstruction branch retraces the input; a
  negative prompt would move that branch off the image, and the edit branch attends to it, eq. 10) and
  ``height``/``width`` (the result has the input's size);
- ``test_num_images_per_prompt``: refused, naming the argument, by design (one inversion gives one deterministic
  result);
- ``test_inference_batch_single_identical``: with prompts that keep the target (the mixin's edited prompts drop it);
- ``test_from_pipe_consistent_config``: on a local Stable Diffusion folder instead of a download;
- ``test_encode_prompt_works_in_isolation``: ``encode_prompt`` alone gives the embeddings a call uses.
"""

import inspect

import numpy as np
import pytest
import torch
from conftest import PROMPT
from tiny_components import make_test_image

from magic_remover import MagicRemoverPipeline

IMAGE_VARIATION_PARAMS = {"prompt", "image", "guidance_scale", "prompt_embeds"}  # diffusers' set, less the above
NOT_ACCEPTED = {"negative_prompt", "negative_prompt_embeds", "height", "width"}
REQUIRED_OPTIONAL = {"num_inference_steps", "num_images_per_prompt", "generator", "output_type", "return_dict",
                     "callback_on_step_end", "callback_on_step_end_tensor_inputs"}  # fmt: skip
QUICK = dict(prompt=PROMPT, target="ball", num_inference_steps=3, inversion_method="ddim", output_type="np")


def test_call_signature_has_diffusers_parameters_but_the_documented_ones():
    parameters = set(inspect.signature(MagicRemoverPipeline.__call__).parameters)
    assert IMAGE_VARIATION_PARAMS | REQUIRED_OPTIONAL <= parameters
    assert not NOT_ACCEPTED & parameters  # a decision, documented above and in the README: change both together


def test_more_images_per_prompt_are_refused_naming_the_argument(pipe):
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe(image=make_test_image(), num_images_per_prompt=2, **QUICK)


def test_a_batch_gives_what_each_image_gives_alone(pipe):
    images = [make_test_image(), make_test_image(seed=1)]
    batch = pipe(image=images, **QUICK).images
    alone = np.concatenate([pipe(image=image, **QUICK).images for image in images])
    np.testing.assert_allclose(batch, alone, atol=1e-4, rtol=0)


def test_from_pipe_there_and_back_keeps_the_stable_diffusion_config(sd_folder):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    back = StableDiffusionPipeline.from_pipe(MagicRemoverPipeline.from_pipe(sd))
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(sd.config)


def test_encode_prompt_alone_gives_the_embeddings_a_call_uses(pipe):
    embeds, negative = pipe.encode_prompt(PROMPT, pipe.device, 1, True)
    inversion = pipe.invert(make_test_image(), PROMPT, num_inference_steps=2, method="ddim")
    assert torch.equal(embeds.float(), inversion.prompt_embeds.to(embeds.device))
    assert negative is not None and negative.shape == embeds.shape
