"""The ``magic-remover`` command: ``demo`` on the embedded model, ``remove`` on any image."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

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


def removal_settings(model: str | None, steps: int | None = None) -> tuple[int, dict]:
    """``(steps, call settings)``: the paper's for Stable Diffusion, the tuned ones shipped with the embedded model
    (its ``magic_remover_defaults.json``); ``steps`` overrides the number of DDIM steps."""
    import json

    settings = {}
    if model is None:
        path = Path(_embedded_model()) / "magic_remover_defaults.json"
        settings = json.loads(path.read_text()) if path.is_file() else {}
    default_steps = settings.pop("num_inference_steps", 50)
    return steps or default_steps, settings


def write_image_atomically(image, path: Path, force: bool, protected: list[Path]) -> None:
    """Writes ``image`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    write_check(path, force, protected)
    if not path.parent.exists():
        raise CommandError(f"The folder {path.parent} does not exist.")
    suffix = path.suffix or ".png"
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(descriptor)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes the file private; outputs get the usual permissions
        image.save(temporary, format=None if path.suffix else "PNG")
        os.replace(temporary, path)
    except BaseException:
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

    start = time.perf_counter()
    pipe = load_pipeline(args.model, args.threads)
    pipe.set_progress_bar_config(disable=args.quiet)
    scene = make_scene(args.seed, size=64, num_objects=args.objects)
    index = 0
    obj = scene.objects[index]
    steps, settings = removal_settings(args.model, args.steps)
    out = pipe(image=scene.image, prompt=scene.caption, target=obj.shape, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(args.seed), **settings)  # fmt: skip
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
    import torch
    from PIL import Image, UnidentifiedImageError

    image_path = Path(args.image)
    if not image_path.is_file():
        raise CommandError(f"Input image {image_path} does not exist.")
    outputs = [Path(args.output)] + ([Path(args.save_mask)] if args.save_mask else [])
    protected = [image_path] + ([Path(args.mask)] if args.mask else [])
    for path in outputs:  # refuse before any work is done
        write_check(path, args.force, protected)
    if args.save_mask and Path(args.save_mask).resolve() == Path(args.output).resolve():
        raise CommandError("--save-mask and -o name the same file.")
    try:
        image = Image.open(image_path).convert("RGB")
        mask = Image.open(args.mask).convert("L") if args.mask else None
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"Cannot read an image: {error}") from None

    pipe = load_pipeline(args.model, args.threads)
    steps, settings = removal_settings(args.model, args.steps)
    if args.erase_lambda is not None:
        settings["erase_lambda"] = args.erase_lambda
    if args.attention_guidance_scale is not None:
        settings["attention_guidance_scale"] = args.attention_guidance_scale
    generator = torch.Generator().manual_seed(args.seed)
    try:
        out = pipe(image=image, prompt=args.prompt, target=args.target, mask_image=mask, num_inference_steps=steps,
                   generator=generator, **settings)  # fmt: skip
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from None
    write_image_atomically(out.images[0], Path(args.output), args.force, protected)
    if args.save_mask:
        write_image_atomically(map_to_image(out.attention_maps[0]), Path(args.save_mask), args.force, protected)
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


def write_check(path: Path, force: bool, protected: list[Path]) -> None:
    for other in protected:
        if path.resolve() == Path(other).resolve():
            raise CommandError(f"Refusing to write {path}: it is the input {other}; choose another output path.")
    if path.exists() and not force:
        raise CommandError(f"{path} already exists; pass --force to overwrite it.")


def _integer_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _integer_at_least(text, 0)


def object_count(text: str) -> int:
    value = positive_int(text)
    if value > 3:
        raise argparse.ArgumentTypeError(f"scenes hold 1 to 3 objects, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magic-remover",
        description="Text-guided object removal (MagicRemover) with Stable Diffusion or the embedded tiny model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="remove an object from a synthetic scene with the embedded model",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    demo.add_argument("-o", "--output", default="magic_remover_demo.png", help="figure to write (overwritten)")
    demo.add_argument("--seed", type=non_negative_int, default=3, help="scene seed (held-out seeds are below 100000)")
    demo.add_argument("--objects", type=object_count, default=2, help="objects in the scene (1-3)")
    demo.add_argument("--steps", type=positive_int, default=None, help="DDIM steps (default: the model's)")
    demo.add_argument("--model", default=None, help=argparse.SUPPRESS)
    demo.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
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
    remove.add_argument("--lambda", dest="erase_lambda", type=float, default=None, help="lambda of eq. 7 (default 0.8)")
    remove.add_argument("--attention-guidance-scale", type=float, default=None, help="scale of the attention guidance")
    remove.add_argument("--seed", type=int, default=0, help="random seed")
    remove.add_argument("--save-mask", default=None, help="also write the target's soft map as a grey image")
    remove.add_argument("--force", action="store_true", help="overwrite existing outputs (never the input)")
    remove.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    remove.set_defaults(func=command_remove)

    from .ui import DEFAULT_HOST, DEFAULT_PORT

    page = sub.add_parser("ui", help='a web page to try removal in the browser (pip install "magic-remover[ui]")',
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    page.add_argument("--model", default=None, help="Hub id or local folder (default: the embedded model)")
    page.add_argument("--host", default=DEFAULT_HOST, help="address to serve on (0.0.0.0 exposes the page to the network)")
    page.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help="port to serve on")
    page.add_argument("--steps", type=positive_int, default=None, help="the form's initial DDIM steps (default: the model's)")
    page.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    page.set_defaults(func=command_ui)

    from .batch import add_batch_parser
    from .hub import add_hub_parser

    add_batch_parser(sub)
    add_hub_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CommandError as error:
        print(f"magic-remover: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
