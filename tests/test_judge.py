"""The removal judge on constructed results whose right verdict is known."""

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import magic_remover.judge as judge_module  # noqa: E402
from magic_remover.judge import FAILURES, judge, strip  # noqa: E402
from magic_remover.scenes import composite, make_scene, quantize  # noqa: E402


def _scene(kind="opaque"):
    scene = make_scene(50004, size=64, num_objects=2, kind=kind)  # a tuning seed: striped mid-tone background
    assert not (scene.objects[0].region & scene.objects[1].mask).any()  # the target's region is clear of the neighbour
    return scene


def _failures(verdict):
    return {name for name in FAILURES if verdict[name]}


def _truth(scene):
    return np.asarray(scene.objects[0].without).copy()


def _recoloured(scene):
    """The truth with the target's pixels shifted in hue (red up, green down by as much: the same grey level)."""
    result = _truth(scene).astype(int)
    mask = scene.objects[0].mask
    result[mask, 0] += 70
    result[mask, 1] -= 70
    return np.clip(result, 0, 255).astype(np.uint8)


def test_the_truth_passes_and_the_input_leaves_the_target():
    scene = _scene()
    assert judge(_truth(scene), scene, 0)["success"]
    assert _failures(judge(scene.image, scene, 0)) == {"target_left"}


def test_a_recoloured_target_is_a_replacement_not_a_success():
    scene = _scene()
    assert _failures(judge(_recoloured(scene), scene, 0)) == {"replaced"}


def test_a_new_blob_in_the_hole_is_a_replacement():
    scene = _scene()
    target = scene.objects[0]
    ys, xs = np.nonzero(target.mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    yy, xx = np.mgrid[:64, :64]
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 9) & target.mask  # a disc of radius 3 inside the hole
    result = _truth(scene)
    result[blob] = (30, 30, 200)
    assert _failures(judge(result, scene, 0)) == {"replaced"}
    # the same blob a third the size is fill noise, not an object
    small = blob & (yy <= cy - 1) & (xx <= cx)
    assert small.sum() < 12
    result = _truth(scene)
    result[small] = (30, 30, 200)
    assert judge(result, scene, 0)["success"]


def test_an_object_the_detector_finds_in_the_hole_is_a_replacement():
    scene = _scene()
    hole = scene.objects[0].mask
    assert _failures(judge(_truth(scene), scene, 0, detections=[("circle", "blue", hole)])) == {"replaced"}
    # the neighbour's own detection is no replacement, nor one lying mostly outside the region
    neighbour = scene.objects[1]
    assert judge(_truth(scene), scene, 0, detections=[(neighbour.shape, neighbour.color, neighbour.mask)])["success"]
    assert judge(_truth(scene), scene, 0, detections=[("circle", "blue", neighbour.mask)])["success"]
    # the target's own shape and colour found again: it is left
    target = scene.objects[0]
    assert judge(_truth(scene), scene, 0, detections=[(target.shape, target.color, hole)])["target_left"]


def test_a_left_shadow_is_its_own_failure():
    scene = _scene("shadow")
    target = scene.objects[0]
    assert target.shadow_mask.sum() > 100
    shadow_only = target.__class__(**{**target.__dict__, "alpha": np.zeros_like(target.alpha)})
    result = quantize(composite(scene.background_float, [shadow_only, scene.objects[1]]))
    assert _failures(judge(result, scene, 0)) == {"shadow_left"}
    assert judge(_truth(scene), scene, 0)["success"]
    assert _failures(judge(scene.image, scene, 0)) == {"target_left", "shadow_left"}


def test_a_damaged_neighbour_fails_though_the_target_is_gone():
    scene = _scene()
    neighbour = scene.objects[1]
    result = _truth(scene)
    result[neighbour.mask] = (result[neighbour.mask] * 0.6).astype(np.uint8)  # darkened, still the same shape
    assert _failures(judge(result, scene, 0)) == {"neighbour_damaged"}
    # its soft edge drawn a little differently (anti-aliasing redone: 0.05 off) is not damage; a dark outline is
    edge = neighbour.mask & ~(neighbour.alpha >= 0.99)
    result = _truth(scene)
    result[edge] = np.clip(result[edge].astype(int) + 13, 0, 255).astype(np.uint8)
    assert judge(result, scene, 0)["success"]
    result[edge] = 0
    assert _failures(judge(result, scene, 0)) == {"neighbour_damaged"}


