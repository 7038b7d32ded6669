"""The web page: ``magic-remover ui``, and the Hugging Face Space that ``magic-remover hub export`` writes.

A Gradio app (``pip install "magic-remover[ui]"``): an image (uploaded, or a synthetic demo scene), a caption, the
word to remove chosen among the caption's words, lambda, steps and the mask option; the result, the target's soft
mask (also as a PNG to download) and the reconstruction side by side, with progress while it runs.

This module imports nothing from the package, so that ``hub export`` can copy it beside ``app.py`` into a Space
where only the exported pipeline code is present: the caller hands in how to load the pipeline, the call settings
and, optionally, the demo-scene maker. Gradio is imported when the page is built (it is an optional extra).
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path
from typing import Callable

#: Words of a caption that are never offered as the target: articles, prepositions, conjunctions, pronouns,
#: auxiliaries, and words that describe the picture rather than a thing in it.
FUNCTION_WORDS = frozenset(
    """a an the and or but nor of on in at by for from to into onto with without over under above below near
    beside behind between through across against along around up down out off is are was were be been being has
    have had it its this that these those there here his her their my our your some any each every no not very
    photo photograph picture image painting drawing scene background""".split()
)

#: Small images (the embedded model's are 64x64) shown at the panel's size, pixels kept sharp.
CSS = """
#input-image img, #result img, #mask img, #reconstruction img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def target_choices(prompt: str | None) -> list[str]:
    """The caption's words that can be removed, in order and without repeats (function words left out)."""
    words = re.findall(r"[a-z][a-z'-]*", (prompt or "").lower())
    return list(dict.fromkeys(w for w in words if w not in FUNCTION_WORDS))


def mask_option(keep_input_outside: bool) -> dict:
    """The checkbox's call settings: the result is the reconstruction, and the input's own pixels, outside the
    target's region (the embedded model's shipped defaults turn both on together)."""
    return {"blend_outside_attention_mask": keep_input_outside, "keep_input_outside_attention_mask": keep_input_outside}


class Remover:
    """The page's removal handler: loads the pipeline once (on first use, under a lock), checks the form, runs the
    pipeline with the given settings and turns its ``ValueError``/``TypeError`` into messages on the page."""

    def __init__(self, load_pipeline: Callable, settings: dict | None = None):
        self._load_pipeline = load_pipeline
        self._pipeline = None
        self._lock = threading.Lock()
        self.settings = dict(settings or {})

    @property
    def pipeline(self):
        with self._lock:
            if self._pipeline is None:
                self._pipeline = self._load_pipeline()
            return self._pipeline

    def __call__(self, image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress=None):
        import gradio as gr
        import torch

        if image is None:
            raise gr.Error("Upload an image or pick a demo scene first.")
        if not (prompt or "").strip():
            raise gr.Error("Write a caption of the image that names the object, e.g. 'a photo of a dog on the grass'.")
        if not (target or "").strip():
            raise gr.Error("Choose the word to remove among the caption's words.")
        if steps is None or int(steps) < 1:
            raise gr.Error(f"steps must be a whole number >= 1, got {steps}.")
        if progress is not None:
            progress(0, desc="starting")
        settings = {**self.settings, **mask_option(bool(keep_input_outside))}
        if erase_lambda is not None:
            settings["erase_lambda"] = float(erase_lambda)
        generator = torch.Generator().manual_seed(int(seed or 0))
        try:
            out = self.pipeline(image=image.convert("RGB"), prompt=prompt, target=target.strip(),
                                num_inference_steps=int(steps), generator=generator, **settings)  # fmt: skip
        except (ValueError, TypeError) as error:  # the API's own checks: shown as they are
            raise gr.Error(str(error)) from None
        mask = soft_mask_image(out.attention_maps[0])
        mask_file = Path(tempfile.mkdtemp(prefix="magic_remover_ui_")) / f"{safe_name(target)}_mask.png"
        mask.save(mask_file)
        reconstruction = out.reconstructions[0] if out.reconstructions is not None else None
        return out.images[0], mask, reconstruction, str(mask_file)


