"""Opt-in: the pack in the real ComfyUI web UI (COMFYUI_DIR set, Playwright installed, Debian's chromium at
/usr/bin/chromium; skipped otherwise). Loads every template from the template browser's route and checks that the
frontend logs no error about it, runs text-to-image and the rollout preview, and checks the score cards in the DOM.
Screenshots go to COMFY_SCREENSHOTS (default: pytest's tmp dir) for a person to look at."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO.parent / "shared" / "tools" / "comfy" / "run_workflow.py"
COMFY = os.environ.get("COMFYUI_DIR")
CHROMIUM = Path("/usr/bin/chromium")
PACK = "ComfyUI-DeepGen"  # the folder name users clone into; the template browser and help URLs use it
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

if not COMFY:  # the real-ComfyUI kind of skip, before asking for Playwright
    pytest.skip("real ComfyUI web UI test: set COMFYUI_DIR", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the browser is Debian's chromium)")
pytestmark = pytest.mark.skipif(not RUNNER.is_file() or not CHROMIUM.is_file(), reason="needs COMFYUI_DIR, shared/tools/comfy and /usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("COMFY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ComfyUI server with the pack installed as `custom_nodes/ComfyUI-DeepGen` (an empty prompt starts it)."""
    root = tmp_path_factory.mktemp("comfy-browser")
    (root / "packs").mkdir()
    (root / "packs" / PACK).symlink_to(REPO)
    (root / "start.json").write_text(json.dumps({"1": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}}}))
    port = _free_port()
    cmd = [sys.executable, str(RUNNER), str(root / "start.json"), "--comfy-dir", COMFY, "--python", os.environ.get("COMFY_PYTHON", sys.executable),
           "--port", str(port), "--custom-nodes", str(root / "packs" / PACK), "--keep-server", "--no-check-nodes", "--json-out", str(root / "start-summary.json")]
    subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    pid = json.loads((root / "start-summary.json").read_text())["server"]["pid"]
    yield f"http://127.0.0.1:{port}"
    os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.problems = []  # console errors and failed requests, with their text
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("response", lambda r: page.problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
        page.goto(server)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        page.evaluate("() => window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
        page.wait_for_timeout(1500)
        page.keyboard.press("Escape")  # a fresh user directory opens the template browser once
        page.locator(".p-dialog-mask").first.wait_for(state="detached", timeout=10_000)
        yield page
        browser.close()


def _ours(problems: list[str]) -> list[str]:
    """The problems that concern the pack: its files, its nodes, or a workflow the frontend had to repair."""
    keys = (PACK, "DeepGen", "deepgen", "Expected node to match patched data", "workflow_templates")
    return [p for p in problems if any(k in p for k in keys)]


def _templates(server: str) -> list[str]:
    return json.loads(urllib.request.urlopen(f"{server}/workflow_templates").read())[PACK]


def _load(page, server: str, name: str) -> None:
    url = f"{server}/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.json"
    page.evaluate("async (url) => { const wf = await (await fetch(url)).json(); await window.app.loadGraphData(wf, true, true, 'template'); }", url)
    page.wait_for_timeout(1200)


def _run(page, timeout_ms: int = 300_000) -> None:
    page.evaluate("""() => { window.__done = false; window.app.api.addEventListener('execution_success', () => { window.__done = true; }, { once: true });
        window.app.api.addEventListener('execution_error', (e) => { window.__done = 'error: ' + JSON.stringify(e.detail).slice(0, 500); }, { once: true }); }""")
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    page.wait_for_function("window.__done !== false", timeout=timeout_ms)
    assert page.evaluate("window.__done") is True, page.evaluate("window.__done")
    page.wait_for_timeout(1500)


def test_template_browser_lists_titled_templates_with_thumbnails(page, server, shots):
    names = _templates(server)
    assert set(names) >= {"DeepGen Text to Image", "DeepGen Image Edit", "DeepGen Multi-Reference Edit", "DeepGen Text Rendering with OCR Score", "DeepGen RL Rollout Preview",
                          "DeepGen Native Text to Image", "DeepGen Native Image Edit"}
    for name in names:  # the thumbnail URL the frontend builds
        thumbnail = urllib.request.urlopen(f"{server}/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.jpg")
        assert thumbnail.status == 200 and thumbnail.headers["Content-Type"] == "image/jpeg"
    page.get_by_role("button", name="Templates").first.click()  # the sidebar's Templates button opens the browser
    # the category is the pack's folder name, shown as "DeepGen" through the pack's locales/en/main.json
    page.locator(".p-dialog").get_by_text("DeepGen", exact=True).first.click()
    page.wait_for_timeout(2500)
    page.screenshot(path=str(shots / "template-browser.png"))
    for name in names:
        assert page.get_by_text(name, exact=True).count() >= 1, name
    page.keyboard.press("Escape")
    assert not _ours(page.problems), _ours(page.problems)


def test_every_template_loads_without_an_error(page, server, shots):
    for name in _templates(server):
        before = len(page.problems)
        _load(page, server, name)
        page.screenshot(path=str(shots / f"template-{name}.png"))
        assert not _ours(page.problems[before:]), (name, _ours(page.problems[before:]))
        graph = page.evaluate("() => window.app.graph.serialize()")
        links = {link[0]: link for link in graph["links"]}
        for node in graph["nodes"]:  # the frontend kept every link where the template put it
            for slot, socket_ in enumerate(node.get("inputs", [])):
                if socket_.get("link") is not None:
                    assert links[socket_["link"]][3:5] == [node["id"], slot], (name, node["type"], socket_["name"])


def test_text_to_image_runs_in_the_web_ui(page, server, shots):
    _load(page, server, "DeepGen Text to Image")
    _run(page)
    page.screenshot(path=str(shots / "run-text-to-image.png"))
    images = page.evaluate("() => window.app.graph.nodes.filter(n => n.type === 'SaveImage').map(n => (n.imgs || []).length)")
    assert images == [1]
    assert not _ours(page.problems), _ours(page.problems)


def test_rollout_preview_cards_show_scores_sorted_by_advantage(page, server, shots):
    _load(page, server, "DeepGen RL Rollout Preview")
    page.evaluate("""() => { window.__progress = []; window.app.api.addEventListener('progress', ({ detail }) => window.__progress.push([detail.value, detail.max]));
        window.__status = []; const status = document.querySelector('.deepgen-rollout .deepgen-status');
        new MutationObserver(() => window.__status.push(status.textContent)).observe(status, { childList: true, characterData: true, subtree: true }); }""")
    _run(page)
    assert any(text.startswith("sampling the group: step") for text in page.evaluate("window.__status"))  # live progress in the widget
    node_id = page.evaluate("() => window.app.graph.nodes.find(n => n.type === 'DeepGenRolloutPreview').id")
    progress = page.evaluate("window.__progress")
    assert progress[-1] == [26, 26] and len(progress) >= 20  # 25 steps of the whole group, then scoring
    history = json.loads(urllib.request.urlopen(f"{server}/history?max_items=1").read())
    data = next(iter(history.values()))["outputs"][str(node_id)]["deepgen_rollout"][0]
    panel = page.locator(".deepgen-rollout")
    cards = panel.locator(".deepgen-card")
    assert cards.count() == len(data["images"]) == 4
    shown = [(int(c.get_attribute("data-index")), float(c.get_attribute("data-advantage"))) for c in cards.all()]
    assert [a for _, a in shown] == sorted((a for _, a in shown), reverse=True)  # default: by advantage, best first
    by_index = {i["index"]: i for i in data["images"]}
    for index, advantage in shown:
        assert advantage == pytest.approx(by_index[index]["advantage"])
        text = cards.nth([i for i, _ in shown].index(index)).inner_text()
        assert f"total {by_index[index]['total']:.4f}" in text and f"{by_index[index]['scores']['ocr']:.3f}" in text
    flagged = panel.locator(".deepgen-group[data-zero-variance='true'] .deepgen-flag").count()
    assert flagged == int(data["groups"][0]["zero_variance"])
    page.screenshot(path=str(shots / "rollout-widget.png"))
    cards.first.click()
    overlay = page.locator(".deepgen-overlay")
    assert "ocr (weight 1)" in overlay.inner_text() and "read" in overlay.inner_text()
    page.screenshot(path=str(shots / "rollout-card-enlarged.png"))
    overlay.click()
    page.locator(".deepgen-toolbar select").select_option("index")
    assert [int(c.get_attribute("data-index")) for c in cards.all()] == [0, 1, 2, 3]
    assert not _ours(page.problems), _ours(page.problems)


def test_ocr_score_cards_and_help_page(page, server, shots):
    _load(page, server, "DeepGen Text Rendering with OCR Score")
    _run(page)
    cards = page.locator(".deepgen-ocr .deepgen-card")
    assert cards.count() == 2 and all(c.get_attribute("data-score") for c in cards.all())
    page.screenshot(path=str(shots / "ocr-cards.png"))
    help_page = urllib.request.urlopen(f"{server}/extensions/{PACK}/docs/DeepGenRolloutPreview.md").read().decode()
    assert help_page.startswith("# DeepGen RL Rollout Preview")
    assert not _ours(page.problems), _ours(page.problems)
