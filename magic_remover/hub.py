"""``magic-remover hub export|push``: the pipeline's code as a Hugging Face Hub repository.

The repository holds ``pipeline.py`` (this package's ``pipeline_magic_remover.py``), its sibling modules and a
``README.md`` made from the project's ``model_card.md``, and also the web page as a Hugging Face Space: ``app.py``
(loads a checkpoint with this folder's ``pipeline.py`` as its ``custom_pipeline`` and serves ``ui.py``'s page),
``ui.py`` and ``scenes.py`` (copies of the package's) and a ``requirements.txt``; ``export --space`` gives the README
the Space's front matter instead of the model card's. Anyone can then load the pipeline onto any Stable Diffusion
1.x/2.x checkpoint without installing this package::

    DiffusionPipeline.from_pretrained(model, custom_pipeline="<repo id>", custom_revision="<commit>",
                                      trust_remote_code=True)

``push`` uses the token ``huggingface_hub`` already has (``HF_TOKEN`` or ``hf auth login``) and the endpoint it is
configured with (``HF_ENDPOINT``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .cli_common import CommandError, add_common_options

#: The Hub repository of the pipeline code that the README's example names until a repo id is known.
REPO_ID_PLACEHOLDER = "<this repo id>"
CARD_NAME = "model_card.md"


class HubError(CommandError):
    """A problem with exporting or pushing, printed as one line without a traceback."""


#: The page's modules, copied beside ``app.py``; they import nothing from the package.
SPACE_MODULES = ("ui.py", "scenes.py")
#: A Space installs these: magic-remover's own dependencies (setup.cfg's install_requires) and the ui extra's Gradio.
SPACE_REQUIREMENTS = (
    "diffusers>=0.29",
    "torch>=2.1",
    "transformers>=4.40",
    "accelerate>=0.30",
    "huggingface_hub>=0.23",
    "safetensors>=0.4",
    "numpy>=1.24",
    "Pillow>=9.0",
    "opencv-python-headless>=4.8",
    "scipy>=1.10",
    "gradio>=5.9,<7",
)
#: The checkpoint the Space loads unless its ``MAGIC_REMOVER_MODEL`` variable names another.
SPACE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

SPACE_APP = '''"""MagicRemover's web page as a Hugging Face Space (written by `magic-remover hub export`).

Loads the checkpoint named by the MAGIC_REMOVER_MODEL variable (default: {model}) with this folder's
pipeline.py as its custom pipeline, and serves the page of ui.py on it.
"""

import os
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from scenes import make_scene
from ui import build_app, launch

HERE = Path(__file__).resolve().parent
MODEL = os.environ.get("MAGIC_REMOVER_MODEL", "{model}")
STEPS = int(os.environ.get("MAGIC_REMOVER_STEPS", "50"))  # the paper's


def load_pipeline():
    """The removal pipeline on MODEL, loaded at the first removal (fp16 on a GPU)."""
    cuda = torch.cuda.is_available()
    pipe = DiffusionPipeline.from_pretrained(
        MODEL,
        custom_pipeline=str(HERE),  # this folder's pipeline.py, the code you read
        trust_remote_code=True,
        torch_dtype=torch.float16 if cuda else torch.float32,
        safety_checker=None,
        requires_safety_checker=False,
    )
    return pipe.to("cuda") if cuda else pipe


demo = build_app(load_pipeline, steps=STEPS, make_scene=make_scene, scene_size=512, model_name=MODEL)

if __name__ == "__main__":
    # A Space serves on 0.0.0.0:7860; elsewhere GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose.
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
'''

SPACE_FRONT_MATTER = """---
title: MagicRemover
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
license: apache-2.0
tags:
  - diffusers
  - object-removal
  - inpainting
