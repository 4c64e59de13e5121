"""The pack's ComfyUI experience through the stand-in (or a real ComfyUI with COMFYUI_DIR): input validation is left
to ComfyUI, foreign conditioning is named, the rollout preview reports progress and stops on Cancel, its rewards
are the runnable ones, the score-card UI data, the web extension's files and the node help pages."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch

from tests.test_nodes import _encode, _nodes, _sample, comfy, loaded, model_files, pack  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent


def _rollout(pack, model, vae, **kw):
    args = {"prompts": 'the word "SUN"', "group_size": 2, "seed": 0, "sampler": "cps_sde", "eta": 1.0, "steps": 3, "cfg": 1.0,
            "width": 32, "height": 32, "rewards": "brightness=1"} | kw
    return pack.nodes.rl.DeepGenRolloutPreview.execute(model=model, vae=vae, **args)


def test_validate_inputs_takes_named_inputs_only_so_comfyui_keeps_its_range_checks(pack):
    """ComfyUI skips its own type/min/max checks for every input that `validate_inputs` names, and for all inputs
    when it takes **kwargs (execution.validate_inputs); so the signature must name only the inputs it checks."""
    checked = 0
    for node_id, node in _nodes(pack).items():
        if "validate_inputs" not in vars(node):
            continue
        spec = inspect.getfullargspec(node.validate_inputs)
        inputs = {i.id for i in node.define_schema().inputs}
        assert spec.varkw is None, f"{node_id}.validate_inputs takes **{spec.varkw}: ComfyUI would skip every range check"
        assert set(spec.args[1:]) <= inputs and spec.args[1:], (node_id, spec.args)
        assert "steps" not in spec.args and "cfg" not in spec.args
        checked += 1
    assert checked >= 3  # the sampler, the compile node and the rollout preview


def test_every_fixed_choice_is_checked_when_queued(pack):
    """ComfyUI 0.3.64 does not compare a V3 combo's value with its options, so every combo with fixed options
    (file lists, `*_name`, are checked when the node runs) is refused by `validate_inputs`, naming the input and
    the options; a valid value passes."""
    checked = []
    for node_id, node in _nodes(pack).items():
        inputs = {i.id: i for i in node.define_schema().inputs}
        for name, spec in inputs.items():
            if getattr(spec, "options", None) is None or name.endswith("_name"):
                continue
            assert "validate_inputs" in vars(node), f"{node_id} does not check its combo {name!r} when queued"
            args = inspect.getfullargspec(node.validate_inputs).args[1:]
            assert name in args, f"{node_id}.validate_inputs does not check {name!r}"
            base = {a: inputs[a].default for a in args if a != name}
            assert node.validate_inputs(**base, **{name: spec.options[0]}) is True, (node_id, name)
            refusal = node.validate_inputs(**base, **{name: "not-an-option"})
            assert isinstance(refusal, str) and name in refusal and str(spec.options[0]) in refusal, (node_id, name, refusal)
            checked.append(f"{node_id}.{name}")
    assert len(checked) >= 10, checked


def test_foreign_conditioning_is_named_and_zeroed_deepgen_conditioning_samples(pack, loaded):
    model, _ = loaded
    positive, negative = _encode(pack, model)
    marker = pack.nodes.conditioning.DEEPGEN_MARKER
    assert positive[0][1][marker] and negative[0][1][marker]
    clip = [[torch.randn(1, 77, 768), {"pooled_output": torch.randn(1, 768)}]]  # what CLIPTextEncode gives
    with pytest.raises(ValueError, match=r"positive is not DeepGen conditioning \(a 768-wide sequence.*CLIPTextEncode.*DeepGen VLM Encode"):
        _sample(pack, model, clip, negative)
    with pytest.raises(ValueError, match="negative is not DeepGen conditioning"):
        _sample(pack, model, positive, clip)
    # ConditioningZeroOut copies the entry's dict and zeroes the tensors: still DeepGen conditioning, an all-zero
    # unconditional branch (not the encoded empty prompt the reference uses), so the image changes but stays valid
    zeroed = [[torch.zeros_like(negative[0][0]), negative[0][1] | {"pooled_output": torch.zeros_like(negative[0][1]["pooled_output"])}]]
    reference = _sample(pack, model, positive, negative)["samples"]
    with_zero = _sample(pack, model, positive, zeroed)["samples"]
    assert with_zero.isfinite().all() and not torch.allclose(with_zero, reference)


def test_rollout_preview_reports_progress_over_the_group_and_stops_on_cancel(pack, loaded, comfy):
    import comfy.utils as comfy_utils

    model, vae = loaded
    seen = []

    def hook(value, total, preview, node_id=None, stop_at=None):
        seen.append((value, total))
        if value == stop_at:
            comfy.mm.interrupt_current_processing(True)

    previous = comfy_utils.PROGRESS_BAR_HOOK
    try:
        comfy_utils.PROGRESS_BAR_HOOK = hook
        _rollout(pack, model, vae, steps=3)
        assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # one tick per step of the whole group, the last after scoring
        seen.clear()
        comfy_utils.PROGRESS_BAR_HOOK = lambda *a, **k: hook(*a, **k, stop_at=2)
        with pytest.raises(comfy.mm.InterruptProcessingException):
            _rollout(pack, model, vae, steps=10)
        assert seen == [(1, 11), (2, 11)]
    finally:
        comfy_utils.PROGRESS_BAR_HOOK = previous
        comfy.mm.interrupt_current_processing(False)
    assert _rollout(pack, model, vae).args[0].isfinite().all()


def test_rollout_rewards_are_the_runnable_ones_and_clip_comes_from_clip_vision(pack, loaded, comfy, tmp_path):
    rl = pack.nodes.rl
    model, vae = loaded
    schema = {i.id: i for i in rl.DeepGenRolloutPreview.define_schema().inputs}
    assert "unifiedreward_think" not in schema["rewards"].tooltip.split("from")[1].split("]")[0]
    with pytest.raises(ValueError, match="unifiedreward_think needs a UnifiedReward VLM server"):
        rl.parse_weights("unifiedreward_think=1")
    with pytest.raises(ValueError, match=r"clip_sim needs a transformers CLIP folder .* models/clip_vision"):
        _rollout(pack, model, vae, rewards="clip_sim=1")
    # the same checks when the prompt is queued
    assert rl.DeepGenRolloutPreview.validate_inputs(rewards="ocr=1, brightness=0.2") is True
    assert "clip_sim needs a transformers CLIP folder" in rl.DeepGenRolloutPreview.validate_inputs(rewards="clip_sim=1")
    assert "unknown reward 'sharpness'" in rl.DeepGenRolloutPreview.validate_inputs(rewards="sharpness=1")
    (tmp_path / "not-clip").mkdir()
    (tmp_path / "clip-vit-l").mkdir()
    (tmp_path / "clip-vit-l" / "config.json").write_text("{}")
    comfy.folder_paths.add_model_folder_path("clip_vision", str(tmp_path))
    assert rl.preview_reward("clip_sim").path == tmp_path / "clip-vit-l"
    assert rl.preview_reward("ocr") is pack.nodes.rewards.ocr_engine()


def test_rollout_ui_data_carries_every_card(pack, loaded):
    model, vae = loaded
    out = _rollout(pack, model, vae, prompts="a red circle\na blue square", group_size=3, rewards="brightness=1, color=0.5")
    data = out.ui["deepgen_rollout"][0]
    assert len(out.ui["images"]) == 1  # the captioned grid stays for API clients
    assert data["rewards"] == ["brightness", "color"] and data["weights"] == {"brightness": 1.0, "color": 0.5} and data["group_size"] == 3
    report = out.args[1].splitlines()
    assert [g["members"] for g in data["groups"]] == [[0, 1, 2], [3, 4, 5]] and len(data["images"]) == 6 == len(report)
    for card, line in zip(data["images"], report):
        advantage = float(re.search(r"advantage ([-+][\d.]+)", line).group(1))
        assert card["advantage"] == pytest.approx(advantage, abs=1e-3) and set(card["image"]) == {"filename", "subfolder", "type"}
        assert card["total"] == pytest.approx(card["scores"]["brightness"] + 0.5 * card["scores"]["color"], abs=1e-4)
    for group in data["groups"]:
        totals = [data["images"][i]["total"] for i in group["members"]]
        assert group["zero_variance"] == (max(totals) - min(totals) < 1e-6)
    flat = _rollout(pack, model, vae, rewards="ocr=1", prompts="no quoted text").ui["deepgen_rollout"][0]  # nothing scored
    assert flat["groups"][0]["zero_variance"] and {c["advantage"] for c in flat["images"]} == {0.0}


def test_ocr_reward_ui_data(pack):
    from tests.test_nodes import _text_image

    images = torch.cat([_text_image("HELLO"), torch.ones(1, 96, 320, 3)])
    out = pack.nodes.rewards.DeepGenOCRReward.execute(images=images, target_text="HELLO")
    data = out.ui["deepgen_ocr"][0]
    assert data["target"] == "HELLO" and [c["index"] for c in data["images"]] == [0, 1]
    assert data["images"][0]["score"] == pytest.approx(1.0) and "'HELLO'" in data["images"][0]["detail"]


def test_web_extension_and_a_help_page_for_every_node(pack):
    web = REPO / pack.WEB_DIRECTORY
    script = (web / "js" / "deepgen_cards.js").read_text()
    assert 'from "../../../scripts/app.js"' in script and "app.registerExtension(" in script
    assert "deepgen_rollout" in script and "deepgen_ocr" in script  # the keys nodes/ui_data.py sends
    locale = json.loads((REPO / "locales" / "en" / "main.json").read_text())  # merged into the frontend's i18n by ComfyUI
    assert locale["templateWorkflows"]["category"]["ComfyUI-DeepGen"] == "DeepGen"
    for node_id, node in _nodes(pack).items():
        page = web / "docs" / f"{node_id}.md"  # the frontend fetches /extensions/<pack>/docs/<NodeId>.md
        assert page.is_file(), f"no help page for {node_id}"
        text = page.read_text()
        assert text.startswith(f"# {node.define_schema().display_name}"), node_id
        for name in (i.id for i in node.define_schema().inputs):
            assert f"`{name}`" in text, (node_id, name)
