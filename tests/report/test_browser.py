"""Open the report in headless Chromium: it renders (screenshot not blank, circuitsvis views drawn)
and no request leaves the machine.

"No request" is checked two ways (the recording proxy and Chromium's net log; tests/browser.py), and a
control page that does load external resources must be caught by both, so the check can fail.

Skips when chromium is missing, except under CI (env CI set), where it fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.browser import check_offline, host, run_chromium
from tests.conftest import make_run


@pytest.fixture(scope="module")
def report_page(tmp_path_factory, tiny_hf_model) -> Path:
    from tl_culture.report.write import write_report

    run = make_run(tmp_path_factory.mktemp("browser") / "run", tiny_hf_model)
    return write_report(run, model=tiny_hf_model, max_tokens=24)


def test_control_page_requests_are_caught(chromium, tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="stylesheet" href="http://fonts.example-cdn.test/font.css">'
        '</head><body><p>leak</p><img src="http://images.example-cdn.test/a.png">'
        '<script src="https://scripts.example-cdn.test/x.js"></script></body></html>', encoding="utf-8")
    _, requests, proxied = run_chromium(chromium, page, tmp_path, ["--dump-dom"])
    by_page, unexplained = check_offline(requests, proxied)
    hosts = {host(u) for u in by_page}
    assert {"fonts.example-cdn.test", "images.example-cdn.test", "scripts.example-cdn.test"} <= hosts
    assert {"fonts.example-cdn.test", "images.example-cdn.test", "scripts.example-cdn.test"} <= {
        host(t) for t in unexplained}


def test_report_renders_offline_in_chromium(chromium, report_page, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    proc, requests, proxied = run_chromium(
        chromium, report_page, tmp_path, [f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars"])
    assert shot.is_file(), proc.stderr[-2000:]
    by_page, unexplained = check_offline(requests, proxied)
    assert by_page == [], f"the report made requests: {by_page}"
    assert unexplained == [], f"connections not made by the browser itself: {unexplained}"
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1280)
    assert img.std() > 20, "screenshot is blank"
    assert (img < 128).mean() > 0.01, "screenshot has almost no dark (text/figure) pixels"
    assert (img > 240).mean() > 0.5, "screenshot is not mostly a white page"


def test_report_circuitsvis_views_are_drawn(chromium, report_page, tmp_path):
    proc, requests, proxied = run_chromium(chromium, report_page, tmp_path, ["--dump-dom"])
    dom = proc.stdout
    assert "<h2" in dom and 'id="tokens"' in dom
    by_page, unexplained = check_offline(requests, proxied)
    assert by_page == [] and unexplained == []
    # each circuitsvis div was empty in the file; React fills it only if the inlined library ran
    views = re.findall(r'<div id="(circuits-vis-[0-9a-f-]+)" class="cv-view">(.{0,200})', dom, flags=re.S)
    assert len(views) == 7  # six held-out texts + the top-k view
    assert all(not body.startswith("</div>") for _, body in views), "a circuitsvis view did not render"
