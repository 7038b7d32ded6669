"""The web page (``magic-remover ui``): its handler and form logic directly, and the page end to end in a real
browser (Debian's chromium through chromium-driver, driven by selenium) against the command run as a user runs it."""

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_components import make_test_image, tiny_components

import magic_remover
from magic_remover import MagicRemoverPipeline
from magic_remover.cli import build_parser, main
from magic_remover.images import psnr
from magic_remover.scenes import make_scene
from magic_remover.ui import (
    DEMO_OBJECTS,
    DEMO_SEED,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    PLACEHOLDER_CAPTION,
    QUEUE_SIZE,
    StepProgress,
    build_app,
    demo_scene,
    launch,
    mask_option,
    preselected_target,
    target_choices,
)

gr = pytest.importorskip("gradio", reason='the web page needs the ui extra: pip install "magic-remover[ui]"')

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of a red ball on the grass"
SERVER_START_S = 120
REMOVAL_S = 90
VIEWPORT = (1400, 900)  # a laptop's browser window: the results must show in it without scrolling


# ------------------------------------------------------------------------------------------------------------------
# the form's logic and the handler, without a browser
# ------------------------------------------------------------------------------------------------------------------


def test_target_choices_are_the_captions_content_words_in_order():
    assert target_choices("A photo of a dog and a ball on the grass, and a dog") == ["dog", "ball", "grass"]
    assert target_choices("a red circle and a blue square on a striped background") == [
        "red", "circle", "blue", "square", "striped"
    ]  # fmt: skip
    assert target_choices("") == [] and target_choices(None) == []


def test_the_mask_option_sets_both_settings_the_embedded_defaults_use():
    from magic_remover.cli import removal_settings

    _, embedded = removal_settings(None)
    on = mask_option(True)
    assert {k: embedded[k] for k in on} == on  # the shipped defaults are the option turned on
    assert mask_option(False) == {k: False for k in on}


class RecordingPipeline:
    """The tiny pipeline, recording the images it is called with (the page's work, as the model sees it)."""

    def __init__(self, pipeline):
        self.wrapped, self.images = pipeline, []

    def __getattr__(self, name):
        return getattr(self.wrapped, name)

    def __call__(self, **kwargs):
        self.images.append(kwargs["image"])
        return self.wrapped(**kwargs)


@pytest.fixture(scope="module")
def tiny_app():
    pipeline = RecordingPipeline(MagicRemoverPipeline(**tiny_components()))
    loads = []

    def load():
        loads.append(1)
        return pipeline

    app = build_app(load, settings={"inversion_method": "ddim"}, steps=3)
    return app, pipeline, loads


@pytest.fixture
def image_file(tmp_path):
    """The test image as an upload: the page reads uploads from files."""
    path = tmp_path / "upload.png"
    make_test_image().save(path)
    return str(path)


def test_the_page_builds_without_loading_the_model_and_the_handler_returns_the_three_images(tiny_app, image_file):
    app, pipeline, loads = tiny_app
    assert isinstance(app, gr.Blocks)
    image = make_test_image()
    result, mask, reconstruction, mask_file = app.remover(image_file, PROMPT, "ball", 0.8, 3, False, 0)
    downloaded = np.asarray(Image.open(mask_file))  # read before the next removal replaces it
    result2, *_ = app.remover(image_file, PROMPT, "ball", 0.8, 3, False, 0)
    assert len(loads) == 1  # loaded once, at the first removal
    assert result.size == reconstruction.size == mask.size == image.size and mask.mode == "L"
    assert np.array_equal(np.asarray(result), np.asarray(result2))  # the seed makes it reproducible
    expected = pipeline.wrapped(image=image, prompt=PROMPT, target="ball", num_inference_steps=3,
                                inversion_method="ddim", generator=torch.Generator().manual_seed(0),
                                **mask_option(False))  # fmt: skip
    assert np.array_equal(np.asarray(result), np.asarray(expected.images[0]))
    assert np.array_equal(np.asarray(mask), np.round(np.clip(expected.attention_maps[0], 0, 1) * 255).astype(np.uint8))
    assert Path(mask_file).name == "ball_mask.png" and np.array_equal(downloaded, np.asarray(mask))


