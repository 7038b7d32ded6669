"""``magic-remover hub export|push`` and loading the pipeline from a Hub repository, against a stand-in Hub on
127.0.0.1 (tests/hub_stand_in.py): no network, but the real ``huggingface_hub``/``diffusers`` download and upload code.

Loads from the stand-in run in one subprocess whose ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_TOKEN`` are set before
anything is imported (``huggingface_hub`` and ``diffusers`` copy them into module constants at import time); its
results are checked by the separate tests below.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import quick_removal
from diffusers import DiffusionPipeline
from hub_stand_in import HubStandIn

import magic_remover
from magic_remover import MagicRemoverPipeline
from magic_remover.cli import main
from magic_remover.hub import find_model_card

CODE_FILES = {"pipeline.py", "attention_maps.py", "attention_processors.py", "content_initialization.py", "images.py",
              "inputs.py", "inversion.py", "latent_images.py", "model_loading.py", "pipeline_code.py", "removal.py",
              "removal_steps.py", "tokens.py", "README.md"}
SPACE_FILES = {"app.py", "ui.py", "scenes.py", "requirements.txt"}
PACKAGE = Path(magic_remover.__file__).parent
CLIENT_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def hub():
    with HubStandIn() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_unknown_requests(request):
    """A request the stand-in has no route for fails the test that made it, naming the request."""
    yield
    if "hub" in request.fixturenames:
        server = request.getfixturevalue("hub")
        if server.unknown:
            unknown, server.unknown[:] = list(server.unknown), []
            pytest.fail(f"unexpected requests to the stand-in Hub: {unknown}\nall requests:\n{server.report()}")


@pytest.fixture(scope="module")
def code_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "magic-remover"
    assert main(["hub", "export", str(folder)]) == 0
    return folder


# ------------------------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------------------------


def test_export_writes_the_code_and_the_card(code_folder):
    assert {p.name for p in code_folder.iterdir()} == CODE_FILES | SPACE_FILES
    assert (code_folder / "pipeline.py").read_bytes() == Path(magic_remover.PIPELINE_FILE).read_bytes()
    for name in ("attention_processors.py", "content_initialization.py", "images.py", "inversion.py"):
        assert (code_folder / name).read_bytes() == (PACKAGE / name).read_bytes()
    assert (code_folder / "README.md").read_text() == find_model_card().read_text()


def test_export_writes_a_space_app_whose_modules_stand_alone(code_folder):
    import ast
    import configparser

    for name in ("ui.py", "scenes.py"):
        assert (code_folder / name).read_bytes() == (PACKAGE / name).read_bytes()
        tree = ast.parse((code_folder / name).read_text())
        relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        # the Space has no package: only modules the export writes beside this one (ui.py reads uploads with
        # images.py) may come from it, and the folder must hold them
        missing = [module for module in relative if not (code_folder / f"{module}.py").is_file()]
        assert not missing, f"{name} imports from the package ({missing}), which the Space does not have"
    app = (code_folder / "app.py").read_text()
    assert "custom_pipeline=str(HERE)" in app and "from ui import build_app" in app
    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / "setup.cfg")
    needed = config["options"]["install_requires"].split() + config["options.extras_require"]["ui"].split()
    assert (code_folder / "requirements.txt").read_text().split() == needed


def test_export_for_a_space_gives_the_readme_the_spaces_front_matter(tmp_path):
    folder = tmp_path / "space"
    assert main(["hub", "export", str(folder), "--space"]) == 0
    readme = (folder / "README.md").read_text()
    front, body = readme.split("---\n", 2)[1:]
    assert "sdk: gradio\n" in front and "app_file: app.py\n" in front and "library_name" not in front
    assert body.strip() == find_model_card().read_text().split("---\n", 2)[2].strip()


def test_an_installed_package_finds_the_card_in_its_data_files(tmp_path, monkeypatch):
    """A wheel install has no checkout above the package: the card comes from <prefix>/share/magic-remover."""
    from importlib import metadata

    import magic_remover.hub as hub_module

    prefix = tmp_path / "venv"
    package_file = prefix / "lib" / "site-packages" / "magic_remover" / "hub.py"
    installed_card = prefix / "share" / "magic-remover" / "model_card.md"
    for path, text in ((package_file, ""), (installed_card, "# the installed card")):
        path.parent.mkdir(parents=True)
        path.write_text(text)

    class InstalledFile(type(Path())):
        def locate(self):
            return package_file.parent.parent / self

    class Distribution:
        files = [InstalledFile("magic_remover/hub.py"), InstalledFile("../../share/magic-remover/model_card.md")]

    monkeypatch.setattr(hub_module, "__file__", str(package_file))
    monkeypatch.setattr(metadata, "distribution", lambda name: Distribution())
    assert find_model_card().resolve() == installed_card.resolve()

    installed_card.unlink()
    with pytest.raises(hub_module.HubError, match="model_card.md not found"):
        find_model_card()


def test_export_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["hub", "export", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "not empty" in error and "--force" in error and "Traceback" not in error
    assert {p.name for p in folder.iterdir()} == {"notes.txt"}

    (folder / "pipeline.py").write_text("stale")
    assert main(["hub", "export", str(folder), "--force", "--repo-id", "someone/remover"]) == 0
    assert {p.name for p in folder.iterdir()} == CODE_FILES | SPACE_FILES | {"notes.txt"}  # others left alone
    assert (folder / "pipeline.py").read_bytes() == Path(magic_remover.PIPELINE_FILE).read_bytes()
    assert 'custom_pipeline="someone/remover"' in (folder / "README.md").read_text()


def test_exported_folder_loads_as_custom_pipeline(sd_folder, code_folder):
    pipeline = DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline=str(code_folder), trust_remote_code=True)
    assert type(pipeline).__name__ == "MagicRemoverPipeline" and type(pipeline) is not MagicRemoverPipeline
    assert pipeline.unet.config.block_out_channels == [16, 32]
    torch.testing.assert_close(quick_removal(pipeline), quick_removal(MagicRemoverPipeline(**pipeline.components)), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# push errors: one line, no traceback
# ------------------------------------------------------------------------------------------------------------------


def test_push_without_a_token_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["hub", "push", "user/magic-remover"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("magic-remover: error: No Hugging Face token") and "HF_TOKEN" in error
    assert "\n" not in error


def test_push_to_an_unreachable_endpoint_is_one_line(monkeypatch, tmp_path, capsys):
    import socket

    import huggingface_hub.constants as constants

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "harnesses.json"))
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    assert main(["hub", "push", "user/magic-remover"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("magic-remover: error: Cannot reach the Hub at " + dead), error
    assert "\n" not in error and "Traceback" not in error


# ------------------------------------------------------------------------------------------------------------------
# Loading from the (stand-in) Hub, in a subprocess
# ------------------------------------------------------------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import contextlib, io, json, sys, traceback
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, TESTS)
    from diffusers import DiffusionPipeline
    from tiny_components import make_test_image
    from magic_remover import MagicRemoverPipeline
    from magic_remover.cli import main

    results = {}

    def remove(pipeline):
        pipeline.set_progress_bar_config(disable=True)
        return pipeline(image=make_test_image(), prompt="a photo of a red ball on the grass", target="ball",
                        num_inference_steps=3, inversion_method="ddim", output_type="latent").images

    def describe(pipeline):
        latents = remove(pipeline)
        reference = remove(MagicRemoverPipeline(**pipeline.components))  # this installation's code
        return {"class": type(pipeline).__name__, "module": type(pipeline).__module__,
                "is_diffusion_pipeline": isinstance(pipeline, DiffusionPipeline), "shape": list(latents.shape),
                "max_difference_to_package": float((latents - reference).abs().max())}

    def step(name, function):
        try:
            results[name] = {"ok": function()}
        except BaseException as error:
            results[name] = {"error": type(error).__name__, "message": str(error),
                             "traceback": traceback.format_exc()[-3000:]}

    def refused(load):
        def run():
            load()
            return "loaded"
        return run

    step("code_without_trust", refused(lambda: DiffusionPipeline.from_pretrained(
        SD, custom_pipeline="user/magic-remover")))
    step("code", lambda: describe(DiffusionPipeline.from_pretrained(
        SD, custom_pipeline="user/magic-remover", trust_remote_code=True)))

    def push():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["hub", "push", "user/pushed-remover", "--revision", "dev", "--private"])
        return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}

    step("push", push)
    step("pushed", lambda: describe(DiffusionPipeline.from_pretrained(
        SD, custom_pipeline="user/pushed-remover", custom_revision="dev", trust_remote_code=True)))
    step("model_with_code", lambda: describe(DiffusionPipeline.from_pretrained(
        "user/model-with-code", trust_remote_code=True)))
    step("model_with_code_without_trust", refused(lambda: DiffusionPipeline.from_pretrained("user/model-with-code")))
    step("model_with_code_by_class", refused(lambda: MagicRemoverPipeline.from_pretrained("user/model-with-code")))
    json.dump(results, open(OUT, "w"), indent=1)
    """
)


