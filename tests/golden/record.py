"""Golden outputs of the removal: about twenty calls that together use every option and every inversion method.

Run from the repository root to (re)record ``tests/golden/outputs.safetensors``::

    PYTHONPATH=$PWD python tests/golden/record.py

``tests/test_golden.py`` runs the same calls and asserts every tensor is bit-identical (``torch.equal``) to the
recorded one: a restructuring that leaves behaviour unchanged passes it; one that changes a single operation's order
does not. The recording is this machine's (CPU, one thread): other hardware or library versions may differ in the last
bits, so re-record there before a refactoring, never after.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
GOLDEN_FILE = HERE / "outputs.safetensors"
sys.path.insert(0, str(HERE.parent))

from tiny_components import make_test_image, tiny_components  # noqa: E402

PROMPT = "a photo of a red ball and a dog on the grass"
STEPS = 6


class UNetPassCounter:
    """Counts the UNet's forward calls and the rows they evaluate (a change in either is a change of method)."""

    def __init__(self, unet):
        self.calls = self.rows = 0
        self.handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.calls += 1
        self.rows += int((args[0] if args else kwargs["sample"]).shape[0])

    def take(self) -> torch.Tensor:
        counts = torch.tensor([self.calls, self.rows])
        self.calls = self.rows = 0
        return counts


def as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, list):  # PIL images
        return torch.from_numpy(np.stack([np.asarray(image) for image in value]))
    raise TypeError(type(value))


def outputs_of(name: str, result, counter: UNetPassCounter) -> dict[str, torch.Tensor]:
    """Every tensor a call returns, keyed ``name/field``."""
    tensors = {
        f"{name}/images": as_tensor(result.images),
        f"{name}/attention_maps": as_tensor(result.attention_maps),
        f"{name}/reconstructions": as_tensor(result.reconstructions),
        f"{name}/inversion_latents": as_tensor(result.inversion.latents),
        f"{name}/inversion_null_embeddings": as_tensor(result.inversion.null_embeddings),
    }
    for key, value in (result.target_attention or {}).items():
        tensors[f"{name}/target_attention_{key}"] = as_tensor(value)
    tensors[f"{name}/unet_passes"] = counter.take()
    return tensors


def tiny_calls(pipe, counter):
    """(name, call) pairs on tiny random components: each option, each inversion method."""
    image, other = make_test_image(), make_test_image(seed=1)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 6:22] = 255
    base = dict(image=image, prompt=PROMPT, target="ball", num_inference_steps=STEPS, output_type="pt")

    def halve_guidance_at_step_two(pipeline, step, timestep, callback_kwargs):
        if step == 2:
            pipeline._guidance_scale = 1.0  # as diffusers' SDCFGCutoffCallback
        return {"latents": callback_kwargs["latents"] * 0.999}

    calls = {
        "null_text": dict(inversion_method="null-text"),
        "negative_prompt": dict(inversion_method="negative-prompt"),
        "direct": dict(inversion_method="direct"),
        "ddim": dict(inversion_method="ddim"),
        "quantile_binary": dict(inversion_method="null-text", energy="quantile", gradient_weighting="binary"),
        "mask_pil": dict(inversion_method="ddim", mask_image=mask, output_type="pil"),
        "blend_threshold_components": dict(inversion_method="null-text", blend_outside_attention_mask=True,
                                           attention_mask_threshold=0.3, attention_mask_components=1),
        "keep_input_np": dict(inversion_method="direct", keep_input_outside_attention_mask=True, output_type="np"),
        "protect_cutoff": dict(inversion_method="null-text", protect=["dog"], protect_cutoff=0.7,
                               blend_outside_attention_mask=True),
        "no_protect": dict(inversion_method="ddim", protect=[], attention_guidance_scale=5.0),
        "refocus": dict(inversion_method="null-text", refocus_w_pos=2.0, refocus_w_neg=1.0,
                        refocus_timesteps=(400, 1000)),
        "content_init": dict(inversion_method="negative-prompt", content_initialization="telea",
                             attention_mask_threshold=0.3, keep_input_outside_attention_mask=True),
        "content_init_mask": dict(inversion_method="ddim", content_initialization="telea", mask_image=mask),
        "layers_no_self_attention": dict(inversion_method="ddim", attention_layers="up_blocks",
                                         self_attention_guidance=False),
        "optimization_steps": dict(inversion_method="direct", optimization_steps=2, guidance_timesteps=(100, 900),
                                   optimization_timesteps=(300, 900), erase_lambda=0.5),
        "targets_list_and_phrase": dict(inversion_method="null-text", target=["red ball", "dog"]),
        "batch_of_two": dict(image=[image, other], prompt=[PROMPT, "a red ball near the table"],
                             inversion_method="ddim", output_type="latent"),
        "callback_guidance_cutoff": dict(inversion_method="ddim", callback_on_step_end=halve_guidance_at_step_two,
                                         guidance_scale=5.0),
        "clip_skip_lora_scale": dict(inversion_method="negative-prompt", clip_skip=1,
                                     cross_attention_kwargs={"scale": 0.5}),
    }
    for name, kwargs in calls.items():
        yield name, lambda kwargs=kwargs: pipe(**{**base, **kwargs})

    # one inversion, two removals (the inversion as a value object), and latents given as `image`
    inversion = pipe.invert(image, PROMPT, num_inference_steps=STEPS, method="null-text", num_inner_steps=3)
    yield "reuse_inversion", lambda: pipe(**{**base, "image": None, "inversion": inversion, "target": "dog",
                                             "output_type": "latent", "inversion_method": None})
    latents = pipe.image_latents(image)
    yield "latent_image", lambda: pipe(**{**base, "image": latents, "output_type": "latent",
                                          "inversion_method": "ddim"})


