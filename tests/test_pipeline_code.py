"""The code that travels with a saved model or a Hub repo is exactly what the pipeline file imports (issue 26)."""

import sys
from pathlib import Path

import magic_remover
from magic_remover.pipeline_code import relative_imports
from magic_remover.pipeline_magic_remover import SIBLING_MODULES, write_pipeline_code

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from code_shape import import_cycles, module_imports  # noqa: E402


def test_copied_modules_are_the_pipeline_files_transitive_relative_imports():
    """Checked against diffusers' own reading of the file (``get_relative_import_files``, what ``custom_pipeline=``
    copies into its module cache), not against our parser."""
    from diffusers.utils.dynamic_modules_utils import get_relative_import_files, get_relative_imports

    theirs = {Path(path).name for path in get_relative_import_files(magic_remover.PIPELINE_FILE)}
    assert set(SIBLING_MODULES) == theirs
    # diffusers copies only the file's direct relative imports (`check_imports`): they must be the whole closure
    assert {name + ".py" for name in get_relative_imports(magic_remover.PIPELINE_FILE)} == theirs
    assert len(SIBLING_MODULES) == len(set(SIBLING_MODULES))


def test_relative_imports_follow_imports_of_imports(tmp_path):
    (tmp_path / "main.py").write_text("from .a import x\n\ndef f():\n    from .b import y\n")
    (tmp_path / "a.py").write_text("from .c import z\nimport os\n")
    (tmp_path / "b.py").write_text("from .a import x\n")
    (tmp_path / "c.py").write_text("from . import d\n")
    assert relative_imports(tmp_path / "main.py") == ["a.py", "b.py", "c.py"]


def test_export_writes_the_pipeline_and_exactly_its_modules(tmp_path):
    write_pipeline_code(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"pipeline.py", *SIBLING_MODULES}
    package = Path(magic_remover.PIPELINE_FILE).parent
    for name in SIBLING_MODULES:
        assert (tmp_path / name).read_bytes() == (package / name).read_bytes()


def test_the_core_has_no_import_circle():
    """The pipeline file and every module it brings along import no module that imports them back."""
    graph = module_imports()
    core = {"pipeline_magic_remover", *(name.removesuffix(".py") for name in SIBLING_MODULES)}
    cycles = import_cycles({module: graph[module] & core for module in core})
    assert cycles == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
