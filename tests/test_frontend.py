"""The pack in ComfyUI's real frontend, in a headless Chromium (Debian's, driven by Playwright; see
tests/install_browser.sh): the bundled frontend (comfyui-frontend-package in ComfyUI's venv) and the newest one
(NEWEST_FRONTEND, installed into a cache folder and served by a second server with --front-end-root).

For each frontend: every shipped workflow loads with all its node types known, no "missing node" notice and the
API prompt the frontend makes from it equal to its API twin (workflows/api/); no node box overlaps another once the
frontend has sized them (classic canvas and Vue "Nodes 2.0" renderer); the web extension (web/js/node_report.js)
loads without console errors and shows a node's report in its `vpe_report` box after a run queued from the page.
Screenshots go to each test's tmp_path (their paths are printed; `pytest -s` shows them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import comfy_host
import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))  # API twins: workflows/api/<same name>
NEWEST_FRONTEND = os.environ.get("VPE_NEWEST_FRONTEND", "1.58.1")  # newest comfyui-frontend-package on PyPI (2026-12)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VUE_NODES = "Comfy.VueNodes.Enabled"  # the "Modern Node Design (Nodes 2.0)" setting, in 1.49.6 and 1.58.1
# Console lines that concern the pack: its names, and the frontend's warnings about extension code (inputEl,
# internal script modules), which only a custom node's web code triggers (the pack's is the only one here).
OURS = re.compile(r"videoprior|vpe_|node_report|inputEl|is an internal module", re.IGNORECASE)

def _browser_installed() -> bool:
    return Path(CHROMIUM).is_file() and importlib.util.find_spec("playwright") is not None


@pytest.fixture(scope="module")
def browser():
    if not _browser_installed():
        run = subprocess.run(["bash", str(REPO / "tests" / "install_browser.sh"), sys.executable],
                             capture_output=True, text=True, timeout=900, check=False)
        importlib.invalidate_caches()
        if run.returncode != 0 or not _browser_installed():
            pytest.skip("no headless browser: /usr/bin/chromium or playwright is missing and tests/install_browser.sh "
                        f"failed (exit {run.returncode}): {(run.stdout + run.stderr)[-800:]}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _newest_frontend_static() -> Path:
    """comfyui-frontend-package==NEWEST_FRONTEND in a cache folder (installed once), its static/ folder."""
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vpe-frontends" / NEWEST_FRONTEND
    static = target / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        shutil.rmtree(target, ignore_errors=True)
        run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                              "--target", str(target), f"comfyui-frontend-package=={NEWEST_FRONTEND}"],
                             capture_output=True, text=True, timeout=600, check=False)
        assert run.returncode == 0, "installing comfyui-frontend-package failed:\n" + run.stderr[-2000:]
    return static


def _newest_frontend_server(comfy, root: Path) -> comfy_host.ComfyServer:
    """A second ComfyUI on the same tree, models and inputs, serving the newest frontend, with its own user folder
    (settings) and output. ComfyServer has no way to pass more arguments, so its "python" is a launcher that adds
    --front-end-root to the command line."""
    base = root / "base"
    base.mkdir()
    for name in ("models", "input"):
        (base / name).symlink_to(comfy.base / name, target_is_directory=True)
    launcher = root / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{comfy.python}" "$@" --front-end-root "{_newest_frontend_static()}"\n')
    launcher.chmod(0o755)
    return comfy_host.ComfyServer(comfy.source, str(launcher), base, root / "server.log")


class Frontend:
    """One frontend in one browser page: its server, the page and every console error the page logged."""

    def __init__(self, name, server, page):
        self.name, self.server, self.page, self.errors = name, server, page, []
        page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"requestfailed: {r.url}"))
        page.on("response", lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"))
        settings = json.dumps({"Comfy.TutorialCompleted": True}).encode()  # no template browser on the first visit
        request = urllib.request.Request(server.url + "/settings", settings, {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).close()
        page.set_default_timeout(60_000)
        page.goto(server.url)
        page.wait_for_function("window.app?.vueAppReady && window.app?.canvas && window.LiteGraph")
        self.version = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__")

    def ours(self) -> list[str]:
        """Console errors and warnings, failed requests and page errors that mention the pack (not the frontend's own
        registry lookups of a missing node's pack at api.comfy.org, which this offline machine cannot reach)."""
        return [e for e in self.errors if OURS.search(e) and "api.comfy.org/" not in e]

    def use_renderer(self, vue: bool) -> None:
        self.page.evaluate("([id, on]) => app.extensionManager.setting.set(id, on)", [VUE_NODES, vue])

    def load(self, workflow: dict) -> None:
        """Load a UI-format workflow and wait until the frontend has laid it out (Vue nodes mounted, sizes still)."""
        self.page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
        if self.page.evaluate("(id) => app.extensionManager.setting.get(id)", VUE_NODES):
            self.page.wait_for_function("() => document.querySelectorAll('[data-node-id]').length "
                                        ">= app.graph._nodes.length")
        previous = None
        for _ in range(20):  # until two looks 200 ms apart agree
            self.page.wait_for_timeout(200)
            boxes = self.boxes()
            if boxes == previous:
                return
            previous = boxes
        raise AssertionError(f"node sizes did not settle: {boxes}")

    def boxes(self) -> list[dict]:
        """Every node's box in canvas units: pos/size with the title bar above pos; where the Vue renderer drew the
        node, its element's layout size (which includes the title) when larger."""
        return self.page.evaluate("""() => app.graph._nodes.map((n) => {
            const title = LiteGraph.NODE_TITLE_HEIGHT, el = document.querySelector(`[data-node-id="${n.id}"]`);
            const width = Math.max(n.size[0], el?.offsetWidth ?? 0);
            const height = Math.max(n.size[1] + title, el?.offsetHeight ?? 0);
            return {id: String(n.id), type: n.type, title: n.title, size: [n.size[0], n.size[1]], titleHeight: title,
                    box: [n.pos[0], n.pos[1] - title, n.pos[0] + width, n.pos[1] - title + height],
                    drawn: el ? [el.offsetWidth, el.offsetHeight] : null};
        })""")

    def screenshot(self, tmp_path: Path, name: str) -> Path:
        path = tmp_path / f"{self.name}-{name}.png"
        self.page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


@pytest.fixture(scope="module", params=["bundled", "newest"])
def frontend(request, browser, comfy, tmp_path_factory):
    server = comfy
    if request.param == "newest":
        server = _newest_frontend_server(comfy, tmp_path_factory.mktemp("comfyui-newest-frontend"))
        server.start()
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    try:
        yield Frontend(request.param, server, page)
    finally:
        page.close()
        if server is not comfy:
            server.stop()


def test_frontend_version(frontend):
    """The page runs the frontend meant: the package in ComfyUI's venv, or NEWEST_FRONTEND."""
    expected = NEWEST_FRONTEND if frontend.name == "newest" else subprocess.run(
        [frontend.server.python, "-c", "import importlib.metadata as m; print(m.version('comfyui-frontend-package'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    print(f"{frontend.name} frontend: {frontend.version}")
    assert frontend.version == expected


def test_extension_loads(frontend):
    names = frontend.page.evaluate("app.extensions.map((e) => e.name)")
    assert "VideoPriorEdit.NodeReport" in names, frontend.ours()
    assert not frontend.ours()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_loads(frontend, path, tmp_path):
    workflow = json.loads(path.read_text())
    frontend.use_renderer(False)
    frontend.load(workflow)
    shot = frontend.screenshot(tmp_path, path.stem)
    state = frontend.page.evaluate("""() => ({
        nodes: app.graph._nodes.map((n) => ({id: String(n.id), type: n.type, errors: !!n.has_errors,
                                             known: LiteGraph.registered_node_types[n.type] === n.constructor})),
        notice: (document.body.innerText.match(/[^\\n]*missing node[^\\n]*/gi) ?? []).join(" | "),
    })""")
    saved = {str(n["id"]): n["type"] for n in workflow["nodes"]}
    assert {n["id"]: n["type"] for n in state["nodes"]} == saved
    missing = [n["type"] for n in state["nodes"] if not n["known"]]
    assert not missing, f"{path.name}: node types the frontend does not know: {missing} ({shot})"
    flagged = [n["type"] for n in state["nodes"] if n["errors"]]
    assert not flagged, f"{path.name}: nodes the frontend flagged: {flagged} ({shot})"
    assert not state["notice"], f"{path.name}: {state['notice']} ({shot})"
    assert not frontend.ours()
    # The API prompt the frontend makes from the workflow is the shipped API twin: every widget value landed in
    # the widget it was saved for (inputs the frontend adds for itself, such as LoadVideo's preview, aside).
    prompt = frontend.page.evaluate("async () => (await app.graphToPrompt()).output")
    twin = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    assert sorted(prompt) == sorted(twin)
    wrong = {f"{twin[i]['class_type']} #{i}.{name}": f"{value!r} -> {prompt[i]['inputs'].get(name, '<none>')!r}"
             for i in twin for name, value in twin[i]["inputs"].items() if prompt[i]["inputs"].get(name) != value}
    assert not wrong, f"{path.name}: widget values the frontend reads differently from the API twin: {wrong} ({shot})"


def test_old_workflow_with_a_renamed_node_opens_migrated(browser, frontend, tmp_path):
    """A workflow saved before VPE_ImVideoEditAdapterNative became VPE_ImVideoEditAdapter: the frontend lists the old
    node under Swap Nodes (the pack's NodeReplace); Replace Node puts the new node in its place, and the graph then
    makes exactly the shipped workflow's API prompt (widget values and links carried over). On a page of its own:
    the errors panel this opens would narrow the canvas of the module's page for the tests after it."""
    old = json.loads((REPO / "tests" / "saved_workflows" / "imvideoedit_before_rename.json").read_text())
    own = Frontend(frontend.name, frontend.server, browser.new_page(viewport={"width": 1600, "height": 1000}))
    page = own.page
    try:
        own.use_renderer(False)
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", old)
        assert "VPE_ImVideoEditAdapterNative" in page.evaluate("() => app.graph._nodes.map((n) => n.type)")
        page.get_by_text("View details").first.click()  # the error overlay: the graph has a node ComfyUI lacks
        page.get_by_text("VPE_ImVideoEditAdapter", exact=False).first.wait_for()
        shot = own.screenshot(tmp_path, "swap-offered")
        page.get_by_role("button", name="Replace Node").first.click()
        page.wait_for_function("() => app.graph._nodes.some((n) => n.type === 'VPE_ImVideoEditAdapter')")
        own.screenshot(tmp_path, "swapped")
        types = page.evaluate("() => app.graph._nodes.map((n) => n.type)")
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        errors = own.ours()
    finally:  # the panel's open state is a saved setting: closed again for pages opened later
        page.evaluate("(id) => app.extensionManager.setting.set(id, false)", "Comfy.RightSidePanel.IsOpen")
        page.close()
    assert "VPE_ImVideoEditAdapterNative" not in types, shot
    twin = json.loads((REPO / "workflows" / "api" / "ImVideoEdit video edit (Wan2.1-T2V adapter).json").read_text())
    assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in twin.items()}, shot
    wrong = {f"{twin[i]['class_type']} #{i}.{name}": f"{value!r} -> {prompt[i]['inputs'].get(name, '<none>')!r}"
             for i in twin for name, value in twin[i]["inputs"].items() if prompt[i]["inputs"].get(name) != value}
    assert not wrong, f"values or links lost in the swap: {wrong} ({shot})"  # (LoadVideo's preview input aside)
    assert not errors


def _overlaps(boxes: list[dict]) -> list[str]:
    found = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            width = min(a["box"][2], b["box"][2]) - max(a["box"][0], b["box"][0])
            height = min(a["box"][3], b["box"][3]) - max(a["box"][1], b["box"][1])
            if width > 0.5 and height > 0.5:
                found.append(f"'{a['title']}' and '{b['title']}' overlap by {width:.0f}x{height:.0f}")
    return found


@pytest.mark.parametrize("renderer", ["canvas", "vue"])
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_nodes_do_not_overlap(frontend, path, renderer, tmp_path):
    workflow = json.loads(path.read_text())
    frontend.use_renderer(renderer == "vue")
    frontend.load(workflow)
    boxes = frontend.boxes()
    shot = frontend.screenshot(tmp_path, f"{path.stem}-{renderer}")
    saved = {str(n["id"]): n for n in workflow["nodes"]}
    assert {b["id"] for b in boxes} == set(saved)
    overlaps = _overlaps(boxes)
    resized = [f"'{b['title']}' saved {saved[b['id']]['size']} -> frontend {[round(v) for v in b['size']]}"
               + (f" (drawn {b['drawn']} incl. title)" if b["drawn"] else "")
               for b in boxes if [round(v) for v in b["size"]] != saved[b["id"]]["size"] or
               (b["drawn"] and b["drawn"][1] > saved[b["id"]]["size"][1] + b["titleHeight"])]
    report = (f"{path.name} ({frontend.name} frontend {frontend.version}, {renderer}): " + "; ".join(overlaps)
              + "\n  sizes: " + "; ".join(resized) + f"\n  screenshot: {shot}")
    assert not overlaps, report


def _reported_text(server, node_id: str, max_side: int) -> str:
    """The report (ui.text) the server recorded for the Fit node of the run queued with this max_side."""
    for _ in range(240):
        runs = [h for h in server.get("/history").values() if h.get("status", {}).get("completed")
                and h["prompt"][2].get(node_id, {}).get("inputs", {}).get("max_side") == max_side]
        if runs:
            return "\n".join(max(runs, key=lambda h: h["prompt"][0])["outputs"][node_id]["text"])
        time.sleep(0.25)
    raise AssertionError("the run queued from the page is not in /history:\n" + server.log_tail())


@pytest.mark.parametrize("renderer", ["canvas", "vue"])
def test_node_report_shows_on_the_node(frontend, renderer, tmp_path):
    """Queue LoadImage -> Fit Image for Wan -> Preview Image from the page; the Fit node shows its report."""
    max_side = {"canvas": 64, "vue": 48}[renderer]  # a new input each time: ComfyUI runs it instead of caching
    frontend.use_renderer(renderer == "vue")
    fit_id = frontend.page.evaluate("""async (maxSide) => {
        app.graph.clear();
        const add = (type, x) => {
            const node = LiteGraph.createNode(type);
            node.pos = [x, 100];
            app.graph.add(node);
            return node;
        };
        const load = add("LoadImage", 50), fit = add("VPE_FitImageForWan", 450), preview = add("PreviewImage", 850);
        load.widgets.find((w) => w.name === "image").value = "example.png";
        fit.widgets.find((w) => w.name === "max_side").value = maxSide;
        load.connect(0, fit, 0);
        fit.connect(0, preview, 0);
        await app.queuePrompt(0, 1);
        return fit.id;
    }""", max_side)
    frontend.page.wait_for_function(
        "(id) => app.graph.getNodeById(id)?.widgets?.find((w) => w.name === 'vpe_report')?.value", arg=fit_id)
    expected = _reported_text(frontend.server, str(fit_id), max_side)
    shot = frontend.screenshot(tmp_path, f"report-{renderer}")
    assert "70x50" in expected
    shown = frontend.page.evaluate("""([id, vue]) => {
        const node = app.graph.getNodeById(id), widget = node.widgets.find((w) => w.name === "vpe_report");
        const areas = [...document.querySelectorAll("textarea")].filter((a) => a.value === widget.value);
        const visible = areas.filter((a) => { const r = a.getBoundingClientRect(); return r.width > 20 && r.height > 20
            && (!vue || a.closest(`[data-node-id="${id}"]`)); });
        return {value: widget.value, visible: visible.length, readOnly: visible.every((a) => a.readOnly),
                saved: JSON.stringify(node.serialize().widgets_values ?? [])};
    }""", [fit_id, renderer == "vue"])
    assert shown["value"] == expected, shot
    assert shown["visible"] == 1 and shown["readOnly"], (shown, shot)
    assert "70x50" not in shown["saved"], "the report box must not be saved into the workflow"
    assert not frontend.ours()


REPORT = "\n".join(f"line {i}: " + "what the node adjusted, kept and warned about " * 2 for i in range(6))
PREVIEWS = ("VPE_IFEditImageToVideo", "VPE_StillVideoRefiner", "VPE_TailFrameEditor", "VPE_ByGImageEdit",
            "VPE_ByGVideoEdit", "VPE_ImVideoEditVideoEdit", "VPE_FLF2VTeacher", "SaveImage", "PreviewImage")


@pytest.mark.parametrize("renderer", ["canvas", "vue"])
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_nodes_do_not_overlap_after_a_run(frontend, path, renderer, tmp_path):
    """After a run every pack node shows its report box and the long ones up to 4 previews (as the server's
    `executed` messages make them: the same event is dispatched here for every node), and still nothing overlaps."""
    from PIL import Image

    (frontend.server.base / "temp").mkdir(exist_ok=True)
    Image.new("RGB", (256, 192), (90, 120, 160)).save(frontend.server.base / "temp" / "vpe_test_preview.png")
    frontend.use_renderer(renderer == "vue")
    frontend.load(json.loads(path.read_text()))
    frontend.page.evaluate("""([report, previewed]) => {
        for (const node of app.graph._nodes) {
            const output = {};
            if (node.type.startsWith("VPE_")) output.text = [report];
            if (previewed.includes(node.type))
                output.images = Array(4).fill({filename: "vpe_test_preview.png", subfolder: "", type: "temp"});
            if (Object.keys(output).length)
                app.api.dispatchCustomEvent("executed", {node: String(node.id), display_node: String(node.id),
                                                         output, prompt_id: "vpe-test"});
        }
    }""", [REPORT, list(PREVIEWS)])
    frontend.page.wait_for_timeout(500)
    previous = None
    for _ in range(20):  # until the sizes settle (images load, nodes grow)
        boxes = frontend.boxes()
        if boxes == previous:
            break
        previous = boxes
        frontend.page.wait_for_timeout(250)
    shot = frontend.screenshot(tmp_path, f"{path.stem}-{renderer}-after-run")
    reports = frontend.page.evaluate("() => app.graph._nodes.filter((n) => n.type.startsWith('VPE_') && "
                                     "n.widgets?.some((w) => w.name === 'vpe_report' && w.value)).length")
    assert reports == sum(1 for n in json.loads(path.read_text())["nodes"] if n["type"].startswith("VPE_"))
    overlaps = _overlaps(boxes)
    assert not overlaps, f"{path.name} after a run ({frontend.name}, {renderer}): {'; '.join(overlaps)} ({shot})"


BLUEPRINTS = sorted((REPO / "subgraphs").glob("*.json"))


@pytest.mark.parametrize("path", BLUEPRINTS, ids=[p.stem for p in BLUEPRINTS])
def test_blueprint_opens_as_a_subgraph_node(frontend, path, tmp_path):
    """A blueprint (what ComfyUI's node library adds) loads as one subgraph node whose inner graph the frontend
    expands into exactly the blueprint's nodes when it queues it, with no errors from the page."""
    blueprint = json.loads(path.read_text())
    frontend.use_renderer(False)
    frontend.load(blueprint)
    shot = frontend.screenshot(tmp_path, f"blueprint-{path.stem}")
    state = frontend.page.evaluate("""async () => {
        const nodes = app.graph._nodes.map((n) => ({type: n.type, subgraph: !!n.subgraph, title: n.title}));
        const prompt = (await app.graphToPrompt()).output;
        return {nodes, queued: Object.values(prompt).map((n) => n.class_type).sort()};
    }""")
    inner = sorted(n["type"] for n in blueprint["definitions"]["subgraphs"][0]["nodes"])
    assert [n["subgraph"] for n in state["nodes"]] == [True], (state, shot)
    assert state["nodes"][0]["title"] == path.stem
    assert state["queued"] == inner, (state["queued"], shot)
    assert not frontend.ours()
