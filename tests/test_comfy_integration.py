"""Opt-in: the pack inside a real headless ComfyUI server (set COMFYUI_DIR to a ComfyUI checkout; COMFY_PYTHON to
a Python that runs it, default this one). Drives it with `shared/tools/comfy/run_workflow.py`: node registration,
every API workflow of `workflows/api/` on the tiny model placed in model folders, caching, interrupt, and errors
that leave the server usable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import sd3_vae, tiny_components

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO.parent / "shared" / "tools" / "comfy" / "run_workflow.py"
COMFY = os.environ.get("COMFYUI_DIR")
PLACED_MODEL = {"model_name": "deepgen-encoder.safetensors", "transformer_name": "deepgen-transformer.safetensors", "vae_name": "deepgen-vae.safetensors"}
NODES = "DeepGenLoader,DeepGenVLMEncode,DeepGenThinkTokens,DeepGenReferenceLatent,DeepGenSampler,DeepGenOCRReward,DeepGenRolloutPreview,DeepGenTorchCompile,DeepGenDiTLoader,DeepGenCLIPLoader,DeepGenVAELoader,DeepGenTextEncodeEdit"

pytestmark = pytest.mark.skipif(not COMFY or not RUNNER.is_file(), reason="set COMFYUI_DIR to a ComfyUI checkout (and have shared/tools/comfy)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    components = tiny_components(seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        components.vae = sd3_vae().eval()  # ComfyUI's VAE loader knows only the real SD3 VAE layout
    DeepGenPipeline.from_components(components).save_converted(root / "converted", dtype=None)
    paths = []
    for key, name in (("deepgen", "encoder"), ("diffusion_models", "transformer"), ("vae", "vae")):
        (root / key).mkdir()
        shutil.copy(root / "converted" / f"deepgen-{name}.safetensors", root / key)
        paths += ["--model-path", f"{key}={root / key}"]
    Image.new("RGB", (96, 64), (200, 40, 40)).save(root / "example.png")
    return root, paths


def _workflow(root: Path, name: str, **overrides) -> Path:
    """An API workflow with small sizes and few steps on the random tiny model placed in the model folders (the
    templates default to the embedded DeepGen-Tiny); overrides: {class_type: {input: value}}."""
    graph = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    small = {"DeepGenLoader": PLACED_MODEL, "DeepGenSampler": {"steps": 4}, "EmptySD3LatentImage": {"width": 128, "height": 128, "batch_size": 1},
             "DeepGenRolloutPreview": {"steps": 2, "group_size": 2, "width": 64, "height": 64}}
    for node in graph.values():
        for table in (small, overrides):
            node["inputs"].update(table.get(node["class_type"], {}))
    path = root / f"{name}-{len(list(root.glob(name + '*.json')))}.json"
    path.write_text(json.dumps(graph))
    return path


def _run(root: Path, workflows: list[Path], *extra: str) -> tuple[int, dict]:
    out = root / f"summary-{len(list(root.glob('summary-*')))}.json"
    cmd = [sys.executable, str(RUNNER), *map(str, workflows), "--json-out", str(out), *extra]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    return proc.returncode, json.loads(out.read_text())


def test_pack_in_real_comfyui(setup):
    root, model_paths = setup
    port = _free_port()
    python = os.environ.get("COMFY_PYTHON", sys.executable)
    start = ["--comfy-dir", COMFY, "--python", python, "--port", str(port), "--custom-nodes", str(REPO), "--require-nodes", NODES,
             "--input-file", str(root / "example.png"), "--keep-server", "--fetch-images", str(root / "images"), *model_paths]
    names = sorted(p.stem for p in (REPO / "workflows" / "api").glob("*.json"))
    code, summary = _run(root, [_workflow(root, n) for n in names], *start)
    assert "pid" in summary["server"], f"ComfyUI did not start (exit {code})"
    pid = summary["server"]["pid"]
    try:
        assert code == 0, summary
        # ComfyUI's own audio extras fail without torchaudio; no custom pack (ours) may fail
        assert not [line for line in summary["server"]["import_failed"] if "custom_nodes" in line]
        for result in summary["workflows"].values():
            assert result["status"]["status_str"] == "success"
        images = sorted((root / "images").rglob("*deepgen_*.png"))
        assert len(images) >= 4 and all(Image.open(p).size in ((128, 128), (96, 64)) for p in images)
        rollout = next(r for p, r in summary["workflows"].items() if "rollout" in p)
        assert "advantage" in json.dumps(rollout["outputs"]) and "images" in json.dumps(rollout["outputs"])
        ocr = next(r for p, r in summary["workflows"].items() if "ocr" in p)
        report = json.dumps(ocr["outputs"])
        assert "target: 'CAT'" in report and "score" in report

        server = ["--server", f"http://127.0.0.1:{port}"]
        t2i = _workflow(root, "deepgen_text_to_image")
        first = _run(root, [t2i], *server)
        again = _run(root, [t2i], *server)  # identical prompt: everything cached
        assert first[0] == again[0] == 0
        messages = next(iter(again[1]["workflows"].values()))["status"]["messages"]
        cached = [data["nodes"] for event, data in messages if event == "execution_cached"]
        assert cached and set(cached[0]) >= {"1", "2", "3", "4", "5", "6"}

        long_run = _workflow(root, "deepgen_text_to_image", DeepGenSampler={"steps": 1000, "seed": 1}, EmptySD3LatentImage={"width": 256, "height": 256, "batch_size": 4})
        code, result = _run(root, [long_run], *server, "--timeout", "10")
        assert code == 4 and next(iter(result["workflows"].values())).get("interrupted_after_timeout") is True

        bad_size = _workflow(root, "deepgen_text_to_image", EmptySD3LatentImage={"width": 136, "height": 128, "batch_size": 1})
        code, result = _run(root, [bad_size], *server, "--expect", "error")
        assert code == 0 and "multiples of 16" in json.dumps(result)
        missing = _workflow(root, "deepgen_text_to_image", DeepGenLoader={"model_name": "nope.safetensors"})
        code, result = _run(root, [missing], *server, "--expect", "error")
        assert code == 0 and "not in any models/deepgen folder" in json.dumps(result)
        assert _run(root, [_workflow(root, "deepgen_text_to_image", DeepGenSampler={"seed": 3})], *server)[0] == 0  # still usable
    finally:
        os.kill(pid, signal.SIGTERM)


def test_templates_draw_what_they_say_with_the_embedded_model(tmp_path):
    """The text-to-image and edit templates exactly as shipped (the loader's "DeepGen-Tiny (embedded)", 128 px, 25
    steps): no model files placed, and the pictures show what the prompts ask for."""
    from deepgen_core.loading import is_converted
    from deepgen_core.presets import DEEPGEN_TINY_DIR
    from deepgen_core.tiny_world import detect

    if not is_converted(DEEPGEN_TINY_DIR):
        pytest.skip("the embedded DeepGen-Tiny weights are not installed")
    python = os.environ.get("COMFY_PYTHON", sys.executable)
    start = ["--comfy-dir", COMFY, "--python", python, "--port", str(_free_port()), "--custom-nodes", str(REPO), "--require-nodes", NODES,
             "--fetch-images", str(tmp_path / "images")]
    code, summary = _run(tmp_path, [REPO / "workflows" / "api" / f"{name}.json" for name in ("deepgen_text_to_image", "deepgen_edit")], *start)
    assert code == 0, summary
    found = {}
    for prefix in ("deepgen_t2i", "deepgen_edit_source", "deepgen_edit"):
        image = Image.open(min((tmp_path / "images").rglob(f"*_{prefix}_0*.png")))  # <node id>_<prefix>_00001_.png
        detection = detect(image)
        assert image.size == (128, 128) and detection.background == "blue" and len(detection.objects) == 1, (prefix, detection)
        found[prefix] = (detection.objects[0].obj.colour, detection.objects[0].obj.shape)
    # "a large red circle in the center, blue background", then "make the circle green" on it
    assert found == {"deepgen_t2i": ("red", "circle"), "deepgen_edit_source": ("red", "circle"), "deepgen_edit": ("green", "circle")}
