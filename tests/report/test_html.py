"""report.html in a real headless browser: loads cleanly, one point per run, filters hide what they should."""

import shutil

import pytest

from sparselora.compare.plan import Target
from sparselora.compare.runner import run_comparison
from sparselora.report.comparison import build_report
from sparselora.report.html import HTML_FILE
from tests.helpers import REPO, tiny_comparison

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
# As root on a closed network: no sandbox, and none of Chromium's background connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report_page(tiny_bert_dir, shared_data_dir, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("SPARSELORA_DATA_DIR", str(shared_data_dir))
    out = tmp_path_factory.mktemp("html-comparison")
    config = tiny_comparison(
        tiny_bert_dir, out, seeds=(0, 1), targets=[Target(metric="accuracy", min_ratio=0.5)], name="tiny <html>"
    )
    status = run_comparison(config, progress=False)
    assert len(status.finished) == 4
    build_report(out)
    return out / HTML_FILE


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_page_is_self_contained(report_page):
    page = report_page.read_text()
    assert "<script src=" not in page and "<link " not in page  # nothing fetched at view time
    assert "tiny &lt;html&gt;" in page  # names are escaped


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (make setup installs it)")
def test_report_in_a_headless_browser(report_page):
    sync_api = pytest.importorskip("playwright.sync_api")
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(report_page.as_uri())
        page.wait_for_selector("#scatter-sst2 .scatterlayer .point")
        points = page.locator("#scatter-sst2 .scatterlayer .point")
        assert points.count() == 4  # 2 methods × 2 seeds
        assert page.locator("tr[data-method='lora_l1']:visible").count() == 2  # results and validation rows

        page.uncheck("input[data-filter='method'][value='lora_l1']")
        assert points.count() == 2
        assert page.locator("tr[data-method='lora_l1']:visible").count() == 0

        page.locator("th.sortable", has_text="Seeds").click()
        assert page.locator("th[data-order='asc']").count() == 1

        page.uncheck("input[data-filter='task'][value='sst2']")
        assert not page.locator("section[data-task='sst2']").is_visible()
        page.check("input[data-filter='task'][value='sst2']")
        page.check("input[data-filter='method'][value='lora_l1']")
        assert points.count() == 4
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report_html.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (ARTIFACTS / "report_html.png").stat().st_size > 10_000