@pytest.mark.parametrize(
    "image, prompt, target, steps, seed, message",
    [
        (None, PROMPT, "ball", 3, 0, "Upload an image"),
        ("image", "  ", "ball", 3, 0, "caption"),
        ("image", PROMPT, None, 3, 0, "Choose the word"),
        ("image", PROMPT, "ball", 0, 0, "steps"),
        ("image", PROMPT, "ball", 101, 0, "steps must be a whole number from 1 to 100"),
        ("image", PROMPT, "ball", 3, 2**64, "seed must be a whole number"),
        ("image", PROMPT, "elephant", 3, 0, "'elephant' does not occur in the prompt"),  # the pipeline's own check
        ("not-an-image", PROMPT, "ball", 3, 0, "not an image this page can read"),
        # what an API caller may send in the form's place (the event takes its inputs as sent)
        ({"path": None, "url": "data:image/png;base64,iVBORw0KGgo="}, PROMPT, "ball", 3, 0, "not inline data"),
        ("image", ["a", "list"], "ball", 3, 0, "the caption must be text"),
        ("image", PROMPT, "ball", float("inf"), 0, "steps must be a whole number"),
        ("image", PROMPT, "ball", "3", 0, "steps must be a whole number"),
        ("image", PROMPT, "ball", 3, float("nan"), "seed must be a whole number"),
        ("image", PROMPT, "ball", 3, 1.5, "seed must be a whole number"),
    ],
)
def test_bad_input_is_a_message_on_the_page_without_a_traceback(tiny_app, image_file, tmp_path, image, prompt, target,
                                                                steps, seed, message):  # fmt: skip
    app, pipeline, _ = tiny_app
    if image == "not-an-image":
        image = tmp_path / "notes.png"
        image.write_text("not a picture")
    image = image_file if image == "image" else image
    with pytest.raises(gr.Error, match=message) as raised:
        app.remover(image, prompt, target, 0.8, steps, False, seed)
    assert raised.value.print_exception is False  # Gradio prints no traceback for it
    assert raised.value.__cause__ is None and "\n" not in str(raised.value)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG of a few hundred bytes whose header claims ``width x height`` pixels (its data is a 1x1 image's)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [8000, 200_000])
def test_an_upload_claiming_too_many_pixels_is_refused_in_one_line_before_decoding(tiny_app, tmp_path, monkeypatch,
                                                                                   side):  # fmt: skip
    app, pipeline, _ = tiny_app
    bomb = _png_claiming(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 1000
    calls = len(pipeline.images)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the upload was decoded")

    monkeypatch.setattr("magic_remover.ui.load_image_rgb", no_decoding)
    with pytest.raises(gr.Error, match="too large|megapixels") as raised:
        app.remover(str(bomb), PROMPT, "ball", 0.8, 3, False, 0)
    assert "\n" not in str(raised.value) and raised.value.print_exception is False
    assert len(pipeline.images) == calls  # no model pass either
    assert MAX_UPLOAD_PIXELS < 8000 * 8000


def test_an_upload_larger_than_the_models_maximum_is_processed_downscaled_and_returned_at_its_size(tiny_app, tmp_path):
    from magic_remover.images import default_max_size, trained_size

    app, pipeline, _ = tiny_app
    large = tmp_path / "large.png"
    make_test_image(size=(160, 200)).save(large)  # height 160, width 200
    result, mask, reconstruction, _ = app.remover(str(large), PROMPT, "ball", 0.8, 3, False, 0)
    limit = default_max_size(trained_size(pipeline.wrapped))  # what `magic-remover remove` applies by default
    assert limit < 200 and pipeline.images[-1].size == (limit, round(160 * limit / 200))  # the longer side at the limit
    assert result.size == mask.size == reconstruction.size == (200, 160)


def test_the_progress_only_moves_forward_over_the_inversion_and_the_removal(tiny_app, image_file):
    app, _, _ = tiny_app
    reports = []
    app.remover(image_file, PROMPT, "ball", 0.8, 3, False, 0, progress=lambda f, desc=None: reports.append((f, desc)))
    fractions = [f for f, _ in reports]
    assert fractions[0] == 0 and all(a < b for a, b in zip(fractions, fractions[1:])) and fractions[-1] < 1
    assert len(fractions) >= 1 + 2 * 3 - 1  # a report per step of both loops (3 steps each)
    descriptions = {d for _, d in reports}
    assert {"DDIM inversion", "MagicRemover"} <= descriptions  # one bar across both loops


def test_step_progress_never_goes_back_when_a_call_runs_more_loops_than_expected():
    reports = []
    progress = StepProgress()
    progress.start(lambda f, desc=None: reports.append(f), expected_steps=4)
    for bar in ("inversion", "null-text", "removal"):  # three loops where two were expected
        for n in range(3):
            progress.write(f"\r{bar}: <{n}/2>")
    assert reports == sorted(reports) and len(set(reports)) == len(reports) and max(reports) < 1


def test_removals_leave_no_temporary_files(tiny_app, image_file):
    app, _, _ = tiny_app
    app.remover(image_file, PROMPT, "ball", 0.8, 3, False, 0)
    # the page's temporary files carry its prefix (other programs write into the same folder meanwhile)
    ours = lambda: sorted(Path(tempfile.gettempdir()).glob("magic_remover_ui_*"))  # noqa: E731
    before = ours()
    for _ in range(3):
        app.remover(image_file, PROMPT, "ball", 0.8, 3, False, 0)
    assert ours() == before  # no folder or file per removal
    assert len(list(Path(app.remover.files.name).iterdir())) == 1  # the last mask, until Gradio has copied it
    app.remover.remove_files()  # what the page runs after each removal's outputs are sent
    assert list(Path(app.remover.files.name).iterdir()) == []


def test_the_placeholder_caption_is_one_the_embedded_model_understands():
    from transformers import CLIPTokenizer

    from magic_remover.pipeline_magic_remover import find_target_tokens
    from magic_remover.scenes import VOCABULARY

    tokenizer = CLIPTokenizer.from_pretrained(Path(magic_remover.EMBEDDED_MODEL) / "tokenizer")
    words = PLACEHOLDER_CAPTION.split()
    assert set(words) <= set(VOCABULARY)  # the words of the captions it was trained on
    assert tokenizer.tokenize(PLACEHOLDER_CAPTION) == [f"{w}</w>" for w in words]  # each a whole known word
    find_target_tokens(tokenizer, PLACEHOLDER_CAPTION, preselected_target(PLACEHOLDER_CAPTION))  # the API's check
    app = build_app(lambda: None)
    [prompt] = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "prompt"]
    assert prompt.placeholder == PLACEHOLDER_CAPTION


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a blue triangle and a red diamond on a grass background", "diamond"),  # the setting is not a thing in it
        ("a photo of a dog on the grass", "dog"),
        ("a transparent pink star and a yellow triangle on a checkered background", "triangle"),
        ("A big red ball", "ball"),
        ("the ball is red", "ball"),  # never a colour word
        ("a red circle and a blue square", "square"),
        ("on a striped background", "striped"),  # all setting: its last content word
        ("a the of", None),
        ("", None),
    ],
)
def test_the_preselected_target_is_the_last_noun_before_the_setting(caption, expected):
    assert preselected_target(caption) == expected
    assert expected is None or expected in target_choices(caption)


