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


def _ui_templates() -> dict[str, dict]:
    """API name -> UI template (the UI files carry titles; `build.ui_path` maps the names)."""
    builder = _builder()
    return {p.stem: json.loads(builder.ui_path(p.stem).read_text()) for p in (REPO / "workflows" / "api").glob("*.json")}


def test_templates_are_up_to_date_with_the_node_schemas():
    builder = _builder()
    rendered = builder.render()
    stale = [str(p.relative_to(REPO)) for p, text in rendered.items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"run `python workflows/build.py`: out of date: {stale}"
    names = {p.stem for p in (REPO / "workflows" / "api").glob("*.json")}
    assert {p.name for p in (REPO / "example_workflows").glob("*.json")} == {builder.ui_path(n).name for n in names}
    assert names >= {"deepgen_rl_rollout_preview", "deepgen_text_to_image", "deepgen_edit", "deepgen_multi_reference_edit", "deepgen_text_rendering_ocr",
                     "deepgen_native_text_to_image", "deepgen_native_edit"}
    assert not list((REPO / "workflows").glob("*.json"))  # ComfyUI would list UI files there too


def test_ui_links_agree_with_the_node_schemas():
    """Each link's target slot is the index, among the node's socket inputs in schema order, of an input of the
    link's type, and its source slot an output of that type: what the frontend checks when it loads a workflow
    (a mismatch makes it log "Expected node to match patched data" and rewire)."""
    builder = _builder()
    specs = {**builder.NATIVE, **builder._schemas()}
    for name, ui in _ui_templates().items():
        nodes = {n["id"]: n for n in ui["nodes"]}
        for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
            sockets = [(n, t) for n, t in specs[nodes[dst]["type"]][0] if t not in builder.WIDGET_TYPES]
            assert nodes[dst]["inputs"][dst_slot] == {"name": sockets[dst_slot][0], "type": kind, "link": link_id}, (name, link_id)
            assert sockets[dst_slot][1] == kind and kind in (specs[nodes[src]["type"]][2][slot][1], "*"), (name, link_id)
            assert link_id in nodes[src]["outputs"][slot]["links"]
        for node in ui["nodes"]:
            if node["type"] in specs:
                assert [i["name"] for i in node["inputs"]] == [n for n, t in specs[node["type"]][0] if t not in builder.WIDGET_TYPES], (name, node["type"])


def test_ui_templates_are_laid_out_in_titled_groups_with_a_note():
    for name, ui in _ui_templates().items():
        boxes = {n["id"]: (*n["pos"], *n["size"]) for n in ui["nodes"]}
        for a, (x, y, w, h) in boxes.items():  # no two nodes overlap (title bars included)
            for b, (u, v, s, t) in boxes.items():
                assert a == b or x + w <= u or u + s <= x or y + h + 40 <= v or v + t + 40 <= y, (name, a, b)
        grouped = {n["id"] for n in ui["nodes"] if n["type"] != "MarkdownNote"}
        inside = {i for g in ui["groups"] for i, (x, y, w, h) in boxes.items()
                  if g["bounding"][0] <= x and x + w <= g["bounding"][0] + g["bounding"][2] and g["bounding"][1] <= y and y + h <= g["bounding"][1] + g["bounding"][3]}
        assert grouped <= inside and all(g["title"] for g in ui["groups"]), name
        assert [n["type"] for n in ui["nodes"]].count("MarkdownNote") == 1, name
        rows = {round(y) for x, y, w, h in boxes.values()}
        assert max(x + w for x, y, w, h in boxes.values()) < 2200 and len(ui["nodes"]) < 8 or len(rows) >= 2, name  # long templates wrap


def test_ui_links_and_api_inputs_agree():
    for name, ui in _ui_templates().items():
        api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
        nodes = {n["id"]: n for n in ui["nodes"] if n["type"] != "MarkdownNote"}  # notes live in the frontend only
        assert {str(i) for i in nodes} == set(api)
        for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
            name_in = next(i["name"] for i in nodes[dst]["inputs"] if i["link"] == link_id)
            assert api[str(dst)]["inputs"][name_in] == [str(src), slot], (name, name_in)
        for node in nodes.values():  # every widget value is in the API twin (plus the frontend-only extras)
            literal = [v for v in api[str(node["id"])]["inputs"].values() if not isinstance(v, list)]
            assert [v for v in node["widgets_values"] if v not in ("fixed", "image") or v in literal] == literal, (name, node["type"])


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


def test_every_template_has_a_thumbnail_and_a_renderer():
    spec = importlib.util.spec_from_file_location("workflow_thumbnails", REPO / "workflows" / "thumbnails.py")
    thumbnails = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(thumbnails)
    builder = _builder()
    names = {p.stem for p in (REPO / "workflows" / "api").glob("*.json")}
    assert set(thumbnails.RENDERERS) == names
    missing = [n for n in names if not builder.ui_path(n).with_suffix(".jpg").is_file()]
    assert not missing, f"run `python workflows/thumbnails.py --only {' '.join(missing)}` against a real ComfyUI"
