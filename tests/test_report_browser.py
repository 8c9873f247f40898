"""The report pages in a real browser: every image loads (non-zero natural size), every link resolves.

Headless Chromium (Debian packages ``chromium`` and ``chromium-driver``, installed by ``scripts/setup.sh`` when
root) is driven through Selenium. The test starts at a pointing's page and follows the links to every page of
the site (night, target, sample), so a page that is written but not linked, or linked but not written, fails.
It takes a full-page screenshot of each page into ``$PYMUSEPIPE_SCREENSHOTS`` (default: the test's temporary
folder).

The pages are those of the synthetic reduction of ``test_qc.make_site``; set ``PYMUSEPIPE_QC_DEMO`` to the data
root of a reduced demo (``pymusepipe demo --workdir DIR``: DIR/sim) to check its pages as well (its report is
refreshed first, which draws figures only when the products are newer).
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
CHROMEDRIVER = shutil.which("chromedriver")

try:
    import selenium  # noqa: F401
    SELENIUM = True
except ImportError:
    SELENIUM = False

BROWSER_AVAILABLE = bool(CHROMIUM and CHROMEDRIVER and SELENIUM)
BROWSER_MISSING = ("needs headless Chromium: apt-get install chromium chromium-driver (scripts/setup.sh does it as "
                   "root) and pip install selenium (the 'test' extra)"
                   f" [chromium: {CHROMIUM or 'missing'}, chromedriver: {CHROMEDRIVER or 'missing'}, "
                   f"selenium: {'ok' if SELENIUM else 'missing'}]")
pytestmark = pytest.mark.skipif(not BROWSER_AVAILABLE, reason=BROWSER_MISSING)

#: Screenshots are cut at this height (pixels): long job tables need no picture.
MAX_SCREENSHOT_HEIGHT = 12000


@contextlib.contextmanager
def headless_chromium():
    """A Selenium driver of headless Chromium with a throw-away profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pymusepipe-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # What Chromium needs to run headless as root in a container, with nothing reaching the network.
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = os.environ.get("PYMUSEPIPE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_page(driver, page: Path, screenshots: Path, label: str) -> list:
    """Open a page; assert its images loaded and its links resolve; screenshot it; return the pages it links."""
    driver.get(page.as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth,"
        " i.naturalHeight]);")
    broken = [source for source, complete, width, height in images if not (complete and width > 0 and height > 0)]
    assert not broken, f"{page}: images that did not load: {broken}"
    links = driver.execute_script("return Array.from(document.links).map(a => [a.getAttribute('href'), a.href]);")
    ids = set(driver.execute_script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id);"))
    linked_pages = []
    for raw, absolute in links:
        if raw.startswith("#"):
            assert unquote(raw[1:]) in ids, f"{page}: link {raw} to no element of the page"
            continue
        url = urlparse(absolute)
        assert url.scheme == "file", f"{page}: link {raw} leaves the report ({absolute})"
        target = Path(unquote(url.path))
        assert target.exists(), f"{page}: link {raw} -> {target} does not exist"
        if target.suffix == ".html":
            linked_pages.append(target.resolve())
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1400, min(int(height) + 40, MAX_SCREENSHOT_HEIGHT))
    driver.save_screenshot(str(screenshots / f"{label}.png"))
    driver.set_window_size(1400, 1000)
    return linked_pages


def _crawl(driver, start: Path, screenshots: Path, prefix: str) -> dict:
    """Every page reachable from ``start``: page -> number of images on it."""
    seen, queue = {}, [start.resolve()]
    while queue:
        page = queue.pop(0)
        if page in seen:
            continue
        label = f"{prefix}_{len(seen):02d}_{page.parent.parent.name}_{page.parent.name}".replace(":", "-")
        linked = _check_page(driver, page, screenshots, label)
        seen[page] = driver.execute_script("return document.images.length;")
        queue.extend(linked)
    return seen


def test_synthetic_site_pages_load_in_chromium(browser, screenshots, tmp_path):
    from pymusepipe.qc.report import refresh_report

    from test_qc import make_site

    layout = make_site(tmp_path)
    start = refresh_report(layout)
    pages = _crawl(browser, start, screenshots, "synthetic")
    root = layout.root
    names = {str(page.relative_to(root)) for page in pages}
    assert names == {"QCSITE/P01/Figures/index.html", "Calibrations/2026-03-14/Figures/index.html",
                     "QCSITE/Combined/Figures/index.html", "Figures/index.html"}
    # Every figure of each page is a loaded image (the counts say the figures are on the pages at all).
    assert pages[(root / "QCSITE/P01/Figures/index.html").resolve()] >= 6
    assert pages[(root / "Calibrations/2026-03-14/Figures/index.html").resolve()] >= 5
    assert pages[(root / "QCSITE/Combined/Figures/index.html").resolve()] == 4


@pytest.mark.skipif(not os.environ.get("PYMUSEPIPE_QC_DEMO"),
                    reason="set PYMUSEPIPE_QC_DEMO to the data root of a reduced demo to check its pages")
def test_demo_pages_load_in_chromium(browser, screenshots):
    from pymusepipe.layout import PointingLayout
    from pymusepipe.qc.report import refresh_report
    from pymusepipe.status import find_pointings, find_targets

    root = Path(os.environ["PYMUSEPIPE_QC_DEMO"])
    target = find_targets(root)[0]
    layout = PointingLayout(root, target, find_pointings(root, target)[0])
    start = refresh_report(layout)
    pages = _crawl(browser, start, screenshots, "demo")
    assert len(pages) >= 4  # pointing, night, target, sample
