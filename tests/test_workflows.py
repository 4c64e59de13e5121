"""The shipped workflow templates: generated from the node schemas, UI and API twins consistent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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