def test_a_demo_scene_is_the_scene_and_target_of_magic_remover_demo_with_that_seed(tmp_path, capsys):
    """The demo command's own output (its printed caption and target, the input panel of its figure) against the
    page's scene for the same seed, at the page's first seed (the command's default) and another one."""
    defaults = build_parser().parse_args(["demo"])
    assert (DEMO_SEED, DEMO_OBJECTS) == (defaults.seed, defaults.objects)
    for seed in (DEMO_SEED, 12):
        figure_file = tmp_path / f"demo{seed}.png"
        command = ["demo", "--seed", str(seed), "--steps", "2", "--quiet", "--threads", "1", "-o", str(figure_file)]
        assert main(command) == 0
        printed = capsys.readouterr().out
        image, caption, target = demo_scene(make_scene, seed)
        assert f"scene {seed}: {caption!r}" in printed and f"(target word {target!r})" in printed
        # cli.figure's layout: two title lines (caption; target and verdict), then the panels under their labels;
        # the input is the first panel, 4x
        scale, top = 4, 3 * 16
        figure = np.asarray(Image.open(figure_file).convert("RGB"))
        panel = figure[top : top + 64 * scale : scale, : 64 * scale : scale]
        assert np.array_equal(panel, np.asarray(image))


def test_the_page_is_served_with_a_bounded_queue_and_upload_size_and_errors_leave_no_traceback(tiny_app, capfd,
                                                                                              tmp_path):  # fmt: skip
    """In-process server, called as a browser calls it (gradio_client): a bad input is a message to the caller and
    nothing on the server's stderr."""
    from gradio_client import Client, handle_file

    app, _, _ = tiny_app
    port = _free_port()
    launch(app, port=port, prevent_thread_lock=True, quiet=True)
    try:
        assert app.max_file_size == MAX_UPLOAD_BYTES and app.config["max_file_size"] == MAX_UPLOAD_BYTES
        assert app._queue.max_size == QUEUE_SIZE  # gradio keeps it on its queue object only
        capfd.readouterr()
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match="Upload an image or pick a demo scene first"):
            client.predict(None, PROMPT, "ball", 0.8, 3, False, 0, api_name="/remove")
        # files Gradio's own Image would open with PIL before the page's code runs: each a one-line message too
        (tmp_path / "notes.png").write_text("not a picture")
        huge = _png_claiming(tmp_path / "huge.png", 200_000, 200_000)  # beyond PIL's own decompression-bomb limit
        for upload, message in [(tmp_path / "notes.png", "notes.png is not an image"), (huge, "huge.png is too large")]:
            with pytest.raises(Exception, match=message):
                client.predict(handle_file(str(upload)), PROMPT, "ball", 0.8, 3, False, 0, api_name="/remove")
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Upload an image" not in err and "Warning" not in err, err
    finally:
        app.close()


