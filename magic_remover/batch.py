"""``magic-remover batch``: many removals for one model load, resumable, and spread over processes with accelerate.

The jobs are the rows of a manifest (CSV or JSONL with ``image,prompt,target`` and optional ``mask,output``) or every
image of a folder with one prompt and target. Rows with the same image and prompt form a *group*: the image is
inverted once (``pipe.invert``) and every target of the group is removed from that inversion
(``pipe(inversion=..., target=...)``). A group is also the unit that is split between processes, so its inversion is
never computed twice.

Every output is written through a temporary file and an atomic rename, and every finished row appends one line to
``OUTDIR/results.jsonl`` (flushed and fsynced), so a killed run loses nothing it finished; a rerun skips every row
whose outputs all exist. Under ``accelerate launch`` each process appends to its own ``results.process-N.jsonl`` and
the main process merges them into ``results.jsonl`` at the end (or at the start of the next run, after a kill).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cli_common import (
    CommandError,
    add_trust_option,
    load_pipeline,
    map_to_image,
    output_problem,
    positive_int,
    removal_settings,
    seed,
    write_image_atomically,
)

# inversion.INVERSION_METHODS, spelt out so that `--help` needs no torch import (a test compares the two)
BATCH_INVERSION_METHODS = ("null-text", "ddim", "negative-prompt", "direct")

REQUIRED_COLUMNS = ("image", "prompt", "target")
OPTIONAL_COLUMNS = ("mask", "output")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
RESULTS_NAME = "results.jsonl"
LOCK_NAME = ".magic-remover-batch.lock"  # only where fcntl is missing (Windows)
PROCESS_RESULTS_PATTERN = "results.process-*.jsonl"

BATCH_EXAMPLES = """\
examples:
  magic-remover batch jobs.csv -o removed/              # jobs.csv: image,prompt,target[,mask,output] per row
  magic-remover batch jobs.jsonl -o removed/ --save-masks --steps 10
  magic-remover batch photos/ --prompt "a photo of a dog on the grass" --target dog -o removed/ \\
      --model stable-diffusion-v1-5/stable-diffusion-v1-5
  accelerate launch --multi_gpu --num_processes 4 -m magic_remover.cli batch jobs.csv -o removed/ --model <SD id>
      # 4 GPUs, one process each; on a machine without CUDA the same line runs 4 CPU processes

A rerun of the same command skips every row whose outputs exist (delete an output to redo it); per-row status,
errors, seconds, settings and outputs are in OUTDIR/results.jsonl. Exit status 1 when any row failed.
"""


@dataclass
class Row:
    """One removal asked for by the jobs: ``number`` is the manifest's line (JSONL) or data row (CSV), from 1."""

    number: int
    image: Path | None
    prompt: str
    target: str
    mask: Path | None = None
    output: Path | None = None
    mask_output: Path | None = None
    error: str | None = None  # a problem known before any model pass

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.output, self.mask_output) if p is not None]


# ----------------------------------------------------------------------------------------------------------------
# Reading the jobs
# ----------------------------------------------------------------------------------------------------------------


def _row_from_fields(number: int, fields: dict, base: Path) -> Row:
    """A row from a manifest record; missing or empty required fields make a row that carries its error."""
    columns = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    values = {k: ("" if fields.get(k) is None else str(fields.get(k)).strip()) for k in columns}

    def input_path(value: str) -> Path | None:  # relative to the manifest's folder
        return None if not value else Path(value) if Path(value).is_absolute() else base / value

    row = Row(number, input_path(values["image"]), values["prompt"], values["target"], mask=input_path(values["mask"]))
    row.output = Path(values["output"]) if values["output"] else None  # relative to OUTDIR: resolved by assign_outputs
    unknown = sorted(set(fields) - set(columns))
    missing = [k for k in REQUIRED_COLUMNS if not values[k]]
    outside = [what for what, path in (("image", row.image), ("mask", row.mask))
               if path is not None and not inside_folder(path, base)]  # fmt: skip
    if unknown:
        row.error = f"unknown field(s) {', '.join(unknown)}; expected {', '.join(columns)}"
    elif missing:
        row.error = f"missing {', '.join(missing)}"
    elif outside:
        row.error = (f"the {' and '.join(outside)} path lies outside the manifest's folder {base} (after following "
                     "links); a manifest names files beside it or below it")
    return row


