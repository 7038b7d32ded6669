"""Tests for the synthetic scene generator (ground truth for object removal)."""

import numpy as np
import pytest
from PIL import Image

from magic_remover.scenes import (
    BACKGROUNDS,
    COLOR_NAMES,
    KINDS,
    SHAPES,
    VOCABULARY,
    caption_without,
    composite,
    make_scene,
)

SEEDS = list(range(40))


def _f(img):
    return np.asarray(img, dtype=np.float32) / 255.0


def _recomposite(background_u8, objects):
    """Composite from the *quantised* background and each object's alpha and shadow."""
    canvas = _f(background_u8)
    for o in objects:
        canvas = canvas * (1.0 - o.shadow)[..., None]
        a = o.alpha[..., None]
        canvas = canvas * (1.0 - a) + o.rgb[None, None, :] * a
    return canvas


@pytest.mark.parametrize("seed", [0, 1, 12345, 1_000_003])
def test_deterministic_per_seed(seed):
    a, b = make_scene(seed), make_scene(seed)
    assert a.caption == b.caption
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(np.asarray(a.background), np.asarray(b.background))
    assert len(a.objects) == len(b.objects)
    for oa, ob in zip(a.objects, b.objects):
        assert np.array_equal(oa.alpha, ob.alpha)
        assert np.array_equal(oa.shadow_mask, ob.shadow_mask)
        assert np.array_equal(np.asarray(oa.without), np.asarray(ob.without))


def test_different_seeds_differ():
    imgs = {np.asarray(make_scene(s).image).tobytes() for s in range(10)}
    assert len(imgs) == 10


@pytest.mark.parametrize("size", [64, 96])
def test_types_and_shapes(size):
    s = make_scene(3, size=size)
    assert isinstance(s.image, Image.Image) and s.image.mode == "RGB"
    assert isinstance(s.background, Image.Image) and s.background.mode == "RGB"
    assert s.image.size == s.background.size == (size, size)
    assert 1 <= len(s.objects) <= 3
    for o in s.objects:
        assert o.shape in SHAPES and o.color in COLOR_NAMES
        assert o.mask.shape == o.alpha.shape == o.shadow_mask.shape == (size, size)
        assert o.mask.dtype == bool and o.shadow_mask.dtype == bool
        assert o.alpha.dtype.kind == "f" and 0.0 <= o.alpha.min() and o.alpha.max() <= 1.0
        assert isinstance(o.transparent, bool)
        w = o.without
        assert isinstance(w, Image.Image) and w.size == (size, size) and w.mode == "RGB"


@pytest.mark.parametrize("seed", SEEDS)
def test_ground_truth_compositing(seed):
    s = make_scene(seed)
    img = _f(s.image)
    # exact float pipeline: quantise(composite(background_float)) == image
    assert np.array_equal(np.asarray(s.image), np.clip(np.rint(composite(s.background_float, s.objects) * 255), 0, 255).astype(np.uint8))
    # from the quantised background: equal within quantisation error
    rec = _recomposite(s.background, s.objects)
    assert np.abs(rec - img).max() <= 1.5 / 255
    # outside every object/shadow the image *is* the background
    outside = ~s.mask
    assert np.array_equal(np.asarray(s.image)[outside], np.asarray(s.background)[outside])
    # removing every object gives the background
    assert np.array_equal(np.asarray(s.without(range(len(s.objects)))), np.asarray(s.background))


@pytest.mark.parametrize("seed", SEEDS)
def test_without_differs_only_in_object_region(seed):
    s = make_scene(seed)
    img = np.asarray(s.image)
    for i, o in enumerate(s.objects):
        w = np.asarray(o.without)
        diff = np.any(w != img, axis=-1)
        region = o.mask | o.shadow_mask
        assert not np.any(diff & ~region), f"object {i} changes pixels outside its mask/shadow"
        # equals a recomposite of all other objects from the background
        others = [p for j, p in enumerate(s.objects) if j != i]
        rec = _recomposite(s.background, others)
        assert np.abs(rec - _f(w)).max() <= 1.5 / 255
        # the object is actually visible somewhere (it is not fully occluded / invisible)
        assert diff.sum() > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_caption_mentions_everything(seed):
    s = make_scene(seed)
    cap = s.caption
    words = cap.split()
    assert set(words) <= set(VOCABULARY)
    assert cap.endswith(f"{s.background_kind} background")
    assert s.background_kind in BACKGROUNDS
    for o in s.objects:
        assert f"{o.color} {o.shape}" in cap
        if o.transparent:
            assert f"transparent {o.color} {o.shape}" in cap


