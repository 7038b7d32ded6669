"""Loading: from_pretrained, custom_pipeline=, from_pipe; components shared, nothing mutated."""

from pathlib import Path

import pytest
import torch
from conftest import assert_same_state, quick_removal, snapshot
from diffusers import DiffusionPipeline, StableDiffusionPipeline

import magic_remover
from magic_remover import MagicRemoverPipeline
from magic_remover.pipeline_magic_remover import SIBLING_MODULES


def test_loads_through_custom_pipeline_file(sd_folder, pipe):
    pipeline = DiffusionPipeline.from_pretrained(
        sd_folder, custom_pipeline=magic_remover.PIPELINE_FILE, trust_remote_code=True
    )
    assert type(pipeline).__name__ == "MagicRemoverPipeline"
    direct = MagicRemoverPipeline.from_pretrained(sd_folder)
    # both loaders give the weights the folder was saved from, bit for bit (`pipe` is built from the same tiny
    # components) ...
    for loaded in (pipeline, direct):
        for name in ("unet", "vae", "text_encoder"):
            mine, theirs = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine), name
    # ... and the same removal; not bit for bit: weights memory-mapped from safetensors are not 64-byte aligned, and on
    # some CPUs (AMD EPYC here) oneDNN then takes kernels that round differently (measured: 3.6e-5 at most)
    expected = quick_removal(pipe)
    torch.testing.assert_close(quick_removal(pipeline), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(quick_removal(direct), expected, rtol=0, atol=1e-4)


def test_pipeline_file_defines_exactly_one_pipeline_and_imports_siblings_relatively():
    import ast

    tree = ast.parse(open(magic_remover.PIPELINE_FILE).read())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    absolute = [n for n in imports if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module.startswith("magic_remover")]
    absolute += [n for n in imports if isinstance(n, ast.Import) and any(a.name.startswith("magic_remover") for a in n.names)]
    assert not absolute
    from magic_remover.pipeline_magic_remover import SIBLING_MODULES

    # every sibling it imports travels with it (custom_pipeline, save_pretrained, the Hub repo)
    # (the modules it imports directly, and theirs: the transitive set, as diffusers copies it; test_pipeline_code)
    assert {n.module for n in imports if isinstance(n, ast.ImportFrom) and n.level == 1} <= {
        name.removesuffix(".py") for name in SIBLING_MODULES
    } == {"attention_maps", "attention_processors", "content_initialization", "images", "inputs", "inversion",
          "latent_images", "model_loading", "pipeline_code", "removal", "removal_steps", "tokens"}
    pipelines = [c for c in tree.body if isinstance(c, ast.ClassDef) and any(
        getattr(b, "id", None) == "DiffusionPipeline" for b in c.bases)]  # fmt: skip
    assert [c.name for c in pipelines] == ["MagicRemoverPipeline"]


def test_from_pretrained_round_trip(sd_folder, tmp_path):
    pipeline = MagicRemoverPipeline.from_pretrained(sd_folder)
    pipeline.save_pretrained(tmp_path / "remover")
    again = MagicRemoverPipeline.from_pretrained(tmp_path / "remover")
    torch.testing.assert_close(quick_removal(pipeline), quick_removal(again))


def test_from_pipe_shares_components_and_mutates_nothing(sd_folder):
    sd = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    before = snapshot(sd)
    remover = MagicRemoverPipeline.from_pipe(sd)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(remover, name) is getattr(sd, name), name
    quick_removal(remover)
    assert_same_state(before, snapshot(sd))
    assert type(StableDiffusionPipeline.from_pipe(remover)).__name__ == "StableDiffusionPipeline"


def test_saved_folder_carries_its_code_and_loads_without_the_package(sd_folder, tmp_path):
    pipeline = MagicRemoverPipeline.from_pretrained(sd_folder)
    folder = tmp_path / "with-code"
    pipeline.save_pretrained(folder)
    assert {"pipeline.py", "attention_processors.py", "images.py", "inversion.py"} <= {p.name for p in folder.iterdir()}
    loaded = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded).__name__ == "MagicRemoverPipeline" and type(loaded) is not MagicRemoverPipeline
    torch.testing.assert_close(quick_removal(loaded), quick_removal(pipeline))
    # the code saved is this package's, and the loaded copy saves it again unchanged
    package = Path(magic_remover.PIPELINE_FILE).parent
    sources = {"pipeline.py": Path(magic_remover.PIPELINE_FILE)} | {n: package / n for n in SIBLING_MODULES}
    loaded.save_pretrained(tmp_path / "again")
    for saved in (folder, tmp_path / "again"):
        for name, source in sources.items():
            assert (saved / name).read_bytes() == source.read_bytes(), (saved, name)


def test_saved_folder_with_foreign_code_still_needs_trust(sd_folder, tmp_path):
    pipeline = MagicRemoverPipeline.from_pretrained(sd_folder)
    folder = tmp_path / "edited"
    pipeline.save_pretrained(folder)
    (folder / "pipeline.py").write_text((folder / "pipeline.py").read_text() + "\n# edited by someone else\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        MagicRemoverPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder)
