"""The removal benchmark's metrics on cases with known answers."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.metrics import UNetPassCounter, dilate, psnr, removal_outcome, removal_success, score  # noqa: E402
from magic_remover.scenes import make_scene  # noqa: E402


def test_psnr_of_identical_images_is_infinite_and_of_a_known_shift_is_exact():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    shifted = a + np.uint8(10)  # an error of 10/255 everywhere
    assert psnr(shifted, a) == pytest.approx(20 * math.log10(255 / 10), abs=1e-9)
    region = np.zeros((8, 8), bool)
    region[:2] = True
    half = a.copy()
    half[:2] += 10
    assert psnr(half, a, region) == pytest.approx(20 * math.log10(255 / 10), abs=1e-9)
    assert psnr(half, a, ~region) == math.inf
    with pytest.raises(ValueError):
        psnr(a, np.zeros((4, 4, 3), np.uint8))


def test_dilate_grows_a_pixel_into_a_diamond():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    assert dilate(mask, 2).sum() == 13 and dilate(mask, 0).sum() == 1


def _fake_detector(present):
    return lambda image, shape, color: (shape, color) in present


def test_an_object_left_in_place_is_a_failure_and_a_lost_neighbour_too():
    scene = make_scene(20001, size=64, num_objects=2, kind="opaque")
    target, other = scene.objects
    pairs = {(o.shape, o.color) for o in scene.objects}
    assert not removal_success(scene.image, target, [other], _fake_detector(pairs))  # nothing removed
    assert not removal_success(scene.image, target, [other], _fake_detector(set()))  # neighbour removed too
    assert removal_success(scene.image, target, [other], _fake_detector({(other.shape, other.color)}))


def test_the_outcome_says_which_way_a_removal_failed():
    scene = make_scene(20001, size=64, num_objects=2, kind="opaque")
    target, other = scene.objects
    both, neither = {(o.shape, o.color) for o in scene.objects}, set()
    only_target = {(target.shape, target.color)}
    outcomes = {
        name: removal_outcome(scene.image, target, [other], _fake_detector(present))
        for name, present in [("both", both), ("neither", neither), ("only target", only_target)]
    }
    assert outcomes["both"] == {"success": False, "target_left": True, "others_lost": False}
    assert outcomes["neither"] == {"success": False, "target_left": False, "others_lost": True}
    assert outcomes["only target"] == {"success": False, "target_left": True, "others_lost": True}


def test_score_of_the_ground_truth_is_perfect_inside_and_the_input_is_not():
    scene = make_scene(20002, size=64, num_objects=2, kind="shadow")
    target, other = scene.objects
    detector = _fake_detector({(other.shape, other.color)})
    perfect = score(target.without, scene, 0, detector)
    assert perfect["success"] and not perfect["target_left"] and not perfect["others_lost"]
    assert perfect["fill_psnr"] == math.inf and perfect["image_psnr"] == math.inf
    untouched = score(scene.image, scene, 0, _fake_detector({(o.shape, o.color) for o in scene.objects}))
    assert not untouched["success"] and untouched["fill_psnr"] < 30 and untouched["background_psnr"] == math.inf


def test_unet_pass_counter_counts_forward_and_backward():
    net = torch.nn.Linear(3, 3)
    with UNetPassCounter(net) as counter:
        x = torch.randn(2, 3, requires_grad=True)
        torch.autograd.grad(net(x).sum(), x)
        with torch.no_grad():
            net(x[:1])
    assert (counter.forward, counter.backward) == (2, 1)
    assert (counter.forward_rows, counter.backward_rows) == (3, 2)
    assert torch.autograd.grad is counter._grad  # restored on exit


def test_failure_attention_shares_and_outcome_labels():
    from benchmarks.failure_attention import map_shares, outcome
    from benchmarks.metrics import target_region

    scene = make_scene(7, size=64, num_objects=2, kind="opaque")
    target = target_region(scene.objects[0])
    neighbour = scene.objects[1].mask & ~target
    assert neighbour.any()
    on_target = target.astype(float)  # a map that lies exactly on the target: nothing on the neighbour
    shares = map_shares(on_target, target, scene, 0)
    assert shares["map_on_target"] == pytest.approx(1.0) and shares["map_on_neighbour"] == 0.0
    assert shares["region_on_neighbour"] == 0.0
    spilled = on_target + neighbour  # as much mass per pixel on the neighbour: its share is its pixel count's
    shares = map_shares(spilled, target | neighbour, scene, 0)
    assert shares["map_on_neighbour"] == pytest.approx(neighbour.sum() / (target.sum() + neighbour.sum()))
    assert shares["region_on_neighbour"] == pytest.approx(1.0)
    assert outcome({"success": True, "target_left": False, "others_lost": False}) == "success"
    assert outcome({"success": False, "target_left": True, "others_lost": True}) == "target left"
    assert outcome({"success": False, "target_left": False, "others_lost": True}) == "neighbour lost"


def test_the_result_cache_keeps_each_scene_resumes_and_refuses_other_settings(tmp_path):
    from benchmarks.removal import METHODS, ResultCache

    cache = ResultCache(tmp_path, METHODS[11], fingerprint='{"steps": 20}')
    assert cache.load() == {}
    first = np.full((64, 64, 3), 7, np.uint8)
    cache.add(20001, first, {"seconds": 1.5, "forward": 68})
    cache.add(20002, first + 1, {"seconds": 2.0})
    again = ResultCache(tmp_path, METHODS[11], fingerprint='{"steps": 20}').load()  # a later run reads both back
    assert sorted(again) == [20001, 20002] and np.array_equal(again[20002][0], first + 1)
    assert again[20001][1]["seconds"] == 1.5 and again[20001][1]["forward"] == 68
    assert not list(tmp_path.glob("*.partial.npz"))
    with pytest.raises(RuntimeError, match="other settings"):
        ResultCache(tmp_path, METHODS[11], fingerprint='{"steps": 50}').load()
    assert sorted(ResultCache(tmp_path, METHODS[11], fingerprint=None).load()) == [20001, 20002]
