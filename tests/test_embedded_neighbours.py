"""On the embedded model with its shipped settings, removal keeps the neighbours' pixels (issue 13)."""

from pathlib import Path

import pytest
import torch
from scipy import ndimage

import magic_remover
from magic_remover.images import psnr
from magic_remover.scenes import make_scene

#: (kind, seed): scenes outside the benchmark's and the tuning's seeds where the shipped protect_cutoff and
#: attention_mask_components keep the neighbour; on two of them the soft protection alone does not (the last test)
SCENES = [("opaque", 60003), ("shadow", 60003), ("transparent", 60002), ("transparent", 60003)]
SOFT_PROTECTION_LOSES = [("opaque", 60003), ("transparent", 60003)]
NEIGHBOUR_PSNR_DB = 35.0


@pytest.fixture(scope="module")
def embedded():
    if not (Path(magic_remover.EMBEDDED_MODEL) / "model_index.json").is_file():
        pytest.skip("the embedded model has not been trained into this checkout")
    pipe = magic_remover.MagicRemoverPipeline.from_pretrained(
        magic_remover.EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _neighbour_psnr(pipe, kind, seed, **kwargs) -> float:
    """PSNR against the input over the neighbour's pixels that lie away from the target (3 px beyond its region)."""
    torch.set_num_threads(1)
    scene = make_scene(seed, size=64, num_objects=2, kind=kind)
    target, neighbour = scene.objects
    word = f"{target.color} {target.shape}" if neighbour.shape == target.shape else target.shape
    result = pipe(image=scene.image, prompt=scene.caption, target=word, **kwargs).images[0]
    visible = neighbour.mask & ~ndimage.binary_dilation(target.mask | target.shadow_mask, iterations=3)
    assert visible.sum() > 40
    return psnr(result, scene.image, visible)


@pytest.mark.parametrize("kind, seed", SCENES)
def test_the_region_settings_keep_the_neighbours_visible_pixels(embedded, kind, seed):
    """What issue 13's region settings do, with the fill prompt (issue 23) off: it costs the neighbour of
    ("transparent", 60002) 2.6 dB (32.4 dB with it: its edge by the target is faded), as the removal benchmark's
    neighbour-damaged rate shows (7% -> 9%)."""
    assert _neighbour_psnr(embedded, kind, seed, fill_prompt=None) >= NEIGHBOUR_PSNR_DB


@pytest.mark.parametrize("kind, seed", [scene for scene in SCENES if scene != ("transparent", 60002)])
def test_with_every_shipped_setting_the_neighbours_visible_pixels_stay_as_they_were(embedded, kind, seed):
    assert _neighbour_psnr(embedded, kind, seed) >= NEIGHBOUR_PSNR_DB


@pytest.mark.parametrize("kind, seed", SOFT_PROTECTION_LOSES)
def test_without_the_region_settings_the_neighbour_is_damaged_there(embedded, kind, seed):
    """What the two settings buy on those scenes: with the soft lowering alone the same bar fails."""
    softly = _neighbour_psnr(embedded, kind, seed, protect_cutoff=None, attention_mask_components=None, fill_prompt=None)
    assert softly < NEIGHBOUR_PSNR_DB
