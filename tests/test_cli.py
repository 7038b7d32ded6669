"""The magic-remover command: end to end, and its refusals."""

import os
import re
from pathlib import Path

import pytest
from PIL import Image
from tiny_components import make_test_image

import magic_remover
from magic_remover.cli import main, write_image_atomically

HAS_EMBEDDED = (Path(magic_remover.EMBEDDED_MODEL) / "model_index.json").is_file()
PROMPT = "a photo of a red ball on the grass"


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    make_test_image((32, 32)).save(path)
    return path


def _remove(photo, out, model, *extra):
    return main(["remove", str(photo), "--prompt", PROMPT, "--target", "ball", "-o", str(out), "--model", model,
                 "--steps", "3", *extra])  # fmt: skip


def test_remove_writes_result_and_mask_atomically(tmp_path, photo, tiny_model):
    out, mask = tmp_path / "out.png", tmp_path / "mask.png"
    assert _remove(photo, out, tiny_model, "--save-mask", str(mask)) == 0
    assert Image.open(out).size == (32, 32) and Image.open(mask).mode == "L"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "out.png", "photo.png"]  # no temporaries left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_a_save_that_fails_midway_leaves_the_existing_file_intact_and_no_temporary(tmp_path):
    existing = tmp_path / "result.png"
    make_test_image((8, 8)).save(existing)
    before = existing.read_bytes()
    image = make_test_image((32, 32))

    def save_half_then_fail(target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"\x89PNG half a file")
        raise OSError("disk full")

    image.save = save_half_then_fail
    with pytest.raises(OSError, match="disk full"):
        write_image_atomically(image, existing, force=True, protected=[])
    assert existing.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]
    del image.save  # the real save: the same call now replaces the file
    write_image_atomically(image, existing, force=True, protected=[])
    assert Image.open(existing).size == (32, 32) and [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_remove_refuses_to_overwrite(tmp_path, photo, tiny_model, capsys):
    before = photo.read_bytes()
    assert _remove(photo, photo, tiny_model, "--force") == 2
    assert "it is the input" in capsys.readouterr().err and photo.read_bytes() == before
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"keep me")
    assert _remove(photo, existing, tiny_model) == 2
    assert "--force" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    assert _remove(photo, existing, tiny_model, "--force") == 0
    assert Image.open(existing).size == (32, 32)


def test_remove_explains_a_target_not_in_the_prompt(tmp_path, photo, tiny_model, capsys):
    code = main(["remove", str(photo), "--prompt", PROMPT, "--target", "dog", "-o", str(tmp_path / "o.png"),
                 "--model", tiny_model, "--steps", "2"])  # fmt: skip
    assert code == 2 and "'dog' does not occur" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_remove_explains_a_model_that_cannot_be_found_offline(tmp_path, photo, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["remove", str(photo), "--prompt", PROMPT, "--target", "ball", "-o", str(tmp_path / "o.png"),
                 "--model", "nobody/no-such-model"])  # fmt: skip
    assert code == 2 and "Cannot load the model 'nobody/no-such-model'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,flag", [(["demo", "--steps", "0"], "--steps"), (["demo", "--objects", "7"], "--objects"),
                                       (["demo", "--seed", "-1"], "--seed"), (["demo", "--threads", "x"], "--threads")])
def test_bad_numbers_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_remove_explains_a_missing_input(tmp_path, capsys):
    assert main(["remove", str(tmp_path / "nope.png"), "--prompt", PROMPT, "--target", "ball", "-o",
                 str(tmp_path / "o.png")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded model has not been trained into this checkout")
def test_demo_runs_on_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "-o", str(out), "--steps", "6", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "removed: the" in printed and "PSNR" in printed
    verdict = re.search(r"^judge \(.*\): (clean removal|not clean: .+)$", printed, re.MULTILINE)
    assert verdict, printed  # the judge's verdict on the scene, in the figure's title too
    assert Image.open(out).size[0] > 4 * 64 and Image.open(out).size[1] >= 4 * 64 + 3 * 16  # two title lines and the labels


@pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded model has not been trained into this checkout")
def test_remove_runs_on_the_embedded_model(tmp_path):
    from magic_remover.scenes import make_scene

    scene = make_scene(5, size=64, num_objects=1)
    scene.image.save(tmp_path / "scene.png")
    out = tmp_path / "out.png"
    code = main(["remove", str(tmp_path / "scene.png"), "--prompt", scene.caption, "--target",
                 scene.objects[0].shape, "-o", str(out), "--steps", "4"])  # fmt: skip
    assert code == 0 and Image.open(out).size == (64, 64)