@pytest.fixture(scope="module")
def remote(hub, sd_folder, code_folder, tmp_path_factory):
    """Seeds the stand-in, then runs the client script in a fresh interpreter pointed at it; returns its results."""
    work = tmp_path_factory.mktemp("client")
    hub.add_folder("user/magic-remover", code_folder, message="the exported code")
    with_code = work / "model-with-code"
    MagicRemoverPipeline.from_pretrained(sd_folder).save_pretrained(with_code)
    hub.add_folder("user/model-with-code", with_code, message="a model saved with its code")
    out = work / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "DIFFUSERS_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(work / "hf-home"),  # cache, dynamic modules, token file, xet cache: all isolated
        HF_HUB_OFFLINE="0",
        HF_TOKEN="hf_dummy",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE.parent), env.get("PYTHONPATH")])),
    )
    script = f"TESTS = {str(Path(__file__).parent)!r}\nSD = {str(sd_folder)!r}\nOUT = {str(out)!r}\n" + CLIENT
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=work, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0 and out.is_file(), f"client failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(out.read_text())


def _ok(result):
    assert "ok" in result, f"{result.get('error')}: {result.get('message')}\n{result.get('traceback')}"
    return result["ok"]


def _ran_the_hub_code(result, module_prefix):
    ok = _ok(result)
    assert ok["class"] == "MagicRemoverPipeline" and ok["is_diffusion_pipeline"]
    assert ok["module"].startswith(module_prefix), ok["module"]  # diffusers' dynamic module, not this package
    assert ok["shape"] == [1, 4, 16, 16]  # 32 px, a VAE that halves once
    assert ok["max_difference_to_package"] == 0.0
    return ok


