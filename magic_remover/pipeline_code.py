"""The pipeline's code as files: what travels with a saved model or a Hub repo so ``custom_pipeline=`` can load it.

A pipeline file imports its sibling modules relatively (``from .inversion import ...``); diffusers copies the file's
relative imports along when it loads it, and a saved folder must hold the same modules. Which modules those are is
read from the code itself (:func:`relative_imports`), so the copied set can never drift from what the file imports.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path


def relative_imports(module_file) -> list[str]:
    """The file names of the sibling modules ``module_file`` imports relatively, and theirs in turn, in order."""
    module_file = Path(module_file).resolve()
    found: list[str] = []
    pending = [module_file]
    while pending:
        tree = ast.parse(pending.pop(0).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                name = node.module.split(".")[0] + ".py"
                if name not in found and name != module_file.name:
                    found.append(name)
                    pending.append(module_file.with_name(name))
    return found


def carries_code(folder: Path, pipeline_file) -> bool:
    """Whether ``folder`` holds ``pipeline_file`` as ``pipeline.py`` and its sibling modules, byte for byte."""
    pipeline_file = Path(pipeline_file).resolve()
    here = pipeline_file.parent
    pairs = [(folder / "pipeline.py", pipeline_file)] + [(folder / n, here / n) for n in relative_imports(pipeline_file)]
    return all(saved.is_file() and saved.read_bytes() == ours.read_bytes() for saved, ours in pairs)


def write_code(folder, class_name: str, pipeline_file) -> None:
    """Copies ``pipeline_file`` as ``pipeline.py`` with its sibling modules into ``folder`` and points
    ``model_index.json`` (if there is one) at it: the layout ``custom_pipeline=`` and Hub model repos that carry their
    code expect."""
    folder, pipeline_file = Path(folder), Path(pipeline_file).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pipeline_file, folder / "pipeline.py")
    for name in relative_imports(pipeline_file):
        shutil.copyfile(pipeline_file.with_name(name), folder / name)
    index = folder / "model_index.json"
    if index.is_file():
        config = json.loads(index.read_text())
        config["_class_name"] = ["pipeline", class_name]
        index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def drop_other_pipeline_classes(namespace: dict, keep: str) -> None:
    """Removes from a pipeline file's module ``namespace`` every ``DiffusionPipeline`` subclass defined under that
    module's name except ``keep``. diffusers executes a local ``custom_pipeline=`` folder's ``pipeline.py`` inside the
    module object of the last one it loaded in the process (``diffusers_modules.local.pipeline``), so after an SD
    folder an SDXL folder's file would find ``MagicRemoverPipeline`` still there, and diffusers refuses a module with
    two pipeline classes."""
    from diffusers import DiffusionPipeline

    for name, value in list(namespace.items()):
        if (name != keep and isinstance(value, type) and issubclass(value, DiffusionPipeline)
                and value.__module__ == namespace["__name__"]):  # fmt: skip
            del namespace[name]

