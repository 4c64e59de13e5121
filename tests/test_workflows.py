"""The shipped workflow templates: generated from the node schemas, UI and API twins consistent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from deepgen_core.tiny_world import (
    Obj,
    Scene,
    TextScene,
    describe,
    describe_text,
    parse_prompt,
)

REPO = Path(__file__).resolve().parent.parent


def _builder():
    spec = importlib.util.spec_from_file_location("workflow_builder", REPO / "workflows" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["workflow_builder"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_templates_are_up_to_date_with_the_node_schemas():
    rendered = _builder().render()
    stale = [str(p.relative_to(REPO)) for p, text in rendered.items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"run `python workflows/build.py`: out of date: {stale}"
    names = {p.stem for p in (REPO / "workflows").glob("*.json")}
    assert names == {p.stem for p in (REPO / "workflows" / "api").glob("*.json")} >= {"deepgen_rl_rollout_preview",
        "deepgen_text_to_image", "deepgen_edit", "deepgen_multi_reference_edit", "deepgen_text_rendering_ocr"}


def test_ui_links_and_api_inputs_agree():
    for ui_path in (REPO / "workflows").glob("*.json"):
        ui = json.loads(ui_path.read_text())
        api = json.loads((REPO / "workflows" / "api" / ui_path.name).read_text())
        nodes = {n["id"]: n for n in ui["nodes"]}
        assert {str(i) for i in nodes} == set(api)
        for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
            name = next(i["name"] for i in nodes[dst]["inputs"] if i["link"] == link_id)
            assert api[str(dst)]["inputs"][name] == [str(src), slot], (ui_path.name, name)
            assert link_id in nodes[src]["outputs"][slot]["links"]
        for node in ui["nodes"]:  # every widget value is in the API twin (plus the frontend-only extras)
            literal = [v for v in api[str(node["id"])]["inputs"].values() if not isinstance(v, list)]
            assert [v for v in node["widgets_values"] if v not in ("fixed", "image") or v in literal] == literal, (ui_path.name, node["type"])


def test_templates_run_the_embedded_model_on_prompts_it_was_trained_on():
    builder = _builder()
    for path in (REPO / "workflows" / "api").glob("*.json"):
        graph = json.loads(path.read_text())
        loaders = [n["inputs"] for n in graph.values() if n["class_type"] == "DeepGenLoader"]
        native = [v for n in graph.values() if n["class_type"] in ("DeepGenDiTLoader", "DeepGenCLIPLoader", "DeepGenVAELoader") for k, v in n["inputs"].items() if k.endswith("_name")]
        assert loaders or native, path.name
        for loader in loaders:
            assert (loader["model_name"], loader["transformer_name"], loader["vae_name"]) == ("DeepGen-Tiny (embedded)", "(from model)", "(from model)"), path.name
        assert set(native) <= {"DeepGen-Tiny (embedded)"}, path.name  # the native stack's loaders (MODEL, CLIP, VAE)
        for node in graph.values():
            sizes = {k: v for k, v in node["inputs"].items() if k in ("width", "height")}
            assert set(sizes.values()) <= {128}, (path.name, node["class_type"])
            assert node["inputs"].get("steps", 25) == 25, (path.name, node["class_type"])
    # the prompts are ones `describe` / `describe_text` produce (the phrasing DeepGen-Tiny was trained on)
    rngs = [np.random.default_rng(i) for i in range(40)]
    assert parse_prompt(builder.SHAPE_PROMPT) == (Obj("circle", "red", "large", "center"), "blue")
    assert builder.SHAPE_PROMPT in {describe(Scene("blue", (Obj("circle", "red", "large", "center"),)), rng) for rng in rngs}
    assert builder.TEXT_PROMPT in {describe_text(TextScene("CAT", "black", "white"), rng) for rng in rngs}
    # the edit template draws its own input: the edit encoder and reference latent read the decoded t2i image
    edit = json.loads((REPO / "workflows" / "api" / "deepgen_edit.json").read_text())
    assert "LoadImage" not in {n["class_type"] for n in edit.values()}
    encoders = {n["inputs"]["prompt"]: key for key, n in edit.items() if n["class_type"] == "DeepGenVLMEncode"}
    assert set(encoders) == {builder.SHAPE_PROMPT, builder.EDIT_INSTRUCTION}
    reference = next(n["inputs"] for n in edit.values() if n["class_type"] == "DeepGenReferenceLatent")
    source = reference["image"][0]
    assert edit[encoders[builder.EDIT_INSTRUCTION]]["inputs"]["image_1"] == reference["image"] and edit[source]["class_type"] == "VAEDecode"
    sampler = edit[edit[source]["inputs"]["samples"][0]]["inputs"]
    assert sampler["positive"] == [encoders[builder.SHAPE_PROMPT], 0]