def soft_mask_image(attention_map):
    """The target's map in ``[0, 1]`` as a grey PIL image: white where the object was (the convention of diffusers'
    inpainting pipelines, white = repaint)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.clip(np.asarray(attention_map, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8), mode="L")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text.strip()) or "target"


def build_app(
    load_pipeline: Callable,
    settings: dict | None = None,
    steps: int = 50,
    make_scene: Callable | None = None,
    scene_size: int = 64,
    title: str = "MagicRemover",
    model_name: str = "",
):
    """The page as a ``gradio.Blocks``, built without loading the model.

    ``load_pipeline()`` returns a MagicRemoverPipeline (called once, at the first removal); ``settings`` are passed
    to every call (a model's tuned defaults); ``steps`` and ``settings["erase_lambda"]`` are the form's initial
    values. ``make_scene(seed, size=...)``, e.g. ``magic_remover.scenes.make_scene``, adds the demo-scene picker.
    """
    import gradio as gr

    remover = Remover(load_pipeline, settings)
    keep_default = bool(remover.settings.get("keep_input_outside_attention_mask", False))

    def run(image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress=gr.Progress(track_tqdm=True)):
        return remover(image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress)

    def update_targets(prompt, current):
        choices = target_choices(prompt)
        value = current if current in choices else (choices[0] if choices else None)
        return gr.Dropdown(choices=choices, value=value)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        app.remover = remover  # the handler, for scripts and tests
        gr.Markdown(
            f"# {title}\nText-guided object removal: write a caption of the image, choose the word to remove, "
            "and the object goes with no mask drawn." + (f"  \nModel: `{model_name}`" if model_name else "")
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", sources=["upload", "clipboard"], height=320,
                                 elem_id="input-image")  # fmt: skip
                if make_scene is not None:
                    with gr.Row():
                        scene_seed = gr.Number(value=3, precision=0, minimum=0, label="demo scene seed")
                        scene_button = gr.Button("Use a demo scene", elem_id="scene-button")
            with gr.Column():
                prompt = gr.Textbox(label="caption (prompt)", placeholder="a photo of a dog on the grass",
                                    elem_id="prompt")  # fmt: skip
                target = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="word to remove (target)",
                                     info="one of the caption's words, or a phrase of them", elem_id="target")  # fmt: skip
                with gr.Accordion("settings", open=True):
                    erase_lambda = gr.Slider(0.0, 1.0, value=remover.settings.get("erase_lambda", 0.8), step=0.05,
                                             label="lambda (eq. 7): lower erases more", elem_id="lambda")  # fmt: skip
                    steps_box = gr.Number(value=steps, precision=0, minimum=1, maximum=1000, label="steps",
                                          elem_id="steps")  # fmt: skip
                    keep_input = gr.Checkbox(value=keep_default, label="keep the input outside the object's region",
                                             elem_id="keep-input")  # fmt: skip
                    seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                run_button = gr.Button("Remove", variant="primary", elem_id="remove-button")
        with gr.Row():
            result = gr.Image(type="pil", format="png", label="result", interactive=False, height=320,
                              elem_id="result")  # fmt: skip
            mask = gr.Image(type="pil", format="png", image_mode="L", label="soft mask (white = the object)",
                            interactive=False, height=320, elem_id="mask")  # fmt: skip
            reconstruction = gr.Image(type="pil", format="png", label="reconstruction", interactive=False,
                                      height=320, elem_id="reconstruction")  # fmt: skip
        mask_file = gr.File(label="soft mask (PNG)", interactive=False, elem_id="mask-file")

        prompt.change(update_targets, [prompt, target], target, show_progress="hidden")
        run_button.click(run, [image, prompt, target, erase_lambda, steps_box, keep_input, seed],
                         [result, mask, reconstruction, mask_file])  # fmt: skip
        if make_scene is not None:

            def pick_scene(seed_value):
                scene = make_scene(int(seed_value or 0), size=scene_size)
                word = scene.objects[0].shape
                return scene.image, scene.caption, gr.Dropdown(choices=target_choices(scene.caption), value=word)

            scene_button.click(pick_scene, scene_seed, [image, prompt, target])
    return app


def launch(app, host: str | None = DEFAULT_HOST, port: int | None = DEFAULT_PORT, **kwargs):
    """Serves ``app`` (queued, so removals run one at a time and report progress); blocks unless
    ``prevent_thread_lock=True``. Fonts are the system's, so the page needs no network."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return app.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, theme=theme, css=CSS,
                                                         show_error=True, **kwargs)  # fmt: skip