def test_a_neighbour_grown_or_recoloured_slightly_is_damaged():
    """The eye sees a neighbour swell into the background, and a hue change too faint for the pixel tolerance."""
    scene = _scene()
    neighbour = scene.objects[1]
    target = scene.objects[0]
    away = ~ndi.binary_dilation(target.mask | target.shadow_mask, iterations=6)  # grown into the hole: also replaced
    grown = ndi.binary_dilation(neighbour.mask, iterations=2) & ~neighbour.mask & away
    result = _truth(scene)
    result[grown] = (neighbour.rgb * 255).astype(np.uint8)
    assert _failures(judge(result, scene, 0)) == {"neighbour_damaged"}
    result = _truth(scene)
    result[neighbour.mask] = np.clip(result[neighbour.mask].astype(int) + (0, 0, 20), 0, 255).astype(np.uint8)  # 0.08
    assert _failures(judge(result, scene, 0)) == {"neighbour_damaged"}


def test_a_faint_ghost_of_the_target_is_a_replacement():
    """A trace under the pixel tolerance (0.15) that the eye sees as the target's shape, and noise that it does not."""
    scene = _scene()
    target = scene.objects[0]
    result = _truth(scene).astype(int)
    result[target.mask] += 20  # 0.08 paler in the target's shape
    assert _failures(judge(np.clip(result, 0, 255).astype(np.uint8), scene, 0)) == {"replaced"}
    noise = np.random.default_rng(0).integers(-20, 21, size=result.shape)  # as strong, but pixel by pixel
    result = np.clip(_truth(scene).astype(int) + noise * target.mask[..., None], 0, 255).astype(np.uint8)
    assert judge(result, scene, 0)["success"]


def test_a_new_blob_beside_the_hole_is_a_replacement():
    scene = _scene()
    region = ndi.binary_dilation(scene.objects[0].mask | scene.objects[0].shadow_mask, iterations=8)
    others = ndi.binary_dilation(scene.objects[1].mask, iterations=4)
    free = np.argwhere(~region & ~others)
    y, x = free[len(free) // 2]
    result = _truth(scene)
    result[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = (200, 20, 200)
    assert _failures(judge(result, scene, 0)) == {"replaced"}


def test_a_judge_blind_to_colour_passes_the_recoloured_target(monkeypatch):
    """The recoloured test above depends on the judge comparing colours: a judge on grey levels lets it through."""
    scene = _scene()
    grey = judge_module._array

    monkeypatch.setattr(judge_module, "_array", lambda image: grey(image).mean(axis=2, keepdims=True).repeat(3, 2))
    assert judge(_recoloured(scene), scene, 0)["success"]


def test_bad_result_size_is_refused_and_the_strip_holds_three_enlarged_tiles():
    scene = _scene()
    with pytest.raises(ValueError, match="result must be 64x64"):
        judge(np.zeros((32, 32, 3), np.uint8), scene, 0)
    picture = strip(scene, 0, _truth(scene), scale=4)
    assert picture.size == (3 * 256 + 8, 256)
    assert np.array_equal(np.asarray(picture)[::4, :256:4], scene.image_array)


def test_a_sliver_of_the_target_is_something_left_in_its_place_and_most_of_it_is_the_target_left():
    scene = _scene()
    target = scene.objects[0]
    ys, xs = np.nonzero(target.mask)
    for rows, expected in ((ys.min() + (ys.max() - ys.min()) // 4, {"replaced"}), (ys.max() - 2, {"target_left"})):
        result = _truth(scene)
        kept = target.mask & (np.arange(64)[:, None] <= rows)  # the target's top part kept as it was
        result[kept] = scene.image_array[kept]
        assert _failures(judge(result, scene, 0)) == expected


def test_the_left_target_seen_as_another_shape_is_not_a_replacement():
    scene = _scene()
    target = scene.objects[0]
    seen_as = next(shape for shape in ("circle", "square") if shape != target.shape)
    assert _failures(judge(scene.image, scene, 0, detections=[(seen_as, target.color, target.mask)])) == {"target_left"}
