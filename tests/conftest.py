import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_components import make_test_image, tiny_components  # noqa: E402

# Two cores shared with whatever else runs: one intra-op thread is both faster and reproducible here.
torch.set_num_threads(1)

PROMPT = "a photo of a red ball on the grass"
STEPS = 10


@pytest.fixture(scope="session")
def pipe():
    from magic_remover import MagicRemoverPipeline

    pipeline = MagicRemoverPipeline(**tiny_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def image():
    return make_test_image()


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """A StableDiffusionPipeline of tiny components saved to disk: what a user's SD checkpoint folder looks like."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(**tiny_components()).save_pretrained(folder)
    return folder


def quick_removal(pipeline, output_type="latent", **kwargs):
    """Three DDIM steps (two guided, one of them with classifier optimisation) on the test image, with plain DDIM
    inversion: enough to run every part of the method quickly."""
    pipeline.set_progress_bar_config(disable=True)
    kwargs = {"image": make_test_image(), "prompt": PROMPT, "inversion_method": "ddim", **kwargs}
    return pipeline(target="ball", num_inference_steps=3, output_type=output_type, **kwargs).images


@pytest.fixture(scope="session")
def inversion(pipe, image):
    """The paper's null-text inversion (not the default): the tests of the method's mechanics are written for it, and
    a call given it follows its method."""
    return pipe.invert(image, PROMPT, num_inference_steps=STEPS, method="null-text")


def snapshot(pipe) -> dict:
    """Everything a call must leave as it found it."""
    state = {"processors": dict(pipe.unet.attn_processors), "scheduler": dict(pipe.scheduler.config)}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            state[name] = (
                component.training,
                [(n, p.dtype, p.device, p.requires_grad) for n, p in component.named_parameters()],
            )
    return state


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name, processor in before["processors"].items():
        assert after["processors"][name] is processor, f"processor of {name} not restored"
    assert before["scheduler"] == after["scheduler"]
    for key in before:
        if key not in ("processors", "scheduler"):
            assert before[key] == after[key], f"{key} changed"


@pytest.fixture(scope="session")
def tiny_model(sd_folder):
    """The same folder as a ``--model`` argument for the command-line tests."""
    return str(sd_folder)