---
"""


def code_files(xl: bool = False) -> list[str]:
    """The files of the code repository, relative to its root (``xl``: MagicRemoverXLPipeline's, for SDXL)."""
    if xl:
        from .pipeline_magic_remover_xl import SIBLING_MODULES
    else:
        from .pipeline_magic_remover import SIBLING_MODULES

    return ["pipeline.py", *SIBLING_MODULES, "README.md", "app.py", *SPACE_MODULES, "requirements.txt"]


def write_space_files(directory: Path) -> None:
    """``app.py``, the page's modules and ``requirements.txt``: what a Hugging Face Space runs."""
    import shutil

    here = Path(__file__).resolve().parent
    for name in SPACE_MODULES:
        shutil.copyfile(here / name, directory / name)
    (directory / "app.py").write_text(SPACE_APP.format(model=SPACE_MODEL), encoding="utf-8")
    (directory / "requirements.txt").write_text("\n".join(SPACE_REQUIREMENTS) + "\n", encoding="utf-8")


def space_readme(card: str) -> str:
    """The card with the Space's front matter (sdk, app file) in place of the model card's."""
    from importlib import metadata

    try:
        gradio_version = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        gradio_version = "5.9.0"  # the lowest the ui extra allows
    body = card.split("---", 2)[2].lstrip("\n") if card.startswith("---") else card
    return SPACE_FRONT_MATTER.format(gradio_version=gradio_version) + "\n" + body


def _installed_model_card() -> Path | None:
    """The copy that ``pip install`` puts in ``<prefix>/share/magic-remover`` (setup.cfg's ``data_files``)."""
    from importlib import metadata

    try:
        files = metadata.distribution("magic-remover").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == CARD_NAME and "share" in file.parts:
            path = Path(file.locate())
            if path.is_file():
                return path
    return None


def find_model_card() -> Path:
    """``model_card.md``: from the source checkout when running from one, else the copy installed with the package."""
    checkout_card = Path(__file__).resolve().parent.parent / CARD_NAME
    if checkout_card.is_file():
        return checkout_card
    installed_card = _installed_model_card()
    if installed_card is not None:
        return installed_card
    raise HubError(
        f"{CARD_NAME} not found (neither at {checkout_card} nor installed with the package): reinstall magic-remover, "
        "or run from the project's source checkout (`pip install -e .` in a clone of the repository)."
    )


def refuse_links(directory: Path) -> None:
    """A ``HubError`` naming the first symbolic link inside ``directory``: ``export`` would write through it to the file
    it points at, outside the folder, and ``push`` would upload that file (a token file named README.md, say)."""
    for root, folders, files in os.walk(directory):  # os.walk does not descend into linked folders: they are listed
        for name in sorted(folders + files):
            if os.path.islink(os.path.join(root, name)):
                raise HubError(f"{Path(root) / name} is a symbolic link; export and push use only plain files in "
                               f"{directory}: replace it with the file itself or remove it.")  # fmt: skip


def export(directory, force: bool = False, repo_id: str | None = None, space: bool = False,
           xl: bool = False) -> list[Path]:
    """Writes the code repository into ``directory`` and returns the files written.

    Refuses a directory that exists and is not empty unless ``force``; with ``force`` the exported files are
    overwritten and nothing else in the directory is touched (``push`` uploads only the exported files). With
    ``repo_id`` the README's example names that repository instead of a placeholder; with ``space`` the README
    carries a Space's front matter, so the folder can be uploaded as a Gradio Space. With ``xl`` the repository's
    ``pipeline.py`` is MagicRemoverXLPipeline's file (for SDXL checkpoints), with its sibling modules.
    """
    if xl:
        from .pipeline_magic_remover_xl import write_pipeline_code
    else:
        from .pipeline_magic_remover import write_pipeline_code

    directory = Path(directory)
    card = find_model_card().read_text(encoding="utf-8")  # before anything is written
    if directory.exists() and not directory.is_dir():
        raise HubError(f"{directory} exists and is not a folder.")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise HubError(f"{directory} is not empty; pass --force to overwrite the exported files in it.")
    if directory.is_dir():
        refuse_links(directory)
    if (directory / "model_index.json").exists():
        raise HubError(
            f"{directory} holds a model (model_index.json); export the code into its own folder, or save a model "
            "with its code by `MagicRemoverPipeline.save_pretrained`."
        )
    write_pipeline_code(directory)
    write_space_files(directory)
    if repo_id:
        card = card.replace(REPO_ID_PLACEHOLDER, repo_id)
    (directory / "README.md").write_text(space_readme(card) if space else card, encoding="utf-8")
    return [directory / name for name in code_files(xl)]


def _check_exported(directory: Path, xl: bool = False) -> None:
    missing = [name for name in code_files(xl) if not (directory / name).is_file()]
    if missing:
        raise HubError(
            f"{directory} is not an exported pipeline folder (missing {', '.join(missing)}); "
            f"run `magic-remover hub export {directory}` first, or leave out --dir."
        )


def push(
    repo_id: str,
    revision: str | None = None,
    private: bool | None = None,
    directory=None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload the MagicRemover pipeline code",
    xl: bool = False,
):
    """Creates ``repo_id`` if needed (and the branch ``revision``), then uploads the exported code; returns the commit.

    ``directory`` is a folder written by :func:`export` (uploaded as it is, e.g. with an edited README); without it
    the code is exported into a temporary folder first. Only the exported files are uploaded.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from httpx2 import TransportError

    token = token or get_token()
    if not token:
        raise HubError("No Hugging Face token found: run `hf auth login` or set HF_TOKEN to a token with write access.")
    api = HfApi(endpoint=endpoint, token=token)
    where = api.endpoint
    try:
        with tempfile.TemporaryDirectory(prefix="magic_remover_hub_") as scratch:
            if directory is None:
                folder = Path(scratch) / "code"
                export(folder, repo_id=repo_id, xl=xl)
            else:
                folder = Path(directory)
                _check_exported(folder, xl)
                refuse_links(folder)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                allow_patterns=code_files(xl),
                commit_message=commit_message,
            )
    except OfflineModeIsEnabled:
        raise HubError("HF_HUB_OFFLINE is set; unset it to push.") from None
    except TransportError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HubError(f"Cannot reach the Hub at {where} ({reason}); check the network or HF_ENDPOINT.") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise HubError(
                f"The Hub at {where} refused the token ({status}) for {repo_id}: it needs write access to that "
                "namespace (`hf auth login`, or HF_TOKEN)."
            ) from None
        raise HubError(f"The Hub at {where} answered: {str(error).splitlines()[0]}") from None
    except ValueError as error:  # e.g. the README's metadata rejected by the Hub
        raise HubError(str(error).replace("\n", " ")) from None


def command_export(args) -> int:
    files = export(args.dir, force=args.force, repo_id=args.repo_id, space=args.space, xl=args.xl)
    print(f"wrote {', '.join(f.name for f in files)} to {args.dir}")
    return 0


def command_push(args) -> int:
    info = push(args.repo_id, revision=args.revision, private=True if args.private else None, directory=args.dir,
                xl=args.xl)  # fmt: skip
    print(f"pushed to {info.commit_url}")
    print(
        f"load it with: DiffusionPipeline.from_pretrained({'<SDXL model>' if args.xl else '<SD 1.x/2.x model>'}, "
        f'custom_pipeline="{info.repo_url.repo_id if info.repo_url else args.repo_id}", '
        f'custom_revision="{info.oid}", trust_remote_code=True)'
    )
    return 0


HUB_EXAMPLES = """\
examples:
  magic-remover hub export magic-remover-hub        # pipeline.py, its modules, README.md and the Space's app.py
  magic-remover hub export magic-remover-space --space    # the web page as a Space, uploaded with:
      hf repos create your-name/magic-remover-demo --type space --sdk gradio
      hf upload your-name/magic-remover-demo magic-remover-space . --repo-type space
  magic-remover hub push your-name/magic-remover     # export and upload (token: HF_TOKEN or `hf auth login`)
  magic-remover hub push your-name/magic-remover --revision dev --dir magic-remover-hub
"""


def add_hub_parser(sub) -> argparse.ArgumentParser:
    """Registers ``hub export`` and ``hub push`` on the ``magic-remover`` command's subparsers."""
    hub = sub.add_parser("hub", help="export or push the pipeline code as a Hugging Face Hub repository",
                         epilog=HUB_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = hub.add_subparsers(dest="hub_command", required=True)

    exp = commands.add_parser("export", help="write the Hub repository's files into a folder", epilog=HUB_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    exp.add_argument("dir", help="folder to write (must be empty or absent unless --force)")
    exp.add_argument("--force", action="store_true", help="overwrite the exported files in a non-empty folder")
    exp.add_argument("--repo-id", default=None, help="repository id to name in the README's example")
    exp.add_argument("--space", action="store_true", help="give the README a Gradio Space's front matter (app.py)")
    exp.add_argument("--xl", action="store_true", help="the SDXL pipeline's code (MagicRemoverXLPipeline) as pipeline.py")
    add_common_options(exp)
    exp.set_defaults(func=command_export)

    push_ = commands.add_parser("push", help="create the Hub repository if needed and upload the code",
                                epilog=HUB_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    push_.add_argument("repo_id", help="e.g. your-name/magic-remover")
    push_.add_argument("--revision", default=None, help="branch to push to (created from main if needed)")
    push_.add_argument("--private", action="store_true", help="create the repository private")
    push_.add_argument("--dir", default=None, help="an exported folder to upload as it is (default: export afresh)")
    push_.add_argument("--xl", action="store_true", help="the SDXL pipeline's code (as exported with --xl)")
    add_common_options(push_)
    push_.set_defaults(func=command_push)
    return hub
