"""Pairwise VLM preference through an OpenAI-compatible chat endpoint (reference notes §6.5, UnifiedReward-Think).

Each group (consecutive images with the same prompt) is compared pair by pair, in BOTH orders to cancel position
bias (reference bug §9.16). A request that fails after its retries, or an answer that names no winner, counts as
a tie (0.5 each) and is counted in `failures` / `parse_failures` and logged, never silently.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from .base import RewardOutput, check_batch

logger = logging.getLogger(__name__)

PAIRWISE_QUESTION = "Compare these two images based on the prompt: {prompt}. Which image is better?"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def image_to_data_url(image: Image.Image, quality: int = 95) -> str:
    """A base64 JPEG data URL (the reference sends JPEG quality 95)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_preference(text: str) -> int | None:
    """0 if the answer prefers Image 1, 1 for Image 2, None if it names no single winner.

    The text inside `<answer>...</answer>` is used when present, else the whole reply.
    """
    match = _ANSWER.search(text)
    answer = (match.group(1) if match else text).lower()
    first, second = "image 1 is better" in answer, "image 2 is better" in answer
    if first == second:
        return None
    return 0 if first else 1


def groups_of_equal_prompts(prompts: list[str]) -> list[list[int]]:
    """Indices of runs of consecutive identical prompts (a rollout group is G consecutive images)."""
    return [list(idx) for _, idx in itertools.groupby(range(len(prompts)), key=lambda i: prompts[i])]


class VLMPairwiseReward:
    """Win rate of each image against the others of its group, judged by a chat VLM.

    Args:
        url: base URL of an OpenAI-compatible server, e.g. `http://127.0.0.1:18087/v1`.
        model: served model name (reference: `UnifiedReward`).
        api_key: sent as a Bearer token when given.
        timeout: seconds per request; retries: attempts after the first; backoff: seconds, doubled per retry.
        workers: concurrent requests.

    Example::

        VLMPairwiseReward("http://127.0.0.1:18087/v1")(images, ["a cat"] * 4 + ["a dog"] * 4).scores
    """

    name = "unifiedreward_think"

    def __init__(self, url: str, model: str = "UnifiedReward", api_key: str | None = None, timeout: float = 160.0,
                 retries: int = 3, backoff: float = 1.0, workers: int = 16, max_tokens: int = 4096) -> None:
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.retries, self.backoff, self.workers, self.max_tokens = retries, backoff, workers, max_tokens
        self.failures = 0  # requests that failed after all retries, over the reward's lifetime
        self.parse_failures = 0  # answers naming no winner
        self._lock = threading.Lock()

    def _request(self, prompt: str, first: str, second: str) -> str:
        content = [{"type": "image_url", "image_url": {"url": first}}, {"type": "image_url", "image_url": {"url": second}},
                   {"type": "text", "text": PAIRWISE_QUESTION.format(prompt=prompt)}]
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": content}],
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    def _judge(self, prompt: str, first: str, second: str) -> tuple[int | None, str]:
        """(winner 0/1 or None, status) for one ordered pair, with retries on transport errors."""
        for attempt in range(self.retries + 1):
            try:
                reply = self._request(prompt, first, second)
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                if attempt == self.retries:
                    logger.warning("VLM reward request failed after %d attempts: %s", attempt + 1, exc)
                    return None, "failed"
                time.sleep(self.backoff * 2**attempt)
                continue
            winner = parse_preference(reply)
            if winner is None:
                logger.warning("VLM reward answer names no winner: %.200r", reply)
            return winner, "ok" if winner is not None else "unparsed"
        return None, "failed"

    def __call__(self, images: list[Image.Image], prompts: list[str], group_size: int | None = None, **metadata) -> RewardOutput:
        """Score `images`; groups are `group_size` consecutive images when given (a rollout's groups), else runs of
        consecutive identical prompts."""
        check_batch(images, prompts, self.name)
        urls = [image_to_data_url(img) for img in images]
        if group_size:
            groups = [list(range(s, min(s + group_size, len(images)))) for s in range(0, len(images), group_size)]
        else:
            groups = groups_of_equal_prompts(list(prompts))
        # Every unordered pair of a group, asked in both orders.
        jobs = [(a, b) for group in groups for i, j in itertools.combinations(group, 2) for a, b in ((i, j), (j, i))]
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(jobs) or 1))) as pool:
            results = list(pool.map(lambda job: self._judge(prompts[job[0]], urls[job[0]], urls[job[1]]), jobs))
        wins, games = [0.0] * len(images), [0] * len(images)
        failed, unparsed = [0] * len(images), [0] * len(images)
        for (a, b), (winner, status) in zip(jobs, results):
            games[a] += 1
            games[b] += 1
            if winner is None:
                wins[a] += 0.5
                wins[b] += 0.5
                bucket = failed if status == "failed" else unparsed
                bucket[a] += 1
                bucket[b] += 1
            else:
                wins[(a, b)[winner]] += 1
        n_failed, n_unparsed = sum(s == "failed" for _, s in results), sum(s == "unparsed" for _, s in results)
        with self._lock:
            self.failures += n_failed
            self.parse_failures += n_unparsed
        scores = [round(w / g, 3) if g else None for w, g in zip(wins, games)]
        details = [f"won {w:g}/{g}" + (f", {f} failed" if f else "") + (f", {u} unparsed" if u else "") if g else "no other image in the group: not scored"
                   for w, g, f, u in zip(wins, games, failed, unparsed)]
        return RewardOutput(scores=scores, details=details, failures=n_failed + n_unparsed)
