"""The web page: ``magic-remover ui``, and the Hugging Face Space that ``magic-remover hub export`` writes.

A Gradio app (``pip install "magic-remover[ui]"``): an image (uploaded, or a synthetic demo scene), a caption, the
word to remove chosen among the caption's words, lambda, steps and the mask option; the result, the target's soft
mask (also as a PNG to download) and the reconstruction side by side, with one progress bar while it runs.

Of the package it imports only ``images.py`` (PIL and numpy), which ``hub export`` writes beside ``ui.py`` in a
Space, where only the exported pipeline code is present: the caller hands in how to load the pipeline, the call
settings and, optionally, the demo-scene maker. Gradio is imported when the page is built (it is an optional extra).

Work is bounded whatever is uploaded: the page reads uploads as files, refuses one whose header claims more than
``MAX_UPLOAD_PIXELS`` before decoding it, processes at most the model's maximum size (as ``magic-remover remove``
does, the result scaled back to the upload's size), runs one removal at a time with at most ``QUEUE_SIZE`` waiting,
and Gradio refuses uploads above ``MAX_UPLOAD_BYTES``.
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import PIL.Image

if __package__:
    from .images import default_max_size, fit_within, load_image_rgb, restore_size, trained_size
else:  # the Space: this file runs beside the copy of images.py that `hub export` writes with the pipeline's code
    from images import default_max_size, fit_within, load_image_rgb, restore_size, trained_size

#: Words of a caption that are never offered as the target: articles, prepositions, conjunctions, pronouns,
#: auxiliaries, and words that describe the picture rather than a thing in it.
FUNCTION_WORDS = frozenset(
    """a an the and or but nor of on in at by for from to into onto with without over under above below near
    beside behind between through across against along around up down out off is are was were be been being has
    have had it its this that these those there here his her their my our your some any each every no not very
    photo photograph picture image painting drawing scene background""".split()
)
#: Prepositions that open a caption's setting ("on the grass", "on a striped background"): the thing to remove is
#: named before them, and what follows them is where it is, not what it is.
SETTING_PREPOSITIONS = frozenset(
    "on in at near beside behind under over above below against along across inside outside".split()
)
#: Colour words, never pre-selected as the target ("the ball is red" pre-selects "ball").
COLOUR_WORDS = frozenset(
    "red orange yellow green blue purple pink white black grey gray brown beige golden silver".split()
)

#: The caption field's example: a caption of the embedded model's world (every word is in its vocabulary, see
#: ``scenes.make_caption``) that Stable Diffusion understands as well.
PLACEHOLDER_CAPTION = "a red circle and a blue square on a striped background"

#: The demo-scene picker's first seed and the scenes' object count: those of ``magic-remover demo``, so that seed N
#: shows the scene ``magic-remover demo --seed N`` removes from (the CLI's ``--seed``/``--objects`` defaults).
DEMO_SEED = 3
DEMO_OBJECTS = 2

#: Bounds on the work one visitor can ask for. An upload's header may claim at most this many pixels (a 6000x4000
#: camera photo; the header is read before decoding, so a small file claiming a huge size costs nothing).
MAX_UPLOAD_PIXELS = 25_000_000
#: Gradio refuses larger uploads before they reach the page's code.
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: Removals waiting behind the running one; later visitors are told the queue is full.
QUEUE_SIZE = 8
#: The form's largest number of DDIM steps (the paper uses 50).
MAX_STEPS = 100
#: Gradio's cached uploads and results are deleted this long after they were written (checked as often).
CACHE_LIFETIME_S = 3600

#: Small images (the embedded model's are 64x64) shown at the panel's size, pixels kept sharp.
CSS = """
#input-image img, #result img, #mask img, #reconstruction img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
"""
#: The image panels' height in pixels: the images' row and the form below it fit a 1400x900 window together.
PANEL_HEIGHT = 256

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed accepts


def caption_words(prompt: str | None) -> list[str]:
    return re.findall(r"[a-z][a-z'-]*", (prompt or "").lower())


def target_choices(prompt: str | None) -> list[str]:
    """The caption's words that can be removed, in order and without repeats (function words left out)."""
    return list(dict.fromkeys(w for w in caption_words(prompt) if w not in FUNCTION_WORDS))


