"""How a MagicRemover pipeline is loaded, saved and given its model's tuned settings: a mixin for the pipeline classes.

A model's tuned call settings are part of the pipeline's configuration (``removal_defaults`` in ``model_index.json``,
kept by ``register_to_config`` as ``requires_safety_checker`` is), so every way diffusers builds a pipeline reaches
them: ``from_pretrained`` with or without ``custom_pipeline=``, ``from_pipe`` in either direction. ``from_pipe`` keeps
the source pipeline's dtypes, ``save_pretrained`` writes the pipeline's code beside the weights. The pipeline file is
found from the class (``inspect.getfile``), so each pipeline class saves its own file and its own imports.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging as std_logging
import os
from pathlib import Path

import torch
from diffusers.utils import logging

from .pipeline_code import carries_code, write_code

logger = logging.get_logger(__name__)

#: Where folders written before the settings moved into ``model_index.json`` keep them; still read, with a notice.
LEGACY_DEFAULTS_FILE = "magic_remover_defaults.json"
DEFAULTS_FILE = LEGACY_DEFAULTS_FILE  # the name code written before the move imports

#: ``__call__`` arguments a model cannot set for its users: what a call is about (its inputs) and how its result is
#: returned; a model's settings naming one of them are refused when it is loaded.
PER_CALL_ARGUMENTS = frozenset({
    "image", "prompt", "target", "mask_image", "inversion", "prompt_embeds", "negative_prompt",
    "negative_prompt_embeds", "generator", "output_type", "return_dict", "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
})  # fmt: skip


def check_settings(settings, allowed: frozenset, source: str) -> dict:
    """``settings`` as a new dict once every key is one of ``allowed``; ``source`` says where they came from.

    A ``TypeError`` for anything but a dict with string keys; a ``ValueError`` naming each key a model may not set
    (an input or an output form: ``PER_CALL_ARGUMENTS``) or ``__call__`` does not take, so a typo never passes.
    """
    if not isinstance(settings, dict) or not all(isinstance(key, str) for key in settings):
        raise TypeError(f"{source} must be a dict of `__call__` argument names to values, got {settings!r}.")
    refused = sorted(set(settings) & PER_CALL_ARGUMENTS)
    if refused:
        raise ValueError(
            f"{source} sets {', '.join(f'`{key}`' for key in refused)}, which belong to each call, not to a model: "
            f"remove them ({', '.join(sorted(PER_CALL_ARGUMENTS))} cannot be a model's defaults)."
        )
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"{source} names settings `__call__` does not take: {unknown}; expected some of {sorted(allowed)}.")
    return dict(settings)


def read_settings(folder, allowed: frozenset) -> dict | None:
    """The tuned call settings a local model folder ships: ``removal_defaults`` of its ``model_index.json``, else (a
    folder written before they moved there) its ``magic_remover_defaults.json``, with a one-line notice; ``None``
    when it has neither (a Stable Diffusion checkpoint: the paper's defaults). Checked as :func:`check_settings`."""
    folder = Path(os.fspath(folder))
    index = folder / "model_index.json"
    if index.is_file():
        settings = json.loads(index.read_text()).get("removal_defaults")
        if settings is not None:
            return check_settings(settings, allowed, f"`removal_defaults` in {index}")
    legacy = folder / LEGACY_DEFAULTS_FILE
    if not legacy.is_file():
        return None
    logger.warning(
        f"{legacy}: read as the model's removal settings; this file is superseded by `removal_defaults` in "
        "model_index.json, which `save_pretrained` writes."
    )
    return check_settings(json.loads(legacy.read_text()), allowed, str(legacy))



#: Notices the libraries print while a pipeline is loaded that tell its user nothing, by the logger that prints each
KNOWN_LOADING_NOTICES = {
    # transformers 5 without torchvision, when diffusers looks image-processor classes up by name while loading: the
    # PIL class it falls back to is the one the pipeline uses anyway
    "transformers.utils.import_utils": "requires torchvision (not installed); falling back to",
    # diffusers' ModelMixin.to under from_pipe's dtype cast, about an empty list of modules to keep in float32
    "diffusers.models.modeling_utils": "that should be kept in float32: []",
}


class DropNotice(std_logging.Filter):
    """Drops the records whose message contains ``text``; every other record passes."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: std_logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def quiet_loading():
    """While a pipeline is built: the known notices (``KNOWN_LOADING_NOTICES``) dropped and diffusers' and
    transformers' loading progress bars off; afterwards both as they were, so the user's own settings and every other
    message are untouched. Progress bars are a process-wide switch in both libraries: another thread loading at the
    same moment loses its bar too."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    filters = [(std_logging.getLogger(name), DropNotice(text)) for name, text in KNOWN_LOADING_NOTICES.items()]
    for logger_, notice in filters:
        logger_.addFilter(notice)
    bars = [(library, library.is_progress_bar_enabled()) for library in (diffusers_logging, transformers_logging)]
    for library, _ in bars:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for logger_, notice in filters:
            logger_.removeFilter(notice)
        for library, enabled in bars:
            if enabled:
                library.enable_progress_bar()


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
            defaults = self.removal_defaults
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
        """The arguments a removal call takes."""
        return cls._call_argument_names

    @classmethod
    def settable_arguments(cls) -> frozenset:
        """The call arguments a model's settings may name: all but its inputs and output form."""
        return cls.call_arguments() - PER_CALL_ARGUMENTS

    def register_removal_defaults(self, settings: dict | None) -> None:
        """Checks ``settings`` (``None``: not set; the loaded folder's, if any, else the paper's) and keeps them in the
        pipeline's configuration, where ``save_pretrained`` writes them to ``model_index.json``."""
        if settings is not None:
            settings = check_settings(settings, self.settable_arguments(), "`removal_defaults`")
        self.register_to_config(removal_defaults=settings)

    @property
    def removal_defaults(self) -> dict:
        """The call settings used for every argument a call (or ``invert``) leaves out: the configuration's
        ``removal_defaults`` (``model_index.json``; the embedded model's were tuned by ``benchmarks/tune_embedded.py``).
        Unset, as after ``from_pipe`` of a ``StableDiffusionPipeline``: those of the local folder the components were
        loaded from, else ``{}`` (the paper's defaults, as for Stable Diffusion checkpoints). An explicit argument
        always wins. Assign a dict to change them, ``{}`` to use the paper's."""
        settings = self.config.get("removal_defaults")
        if settings is None:
            folder = self.config.get("_name_or_path")
            settings = read_settings(folder, self.settable_arguments()) if folder and os.path.isdir(folder) else None
            # kept, so a side file's notice comes once and save_pretrained writes what the calls used
            self.register_to_config(removal_defaults={} if settings is None else settings)
        return dict(settings or {})

    @removal_defaults.setter
    def removal_defaults(self, settings: dict) -> None:
        if settings is None:
            raise TypeError("`removal_defaults` must be a dict of `__call__` arguments; assign {} for the paper's.")
        self.register_removal_defaults(settings)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``DiffusionPipeline.from_pretrained``, returning this class.

        A folder written by :meth:`save_pretrained` carries ``pipeline.py``. When that code is byte-identical to this
        installation's, the folder loads as this class (see :meth:`load_config`) and none of its code is imported;
        any other code, and any custom component module, still needs the user's explicit ``trust_remote_code=True``,
        as diffusers requires: trust is never widened. ``removal_defaults=`` replaces the folder's settings. Loads
        quietly (:func:`quiet_loading`).
        """
        with quiet_loading():
            pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipeline, cls) and type(pipeline).__name__ == cls.__name__:
            pipeline = cls(**pipeline.components, **{k: pipeline.config[k] for k in ("requires_safety_checker",
                                                                                    "removal_defaults")})  # fmt: skip
            pipeline.register_to_config(_name_or_path=pretrained_model_name_or_path)
        pipeline.removal_defaults  # read now: a folder's notice belongs to its loading, not to the first call
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
        shared components, as in diffusers. The settings come along as diffusers carries configuration between
        pipelines (a ``StableDiffusionPipeline`` made from this one keeps them as ``_removal_defaults``); a source
        without any gets those of the folder it was loaded from (see :attr:`removal_defaults`).
        """
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs.pop("dtype", None)
            kwargs.pop("torch_dtype", None)
            modules = {name: c for name, c in pipeline.components.items() if isinstance(c, torch.nn.Module)}
            dtypes = {name: next(m.parameters()).dtype for name, m in modules.items() if any(True for _ in m.parameters())}
            main = dtypes.get("unet") or next(iter(dtypes.values()), torch.float32)
            from diffusers.pipelines import pipeline_utils

            kwargs["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = main
            with quiet_loading():
                new_pipeline = super().from_pipe(pipeline, **kwargs)
            for name, dtype in dtypes.items():
                if dtype != main:  # a component the single-dtype cast changed: put it back
                    modules[name].to(dtype=dtype)
        else:
            with quiet_loading():
                new_pipeline = super().from_pipe(pipeline, **kwargs)
        new_pipeline.removal_defaults  # read now, as from_pretrained does
        return new_pipeline

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs):
        """Saves the components as ``StableDiffusionPipeline`` does, plus this pipeline's code.

        The folder gets ``pipeline.py`` and its sibling modules, and ``model_index.json`` names
        ``["pipeline", "MagicRemoverPipeline"]``, so ``DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)`` comes back as this pipeline without the package installed; the tuned settings are
        ``removal_defaults`` in ``model_index.json``. With ``push_to_hub``,
        the code is uploaded together with the weights.
        """
        hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "private", "token", "commit_message") if key in kwargs}
        self.removal_defaults  # settings found in the loaded folder become the configuration's, and are saved with it
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        write_code(save_directory, type(self).__name__, inspect.getfile(type(self)))
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = hub_kwargs.get("repo_id") or Path(save_directory).name
            token = hub_kwargs.get("token")
            repo_id = create_repo(repo_id, exist_ok=True, private=hub_kwargs.get("private"), token=token).repo_id
            upload_folder(repo_id=repo_id, folder_path=save_directory, token=token,
                          commit_message=hub_kwargs.get("commit_message", "Upload MagicRemoverPipeline"))  # fmt: skip
