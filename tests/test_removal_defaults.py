"""One place for a model's tuned settings: ``removal_defaults`` in ``model_index.json``, the pipeline's configuration."""

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
    index = json.loads((folder / "model_index.json").read_text())
    index["removal_defaults"] = {"num_inference_steps": 7, "attention_guidance_scale": 0.25}
    (folder / "model_index.json").write_text(json.dumps(index))
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
    (tmp_path / "model_index.json").write_text(json.dumps({"removal_defaults": {"attention_guidance_scal": 0.1}}))
    with pytest.raises(ValueError, match="attention_guidance_scal"):
        read_removal_defaults(tmp_path)


@pytest.mark.parametrize("key", ["output_type", "return_dict", "image", "generator"])
def test_a_setting_that_cannot_be_a_default_is_refused_at_load_naming_it(sd_folder, key):
    with pytest.raises(ValueError, match=key):
        MagicRemoverPipeline.from_pretrained(sd_folder, safety_checker=None, removal_defaults={key: None})


def test_a_folder_with_the_old_side_file_still_loads_with_a_one_line_notice(sd_folder, tmp_path, caplog):
    import shutil

    from diffusers.utils import logging as diffusers_logging

    folder = tmp_path / "old"
    shutil.copytree(sd_folder, folder)
    (folder / "magic_remover_defaults.json").write_text(json.dumps({"num_inference_steps": 7}))
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            pipe = MagicRemoverPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    finally:
        diffusers_logging.disable_propagation()
    assert pipe.removal_defaults == {"num_inference_steps": 7}
    notices = [r.getMessage() for r in caplog.records if "magic_remover_defaults.json" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    pipe.save_pretrained(tmp_path / "resaved")  # written the new way
    assert json.loads((tmp_path / "resaved" / "model_index.json").read_text())["removal_defaults"] == {"num_inference_steps": 7}
    assert not (tmp_path / "resaved" / "magic_remover_defaults.json").exists()


def test_embedded_model_calls_use_its_tuned_settings():
    index = json.loads((__import__("pathlib").Path(EMBEDDED_MODEL) / "model_index.json").read_text())
    shipped = index["removal_defaults"]
    assert shipped["num_inference_steps"] == 20
    pipe = MagicRemoverPipeline.from_pretrained(EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False)
    assert pipe.removal_defaults == shipped
    pipe.removal_defaults = {}
    assert pipe.removal_defaults == {}
    with pytest.raises(ValueError, match="no_such"):
        pipe.removal_defaults = {"no_such": 1}
