"""The ``magic-remover`` command: ``demo`` on the embedded model, ``remove`` on any image.

torch, diffusers and transformers are imported inside the commands, so ``--help``, ``--version`` and argument errors
answer at once. Every failure ends in one line on stderr: exit 2 for a problem the user can fix, 130 for Ctrl-C, 1 for
anything unexpected (``MAGIC_REMOVER_DEBUG=1`` shows its traceback); no output is written unless all can be.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from . import __version__

EXAMPLES = """\
examples:
  magic-remover demo                                   # a synthetic scene, one object removed, a figure written
  magic-remover demo --seed 12 -o demo12.png
  magic-remover remove photo.png --prompt "a photo of a dog on the grass" --target dog -o no_dog.png \\
      --model stable-diffusion-v1-5/stable-diffusion-v1-5 --save-mask dog_mask.png
  magic-remover remove scene.png --prompt "a red circle and a blue square on a striped background" \\
      --target circle -o no_circle.png                  # the embedded model (64x64 synthetic world)
  magic-remover ui                                     # a web page on http://127.0.0.1:7860 (pip install "magic-remover[ui]")
  magic-remover ui --model stable-diffusion-v1-5/stable-diffusion-v1-5 --host 0.0.0.0 --port 8080
  magic-remover batch jobs.csv -o removed/              # many images, one model load; rerun to resume
  magic-remover batch photos/ --prompt "a photo of a dog on the grass" --target dog -o removed/
  accelerate launch --multi_gpu --num_processes 2 -m magic_remover.cli batch jobs.csv -o removed/  # 2 GPUs (or CPUs)
