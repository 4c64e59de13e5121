"""Opt-in (COMFYUI_DIR): in a real ComfyUI server, out-of-range values are refused by ComfyUI's own validation
before anything runs, the rollout preview stops soon after an interrupt, and the server keeps serving after all
of it. Driven by `shared/tools/comfy/run_workflow.py` like tests/test_comfy_integration.py."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.test_comfy_integration import NODES, RUNNER, _free_port, _run, _workflow, setup  # noqa: F401 - fixture

COMFY = os.environ.get("COMFYUI_DIR")
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not COMFY or not RUNNER.is_file(), reason="set COMFYUI_DIR to a ComfyUI checkout (and have shared/tools/comfy)")


@pytest.fixture(scope="module")
def server(setup):
    root, model_paths = setup
    port = _free_port()
    start = ["--comfy-dir", COMFY, "--python", os.environ.get("COMFY_PYTHON", sys.executable), "--port", str(port), "--custom-nodes", str(REPO),
             "--require-nodes", NODES, "--keep-server", *model_paths]
    code, summary = _run(root, [_workflow(root, "deepgen_text_to_image")], *start)
    assert code == 0, summary
    yield root, ["--server", f"http://127.0.0.1:{port}"]
    os.kill(summary["server"]["pid"], signal.SIGTERM)


@pytest.mark.parametrize(("node", "values", "expected"), [
    ("DeepGenSampler", {"steps": 0}, "value_smaller_than_min"),
    ("DeepGenSampler", {"steps": 1001}, "value_bigger_than_max"),
    ("DeepGenSampler", {"cfg": -5.0}, "value_smaller_than_min"),
    ("DeepGenSampler", {"sampler": "dpmpp_2m"}, "sampler 'dpmpp_2m' is not available"),
    ("DeepGenRolloutPreview", {"group_size": 1}, "value_smaller_than_min"),
    ("DeepGenRolloutPreview", {"rewards": "unifiedreward_think=1"}, "needs a UnifiedReward VLM server"),
    ("DeepGenRolloutPreview", {"rewards": "clip_sim=1"}, "clip_sim needs a transformers CLIP folder"),
    ("DeepGenDiTLoader", {"weight_dtype": "fp4"}, "weight_dtype 'fp4' is not available"),  # the native stack's combos
    ("DeepGenCLIPLoader", {"dtype": "fp16"}, "dtype 'fp16' is not available"),
    ("EmptySD3LatentImage", {"width": 8}, "value_smaller_than_min"),  # ComfyUI's own checks stay on around them
])
def test_out_of_range_values_are_refused_before_running(server, node, values, expected):
    root, connect = server
    name = {"DeepGenRolloutPreview": "deepgen_rl_rollout_preview", "DeepGenDiTLoader": "deepgen_native_text_to_image",
            "DeepGenCLIPLoader": "deepgen_native_text_to_image", "EmptySD3LatentImage": "deepgen_native_text_to_image"}.get(node, "deepgen_text_to_image")
    code, result = _run(root, [_workflow(root, name, **{node: values})], *connect, "--expect", "invalid")
    assert code == 0 and expected in json.dumps(result), result


def test_torch_compile_backend_is_checked_and_the_rest_by_comfyui(server):
    root, connect = server
    graph = json.loads((REPO / "workflows" / "api" / "deepgen_text_to_image.json").read_text())
    graph["90"] = {"class_type": "DeepGenTorchCompile", "inputs": {"model": ["1", 0], "backend": "nope", "dynamic": True}}
    sampler = next(n for n in graph.values() if n["class_type"] == "DeepGenSampler")
    sampler["inputs"]["model"] = ["90", 0]  # ComfyUI validates only what feeds an output
    path = root / "compile-invalid.json"
    path.write_text(json.dumps(graph))
    code, result = _run(root, [path], *connect, "--expect", "invalid")
    assert code == 0 and "backend 'nope' is not available" in json.dumps(result)


def test_rollout_preview_stops_on_interrupt_and_the_server_keeps_serving(server):
    root, connect = server
    long_run = _workflow(root, "deepgen_rl_rollout_preview", DeepGenRolloutPreview={"steps": 200, "group_size": 16, "width": 256, "height": 256})
    code, result = _run(root, [long_run], *connect, "--timeout", "8")
    run = next(iter(result["workflows"].values()))
    # ended within 30 s of /interrupt (G=16 x 200 steps at 256 px would take minutes), as interrupted, not as a success
    assert code == 4 and run.get("interrupted_after_timeout") is True and "interrupt_ignored" not in run, run
    assert run["status"]["status_str"] != "success" and "execution_interrupted" in json.dumps(run["status"]), run
    # still serving: a text-to-image and a rollout preview after the refused, cancelled and failed prompts
    assert _run(root, [_workflow(root, "deepgen_text_to_image", DeepGenSampler={"seed": 11})], *connect)[0] == 0
    code, result = _run(root, [_workflow(root, "deepgen_rl_rollout_preview")], *connect)
    assert code == 0 and "deepgen_rollout" in json.dumps(result)
