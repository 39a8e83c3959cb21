"""Headless Chromium for the page tests: open a page offline and record every request it makes.

How "no request" is checked:
1. Every connection Chromium makes goes to a local recording proxy (``--proxy-server`` with
   ``--proxy-bypass-list=<-loopback>``; QUIC off), which answers 502 and records the target, and
   every hostname resolves to nothing (``--host-resolver-rules``), so nothing can leave.
2. Chromium's net log attributes each request: the page's have an origin as initiator, the
   browser's own housekeeping (update checks, sign-in) has ``"not an origin"``. A page must cause
   none, and every connection the proxy saw must be one of the browser's own (`check_offline`).

The ``chromium`` fixture (tests/conftest.py) gives `CHROMIUM` or skips when it is missing, except
under CI (env CI set), where it fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


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


class WithFragment:
    """A page path whose URI carries a fragment (what `run_chromium` opens)."""

    def __init__(self, path, fragment: str) -> None:
        self.path, self.fragment = path, fragment

    def as_uri(self) -> str:
        return f"{self.path.as_uri()}#{self.fragment}"


def run_chromium(
    chromium: str, page: Path | WithFragment, work: Path, extra: list[str]
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


def host(url_or_target: str) -> str:
    """The host name of a URL or of a proxied target (``host:port``)."""
    t = url_or_target.split("://", 1)[-1]
    return t.split("/", 1)[0].split(":", 1)[0]


def check_offline(requests, proxied) -> tuple[list, list]:
    """(requests made by the page, proxied connections not explained by the browser's own requests)."""
    by_page = [u for u, initiator in requests if initiator != "not an origin" and not u.startswith(("file:", "data:"))]
    browser_hosts = {host(u) for u, initiator in requests if initiator == "not an origin"}
    unexplained = [t for t in proxied if host(t) not in browser_hosts]
    return by_page, unexplained