def run_all() -> dict[str, torch.Tensor]:
    """The golden calls, run now: ``{"call/field": tensor}``."""
    import magic_remover
    from magic_remover import MagicRemoverPipeline
    from magic_remover.scenes import make_scene

    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    pipe = MagicRemoverPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    counter = UNetPassCounter(pipe.unet)
    for name, call in tiny_calls(pipe, counter):
        tensors.update(outputs_of(name, call(), counter))
    inversion = pipe.invert(make_test_image(), PROMPT, num_inference_steps=STEPS, method="null-text")
    tensors["invert_null_text/latents"] = inversion.latents
    tensors["invert_null_text/null_embeddings"] = inversion.null_embeddings
    tensors["invert_null_text/unet_passes"] = counter.take()
    counter.handle.remove()

    v_pipe = MagicRemoverPipeline(**tiny_components(prediction_type="v_prediction"))
    v_pipe.set_progress_bar_config(disable=True)
    counter = UNetPassCounter(v_pipe.unet)
    result = v_pipe(image=make_test_image(), prompt=PROMPT, target="ball", num_inference_steps=STEPS,
                    inversion_method="null-text", output_type="pt")
    tensors.update(outputs_of("v_prediction", result, counter))
    counter.handle.remove()

    # the embedded model with its shipped settings (content initialisation, cutoff, components, blend, keep-input) as
    # they were when recorded: the fill prompt it ships since (issue 23) is turned off
    embedded = MagicRemoverPipeline.from_pretrained(magic_remover.EMBEDDED_MODEL)
    embedded.set_progress_bar_config(disable=True)
    counter = UNetPassCounter(embedded.unet)
    scene = make_scene(7)
    result = embedded(image=scene.image, prompt=scene.caption, target=scene.objects[-1].shape, output_type="np",
                      num_inference_steps=10, fill_prompt=None)
    tensors.update(outputs_of("embedded_defaults", result, counter))
    result = embedded(image=scene.image, prompt=scene.caption, target=scene.objects[-1].shape, output_type="np",
                      num_inference_steps=8, inversion_method="null-text", num_images_per_prompt=1,
                      fill_prompt=None)
    tensors.update(outputs_of("embedded_null_text", result, counter))
    counter.handle.remove()
    return {key: value.contiguous() for key, value in tensors.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    outputs = run_all()
    save_file(outputs, str(GOLDEN_FILE))
    size = sum(t.numel() * t.element_size() for t in outputs.values())
    print(f"{len(outputs)} tensors, {size / 1e6:.2f} MB -> {GOLDEN_FILE}")
