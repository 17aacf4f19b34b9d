#!/usr/bin/env python3
"""The dashboard in a real browser: starts `sinapse dashboard` on a scratch runs folder, opens
it in headless Chromium (driven over the DevTools protocol: a websocket, spoken here with the
standard library alone), starts `sinapse train`, and checks that the run's chart appears and
gains a point after an epoch without the page being reloaded; that a malformed run shows its
error; and that the finished run shows its confusion matrix.

    python3 .ci/dashboard_check.py [--screenshot docs/dashboard.png]
"""

import argparse
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINAPSE = os.path.join(ROOT, "target", "release", "sinapse")


class DevTools:
    """A minimal websocket client (RFC 6455, text frames) for one DevTools target."""

    def __init__(self, ws_url):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", ws_url)
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += self.sock.recv(4096)
        head, self.buffer = reply.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket upgrade refused: {head!r}")
        self.next_id = 0

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _frame(self):
        message = b""
        while True:
            b0, b1 = self._read(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            message += self._read(length)
            if b0 & 0x80:  # FIN
                return message.decode()

    def call(self, method, **params):
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            reply = json.loads(self._frame())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


def wait_for(what, predicate, limit):
    start = time.time()
    while time.time() - start < limit:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {limit} s waiting for {what}")


def points(dt, run):
    return dt.evaluate(
        f"(() => {{ const c = document.querySelector('canvas[data-run=\"{run}\"][data-chart=\"loss\"]');"
        " return c ? Number(c.dataset.points) : -1; })()")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshot", help="save a PNG of the page here once the run is done")
    parser.add_argument("--with-runs", help="copy the runs of this folder in first (for a fuller screenshot)")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        sys.exit("dashboard check: no Chromium (Debian: apt-get install chromium)")
    scratch = tempfile.mkdtemp(prefix="sinapse-dashboard-")
    runs = os.path.join(scratch, "runs")
    if args.with_runs:
        shutil.copytree(args.with_runs, runs)
    os.makedirs(os.path.join(runs, "broken"))
    with open(os.path.join(runs, "broken", "model.toml"), "w") as f:
        f.write("this is not a model card\n")
    procs = []
    try:
        server = subprocess.Popen([SINAPSE, "dashboard", "--runs", runs, "--port", "0"], stdout=subprocess.PIPE, text=True)
        procs.append(server)
        line = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, f"the dashboard did not print its address: {line!r}"
        url = url.group(0)
        profile = os.path.join(scratch, "profile")
        flags = ["--headless=new", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
                 f"--user-data-dir={profile}", "--window-size=1280,1500"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        chromium = subprocess.Popen([browser, *flags, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(chromium)
        port_file = os.path.join(profile, "DevToolsActivePort")
        wait_for("Chromium's DevTools port", lambda: os.path.exists(port_file) and open(port_file).read().strip(), 60)
        port = open(port_file).read().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        dt.call("Page.enable")
        dt.call("Page.navigate", url=url)
        wait_for("the page", lambda: dt.evaluate("document.readyState") == "complete", 30)
        load_id = wait_for("the page's script", lambda: dt.evaluate("window.sinapseLoadId"), 30)
        # A malformed run shows its error, not a broken page.
        error = wait_for("the malformed run's error", lambda: dt.evaluate(
            "(() => { const e = document.querySelector('section[data-run=\"broken\"] div.error');"
            " return e && e.textContent; })()"), 30)
        assert "model.toml" in error, error
        print(f"malformed run shown with its error: {error}")

        out = os.path.join(runs, "cnn")
        # Enough epochs that the run is still going when the chart first shows: an epoch of
        # this CNN takes about 0.15 s on a 2-core AVX-512 machine, and with 4 of them the
        # chart once appeared with every point already in it.
        epochs = 40
        train = subprocess.Popen([SINAPSE, "train", os.path.join(ROOT, "models", "mnist_cnn.toml"), "--epochs",
                                  str(epochs), "--quiet", "--out", out], stdout=subprocess.DEVNULL)
        procs.append(train)
        first = wait_for("the run's chart with a point", lambda: points(dt, "cnn") >= 1 and points(dt, "cnn"), 180)
        print(f"chart appeared with {first} point(s)")
        later = wait_for("a point more after the next epoch", lambda: points(dt, "cnn") > first and points(dt, "cnn"), 180)
        print(f"chart gained a point without a reload: {first} -> {later}")
        assert dt.evaluate("window.sinapseLoadId") == load_id, "the page was reloaded"
        assert train.wait(timeout=300) == 0, "training failed"
        wait_for("the finished run's confusion matrix", lambda: dt.evaluate(
            "!!document.querySelector('section[data-run=\"cnn\"] table.confusion')"), 30)
        status = dt.evaluate("document.querySelector('section[data-run=\"cnn\"] .badge').textContent")
        assert status == "finished", status
        assert points(dt, "cnn") == epochs, points(dt, "cnn")
        assert dt.evaluate("window.sinapseLoadId") == load_id, "the page was reloaded"
        print(f"finished run shows {epochs} epochs and its confusion matrix")
        if args.screenshot:
            shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            print(f"screenshot: {args.screenshot}")
        print("dashboard check: passed")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
