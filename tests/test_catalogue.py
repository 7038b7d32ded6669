"""The catalogue of bad and unusual inputs (issue 14): one row per input, its expected outcome named.

API rows expect ``works``, a ``ValueError``/``TypeError`` whose message names the argument, or a logged warning;
CLI rows expect exit 0, or exit 2 with one line on stderr, no traceback and nothing written. Every error must arrive
before any model pass: the UNet and the VAE's encoder and decoder carry hooks that count their forward calls, and
warning rows stop at the first model pass, so the table stays fast. The README's table of outcomes is this file's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPT
from safetensors.torch import load_file, save_file
from tiny_components import make_test_image, tiny_components

from magic_remover import MagicRemoverInversion, MagicRemoverPipeline
from magic_remover.cli import main

QUICK = dict(prompt=PROMPT, target="ball", num_inference_steps=3, inversion_method="ddim")


class ModelPassReached(Exception):
    """Raised by the hooks in "stop" mode: the call got as far as a model pass."""


class PassCounter:
    """Counts forward calls of the UNet and the VAE's encoder and decoder; optionally stops at the first."""

    def __init__(self, pipe):
        self.calls, self.stop = {"unet": 0, "vae.encoder": 0, "vae.decoder": 0}, False
        modules = {"unet": pipe.unet, "vae.encoder": pipe.vae.encoder, "vae.decoder": pipe.vae.decoder}
        self.handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name):
        def hook(module, args):
            self.calls[name] += 1
            if self.stop:
                raise ModelPassReached(name)

        return hook

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def tiny():
    pipeline = MagicRemoverPipeline(**tiny_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def counter(tiny):
    passes = PassCounter(tiny)
    yield passes
    passes.remove()


# ---------------------------------------------------------------------------------------------------------------
# Image forms: each must give the latents of the RGB image it shows (a silently wrong conversion fails here)
# ---------------------------------------------------------------------------------------------------------------

RGB = make_test_image()
RGB_ARRAY = np.array(RGB)
GREY = RGB.convert("L")


def half_transparent() -> tuple[PIL.Image.Image, PIL.Image.Image]:
    rgba = RGB.convert("RGBA")
    alpha = np.full(RGB_ARRAY.shape[:2], 255, np.uint8)
    alpha[:, :16] = 0  # left half transparent: it must come out white, not as the hidden colours
    rgba.putalpha(PIL.Image.fromarray(alpha))
    expected = RGB_ARRAY.copy()
    expected[:, :16] = 255
    return rgba, PIL.Image.fromarray(expected)


def sixteen_bit_grey() -> tuple[PIL.Image.Image, PIL.Image.Image]:
    values = np.asarray(GREY, dtype=np.uint16) * 257  # 8-bit grey spread over the 16-bit range
    return PIL.Image.fromarray(values), GREY.convert("RGB")


def palette_with_transparency() -> tuple[PIL.Image.Image, PIL.Image.Image]:
    palette = RGB.convert("P")
    palette.info["transparency"] = 0
    return palette, _over_white(palette.convert("RGBA"))


def _over_white(rgba: PIL.Image.Image) -> PIL.Image.Image:
    canvas = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(canvas, rgba).convert("RGB")


IMAGE_FORMS = {
    "PIL RGB": lambda: (RGB, RGB),
    "PIL RGBA, opaque": lambda: (RGB.convert("RGBA"), RGB),
    "PIL RGBA, half transparent (over white)": half_transparent,
    "PIL LA": lambda: (GREY.convert("LA"), GREY.convert("RGB")),
    "PIL L": lambda: (GREY, GREY.convert("RGB")),
    "PIL 1 (bilevel)": lambda: (GREY.convert("1"), GREY.convert("1").convert("RGB")),
    "PIL P": lambda: (RGB.convert("P"), RGB.convert("P").convert("RGB")),
    "PIL P with a transparent colour": palette_with_transparency,
    "PIL CMYK": lambda: (RGB.convert("CMYK"), RGB.convert("CMYK").convert("RGB")),
    "PIL I;16 (16-bit grey, scaled not clipped)": sixteen_bit_grey,
    "PIL I (16-bit PNG as 32-bit)": lambda: (PIL.Image.fromarray(np.asarray(GREY, np.int32) * 257), GREY.convert("RGB")),
    "PIL F in [0, 1]": lambda: (PIL.Image.fromarray(np.asarray(GREY, np.float32) / 255), GREY.convert("RGB")),
    "numpy HxWx3 float in [0, 1]": lambda: (RGB_ARRAY / 255.0, RGB),
    "numpy HxWx3 float32": lambda: ((RGB_ARRAY / 255.0).astype(np.float32), RGB),
    "numpy HxWx3 uint8": lambda: (RGB_ARRAY, RGB),
    "numpy HxWx3 uint16": lambda: (RGB_ARRAY.astype(np.uint16) * 257, RGB),
    "numpy HxW grey float": lambda: (np.asarray(GREY) / 255.0, GREY.convert("RGB")),
    "numpy HxWx4 float, opaque": lambda: (np.dstack([RGB_ARRAY / 255.0, np.ones(RGB_ARRAY.shape[:2])]), RGB),
    "numpy 1xHxWx3 batch": lambda: (RGB_ARRAY[None] / 255.0, RGB),
    "tensor CxHxW in [-1, 1]": lambda: (torch.from_numpy(RGB_ARRAY).permute(2, 0, 1).float() / 127.5 - 1, RGB),
    "tensor 1xCxHxW in [-1, 1]": lambda: (torch.from_numpy(RGB_ARRAY).permute(2, 0, 1)[None].float() / 127.5 - 1, RGB),
    "tensor 1xHxW grey": lambda: (torch.from_numpy(np.array(GREY))[None].float() / 127.5 - 1, GREY.convert("RGB")),
    "tensor CxHxW uint8": lambda: (torch.from_numpy(RGB_ARRAY).permute(2, 0, 1).contiguous(), RGB),
    "list of one PIL image": lambda: ([RGB], RGB),
}


@pytest.mark.parametrize("form", list(IMAGE_FORMS))
def test_every_image_form_encodes_as_the_rgb_image_it_shows(tiny, form):
    image, expected = IMAGE_FORMS[form]()
    got, want = tiny.image_latents(image), tiny.image_latents(expected)
    assert got.shape == want.shape == (1, 4, 16, 16)
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()


# ---------------------------------------------------------------------------------------------------------------
# API rows
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    call: Callable  # (pipe) -> anything; raises what the row expects
    expect: object  # "works", "warning", ValueError or TypeError
    fragment: str = ""  # in the message (errors) or the log (warnings)


def remove(**overrides):
    return lambda pipe: pipe(**{"image": RGB, **QUICK, **overrides})


def invert(**overrides):
    return lambda pipe: pipe.invert(**{"image": RGB, "prompt": PROMPT, "num_inference_steps": 3, **overrides})


def latents_of(pipe):
    return pipe.image_latents(RGB)


def check_latents_skip_encoding(pipe):
    """A latent tensor as ``image`` gives the same removal as the image, without the VAE encoder."""
    z0 = latents_of(pipe)
    encoder_calls = PassCounter(pipe)
    try:
        from_latents = pipe(image=z0, output_type="latent", **QUICK).images
        assert encoder_calls.calls["vae.encoder"] == 0
    finally:
        encoder_calls.remove()
    from_image = pipe(image=RGB, output_type="latent", **QUICK).images
    assert torch.allclose(from_latents, from_image, atol=1e-5)


def check_output_size(size, image=None):
    def check(pipe):
        out = pipe(image=make_test_image(size) if image is None else image, output_type="np", **QUICK)
        assert out.images.shape == (1, *size, 3) and np.isfinite(out.images).all()

    return check


def check_emoji_before_target(pipe):
    out = pipe(image=RGB, **{**QUICK, "prompt": "a photo of a 🐶ball", "target": "ball"}, output_type="latent")
    assert torch.isfinite(out.images).all()


API_ROWS = [
    # image forms that run end to end
    Row("numpy HxWxC float [0, 1], whole call", check_output_size((32, 32), image=RGB_ARRAY / 255.0), "works"),
    Row("tensor CxHxW [-1, 1], whole call",
        check_output_size((32, 32), image=torch.from_numpy(RGB_ARRAY).permute(2, 0, 1).float() / 127.5 - 1), "works"),
    Row("latents [1, 4, h, w] as image: encoding skipped", check_latents_skip_encoding, "works"),
    Row("odd size 30x30 comes back at 30x30", check_output_size((30, 30)), "works"),
    Row("non-square 24x40 comes back at 24x40", check_output_size((24, 40)), "works"),
    Row("guidance_scale as numpy float32", remove(guidance_scale=np.float32(3.0), output_type="latent"), "works"),
    Row("emoji before the target in the prompt", check_emoji_before_target, "works"),
    # image values and shapes
    Row("numpy float in [0, 255]", remove(image=RGB_ARRAY.astype(np.float64)), ValueError, "`image` as a float numpy array must hold values in [0, 1]"),
    Row("numpy with NaN", remove(image=np.full((32, 32, 3), np.nan)), ValueError, "`image` holds NaN"),
    Row("numpy channels-first 3xHxW", remove(image=np.zeros((3, 32, 32))), ValueError, "`image` as a numpy array is channels-last"),
    Row("numpy 2 channels", remove(image=np.zeros((32, 32, 2))), ValueError, "`image` must have 1, 3 or 4 channels"),
    Row("numpy int64", remove(image=RGB_ARRAY.astype(np.int64)), TypeError, "`image` as a numpy array must be uint8"),
    Row("numpy 5-d", remove(image=np.zeros((1, 1, 32, 32, 3))), ValueError, "`image`"),
    Row("tensor in [0, 255]", remove(image=torch.full((3, 32, 32), 200.0)), ValueError, "`image` as a float tensor must hold values in [0, 1]"),
    Row("tensor with inf", remove(image=torch.full((3, 32, 32), math.inf)), ValueError, "`image` holds NaN or inf"),
    Row("tensor 2 channels", remove(image=torch.zeros(2, 32, 32)), ValueError, "`image` must have 1 or 3 channels"),
    Row("tensor int32", remove(image=torch.zeros(3, 32, 32, dtype=torch.int32)), TypeError, "`image` as a tensor must be float"),
    Row("latents with NaN", remove(image=torch.full((1, 4, 16, 16), math.nan)), ValueError, "`image` given as latents"),
    Row("latents with keep_input_outside_attention_mask",
        remove(image=torch.zeros(1, 4, 16, 16), keep_input_outside_attention_mask=True), ValueError, "`image` is latents"),
    Row("PIL F outside [0, 1]", remove(image=PIL.Image.fromarray(np.full((32, 32), 3.0, np.float32))), ValueError, "must hold values in [0, 1]"),
    Row("1x1 image", remove(image=PIL.Image.new("RGB", (1, 1))), ValueError, "`image` is 1x1"),
    Row("mask as float numpy in [0, 255]", remove(mask_image=np.full((32, 32), 255.0)), ValueError,
        "`mask_image` as an array or tensor must hold values in [0, 1]"),
    Row("mask as tensor in [0, 255]", remove(mask_image=torch.full((1, 32, 32), 255.0)), ValueError,
        "`mask_image` as an array or tensor must hold values in [0, 1]"),
    Row("mask as uint8 numpy 0..255", remove(mask_image=np.full((32, 32), 255, np.uint8), output_type="latent"), "works"),
    Row("content_initialization unknown", remove(content_initialization="lama"), ValueError,
        "`content_initialization` must be one of"),
    Row("protect_cutoff above 1", remove(protect_cutoff=1.5), ValueError, "`protect_cutoff` must be in (0, 1]"),
    Row("attention_mask_components 0", remove(attention_mask_components=0, keep_input_outside_attention_mask=True),
        ValueError, "`attention_mask_components` must be None or an int >= 1"),
    Row("empty list", remove(image=[]), ValueError, "`image` is an empty list"),
    Row("a path string", remove(image="photo.png"), TypeError, "`image` must be a PIL.Image.Image"),
    Row("images of two sizes", remove(image=[RGB, make_test_image((16, 16))]), ValueError, "same size"),
    Row("no image and no inversion", remove(image=None), ValueError, "`image`"),
    Row("image far beyond the trained size", remove(image=make_test_image((160, 160))), "warning", "far beyond the 32x32"),
    # targets: looked up before the inversion
    Row("target not in the prompt", remove(target="cat"), ValueError, "'cat' does not occur"),
    Row("second target not in the prompt", remove(target=["ball", "dog"]), ValueError, "'dog' does not occur"),
    Row("emoji target", remove(prompt="a photo of a red ball 🐶", target="🐶"), ValueError, "`target` word '🐶' contains characters"),
    Row("unknown word (small vocabulary)", remove(prompt="a photo of a zebra", target="zebra"), ValueError, "'zebra' is not in the tokenizer's"),
    Row("unknown word: known words listed", remove(prompt="a photo of a zebra", target="zebra"), ValueError, "Words it knows include: and, ball"),
    Row("target with punctuation", remove(prompt="a photo of a red ball!", target="ball!"), ValueError, "`target` word 'ball!' contains characters"),
    Row("target with punctuation the prompt lacks", remove(target="ball!"), ValueError, "'ball!' does not occur"),
    Row("target inside a longer word", remove(prompt="a photo of a hotdog", target="dog"), ValueError, "'dog' does not occur"),
    Row("target past the token limit", remove(prompt="a photo of the big red blue small cat and dog near the grass ball",
                                              target="ball"), ValueError, "token limit"),  # fmt: skip
    Row("target empty", remove(target=""), ValueError, "`target` must name a word"),
    Row("target a number", remove(target=3), TypeError, "`target`"),
    Row("prompt and images in different numbers", remove(prompt=[PROMPT, PROMPT]), ValueError, "`prompt` has 2 entries"),
    # numbers: NaN and inf named up front, absurd magnitudes warned
    Row("guidance_scale inf", remove(guidance_scale=math.inf), ValueError, "`guidance_scale` must be a finite number"),
    Row("guidance_scale NaN", remove(guidance_scale=math.nan), ValueError, "`guidance_scale` must be a finite number"),
    Row("guidance_scale below 1", remove(guidance_scale=0.5), ValueError, "`guidance_scale` must be >= 1"),
    Row("guidance_scale 1e6", remove(guidance_scale=1e6), "warning", "`guidance_scale`=1000000.0 is far outside"),
    Row("attention_guidance_scale NaN", remove(attention_guidance_scale=math.nan), ValueError, "`attention_guidance_scale` must be a finite"),
    Row("attention_guidance_scale inf", remove(attention_guidance_scale=math.inf), ValueError, "`attention_guidance_scale` must be a finite"),
    Row("attention_guidance_scale 1e5", remove(attention_guidance_scale=1e5), "warning", "`attention_guidance_scale`=100000.0 is far outside"),
    Row("erase_lambda NaN", remove(erase_lambda=math.nan), ValueError, "`erase_lambda` must be a finite"),
    Row("erase_lambda inf", remove(erase_lambda=math.inf), ValueError, "`erase_lambda` must be a finite"),
    Row("guidance_timesteps with inf", remove(guidance_timesteps=(100, math.inf)), ValueError, "`guidance_timesteps` must be a finite"),
    Row("optimization_timesteps with NaN", remove(optimization_timesteps=(math.nan, 800)), ValueError, "`optimization_timesteps` must be a finite"),
    Row("attention_mask_threshold NaN", remove(attention_mask_threshold=math.nan), ValueError, "`attention_mask_threshold` must be a finite"),
    Row("num_inference_steps float", remove(num_inference_steps=3.0), TypeError, "`num_inference_steps`"),
    Row("invert: learning_rate inf", invert(learning_rate=math.inf), ValueError, "`learning_rate` must be a finite"),
    Row("invert: early_stop_epsilon NaN", invert(early_stop_epsilon=math.nan), ValueError, "`early_stop_epsilon` must be a finite"),
    Row("invert: guidance_scale inf", invert(guidance_scale=math.inf), ValueError, "`guidance_scale` must be a finite"),
    Row("invert: learning_rate 10", invert(learning_rate=10.0), "warning", "`learning_rate`=10.0 is far outside"),
    Row("invert: unknown method", invert(method="pnp"), ValueError, "`method`"),
    Row("invert: 16-bit numpy", invert(image=(RGB_ARRAY.astype(np.uint16) * 257)), "works"),
]


@pytest.mark.parametrize("row", API_ROWS, ids=[row.name for row in API_ROWS])
def test_api_catalogue(tiny, counter, caplog, row):
    if row.expect == "works":
        row.call(tiny)
        return
    if row.expect == "warning":
        counter.stop = True
        with caplog.at_level("WARNING"), pytest.raises(ModelPassReached):
            row.call(tiny)
        assert row.fragment in caplog.text  # logged before the first model pass
        return
    with pytest.raises(row.expect) as raised:
        row.call(tiny)
    assert row.fragment in str(raised.value)
    assert counter.total == 0, f"the error came after {counter.calls} model passes"


# ---------------------------------------------------------------------------------------------------------------
# Inversion files: tampering is caught at load
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_inversion(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "good.safetensors"
    tiny.invert(RGB, PROMPT, num_inference_steps=3, method="ddim").save(path)
    return path


def tamper_settings(**changes):
    def edit(tensors, settings):
        settings.update(changes)

    return edit


def drop_setting(key):
    return lambda tensors, settings: settings.pop(key)


def replace_tensor(key, make):
    def edit(tensors, settings):
        tensors[key] = make(tensors[key])

    return edit


INVERSION_ROWS = {
    "method renamed": (tamper_settings(method="pnp"), "`method` must be one of"),
    "steps as a string": (tamper_settings(num_inference_steps="3"), "`num_inference_steps` must be a positive int"),
    "steps not matching the tensors": (tamper_settings(num_inference_steps=4), "`latents` must be [5, 1"),
    "guidance_scale inf": (tamper_settings(guidance_scale=math.inf), "`guidance_scale` must be a finite number"),
    "guidance_scale a string": (tamper_settings(guidance_scale="7.5"), "`guidance_scale`"),
    "prompt a string": (tamper_settings(prompt=PROMPT), "`prompt` must be a non-empty list"),
    "image_size of one number": (tamper_settings(image_size=[32]), "`image_size` must be a [height, width]"),
    "processing_size not a multiple of the latents": (tamper_settings(processing_size=[33, 32]), "`processing_size`"),
    "final_losses a number": (tamper_settings(final_losses=0.1), "`final_losses`"),
    "clip_skip negative": (tamper_settings(clip_skip=-1), "`clip_skip` must be None or an int"),
    "lora_scale a string": (tamper_settings(lora_scale="1"), "`lora_scale` must be a finite number"),
    "a setting missing": (drop_setting("method"), "missing ['method']"),
    "a setting added": (tamper_settings(extra=1), "unexpected ['extra']"),
    "latents with a step cut": (replace_tensor("latents", lambda t: t[:-1]), "`latents`"),
    "null embeddings of another batch": (replace_tensor("null_embeddings", lambda t: t.repeat(1, 2, 1, 1)), "`null_embeddings`"),
    "prompt_embeds of another width": (replace_tensor("prompt_embeds", lambda t: t[..., :8].contiguous()), "`prompt_embeds`"),
    "timesteps ascending": (replace_tensor("timesteps", lambda t: t.flip(0).contiguous()), "`timesteps` must be descending"),
    "latents with NaN": (replace_tensor("latents", lambda t: torch.full_like(t, math.nan)), "`latents` must be finite"),
}


@pytest.mark.parametrize("case", list(INVERSION_ROWS))
def test_tampered_inversion_file_fails_at_load(saved_inversion, tmp_path, case):
    edit, fragment = INVERSION_ROWS[case]
    from safetensors import safe_open

    with safe_open(str(saved_inversion), framework="pt") as f:
        settings = json.loads(f.metadata()["magic_remover_inversion"])
    tensors = load_file(str(saved_inversion))
    edit(tensors, settings)
    path = tmp_path / "tampered.safetensors"
    save_file(tensors, str(path), metadata={"magic_remover_inversion": json.dumps(settings)})
    with pytest.raises(ValueError) as raised:
        MagicRemoverInversion.load(path)
    assert fragment in str(raised.value)


def test_inversion_file_with_broken_json_or_none(saved_inversion, tmp_path):
    tensors = load_file(str(saved_inversion))
    save_file(tensors, str(tmp_path / "json.safetensors"), metadata={"magic_remover_inversion": "{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        MagicRemoverInversion.load(tmp_path / "json.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        MagicRemoverInversion.load(tmp_path / "text.safetensors")
    assert MagicRemoverInversion.load(saved_inversion).num_inference_steps == 3  # the untampered file loads


# ---------------------------------------------------------------------------------------------------------------
# CLI rows
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, tiny, counter, monkeypatch, capsys):
    """Runs ``magic-remover`` with the tiny pipeline (counted) in place of a model load; returns what it did."""
    import magic_remover.cli as cli_module

    make_test_image((32, 32)).save(tmp_path / "photo.png")
    monkeypatch.setattr(cli_module, "load_pipeline", lambda model, threads=None, **options: tiny)
    monkeypatch.chdir(tmp_path)

    def run(*argv):
        before = {p.name for p in tmp_path.rglob("*")}
        try:
            code = main(list(argv))
        except SystemExit as exit_info:  # argparse
            code = exit_info.code
        captured = capsys.readouterr()
        written = {p.name for p in tmp_path.rglob("*")} - before
        return code, captured.out, captured.err, written

    return run


def remove_args(*extra, output="out.png", target="ball", image="photo.png"):
    return ["remove", image, "--prompt", PROMPT, "--target", target, "-o", output, "--steps", "3", "--model", "tiny",
            *extra]  # fmt: skip


def write_sixteen_bit(path: Path):
    PIL.Image.fromarray(np.asarray(GREY, dtype=np.uint16) * 257).save(path)


CLI_ERROR_ROWS = {
    "input missing": (remove_args(image="nope.png"), "does not exist"),
    "input is a folder": (remove_args(image="folder"), "is a folder"),
    "input is not an image": (remove_args(image="notes.txt"), "Cannot read the input image"),
    "mask missing": (remove_args("--mask", "nomask.png"), "Mask nomask.png does not exist"),
    "output folder missing": (remove_args(output="missing/out.png"), "the folder missing does not exist"),
    "output folder read-only": (remove_args(output="/sys/out.png"), "is not writable"),
    "output is a folder": (remove_args(output="folder"), "is a folder; give a file name"),
    "output extension unknown": (remove_args(output="out.xyz"), "PIL cannot save '.xyz'"),
    "output extension PIL only reads": (remove_args(output="out.psd"), "PIL cannot save '.psd'"),
    "--save-mask in a missing folder": (remove_args("--save-mask", "missing/mask.png"), "the folder missing does not exist"),
    "--save-mask with an unknown extension": (remove_args("--save-mask", "mask.xyz"), "PIL cannot save '.xyz'"),
    "--save-mask same as -o": (remove_args("--save-mask", "out.png"), "name the same file"),
    "output is the input": (remove_args("--force", output="photo.png"), "it is the input"),
    "output exists without --force": (remove_args(output="existing.png"), "pass --force"),
    "--seed overflows 64 bits": (remove_args("--seed", str(2**64)), "--seed: expected an integer from 0 to 2**64 - 1"),
    "--seed negative": (remove_args("--seed", "-1"), "--seed"),
    "--lambda NaN": (remove_args("--lambda", "nan"), "--lambda: expected a finite number"),
    "--lambda 2": (remove_args("--lambda", "2"), "--lambda: expected a number in [0.0, 1.0]"),
    "--attention-guidance-scale inf": (remove_args("--attention-guidance-scale", "inf"), "expected a finite number"),
    "--steps 0": (remove_args("--steps", "0"), "--steps"),
    "--max-size -1": (remove_args("--max-size", "-1"), "--max-size"),
    "--prompt missing": (["remove", "photo.png", "--target", "ball", "-o", "out.png"], "--prompt"),
    "unknown subcommand": (["erase"], "invalid choice"),
    "--target emoji": (remove_args(target="🐶"), "`target` '🐶' does not occur"),
    "--target not in the prompt": (remove_args(target="dog"), "'dog' does not occur"),
}


@pytest.mark.parametrize("case", list(CLI_ERROR_ROWS))
def test_cli_catalogue_errors(cli, tmp_path, counter, case):
    argv, fragment = CLI_ERROR_ROWS[case]
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "existing.png").write_bytes(b"keep me")
    before = (tmp_path / "photo.png").read_bytes()
    code, out, err, written = cli(*argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err
    assert written == set() and (tmp_path / "existing.png").read_bytes() == b"keep me"
    assert (tmp_path / "photo.png").read_bytes() == before
    assert counter.total == 0, f"the error came after {counter.calls} model passes"


@pytest.mark.parametrize(
    "raised,code,fragment",
    [
        (FloatingPointError("The edit latents became NaN"), 2, "The edit latents became NaN"),
        (KeyboardInterrupt(), 130, "interrupted; nothing was written"),
        (RuntimeError("CUDA out of memory.\nmore detail"), 1, "unexpected RuntimeError: CUDA out of memory."),
    ],
    ids=["FloatingPointError", "KeyboardInterrupt", "unexpected error"],
)
def test_cli_failures_during_the_run_end_in_one_line(cli, tiny, monkeypatch, raised, code, fragment):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(type(tiny), "__call__", fail)
    got, out, err, written = cli(*remove_args("--save-mask", "mask.png"))
    assert got == code and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert written == set()  # no partial output


def test_cli_sixteen_bit_png_is_scaled_not_white(cli, tmp_path):
    write_sixteen_bit(tmp_path / "grey16.png")
    code, out, err, written = cli(*remove_args(image="grey16.png"))
    assert code == 0 and written == {"out.png"}
    result = np.asarray(PIL.Image.open(tmp_path / "out.png"), dtype=np.float64)
    assert result.mean() < 230  # a clipped 16-bit input would be all white (255)
    assert abs(result.mean() - np.asarray(GREY).mean()) < 60


def test_cli_rgba_input_works(cli, tmp_path):
    half_transparent()[0].save(tmp_path / "rgba.png")
    code, out, err, written = cli(*remove_args(image="rgba.png"))
    assert code == 0 and PIL.Image.open(tmp_path / "out.png").mode == "RGB"


def test_cli_downscales_to_max_size_and_returns_the_input_size(cli, tmp_path, tiny, monkeypatch):
    sizes = []
    original = type(tiny).__call__

    def spy(self, *args, **kwargs):
        sizes.append(kwargs["image"].size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny), "__call__", spy)
    make_test_image((80, 100)).save(tmp_path / "big.png")
    code, out, err, written = cli(*remove_args("--save-mask", "mask.png", image="big.png"))
    assert code == 0 and sizes == [(64, 51)]  # default for a model trained at 32: 64
    assert "processing at 64x51" in err and "comes back at 100x80" in err
    assert PIL.Image.open(tmp_path / "out.png").size == (100, 80) == PIL.Image.open(tmp_path / "mask.png").size
    code, out, err, written = cli(*remove_args("--max-size", "0", "--force", image="big.png"))
    assert code == 0 and sizes[-1] == (100, 80) and "processing at" not in err


def test_cli_quiet_is_on_every_subcommand():
    from magic_remover.cli import build_parser

    parser = build_parser()
    for argv in (["demo"], ["remove", "x", "--prompt", "p", "--target", "t", "-o", "o"], ["ui"], ["hub", "export", "d"],
                 ["hub", "push", "user/repo"]):  # fmt: skip
        assert parser.parse_args([*argv, "--quiet"]).quiet is True


def test_cli_version(capsys):
    import magic_remover

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"magic-remover {magic_remover.__version__}"


def test_cli_help_imports_no_torch_and_prints_no_library_warning():
    """``--help`` must answer at once: torch, diffusers and transformers stay unimported, and nothing is warned."""
    import subprocess
    import sys

    code = ("import sys, magic_remover.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert "LOADED []" in done.stdout and done.stderr == "", done.stderr


def test_pipeline_import_prints_no_library_warning():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import magic_remover.pipeline_magic_remover"], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert done.returncode == 0 and "torchvision" not in done.stderr and "Traceback" not in done.stderr, done.stderr
