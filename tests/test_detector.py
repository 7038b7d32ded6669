"""Fast checks of the classical shape-and-colour detector (magic_remover/detector.py) and of the benchmark script."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from magic_remover import detector as det  # noqa: E402
from magic_remover.scenes import make_scene  # noqa: E402

MODEL_DIR = os.environ.get("MAGIC_REMOVER_TINY_MODEL") or os.path.join(ROOT, "magic_remover", "models", "tiny-shapes")

# held-out seeds (< 100000); scenes with fully visible objects
OPAQUE_SEEDS = [10002, 10004, 10010, 10012, 10013]


def _visible(scene, i):
    o = scene.objects[i]
    cover = np.ones_like(o.alpha)
    for later in scene.objects[i + 1 :]:
        cover = cover * (1 - later.alpha)
    return float((o.alpha * cover).sum() / o.alpha.sum())


@pytest.mark.parametrize("seed", OPAQUE_SEEDS)
@pytest.mark.parametrize("kind", ["opaque", "shadow"])
def test_finds_every_object_and_nothing_else(seed, kind):
    scene = make_scene(seed, kind=kind)
    pairs = det.detect_pairs(scene.image)
    true = {(o.shape, o.color) for o in scene.objects}
    for i, o in enumerate(scene.objects):
        if _visible(scene, i) >= 0.7:
            assert (o.shape, o.color) in pairs, (seed, kind, scene.caption, pairs)
    assert pairs <= true, (seed, kind, scene.caption, pairs - true)


@pytest.mark.parametrize("seed", [10002, 10004, 10044, 10045])
def test_finds_transparent_objects_on_simple_backgrounds(seed):
    scene = make_scene(seed, kind="transparent", num_objects=1, background="plain")
    o = scene.objects[0]
    assert det.finds(scene.image, o.shape, o.color), scene.caption


@pytest.mark.parametrize("seed", OPAQUE_SEEDS)
def test_removed_object_is_not_found(seed):
    scene = make_scene(seed, kind="opaque")
    for i, o in enumerate(scene.objects):
        assert not det.finds(scene.without(i), o.shape, o.color), (seed, scene.caption, i)


def test_background_alone_gives_no_detections():
    for seed, bg in [(10000, "sky"), (10001, "grass"), (10002, "plain"), (10003, "striped"), (10004, "checkered")]:
        scene = make_scene(seed, num_objects=0, background=bg)
        assert det.detect(scene.image) == [], bg


def test_input_types_and_validation():
    scene = make_scene(10002, kind="opaque")
    o = scene.objects[0]
    arr8 = scene.image_array
    assert det.finds(arr8, o.shape, o.color)
    assert det.finds(arr8.astype(np.float32) / 255.0, o.shape, o.color)
    d = det.detect(scene.image)[0]
    assert d.pair == (o.shape, o.color) and 0 < d.score <= 1 and d.mask.shape == (64, 64)
    with pytest.raises(ValueError):
        det.finds(arr8, "hexagon", "red")
    with pytest.raises(ValueError):
        det.finds(arr8, "circle", "teal")


def test_validate_helper_small():
    r = det.validate(range(10000, 10006), kind="opaque")
    n, k = r["objects"]["all"]
    assert n > 0 and k >= n - 1


@pytest.mark.skipif(
    not os.path.exists(os.path.join(MODEL_DIR, "model_index.json")),
    reason=f"embedded model not exported yet ({MODEL_DIR} has no model_index.json)",
)
def test_benchmark_quick_runs_end_to_end(tmp_path):
    from benchmarks import embedded_model

    out = tmp_path / "bench.md"
    res = embedded_model.main(["--quick", "--scenes", "4", "--model", MODEL_DIR, "--out", str(out)])
    text = out.read_text()
    for key in ("detector", "ae", "t2i", "attention"):
        assert key in res
    assert "PSNR" in text and "Attention localisation" in text and "Command:" in text and "Machine:" in text
    assert res["ae"]["psnr"] >= 26.0  # test_embedded_model.py's bar for the shipped autoencoder
    attention = res["attention"]
    # the map finds the object: its top-N region (N = the object's area) overlaps the object far better than a
    # centred disc of that area does (measured 0.76 against 0.02 here), and the top-20% IoU respects its bound
    assert attention["iou_topA"] > attention["base_topA"] + 0.3, attention
    assert attention["iou_top20"] <= attention["iou_top20_max"] + 1e-9 and attention["hit"] >= 0.5, attention


@pytest.mark.parametrize("background", ["striped", "checkered"])
def test_patterned_background_is_fitted_from_the_image(background):
    for seed in range(10000, 10006):
        scene = make_scene(seed, num_objects=2, kind="opaque", background=background)
        fit = det._fit_pattern_background(det.to_float_image(scene.image))
        assert fit is not None, (seed, background)
        truth = scene.background_float
        err = np.abs(fit[0] - truth).max(-1)
        # the pattern's edges (where the true background changes by a lot between neighbours) may be off by a
        # sub-pixel phase; everywhere else the fitted background must be the true one
        edge = np.zeros(err.shape, bool)
        step_y = np.abs(np.diff(truth, axis=0)).max(-1) > 0.1
        step_x = np.abs(np.diff(truth, axis=1)).max(-1) > 0.1
        edge[1:] |= step_y
        edge[:-1] |= step_y
        edge[:, 1:] |= step_x
        edge[:, :-1] |= step_x
        free = ~edge  # and no object (or shadow) on it
        for o in scene.objects:
            free &= ~o.region
        assert err[free].mean() < 0.01 and (err[free] > 0.06).mean() < 0.01, (seed, background, err[free].mean())
        assert err[~edge].mean() < 0.02, (seed, background)  # under the objects too: the pattern goes on beneath


@pytest.mark.parametrize("background", ["sky", "grass", "plain"])
def test_smooth_backgrounds_are_not_taken_for_patterns(background):
    for seed in range(10000, 10006):
        scene = make_scene(seed, background=background)
        assert det._fit_pattern_background(det.to_float_image(scene.image)) is None, (seed, background)


def test_semi_transparent_objects_on_patterned_backgrounds():
    # one opacity per object over a known background: the detector before the pattern fit found 17 of these 24
    found = 0
    for background in ("striped", "checkered"):
        for seed in range(10000, 10012):
            scene = make_scene(seed, kind="transparent", num_objects=1, background=background)
            o = scene.objects[0]
            found += det.finds(scene.image, o.shape, o.color)
    assert found >= 20, found


def test_command_line_validation(capsys):
    r = det.main(["--seed0", "10000", "--scenes", "3", "--failures"])
    out = capsys.readouterr().out
    n, found = r["objects"]["all"]
    assert "seeds 10000..10002" in out and f"{found:4d}/{n:<4d}" in out and "false positives" in out


@pytest.mark.parametrize("argv, named", [(["--scenes", "0"], "--scenes"), (["--seed0", "-5"], "--seed0")])
def test_command_line_refuses_empty_or_negative_ranges(argv, named, capsys):
    with pytest.raises(SystemExit):
        det.main(argv)
    assert named in capsys.readouterr().err
