"""The README's Python snippets run as written on the embedded model (issue 24).

What cannot run offline is substituted, each substitution asserted to find its text so a README edit cannot slip past:
the Hub model ids become the embedded model, the Hub code repo a local folder holding the same exported code (a local
folder has no revisions, so its ``custom_revision=`` line goes), ``cuda``/float16 become the CPU and float32, and the
photo, captions and target words become a demo scene's (the embedded model knows shapes, not dogs). The last snippet
(inpainting a cat after the removal) needs two more Hub models, 9-channel inpainting UNets with no embedded
counterpart, and is not run; nor is the SDXL snippet (no SDXL model is embedded: `tests/test_xl_pipeline.py` runs the
same loading routes on tiny SDXL components).
"""

import re
from pathlib import Path

import pytest

from magic_remover import EMBEDDED_MODEL, PIPELINE_FILE
from magic_remover.pipeline_magic_remover import write_pipeline_code
from magic_remover.scenes import make_scene

README = Path(__file__).resolve().parents[1] / "README.md"
# Hub-only inpainting models, and SDXL (no SDXL model is embedded; the XL pipeline's loading routes are tested on tiny
# SDXL components in test_xl_pipeline.py), see the docstring
NOT_RUN = ("StableDiffusionInpaintPipeline", "MagicRemoverXLPipeline")


def python_snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if not any(name in block for name in NOT_RUN)]


def substituted(snippet: str, substitutions: list[tuple[str, str]]) -> str:
    for old, new in substitutions:
        snippet = snippet.replace(old, new)
    return snippet


def test_the_readme_snippets_run_on_the_embedded_model(tmp_path, monkeypatch):
    scene = make_scene(3, size=64, num_objects=2)
    first, second = scene.objects[0].shape, scene.objects[1].shape
    scene.image.save(tmp_path / "dog_on_grass.png")
    write_pipeline_code(tmp_path / "hub-code")
    substitutions = [
        ('"stable-diffusion-v1-5/stable-diffusion-v1-5"', repr(EMBEDDED_MODEL)),
        ('"stabilityai/stable-diffusion-2-1-base"', repr(EMBEDDED_MODEL)),
        ('"path/to/magic_remover/pipeline_magic_remover.py"', repr(PIPELINE_FILE)),
        ('"your-name/magic-remover"', repr(str(tmp_path / "hub-code"))),
        ('    custom_revision="<commit printed by hub push>",  # pin the code you reviewed\n', ""),
        ("torch.float16", "torch.float32"),
        ('.to("cuda")', '.to("cpu")'),
        ('"a photo of a dog and a ball on the grass"', repr(scene.caption)),
        ('"a photo of a dog on the grass"', repr(scene.caption)),
        ('target="ball"', f"target={second!r}"),
        ('target="dog"', f"target={first!r}"),
    ]
    snippets = python_snippets()
    assert len(snippets) == 4
    text = "".join(snippets)
    missing = [old for old, _ in substitutions if old not in text]
    assert not missing, f"the README no longer holds {missing}: update this test's substitutions"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(substituted(snippet, substitutions), str(README), "exec"), namespace)  # noqa: S102
    # what the first snippet promised: two removals from one inversion, the inversion saved
    assert namespace["no_ball"].size == namespace["no_dog"].size == scene.image.size
    assert (tmp_path / "no_dog.png").is_file() and (tmp_path / "dog_and_ball.inversion.safetensors").is_file()
    assert type(namespace["pipe"]).__name__ == "MagicRemoverPipeline"
    assert namespace["pipe"].removal_defaults  # the Hub-code route reaches the model's settings


@pytest.mark.parametrize("deprecated", ["torch_dtype="])
def test_the_readme_uses_diffusers_current_argument_names(deprecated):
    assert deprecated not in "".join(re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S))
