"""Rewards: OCR (offline rapidocr), CLIP (local folder), VLM pairwise (fake OpenAI server), dataset weights."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from deepgen_core.errors import DeepGenInputError
from deepgen_core.rewards import BrightnessReward, ColorReward, OCRReward, VLMPairwiseReward, build_reward, extract_target_text, text_accuracy
from deepgen_core.rewards.vlm import parse_preference
from deepgen_core.rewards.weights import load_reward_config


def text_image(text: str, size=(320, 80)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((10, 15), text, fill="black", font=ImageFont.load_default(size=40))
    return img


def test_extract_target_text_and_accuracy():
    assert extract_target_text('a neon sign that says "OPEN 24h" at night') == "OPEN 24h"
    assert extract_target_text("a cat on a mat") is None
    assert extract_target_text('empty "" then "second"') == "second"
    assert extract_target_text("curly \u201cHello\u201d quotes") == "Hello"
    assert text_accuracy("xxOPEN24Hyy", "open 24h") == 1.0  # substring after removing spaces / lower-casing
    assert text_accuracy("opem", "open") == 0.75  # one substitution out of 4
    assert text_accuracy("", "open") == 0.0  # distance capped at len(target)


@pytest.fixture(scope="module")
def ocr():
    return OCRReward()


def test_ocr_reads_rendered_text_and_skips_unquoted_prompts(ocr):
    images = [text_image("HELLO"), text_image("WORLD"), text_image("HELLO")]
    prompts = ['a sign saying "hello"', "a landscape without text", 'a sign saying "goodbye"']
    out = ocr(images, prompts)
    assert out.scores[0] == 1.0
    assert out.scores[1] is None and "not scored" in out.details[1]  # never zeroes the batch (bug §9.11)
    assert 0.0 <= out.scores[2] < 0.6
    explicit = ocr.score_texts([images[1]], ["world"])
    assert explicit.scores == [1.0] and "WORLD" in explicit.details[0].upper()


def test_parallel_ocr_reads_the_same_and_a_failing_image_is_not_scored(ocr):
    words = ["HELLO", "WORLD", "OPEN", "SALE", "HELLO"]
    images = [text_image(w) for w in words]
    prompts = [f'a sign saying "{w.lower()}"' for w in words[:-1]] + ["no quotes here"]
    parallel = OCRReward(workers=2, detection_side=320)
    try:
        assert parallel(images, prompts).scores == ocr(images, prompts).scores == [1.0, 1.0, 1.0, 1.0, None]
        assert len(parallel._pool._processes) == 2  # read by two worker processes
        # a worker that dies: the batch is read in this process, and the next batch gets new workers
        victim = next(iter(parallel._pool._processes.values()))
        victim.kill()
        victim.join()
        for _ in range(500):  # until the executor has noticed (its manager thread watches the workers)
            if parallel._pool._broken:
                break
            threading.Event().wait(0.01)
        assert parallel._pool._broken
        assert parallel(images, prompts).scores == [1.0, 1.0, 1.0, 1.0, None]
        assert parallel._pool is None
        assert parallel(images[:2], prompts[:2]).scores == [1.0, 1.0] and len(parallel._pool._processes) == 2
    finally:
        parallel.close()

    class Flaky:  # an engine that fails on one image
        def __call__(self, image, use_cls):
            if image.size == (321, 80):
                raise RuntimeError("onnxruntime exploded")
            return ocr._get_engine()(image, use_cls=use_cls)

    serial = OCRReward()
    serial._engine = Flaky()
    images[1] = text_image("WORLD", size=(321, 80))
    out = serial(images, prompts)
    assert out.scores == [1.0, None, 1.0, 1.0, None] and out.failures == 1 and "exploded" in out.details[1]
    with pytest.raises(RuntimeError, match="exploded"):
        serial.recognize(images[1])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        OCRReward(workers=0)
    with pytest.raises(ValueError, match="detection_side"):
        OCRReward(detection_side=8)


def test_simple_rewards_and_registry():
    white, red = Image.new("RGB", (4, 4), "white"), Image.new("RGB", (4, 4), (255, 0, 0))
    assert BrightnessReward()([white, Image.new("RGB", (4, 4))], ["", ""]).scores == [1.0, 0.0]
    assert ColorReward((255, 0, 0))([red], [""]).scores == [1.0]
    with pytest.raises(DeepGenInputError, match="brightness"):
        build_reward("nope")
    with pytest.raises(ValueError, match="one prompt per image"):
        BrightnessReward()([white], ["a", "b"])


def test_clip_reward_equals_manual_cosine(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from deepgen_core.loading import load_tokenizer
    from deepgen_core.presets import TINY_TOKENIZER_DIR

    tokenizer = load_tokenizer(TINY_TOKENIZER_DIR)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    reward = build_reward("clip_sim", path=tmp_path)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)) for i in range(3)]
    prompts = ["a red cube", "a blue sphere", "two cats"]
    scores = reward(images, prompts).scores
    model, tok, proc = reward._load()
    with torch.no_grad():
        t = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
        i = model.get_image_features(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"])
    t, i = (getattr(x, "pooler_output", x) for x in (t, i))
    expected = torch.nn.functional.cosine_similarity(t, i)
    torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-5, rtol=0)
    assert len(set(scores)) == 3


class _JudgeHandler(BaseHTTPRequestHandler):
    """Fake OpenAI chat server: prefers the brighter image, except the `garble` prompt gets an unparsable answer."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        urls = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
        text = next(c["text"] for c in content if c["type"] == "text")
        means = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))).mean() for u in urls]
        answer = "I cannot tell" if "garble" in text else f"<think>...</think><answer>Image {1 if means[0] > means[1] else 2} is better</answer>"
        reply = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture()
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_vlm_pairwise_both_orders_and_parse_failures(judge_url):
    greys = [Image.new("RGB", (8, 8), (v, v, v)) for v in (10, 200, 100)]
    reward = VLMPairwiseReward(judge_url, workers=4)
    out = reward(greys + greys[:2], ["a"] * 3 + ["garble"] * 2)
    # Group "a": brightest wins all 4 of its games (2 opponents x 2 orders), middle 2/4, darkest 0/4.
    assert out.scores[:3] == [0.0, 1.0, 0.5]
    # Group "garble": both orders unparsable -> ties, counted.
    assert out.scores[3:] == [0.5, 0.5] and reward.parse_failures == 2 and "unparsed" in out.details[3]
    # Two groups that share a prompt stay separate when the group size is given (a rollout batch).
    split = VLMPairwiseReward(judge_url, workers=4)(greys[:2] * 2, ["a"] * 4, group_size=2)
    assert split.scores == [0.0, 1.0, 0.0, 1.0]
    assert parse_preference("<answer>Image 2 is better</answer>") == 1
    assert parse_preference("Image 1 is better. Image 2 is better.") is None