@functools.lru_cache(maxsize=None)
def _resolved(path: Path) -> Path:
    return path.resolve()


def inside_folder(path: Path, folder: Path) -> bool:
    """Whether ``path``, links followed, lies in ``folder`` (links followed) or below it. Rows share images and
    folders, so each path is resolved once."""
    return _resolved(path).is_relative_to(_resolved(folder))


def _read_csv(path: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        absent = [c for c in REQUIRED_COLUMNS if c not in header]
        unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if absent or unknown:
            raise CommandError(
                f"The manifest {path} has the columns {header}; it needs {', '.join(REQUIRED_COLUMNS)} and may have "
                f"{', '.join(OPTIONAL_COLUMNS)}" + (f" (unknown: {', '.join(unknown)})." if unknown else ".")
            )
        reader.fieldnames = header
        rows = []
        for number, fields in enumerate(reader, start=1):
            if None in fields:  # more cells than columns
                fields = {k: v for k, v in fields.items() if k is not None}
                row = _row_from_fields(number, fields, path.parent)
                row.error = row.error or "more cells than the header has columns"
            else:
                row = _row_from_fields(number, fields, path.parent)
            rows.append(row)
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append(Row(number, None, "", "", error=f"not a JSON object ({error.msg})"))
            continue
        if not isinstance(fields, dict):
            rows.append(Row(number, None, "", "", error=f"not a JSON object (a {type(fields).__name__})"))
            continue
        rows.append(_row_from_fields(number, fields, path.parent))
    return rows


def _read_folder(folder: Path, prompt: str, target: str) -> list[Row]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith("."))  # fmt: skip
    return [Row(number, path, prompt, target) for number, path in enumerate(images, start=1)]