def preselected_target(prompt: str | None) -> str | None:
    """The word the page pre-selects as the target: the caption's last noun, read as the last content word (not a
    function or colour word) before the caption's setting, i.e. before the first of ``SETTING_PREPOSITIONS`` that
    follows a content word. In English the noun ends its phrase ("a big red ball"), and the setting names where the
    things are ("on the grass", "on a grass background"), so "a blue triangle and a red diamond on a grass
    background" pre-selects "diamond" and "a photo of a dog on the grass" "dog". A caption that is all setting
    pre-selects its last content word; one without any, nothing."""
    words = caption_words(prompt)

    def candidate(word: str) -> bool:
        return word not in FUNCTION_WORDS and word not in COLOUR_WORDS

    subject: list[str] = []
    for word in words:
        if word in SETTING_PREPOSITIONS and any(candidate(w) for w in subject):
            break
        subject.append(word)
    named = [w for w in subject if candidate(w)] or [w for w in words if candidate(w)] or target_choices(prompt)
    return named[-1] if named else None


def mask_option(keep_input_outside: bool) -> dict:
    """The checkbox's call settings: the result is the reconstruction, and the input's own pixels, outside the
    target's region (the embedded model's shipped defaults turn both on together)."""
    return {"blend_outside_attention_mask": keep_input_outside, "keep_input_outside_attention_mask": keep_input_outside}


def demo_scene(make_scene: Callable, seed, size: int = 64):
    """``(image, caption, target)`` of demo scene ``seed``: the scene and target of ``magic-remover demo --seed``
    (``DEMO_OBJECTS`` objects, the first one's shape removed), drawn at ``size`` pixels."""
    seed = check_seed(seed, "demo scene seed")
    scene = make_scene(seed, size=size, num_objects=DEMO_OBJECTS)
    return scene.image, scene.caption, scene.objects[0].shape


def whole_number(value, name: str, low: int, high: int) -> int:
    """``value`` (a form's number, or what an API caller sent in its place) as an int in ``[low, high]``; anything
    else is a ``ValueError`` naming the field."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number != int(number) or not low <= int(number) <= high:
        upper = "2**64 - 1" if high == SEED_RANGE[1] else str(high)
        raise ValueError(f"{name} must be a whole number from {low} to {upper}, got {value!r}.")
    return int(number)


def check_seed(seed, name: str = "seed") -> int:
    return whole_number(seed, name, *SEED_RANGE)


def form_text(value, name: str) -> str:
    """A text field's value, stripped; ``TypeError`` naming the field for anything but a string (or nothing)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be text, got {type(value).__name__}.")
    return (value or "").strip()


def check_upload(path) -> None:
    """Refuses an upload whose header claims more than ``MAX_UPLOAD_PIXELS`` pixels, before any pixel is decoded
    (PIL's ``open`` reads the header only), so that a small file claiming a huge size is one line on the page."""
    try:
        with warnings.catch_warnings():  # PIL's decompression-bomb warning: the refusal below says it in one line
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as opened:
                width, height = opened.size
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(f"{Path(path).name} is too large to read: {error}") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as error:
        reason = "not an image file" if isinstance(error, PIL.UnidentifiedImageError) else str(error)
        raise ValueError(f"{Path(path).name} is not an image this page can read ({reason}).") from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise ValueError(
            f"The image is {width}x{height} ({width * height / 1e6:.1f} megapixels); this page takes at most "
            f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels. Downscale it first."
        )