"""


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _embedded_model() -> str:
    from . import EMBEDDED_MODEL

    if not (Path(EMBEDDED_MODEL) / "model_index.json").is_file():
        raise CommandError(f"The embedded model is missing from this installation ({EMBEDDED_MODEL}).")
    return EMBEDDED_MODEL


def load_pipeline(model: str | None, threads: int | None = None, device=None):
    """Loads a MagicRemoverPipeline from the embedded model, a local folder or a Hub id, with a plain error offline;
    onto ``device``, or CUDA when there is one."""
    import torch

    from .pipeline_magic_remover import MagicRemoverPipeline

    if threads:
        torch.set_num_threads(threads)
    source = model or _embedded_model()
    try:
        with _library_notices_silenced():
            pipe = MagicRemoverPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as error:
        where = "folder" if Path(source).exists() else "Hub model id"
        raise CommandError(
            f"Cannot load the model {source!r} ({where}): {str(error).splitlines()[0]}\n"
            "Without network access only local folders and models already in the Hugging Face cache can be loaded "
            "(set HF_HUB_OFFLINE=1 to use the cache)."
        ) from None
    if device is not None:
        pipe = pipe.to(device)
    elif torch.cuda.is_available():
        pipe = pipe.to("cuda")
    return pipe


class _library_notices_silenced:
    """transformers and diffusers at error verbosity while a model loads: their notices (e.g. transformers' "requires
    torchvision ... falling back" for image processors a Stable Diffusion folder names) are not the user's business;
    errors still show."""

    def __enter__(self):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        self.loggers = (diffusers_logging, transformers_logging)
        self.levels = [lib.get_verbosity() for lib in self.loggers]
        for lib in self.loggers:
            lib.set_verbosity_error()

    def __exit__(self, *exc):
        for lib, level in zip(self.loggers, self.levels):
            lib.set_verbosity(level)


def quiet_libraries() -> None:
    """``--quiet``: no progress bars from diffusers, transformers or huggingface_hub (the pipeline's own are turned off
    where it is built)."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    disable_progress_bars()


def removal_settings(model: str | None, steps: int | None = None) -> tuple[int, dict]:
    """``(steps, call settings)`` the model folder ships (``magic_remover_defaults.json``, read as
    ``from_pretrained`` reads it into ``pipe.removal_defaults``), for callers that pass settings explicitly, such as
    the web page; ``steps`` overrides the number of DDIM steps. A Hub id or a folder without the file: ``{}``."""
    from .pipeline_magic_remover import read_removal_defaults

    folder = Path(model) if model is not None else Path(_embedded_model())
    settings = read_removal_defaults(folder) if folder.is_dir() else {}
    default_steps = settings.pop("num_inference_steps", 50)
    return steps or default_steps, settings


def removal_steps(pipe, steps: int | None = None) -> int:
    """The DDIM steps of a call: ``--steps``, else the model's own (``pipe.removal_defaults``, read by
    ``from_pretrained`` from its ``magic_remover_defaults.json``), else the paper's 50. Every other tuned setting
    reaches the call through the pipeline itself."""
    return steps or pipe.removal_defaults.get("num_inference_steps", 50)


def write_image_atomically(image, path: Path, force: bool, protected: list[Path]) -> None:
    """Writes ``image`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    write_images_atomically([(image, Path(path))], force, protected)


def write_images_atomically(outputs: list, force: bool, protected: list[Path]) -> None:
    """Writes every ``(image, path)`` through a temporary file beside it, then renames them all: when any image cannot
    be saved, no output is touched."""
    for _, path in outputs:
        check_output_path(Path(path), force, protected)
    temporaries = []
    try:
        umask = os.umask(0)
        os.umask(umask)
        for image, path in outputs:
            path = Path(path)
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".png")
            os.close(descriptor)
            temporaries.append(temporary)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes the file private; outputs get the usual permissions
            image.save(temporary, format=None if path.suffix else "PNG")
        for temporary, (_, path) in zip(temporaries, outputs):
            os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries:
            Path(temporary).unlink(missing_ok=True)
        raise


def psnr(a, b, region=None) -> float:
    import numpy as np

    a = np.asarray(a, dtype=np.float64) / 255.0
    b = np.asarray(b, dtype=np.float64) / 255.0
    diff = (a - b) ** 2
    mse = diff[region].mean() if region is not None else diff.mean()
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def figure(panels: list, labels: list[str], scale: int = 4):
    """Panels side by side, upscaled with nearest neighbour so small images stay legible, a label above each."""
    from PIL import Image, ImageDraw

    tiles = [p.convert("RGB").resize((p.width * scale, p.height * scale), Image.NEAREST) for p in panels]
    label_height, gap = 16, 4
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    height = max(t.height for t in tiles) + label_height
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, label_height))
        draw.text((x + 2, 2), label, fill="black")
        x += tile.width + gap
    return canvas


def map_to_image(attention_map):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.clip(attention_map, 0, 1) * 255).astype(np.uint8), mode="L")


def command_demo(args) -> int:
    import torch

    from .scenes import make_scene

    check_output_path(Path(args.output), force=True, protected=[])
    start = time.perf_counter()
    pipe = load_pipeline(args.model, args.threads)
    pipe.set_progress_bar_config(disable=args.quiet)
    scene = make_scene(args.seed, size=64, num_objects=args.objects)
    index = 0
    obj = scene.objects[index]
    steps = removal_steps(pipe, args.steps)
    out = pipe(image=scene.image, prompt=scene.caption, target=obj.shape, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    result = out.images[0]
    truth = scene.objects[index].without
    region = scene.objects[index].mask | scene.objects[index].shadow_mask
    elapsed = time.perf_counter() - start

    panel = figure(
        [scene.image, map_to_image(out.attention_maps[0]), result, truth],
        ["input", f"map: {obj.shape}", "result", "ground truth"],
    )
    write_image_atomically(panel, Path(args.output), force=True, protected=[])
    print(f"scene {args.seed}: {scene.caption!r}")
    print(f"removed: the {obj.color} {obj.shape} (target word {obj.shape!r})")
    print(
        f"PSNR against the ground truth without it: {psnr(result, truth):.2f} dB "
        f"(the untouched input scores {psnr(scene.image, truth):.2f} dB); "
        f"inside its region {psnr(result, truth, region):.2f} dB (input {psnr(scene.image, truth, region):.2f} dB)"
    )
    print(f"time: {elapsed:.1f} s ({steps} steps) -> wrote {args.output}")
    return 0


def command_remove(args) -> int:
    import numpy as np
    from PIL import Image

    from .images import default_max_size, fit_within, load_image_rgb, restore_size, trained_size

    image_path = Path(args.image)
    check_input_path(image_path, "Input image")
    if args.mask:
        check_input_path(Path(args.mask), "Mask")
    outputs = [Path(args.output)] + ([Path(args.save_mask)] if args.save_mask else [])
    protected = [image_path] + ([Path(args.mask)] if args.mask else [])
    if args.save_mask and Path(args.save_mask).resolve() == Path(args.output).resolve():
        raise CommandError("--save-mask and -o name the same file.")
    for path in outputs:  # refuse before any work is done
        check_output_path(path, args.force, protected)
    try:
        image = load_image_rgb(image_path)
    except ValueError as error:
        raise CommandError(f"Cannot read the input image: {error}") from None
    mask = None
    if args.mask:
        try:
            with Image.open(args.mask) as opened:
                mask = opened.convert("L")
        except (OSError, ValueError) as error:
            raise CommandError(f"Cannot read the mask {args.mask}: {error}") from None

    import torch

    pipe = load_pipeline(args.model, args.threads)
    pipe.set_progress_bar_config(disable=args.quiet)
    max_size = args.max_size if args.max_size is not None else default_max_size(trained_size(pipe))
    processed = fit_within(image, max_size or None)
    if processed.size != image.size:
        if not args.quiet:
            print(f"magic-remover: {image.width}x{image.height} is larger than --max-size {max_size} for this model: "
                  f"processing at {processed.width}x{processed.height}, the result comes back at {image.width}x"
                  f"{image.height} (--max-size 0 processes at full size)", file=sys.stderr)  # fmt: skip
        if mask is not None:
            mask = mask.resize(processed.size, Image.BILINEAR) if mask.size == image.size else mask
    steps, settings = removal_steps(pipe, args.steps), {}
    if args.erase_lambda is not None:
        settings["erase_lambda"] = args.erase_lambda
    if args.attention_guidance_scale is not None:
        settings["attention_guidance_scale"] = args.attention_guidance_scale
    generator = torch.Generator().manual_seed(args.seed)
    try:
        out = pipe(image=processed, prompt=args.prompt, target=args.target, mask_image=mask, num_inference_steps=steps,
                   generator=generator, **settings)  # fmt: skip
    except (ValueError, TypeError, FloatingPointError) as error:
        raise CommandError(str(error)) from None
    results = [(restore_size(out.images[0], image.size), Path(args.output))]
    if args.save_mask:
        soft_map = np.asarray(out.attention_maps[0])
        results.append((restore_size(map_to_image(soft_map), image.size), Path(args.save_mask)))
    write_images_atomically(results, args.force, protected)
    print(f"removed {args.target!r} -> {args.output}" + (f" (map: {args.save_mask})" if args.save_mask else ""))
    return 0


def command_ui(args) -> int:
    try:
        from . import ui
        import gradio  # noqa: F401  (the page's optional extra)
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise CommandError('The web page needs Gradio: pip install "magic-remover[ui]"') from None
    from .scenes import make_scene

    pipe = load_pipeline(args.model, args.threads)  # before the server starts, so a bad --model is one line
    steps, settings = removal_settings(args.model, args.steps)
    app = ui.build_app(lambda: pipe, settings=settings, steps=steps, make_scene=make_scene,
                       scene_size=64 if args.model is None else 512, model_name=args.model or "embedded tiny-shapes")  # fmt: skip
    print(f"magic-remover ui: serving on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    ui.launch(app, host=args.host, port=args.port)
    return 0


def check_input_path(path: Path, what: str) -> None:
    if path.is_dir():
        raise CommandError(f"{what} {path} is a folder; give an image file.")
    if not path.is_file():
        raise CommandError(f"{what} {path} does not exist.")


def check_output_path(path: Path, force: bool, protected: list[Path]) -> None:
    """Everything that would stop ``path`` from being written, checked before any work: it is an input, exists
    without ``--force``, is a folder, names a format PIL cannot write, or lies in a missing or read-only folder."""
    from PIL import Image

    for other in protected:
        if path.resolve() == Path(other).resolve():
            raise CommandError(f"Refusing to write {path}: it is the input {other}; choose another output path.")
    if path.is_dir():
        raise CommandError(f"{path} is a folder; give a file name for the output, e.g. {path / 'result.png'}.")
    if path.exists() and not force:
        raise CommandError(f"{path} already exists; pass --force to overwrite it.")
    if path.suffix:
        image_format = Image.registered_extensions().get(path.suffix.lower())
        if image_format is None or image_format not in Image.SAVE:
            raise CommandError(f"Cannot write {path}: PIL cannot save {path.suffix!r} files; use .png, .jpg or .webp.")
    folder = path.parent
    if not folder.is_dir():
        raise CommandError(f"Cannot write {path}: the folder {folder} does not exist.")
    try:  # os.access misses read-only mounts and ACLs: try what the atomic write will do
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=".probe")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise CommandError(f"Cannot write {path}: the folder {folder} is not writable ({error.strerror}).") from None


def _integer_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed accepts


def seed(text: str) -> int:
    value = _integer_at_least(text, SEED_RANGE[0])
    if value > SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64 - 1, got {value}")
    return value


def finite_float(text: str, low: float | None = None, high: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {value}")
    return value


def unit_interval(text: str) -> float:
    return finite_float(text, 0.0, 1.0)


def non_negative_float(text: str) -> float:
    return finite_float(text, 0.0)


def positive_int(text: str) -> int:
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _integer_at_least(text, 0)


def object_count(text: str) -> int:
    value = positive_int(text)
    if value > 3:
        raise argparse.ArgumentTypeError(f"scenes hold 1 to 3 objects, got {value}")
    return value


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``magic-remover remove: error: ...; see --help``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand has."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notices (errors still print)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="magic-remover",
        description="Text-guided object removal (MagicRemover) with Stable Diffusion or the embedded tiny model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="remove an object from a synthetic scene with the embedded model",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    demo.add_argument("-o", "--output", default="magic_remover_demo.png", help="figure to write (overwritten)")
    demo.add_argument("--seed", type=non_negative_int, default=3, help="scene seed (held-out seeds are below 100000)")
    demo.add_argument("--objects", type=object_count, default=2, help="objects in the scene (1-3)")
    demo.add_argument("--steps", type=positive_int, default=None, help="DDIM steps (default: the model's)")
    demo.add_argument("--model", default=None, help=argparse.SUPPRESS)
    demo.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_common_options(demo)
    demo.set_defaults(func=command_demo)

    remove = sub.add_parser("remove", help="remove a named object from an image",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    remove.add_argument("image", help="input image (never overwritten)")
    remove.add_argument("--prompt", required=True, help='a caption naming the object, e.g. "a photo of a dog on the grass"')
    remove.add_argument("--target", required=True, help="the word or phrase of the prompt to remove")
    remove.add_argument("-o", "--output", required=True, help="where to write the result")
    remove.add_argument("--mask", default=None, help="optional mask image, white where removal may happen")
    remove.add_argument("--model", default=None, help="Hub id or local folder (default: the embedded model)")
    remove.add_argument("--steps", type=positive_int, default=None, help="DDIM steps (default: 50, or the embedded model's)")
    remove.add_argument("--lambda", dest="erase_lambda", type=unit_interval, default=None,
                        help="lambda of eq. 7, in [0, 1] (default 0.8)")  # fmt: skip
    remove.add_argument("--attention-guidance-scale", type=non_negative_float, default=None,
                        help="scale of the attention guidance, >= 0")  # fmt: skip
    remove.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2**64 - 1")
    remove.add_argument("--max-size", type=non_negative_int, default=None,
                        help="longest side the model processes; larger inputs are downscaled and the result scaled back "
                             "to the input's size (default: twice the model's trained size for small models, 1.5 times "
                             "for Stable Diffusion: 128 for the embedded model, 768 for SD 1.x; 0: no limit)")  # fmt: skip
    remove.add_argument("--save-mask", default=None, help="also write the target's soft map as a grey image")
    remove.add_argument("--force", action="store_true", help="overwrite existing outputs (never the input)")
    remove.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_common_options(remove)
    remove.set_defaults(func=command_remove)

    from .ui import DEFAULT_HOST, DEFAULT_PORT

    page = sub.add_parser("ui", help='a web page to try removal in the browser (pip install "magic-remover[ui]")',
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    page.add_argument("--model", default=None, help="Hub id or local folder (default: the embedded model)")
    page.add_argument("--host", default=DEFAULT_HOST, help="address to serve on (0.0.0.0 exposes the page to the network)")
    page.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help="port to serve on")
    page.add_argument("--steps", type=positive_int, default=None, help="the form's initial DDIM steps (default: the model's)")
    page.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_common_options(page)
    page.set_defaults(func=command_ui)

    from .batch import add_batch_parser
    from .hub import add_hub_parser

    add_batch_parser(sub)
    add_hub_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "quiet", False):
            quiet_libraries()
        return args.func(args)
    except CommandError as error:
        print(f"magic-remover: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("magic-remover: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an environment problem: one line, the traceback on request
        if os.environ.get("MAGIC_REMOVER_DEBUG"):
            raise
        first_line = (str(error).splitlines() or [""])[0]
        print(f"magic-remover: unexpected {type(error).__name__}: {first_line} (MAGIC_REMOVER_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
