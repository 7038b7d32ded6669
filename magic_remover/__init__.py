"""MagicRemover: text-guided, tuning-free object removal as a Hugging Face diffusers pipeline.

The public names are imported on first use (PEP 562), so ``import magic_remover`` and ``magic-remover --help`` do not
load torch, diffusers or transformers.
"""

from importlib import import_module
from pathlib import Path

__version__ = "0.1.0"

#: The embedded tiny text-to-image model (diffusers format), trained by ``training/train_tiny_model.py``.
EMBEDDED_MODEL = str(Path(__file__).parent / "models" / "tiny-shapes")

#: The pipeline file to pass as ``custom_pipeline=`` to ``DiffusionPipeline.from_pretrained``.
PIPELINE_FILE = str(Path(__file__).with_name("pipeline_magic_remover.py"))
#: The same for SDXL checkpoints (``MagicRemoverXLPipeline``).
XL_PIPELINE_FILE = str(Path(__file__).with_name("pipeline_magic_remover_xl.py"))

_LAZY = {
    "CrossAttentionCaptureProcessor": "attention_processors",
    "RemovalAttentionState": "attention_processors",
    "SelfAttentionKVSwapProcessor": "attention_processors",
    "attention_energy": "attention_processors",
    "DDIMSchedule": "inversion",
    "MagicRemoverInversion": "inversion",
    "ddim_step": "inversion",
    "MagicRemoverPipeline": "pipeline_magic_remover",
    "MagicRemoverPipelineOutput": "pipeline_magic_remover",
    "MagicRemoverXLPipeline": "pipeline_magic_remover_xl",
    "find_target_tokens": "tokens",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(["EMBEDDED_MODEL", "PIPELINE_FILE", "XL_PIPELINE_FILE", *_LAZY])
