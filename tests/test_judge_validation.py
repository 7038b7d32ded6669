"""The judge's validation by eye (benchmarks/judge_validation.py): how two labellers' labels are compared, and the
measure that shows why the faintest ghosts are not caught."""

import numpy as np

from benchmarks.judge_validation import eyes_agreement, footprint_offset
from benchmarks.removal import METHODS
from magic_remover.scenes import make_scene


def entry(strip_id, classes):
    return {"id": strip_id, "seed": 20000 + strip_id, "method": METHODS[0], "classes": classes}


def test_eyes_agreement_counts_strips_and_success_separately():
    first = [entry(1, []), entry(2, ["replaced"]), entry(3, ["replaced", "neighbour_damaged"]), entry(4, [])]
    second = [entry(1, []), entry(2, ["replaced"]), entry(3, ["replaced"])]  # strip 4: labelled once only
    verdicts = {1: set(), 2: set(), 3: {"replaced"}, 4: set()}
    text = "\n".join(eyes_agreement(first, second, verdicts))
    assert "First labeller against second: 2 of 3 (67%) on all four classes, 3 of 3 (100%) on success" in text
    assert "Judge against the first labeller: 1 of 3 (33%) on all four classes, 2 of 3 (67%) on success" in text
    assert "Judge against the second labeller: 2 of 3 (67%) on all four classes, 2 of 3 (67%) on success" in text
    assert "| 3 |" in text and "| 2 |" not in text  # only the strips the two labellers differ on are listed


def test_eyes_agreement_without_common_strips_says_nothing():
    assert eyes_agreement([entry(1, [])], [entry(2, [])], {1: set()}) == []


def test_footprint_offset_sees_a_faint_ghost_and_not_zero_mean_texture():
    scene = make_scene(3, size=64, num_objects=2, kind="opaque")
    target = scene.objects[0]
    truth = np.asarray(target.without.convert("RGB"), np.float64)
    footprint = target.mask
    assert footprint.sum() > 20
    assert footprint_offset(truth.astype(np.uint8), scene, 0) < 0.003

    ghost = truth.copy()
    ghost[footprint] += 0.05 * 255  # a pale ghost of the target's shape, 0.05 over the truth
    assert abs(footprint_offset(np.clip(ghost, 0, 255).round().astype(np.uint8), scene, 0) - 0.05) < 0.01

    texture = truth.copy()
    checks = (np.indices(footprint.shape).sum(axis=0) % 2 * 2 - 1)[..., None]  # +1 / -1, a checkerboard
    texture += np.where(footprint[..., None], 0.1 * 255 * checks, 0)  # strong, but averaging to nothing
    assert footprint_offset(np.clip(texture, 0, 255).round().astype(np.uint8), scene, 0) < 0.02


def test_pages_ids_must_be_a_range():
    import argparse

    import pytest

    from benchmarks.judge_validation import id_range

    assert id_range("136-200") == (136, 200)
    for bad in ("136", "200-136", "a-b", "1-2-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="--ids"):
            id_range(bad)
