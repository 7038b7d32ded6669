"""On the embedded model with its shipped settings, removal keeps the neighbours' pixels (issue 13)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import magic_remover
from magic_remover.scenes import make_scene

#: (kind, seed): scenes outside the benchmark's and the tuning's seeds where the soft protection alone lost pixels of
#: the neighbour (26, 51, 36 and 32 dB) and the shipped protect_cutoff and attention_mask_components keep them
SCENES = [("opaque", 60003), ("shadow", 60003), ("transparent", 60002), ("transparent", 60003)]
NEIGHBOUR_PSNR_DB = 35.0


def _psnr(result, reference, region) -> float:
    difference = np.asarray(result, np.float64)[region] - np.asarray(reference, np.float64)[region]
    return float(10 * np.log10(255.0**2 / max((difference**2).mean(), 1e-10)))


@pytest.fixture(scope="module")
def embedded():
    if not (Path(magic_remover.EMBEDDED_MODEL) / "model_index.json").is_file():
        pytest.skip("the embedded model has not been trained into this checkout")
    pipe = magic_remover.MagicRemoverPipeline.from_pretrained(
        magic_remover.EMBEDDED_MODEL, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind, seed", SCENES)
def test_the_neighbours_visible_pixels_stay_as_they_were(embedded, kind, seed):
    torch.set_num_threads(1)
    scene = make_scene(seed, size=64, num_objects=2, kind=kind)
    target, neighbour = scene.objects
    word = f"{target.color} {target.shape}" if neighbour.shape == target.shape else target.shape
    result = embedded(image=scene.image, prompt=scene.caption, target=word).images[0]
    visible = neighbour.mask & ~ndimage.binary_dilation(target.mask | target.shadow_mask, iterations=3)
    assert visible.sum() > 40
    assert _psnr(result, scene.image, visible) >= NEIGHBOUR_PSNR_DB
