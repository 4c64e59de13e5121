"""Writes the pack's workflow templates: UI format in `example_workflows/` (ComfyUI's template browser lists these,
under their titles, with the `.jpg` thumbnails `workflows/thumbnails.py` renders) and API-format twins in
`workflows/api/` (for headless queues and the integration test). Run `python workflows/build.py` after changing
a node's inputs; `tests/test_workflows.py` fails when the files are out of date.

Widget order comes from the DeepGen nodes' own schemas (read through the test stand-in for ComfyUI), so the
positional `widgets_values` always match `/object_info`'s `input_order`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Every template runs on the embedded DeepGen-Tiny (128 px) out of the box, with prompts in the phrasing of its
# procedural training world (`deepgen_core.tiny_world`: `describe`, `describe_text`, `make_edit`). For DeepGen 1.0
# pick the converted files in the loader and raise the sizes to 512.
MODEL = {"model_name": "DeepGen-Tiny (embedded)", "transformer_name": "(from model)", "vae_name": "(from model)", "dtype": "auto", "attention": "auto"}
SAMPLING = {"seed": 42, "steps": 25, "cfg": 4.0, "shift": 3.0, "sampler": "euler", "eta": 1.0}
SIZE = 128
SHAPE_PROMPT = "a large red circle in the center, blue background"
EDIT_INSTRUCTION = "make the circle green"
TEXT_PROMPT = 'the word "CAT" in black letters on a white background'
ROLLOUT_PROMPTS = 'the word "SUN" in yellow letters on a black background'

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# Built-in ComfyUI nodes used by the templates: (inputs [(name, type)], widgets, outputs [(name, type)]).
NATIVE = {
    "EmptySD3LatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "LoadImage": ([], ["image", "upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "PreviewAny": ([("source", "*")], [], []),
}

# The native stack's built-in nodes (DeepGen's DiT as MODEL, its VLM + SCB as CLIP). KSampler's seed carries the
# frontend's control_after_generate widget value, as the DeepGen Sampler's does.
_SEED = type("SeedWidget", (), {"default": 42, "control_after_generate": True})()
NATIVE.update({
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                 ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"], [("LATENT", "LATENT")], {"seed": _SEED}),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [], [("LATENT", "LATENT")]),
    "ReferenceLatent": ([("conditioning", "CONDITIONING"), ("latent", "LATENT")], [], [("CONDITIONING", "CONDITIONING")]),
})


@dataclass
class Node:
    id: int
    type: str
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    title: str | None = None


def _schemas() -> dict:
    if "deepgen_pack" not in sys.modules:
        sys.path.append(str(REPO / "tests" / "comfy_stub"))  # after a real ComfyUI, if one is on the path
        spec = importlib.util.spec_from_file_location("deepgen_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["deepgen_pack"] = module
        spec.loader.exec_module(module)
    from deepgen_pack.nodes import NODES

    out = {}
    for node in NODES:
        schema = node.define_schema()
        ordered = [i for i in schema.inputs if not i.optional] + [i for i in schema.inputs if i.optional]
        sockets = [(i.id, i.get_io_type()) for i in ordered]
        widgets = [i.id for i in ordered if i.get_io_type() in WIDGET_TYPES]
        outputs = [(o.display_name, o.get_io_type()) for o in schema.outputs]
        out[schema.node_id] = (sockets, widgets, outputs, {i.id: i for i in ordered})
    return out


def _widget_values(spec: tuple, node: Node) -> list:
    values = []
    defaults = spec[3] if len(spec) > 3 else {}
    for name in spec[1]:
        value = node.widgets.get(name, getattr(defaults.get(name), "default", None))
        values.append(value)
        if getattr(defaults.get(name), "control_after_generate", False):
            values.append("fixed")  # the frontend stores control_after_generate right after the seed
    return values


def to_api(nodes: list[Node], specs: dict) -> dict:
    api = {}
    for node in nodes:
        spec = specs[node.type]
        inputs = {name: node.widgets.get(name, getattr(spec[3].get(name), "default", None) if len(spec) > 3 else None) for name in spec[1] if name != "upload"}
        inputs.update({name: [str(src), slot] for name, (src, slot) in node.links.items()})
        api[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": node.title or node.type}}
    return api


# Frontend sizes (w, h) that show every widget (multiline prompts get room); other types get DEFAULT_SIZE.
SIZES = {
    "DeepGenLoader": (330, 190), "DeepGenVLMEncode": (380, 340), "DeepGenReferenceLatent": (300, 150), "DeepGenSampler": (300, 280),
    "DeepGenOCRReward": (420, 420), "DeepGenRolloutPreview": (640, 900), "EmptySD3LatentImage": (260, 110), "VAEDecode": (180, 50),
    "SaveImage": (260, 300), "LoadImage": (260, 330), "PreviewAny": (340, 260), "MarkdownNote": (330, 170),
    "DeepGenDiTLoader": (330, 82), "DeepGenCLIPLoader": (330, 82), "DeepGenVAELoader": (330, 58), "DeepGenTextEncodeEdit": (360, 300),
    "CLIPTextEncode": (380, 160), "KSampler": (300, 262), "VAEEncode": (180, 50), "ReferenceLatent": (230, 50),
}
DEFAULT_SIZE = (320, 200)
NOTE = 0  # the layout's node id for the template's Markdown note
GAP, TITLE, PAD = 40, 46, 12  # between nodes, a group's title bar, a group's border
COLOURS = {"model": "#3f789e", "prompt": "#8a6d3b", "sample": "#4b7a4b", "score": "#7a4b7a"}


@dataclass
class Layout:
    """Where a template's nodes go: rows of columns of node ids (a column stacks its nodes), titled coloured groups
    (title, colour key, node ids), and an optional Markdown note (a frontend-only node, absent from the API twin)."""

    rows: list[list[list[int]]]
    groups: list[tuple[str, str, list[int]]] = field(default_factory=list)
    note: str | None = None


def _positions(layout: Layout, sizes: dict[int, tuple[int, int]]) -> dict[int, list[int]]:
    positions, y = {}, TITLE + PAD
    for row in layout.rows:
        x, height = PAD, 0
        for column in row:
            top = y
            for node_id in column:
                positions[node_id] = [x, top]
                top += sizes[node_id][1] + GAP + TITLE
            x += max(sizes[n][0] for n in column) + GAP + 2 * PAD
            height = max(height, top - y)
        y += height + TITLE + PAD
    return positions


def _groups(layout: Layout, positions: dict, sizes: dict) -> list[dict]:
    groups = []
    for title, colour, members in layout.groups:
        left = min(positions[n][0] for n in members) - PAD
        top = min(positions[n][1] for n in members) - TITLE - PAD // 2 - 30  # above the node title bars
        right = max(positions[n][0] + sizes[n][0] for n in members) + PAD
        bottom = max(positions[n][1] + sizes[n][1] for n in members) + PAD
        groups.append({"title": title, "bounding": [left, top, right - left, bottom - top], "color": COLOURS[colour], "font_size": 22, "flags": {}})
    return groups


def _links(nodes: list[Node], specs: dict) -> tuple[list[list], dict]:
    """UI links [id, source, source slot, target, target slot, type]. The target slot indexes the node's socket
    inputs (widgets excluded), in schema order, as the frontend numbers them."""
    links, outgoing = [], {}
    for node in nodes:
        sockets = [name for name, kind in specs[node.type][0] if kind not in WIDGET_TYPES]
        for name, (src, slot) in node.links.items():
            link_id = len(links) + 1
            links.append([link_id, src, slot, node.id, sockets.index(name), dict(specs[node.type][0])[name]])
            outgoing.setdefault((src, slot), []).append(link_id)
    return links, outgoing


def to_ui(nodes: list[Node], specs: dict, layout: Layout | None = None) -> dict:
    links, outgoing = _links(nodes, specs)
    by_input = {(link[3], link[4]): link[0] for link in links}
    sizes = {n.id: SIZES.get(n.type, DEFAULT_SIZE) for n in nodes} | {NOTE: SIZES["MarkdownNote"]}
    layout = layout or Layout([[[n.id] for n in nodes]])
    positions = _positions(layout, sizes)
    groups = _groups(layout, positions, sizes)
    ui_nodes = []
    for order, node in enumerate(nodes):
        sockets, _, outputs = specs[node.type][:3]
        names = [(name, kind) for name, kind in sockets if kind not in WIDGET_TYPES]
        ui_nodes.append({
            "id": node.id, "type": node.type, "pos": positions[node.id], "size": list(sizes[node.id]), "flags": {}, "order": order,
            "mode": 0, "inputs": [{"name": name, "type": kind, "link": by_input.get((node.id, slot))} for slot, (name, kind) in enumerate(names)],
            "outputs": [{"name": n, "type": t, "links": outgoing.get((node.id, s), []), "slot_index": s} for s, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": node.type}, "widgets_values": _widget_values(specs[node.type], node),
            **({"title": node.title} if node.title else {}),
        })
    last_id = max(n.id for n in nodes)
    if layout.note:  # the note sits where the layout puts node id NOTE
        last_id += 1
        ui_nodes.append({"id": last_id, "type": "MarkdownNote", "pos": positions[NOTE], "size": list(sizes[NOTE]), "flags": {}, "order": len(nodes),
                         "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [layout.note], "title": "About this template",
                         "color": "#432", "bgcolor": "#653"})
    return {"last_node_id": last_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": groups, "config": {}, "extra": {"ds": _fit(groups)}, "version": 0.4}


def _fit(groups: list[dict], screen: tuple[int, int] = (1480, 800)) -> dict:
    """The canvas view (LiteGraph `ds`: screen = (graph + offset) * scale) that shows every group on a 1600x900
    window next to the sidebar."""
    left = min(g["bounding"][0] for g in groups)
    top = min(g["bounding"][1] for g in groups)
    width = max(g["bounding"][0] + g["bounding"][2] for g in groups) - left
    height = max(g["bounding"][1] + g["bounding"][3] for g in groups) - top
    scale = round(min(1.0, screen[0] / width, screen[1] / height), 3)
    return {"scale": scale, "offset": [round(30 / scale - left), round(50 / scale - top)]}


def _text_to_image(first_id: int, prompt: str, batch_size: int = 1) -> list[Node]:
    """Encode -> empty latent -> sample -> decode from node `first_id` on; the decoded IMAGE is output 0 of the
    last node. The loader is node 1."""
    encode, empty, sample, decode = range(first_id, first_id + 4)
    return [
        Node(encode, "DeepGenVLMEncode", {"prompt": prompt, "negative_prompt": ""}, {"model": (1, 0)}),
        Node(empty, "EmptySD3LatentImage", {"width": SIZE, "height": SIZE, "batch_size": batch_size}),
        Node(sample, "DeepGenSampler", SAMPLING, {"model": (1, 0), "positive": (encode, 0), "negative": (encode, 1), "latent_image": (empty, 0)}),
        Node(decode, "VAEDecode", {}, {"samples": (sample, 0), "vae": (1, 1)}),
    ]


def templates() -> dict[str, list[Node]]:
    loader = Node(1, "DeepGenLoader", MODEL)
    t2i = [loader, *_text_to_image(2, SHAPE_PROMPT), Node(6, "SaveImage", {"filename_prefix": "deepgen_t2i"}, {"images": (5, 0)})]
    # the edit starts from a picture the model draws itself (nodes 2-5), so the template needs no input file
    edit = [
        loader,
        *_text_to_image(2, SHAPE_PROMPT),
        Node(6, "DeepGenVLMEncode", {"prompt": EDIT_INSTRUCTION, "negative_prompt": ""}, {"model": (1, 0), "image_1": (5, 0)}),
        Node(7, "DeepGenReferenceLatent", {}, {"conditioning": (6, 0), "image": (5, 0), "vae": (1, 1)}),
        Node(8, "DeepGenSampler", SAMPLING, {"model": (1, 0), "positive": (7, 0), "negative": (6, 1), "latent_image": (7, 1)}),
        Node(9, "VAEDecode", {}, {"samples": (8, 0), "vae": (1, 1)}),
        Node(10, "SaveImage", {"filename_prefix": "deepgen_edit_source"}, {"images": (5, 0)}),
        Node(11, "SaveImage", {"filename_prefix": "deepgen_edit"}, {"images": (9, 0)}),
    ]
    # DeepGen-Tiny was not trained on two references: this one is meant for DeepGen 1.0 and your own images
    multi = [
        loader,
        Node(2, "LoadImage", {"image": "example.png", "upload": "image"}, title="Load Image (subject)"),
        Node(3, "LoadImage", {"image": "example.png", "upload": "image"}, title="Load Image (style)"),
        Node(4, "DeepGenVLMEncode", {"prompt": "put the object of image 1 in the scene of image 2", "negative_prompt": ""}, {"model": (1, 0), "image_1": (2, 0), "image_2": (3, 0)}),
        Node(5, "DeepGenReferenceLatent", {}, {"conditioning": (4, 0), "image": (2, 0), "vae": (1, 1)}),
        Node(6, "DeepGenReferenceLatent", {}, {"conditioning": (5, 0), "image": (3, 0), "vae": (1, 1)}),
        Node(7, "DeepGenSampler", SAMPLING, {"model": (1, 0), "positive": (6, 0), "negative": (4, 1), "latent_image": (5, 1)}),
        Node(8, "VAEDecode", {}, {"samples": (7, 0), "vae": (1, 1)}),
        Node(9, "SaveImage", {"filename_prefix": "deepgen_multi_edit"}, {"images": (8, 0)}),
    ]
    ocr = [
        loader,
        *_text_to_image(2, TEXT_PROMPT, batch_size=2),
        Node(6, "SaveImage", {"filename_prefix": "deepgen_text"}, {"images": (5, 0)}),
        Node(7, "DeepGenOCRReward", {"target_text": TEXT_PROMPT}, {"images": (5, 0)}),
        Node(8, "PreviewAny", {}, {"source": (7, 1)}, title="OCR report"),
    ]
    rollout = [
        loader,
        Node(2, "DeepGenRolloutPreview", {"prompts": ROLLOUT_PROMPTS, "group_size": 4, "seed": 0, "steps": SAMPLING["steps"], "width": SIZE, "height": SIZE,
                                          "rewards": "ocr=1, brightness=0.2"}, {"model": (1, 0), "vae": (1, 1)}),
        Node(3, "PreviewAny", {}, {"source": (2, 1)}, title="Rewards and advantages"),
    ]
    return {"deepgen_text_to_image": t2i, "deepgen_edit": edit, "deepgen_multi_reference_edit": multi, "deepgen_text_rendering_ocr": ocr,
            "deepgen_rl_rollout_preview": rollout}


# The frontend shows a custom-node template's file name as its title and, with - and _ as spaces, as its
# description (it reads no index for them): the UI files carry these names. API twins keep the short ids.
TITLES = {
    "deepgen_text_to_image": "DeepGen Text to Image",
    "deepgen_edit": "DeepGen Image Edit",
    "deepgen_multi_reference_edit": "DeepGen Multi-Reference Edit",
    "deepgen_text_rendering_ocr": "DeepGen Text Rendering with OCR Score",
    "deepgen_rl_rollout_preview": "DeepGen RL Rollout Preview",
    "deepgen_native_text_to_image": "DeepGen Native Text to Image",
    "deepgen_native_edit": "DeepGen Native Image Edit",
}
TINY = ("Runs out of the box on the embedded **DeepGen-Tiny** (128 px shapes and words). For DeepGen 1.0 pick its files in "
        "DeepGen Loader and raise the size to 512 or more.")
LAYOUTS = {
    "deepgen_text_to_image": Layout(
        [[[1, NOTE], [2], [3], [4], [5, 6]]],
        [("Model", "model", [1]), ("Prompt and size", "prompt", [2, 3]), ("Sample, decode, save", "sample", [4, 5, 6])],
        f"### Text to image\nDeepGen VLM Encode turns the prompt into DiT conditioning; DeepGen Sampler denoises an SD3 latent; "
        f"the native VAEDecode decodes it. {TINY}"),
    "deepgen_edit": Layout(
        [[[1], [2], [3], [4], [5, 10]], [[NOTE], [6], [7], [8], [9, 11]]],
        [("Model", "model", [1]), ("1. Draw a source image", "prompt", [2, 3, 4, 5, 10]), ("2. Edit it", "sample", [6, 7, 8, 9, 11])],
        f"### Image edit\nRow 1 draws the picture to edit, so the template needs no input file; to edit your own image, replace "
        f"node 5's output with a Load Image. Row 2 encodes the instruction with the image (DeepGen VLM Encode), adds the image "
        f"as a reference latent and samples at the reference's size. {TINY}"),
    "deepgen_multi_reference_edit": Layout(
        [[[1], [2], [3], [4]], [[NOTE], [5, 6], [7], [8, 9]]],
        [("Model", "model", [1]), ("References and instruction", "prompt", [2, 3, 4]), ("Reference latents, sample, save", "sample", [5, 6, 7, 8, 9])],
        "### Multi-reference edit\nTwo images (subject and style) go into DeepGen VLM Encode and, as reference latents, into "
        "the sampler. Load your own images. This one is meant for **DeepGen 1.0**: DeepGen-Tiny was not trained on two references."),
    "deepgen_text_rendering_ocr": Layout(
        [[[1], [2], [3], [4], [5, 6]], [[NOTE], [7], [8]]],
        [("Model", "model", [1]), ("Prompt (the quoted word is the target)", "prompt", [2, 3]), ("Sample, decode, save", "sample", [4, 5, 6]),
         ("Score the text", "score", [7, 8])],
        f"### Text rendering with OCR score\nDraws two images of a quoted word and scores them with the OCR reward that RL "
        f"training uses: DeepGen OCR Reward shows a card per image with what it read. {TINY}"),
    "deepgen_rl_rollout_preview": Layout(
        [[[1, NOTE], [2], [3]]],
        [("Model", "model", [1]), ("One MR-GRPO rollout group", "score", [2, 3])],
        f"### RL rollout preview\nSamples one rollout group (G images per prompt, same initial noise, SDE sampler) and scores "
        f"it with the trainer's own functions: a card per image with a bar per reward, the weighted total and the group "
        f"advantage; a group with zero variance gives no learning signal. Click a card to enlarge it. DeepGen-Tiny writes "
        f"its training words perfectly, so OCR alone gives every image the same score (zero variance); the small "
        f"brightness reward shows how advantages rank a group. {TINY}"),
}


NATIVE_TINY = ("Runs out of the box on the embedded **DeepGen-Tiny** (128 px). For DeepGen 1.0 pick its files in the three "
               "loaders (`models/diffusion_models`, `models/text_encoders`, `models/vae`) and raise the size to 512 or more.")
LAYOUTS |= {
    "deepgen_native_text_to_image": Layout(
        [[[1, 2, 3, NOTE], [4, 5], [6], [7], [8, 9]]],
        [("Models (MODEL, CLIP, VAE)", "model", [1, 2, 3]), ("Prompt and size", "prompt", [4, 5, 6]), ("KSampler, decode, save", "sample", [7, 8, 9])],
        f"### Native text to image\nDeepGen as ordinary ComfyUI models: the DiT as MODEL, the VLM + SCB as CLIP. "
        f"CLIPTextEncode gives DeepGen conditioning, KSampler (euler + normal: DeepGen Sampler's schedule) samples it. {NATIVE_TINY}"),
    "deepgen_native_edit": Layout(
        [[[1, 2, 3], [4, 5], [6], [7], [8, 16]], [[NOTE], [9], [10], [11, 12, 13], [14], [15, 17]]],
        [("Models (MODEL, CLIP, VAE)", "model", [1, 2, 3]), ("1. Draw a source image", "prompt", [4, 5, 6, 7, 8, 16]),
         ("2. Edit it", "sample", [9, 10, 11, 12, 13, 14, 15, 17])],
        f"### Native image edit\nRow 1 draws the picture to edit. Row 2 encodes the instruction **and** the negative with the "
        f"image (DeepGen Text Encode (edit)), adds the VAE-encoded image with ReferenceLatent to both (KSampler uses each "
        f"branch's own references) and samples at the image's size. To edit your own image, connect a Load Image where "
        f"row 1's VAE Decode feeds row 2. {NATIVE_TINY}"),
}


def ui_path(name: str) -> Path:
    """Where the UI template `name` goes: `example_workflows/<title>.json` (ComfyUI's template folder)."""
    return REPO / "example_workflows" / f"{TITLES.get(name, name)}.json"


NATIVE_LOADERS = {"dit_name": "DeepGen-Tiny (embedded)", "weight_dtype": "default", "clip_name": "DeepGen-Tiny (embedded)", "dtype": "auto",
                  "vae_name": "DeepGen-Tiny (embedded)"}
# euler + normal is DeepGen Sampler's schedule exactly (diffusers' flow-matching sigmas); see docs/comfyui-native.md
KSAMPLER = {"seed": SAMPLING["seed"], "steps": SAMPLING["steps"], "cfg": SAMPLING["cfg"], "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}


def _native_loaders() -> list[Node]:
    """Nodes 1-3: DiT as MODEL, VLM + SCB as CLIP, VAE."""
    keys = {"DeepGenDiTLoader": ("dit_name", "weight_dtype"), "DeepGenCLIPLoader": ("clip_name", "dtype"), "DeepGenVAELoader": ("vae_name",)}
    return [Node(i, kind, {k: NATIVE_LOADERS[k] for k in keys[kind]}) for i, kind in enumerate(keys, start=1)]


def _native_text_to_image(first_id: int, prompt: str) -> list[Node]:
    """CLIPTextEncode x2 -> empty latent -> KSampler -> VAEDecode from node `first_id` on (decoded IMAGE: output 0 of
    the last node)."""
    pos, neg, empty, sample, decode = range(first_id, first_id + 5)
    return [
        Node(pos, "CLIPTextEncode", {"text": prompt}, {"clip": (2, 0)}, title="CLIPTextEncode (positive)"),
        Node(neg, "CLIPTextEncode", {"text": ""}, {"clip": (2, 0)}, title="CLIPTextEncode (negative)"),
        Node(empty, "EmptySD3LatentImage", {"width": SIZE, "height": SIZE, "batch_size": 1}),
        Node(sample, "KSampler", KSAMPLER, {"model": (1, 0), "positive": (pos, 0), "negative": (neg, 0), "latent_image": (empty, 0)}),
        Node(decode, "VAEDecode", {}, {"samples": (sample, 0), "vae": (3, 0)}),
    ]


def native_templates() -> dict[str, list[Node]]:
    """The native-stack twins of the text-to-image and edit templates: loaders -> CLIPTextEncode / DeepGen Text
    Encode (edit) -> ReferenceLatent -> KSampler -> VAEDecode."""
    t2i = [*_native_loaders(), *_native_text_to_image(4, SHAPE_PROMPT), Node(9, "SaveImage", {"filename_prefix": "deepgen_native_t2i"}, {"images": (8, 0)})]
    edit = [
        *_native_loaders(),
        *_native_text_to_image(4, SHAPE_PROMPT),  # the source picture, drawn by the model itself (node 8)
        Node(9, "DeepGenTextEncodeEdit", {"prompt": EDIT_INSTRUCTION}, {"clip": (2, 0), "image_1": (8, 0)}, title="DeepGen Text Encode (edit, positive)"),
        Node(10, "DeepGenTextEncodeEdit", {"prompt": ""}, {"clip": (2, 0), "image_1": (8, 0)}, title="DeepGen Text Encode (edit, negative)"),
        Node(11, "VAEEncode", {}, {"pixels": (8, 0), "vae": (3, 0)}),
        Node(12, "ReferenceLatent", {}, {"conditioning": (9, 0), "latent": (11, 0)}),
        Node(13, "ReferenceLatent", {}, {"conditioning": (10, 0), "latent": (11, 0)}),
        Node(14, "KSampler", KSAMPLER, {"model": (1, 0), "positive": (12, 0), "negative": (13, 0), "latent_image": (11, 0)}),
        Node(15, "VAEDecode", {}, {"samples": (14, 0), "vae": (3, 0)}),
        Node(16, "SaveImage", {"filename_prefix": "deepgen_native_edit_source"}, {"images": (8, 0)}),
        Node(17, "SaveImage", {"filename_prefix": "deepgen_native_edit"}, {"images": (15, 0)}),
    ]
    return {"deepgen_native_text_to_image": t2i, "deepgen_native_edit": edit}


def render() -> dict[Path, str]:
    """Every template file's path -> its JSON text."""
    specs = {**NATIVE, **_schemas()}
    files = {}
    for name, nodes in {**templates(), **native_templates()}.items():
        files[ui_path(name)] = json.dumps(to_ui(nodes, specs, LAYOUTS.get(name)), indent=1) + "\n"
        files[REPO / "workflows" / "api" / f"{name}.json"] = json.dumps(to_api(nodes, specs), indent=1) + "\n"
    return files


if __name__ == "__main__":
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(REPO))