class StepProgress:
    """One progress bar that only moves forward across a removal's loops (the inversion's, then the removal's).

    The pipeline reports each loop through its own tqdm bar (diffusers' ``progress_bar``), each running from 0 to its
    total, so that a page tracking the bars one by one goes back to 0 at every loop. The page gives its pipeline a
    tqdm configuration (``tqdm_config``) whose bars write their count here, and this object reports the steps done so
    far, over all the loops, as one fraction of ``expected_steps``.
    """

    #: What each bar writes: its description and count, e.g. ``"DDIM inversion<4/20>"``.
    BAR_FORMAT = "{desc}<{n}/{total}>"
    COUNT = re.compile(r"([^<>\r\n]*)<(\d+)/(\d+)>")

    def __init__(self):
        self.report: Callable | None = None

    def tqdm_config(self) -> dict:
        """The tqdm arguments for ``pipeline.set_progress_bar_config``: every update written here, none to a
        terminal."""
        return {"file": self, "bar_format": self.BAR_FORMAT, "mininterval": 0, "miniters": 1, "disable": False}

    def start(self, report: Callable | None, expected_steps: int) -> None:
        """Reports the coming call's steps to ``report(fraction, desc=...)``, as ``gr.Progress`` takes them."""
        self.report, self.expected = report, max(1, int(expected_steps))
        self.done = self.last_n = self.last_total = 0
        self.fraction = 0.0

    def stop(self) -> None:
        self.report = None

    def write(self, text: str) -> None:
        for desc, n, total in self.COUNT.findall(text):
            n, total = int(n), int(total)
            if n < self.last_n:  # a new bar: the previous loop is finished
                self.done += self.last_total
            self.last_n, self.last_total = n, total
            # the call may run more loops than expected (a model whose default is null-text inversion): the bar then
            # waits below 1 until the call returns rather than going back
            fraction = min((self.done + n) / self.expected, 0.99)
            if fraction > self.fraction and self.report is not None:
                self.fraction = fraction
                self.report(fraction, desc=desc.strip(": ") or None)

    def flush(self) -> None:
        pass


def upload_path(image) -> str | None:
    """The uploaded file's path from what the Remove event receives: the page's events skip Gradio's preprocessing
    (``preprocess=False``), which would open every upload with PIL before the page's code runs (a file that is not an
    image, or a header claiming more pixels than PIL allows, would then be a traceback on the server and a bare
    "Error" on the page), so the image comes as Gradio's file payload, ``{"path": ...}``, its path one of Gradio's
    uploads (checked by Gradio before the handler runs). A path (str or ``Path``, from scripts) is taken as it is.
    Inline images (data URLs, which API callers may send) are refused: checking them would mean decoding them."""
    if image is None or isinstance(image, (str, Path)):
        return None if image is None else str(image)
    if isinstance(image, dict):
        if image.get("path"):
            return str(image["path"])
        raise ValueError("Send the image as an uploaded file, not inline data.")
    raise TypeError(f"the image must be an uploaded file, got {type(image).__name__}.")


def page_error(message: str):
    """The message as Gradio shows it on the page, without a traceback in the server's terminal (the user's input,
    not the server, is at fault)."""
    import gradio as gr

    return gr.Error(message, print_exception=False)


