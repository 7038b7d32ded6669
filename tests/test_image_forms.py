"""Images and masks as diffusers takes them (``VaeImageProcessor.preprocess``'s conventions, issue 24).

The same pixels as PIL, numpy in [0, 1], a tensor in [0, 1] (diffusers' convention), a tensor in [-1, 1] (still
accepted, with diffusers' warning) and a uint8 tensor give the same removal; masks of every dtype, ``bool`` included,
work. These keep, without diffusers' test files, what its ``test_pt_np_pil_inputs_equivalent`` and
``test_latents_input`` check, for both pipelines (Stable Diffusion's and SDXL's, which take images through the same
code: the mask forms are checked once, on Stable Diffusion's).
"""

import warnings

import numpy as np
import pytest
import torch
from conftest import PROMPT
from tiny_components import make_test_image
from tiny_xl_components import tiny_xl_pipeline

from magic_remover.inputs import image_to_pixels

STEPS = 3


def unit_array():
    return np.asarray(make_test_image(), dtype=np.float32) / 255.0


FORMS = {
    "pil": lambda: make_test_image(),
    "numpy [0, 1]": unit_array,
    "tensor [0, 1]": lambda: torch.from_numpy(unit_array()).permute(2, 0, 1),
    "tensor [-1, 1]": lambda: torch.from_numpy(unit_array()).permute(2, 0, 1) * 2 - 1,
    "tensor uint8": lambda: torch.from_numpy(np.array(make_test_image())).permute(2, 0, 1),
    "batched tensor [0, 1]": lambda: torch.from_numpy(unit_array()).permute(2, 0, 1)[None],
    "list of one": lambda: [make_test_image()],
}


def remove(pipe, image, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' notice for [-1, 1] tensors
        return pipe(image=image, prompt=PROMPT, target="ball", num_inference_steps=STEPS, inversion_method="ddim",
                    output_type="np", **kwargs).images  # fmt: skip


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def family_pipe(request):
    """Each family's tiny pipeline: conftest's Stable Diffusion one, and an SDXL one."""
    return request.getfixturevalue("pipe") if request.param == "sd" else tiny_xl_pipeline()


@pytest.fixture(scope="module")
def from_pil(family_pipe):
    return remove(family_pipe, make_test_image())


@pytest.mark.parametrize("form", [f for f in FORMS if f != "pil"])
def test_the_same_pixels_in_every_form_give_the_same_result(family_pipe, from_pil, form):
    np.testing.assert_allclose(remove(family_pipe, FORMS[form]()), from_pil, atol=1e-5, rtol=0)


def test_a_unit_tensor_is_read_as_zero_to_one_not_as_minus_one_to_one():
    pixels = image_to_pixels(FORMS["tensor [0, 1]"]())
    assert torch.allclose(pixels, image_to_pixels(make_test_image()), atol=1e-6)
    assert float(pixels.min()) < -0.5  # [0, 1] was mapped onto [-1, 1], not taken as already there


def test_a_minus_one_to_one_tensor_gets_diffusers_deprecation_warning():
    with pytest.warns(FutureWarning, match=r"\[-1,1\]"):
        image_to_pixels(FORMS["tensor [-1, 1]"]())


@pytest.mark.parametrize(
    "image, error, words",
    [
        (torch.full((3, 8, 8), 200.0), ValueError, "`image` as a float tensor must hold values in [0, 1]"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), TypeError, "`image` as a tensor must be float"),
        (np.full((8, 8, 3), 2.0, np.float32), ValueError, "`image` as a float numpy array must hold values in [0, 1]"),
        (torch.full((3, 8, 8), float("nan")), ValueError, "`image` holds NaN"),
    ],
)
def test_a_bad_image_is_refused_naming_the_argument(image, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        image_to_pixels(image, "image")


def test_latents_given_as_image_give_the_images_result(family_pipe):
    latents = family_pipe.image_latents(make_test_image())
    np.testing.assert_allclose(remove(family_pipe, latents, keep_input_outside_attention_mask=False),
                               remove(family_pipe, make_test_image(), keep_input_outside_attention_mask=False),
                               atol=1e-5, rtol=0)  # fmt: skip


def square_mask(dtype):
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    if dtype == "bool":
        return mask
    if dtype.startswith("torch."):
        tensor = torch.from_numpy(mask)
        kind = getattr(torch, dtype.split(".")[1])
        return tensor.to(kind) * (255 if kind == torch.uint8 else 1)
    array = mask.astype(dtype)
    return array * np.iinfo(dtype).max if np.issubdtype(array.dtype, np.unsignedinteger) else array


MASK_DTYPES = ["bool", "uint8", "uint16", "int64", "float16", "float32", "float64",
               "torch.bool", "torch.uint8", "torch.float16", "torch.float32", "torch.int64"]  # fmt: skip


@pytest.fixture(scope="module")
def with_float_mask(pipe):
    return remove(pipe, make_test_image(), mask_image=square_mask("float32"))


@pytest.mark.parametrize("dtype", MASK_DTYPES)
def test_a_mask_of_every_dtype_works_and_means_the_same(pipe, with_float_mask, dtype):
    np.testing.assert_allclose(remove(pipe, make_test_image(), mask_image=square_mask(dtype)), with_float_mask,
                               atol=1e-5, rtol=0)  # fmt: skip
