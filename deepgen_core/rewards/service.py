"""`deepgen reward-server` and its client `HTTPReward`: rewards over HTTP as JSON (never pickle, §9 / §6.5).

Protocol: `GET /health` -> `{"status": "ok", "rewards": [...]}`; `POST /score` with
`{"reward": name, "images": [base64 PNG], "prompts": [...], "targets": [...]?}` -> `{"scores": [float|null],
"details": [str], "failures": int}`; errors are JSON `{"error": ...}` with 400/401/404/411/413/500 (413: body or decoded pixels above the caps). Loopback by
default; binding elsewhere requires a token (`Authorization: Bearer <token>`); request bodies are bounded.
"""

from __future__ import annotations

import base64
import hmac
import http.client
import io
import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from ..errors import DeepGenInputError
from .base import Reward, RewardOutput, check_batch

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 16 * 2**20  # per decoded image (a 4096^2 image); a PNG of 0.05 MB can claim 169 MP
DEFAULT_MAX_REQUEST_PIXELS = 64 * 2**20  # all decoded images of one request together


class TooLarge(ValueError):
    """A request whose images decode to more pixels than the server allows (HTTP 413)."""


def encode_image(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")  # lossless: OCR and CLIP see exactly the rollout image
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str, max_pixels: int | None = None) -> Image.Image:
    """A base64 PNG/JPEG -> RGB image; `max_pixels` is checked from the header, before any pixel is decoded."""
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise TooLarge(f"an image of {image.width}x{image.height} exceeds the server's {max_pixels} pixels per image")
    image.load()
    return image.convert("RGB")


def decode_images(data: list, max_pixels: int, max_total: int) -> list[Image.Image]:
    """Decode a request's images under the per-image and per-request pixel caps (headers first, then pixels)."""
    if not isinstance(data, list):
        raise ValueError("'images' must be a list of base64 images")
    sizes = []
    for item in data:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caps below decide, not PIL's default
                with Image.open(io.BytesIO(base64.b64decode(item, validate=True))) as header:
                    sizes.append(header.width * header.height)
        except Image.DecompressionBombError as exc:
            raise TooLarge(f"an image exceeds PIL's decompression-bomb limit ({exc})") from exc
    if sum(sizes) > max_total:
        raise TooLarge(f"the request's images total {sum(sizes)} pixels; the server allows {max_total} per request: send fewer or smaller images")
    return [decode_image(item, max_pixels) for item in data]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _RewardHandler(BaseHTTPRequestHandler):
    server: RewardServer

    def log_message(self, format: str, *args) -> None:  # route http.server's stderr lines to logging
        logger.info("%s " + format, self.address_string(), *args)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def do_GET(self) -> None:
        if self.path != "/health":
            return self._reply(404, {"error": "unknown path; use GET /health or POST /score"})
        self._reply(200, {"status": "ok", "rewards": sorted(self.server.rewards)})

    def do_POST(self) -> None:
        if self.path != "/score":
            return self._reply(404, {"error": "unknown path; use POST /score"})
        if not self._authorized():
            return self._reply(401, {"error": "missing or wrong token (Authorization: Bearer <token>)"})
        length = self._content_length()
        if length is None:
            return None
        try:
            request = json.loads(self.rfile.read(length))
            reward = self.server.rewards[request["reward"]]
            images = decode_images(request["images"], self.server.max_image_pixels, self.server.max_request_pixels)
            prompts = [str(p) for p in request["prompts"]]
            check_batch(images, prompts, reward.name)
        except TooLarge as exc:
            return self._reply(413, {"error": f"request too large: {exc}"})
        except KeyError as exc:
            return self._reply(404 if exc.args and exc.args[0] not in ("reward", "images", "prompts") else 400, {"error": f"bad request: missing or unknown {exc}; rewards: {sorted(self.server.rewards)}"})
        except (ValueError, TypeError, OSError) as exc:
            return self._reply(400, {"error": f"bad request: {exc}"})
        self._score(reward, images, prompts, request.get("targets"))

    def _content_length(self) -> int | None:
        """The body length, or None after replying 411 (missing), 400 (not a number) or 413 (too large)."""
        raw = self.headers.get("Content-Length")
        limit = self.server.max_request_bytes
        error = None
        if raw is None:
            status, error = 411, "a Content-Length header is required"
        elif not raw.strip().isdigit():
            status, error = 400, f"Content-Length must be a byte count, got {raw!r}"
        elif int(raw) > limit:
            status, error = 413, f"request body must have a Content-Length of at most {limit} bytes"
        if error is None:
            return int(raw)
        self.close_connection = True  # the unread body must not be parsed as the next request
        self._reply(status, {"error": error})
        return None

    def _score(self, reward: Reward, images: list[Image.Image], prompts: list[str], targets) -> None:
        try:
            with self.server.score_lock:  # one scoring call at a time: the engines are not thread-safe
                if targets is not None and hasattr(reward, "score_texts"):
                    out = reward.score_texts(images, targets)
                else:
                    out = reward(images, prompts)
        except Exception as exc:  # any scorer error must become a JSON 500, not a dropped connection
            logger.exception("reward %s failed", reward.name)
            return self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})
        self._reply(200, {"scores": out.scores, "details": out.details, "failures": out.failures})