def test_vlm_pairwise_unreachable_server_counts_failures():
    reward = VLMPairwiseReward("http://127.0.0.1:9/v1", retries=1, backoff=0.0, timeout=2)
    out = reward([Image.new("RGB", (8, 8))] * 2, ["a", "a"])
    assert out.scores == [0.5, 0.5] and reward.failures == 2 and "failed" in out.details[0]


def test_reward_yaml(tmp_path):
    (tmp_path / "ocr.txt").write_text('a sign "OPEN"\n\na poster "SALE"\n')
    (tmp_path / "cfg.yaml").write_text(
        "datasets:\n  text:\n    path: ocr.txt\n    sample_weight: 3.0\n    reward_weights: {ocr: 0.7, clip_sim: 0.3}\n"
        "  general:\n    prompts: [a cat, a dog]\n    reward_weights: {clip_sim: 1.0}\n"
    )
    cfg = load_reward_config(tmp_path / "cfg.yaml")
    assert cfg.reward_names == ["clip_sim", "ocr"]
    assert cfg.datasets[0].prompts == ('a sign "OPEN"', 'a poster "SALE"') and cfg.datasets[0].sample_weight == 3.0
    (tmp_path / "bad.yaml").write_text("datasets:\n  x:\n    path: missing.txt\n    reward_weights: {ocr: 1}\n")
    with pytest.raises(DeepGenInputError, match="missing.txt"):
        load_reward_config(tmp_path / "bad.yaml")
