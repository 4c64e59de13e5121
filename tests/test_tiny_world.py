"""The tiny world (DeepGen-Tiny's data): determinism, held-out split, detector, prompt parsing, edit semantics,
trainer-readable indexes, the shape_world reward, and the evaluation metrics with fake pipelines (no model)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from itertools import product
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from deepgen_core.rewards import (
    REWARDS,
    OCRReward,
    build_reward,
    extract_target_text,
)
from deepgen_core.rewards.weights import load_reward_config
from deepgen_core.tiny_world.reward import ShapeWorldReward
from deepgen_core.tiny_world import (
    COLOURS,
    SHAPES,
    SPLITS,
    T2I_COMBOS,
    TEXT_COMBOS,
    WORDS,
    Obj,
    Scene,
    TextScene,
    detect,
    is_heldout_combo,
    is_heldout_text,
    parse_prompt,
    parse_scene,
    random_scene,
    render,
    render_text,
    sample_edit,
    sample_rng,
    sample_t2i,
    sample_text,
    scene_has_heldout,
    write_dataset,
    write_rl_prompts,
)
from deepgen_core.tiny_world.evaluate import (
    evaluate_edits,
    evaluate_t2i,
    evaluate_text,
    format_table,
    masked_psnr,
)
from deepgen_core.tiny_world.sampling import heldout_edits, heldout_t2i, heldout_texts
from deepgen_core.train.config import DataConfig, SourceConfig
from deepgen_core.train.data import SourceDataset


def key(scene: Scene):
    """What the detector must recover: background and every object's attributes (not the jitter)."""
    return scene.background, sorted((o.colour, o.shape, o.size, o.position) for o in scene.objects)


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float64) + rng.normal(0, 8, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_splits_are_disjoint_and_training_covers_every_attribute():
    train, held = set(T2I_COMBOS["train"]), set(T2I_COMBOS["heldout"])
    assert not train & held and len(held) == 24 and len(train) + len(held) == 8 * 3 * 7
    # every pair of attributes still occurs in training: held-out combos are new compositions only
    assert {(c, s) for c, s, _ in train} == set(product(COLOURS, SHAPES))
    assert {(s, b) for _, s, b in train} == set(product(SHAPES, COLOURS))
    assert {(c, b) for c, _, b in train} == {(c, b) for c in COLOURS for b in COLOURS if c != b}
    assert {w for w, _, _ in TEXT_COMBOS["train"]} == set(WORDS) and not set(TEXT_COMBOS["train"]) & set(TEXT_COMBOS["heldout"])
    for i in range(200):
        for n_objects in (1, 2):
            assert not scene_has_heldout(sample_t2i(sample_rng(0, "train", "t2i", i), "train", n_objects).scene)
        edit = sample_edit(sample_rng(0, "train", "edit", i), "train")
        assert not scene_has_heldout(edit.source) and not scene_has_heldout(edit.target)
        assert not is_heldout_text(*_text_combo(sample_text(sample_rng(0, "train", "text", i), "train").scene))
        held_edit = sample_edit(sample_rng(0, "heldout", "edit", i), "heldout")
        assert scene_has_heldout(held_edit.source) or scene_has_heldout(held_edit.target)
        assert is_heldout_text(*_text_combo(sample_text(sample_rng(0, "heldout", "text", i), "heldout").scene))
        obj = sample_t2i(sample_rng(0, "heldout", "t2i", i), "heldout").scene
        assert is_heldout_combo(obj.objects[0].colour, obj.objects[0].shape, obj.background)


def _text_combo(scene: TextScene) -> tuple[str, str, str]:
    return scene.word, scene.colour, scene.background


def test_dataset_is_deterministic_and_readable_by_the_trainer(tmp_path):
    serial = write_dataset(tmp_path / "a", n_t2i=12, n_edit=8, n_text=6, seed=3, workers=0)
    pooled = write_dataset(tmp_path / "b", n_t2i=12, n_edit=8, n_text=6, seed=3, workers=2)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 12 + 2 * 8 + 6 + 4
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = write_dataset(tmp_path / "c", n_t2i=2, n_edit=0, n_text=0, seed=4)
    assert other["t2i"].read_text() != serial["t2i"].read_text()
    data = DataConfig(image_size=128)
    for name, fmt in (("t2i", "blip3o"), ("text", "blip3o"), ("edit", "edit")):
        dataset = SourceDataset(SourceConfig(path=str(pooled[name]), format=fmt), data)
        sample = dataset[1]
        assert sample["pixel_values"].shape == (3, 128, 128) and sample["text"]
        if name == "edit":
            assert len(sample["pixel_values_src"]) == 1 and sample["pixel_values_src"][0].shape == (3, 128, 128)
        if name == "text":
            assert extract_target_text(sample["text"]) in WORDS


def test_detector_is_exact_on_clean_renders_and_robust_to_blur_and_noise():
    rng = np.random.default_rng(0)
    clean = degraded = 0
    scenes = [random_scene(sample_rng(1, split, "t2i", i), 1 + i % 2, split) for i in range(150) for split in SPLITS]
    for scene in scenes:
        image = render(scene)
        clean += key(detect(image).scene) == key(scene)
        degraded += key(detect(degrade(image, rng)).scene) == key(scene)
    assert clean == len(scenes)
    assert degraded >= 0.95 * len(scenes)
    assert key(detect(render(Scene("green"))).scene) == ("green", [])
    assert key(detect(render(scenes[0], size=256)).scene) == key(scenes[0])  # geometry scales with the size
    speck = np.asarray(render(Scene("white")), dtype=np.uint8).copy()
    speck[60:63, 60:63] = 0  # 9 px: below the minimum area
    assert detect(Image.fromarray(speck)).objects == ()


def test_prompts_parse_back_to_their_scene():
    for i in range(200):
        sample = sample_t2i(sample_rng(2, "train", "t2i", i), "train")
        obj = sample.scene.objects[0]
        assert parse_prompt(sample.prompt) == (replace(obj, offset=(0, 0)), sample.scene.background), sample.prompt
        two = sample_t2i(sample_rng(2, "train", "t2i", i), "train", n_objects=2)
        assert key(parse_scene(two.prompt)) == key(two.scene), two.prompt
        assert parse_prompt(two.prompt) is None
    assert parse_prompt(sample_text(sample_rng(0, "train", "text", 0), "train").prompt) is None
    assert parse_prompt("a photo of a cat") is None
    with pytest.raises(ValueError, match="1 or 2 objects"):
        random_scene(np.random.default_rng(0), 3)


@pytest.mark.parametrize("first", ["deepgen_core.rewards", "deepgen_core.tiny_world.reward", "deepgen_core.tiny_world.evaluate"])
def test_rewards_and_tiny_world_import_in_any_order(first):
    # The tiny world builds on the rewards package, never the reverse: a fresh interpreter imports either first, and
    # the rewards package alone loads nothing of the tiny world (its `shape_world` factory imports it on use).
    code = f"import sys, {first}, deepgen_core.rewards; print([m for m in sys.modules if m.startswith('deepgen_core.tiny_world')])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (done.stdout.strip() == "[]") == (first == "deepgen_core.rewards"), done.stdout
    assert "shape_world" in REWARDS


def test_shape_world_reward():
    reward = build_reward("shape_world")
    assert isinstance(reward, ShapeWorldReward)
    scene = Scene("blue", (Obj("circle", "red", "small", "left"),))
    prompt = "a small red circle on the left, blue background"
    wrong_colour = Scene("blue", (Obj("circle", "green", "small", "left"),))
    wrong_two = Scene("yellow", (Obj("square", "green", "small", "left"),))
    extra = Scene("blue", (Obj("circle", "red", "small", "left"), Obj("square", "white", "small", "right")))
    text_prompt = 'the word "CAT" in black letters on a white background'
    images = [render(scene), render(wrong_colour), render(wrong_two), render(extra), render(scene)]
    out = reward(images, [prompt] * 4 + [text_prompt])
    assert out.scores[:4] == pytest.approx([1.0, 0.8, 0.4, 0.8])  # 5 attributes; an extra object costs 0.2
    assert out.scores[4] is None and "not scored" in out.details[4]
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(images, [prompt])


def test_edit_targets_differ_only_as_instructed():
    kinds = set()
    for i in range(200):
        split = SPLITS[i % 2]
        edit = sample_edit(sample_rng(5, split, "edit", i), split)
        kinds.add(edit.kind)
        src, tgt, text = list(edit.source.objects), list(edit.target.objects), edit.instruction
        assert edit.target.background == edit.source.background
        if edit.kind in ("recolour", "move"):
            changed = [(a, b) for a, b in zip(src, tgt) if a != b]
            assert len(src) == len(tgt) and len(changed) == 1, edit
            (a, b), = changed
            if edit.kind == "recolour":
                assert replace(a, colour=b.colour) == b and b.colour != a.colour and b.colour in text
            else:
                assert (a.shape, a.colour, a.size) == (b.shape, b.colour, b.size) and b.position != a.position
                assert text == f"move the {a.colour} {a.shape} to the {b.position}"
        elif edit.kind == "add":
            assert len(src) == 1 and tgt[:1] == src and len(tgt) == 2
            assert text.startswith(f"add a {tgt[1].size} {tgt[1].colour} {tgt[1].shape}")
        else:
            assert len(src) == 2 and len(tgt) == 1 and tgt[0] in src
            gone = next(o for o in src if o != tgt[0])
            assert text == f"remove the {gone.colour} {gone.shape}"
        assert key(detect(render(edit.target)).scene) == key(edit.target)
    assert kinds == {"recolour", "move", "add", "remove"}


class FakePipe:
    """Stands in for DeepGenPipeline: `mode` 'truth' renders the expected image, 'input' returns the reference,
    'noise' returns random pixels."""

    def __init__(self, mode: str, n: int = 16, seed: int = 0) -> None:
        self.mode, self.calls = mode, []
        self.truth = {s.prompt: render(s.scene) for s in heldout_t2i(n, seed)}
        self.truth.update({s.prompt: render_text(s.scene) for s in heldout_texts(n, seed)})
        self.edits = {(e.instruction, render(e.source).tobytes()): render(e.target) for e in heldout_edits(n, seed)}

    def __call__(self, prompt, image=None, num_inference_steps=20, guidance_scale=4.0, generator=None, height=128, width=128):
        assert isinstance(generator, torch.Generator) and (height, width) == (128, 128)
        self.calls.append(len(prompt))
        rng = np.random.default_rng(len(self.calls))
        images = []
        for i, p in enumerate(prompt):
            if self.mode == "noise":
                images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
            elif image is None:
                images.append(self.truth[p])
            else:
                images.append(self.edits[(p, image[i][0].tobytes())] if self.mode == "truth" else image[i][0])
        return SimpleNamespace(images=images)


def test_evaluate_t2i_and_edits_with_fake_pipelines():
    truth, identity, noise = FakePipe("truth"), FakePipe("input"), FakePipe("noise")
    t2i = evaluate_t2i(truth, n=16, batch=5)
    assert truth.calls == [5, 5, 5, 1] and t2i["n"] == 16
    assert all(t2i[k] == 1.0 for k in ("colour", "shape", "size", "position", "background", "exact", "single"))
    assert evaluate_t2i(noise, n=16)["exact"] == 0.0
    edits = evaluate_edits(truth, n=16, batch=4)
    assert edits["success"] == 1.0 and edits["psnr_untouched"] == 100.0
    assert sum(edits[f"n_{k}"] for k in ("recolour", "move", "add", "remove")) == 16
    unchanged = evaluate_edits(identity, n=16)
    assert unchanged["success"] == 0.0 and unchanged["psnr_untouched"] == 100.0  # nothing done, nothing broken
    noisy = evaluate_edits(noise, n=16)
    assert noisy["success"] == 0.0 and noisy["psnr_untouched"] < 12.0
    table = format_table({"t2i": t2i, "edit": noisy})
    assert "| t2i (n=16) | colour | 1.000 | 0.9 | yes |" in table and "| psnr_untouched |" in table and "| NO |" in table


def test_masked_psnr_matches_the_formula():
    a = Image.new("RGB", (4, 4), (10, 10, 10))
    b = Image.new("RGB", (4, 4), (20, 10, 10))
    mask = np.zeros((4, 4), dtype=bool)
    mask[0] = True
    # mse over the masked pixels: (10^2 + 0 + 0) / 3 per channel value
    assert masked_psnr(a, b, mask) == pytest.approx(10 * np.log10(255**2 / (100 / 3)))


def test_text_renders_are_read_by_ocr_and_evaluate_text():
    ocr = OCRReward()
    result = evaluate_text(FakePipe("truth", n=4), n=4, ocr=ocr)
    assert result == {"exact_word": 1.0, "char_accuracy": 1.0, "n": 4}
    assert evaluate_text(FakePipe("noise", n=1), n=1, ocr=ocr)["exact_word"] == 0.0


def test_rl_prompts_and_cli(tmp_path):
    from deepgen_core.cli import main

    config = load_reward_config(write_rl_prompts(tmp_path / "rl", n_text=5, n_shapes=7, seed=1))
    assert config.reward_names == ["ocr", "shape_world"]
    by_name = {d.name: d for d in config.datasets}
    assert len(by_name["text_render"].prompts) == 5 and all(extract_target_text(p) in WORDS for p in by_name["text_render"].prompts)
    parsed = [parse_prompt(p) for p in by_name["shapes"].prompts]
    assert len(parsed) == 7 and all(p is not None and not is_heldout_combo(p[0].colour, p[0].shape, p[1]) for p in parsed)
    assert main(["tiny-world", "write", str(tmp_path / "cli"), "--n-t2i", "3", "--n-edit", "2", "--n-text", "1", "--n-rl-shapes", "2"]) == 0
    assert len(list((tmp_path / "cli" / "images").rglob("*.png"))) == 3 + 4 + 1 and (tmp_path / "cli" / "rl_prompts.yaml").is_file()
