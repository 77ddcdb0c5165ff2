"""UniHead's explorer widget (nbs/90_viz.unihead.ipynb) in a real JupyterLab: a JupyterLab server, headless Chromium
driven by Playwright, a notebook that opens the explorer on the page's detection and pose experiments, untrained, at the
`smoke` size. The browser must draw the widget's controls and figure (so the lab's widget manager and the kernel's
ipywidgets agree), and changing a control in the page must redraw the figure through the kernel."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt has it)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")

TOKEN = "unified-vision-test"
CELLS = [
    "import torch\n"
    "from types import SimpleNamespace\n"
    "from unified_vision.core import load_yaml, deep_merge\n"
    "from unified_vision.frameworks.build import build_model\n"
    "from unified_vision.viz.unihead import unihead_config, unihead_explorer",
    # the page's detection and pose experiments on the `smoke` profile, untrained, and three random images: the point
    # here is the front end, not what the head learned (the page itself shows trained models)
    "params = load_yaml(PARAMS)\n"
    "def model(name):\n"
    "    cfg = deep_merge(unihead_config(params, name, 'smoke'), {'model': {'backbone': {'pretrained': False}}})\n"
    "    torch.manual_seed(0)\n"
    "    return build_model(cfg, num_classes=3).eval()\n"
    "class Images(list):\n"
    "    class_names = ('person', 'b', 'c')\n"
    "g = torch.Generator().manual_seed(0)\n"
    "images = Images(SimpleNamespace(image=torch.rand(3, 64, 64, generator=g)) for _ in range(3))\n"
    "ui = unihead_explorer({n: (model(n), images) for n in ('uni_faster_rcnn', 'uni_keypoints')}, max_anchors=4)\n"
    "ui",
]


def _notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "execution_count": None, "outputs": [], "source": src}
             for i, src in enumerate([f"PARAMS = {str(ROOT / 'params.yaml')!r}"] + CELLS)]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    path.write_text(json.dumps(nb))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free port serving `tmp_path`, with `explorer.ipynb` in it; yields its base URL."
    _notebook(tmp_path / "explorer.ipynb")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", "--allow-root",
                               f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "lab.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s:\n" + (tmp_path / "lab.log").read_text())
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _figure(page) -> str:
    "The explorer's figure as the page shows it (the PNG's data URL)."
    return page.locator(".jp-OutputArea-output img").last.get_attribute("src")


def _kernel_idle(url: str) -> bool:
    "Whether the server has a session for the notebook whose kernel is started and idle."
    with urllib.request.urlopen(f"{url}/api/sessions?token={TOKEN}", timeout=5) as r:
        sessions = json.load(r)
    return any(s["path"].endswith("explorer.ipynb") and s["kernel"]["execution_state"] == "idle" for s in sessions)


def _run_all(page, url: str) -> None:
    "Run every cell from JupyterLab's Run menu once the notebook's kernel is up (accepting the kernel dialog if it asks)."
    deadline = time.monotonic() + 120
    while not _kernel_idle(url):
        if page.locator(".jp-Dialog .jp-mod-accept").count():
            page.locator(".jp-Dialog .jp-mod-accept").click()
        assert time.monotonic() < deadline, "the notebook's kernel did not start within 120 s"
        time.sleep(0.5)
    for _ in range(3):                    # a click while the page is still connecting to the kernel can be dropped
        page.locator("#jp-MainMenu .lm-MenuBar-item", has_text="Run").click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
        try:
            page.locator(".jp-InputPrompt", has_text="[1]").wait_for(timeout=20_000)
            return
        except playwright.Error:
            pass
    pytest.fail("Run All did not start the notebook")


def _choose(page, description: str, label: str) -> None:
    "Pick `label` in the drop-down whose description is `description`, as a reader would."
    box = page.locator(".widget-dropdown").filter(has=page.locator(f"label:text-is('{description}')"))
    box.locator("select").select_option(label=label)


def _outputs(page) -> list[str]:
    return page.locator(".jp-OutputArea-output").all_inner_texts()


def test_explorer_draws_and_redraws_in_jupyterlab(lab, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(f"{lab}/lab/tree/explorer.ipynb?token={TOKEN}")
            page.locator(".jp-Notebook").wait_for(timeout=120_000)
            _run_all(page, lab)
            page.locator(".widget-html", has_text="K = 16").wait_for(timeout=240_000)
            page.locator(".jp-OutputArea-output img").wait_for(timeout=60_000)
            assert not any("<Figure size" in t for t in _outputs(page)), "the figure came out as its text"
            assert page.get_by_text("Error displaying widget").count() == 0
            assert page.locator(".widget-dropdown select").count() == 4      # experiment, image, stack, head
            assert page.locator(".widget-slider").count() == 2               # anchor, layer

            before = _figure(page)
            _choose(page, "stack", "localisation (loc)")
            page.wait_for_function("([sel, old]) => { const i = [...document.querySelectorAll(sel)].pop();"
                                   " return i && i.src !== old; }",
                                   arg=[".jp-OutputArea-output img", before], timeout=60_000)

            _choose(page, "experiment", "uni_keypoints (keypoints)")
            page.locator(".widget-html", has_text="K = 17").wait_for(timeout=60_000)
            heads = page.locator(".widget-dropdown").filter(has=page.locator("label:text-is('head')")).locator("option")
            assert heads.count() > 1                                          # the mean and each head of the pose model
            assert page.locator(".jp-OutputArea-output img").count() == 1
        except Exception as e:
            page.screenshot(path=str(tmp_path / "lab.png"))
            raise AssertionError(f"{e}\npage outputs: {_outputs(page)}\nscreenshot: {tmp_path / 'lab.png'}") from e
        finally:
            browser.close()
