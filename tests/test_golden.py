"""The removal's outputs are bit-identical to the recorded golden ones (``tests/golden/record.py``).

Recorded before the core was restructured (issue 26): images, attention maps, reconstructions, per-step target
attention, inversion latents and null embeddings, and the number of UNet calls and rows, of about twenty calls that
use every option and every inversion method, on tiny random components and on the embedded model. ``torch.equal``,
not a tolerance: moving code must not change a single floating-point operation. The recording is this machine's
(CPU, one thread); on other hardware or library versions re-record first (see ``record.py``).
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "golden"))

from record import GOLDEN_FILE, run_all  # noqa: E402


@pytest.fixture(scope="module")
def outputs():
    return run_all()


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN_FILE))


def test_the_same_outputs_are_produced(outputs, golden):
    assert outputs.keys() == golden.keys()


def test_every_output_is_bit_identical(outputs, golden):
    differing = [key for key in golden if key in outputs and not torch.equal(outputs[key], golden[key])]
    assert not differing, f"{len(differing)} of {len(golden)} outputs changed: {differing[:12]}"


def test_the_golden_set_covers_every_inversion_method_and_counts_unet_passes(golden):
    from magic_remover.inversion import INVERSION_METHODS

    names = {key.split("/")[0] for key in golden}
    assert {method.replace("-", "_") for method in INVERSION_METHODS} <= names
    assert len(names) >= 20
    passes = [golden[key] for key in golden if key.endswith("/unet_passes")]
    assert len(passes) == len(names) and all(p[0] > 0 for p in passes)