def test_caption_without():
    s = make_scene(5, num_objects=3)
    phrases, background = s.caption.split(" on a ")  # "a red star and a blue circle and ... on a grass background"
    phrases = phrases.split(" and ")
    assert len(phrases) == 3 and background == f"{s.background_kind} background"
    for i, o in enumerate(s.objects):
        c = caption_without(s, i)
        # the caption with exactly that object's phrase taken out, the others in their order
        assert c == " and ".join(phrases[:i] + phrases[i + 1 :]) + f" on a {background}"
        assert f"{o.color} {o.shape}" not in c
        assert s.caption_without(i) == c  # the method is the function
    assert caption_without(s, [0, 2]) == f"{phrases[1]} on a {background}"
    single = make_scene(5, num_objects=1)
    assert caption_without(single, 0) == f"a {single.background_kind} background"
    empty = make_scene(5, num_objects=0)
    assert empty.objects == [] and empty.caption == f"a {empty.background_kind} background"
    assert np.array_equal(np.asarray(empty.image), np.asarray(empty.background))


@pytest.mark.parametrize("seed", range(20))
def test_transparent_objects(seed):
    s = make_scene(seed, kind="transparent")
    assert s.objects
    for o in s.objects:
        assert o.transparent
        a = o.alpha[o.mask]
        assert 0.3 - 1e-6 <= a.max() <= 0.7 + 1e-6
        assert 0.3 - 1e-6 <= o.opacity <= 0.7 + 1e-6
        assert not o.shadow_mask.any()
        # the background shows through: where this object alone covers a pixel fully, the image is
        # (1 - opacity) * background + opacity * colour, neither the object's colour nor the background
        covered_by_others = np.zeros_like(o.mask)
        for p in s.objects:
            if p is not o:
                covered_by_others |= p.mask
        interior = (o.alpha >= o.opacity - 1e-6) & ~covered_by_others
        assert interior.sum() > 50
        image, background = s.image_float[interior], s.background_float[interior]
        np.testing.assert_allclose(image, (1 - o.opacity) * background + o.opacity * o.rgb, atol=1e-5)
        contrast = np.abs(background - o.rgb).max(-1) > 0.1
        assert contrast.any()
        assert np.all(np.abs(image - o.rgb).max(-1)[contrast] > 0.02)
        assert np.all(np.abs(image - background).max(-1)[contrast] > 0.02)


@pytest.mark.parametrize("seed", range(20))
def test_shadow_and_opaque_kinds(seed):
    s = make_scene(seed, kind="shadow")
    for o in s.objects:
        assert not o.transparent and o.shadow_mask.any() and o.alpha.max() == 1.0
    o = make_scene(seed, kind="opaque")
    for ob in o.objects:
        assert not ob.transparent and not ob.shadow_mask.any() and ob.alpha.max() == 1.0


def test_shadow_darkens():
    s = make_scene(11, kind="shadow", num_objects=1)
    o = s.objects[0]
    only_shadow = o.shadow_mask & ~o.mask
    assert only_shadow.sum() > 10
    img, bg = _f(s.image), _f(s.background)
    assert np.all(img[only_shadow] <= bg[only_shadow] + 1e-6)
    assert (bg[only_shadow] - img[only_shadow]).max() > 0.1


def test_variety_and_sizes():
    scenes = [make_scene(s) for s in range(300)]
    assert {sc.background_kind for sc in scenes} == set(BACKGROUNDS)
    objs = [o for sc in scenes for o in sc.objects]
    assert {o.shape for o in objs} == set(SHAPES)
    assert {o.color for o in objs} == set(COLOR_NAMES)
    assert len(SHAPES) >= 4 and len(COLOR_NAMES) >= 6
    assert any(o.transparent for o in objs) and any(o.shadow_mask.any() for o in objs)
    assert any(len(sc.objects) == n for sc in scenes for n in (1, 2, 3))
    for o in objs:
        assert 14 <= o.size <= 30
    # objects are big enough for a 16x16 latent to see them
    assert np.median([o.mask.sum() for o in objs]) > 120


def test_forced_options():
    s = make_scene(2, num_objects=2, background="grass", shapes=["star"], colors=["red", "blue"], kind="opaque")
    assert s.background_kind == "grass"
    assert [(o.color, o.shape) for o in s.objects] == [("red", "star"), ("blue", "star")]
    assert s.caption == "a red star and a blue star on a grass background"
    with pytest.raises(ValueError):
        make_scene(0, kind="nope")
    assert set(KINDS) >= {"opaque", "shadow", "transparent"}


def test_vocabulary_covers_captions():
    vocab = set(VOCABULARY)
    assert len(VOCABULARY) == len(vocab)
    for seed in range(200):
        assert set(make_scene(seed).caption.split()) <= vocab
