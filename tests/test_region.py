"""The automatic region's connected parts (``attention_mask_components``, ours): pure functions and the pipeline."""

import pytest
import torch
from conftest import PROMPT, make_test_image, quick_removal

import magic_remover.removal as removal_module  # where the automatic region is computed
from magic_remover.attention_processors import automatic_mask, connected_components, strongest_components


def _two_blobs():
    """A strong blob (the target) and a weaker, larger one (a look-alike neighbour) on a 10x10 map."""
    attention = torch.zeros(1, 10, 10)
    attention[0, 1:3, 1:3] = 1.0
    attention[0, 5:9, 5:9] = 0.2
    return attention


def test_connected_components_labels_8_connected_parts_apart():
    region = torch.zeros(2, 6, 6)
    region[0, 0, 0] = region[0, 1, 1] = 1  # diagonal neighbours: one part
    region[0, 4:6, 4:6] = 1
    region[1, 2, :] = 1
    labels = connected_components(region)
    assert labels[0, 0, 0] == labels[0, 1, 1] != labels[0, 4, 4]
    assert len(set(labels[0][region[0] > 0].tolist())) == 2
    assert len(set(labels[1][region[1] > 0].tolist())) == 1
    assert torch.all(labels[region == 0] == 0)


def test_the_part_with_the_most_attention_is_kept_not_the_largest():
    attention = _two_blobs()
    region = (attention > 0).float()
    kept = strongest_components(region, attention, 1)
    assert kept[0, 1:3, 1:3].sum() == 4 and kept.sum() == 4  # mass 4 against 16 * 0.2 = 3.2
    attention[0, 5:9, 5:9] = 0.5  # now the larger blob holds more (8.0 > 4.0)
    kept = strongest_components(region, attention, 1)
    assert kept[0, 5:9, 5:9].sum() == 16 and kept.sum() == 16
    torch.testing.assert_close(strongest_components(region, attention, 2), region)  # as many parts as asked: all


def test_automatic_mask_with_one_component_drops_the_second_blob():
    attention = torch.zeros(1, 10, 10)
    attention[0, 1:3, 1:3] = 1.0
    attention[0, 6:8, 6:8] = 0.3  # inside the >= 0.25 part, apart from the target
    every_part = automatic_mask(attention, 0.25)
    one_part = automatic_mask(attention, 0.25, components=1)
    assert every_part[0, 6, 6] == 1 and one_part[0, 6, 6] == 0
    assert torch.all(one_part <= every_part) and one_part[0, 1:3, 1:3].min() == 1


def _regions(pipe, monkeypatch, **kwargs):
    """Every automatic region the call makes (the per-step blend and the final one), as the pipeline computed them."""
    made = []
    original = removal_module.automatic_mask

    def recording(attention_map, threshold=None, components=None):
        region = original(attention_map, threshold, components)
        made.append(region.clone())
        return region

    monkeypatch.setattr(removal_module, "automatic_mask", recording)
    kwargs = {"target": "ball", **kwargs}
    pipe.set_progress_bar_config(disable=True)
    pipe(image=make_test_image(), prompt=PROMPT, inversion_method="ddim", num_inference_steps=3, output_type="pt",
         blend_outside_attention_mask=True, keep_input_outside_attention_mask=True, attention_guidance_scale=20.0,
         **kwargs)  # fmt: skip
    monkeypatch.undo()
    return made


def _parts(region):
    return len(set(connected_components(region.float())[0][region[0] > 0].tolist()))


def test_the_pipeline_keeps_that_many_parts_per_target(pipe, monkeypatch):
    """A high threshold splits the tiny model's region into several parts; the option keeps one per target, in
    the per-step blend and the final region alike."""
    every = _regions(pipe, monkeypatch, attention_mask_threshold=0.85)
    assert max(_parts(region) for region in every) > 2  # something to drop
    one = _regions(pipe, monkeypatch, attention_mask_threshold=0.85, attention_mask_components=1)
    assert len(one) == len(every)
    assert all(_parts(region) == 1 for region in one)
    assert all(torch.all(a <= b) for a, b in zip(one, every))
    two_targets = dict(attention_mask_threshold=0.85, target=["red", "ball"])
    every = _regions(pipe, monkeypatch, **two_targets)
    kept = _regions(pipe, monkeypatch, **two_targets, attention_mask_components=1)
    assert [_parts(region) for region in kept] == [min(_parts(region), 2) for region in every]


def test_attention_mask_components_is_checked_before_any_model_pass(pipe, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the UNet ran before `attention_mask_components` was checked")

    monkeypatch.setattr(pipe, "_unet_epsilon", no_model)
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="`attention_mask_components`"):
            quick_removal(pipe, attention_mask_components=bad, keep_input_outside_attention_mask=True,
                          output_type="pt")  # fmt: skip
