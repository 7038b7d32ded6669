"""`benchmarks/removal.py --quick` end to end on the embedded model (two scenes, few steps)."""

import subprocess
import sys
from pathlib import Path

import pytest

import magic_remover

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (Path(magic_remover.EMBEDDED_MODEL) / "model_index.json").is_file(),
                    reason="the embedded model has not been trained into this checkout")  # fmt: skip
def test_quick_removal_benchmark_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "removal.py"), "--quick", "--scenes", "2", "--steps", "4",
         "--results", str(tmp_path)],  # fmt: skip
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "removal.md").read_text()
    for method in ("MagicRemover (text only)", "MagicRemover, protect off", "LEDITS++", "Prompt-to-Prompt", "Blended latent diffusion", "OpenCV Telea",
                   "Reconstruction only"):  # fmt: skip
        assert method in table
    assert (tmp_path / "removal.png").stat().st_size > 0