class Remover:
    """The page's removal handler: loads the pipeline once (on first use, under a lock), reads and bounds the upload,
    checks the form, runs the pipeline (one call at a time) with the given settings and turns ``ValueError`` and
    ``TypeError``, its own and the readers', into one-line messages on the page.

    The soft mask's PNG is written into one folder the page owns (removed when the page is), emptied by
    ``remove_files`` once Gradio has copied the file into its cache, and at the next removal at the latest."""

    def __init__(self, load_pipeline: Callable, settings: dict | None = None):
        self._load_pipeline = load_pipeline
        self._pipeline = None
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # one removal at a time: the pipeline is one object, its memory bounded
        self.settings = dict(settings or {})
        self.progress = StepProgress()
        self.files = tempfile.TemporaryDirectory(prefix="magic_remover_ui_")

    @property
    def pipeline(self):
        with self._lock:
            if self._pipeline is None:
                pipeline = self._load_pipeline()
                pipeline.set_progress_bar_config(**self.progress.tqdm_config())
                self._pipeline = pipeline
            return self._pipeline

    def __call__(self, image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress=None):
        """``image`` is the upload: Gradio's file payload or a path (see ``upload_path``); returns the result, the soft
        mask and the reconstruction at the upload's size, and the soft mask's PNG file."""
        try:
            return self.remove(image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress)
        except (ValueError, TypeError) as error:  # the form's, the readers' and the API's own checks: shown as they are
            raise page_error(str(error)) from None

    def remove(self, image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress=None):
        import torch

        image = upload_path(image)
        if image is None:
            raise ValueError("Upload an image or pick a demo scene first.")
        prompt, target = form_text(prompt, "the caption"), form_text(target, "the word to remove")
        if not prompt:
            raise ValueError(f"Write a caption of the image that names the object, e.g. '{PLACEHOLDER_CAPTION}'.")
        if not target:
            raise ValueError("Choose the word to remove among the caption's words.")
        steps = whole_number(steps, "steps", 1, MAX_STEPS)
        generator = torch.Generator().manual_seed(check_seed(seed))
        settings = {**self.settings, **mask_option(bool(keep_input_outside))}
        if erase_lambda is not None:  # the pipeline checks its range
            if not isinstance(erase_lambda, (int, float)) or isinstance(erase_lambda, bool):
                raise TypeError(f"lambda must be a number, got {type(erase_lambda).__name__}.")
            settings["erase_lambda"] = float(erase_lambda)
        if progress is not None:
            progress(0, desc="reading the image")
        check_upload(image)
        with self._run_lock:
            self.remove_files()
            picture = load_image_rgb(image)
            pipeline = self.pipeline
            processed = fit_within(picture, default_max_size(trained_size(pipeline)))
            # the inversion's loop (two with null-text inversion), then the removal's, each of `steps` steps
            loops = 3 if settings.get("inversion_method") == "null-text" else 2
            self.progress.start(progress, loops * steps)
            try:
                out = pipeline(image=processed, prompt=prompt, target=target, num_inference_steps=steps,
                               generator=generator, **settings)  # fmt: skip
            finally:
                self.progress.stop()
            mask = restore_size(soft_mask_image(out.attention_maps[0]), picture.size)
            mask_file = Path(self.files.name) / f"{safe_name(target)}_mask.png"
            mask.save(mask_file)
        result = restore_size(out.images[0], picture.size)
        reconstruction = restore_size(out.reconstructions[0], picture.size) if out.reconstructions is not None else None
        return result, mask, reconstruction, str(mask_file)

    def remove_files(self) -> None:
        """Empties the page's folder of mask PNGs (Gradio serves its own copies)."""
        for path in Path(self.files.name).iterdir():
            path.unlink(missing_ok=True)


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
    values. ``make_scene(seed, size=..., num_objects=...)``, e.g. ``magic_remover.scenes.make_scene``, adds the
    demo-scene picker.

    Layout: the input and the three results in one row at the top, the form below them, all within a 1400x900
    window. Typing a caption offers its words as targets and pre-selects its last noun (``preselected_target``); a
    word the visitor chose is kept while the caption still holds it; a demo scene pre-selects its own target.
    """
    import gradio as gr

    remover = Remover(load_pipeline, settings)
    keep_default = bool(remover.settings.get("keep_input_outside_attention_mask", False))

    def run(image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress=gr.Progress()):
        return remover(image, prompt, target, erase_lambda, steps, keep_input_outside, seed, progress)

    def update_targets(prompt, chosen):
        choices = target_choices(prompt)
        value = chosen if chosen in choices else preselected_target(prompt)
        return gr.Dropdown(choices=choices, value=value)

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(CACHE_LIFETIME_S, CACHE_LIFETIME_S)) as app:
        app.remover = remover  # the handler, for scripts and tests
        chosen = gr.State(None)  # the target the visitor picked, kept while the caption holds it
        gr.Markdown(
            f"## {title}\nText-guided object removal: write a caption of the image, choose the word to remove, and "
            "the object goes with no mask drawn." + (f" Model: `{model_name}`" if model_name else "")
        )
        with gr.Row():  # the input and the results side by side, at the top: no scrolling to see what changed
            image = gr.Image(type="filepath", image_mode=None, label="image", sources=["upload", "clipboard"],
                             height=PANEL_HEIGHT, elem_id="input-image")  # fmt: skip
            result = gr.Image(type="pil", format="png", label="result", interactive=False, height=PANEL_HEIGHT,
                              elem_id="result")  # fmt: skip
            mask = gr.Image(type="pil", format="png", image_mode="L", label="soft mask (white = the object)",
                            interactive=False, height=PANEL_HEIGHT, elem_id="mask")  # fmt: skip
            reconstruction = gr.Image(type="pil", format="png", label="reconstruction", interactive=False,
                                      height=PANEL_HEIGHT, elem_id="reconstruction")  # fmt: skip
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="caption (prompt)", placeholder=PLACEHOLDER_CAPTION, lines=1,
                                    elem_id="prompt")  # fmt: skip
                with gr.Row(equal_height=True):
                    target = gr.Dropdown(choices=[], value=None, allow_custom_value=True,
                                         label="word to remove (target)", elem_id="target", scale=2)  # fmt: skip
                    run_button = gr.Button("Remove", variant="primary", elem_id="remove-button", scale=1)
            with gr.Column(scale=2):
                with gr.Row():
                    erase_lambda = gr.Slider(0.0, 1.0, value=remover.settings.get("erase_lambda", 0.8), step=0.05,
                                             label="lambda: lower erases more", elem_id="lambda", scale=2)  # fmt: skip
                    steps_box = gr.Number(value=steps, precision=0, minimum=1, maximum=MAX_STEPS, label="steps",
                                          elem_id="steps", min_width=80)  # fmt: skip
                    seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="seed", min_width=80)
                with gr.Row(equal_height=True):
                    keep_input = gr.Checkbox(value=keep_default, label="keep the input outside the object's region",
                                             elem_id="keep-input")  # fmt: skip
                    if make_scene is not None:
                        scene_seed = gr.Number(value=DEMO_SEED, precision=0, minimum=0, label="demo scene seed",
                                               elem_id="scene-seed", min_width=80)  # fmt: skip
                        scene_button = gr.Button("Use a demo scene", elem_id="scene-button")
        mask_file = gr.File(label="soft mask (PNG)", interactive=False, elem_id="mask-file")

        # `input` fires on the visitor's typing or picking only, not when a demo scene fills the fields in
        prompt.input(update_targets, [prompt, chosen], target, show_progress="hidden")
        target.input(lambda value: value, target, chosen, show_progress="hidden")
        run_button.click(
            run, [image, prompt, target, erase_lambda, steps_box, keep_input, seed],
            [result, mask, reconstruction, mask_file], show_progress_on=[result], api_name="remove",
            preprocess=False,  # the inputs as sent: the handler reads and checks them (see `upload_path`)
            concurrency_id="removal",
        ).then(remover.remove_files, show_progress="hidden", concurrency_id="removal")  # fmt: skip
        # one concurrency group: the clean-up never runs between another removal's return and Gradio's copy of its
        # mask file
        if make_scene is not None:

            def pick_scene(seed_value):
                try:
                    picture, caption, word = demo_scene(make_scene, seed_value, scene_size)
                except ValueError as error:
                    raise page_error(str(error)) from None
                return picture, caption, gr.Dropdown(choices=target_choices(caption), value=word), None

            scene_button.click(pick_scene, scene_seed, [image, prompt, target, chosen])
    return app


def launch(app, host: str | None = DEFAULT_HOST, port: int | None = DEFAULT_PORT, **kwargs):
    """Serves ``app`` (queued: one removal at a time, at most ``QUEUE_SIZE`` waiting, with progress; uploads above
    ``MAX_UPLOAD_BYTES`` refused); blocks unless ``prevent_thread_lock=True``. Fonts are the system's, so the page
    needs no network."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE).launch(
        server_name=host, server_port=port, theme=theme, css=CSS, show_error=True, max_file_size=MAX_UPLOAD_BYTES,
        **kwargs,
    )  # fmt: skip