def test_a_target_missing_from_the_prompt_is_refused_before_any_model_pass(pipe, image, monkeypatch):
    def no_inversion(*args, **kwargs):
        raise AssertionError("inverted before checking the target")

    monkeypatch.setattr(pipe, "invert", no_inversion)
    with pytest.raises(ValueError, match="does not occur in the prompt"):
        pipe(image=image, prompt=PROMPT, target="elephant", num_inference_steps=3)


def test_help_lists_ui_with_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "ui" in re.search(r"\{([a-z,]+)\}", text).group(1).split(",")  # the subcommands argparse lists
    assert "magic-remover ui --model" in text and "--host 0.0.0.0 --port" in text


def test_ui_without_gradio_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now fails as where it is not installed
    assert main(["ui"]) == 2
    error = capsys.readouterr().err
    assert 'pip install "magic-remover[ui]"' in error and "Traceback" not in error


def test_ui_with_a_model_that_cannot_be_loaded_is_one_line_before_serving(tmp_path, capsys):
    assert main(["ui", "--model", str(tmp_path / "no-such-model"), "--port", "1"]) == 2
    error = capsys.readouterr().err
    assert "Cannot load the model" in error and "serving" not in error


def test_the_exported_space_app_imports_builds_and_removes_offline(tmp_path, sd_folder, monkeypatch, image_file):
    """The Space's app.py, imported as a Space runs it (its folder on sys.path, no package needed), builds the page
    without loading a model, then loads the checkpoint with the folder's pipeline.py and removes."""
    import importlib.util

    folder = tmp_path / "space"
    assert main(["hub", "export", str(folder), "--space"]) == 0
    monkeypatch.setenv("MAGIC_REMOVER_MODEL", str(sd_folder))
    monkeypatch.setenv("MAGIC_REMOVER_STEPS", "3")
    monkeypatch.syspath_prepend(str(folder))
    names = ("space_app", "ui", "scenes", "images")
    try:
        spec = importlib.util.spec_from_file_location("space_app", folder / "app.py")
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        assert Path(sys.modules["ui"].__file__).parent == folder  # the Space's own copy, not the package's
        assert Path(sys.modules["images"].__file__).parent == folder  # and the reader beside it
        assert isinstance(app.demo, gr.Blocks) and app.demo.remover._pipeline is None  # not loaded yet
        result, mask, reconstruction, _ = app.demo.remover(image_file, PROMPT, "ball", 0.8, 3, False, 0)
        pipeline = app.demo.remover.pipeline
        assert type(pipeline).__name__ == "MagicRemoverPipeline" and type(pipeline) is not MagicRemoverPipeline
        assert result.size == mask.size == reconstruction.size == (32, 32)
    finally:
        for name in names:
            sys.modules.pop(name, None)


