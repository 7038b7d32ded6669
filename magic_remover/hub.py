"""``magic-remover hub export|push``: the pipeline's code as a Hugging Face Hub repository.

The repository holds ``pipeline.py`` (this package's ``pipeline_magic_remover.py``), its sibling modules and a
``README.md`` made from the project's ``model_card.md``. Anyone can then load the pipeline onto any Stable Diffusion
1.x/2.x checkpoint without installing this package::

    DiffusionPipeline.from_pretrained(model, custom_pipeline="<repo id>", custom_revision="<commit>",
                                      trust_remote_code=True)

``push`` uses the token ``huggingface_hub`` already has (``HF_TOKEN`` or ``hf auth login``) and the endpoint it is
configured with (``HF_ENDPOINT``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .cli import CommandError

#: The Hub repository of the pipeline code that the README's example names until a repo id is known.
REPO_ID_PLACEHOLDER = "<this repo id>"
CARD_NAME = "model_card.md"


class HubError(CommandError):
    """A problem with exporting or pushing, printed as one line without a traceback."""


def code_files() -> list[str]:
    """The files of the code repository, relative to its root."""
    from .pipeline_magic_remover import SIBLING_MODULES

    return ["pipeline.py", *SIBLING_MODULES, "README.md"]


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


def export(directory, force: bool = False, repo_id: str | None = None) -> list[Path]:
    """Writes the code repository into ``directory`` and returns the files written.

    Refuses a directory that exists and is not empty unless ``force``; with ``force`` the exported files are
    overwritten and nothing else in the directory is touched (``push`` uploads only the exported files). With
    ``repo_id`` the README's example names that repository instead of a placeholder.
    """
    from .pipeline_magic_remover import write_pipeline_code

    directory = Path(directory)
    card = find_model_card().read_text(encoding="utf-8")  # before anything is written
    if directory.exists() and not directory.is_dir():
        raise HubError(f"{directory} exists and is not a folder.")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise HubError(f"{directory} is not empty; pass --force to overwrite the exported files in it.")
    if (directory / "model_index.json").exists():
        raise HubError(
            f"{directory} holds a model (model_index.json); export the code into its own folder, or save a model "
            "with its code by `MagicRemoverPipeline.save_pretrained`."
        )
    write_pipeline_code(directory)
    if repo_id:
        card = card.replace(REPO_ID_PLACEHOLDER, repo_id)
    (directory / "README.md").write_text(card, encoding="utf-8")
    return [directory / name for name in code_files()]


def _check_exported(directory: Path) -> None:
    missing = [name for name in code_files() if not (directory / name).is_file()]
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
                export(folder, repo_id=repo_id)
            else:
                folder = Path(directory)
                _check_exported(folder)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                allow_patterns=code_files(),
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
    files = export(args.dir, force=args.force, repo_id=args.repo_id)
    print(f"wrote {', '.join(f.name for f in files)} to {args.dir}")
    return 0


def command_push(args) -> int:
    info = push(args.repo_id, revision=args.revision, private=True if args.private else None, directory=args.dir)
    print(f"pushed to {info.commit_url}")
    print(
        "load it with: DiffusionPipeline.from_pretrained(<SD 1.x/2.x model>, "
        f'custom_pipeline="{info.repo_url.repo_id if info.repo_url else args.repo_id}", '
        f'custom_revision="{info.oid}", trust_remote_code=True)'
    )
    return 0


HUB_EXAMPLES = """\
examples:
  magic-remover hub export magic-remover-hub        # pipeline.py, its modules and README.md, ready to upload
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
    exp.set_defaults(func=command_export)

    push_ = commands.add_parser("push", help="create the Hub repository if needed and upload the code",
                                epilog=HUB_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    push_.add_argument("repo_id", help="e.g. your-name/magic-remover")
    push_.add_argument("--revision", default=None, help="branch to push to (created from main if needed)")
    push_.add_argument("--private", action="store_true", help="create the repository private")
    push_.add_argument("--dir", default=None, help="an exported folder to upload as it is (default: export afresh)")
    push_.set_defaults(func=command_push)
    return hub
