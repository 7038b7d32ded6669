"""One place for a model's tuned settings: ``magic_remover_defaults.json`` read by ``from_pretrained``."""

import json

import pytest

from magic_remover import EMBEDDED_MODEL, MagicRemoverPipeline
from magic_remover.pipeline_magic_remover import read_removal_defaults


def _record_calls(pipe, monkeypatch):
    """Replaces the work of a call by a record of the arguments it arrived with (after the defaults)."""
    seen = {}

    def fake_check_inputs(self, *, num_inference_steps, guidance_scale, options, **rest):
        seen.update(steps=num_inference_steps, guidance=guidance_scale, scale=options.attention_guidance_scale,
                    erase_lambda=options.erase_lambda)  # fmt: skip
        raise StopIteration

    monkeypatch.setattr(type(pipe), "check_inputs", fake_check_inputs)
    return seen


def test_sd_folder_keeps_the_papers_defaults(sd_folder, monkeypatch):
    pipe = MagicRemoverPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    assert pipe.removal_defaults == {}
    seen = _record_calls(pipe, monkeypatch)
    with pytest.raises(StopIteration):
        pipe(image=None, prompt="a ball", target="ball")
    assert seen == {"steps": 50, "guidance": 7.5, "scale": 1.0, "erase_lambda": 0.8}


def test_folder_settings_fill_what_the_call_leaves_out(sd_folder, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "tuned"
    shutil.copytree(sd_folder, folder)
    (folder / "magic_remover_defaults.json").write_text(json.dumps({"num_inference_steps": 7,
                                                                    "attention_guidance_scale": 0.25}))  # fmt: skip
    pipe = MagicRemoverPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert pipe.removal_defaults == {"num_inference_steps": 7, "attention_guidance_scale": 0.25}
    seen = _record_calls(pipe, monkeypatch)
    with pytest.raises(StopIteration):
        pipe(image=None, prompt="a ball", target="ball")
    assert (seen["steps"], seen["scale"], seen["guidance"]) == (7, 0.25, 7.5)
    with pytest.raises(StopIteration):  # an explicit argument always wins, by keyword or by position
        pipe(None, "a ball", "ball", None, None, 3, attention_guidance_scale=2.0)
    assert (seen["steps"], seen["scale"]) == (3, 2.0)
    # and the settings travel with save_pretrained
    pipe.save_pretrained(tmp_path / "saved")
    assert read_removal_defaults(tmp_path / "saved") == pipe.removal_defaults


def test_unknown_setting_is_named(tmp_path):
    (tmp_path / "magic_remover_defaults.json").write_text(json.dumps({"attention_guidance_scal": 0.1}))
    with pytest.raises(ValueError, match="attention_guidance_scal"):
        read_removal_defaults(tmp_path)


def test_embedded_model_calls_use_its_tuned_settings():
    shipped = json.loads((__import__("pathlib").Path(EMBEDDED_MODEL) / "magic_remover_defaults.json").read_text())
    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    assert pipe.removal_defaults == shipped
    pipe.removal_defaults = {}
    assert pipe.removal_defaults == {}
    with pytest.raises(ValueError, match="no_such"):
        pipe.removal_defaults = {"no_such": 1}