# ------------------------------------------------------------------------------------------------------------------
# the page in a real browser
# ------------------------------------------------------------------------------------------------------------------


def _browser_or_skip():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium/chromedriver on this machine: `apt-get install chromium chromium-driver` "
                    "(.ci/run does it where it runs as root or with sudo)")  # fmt: skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"):  # fmt: skip
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    # the page itself gets the whole window size (a window's frame would take some of it)
    metrics = {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served_page(tmp_path):
    """``magic-remover ui`` on the embedded model, on a free localhost port, as a user starts it."""
    if not (Path(magic_remover.EMBEDDED_MODEL) / "model_index.json").is_file():
        pytest.skip("the embedded model is not in this checkout")
    browser = _browser_or_skip()
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "server.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "magic_remover.cli", "ui", "--port", str(port), "--steps", "10",
                               "--threads", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"magic-remover ui exited with {server.returncode}:\n{log.read()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"magic-remover ui did not answer on {url} within {SERVER_START_S} s")
                time.sleep(0.5)
        yield browser, url, log
    finally:
        browser.quit()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _fetch_image(src: str) -> Image.Image:
    with urllib.request.urlopen(src, timeout=10) as response:
        return Image.open(io.BytesIO(response.read())).copy()


def test_the_page_removes_an_uploaded_scenes_object_in_a_browser(served_page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    browser, url, log = served_page
    css = lambda selector: browser.find_elements(By.CSS_SELECTOR, selector)  # noqa: E731
    wait = WebDriverWait(browser, 30)
    browser.get(url)
    wait.until(lambda _: css("#remove-button"))
    assert browser.execute_script("return [window.innerWidth, window.innerHeight]") == list(VIEWPORT)
    assert css("#prompt textarea")[0].get_attribute("placeholder") == PLACEHOLDER_CAPTION

    # nothing given yet: the page says what is missing, and the server's terminal shows no traceback
    css("#remove-button")[0].click()
    toasts = lambda: " ".join(e.text for e in css("[data-testid=toast-body]"))  # noqa: E731
    wait.until(lambda _: "Upload an image or pick a demo scene first." in toasts())

    # the demo-scene picker fills in the image, the caption and the target of `magic-remover demo --seed 3`
    _, demo_caption, demo_target = demo_scene(make_scene, DEMO_SEED)
    css("#scene-button")[0].click()
    wait.until(lambda _: css("#prompt textarea")[0].get_attribute("value") == demo_caption)
    assert css("#target input")[0].get_attribute("value") == demo_target != preselected_target(demo_caption)

    # upload another scene, type its caption: its last noun is pre-selected among the words offered
    scene = make_scene(11, size=64, num_objects=2)  # an orange triangle and a white square on a checkered background
    target = scene.objects[1].shape
    scene_file = tmp_path / "scene.png"
    scene.image.save(scene_file)
    css("#input-image button[aria-label='Remove Image']")[0].click()
    wait.until(lambda _: css("#input-image input[type=file]"))
    css("#input-image input[type=file]")[0].send_keys(str(scene_file))
    wait.until(lambda _: css("#input-image img"))
    prompt = css("#prompt textarea")[0]
    prompt.clear()
    prompt.send_keys(scene.caption)
    wait.until(lambda _: css("#target input")[0].get_attribute("value") == target)
    assert preselected_target(scene.caption) == target and target not in {o.color for o in scene.objects}
    css("#target input")[0].click()
    word = lambda option: option.text.split("\n")[-1]  # noqa: E731  (the chosen one carries a check mark line)
    wait.until(lambda _: target in [word(o) for o in css("ul[role=listbox] li")])
    offered = [word(o) for o in css("ul[role=listbox] li")]
    assert offered == target_choices(scene.caption) and not {"a", "an", "on", "background"} & set(offered)
    next(o for o in css("ul[role=listbox] li") if word(o) == target).click()
    assert css("#target input")[0].get_attribute("value") == target

    # one progress bar through the inversion and the removal, only forward; the results in view without scrolling
    css("#remove-button")[0].click()
    percents, deadline = [], time.monotonic() + REMOVAL_S
    while not (css("#result img") and css("#mask-file a")) and time.monotonic() < deadline:
        shown = browser.execute_script(
            "return Array.from(document.querySelectorAll('.progress-level-inner'), e => e.innerText).join(' ')"
        )
        percents += [float(p) for p in re.findall(r"([0-9.]+)%", shown) if not percents or float(p) != percents[-1]]
        time.sleep(0.05)
    assert css("#result img"), f"no result within {REMOVAL_S} s"
    assert percents == sorted(percents) and len(set(percents)) >= 5 and max(percents) > 50, percents
    browser.save_screenshot(str(tmp_path / "page.png"))
    box = browser.execute_script("const r = document.querySelector('#result img').getBoundingClientRect();"
                                 "return [r.left, r.top, r.right, r.bottom, window.scrollY]")  # fmt: skip
    assert box[4] == 0 and box[0] >= 0 and box[1] >= 0 and box[2] <= VIEWPORT[0] and box[3] <= VIEWPORT[1], box
    assert box[3] - box[1] >= 200  # shown at the panel's size, not as a thumbnail

    result = np.asarray(_fetch_image(css("#result img")[0].get_attribute("src")).convert("RGB"), dtype=np.float64)
    mask = _fetch_image(css("#mask-file a")[0].get_attribute("href"))
    assert css("#reconstruction img") and (tmp_path / "page.png").stat().st_size > 10_000
    assert result.shape == (64, 64, 3) and mask.size == (64, 64) and mask.mode == "L"
    removed = scene.objects[1]
    region = removed.mask | removed.shadow_mask
    # inside the object's region the result is the scene without it; outside it the input is kept (the embedded
    # model's mask option is on)
    assert psnr(result, removed.without, region) > psnr(scene.image, removed.without, region) + 10
    change = np.abs(result - np.asarray(scene.image, dtype=np.float64)).mean(axis=-1)
    assert change[removed.mask].mean() > 10 * change[~region].mean()
    soft = np.asarray(mask, dtype=np.float64)
    assert soft[removed.mask].mean() > 2 * soft[~region].mean()

    # a word that is not the caption's: the API's message on the page, nothing in the server's terminal
    target_input = css("#target input")[0]
    target_input.clear()
    target_input.send_keys("dog\n")
    css("#remove-button")[0].click()
    try:
        wait.until(lambda _: "'dog' does not occur in the prompt" in toasts())
    except TimeoutException:
        pytest.fail(f"no message on the page; it shows {toasts()!r}")
    log.flush()
    log.seek(0)
    served = log.read()
    assert "Traceback" not in served, served[-2000:]
    assert "does not occur" not in served and "Upload an image" not in served, served[-2000:]