def test_custom_pipeline_from_a_hub_repo_loads_and_runs(hub, remote):
    _ran_the_hub_code(remote["code"], "diffusers_modules.local.user--magic-remover.")
    # the real download path: model info for the commit, then HEAD/GET of pipeline.py and each sibling module
    for name in ("pipeline.py", "attention_processors.py", "inversion.py"):
        assert hub.requested("GET", rf"^/user/magic-remover/resolve/main/{name}$"), hub.report()
    assert hub.requested("GET", r"^/api/models/user/magic-remover$")
    assert hub.head("user/magic-remover") in remote["code"]["ok"]["module"]  # cached under the commit's sha


def test_custom_pipeline_from_the_hub_needs_trust_remote_code(remote):
    result = remote["code_without_trust"]
    assert result.get("error") == "ValueError", result
    assert "trust_remote_code" in result["message"] and "user/magic-remover" in result["message"]


def test_push_creates_the_repo_and_branch_and_uploads_the_export(hub, remote):
    push = _ok(remote["push"])
    assert push["rc"] == 0, push["stderr"]
    repo = hub.repos["user/pushed-remover"]
    assert repo.private and set(repo.branches) == {"main", "dev"}
    files = hub.files("user/pushed-remover", "dev")
    assert set(files) == CODE_FILES | SPACE_FILES and hub.files("user/pushed-remover", "main") == {}
    assert files["pipeline.py"] == Path(magic_remover.PIPELINE_FILE).read_bytes()
    assert 'custom_pipeline="user/pushed-remover"' in files["README.md"].decode()
    assert hub.head("user/pushed-remover", "dev") in push["stdout"]  # the commit to pin with custom_revision
    assert hub.requested("POST", "^/api/repos/create$")
    for call in ("branch", "preupload", "commit"):
        assert hub.requested("POST", f"^/api/models/user/pushed-remover/{call}/dev$"), hub.report()


def test_pushed_code_loads_from_its_branch(remote):
    _ran_the_hub_code(remote["pushed"], "diffusers_modules.local.user--pushed-remover.")


def test_model_repo_saved_with_its_code_loads_with_trust_remote_code(hub, remote):
    # diffusers imports the code of a downloaded model snapshot as a local folder's: the module is
    # diffusers_modules.local.pipeline, shared by every such repo, not one per repo and commit as for custom_pipeline=
    _ran_the_hub_code(remote["model_with_code"], "diffusers_modules.local.pipeline")
    assert hub.requested("GET", r"^/api/models/user/model-with-code/tree/")  # snapshot_download's listing
    assert hub.requested("GET", r"^/user/model-with-code/resolve/[0-9a-f]{40}/unet/diffusion_pytorch_model")


def test_model_repo_with_code_needs_trust_remote_code_even_through_the_class(remote):
    # MagicRemoverPipeline.from_pretrained skips the question only for local folders carrying this exact code
    for name in ("model_with_code_without_trust", "model_with_code_by_class"):
        result = remote[name]
        assert result.get("error") == "ValueError", (name, result)
        assert "trust_remote_code" in result["message"], (name, result["message"])


def test_requests_carry_the_users_token(hub, remote):
    assert "Bearer hf_dummy" in hub.authorizations
