"""Every way of loading the embedded model as a MagicRemover pipeline gives the same settings and the same result.

The model's tuned settings are ``removal_defaults`` in its ``model_index.json``; each route below must reach them
(issue 24: ``custom_pipeline=`` used to give ``{}``, and a call with every default then returned noise). Each route's
removal, every argument left to the model, is compared bit for bit with ``MagicRemoverPipeline.from_pretrained``'s
on the command line demo's scene, and that one must succeed (the object gone: closer to the ground truth than the
input, and at a PSNR a failed removal does not reach).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magic_remover import EMBEDDED_MODEL, PIPELINE_FILE, MagicRemoverPipeline
from magic_remover.images import psnr
from magic_remover.pipeline_magic_remover import write_pipeline_code
from magic_remover.scenes import make_scene

SHIPPED = json.loads((Path(EMBEDDED_MODEL) / "model_index.json").read_text())["removal_defaults"]
DEMO_SEED, DEMO_OBJECTS = 3, 2  # `magic-remover demo`'s defaults


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def from_pretrained(tmp_path):
    return MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL)


def custom_pipeline_file(tmp_path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(EMBEDDED_MODEL, custom_pipeline=PIPELINE_FILE, trust_remote_code=True)


def custom_pipeline_folder(tmp_path):
    from diffusers import DiffusionPipeline

    write_pipeline_code(tmp_path / "code")
    return DiffusionPipeline.from_pretrained(EMBEDDED_MODEL, custom_pipeline=str(tmp_path / "code"),
                                             trust_remote_code=True)  # fmt: skip


def saved_folder_with_its_code(tmp_path):
    from diffusers import DiffusionPipeline

    MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL).save_pretrained(tmp_path / "saved")
    return DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)


def from_pipe_of_itself(tmp_path):
    return MagicRemoverPipeline.from_pipe(MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL))


def from_pipe_of_stable_diffusion(tmp_path):
    from diffusers import StableDiffusionPipeline

    return MagicRemoverPipeline.from_pipe(StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL))


def from_pipe_there_and_back(tmp_path):
    from diffusers import StableDiffusionPipeline

    there = StableDiffusionPipeline.from_pipe(MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL))
    return MagicRemoverPipeline.from_pipe(there)


ROUTES = [custom_pipeline_file, custom_pipeline_folder, saved_folder_with_its_code, from_pipe_of_itself,
          from_pipe_of_stable_diffusion, from_pipe_there_and_back]  # fmt: skip


def remove_with_every_default(pipe):
    scene = make_scene(DEMO_SEED, size=64, num_objects=DEMO_OBJECTS)
    torch.manual_seed(0)
    out = quiet(pipe)(image=scene.image, prompt=scene.caption, target=scene.objects[0].shape, output_type="np")
    return scene, out.images[0]


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return remove_with_every_default(from_pretrained(None))


def test_the_reference_route_removes_the_object(reference):
    scene, result = reference
    truth = scene.objects[0].without
    pixels = np.round(result * 255).astype(np.uint8)
    assert psnr(pixels, truth) > psnr(scene.image, truth) + 3
    assert psnr(pixels, truth) > 30  # issue 24: about 11 dB through a route that lost the settings


@pytest.mark.parametrize("route", ROUTES, ids=[r.__name__ for r in ROUTES])
def test_route_has_the_models_settings_and_gives_the_same_result(route, reference, tmp_path):
    pipe = route(tmp_path)
    assert type(pipe).__name__ == "MagicRemoverPipeline"
    assert pipe.removal_defaults == SHIPPED
    assert dict(pipe.config)["removal_defaults"] == SHIPPED
    result = remove_with_every_default(pipe)[1]
    np.testing.assert_array_equal(result, reference[1])


def test_an_explicit_argument_wins_over_the_models_setting(tmp_path):
    pipe = custom_pipeline_file(tmp_path)
    assert pipe.removal_defaults["num_inference_steps"] == 20
    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, removal_defaults={"num_inference_steps": 5})
    assert pipe.removal_defaults == {"num_inference_steps": 5}
    pipe.removal_defaults = {}
    assert MagicRemoverPipeline.from_pipe(pipe).removal_defaults == {}
