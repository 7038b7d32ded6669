"""What the ``magic-remover`` subcommands share: the error type, model loading, argument types and atomic writes.

``cli`` (remove, demo, ui), ``batch`` and ``hub`` import from here, and ``cli`` imports ``batch`` and ``hub`` to
register their subcommands, so no module imports one that imports it back. torch and diffusers are imported inside
the functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import stat
import tempfile
from pathlib import Path

class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _embedded_model() -> str:
    from . import EMBEDDED_MODEL

    if not (Path(EMBEDDED_MODEL) / "model_index.json").is_file():
        raise CommandError(f"The embedded model is missing from this installation ({EMBEDDED_MODEL}).")
    return EMBEDDED_MODEL


def load_pipeline(model: str | None, threads: int | None = None, device=None, trust_remote_code: bool = False):
    """Loads a MagicRemoverPipeline (a MagicRemoverXLPipeline for an SDXL base checkpoint, told by its
    ``model_index.json``) from the embedded model, a local folder or a Hub id, with a plain error offline;
    onto ``device``, or CUDA when there is one. Code a model folder carries (a ``pipeline.py`` other than this
    installation's, a custom component module) runs only with ``trust_remote_code`` (``--trust-remote-code``)."""
    import torch

    from .pipeline_magic_remover import MagicRemoverPipeline
    from .pipeline_magic_remover_xl import MagicRemoverXLPipeline, is_sdxl_model_index

    if threads:
        torch.set_num_threads(threads)
    source = model or _embedded_model()
    try:
        with _library_notices_silenced():
            if is_sdxl_model_index(MagicRemoverPipeline.load_config(source)):  # SDXL base: the XL pipeline
                pipe = MagicRemoverXLPipeline.from_pretrained(source, trust_remote_code=trust_remote_code)
            else:
                pipe = MagicRemoverPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False,
                                                            trust_remote_code=trust_remote_code)  # fmt: skip
    except (OSError, ValueError) as error:
        where = "folder" if Path(source).exists() else "Hub model id"
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise CommandError(
                f"The model {source!r} ({where}) carries code that would run on loading (custom pipeline or component "
                "modules); read it, and pass --trust-remote-code only if you trust it."
            ) from None
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


def map_to_image(attention_map):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.clip(attention_map, 0, 1) * 255).astype(np.uint8), mode="L")


def check_input_path(path: Path, what: str) -> None:
    if path.is_dir():
        raise CommandError(f"{what} {path} is a folder; give an image file.")
    if not path.is_file():
        raise CommandError(f"{what} {path} does not exist.")


def output_problem(path: Path) -> str | None:
    """What makes ``path`` no place for an output image, whatever ``--force`` says, or None: a folder, a link or
    anything else that is not a regular file (the atomic rename would replace the device node, fifo or link itself),
    or a suffix PIL cannot write."""
    try:
        mode = os.lstat(path).st_mode  # one system call: batch asks this of every output
    except OSError:  # absent (or its folder is): nothing there to refuse
        mode = None
    if mode is not None and (stat.S_ISDIR(mode) or (stat.S_ISLNK(mode) and path.is_dir())):
        return f"the output {path} is a folder; give a file name for the output, e.g. {path / 'result.png'}"
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        return f"refusing to write {path}: it is {kind}; choose another output path"
    if path.suffix:
        image_format = writable_extensions().get(path.suffix.lower())
        if image_format is None:
            return f"cannot write {path}: PIL cannot save {path.suffix!r} files; use .png, .jpg or .webp"
    return None


@functools.lru_cache(maxsize=None)
def writable_extensions() -> dict:
    """Suffix -> format for every format PIL can save (asked once: batch checks thousands of outputs)."""
    from PIL import Image

    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def check_output_path(path: Path, force: bool, protected: list[Path]) -> None:
    """Everything that would stop ``path`` from being written, checked before any work: it is an input, exists
    without ``--force``, is one of :func:`output_problem`'s (even with ``--force``), or lies in a missing or
    read-only folder."""
    for other in protected:
        if path.resolve() == Path(other).resolve():
            raise CommandError(f"Refusing to write {path}: it is the input {other}; choose another output path.")
    problem = output_problem(path)
    if problem is not None:
        raise CommandError(problem[0].upper() + problem[1:] + ".")
    if path.exists() and not force:
        raise CommandError(f"{path} already exists; pass --force to overwrite it.")
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


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand has."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notices (errors still print)")




def add_trust_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``, for subcommands that load ``--model``: without it no code from the model runs."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code the --model folder or repository carries (a pipeline.py other than this "
                        "installation's, custom component modules); only for a model you have read and trust")
