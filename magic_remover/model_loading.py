"""How a MagicRemover pipeline is loaded, saved and given its model's tuned settings: a mixin for the pipeline classes.

``from_pretrained`` reads the model folder's tuned call settings (``magic_remover_defaults.json``), ``from_pipe`` keeps
the source pipeline's dtypes, ``save_pretrained`` writes the pipeline's code beside the weights. The pipeline file is
found from the class (``inspect.getfile``), so each pipeline class saves its own file and its own imports.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path

import torch

from .pipeline_code import carries_code, write_code

DEFAULTS_FILE = "magic_remover_defaults.json"


def read_settings(folder, known: frozenset) -> dict:
    """The tuned call settings a model folder ships in ``magic_remover_defaults.json`` (``{}`` without one).

    Keys are ``__call__`` argument names; an unknown key is a ``ValueError`` naming the file, so a typo never passes
    silently. Stable Diffusion checkpoints carry no such file and keep the paper's defaults.
    """
    path = Path(os.fspath(folder)) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    settings = json.loads(path.read_text())
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a JSON object of `__call__` arguments, got {type(settings).__name__}.")
    check_settings(settings, known, str(path))
    return settings


#: ``__call__`` arguments that are a call's own data or output form, never a model's tuned setting
PER_CALL_ARGUMENTS = frozenset({
    "image", "prompt", "target", "mask_image", "inversion", "generator", "prompt_embeds", "output_type", "return_dict",
    "callback_on_step_end", "callback_on_step_end_tensor_inputs",
})  # fmt: skip


def check_settings(settings: dict, known: frozenset, where: str) -> None:
    """A model's settings name only ``__call__`` arguments (a typo never passes silently), and none of a call's own
    data or output form (``PER_CALL_ARGUMENTS``: a default ``output_type`` would break every caller)."""
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{where} names settings `__call__` does not take: {unknown}; expected a subset of {sorted(known)}.")
    per_call = sorted(set(settings) & PER_CALL_ARGUMENTS)
    if per_call:
        raise ValueError(
            f"{where} sets `{per_call[0]}`, which belongs to each call, not to a model: remove it "
            f"({', '.join(sorted(PER_CALL_ARGUMENTS))} cannot be a model's defaults)."
        )


def with_model_defaults(renamed: dict | None = None):
    """Decorator: arguments the caller did not pass take the loaded model's tuned values (``removal_defaults``).

    An explicit argument always wins; ``renamed`` maps a settings key to this method's own name for it (``invert``
    calls the inversion method ``method``). During the call ``self._defaults_filled`` names the arguments filled in,
    so a warning meant for a user's own argument ("it has no effect here") is not raised for a model's setting.
    """
    renamed = renamed or {}

    def decorate(method):
        signature = inspect.signature(method)

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            defaults = getattr(self, "_removal_defaults", None)
            filled = []
            if defaults:
                passed = signature.bind_partial(self, *args, **kwargs).arguments
                for key, value in defaults.items():
                    name = renamed.get(key, key)
                    if name in signature.parameters and name not in passed:
                        kwargs[name] = value
                        filled.append(name)
            previous = getattr(self, "_defaults_filled", frozenset())
            self._defaults_filled = frozenset(filled)
            try:
                return method(self, *args, **kwargs)
            finally:
                self._defaults_filled = previous

        return wrapper

    return decorate


class MagicRemoverLoadingMixin:
    """``from_pretrained``, ``from_pipe``, ``save_pretrained`` and ``removal_defaults`` for a pipeline class; listed
    before ``DiffusionPipeline`` among its bases."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            # read once from the signature: a wrapper patched onto `__call__` later, as tests and profilers do, must
            # not change which settings a model folder may name
            cls._call_argument_names = frozenset(inspect.signature(cls.__call__).parameters) - {"self"}

    @classmethod
    def call_arguments(cls) -> frozenset:
        """The arguments a removal call takes: the keys a model's settings may name."""
        return cls._call_argument_names

    @property
    def removal_defaults(self) -> dict:
        """The call settings used for every argument a call leaves out: those the model folder ships in
        ``magic_remover_defaults.json`` (read by ``from_pretrained``; the embedded model's were tuned by
        ``benchmarks/tune_embedded.py``), else ``{}`` (the paper's defaults, as for Stable Diffusion checkpoints).
        An explicit argument always wins. Assign a dict to change them, ``{}`` to use the paper's."""
        return dict(getattr(self, "_removal_defaults", {}) or {})

    @removal_defaults.setter
    def removal_defaults(self, settings: dict) -> None:
        if not isinstance(settings, dict):
            raise TypeError(f"`removal_defaults` must be a dict of `__call__` arguments, got {type(settings).__name__}.")
        check_settings(settings, self.call_arguments(), "`removal_defaults`")
        self._removal_defaults = dict(settings)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``DiffusionPipeline.from_pretrained``, returning this class.

        A folder written by :meth:`save_pretrained` carries ``pipeline.py``. When that code is byte-identical to this
        installation's, the folder loads as this class (see :meth:`load_config`) and none of its code is imported;
        any other code, and any custom component module, still needs the user's explicit ``trust_remote_code=True``,
        as diffusers requires: trust is never widened.
        """
        folder = Path(os.fspath(pretrained_model_name_or_path))
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipeline, cls) and type(pipeline).__name__ == cls.__name__:
            pipeline = cls(**pipeline.components)
        if folder.is_dir():  # the model's tuned settings, used for every argument a call leaves out
            pipeline._removal_defaults = read_settings(folder, cls.call_arguments())
        return pipeline

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``ConfigMixin.load_config``; a local folder that names ``["pipeline", <this class>]`` and carries this
        installation's exact code gets this class's plain name, so diffusers uses this class instead of importing the
        folder's copy. Trust is not widened: custom component modules still need ``trust_remote_code=True``."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        folder = Path(os.fspath(pretrained_model_name_or_path))
        if (config.get("_class_name") == ["pipeline", cls.__name__] and folder.is_dir()
                and carries_code(folder, inspect.getfile(cls))):  # fmt: skip
            config["_class_name"] = cls.__name__
        return loaded

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """``DiffusionPipeline.from_pipe`` that leaves the source pipeline's components as they are.

        diffusers' ``from_pipe`` ends with ``new_pipeline.to(dtype=dtype or torch.float32)`` on the components it
        shares, casting the *source* pipeline in place (a float16 pipeline becomes float32). Without ``dtype`` (or
        ``torch_dtype``) this override keeps every shared component's own dtype; asking for a dtype still casts the
        shared components, as in diffusers.
        """
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs.pop("dtype", None)
            kwargs.pop("torch_dtype", None)
            modules = {name: c for name, c in pipeline.components.items() if isinstance(c, torch.nn.Module)}
            dtypes = {name: next(m.parameters()).dtype for name, m in modules.items() if any(True for _ in m.parameters())}
            main = dtypes.get("unet") or next(iter(dtypes.values()), torch.float32)
            from diffusers.pipelines import pipeline_utils

            kwargs["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = main
            new_pipeline = super().from_pipe(pipeline, **kwargs)
            for name, dtype in dtypes.items():
                if dtype != main:  # a component the single-dtype cast changed: put it back
                    modules[name].to(dtype=dtype)
            return new_pipeline
        return super().from_pipe(pipeline, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs):
        """Saves the components as ``StableDiffusionPipeline`` does, plus this pipeline's code.

        The folder gets ``pipeline.py`` and its sibling modules, and ``model_index.json`` names
        ``["pipeline", "MagicRemoverPipeline"]``, so ``DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)`` comes back as this pipeline without the package installed. With ``push_to_hub``,
        the code is uploaded together with the weights.
        """
        hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "private", "token", "commit_message") if key in kwargs}
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        write_code(save_directory, type(self).__name__, inspect.getfile(type(self)))
        if self.removal_defaults:  # the tuned settings travel with the weights
            (Path(save_directory) / DEFAULTS_FILE).write_text(json.dumps(self.removal_defaults, indent=2) + "\n")
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = hub_kwargs.get("repo_id") or Path(save_directory).name
            token = hub_kwargs.get("token")
            repo_id = create_repo(repo_id, exist_ok=True, private=hub_kwargs.get("private"), token=token).repo_id
            upload_folder(repo_id=repo_id, folder_path=save_directory, token=token,
                          commit_message=hub_kwargs.get("commit_message", "Upload MagicRemoverPipeline"))  # fmt: skip
