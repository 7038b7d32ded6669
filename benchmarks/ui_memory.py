"""The web page's memory bound: the peak resident memory of a ``magic-remover ui`` server (embedded model) after a
removal of a 512x512 upload, of the largest upload it accepts, and after a small file whose header claims 8000x8000
pixels.

    python benchmarks/ui_memory.py

Starts the server as a user does, uploads through Gradio's own client (as the browser does) the demo scene enlarged
(nearest neighbour, so the PNG stays small) to 512x512 and to ``ui.MAX_UPLOAD_PIXELS``, then the header-only
8000x8000 PNG, and reads the server's peak resident set size (``VmHWM`` in ``/proc/<pid>/status``) after each step.
The table goes to ``benchmarks/results/ui_memory.md``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from magic_remover.scenes import make_scene  # noqa: E402
from magic_remover.ui import DEMO_OBJECTS, DEMO_SEED, MAX_UPLOAD_PIXELS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ui_memory.md"


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far (Linux's ``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc: this measurement needs Linux")


def header_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width x height`` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the removal (the embedded model's 20)")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="ui_memory_"))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "magic_remover.cli", "ui", "--port", str(port), "--threads", "1", "--quiet"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(480):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.25)
        rows.append(("server started, model loaded", "-", peak_rss_mib(server.pid), "-"))
        client = Client(url, verbose=False)

        scene = make_scene(DEMO_SEED, size=64, num_objects=DEMO_OBJECTS)
        for side in (512, math.isqrt(MAX_UPLOAD_PIXELS)):  # issue 25's 512x512 (445 s before), the largest accepted
            upload = work / f"scene{side}.png"
            scene.image.resize((side, side), Image.NEAREST).save(upload)
            start = time.perf_counter()
            client.predict(handle_file(str(upload)), scene.caption, scene.objects[0].shape, 0.8, args.steps, True, 0,
                           api_name="/remove")  # fmt: skip
            rows.append((f"one removal of a {side}x{side} upload ({upload.stat().st_size / 2**20:.1f} MiB PNG)",
                         "done", peak_rss_mib(server.pid), f"{time.perf_counter() - start:.1f}"))  # fmt: skip

        bomb = work / "bomb.png"
        bomb.write_bytes(header_claiming(8000, 8000))
        try:
            client.predict(handle_file(str(bomb)), scene.caption, scene.objects[0].shape, 0.8, args.steps, True, 0,
                           api_name="/remove")  # fmt: skip
            outcome = "accepted (!)"
        except Exception as error:  # the page's message comes back as the client's error
            outcome = f"refused: {str(error).splitlines()[0][:90]}"
        rows.append((f"a {bomb.stat().st_size}-byte PNG claiming 8000x8000", outcome, peak_rss_mib(server.pid), "-"))
    finally:
        server.terminate()
        server.wait(timeout=30)

    lines = [
        "# The web page's memory (benchmarks/ui_memory.py)",
        "",
        f"`python benchmarks/ui_memory.py --steps {args.steps}`: `magic-remover ui` on the embedded model, one CPU "
        "thread; peak resident memory of the server process (VmHWM) after each step.",
        "",
        "| step | outcome | peak RSS (MiB) | time (s) |",
        "|---|---|---:|---:|",
    ] + [f"| {step} | {outcome} | {rss:.0f} | {seconds} |" for step, outcome, rss, seconds in rows]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