def read_jobs(jobs: str | os.PathLike, prompt: str | None = None, target: str | None = None) -> list[Row]:
    """The rows of a CSV or JSONL manifest, or one row per image of a folder (then ``prompt`` and ``target`` are
    required). Image and mask paths are taken relative to the manifest's folder and must stay in it (links
    followed); outputs stay as written (they are
    relative to OUTDIR). A problem with the whole manifest raises ``CommandError``; one with a row is kept on the row
    (``row.error``) so that the others can go on."""
    jobs = Path(jobs)
    if jobs.is_dir():
        if not (prompt and prompt.strip()) or not (target and target.strip()):
            raise CommandError(f"{jobs} is a folder: give --prompt and --target for all of its images.")
        rows = _read_folder(jobs, prompt.strip(), target.strip())
        if not rows:
            raise CommandError(f"The folder {jobs} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        return rows
    if not jobs.is_file():
        raise CommandError(f"The jobs {jobs} do not exist (a CSV or JSONL manifest, or a folder of images).")
    if prompt is not None or target is not None:
        raise CommandError("--prompt and --target are for a folder of images; a manifest gives them per row.")
    suffix = jobs.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise CommandError(f"The manifest {jobs} must end in .csv or .jsonl, got {suffix or 'no suffix'!r}.")
    try:
        rows = _read_csv(jobs) if suffix == ".csv" else _read_jsonl(jobs)
    except UnicodeDecodeError as error:
        raise CommandError(f"The manifest {jobs} is not UTF-8 text (byte {error.start}: {error.object[error.start:error.start + 1]!r}); "
                           "save it as UTF-8 (e.g. from Latin-1: iconv -f latin1 -t utf-8).") from None  # fmt: skip
    except OSError as error:
        raise CommandError(f"Cannot read the manifest {jobs}: {error.strerror or error}.") from None
    if not rows:
        raise CommandError(f"The manifest {jobs} holds no rows.")
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Output names
# ----------------------------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """``text`` as a file-name fragment: lower case, runs of anything but letters and digits become one ``-``."""
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-") or "target"


def _same_file_key(path: Path) -> str:
    return os.path.normcase(str(Path(path).resolve()))


def _outside(path: Path, outdir: Path) -> bool:
    """Whether ``path`` lands outside ``outdir`` once ``..`` and every symbolic link on the way are followed."""
    return not Path(path).resolve().is_relative_to(Path(outdir).resolve())


def assign_outputs(rows: list[Row], outdir: Path, save_masks: bool, protected: list[Path]) -> None:
    """Gives every row its output paths, in place. A manifest's ``output`` is taken relative to ``outdir``; without
    one the name is ``<image stem>-no-<target slug>.png`` in ``outdir``, with ``-2``, ``-3``, ... when an earlier row
    or an input already has that name (so the names depend only on the jobs, and a rerun finds them again). With
    ``save_masks`` each result gets ``<output stem>-mask.png`` beside it. A row whose output would overwrite an input
    (any row's image or mask, or one of ``protected``) or another row's output gets an error instead."""
    file_key = functools.lru_cache(maxsize=None)(_same_file_key)  # rows share images: each path resolved once
    inputs = {file_key(p): str(p) for p in protected}
    for row in rows:
        for path in (row.image, row.mask):
            if path is not None:
                inputs[file_key(path)] = str(path)
    taken: dict[str, int] = {}  # output -> the row number that claimed it
    # a derived name lies directly in outdir: its key is outdir's, resolved once, and the name (no resolve per try;
    # an existing link of that name is refused by check_rows)
    outdir_key = _same_file_key(outdir)

    def derived_key(name: str) -> str:
        return os.path.normcase(os.path.join(outdir_key, name))

    def claim(row: Row, path: Path) -> str | None:
        key = file_key(path)
        if key in inputs:
            return f"the output {path} would overwrite the input {inputs[key]}"
        if key in taken:
            return f"the output {path} is also the output of row {taken[key]}"
        taken[key] = row.number
        return None

    def mask_path(output: Path) -> Path:
        return output.with_name(f"{output.stem}-mask.png")

    for row in rows:  # the manifest's own names first: a derived name never takes one of them
        if row.error is None and row.output is not None:
            written = row.output
            row.output = row.output if row.output.is_absolute() else outdir / row.output
            row.error = claim(row, row.output)
            if row.error is None and (written.is_absolute() or _outside(row.output, outdir)):
                row.error = (f"the output {written} is outside -o {outdir} (a manifest's output is a path inside -o, "
                             "without '..' or links leading out)")  # fmt: skip
            if row.error is None and save_masks:
                row.mask_output = mask_path(row.output)
                row.error = claim(row, row.mask_output)
    next_attempt: dict[str, int] = {}  # per stem, the first attempt not known to be taken: naming stays linear
    for row in rows:
        if row.error is not None or row.output is not None:
            continue
        stem = f"{row.image.stem}-no-{slug(row.target)}"
        attempt = next_attempt.get(stem, 1)
        while True:  # ends: each attempt is refused only by a distinct name already taken or an input
            name = f"{stem}.png" if attempt == 1 else f"{stem}-{attempt}.png"
            candidate = outdir / name
            keys = [derived_key(name)] + ([derived_key(mask_path(candidate).name)] if save_masks else [])
            if not any(k in inputs or k in taken for k in keys):
                break
            attempt += 1
        next_attempt[stem] = attempt + 1
        row.output = candidate
        row.mask_output = mask_path(candidate) if save_masks else None
        for key in keys:
            taken[key] = row.number


def outputs_complete(row: Row) -> bool:
    """Whether every output of the row exists (outputs are only ever renamed into place whole)."""
    return bool(row.outputs) and all(p.is_file() for p in row.outputs)


def remove_stale_temporaries(rows: list[Row]) -> int:
    """Deletes the temporary files a kill left behind while writing these rows' outputs (``write_image_atomically``
    names them ``.<stem>.<random><suffix>`` beside the output); returns how many."""
    wanted: dict[Path, set[tuple[str, str]]] = {}  # folder -> (stem, suffix) of the outputs in it
    for row in rows:
        for path in row.outputs:
            wanted.setdefault(path.parent, set()).add((path.stem, path.suffix or ".png"))
    removed = 0
    for folder, names in wanted.items():  # one listing per folder, not one per row: linear in the rows
        if not folder.is_dir():
            continue
        suffixes = {suffix for _, suffix in names}
        for entry in os.scandir(folder):
            for suffix in suffixes:
                if entry.name.startswith(".") and entry.name.endswith(suffix) and entry.is_file(follow_symlinks=False):
                    stem = entry.name[1 : -len(suffix)].rpartition(".")[0]  # mkstemp's random part has no dot
                    if (stem, suffix) in names:
                        Path(entry.path).unlink(missing_ok=True)
                        removed += 1
    return removed


def group_rows(rows: list[Row]) -> list[list[Row]]:
    """Rows with the same image file and prompt, in the order their first row appears: one inversion each."""
    groups: dict[tuple[str, str], list[Row]] = {}
    file_key = functools.lru_cache(maxsize=None)(_same_file_key)
    for row in rows:
        groups.setdefault((file_key(row.image), row.prompt), []).append(row)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------------------------
# results.jsonl
# ----------------------------------------------------------------------------------------------------------------


def append_record(path: Path, record: dict) -> None:
    """Appends one JSON line with a single write, flushed to disk, so a kill leaves whole lines only (at worst a
    torn last line, which :func:`read_records` ignores and :func:`repair_records` removes)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _results_text(path: Path) -> str:
    """The text of a results file ("" when there is none); one ``CommandError`` naming it when it cannot be read."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise CommandError(f"The results file {path} is {kind}; move it away (batch appends its records to a file).")
    if not path.exists():
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CommandError(f"The results file {path} is not UTF-8 (byte {error.start}); it was not written by batch: "
                           "move it away or choose another -o.") from None  # fmt: skip
    except OSError as error:
        raise CommandError(f"Cannot read the results file {path}: {error.strerror or error}.") from None


def _parse_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_records(path: Path) -> list[dict]:
    """The records of a results file, in order. A torn last line (a kill during a write: no newline, not a whole
    record) is skipped; a last record lacking only its newline is kept. Any other line that is not a JSON object
    is a ``CommandError`` naming the file and the line: a file that is not ours is never silently restarted."""
    text = _results_text(path)
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_record(line)
        if record is None:
            if number == len(lines) and not text.endswith("\n"):
                continue  # torn by a kill
            raise CommandError(f"The results file {path} has a line that is not a JSON record (line {number}); "
                               "move it away or choose another -o.")  # fmt: skip
        records.append(record)
    return records


def _replace_text_atomically(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def repair_records(path: Path) -> None:
    """Ends the last line so the next append starts on a line of its own: a whole record lacking only its newline
    gets one (it is never dropped), a torn one (a kill during the write) is removed."""
    text = _results_text(path)
    if text and not text.endswith("\n"):
        head, _, last = text.rpartition("\n")
        kept = head + "\n" if head else ""
        _replace_text_atomically(path, text + "\n" if _parse_record(last) is not None else kept)


def merge_process_records(outdir: Path) -> list[dict]:
    """Moves the records of every ``results.process-N.jsonl`` into ``results.jsonl`` (sorted by row, lines already
    there not repeated, one atomic replace), removes those files, and returns the records moved."""
    parts = sorted(outdir.glob(PROCESS_RESULTS_PATTERN))
    if not parts:
        return []
    results = outdir / RESULTS_NAME
    repair_records(results)
    existing = _results_text(results)
    present = set(existing.splitlines())
    moved = sorted((r for part in parts for r in read_records(part)),
                   key=lambda r: (r.get("row", 0), r.get("output", "")))  # fmt: skip
    lines = [json.dumps(r, sort_keys=True) for r in moved]
    _replace_text_atomically(results, existing + "".join(line + "\n" for line in lines if line not in present))
    for part in parts:
        part.unlink()
    return moved


# ----------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BatchSettings:
    steps: int
    call: dict  # keyword arguments of every removal call (the model's tuned settings)
    seed: int
    max_size: int
    model: str | None
    save_masks: bool
    invert: dict = field(default_factory=dict)  # the inversion's settings, equal to the call's

    def record(self) -> dict:
        return {"model": self.model or "embedded", "num_inference_steps": self.steps, "seed": self.seed,
                "max_size": self.max_size, **self.call}  # fmt: skip


def _display(path: Path | None, outdir: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(outdir.resolve()))
    except ValueError:
        return str(path)


def _record(row: Row, outdir: Path, status: str, error: str | None = None, **extra) -> dict:
    return {"row": row.number, "image": None if row.image is None else str(row.image), "prompt": row.prompt,
            "target": row.target, "mask": None if row.mask is None else str(row.mask),
            "output": _display(row.output, outdir), "mask_output": _display(row.mask_output, outdir),
            "status": status, "error": error, **extra}  # fmt: skip


def _check_target(tokenizer, row: Row) -> str | None:
    from .pipeline_magic_remover import find_target_tokens

    try:
        find_target_tokens(tokenizer, row.prompt, row.target)
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def _load_mask(row: Row, image_size: tuple[int, int], processing_size: tuple[int, int]):
    """The row's mask as a grey image at the processing size, or None; raises ValueError for a bad file."""
    from .images import load_image_rgb

    if row.mask is None:
        return None
    mask = load_image_rgb(row.mask).convert("L")
    if mask.size != image_size:
        raise ValueError(f"the mask {row.mask} is {mask.size[0]}x{mask.size[1]} but the image is "
                         f"{image_size[0]}x{image_size[1]}")  # fmt: skip
    return mask.resize(processing_size) if processing_size != image_size else mask


def remove_group(pipe, group: list[Row], settings: BatchSettings, outdir: Path):
    """Inverts the group's image once and removes each row's target from that inversion, writing the outputs
    atomically; yields one record per row (status ``done`` or ``failed``) as soon as the row is finished. A row's
    failure does not stop the others; an unreadable image or a failed inversion fails every row of the group."""
    import torch


    from .images import fit_within, load_image_rgb, restore_size

    start = time.perf_counter()
    try:
        original = load_image_rgb(group[0].image)
        image = fit_within(original, settings.max_size)
        inversion = pipe.invert(image, group[0].prompt, num_inference_steps=settings.steps, **settings.invert)
    except Exception as error:  # noqa: BLE001 - recorded for each row; the batch goes on
        message = _error_message(error)
        for row in group:
            yield _record(row, outdir, "failed", message, seconds=round(time.perf_counter() - start, 3),
                          settings=settings.record())  # fmt: skip
        return
    inversion_seconds = time.perf_counter() - start
    resized = list(image.size) if image.size != original.size else None
    for row in group:
        row_start = time.perf_counter()
        try:
            mask = _load_mask(row, original.size, image.size)
            out = pipe(image=image, inversion=inversion, target=row.target, mask_image=mask,
                       num_inference_steps=settings.steps, generator=torch.Generator().manual_seed(settings.seed),
                       **settings.call)  # fmt: skip
            for path in row.outputs:
                path.parent.mkdir(parents=True, exist_ok=True)
            protected = [p for p in (row.image, row.mask) if p is not None]
            write_image_atomically(restore_size(out.images[0], original.size), row.output, True, protected)
            if row.mask_output is not None:
                soft_mask = restore_size(map_to_image(out.attention_maps[0]), original.size)
                write_image_atomically(soft_mask, row.mask_output, True, protected)
            status, message = "done", None
        except Exception as error:  # noqa: BLE001 - recorded; the batch goes on
            status, message = "failed", _error_message(error)
        yield _record(row, outdir, status, message, seconds=round(time.perf_counter() - row_start, 3),
                      inversion_seconds=round(inversion_seconds, 3), processed_size=resized,
                      settings=settings.record())  # fmt: skip


def _error_message(error: BaseException) -> str:
    if isinstance(error, (ValueError, TypeError, CommandError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _settings_for(pipe, args) -> BatchSettings:
    from .images import default_max_size, trained_size

    steps, call = removal_settings(args.model, args.steps)
    if args.inversion_method is not None:
        call["inversion_method"] = args.inversion_method
    # the inversion must be made with the removal call's guidance scale and method; where the call leaves them to
    # the pipeline's defaults, so does the inversion (the pipeline checks that they match)
    invert = {name: call[key] for key, name in (("guidance_scale", "guidance_scale"), ("inversion_method", "method"))
              if key in call}  # fmt: skip
    max_size = args.max_size or default_max_size(trained_size(pipe))
    return BatchSettings(steps, call, args.seed, max_size, args.model, args.save_masks, invert)


def check_rows(rows: list[Row]) -> None:
    """Everything about each row that needs no model, before the model loads: its image and mask exist as files,
    and each output (inside -o already, see :func:`assign_outputs`) is not a folder, a link or another non-regular
    file and names a format PIL can write. A problem becomes the row's ``error``; the other rows go on."""
    is_file = functools.lru_cache(maxsize=None)(os.path.isfile)  # rows share images: each asked once
    for row in rows:
        for path, what in ((row.image, "image"), (row.mask, "mask")):
            if row.error is None and path is not None and not is_file(path):
                row.error = f"the {what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
        for path in row.outputs if row.error is None else ():
            row.error = output_problem(path)
            if row.error is not None:
                break


def plan_rows(rows: list[Row], tokenizer) -> tuple[list[Row], list[Row], list[list[Row]]]:
    """``(failed, skipped, groups to run)``: rows with a known error (including a target not in the prompt), rows
    whose outputs all exist, and the rest grouped by image and prompt. Every process computes the same plan."""
    failed, skipped, pending = [], [], []
    target_errors: dict[tuple[str, str], str | None] = {}  # manifests repeat their prompts and targets
    for row in rows:
        if row.error is None:
            if (row.prompt, row.target) not in target_errors:
                target_errors[row.prompt, row.target] = _check_target(tokenizer, row)
            row.error = target_errors[row.prompt, row.target]
        if row.error is not None:
            failed.append(row)
        elif outputs_complete(row):
            skipped.append(row)
        else:
            pending.append(row)
    return failed, skipped, group_rows(pending)


def _open_run(outdir: Path, failed: list[Row], skipped: list[Row], groups: list[list[Row]], settings) -> None:
    """The main process's part of starting a run: tidies what a kill left (a torn line, temporary files, the
    per-process records of a distributed run), then records the refused rows and the rows whose outputs exist
    but were never recorded (a kill between the write and the record)."""
    results = outdir / RESULTS_NAME
    outdir.mkdir(parents=True, exist_ok=True)
    repair_records(results)
    remove_stale_temporaries([row for group in groups for row in group])
    merge_process_records(outdir)
    recorded = {(r.get("row"), r.get("output")) for r in read_records(results)
                if r.get("status") in ("done", "skipped")}  # fmt: skip
    for row in failed:
        append_record(results, _record(row, outdir, "failed", row.error, seconds=0.0, settings=settings.record()))
        print(f"magic-remover: row {row.number}: {row.error}", file=sys.stderr)
    for row in skipped:
        if (row.number, _display(row.output, outdir)) not in recorded:
            append_record(results, _record(row, outdir, "skipped", "outputs already complete", seconds=0.0,
                                           settings=settings.record()))  # fmt: skip


def _run_group(pipe, group, settings, outdir: Path, results: Path, process: int, done_so_far: list, say, prefix):
    """Runs one group, appending each row's record to ``results`` (and to ``done_so_far``) the moment it finishes,
    reporting failures on stderr and the finished image on one line."""
    records = []
    for record in remove_group(pipe, group, settings, outdir):
        record["process"] = process
        append_record(results, record)  # at once: a kill loses no finished row
        records.append(record)
        done_so_far.append(record)
        if record["status"] == "failed":
            print(f"magic-remover: row {record['row']} ({record['image']}): {record['error']}", file=sys.stderr)
    finished = [r for r in records if r["status"] == "done"]
    if finished:
        seconds = records[0].get("inversion_seconds", 0.0) + sum(r["seconds"] for r in records)
        removed = ", ".join(f"{r['target']!r} -> {r['output']}" for r in finished)
        say(f"{prefix}{group[0].image.name}: removed {removed} ({seconds:.1f} s)")


def process_state():
    """accelerate's ``PartialState`` for this process: one process unless started by ``accelerate launch``
    (or torchrun). A launch on a machine without CUDA runs its processes on the CPU, talking over gloo; so does one
    launched with ``--cpu`` (``ACCELERATE_USE_CPU``)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = os.environ.get("LOCAL_RANK") is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not torch.cuda.is_available()))


def run_batch(args) -> int:
    """The ``batch`` command: 0 when every row is done or skipped, 1 when any row failed, 2 for a bad command."""
    outdir = Path(args.output)
    jobs = Path(args.jobs)
    if outdir.exists() and not outdir.is_dir():
        raise CommandError(f"-o {outdir} is a file; batch writes into a folder.")
    if jobs.is_dir() and _same_file_key(jobs) == _same_file_key(outdir):
        raise CommandError(f"-o {outdir} is the folder of input images; choose another folder for the results.")
    rows = read_jobs(jobs, args.prompt, args.target)
    results = outdir / RESULTS_NAME
    protected = [jobs] if jobs.is_file() else []
    assign_outputs(rows, outdir, args.save_masks, protected + [results])
    check_rows(rows)
    read_records(results)  # an unreadable results file is one line now, not after the model load

    state = process_state()
    main = state.is_main_process
    with output_lock(outdir) if main else contextlib.nullcontext():
        return _run_locked(args, rows, outdir, results, state, start=time.perf_counter())


@contextlib.contextmanager
def output_lock(outdir: Path):
    """Holds an exclusive lock on the folder ``outdir`` for the run. A second run on the same -o is refused with one
    line rather than queued (two runs would compute and record every row twice). The lock is the OS's
    (``fcntl.flock`` on the folder itself), so it leaves no file in -o and dies with its process: a killed run never
    leaves a stale lock. Where there is no ``fcntl`` (Windows), ``filelock`` holds ``OUTDIR/.magic-remover-batch.lock``."""
    outdir.mkdir(parents=True, exist_ok=True)
    refusal = (f"Another batch run is writing into -o {outdir}; wait for it to end, or choose another -o.")
    try:
        import fcntl
    except ImportError:
        from filelock import FileLock, Timeout

        try:
            with FileLock(str(outdir / LOCK_NAME), timeout=0):
                yield
        except Timeout:
            raise CommandError(refusal) from None
        return
    descriptor = os.open(outdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(refusal) from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _run_locked(args, rows: list[Row], outdir: Path, results: Path, state, start: float) -> int:
    from tqdm.auto import tqdm

    main = state.is_main_process
    say = (lambda text: None) if args.quiet else (lambda text: tqdm.write(text, file=sys.stdout))
    pipe = load_pipeline(args.model, args.threads, device=state.device, trust_remote_code=args.trust_remote_code)
    pipe.set_progress_bar_config(disable=True)
    settings = _settings_for(pipe, args)
    failed, skipped, groups = plan_rows(rows, pipe.tokenizer)

    if main:
        _open_run(outdir, failed, skipped, groups, settings)
        pending_rows = sum(len(g) for g in groups)
        say(f"batch: {len(rows)} rows; {len(skipped)} skipped (outputs complete), {len(failed)} refused, "
            f"{pending_rows} to run on {len(groups)} image(s)" + (f" over {state.num_processes} processes"
                                                                 if state.num_processes > 1 else ""))  # fmt: skip
    state.wait_for_everyone()  # nobody writes an output before every process has planned

    mine_path = results if state.num_processes == 1 else outdir / f"results.process-{state.process_index}.jsonl"
    prefix = f"[process {state.process_index}] " if state.num_processes > 1 else ""
    own_records: list[dict] = []  # filled as rows finish, so an interruption knows how many did
    try:
        with state.split_between_processes(groups) as mine:
            bar = tqdm(mine, unit="image", desc=f"{prefix}removing", disable=args.quiet or not main, file=sys.stderr)
            for group in bar:
                _run_group(pipe, group, settings, outdir, mine_path, state.process_index, own_records, say, prefix)
    except KeyboardInterrupt:  # the rows finished so far are written and recorded: say so, not "nothing written"
        print(f"magic-remover: interrupted after {len(own_records)} row(s) of this run; their outputs and records are "
              "kept, and the same command resumes.", file=sys.stderr)  # fmt: skip
        return 130
    state.wait_for_everyone()

    if not main:
        return 1 if any(r["status"] == "failed" for r in own_records) else 0
    run_records = merge_process_records(outdir) if state.num_processes > 1 else own_records
    done = sum(r["status"] == "done" for r in run_records)
    failures = len(failed) + sum(r["status"] == "failed" for r in run_records)
    say(f"batch: {done} done, {len(skipped)} skipped, {failures} failed in {time.perf_counter() - start:.1f} s "
        f"-> {results}")  # fmt: skip
    return 1 if failures else 0


def add_batch_parser(sub) -> argparse.ArgumentParser:
    """Registers ``batch`` on the ``magic-remover`` command's subparsers."""
    batch = sub.add_parser("batch", help="remove objects from many images: a CSV/JSONL manifest or a folder",
                           description="Removes objects from many images with one model load; a rerun resumes.",
                           epilog=BATCH_EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    batch.add_argument("jobs", help="a CSV or JSONL manifest (image,prompt,target[,mask,output]; paths relative to it) "
                       "or a folder of images")  # fmt: skip
    batch.add_argument("-o", "--output", required=True, help="folder for the results and results.jsonl")
    batch.add_argument("--prompt", default=None, help="with a folder: the caption of every image")
    batch.add_argument("--target", default=None, help="with a folder: the word or phrase to remove from every image")
    batch.add_argument("--model", default=None, help="Hub id or local folder (default: the embedded model)")
    add_trust_option(batch)
    batch.add_argument("--steps", type=positive_int, default=None,
                       help="DDIM steps (default: 50, or the embedded model's)")  # fmt: skip
    batch.add_argument("--inversion-method", choices=BATCH_INVERSION_METHODS, default=None,
                       help="how each image is inverted (default: the model's, else negative-prompt)")
    batch.add_argument("--save-masks", action="store_true", help="also write each target's soft map, <output>-mask.png")
    batch.add_argument("--max-size", type=positive_int, default=None,
                       help="process images whose longer side is larger scaled down to it, and write the results "
                       "at the input's size (default: 2x the trained size for small models, 1.5x for SD)")
    batch.add_argument("--seed", type=seed, default=0, help="random seed of every removal, 0 to 2**64 - 1")
    batch.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (per process)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar and no line per image")
    batch.set_defaults(func=run_batch)
    return batch
