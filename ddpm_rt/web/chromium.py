"""Drive a headless Chromium over the DevTools protocol, standard library only.

Chromium's ``--remote-debugging-pipe`` speaks CDP on file descriptors 3 (commands in) and
4 (replies and events out), one JSON message per NUL-terminated record, so no WebSocket
client is needed. Used by the browser test, the browser benchmark and the screenshot in
the README; nothing in `ddpm-rt web` itself needs it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ddpm_rt.errors import ConfigError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that keep a headless run quiet and self-contained (no network of its own, no profile).
BASE_FLAGS = ("--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
              "--disable-default-apps", "--mute-audio", "--hide-scrollbars")
NO_GPU_FLAGS = ("--disable-gpu",)
# WebGPU through SwiftShader (Vulkan on the CPU), where the Chromium build ships it.
SOFTWARE_WEBGPU_FLAGS = ("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
                         "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader",
                         "--disable-vulkan-surface")


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """The browser died, a command failed, or a wait timed out."""


class Chromium:
    """One headless browser with one page; `evaluate` runs JavaScript and returns its value."""

    def __init__(self, executable: str | None = None, webgpu: bool = False, size: tuple[int, int] = (1280, 900),
                 extra_flags: tuple[str, ...] = ()) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise ConfigError("no Chromium found on PATH: apt-get install chromium")
        self._profile = tempfile.mkdtemp(prefix="ddpm-rt-chromium-")
        flags = [*BASE_FLAGS, *(SOFTWARE_WEBGPU_FLAGS if webgpu else NO_GPU_FLAGS), *extra_flags,
                 f"--user-data-dir={self._profile}", f"--window-size={size[0]},{size[1]}",
                 "--remote-debugging-pipe", "about:blank"]
        self._log = open(Path(self._profile) / "stderr.log", "wb")  # noqa: SIM115 - closed in close()
        cmd_r, self._cmd_w = os.pipe()  # we write commands, the browser reads fd 3
        self._out_r, out_w = os.pipe()  # the browser writes fd 4, we read

        def child_fds() -> None:  # in the child: the pipe ends become fds 3 and 4 (inheritable)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, out_w)]  # out of the way of 3, 4
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        # close_fds=False: Python's own descriptors are non-inheritable and close on exec anyway,
        # while pass_fds could not keep descriptors that only exist after preexec_fn ran
        self._proc = subprocess.Popen([exe, *flags], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=self._log, close_fds=False, preexec_fn=child_fds)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.console: list[str] = []
        self.size = size
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable"):
            self.send(domain, session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for the browser")
            ready, _, _ = select.select([self._out_r], [], [], min(left, 1.0))
            if not ready:
                if self._proc.poll() is not None:
                    raise BrowserError(f"the browser exited with code {self._proc.returncode}: "
                                       f"{self._stderr_tail()}")
                continue
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise BrowserError(f"the browser closed its DevTools pipe: {self._stderr_tail()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _stderr_tail(self) -> str:
        self._log.flush()
        return (Path(self._profile) / "stderr.log").read_bytes().decode(errors="replace")[-2000:]

    def send(self, method: str, session: bool = False, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """One CDP command; returns its result, raises BrowserError on a protocol error."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self._session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append("exception: " + str(details.get("exception", {}).get("description")
                                                     or details.get("text")))

    # ------------------------------------------------------------------ page helpers
    def navigate(self, url: str, timeout: float = 60.0) -> None:
        """Open `url` and wait for its load event."""
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self._event(self._read_message(deadline))

    def evaluate(self, expression: str, timeout: float = 120.0) -> Any:
        """Evaluate JavaScript in the page (promises awaited); its JSON value, or BrowserError."""
        res = self.send("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                        awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 120.0, poll: float = 0.1) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(poll)
        raise BrowserError(f"timed out after {timeout:g} s waiting for {expression}")

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Put local files into an <input type=file> (what choosing them in the dialog does)."""
        obj = self.send("Runtime.evaluate", session=True, expression=f"document.querySelector({json.dumps(selector)})")
        object_id = obj.get("result", {}).get("objectId")
        if object_id is None:
            raise BrowserError(f"no element matches {selector}")
        self.send("DOM.setFileInputFiles", session=True, objectId=object_id, files=[str(p) for p in paths])

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page's viewport."""
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(BrowserError, OSError):
                    self.send("Browser.close", timeout=5.0)
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        finally:
            for fd in (self._cmd_w, self._out_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
