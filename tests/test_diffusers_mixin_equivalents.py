"""What diffusers' own pipeline test mixins (``PipelineTesterMixin`` and siblings, run by hand against both pipelines
on tiny components: Stable Diffusion's, and SDXL's configured as diffusers' SDXL fast tests are) found, kept as the
project's own checks for ``MagicRemoverPipeline`` and ``MagicRemoverXLPipeline``: CI cannot fetch diffusers' test
files. Both pipelines gave the same findings.

``test_pt_np_pil_inputs_equivalent`` and ``test_latents_input`` are kept in ``test_image_forms.py``. The rest:

- ``test_pipeline_call_signature``: every parameter diffusers expects of an image-variation pipeline is a ``__call__``
  parameter, but ``negative_prompt``/``negative_prompt_embeds`` (not accepted by design: the unconditional embedding
  of every step is the inversion's, optimised or chosen so that the reconstruction branch retraces the input; a
  negative prompt would move that branch off the image, and the edit branch attends to it, eq. 10) and
  ``height``/``width`` (the result has the input's size);
- ``test_num_images_per_prompt``: refused, naming the argument, by design (one inversion gives one deterministic
  result);
- ``test_inference_batch_single_identical``: with prompts that keep the target (the mixin's edited prompts drop it);
- ``test_from_pipe_consistent_config``: on a local Stable Diffusion (SDXL) folder instead of a download, there and
  back through ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline``);
- ``test_encode_prompt_works_in_isolation``: ``encode_prompt`` alone gives the embeddings a call uses (for SDXL with
  the image's size ids, which a call adds: they depend on the image).
"""

import inspect

import numpy as np
import pytest
import torch
from conftest import PROMPT
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from tiny_components import make_test_image
from tiny_xl_components import tiny_xl_components, tiny_xl_pipeline

from magic_remover import MagicRemoverPipeline, MagicRemoverXLPipeline
from magic_remover.pipeline_magic_remover_xl import with_time_ids

IMAGE_VARIATION_PARAMS = {"prompt", "image", "guidance_scale", "prompt_embeds"}  # diffusers' set, less the above
NOT_ACCEPTED = {"negative_prompt", "negative_prompt_embeds", "height", "width"}
REQUIRED_OPTIONAL = {"num_inference_steps", "num_images_per_prompt", "generator", "output_type", "return_dict",
                     "callback_on_step_end", "callback_on_step_end_tensor_inputs"}  # fmt: skip
QUICK = dict(prompt=PROMPT, target="ball", num_inference_steps=3, inversion_method="ddim", output_type="np")


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def family_pipe(request):
    """Each family's tiny pipeline: conftest's Stable Diffusion one, and an SDXL one."""
    return request.getfixturevalue("pipe") if request.param == "sd" else tiny_xl_pipeline()


@pytest.mark.parametrize("pipeline_class", [MagicRemoverPipeline, MagicRemoverXLPipeline])
def test_call_signature_has_diffusers_parameters_but_the_documented_ones(pipeline_class):
    parameters = set(inspect.signature(pipeline_class.__call__).parameters)
    assert IMAGE_VARIATION_PARAMS | REQUIRED_OPTIONAL <= parameters
    assert not NOT_ACCEPTED & parameters  # a decision, documented above and in the README: change both together


def test_more_images_per_prompt_are_refused_naming_the_argument(family_pipe):
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        family_pipe(image=make_test_image(), num_images_per_prompt=2, **QUICK)


def test_a_batch_gives_what_each_image_gives_alone(family_pipe):
    images = [make_test_image(), make_test_image(seed=1)]
    batch = family_pipe(image=images, **QUICK).images
    alone = np.concatenate([family_pipe(image=image, **QUICK).images for image in images])
    # float rounding of batched products only: SDXL's deeper UNet (depth 10) accumulates more of it, 1e-4 measured
    # (diffusers' SDXL tests allow 3e-3); a batch that mixed its images' maps or latents would differ by far more
    atol = 1e-3 if isinstance(family_pipe, MagicRemoverXLPipeline) else 1e-4
    np.testing.assert_allclose(batch, alone, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    """A StableDiffusionXLPipeline of tiny components saved to disk, with a non-default config value to carry."""
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(**tiny_xl_components(force_zeros_for_empty_prompt=False)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "folder_fixture, diffusers_class, ours, options",
    [
        ("sd_folder", StableDiffusionPipeline, MagicRemoverPipeline,
         dict(safety_checker=None, requires_safety_checker=False)),
        ("sdxl_folder", StableDiffusionXLPipeline, MagicRemoverXLPipeline, {}),
    ],
)  # fmt: skip
def test_from_pipe_there_and_back_keeps_diffusers_config(request, folder_fixture, diffusers_class, ours, options):
    original = diffusers_class.from_pretrained(request.getfixturevalue(folder_fixture), **options)
    back = diffusers_class.from_pipe(ours.from_pipe(original))
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(back.config) == public(original.config)


def as_a_call_uses(pipe, embeds, image):
    """``encode_prompt``'s embeddings completed as a call completes them: SDXL's gain the image's size ids."""
    if not isinstance(pipe, MagicRemoverXLPipeline):
        return embeds
    return with_time_ids(embeds, pipe.size_ids(image.size[::-1], image.size[::-1]), pipe.pooled_width)


def test_encode_prompt_alone_gives_the_prompt_embeddings_a_call_uses(family_pipe):
    image = make_test_image()
    embeds, negative = family_pipe.encode_prompt(PROMPT, family_pipe.device, 1, True)
    inversion = family_pipe.invert(image, PROMPT, num_inference_steps=2, method="ddim")
    assert torch.equal(as_a_call_uses(family_pipe, embeds, image).float(), inversion.prompt_embeds.to(embeds.device))
    assert negative is not None and negative.shape == embeds.shape


def test_encode_prompt_alone_gives_the_null_embeddings_a_call_uses(family_pipe):
    """Plain DDIM inversion keeps the null text as encoded: every step's null embedding is ``encode_prompt``'s
    negative (for SDXL with ``force_zeros_for_empty_prompt``, zeros, as diffusers' SDXL ``encode_prompt`` gives)."""
    image = make_test_image()
    _, negative = family_pipe.encode_prompt(PROMPT, family_pipe.device, 1, True)
    inversion = family_pipe.invert(image, PROMPT, num_inference_steps=2, method="ddim")
    for null in inversion.null_embeddings:
        torch.testing.assert_close(as_a_call_uses(family_pipe, negative, image).float(), null.to(negative.device))
