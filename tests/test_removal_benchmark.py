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


@pytest.mark.skipif(not (Path(magic_remover.EMBEDDED_MODEL) / "model_index.json").is_file(),
                    reason="the embedded model has not been trained into this checkout")  # fmt: skip
def test_a_shard_and_a_later_run_adding_a_method_make_one_table(tmp_path):
    def removal(*extra):
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "removal.py"), "--scenes", "5", "--steps", "2",
             "--results", str(tmp_path), *extra],  # fmt: skip
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return [line for line in done.stdout.splitlines() if line.startswith("[")]

    first = removal("--methods", "Telea", "--shard", "0/2")  # scenes 0, 2, 4 of 5
    assert len(first) == 3 and not (tmp_path / "removal.md").exists()  # the table waits for the other scenes
    second = removal("--methods", "Telea,truth")
    assert len(second) == 5  # every scene gets the added method ...
    assert sum("Telea" in line for line in second) == 2  # ... and only the two the shard left get Telea
    table = (tmp_path / "removal.md").read_text()
    for method in ("OpenCV Telea + GT mask", "Ground truth (the scene without the target)"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        assert "| opaque | 1 |" in row
    assert table.count("| all | 5 |") == 2
    assert not list(tmp_path.glob("removal_checkpoint_*"))  # a finished table leaves no checkpoint
