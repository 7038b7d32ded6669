"""Calls that cannot do what they ask are refused clearly, before any model pass (issue 25, pipeline side)."""

import json
import shutil
import threading

import pytest
import torch
from conftest import PROMPT, assert_same_state, quick_removal, snapshot
from tiny_components import make_test_image

from magic_remover import MagicRemoverPipeline


def _no_model(*args, **kwargs):
    raise AssertionError("the UNet ran before the call was refused")


def _removal(pipe, steps, **kwargs):
    kwargs = {"target": "ball", **kwargs}
    return pipe(image=make_test_image(), prompt=PROMPT, num_inference_steps=steps, inversion_method="ddim",
                output_type="latent", **kwargs).images  # fmt: skip


def test_no_step_inside_the_guidance_range_is_refused_naming_the_argument(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "_unet_epsilon", _no_model)
    with pytest.raises(ValueError, match="`num_inference_steps`.*`guidance_timesteps`"):
        _removal(pipe, 1)  # its one timestep, 1, is outside (100, 800)
    with pytest.raises(ValueError, match="`num_inference_steps`.*`guidance_timesteps`"):
        _removal(pipe, 3, guidance_timesteps=(100, 200))  # 667, 334, 1
    monkeypatch.undo()
    assert _removal(pipe, 2).shape[0] == 1  # 501 lies inside: it runs


def test_a_target_named_twice_is_refused(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "_unet_epsilon", _no_model)
    for targets in (["ball", "ball"], ["red ball", "Red  ball"]):
        with pytest.raises(ValueError, match="`target`.*twice"):
            _removal(pipe, 3, target=targets)


def test_two_threads_on_one_pipeline_one_is_refused_and_processors_are_restored(pipe):
    """Thread A is held inside its denoising loop (processors installed) until thread B has tried its own call."""
    before = snapshot(pipe)
    inside, tried = threading.Event(), threading.Event()
    results, errors = {}, {}

    def hold(pipeline, step, timestep, tensors):
        inside.set()
        assert tried.wait(60), "thread B never tried"
        return {}

    def run(name, **kwargs):
        try:
            results[name] = quick_removal(pipe, **kwargs)
        except Exception as error:  # noqa: BLE001 - recorded for the assertions below
            errors[name] = error
        finally:
            if name == "b":
                tried.set()

    first = threading.Thread(target=run, args=("a",), kwargs={"callback_on_step_end": hold})
    first.start()
    assert inside.wait(120)
    second = threading.Thread(target=run, args=("b",))
    second.start()
    second.join(120)
    first.join(120)
    assert "a" in results and "a" not in errors
    assert isinstance(errors.get("b"), RuntimeError) and "another thread" in str(errors["b"])
    assert_same_state(before, snapshot(pipe))
    # the pipeline is free again afterwards, in either thread
    torch.testing.assert_close(quick_removal(pipe), results["a"], rtol=0, atol=0)


def test_calls_in_turn_from_several_threads_all_work(pipe):
    results = []
    threads = [threading.Thread(target=lambda: results.append(quick_removal(pipe))) for _ in range(2)]
    for thread in threads:
        thread.start()
        thread.join()
    assert len(results) == 2 and torch.equal(results[0], results[1])


@pytest.mark.parametrize("key", ["output_type", "return_dict", "image", "callback_on_step_end"])
def test_model_settings_that_cannot_be_call_defaults_are_refused_at_load(sd_folder, tmp_path, key):
    folder = tmp_path / "model"
    shutil.copytree(sd_folder, folder)
    (folder / "magic_remover_defaults.json").write_text(json.dumps({key: "latent", "erase_lambda": 0.5}))
    with pytest.raises(ValueError, match=f"`{key}`"):
        MagicRemoverPipeline.from_pretrained(folder)
    pipe = MagicRemoverPipeline.from_pretrained(sd_folder)
    with pytest.raises(ValueError, match=f"`{key}`"):
        pipe.removal_defaults = {key: "latent"}
    pipe.removal_defaults = {"erase_lambda": 0.5}  # a tunable setting is still taken
    assert pipe.removal_defaults == {"erase_lambda": 0.5}


def test_a_refused_call_leaves_the_pipeline_usable(pipe):
    with pytest.raises(ValueError):
        pipe(image=make_test_image(), prompt=PROMPT, target=["ball", "ball"], num_inference_steps=3)
    assert quick_removal(pipe).shape[0] == 1