def require_token(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise DeepGenInputError(
            f"the reward server binds to {host!r}, which is not loopback, so it needs a token: pass --token-file FILE "
            "(a file holding the token; clients send 'Authorization: Bearer <token>'), or bind to 127.0.0.1.")


class RewardServer(ThreadingHTTPServer):
    """HTTP server for in-process rewards. `rewards`: name -> reward. A token is required off loopback."""

    daemon_threads = True

    def __init__(self, rewards: Mapping[str, Reward], host: str = "127.0.0.1", port: int = 18090,
                 token: str | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS) -> None:
        require_token(host, token)
        self.rewards, self.token, self.max_request_bytes = dict(rewards), token, max_request_bytes
        self.max_image_pixels, self.max_request_pixels = max_image_pixels, max_request_pixels
        self.score_lock = threading.Lock()
        super().__init__((host, port), _RewardHandler)


class HTTPReward:
    """Client of a reward server; a drop-in `Reward`. A failed request (timeout, HTTP error, malformed JSON, dropped
    connection) leaves its images unscored (`None`), is counted in `failures` and logged; the run continues.

    Example::

        HTTPReward("http://127.0.0.1:18090", "ocr")(images, prompts).scores
    """

    def __init__(self, url: str, reward: str, token: str | None = None, timeout: float = 60.0, retries: int = 1, backoff: float = 0.5) -> None:
        self.url, self.name, self.token = url.rstrip("/"), reward, token
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.failures = 0  # failed requests over the client's lifetime

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + "/score", data=json.dumps(payload).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def _request(self, payload: dict, n: int) -> RewardOutput:
        error = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._post(payload)
                scores = [None if s is None else float(s) for s in reply["scores"]]
                if len(scores) != n:
                    raise ValueError(f"server returned {len(scores)} scores for {n} images")
                details = [str(d) for d in reply.get("details", [""] * n)]
                return RewardOutput(scores=scores, details=details, failures=int(reply.get("failures", 0)))
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}: {exc.read()[:200]!r}"
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, KeyError, TypeError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        logger.warning("reward service %s (%s) failed after %d attempts: %s", self.url, self.name, self.retries + 1, error)
        return RewardOutput(scores=[None] * n, details=[f"reward service failed: {error}"] * n, failures=n)

    def score_texts(self, images: list[Image.Image], targets: list[str | None]) -> RewardOutput:
        """Remote `OCRReward.score_texts`."""
        payload = {"reward": self.name, "images": [encode_image(i) for i in images], "prompts": [""] * len(images), "targets": list(targets)}
        return self._request(payload, len(images))

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput:
        check_batch(images, prompts, self.name)
        payload = {"reward": self.name, "images": [encode_image(i) for i in images], "prompts": list(prompts)}
        return self._request(payload, len(images))


# ------------------------------------------------------------------------------------------------ CLI


def add_reward_server_parser(subparsers) -> None:
    """Register `deepgen reward-server` on an argparse subparsers object."""
    p = subparsers.add_parser("reward-server", help="serve reward functions over HTTP (JSON, loopback by default)")
    p.add_argument("--reward", action="append", required=True, help="reward to serve (repeat): ocr, clip_sim, brightness, color, unifiedreward_think")
    p.add_argument("--clip-path", help="local transformers CLIP folder (for clip_sim)")
    p.add_argument("--vlm-url", help="OpenAI-compatible base URL of the judge (for unifiedreward_think), e.g. http://127.0.0.1:18087/v1")
    p.add_argument("--device", default="cpu", help="device for in-process models (clip_sim)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; anything else needs --token-file)")
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--token-file", help="file holding the shared token clients send as 'Authorization: Bearer <token>'")
    p.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_BYTES / 2**20, help="largest accepted request body (MiB)")
    p.add_argument("--max-image-megapixels", type=float, default=DEFAULT_MAX_IMAGE_PIXELS / 2**20, help="largest decoded image (MiP, 2**20 pixels); larger ones get HTTP 413")
    p.add_argument("--max-request-megapixels", type=float, default=DEFAULT_MAX_REQUEST_PIXELS / 2**20, help="all decoded images of one request together (MiP); more gets HTTP 413")
    p.set_defaults(handler=run_reward_server)


def read_token(path: str) -> str:
    """The token in `path` (surrounding whitespace dropped), with a clear error for a missing or empty file."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DeepGenInputError(f"--token-file {path!r} cannot be read ({exc.strerror}); write the token into a file only you can read.") from exc
    if not token:
        raise DeepGenInputError(f"--token-file {path!r} is empty; write the token into it (e.g. python -c 'import secrets; print(secrets.token_hex(32))').")
    return token


def check_server_args(args) -> None:
    """Numbers of `deepgen reward-server`, checked before any reward model is built."""
    from ..validation import Limit, check_number

    check_number("--port", args.port, Limit(0, 65535, integer=True, default=18090))
    for name in ("max_request_mb", "max_image_megapixels", "max_request_megapixels"):
        check_number("--" + name.replace("_", "-"), getattr(args, name), Limit(0, 1e6, low_open=True, default=64))


def run_reward_server(args) -> int:
    from . import build_reward

    check_server_args(args)
    token = read_token(args.token_file) if args.token_file else None
    require_token(args.host, token)  # before any reward model is built

    options = {"clip_sim": {"path": args.clip_path, "device": args.device}, "unifiedreward_think": {"url": args.vlm_url}}
    for name, opts in options.items():
        if name in args.reward and None in opts.values():
            raise DeepGenInputError(f"reward {name!r} needs {'--clip-path' if name == 'clip_sim' else '--vlm-url'}.")
    rewards = {name: build_reward(name, **options.get(name, {})) for name in args.reward}
    server = RewardServer(rewards, args.host, args.port, token, int(args.max_request_mb * 2**20),
                          int(args.max_image_megapixels * 2**20), int(args.max_request_megapixels * 2**20))
    logger.info("serving rewards %s on http://%s:%d (POST /score, GET /health)", sorted(rewards), args.host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("reward server stopped")
    finally:
        server.server_close()
    return 0
