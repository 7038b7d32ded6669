"""The ``magic-remover`` command: ``demo`` on the embedded model, ``remove`` on any image.

torch, diffusers and transformers are imported inside the commands, so ``--help``, ``--version`` and argument errors
answer at once. Every failure ends in one line on stderr: exit 2 for a problem the user can fix, 130 for Ctrl-C, 1 for
anything unexpected (``MAGIC_REMOVER_DEBUG=1`` shows its traceback); no output is written unless all can be.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .cli_common import (  # noqa: F401  (re-exported: `from magic_remover.cli import CommandError, ...` keeps working)
    SEED_RANGE,
    CommandError,
    add_common_options,
    add_trust_option,
    check_input_path,
    check_output_path,
    finite_float,
    load_pipeline,
    map_to_image,
    non_negative_float,
    non_negative_int,
    object_count,
    positive_int,
    quiet_libraries,
    removal_settings,
    removal_steps,
    seed,
    unit_interval,
    write_image_atomically,
    write_images_atomically,
)

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


def figure(panels: list, labels: list[str], scale: int = 4, title: list[str] = ()):
    """Panels side by side, upscaled with nearest neighbour so small images stay legible, a label above each, and the
    ``title``'s lines above all."""
    from PIL import Image, ImageDraw

    tiles = [p.convert("RGB").resize((p.width * scale, p.height * scale), Image.NEAREST) for p in panels]
    label_height, gap = 16, 4
    top = label_height * len(title)
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    height = max(t.height for t in tiles) + label_height + top
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(title):
        draw.text((2, 2 + n * label_height), line, fill="black")
    x = 0
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, top + label_height))
        draw.text((x + 2, top + 2), label, fill="black")
        x += tile.width + gap
    return canvas


def command_demo(args) -> int:
    import torch

    from .detector import detect
    from .images import psnr
    from .judge import FAILURES, judge
    from .scenes import make_scene

    check_output_path(Path(args.output), force=True, protected=[])
    start = time.perf_counter()
    pipe = load_pipeline(args.model, args.threads)
    pipe.set_progress_bar_config(disable=args.quiet)
    scene = make_scene(args.seed, size=64, num_objects=args.objects)
    index = 0
    obj = scene.objects[index]
    steps = removal_steps(pipe, args.steps)
    try:
        out = pipe(image=scene.image, prompt=scene.caption, target=obj.shape, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    except (ValueError, TypeError) as error:  # e.g. --steps 1: no step inside the guidance range
        raise CommandError(str(error)) from None
    result = out.images[0]
    truth = scene.objects[index].without
    region = scene.objects[index].mask | scene.objects[index].shadow_mask
    elapsed = time.perf_counter() - start
    verdict = judge(result, scene, index, [(d.shape, d.color, d.mask) for d in detect(result)])
    failures = [name.replace("_", " ") for name in FAILURES if verdict[name]]
    verdict_text = "clean removal" if verdict["success"] else "not clean: " + ", ".join(failures)

    panel = figure(
        [scene.image, map_to_image(out.attention_maps[0]), result, truth],
        ["input", f"map: {obj.shape}", "result", "ground truth"],
        title=[f"caption: {scene.caption}", f"target: {obj.shape!r}; judge: {verdict_text}"],
    )
    write_image_atomically(panel, Path(args.output), force=True, protected=[])
    print(f"scene {args.seed}: {scene.caption!r}")
    print(f"removed: the {obj.color} {obj.shape} (target word {obj.shape!r})")
    print(
        f"PSNR against the ground truth without it: {psnr(result, truth):.2f} dB "
        f"(the untouched input scores {psnr(scene.image, truth):.2f} dB); "
        f"inside its region {psnr(result, truth, region):.2f} dB (input {psnr(scene.image, truth, region):.2f} dB)"
    )
    print(f"judge (magic_remover/judge.py: target gone, nothing in its place, shadow gone, neighbours kept): "
          f"{verdict_text}")
    print(f"time: {elapsed:.1f} s ({steps} steps) -> wrote {args.output}")
    return 0


def command_remove(args) -> int:
    import numpy as np
    from PIL import Image

    from .images import default_max_size, fit_within, load_image_rgb, load_mask, restore_size, trained_size

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
    if args.mask:  # read as batch reads it: bounded, EXIF orientation applied
        try:
            mask = load_mask(args.mask)
        except ValueError as error:
            raise CommandError(f"Cannot read the mask: {error}") from None

    import torch

    pipe = load_pipeline(args.model, args.threads, trust_remote_code=args.trust_remote_code)
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

    pipe = load_pipeline(args.model, args.threads, trust_remote_code=args.trust_remote_code)  # before the server starts, so a bad --model is one line
    steps, settings = removal_settings(args.model, args.steps)
    app = ui.build_app(lambda: pipe, settings=settings, steps=steps, make_scene=make_scene,
                       scene_size=64 if args.model is None else 512, model_name=args.model or "embedded tiny-shapes")  # fmt: skip
    print(f"magic-remover ui: serving on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    ui.launch(app, host=args.host, port=args.port)
    return 0


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``magic-remover remove: error: ...; see --help``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    add_trust_option(remove)
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
    add_trust_option(page)
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
