"""Open the report in headless Chromium: it renders (screenshot not blank, circuitsvis views drawn)
and no request leaves the machine.

How "no request" is checked, three ways:
1. Every connection Chromium makes goes to a local recording proxy (``--proxy-server`` with
   ``--proxy-bypass-list=<-loopback>``; QUIC off), which answers 502 and records the target, and
   every hostname resolves to nothing (``--host-resolver-rules``), so nothing can leave.
2. Chromium's net log attributes each request: the page's have an origin as initiator, the
   browser's own housekeeping (update checks, sign-in) has ``"not an origin"``. The report must
   cause none, and every connection the proxy saw must be one of the browser's own.
3. A control page that does load external resources must be caught by both, so the check can fail.

Skips when chromium is missing, except under CI (env CI set), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium for the report browser test: run scripts/install_chromium.sh")
        pytest.skip("chromium is not installed (scripts/install_chromium.sh)")
    return CHROMIUM


class RecordingProxy:
    """A local HTTP proxy that records each request's target and refuses it (502)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.targets: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    line = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                    if line:
                        self.targets.append(line.split(" ")[1] if " " in line else line)
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def run_chromium(
    chromium: str, page: Path, work: Path, extra: list[str]
) -> tuple[subprocess.CompletedProcess, list, list]:
    """Open ``page`` in a fresh headless Chromium; returns (process, net-log requests, proxied targets)."""
    proxy = RecordingProxy()
    profile = work / f"profile-{len(list(work.glob('profile-*')))}"
    profile.mkdir()
    netlog = profile.with_suffix(".netlog.json")
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
        "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        f"--log-net-log={netlog}", "--net-log-capture-mode=Everything", "--virtual-time-budget=8000",
        *extra, page.as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        proxy.close()
    assert netlog.is_file(), proc.stderr[-2000:]
    log = json.loads(netlog.read_text(encoding="utf-8"))
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = []
    for ev in log["events"]:
        params = ev.get("params") or {}
        if kinds.get(ev["type"]) == "URL_REQUEST_START_JOB" and "url" in params:
            requests.append((params["url"], params.get("initiator")))
    return proc, requests, proxy.targets


def _host(url_or_target: str) -> str:
    t = url_or_target.split("://", 1)[-1]
    return t.split("/", 1)[0].split(":", 1)[0]


def check_offline(requests, proxied) -> tuple[list, list]:
    """(requests made by the page, proxied connections not explained by the browser's own requests)."""
    by_page = [u for u, initiator in requests if initiator != "not an origin" and not u.startswith(("file:", "data:"))]
    browser_hosts = {_host(u) for u, initiator in requests if initiator == "not an origin"}
    unexplained = [t for t in proxied if _host(t) not in browser_hosts]
    return by_page, unexplained


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
    hosts = {_host(u) for u in by_page}
    assert {"fonts.example-cdn.test", "images.example-cdn.test", "scripts.example-cdn.test"} <= hosts
    assert {"fonts.example-cdn.test", "images.example-cdn.test", "scripts.example-cdn.test"} <= {
        _host(t) for t in unexplained}


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
