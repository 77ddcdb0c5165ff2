"""The documentation site builds offline from the notebooks and renders in headless Chromium."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=4000"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    subprocess.run([str(mkdocs), "build", "--quiet", "--site-dir", str(out)], cwd=ROOT, check=True, timeout=600)
    return out


def _dom(page: Path, tmp_path: Path) -> str:
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout


def test_site_has_every_notebook(site):
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        assert (site / f"{nb.stem}.html").exists(), nb.name


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
@pytest.mark.parametrize("page,heading", [("index.html", "unified_vision"), ("11_data.transforms.html", "Data: augmentation"),
                                          ("90_viz.unihead.html", "Visualisation: UniHead")])
def test_page_renders_heading_and_figure(site, tmp_path, page, heading):
    dom = _dom(site / page, tmp_path)
    assert re.search(r"<h1[^>]*>[^<]*" + re.escape(heading), dom), f"{page}: heading '{heading}' not rendered"
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom), f"{page}: no figure rendered"
