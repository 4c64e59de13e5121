"""`deepgen reward-server` and `HTTPReward` against real servers on loopback, including misbehaving ones."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from deepgen_core.errors import DeepGenInputError
from deepgen_core.rewards import BrightnessReward, HTTPReward, RewardOutput
from deepgen_core.rewards.service import RewardServer

IMAGES = [Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")]
PROMPTS = ["a", "b"]


class _Broken:
    name = "broken"

    def __call__(self, images, prompts, **metadata) -> RewardOutput:
        raise RuntimeError("scorer crashed")


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture()
def reward_server():
    server = RewardServer({"brightness": BrightnessReward(), "broken": _Broken()}, port=0, token="s3cret", max_request_bytes=20_000)
    yield _serve(server)
    server.shutdown()
    server.server_close()


def test_scores_over_http_equal_in_process(reward_server):
    health = json.loads(urllib.request.urlopen(reward_server + "/health", timeout=5).read())
    assert health == {"status": "ok", "rewards": ["brightness", "broken"]}
    client = HTTPReward(reward_server, "brightness", token="s3cret", timeout=5)
    out = client(IMAGES, PROMPTS)
    assert out.scores == BrightnessReward()(IMAGES, PROMPTS).scores == [1.0, 0.0]
    assert client.failures == 0


def test_server_errors_are_counted_and_the_run_continues(reward_server):
    wrong_token = HTTPReward(reward_server, "brightness", token="nope", timeout=5, retries=0)
    out = wrong_token(IMAGES, PROMPTS)
    assert out.scores == [None, None] and out.failures == 2 and "HTTP 401" in out.details[0] and wrong_token.failures == 1
    crashed = HTTPReward(reward_server, "broken", token="s3cret", timeout=5, retries=1, backoff=0.0)
    out = crashed(IMAGES, PROMPTS)
    assert out.scores == [None, None] and "HTTP 500" in out.details[0] and "scorer crashed" in out.details[0]
    unknown = HTTPReward(reward_server, "nope", token="s3cret", timeout=5, retries=0)(IMAGES, PROMPTS)
    assert "HTTP 404" in unknown.details[0]
    big = [Image.effect_noise((128, 128), 64).convert("RGB")] * 2  # ~2 x 30 kB of PNG > 20 kB bound
    too_big = HTTPReward(reward_server, "brightness", token="s3cret", timeout=5, retries=0)(big, PROMPTS)
    assert too_big.scores == [None, None] and "HTTP 413" in too_big.details[0]
    # The server is still healthy afterwards.
    assert HTTPReward(reward_server, "brightness", token="s3cret", timeout=5)(IMAGES, PROMPTS).scores == [1.0, 0.0]


class _Misbehaving(BaseHTTPRequestHandler):
    """Answers per path: /slow/score sleeps, /500/score fails, /json/score sends broken JSON, /drop/score hangs up."""

    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        mode = self.path.split("/")[1]
        if mode == "drop":
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(1.5)
        status, body = {"500": (500, b'{"error": "boom"}'), "json": (200, b'{"scores": [1.0,')}.get(mode, (200, b'{"scores": [0.25, 0.75]}'))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def misbehaving():
    _Misbehaving.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    yield _serve(server)
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("mode", "marker"), [("slow", "timed out"), ("500", "HTTP 500"), ("json", "JSONDecodeError"), ("drop", "RemoteDisconnected")])
def test_client_survives_misbehaving_server(misbehaving, mode, marker):
    client = HTTPReward(f"{misbehaving}/{mode}", "ocr", timeout=0.5, retries=1, backoff=0.0)
    out = client(IMAGES, PROMPTS)
    assert out.scores == [None, None] and out.failures == 2 and client.failures == 1
    assert marker in out.details[0]
    assert _Misbehaving.calls == 2  # first attempt + one retry
    # The same client keeps working against a healthy endpoint: the failure did not poison it.
    client.url = f"{misbehaving}/ok"
    assert client(IMAGES, PROMPTS).scores == [0.25, 0.75] and client.failures == 1


def test_off_loopback_requires_a_token():
    with pytest.raises(DeepGenInputError, match="--token"):
        RewardServer({}, host="0.0.0.0", port=0)


def test_reward_server_cli(tmp_path):
    """`deepgen reward-server` as a process: health, scoring with a token, and argument errors."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from deepgen_core.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text("t0k\n")
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "deepgen_core.cli", "reward-server", "--reward", "brightness", "--port", str(port), "--token-file", str(tmp_path / "token")]
    server = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                health = json.loads(urllib.request.urlopen(url + "/health", timeout=1).read())
                break
            except OSError:
                time.sleep(0.1)
        assert health["rewards"] == ["brightness"]
        assert HTTPReward(url, "brightness", token="t0k", timeout=5)(IMAGES, PROMPTS).scores == [1.0, 0.0]
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert main(["reward-server", "--reward", "clip_sim"]) == 2  # needs --clip-path: a clear error, exit code 2
    assert main(["reward-server", "--reward", "brightness", "--host", "0.0.0.0"]) == 2  # off loopback without a token
