"""MagicRemover: text-guided, tuning-free object removal as a Hugging Face diffusers pipeline."""

from pathlib import Path

from .attention_processors import (
    CrossAttentionCaptureProcessor,
    RemovalAttentionState,
    SelfAttentionKVSwapProcessor,
    attention_energy,
)
from .inversion import DDIMSchedule, MagicRemoverInversion, ddim_step
from .pipeline_magic_remover import MagicRemoverPipeline, MagicRemoverPipelineOutput, find_target_tokens

__version__ = "0.1.0"

#: The embedded tiny text-to-image model (diffusers format), trained by ``training/train_tiny_model.py``.
EMBEDDED_MODEL = str(Path(__file__).parent / "models" / "tiny-shapes")

#: The pipeline file to pass as ``custom_pipeline=`` to ``DiffusionPipeline.from_pretrained``.
PIPELINE_FILE = str(Path(__file__).with_name("pipeline_magic_remover.py"))

__all__ = [
    "CrossAttentionCaptureProcessor",
    "DDIMSchedule",
    "EMBEDDED_MODEL",
    "MagicRemoverInversion",
    "MagicRemoverPipeline",
    "MagicRemoverPipelineOutput",
    "PIPELINE_FILE",
    "RemovalAttentionState",
    "SelfAttentionKVSwapProcessor",
    "attention_energy",
    "ddim_step",
    "find_target_tokens",
]
