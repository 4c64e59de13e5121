"""The reward server under hostile requests: pixel caps (413), bad or missing Content-Length (400 / 411), the token
flag; after each refusal the server still answers a normal request."""

from __future__ import annotations

import base64
import http.client
import json
import struct
import threading
import zlib

import pytest
from PIL import Image

from deepgen_core.cli import main
from deepgen_core.errors import DeepGenInputError
from deepgen_core.rewards import BrightnessReward, HTTPReward
from deepgen_core.rewards.service import RewardServer

IMAGES = [Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")]


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture()
def server():
    server = RewardServer({"brightness": BrightnessReward()}, port=0, max_image_pixels=1000, max_request_pixels=3000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _post(server, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.putrequest("POST", "/score", skip_accept_encoding=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    if body:
        conn.send(body)
    response = conn.getresponse()
    status, payload = response.status, json.loads(response.read())
    conn.close()
    return status, payload


def _still_works(server) -> None:
    out = HTTPReward(f"http://127.0.0.1:{server.server_address[1]}", "brightness", timeout=10, retries=0)(IMAGES, ["a", "b"])
    assert out.scores == [1.0, 0.0]


def _request(images: list[bytes]) -> bytes:
    return json.dumps({"reward": "brightness", "prompts": [""] * len(images), "images": [base64.b64encode(i).decode() for i in images]}).encode()


def test_images_above_the_pixel_caps_get_413(server):
    body = _request([_png_header(13000, 13000)] * 12)  # ~2 MP of JSON claiming 2 gigapixels
    status, payload = _post(server, body, {"Content-Length": str(len(body))})
    assert status == 413 and "pixels" in payload["error"]
    bomb = _request([_png_header(20000, 20000)])  # above PIL's own bomb limit: refused the same way
    status, payload = _post(server, bomb, {"Content-Length": str(len(bomb))})
    assert status == 413 and "decompression-bomb" in payload["error"]
    one = _request([_png_header(40, 40)])  # 1,600 pixels: over the per-image cap, under the request cap
    status, payload = _post(server, one, {"Content-Length": str(len(one))})
    assert status == 413 and "per image" in payload["error"]
    _still_works(server)


@pytest.mark.parametrize("headers,status", [({"Content-Length": "abc"}, 400), ({}, 411), ({"Content-Length": "-5"}, 400),
                                            ({"Content-Length": str(10**12)}, 413)])
def test_content_length_errors(server, headers, status):
    got, payload = _post(server, b"", headers)
    assert got == status and "Content-Length" in payload["error"]
    _still_works(server)


def test_non_loopback_bind_names_the_real_flag():
    with pytest.raises(DeepGenInputError, match="pass --token-file FILE"):
        RewardServer({"brightness": BrightnessReward()}, host="0.0.0.0", port=0)


def test_token_flag_is_not_prefix_matched(capsys):
    with pytest.raises(SystemExit):
        main(["reward-server", "--reward", "brightness", "--host", "0.0.0.0", "--token", "123"])
    assert "unrecognized arguments: --token" in capsys.readouterr().err


def test_server_arguments_checked_before_rewards_are_built(tmp_path, capsys, monkeypatch):
    import deepgen_core.rewards as rewards

    monkeypatch.setattr(rewards, "build_reward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a reward was built")))
    assert main(["reward-server", "--reward", "brightness", "--host", "0.0.0.0"]) == 2
    assert "--token-file" in capsys.readouterr().err
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert main(["reward-server", "--reward", "brightness", "--token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["reward-server", "--reward", "brightness", "--max-image-megapixels", "nan"]) == 2
    assert "--max-image-megapixels" in capsys.readouterr().err
