"""The shift pre-fill inside a call: a batch of images with one mask, and the shared components left as found."""

import torch
from conftest import assert_same_state, quick_removal, snapshot
from tiny_components import make_test_image


def test_a_batch_with_one_mask_is_prefilled_image_by_image_and_leaves_the_components_as_found(pipe):
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    before = snapshot(pipe)
    images = quick_removal(pipe, image=[make_test_image(), make_test_image()], prompt=["a ball", "a ball"],
                           mask_image=mask, content_initialization="shift")  # fmt: skip
    assert images.shape[0] == 2
    torch.testing.assert_close(images[0], images[1])  # the same image and mask: the same removal
    assert_same_state(before, snapshot(pipe))
