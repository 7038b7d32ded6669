"""Content initialisation: the edit branch starts from an image whose target region was pre-filled.

MagicEraser (seed 001, "content initialization", its first stage) starts removal from an image in which the object's
region was already filled by a classical inpainter, so that the diffusion model refines a plausible background
instead of having to erase the object from scratch. Here (ours, adapted to MagicRemover's two branches, no training):

1. the region is MagicRemover's automatic one (``automatic_mask`` of the target's soft map, averaged over the
   reconstruction passes made so far), or the user's ``mask_image``;
2. :func:`telea_prefill` fills it in pixel space with OpenCV's Telea inpainting (``cv2.inpaint``);
3. the filled image is encoded and brought to the edit branch's first guided timestep along the inverted trajectory's
   own noise (:func:`content_shifted_latents`), so that the edit branch leaves the reconstruction there.

No UNet pass is added: the maps come from reconstruction passes the loop makes anyway. The cost is one VAE encode and
one ``cv2.inpaint`` per image. Off by default (no evidence on Stable Diffusion); the embedded model ships it on
(``magic_remover_defaults.json``), chosen on the tuning scenes (``benchmarks/results/tuning_issue13_content_init.md``:
equal success, +2.2 dB fill with negative-prompt inversion) and ablated in ``benchmarks/results/removal.md``.
"""

from __future__ import annotations

import numpy as np
import torch

#: The pre-fill methods of ``content_initialization`` (None: off)
CONTENT_INITIALIZATIONS = (None, "telea")


def check_content_initialization(value) -> None:
    """Refuses an unknown ``content_initialization`` and says how to install OpenCV when it is missing."""
    if value not in CONTENT_INITIALIZATIONS:
        raise ValueError(f"`content_initialization` must be one of {CONTENT_INITIALIZATIONS}, got {value!r}.")
    if value == "telea":
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "`content_initialization='telea'` uses OpenCV's inpainting (a dependency of magic-remover): "
                "`pip install opencv-python-headless`."
            ) from error


def telea_prefill(pixels: torch.Tensor, region: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """``pixels`` (``[B, 3, H, W]`` in [-1, 1]) with the ``region`` (``[B, 1, H, W]`` or ``[B, H, W]``, filled where
    > 0.5) inpainted by OpenCV's Telea method; pixels outside the region are returned unchanged."""
    import cv2

    region = region if region.ndim == 4 else region.unsqueeze(1)
    images = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    holes = (region.detach().float().cpu() > 0.5).to(torch.uint8) * 255
    filled = []
    for image, hole in zip(images, holes):
        array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        result = cv2.inpaint(array, np.ascontiguousarray(hole[0].numpy()), radius, cv2.INPAINT_TELEA)
        filled.append(torch.from_numpy(result).permute(2, 0, 1))
    out = torch.stack(filled).to(pixels.device, torch.float32) / 127.5 - 1
    keep = holes.to(pixels.device) == 0
    return torch.where(keep, pixels.float(), out).to(pixels.dtype)


def content_shifted_latents(
    latents: torch.Tensor, z0: torch.Tensor, z0_filled: torch.Tensor, region: torch.Tensor, alpha_t: float
) -> torch.Tensor:
    """The latent at timestep ``t`` of the pre-filled image, on the same noise as ``latents``.

    A DDIM latent is ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps``; replacing ``z_0`` by the filled image's latent inside
    ``region`` (``[B, 1, h, w]`` at latent size) and keeping the trajectory's ``eps`` gives
    ``z_t + sqrt(a_t) * region * (z0_filled - z0)``. Outside the region the result is ``latents`` exactly.
    """
    return latents + alpha_t**0.5 * region * (z0_filled - z0).to(latents.dtype)


class ContentInitialization:
    """One call's content initialisation: the target's soft map averaged over the reconstruction passes made before
    the edit branch leaves the reconstruction, for the region the first guided step pre-fills."""

    def __init__(self, method: str):
        self.method = method
        self.map_sum, self.map_count = None, 0

    def observe(self, soft_mask: torch.Tensor) -> None:
        total = torch.zeros_like(soft_mask) if self.map_sum is None else self.map_sum
        self.map_sum, self.map_count = total + soft_mask, self.map_count + 1

    def mean_map(self) -> torch.Tensor:
        return self.map_sum / self.map_count
