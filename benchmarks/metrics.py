"""Removal metrics with ground truth from the synthetic world, and a counter of UNet passes."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from magic_remover.images import psnr  # noqa: F401  (the one definition; the benchmarks import it from here)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    return ndi.binary_dilation(mask, iterations=pixels) if pixels > 0 else mask.copy()


def target_region(obj) -> np.ndarray:
    """What removal must change: the object and its shadow."""
    return obj.mask | obj.shadow_mask


def removal_outcome(result, target, others, finds) -> dict:
    """Why a removal failed, when it did: the target still found, another object no longer found (either or both)."""
    target_left = bool(finds(result, target.shape, target.color))
    others_lost = not all(finds(result, o.shape, o.color) for o in others)
    return {"success": not target_left and not others_lost, "target_left": target_left, "others_lost": others_lost}


def removal_success(result, target, others, finds) -> bool:
    """The detector no longer finds the target, and still finds every other object."""
    return removal_outcome(result, target, others, finds)["success"]


def score(result, scene, index: int, finds, dilation: int = 3) -> dict:
    """All per-image metrics of a removal of ``scene.objects[index]``."""
    target = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    region = target_region(target)
    outside = ~dilate(region, dilation)
    truth = target.without  # the scene with only the target removed: what lay behind it, occluded objects included
    return {
        **removal_outcome(result, target, others, finds),
        "fill_psnr": psnr(result, truth, region),
        "background_psnr": psnr(result, scene.image, outside),
        "image_psnr": psnr(result, truth),
    }


class UNetPassCounter:
    """Counts UNet forward passes with a hook, and backward passes by watching ``torch.autograd.grad`` (removed on
    exit). Every backward the pipeline takes goes through the UNet and through ``torch.autograd.grad``: the null-text
    loss to the embedding, the attention energy to the latents (which never reaches the UNet's output)."""

    def __init__(self, unet):
        self.unet = unet
        self.forward = self.backward = 0
        # rows: samples through the UNet (a CFG-batched call counts 2), the unit a method's minimum is stated in
        self.forward_rows = self.backward_rows = 0

    def _on_forward(self, module, args, output):
        self.forward += 1
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        self.forward_rows += int(sample.shape[0])

    def _counting_grad(self, outputs, inputs, *args, **kwargs):
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        self.backward += 1
        self.backward_rows += int(first.shape[0])
        return self._grad(outputs, inputs, *args, **kwargs)

    def __enter__(self):
        self._handle = self.unet.register_forward_hook(self._on_forward)
        self._grad = torch.autograd.grad
        torch.autograd.grad = self._counting_grad
        return self

    def __exit__(self, *exc):
        torch.autograd.grad = self._grad
        self._handle.remove()


class PeakMemory:
    """Peak resident memory (MiB) above the level at entry, sampled every 5 ms; CUDA's own counter on a GPU."""

    def __init__(self, device="cpu"):
        self.device = str(device)
        self.peak_mib = 0.0

    def __enter__(self):
        import psutil
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._process = psutil.Process()
        self._start = self._process.memory_info().rss
        self._peak = self._start
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, self._process.memory_info().rss)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mib = (self._peak - self._start) / 2**20


@contextlib.contextmanager
def measured(pipe):
    """Seconds, UNet passes and peak memory of the block."""
    stats = {}
    with UNetPassCounter(pipe.unet) as counter, PeakMemory(pipe._execution_device) as memory:
        start = time.perf_counter()
        yield stats
        stats["seconds"] = time.perf_counter() - start
    stats.update(forward=counter.forward, backward=counter.backward, forward_rows=counter.forward_rows,
                 backward_rows=counter.backward_rows, peak_mib=memory.peak_mib)  # fmt: skip
