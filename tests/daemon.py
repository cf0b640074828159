"""Run a real ``ztpd serve`` subprocess for tests: a config file, a free port, readiness by polling
/healthz (never a fixed sleep), and a stop that reports how the daemon exited."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, state_dir: Path, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "state_dir": str(state_dir),
        "profiles_dir": str(REPO / "profiles"),
        "templates_dir": str(REPO / "boot-templates"),
        "images_dir": str(state_dir / "images"),
        "http": {"listen": ["127.0.0.1"], "port": free_port()},
        "lifecycle": {"sweep_interval": 0.2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def ztpd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ztpd", *args]


class Daemon:
    """A ``ztpd serve`` process; use as a context manager, or start()/stop() by hand."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.env.pop("ZTPD_CONFIG", None)
        cfg = yaml.safe_load(config.read_text())
        self.url = f"http://127.0.0.1:{cfg['http']['port']}"
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def start(self, timeout: float = 30.0) -> Daemon:
        self.proc = subprocess.Popen(
            ztpd_cmd("serve", "--config", str(self.config)),
            env=self.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"ztpd exited {self.proc.returncode}: {self.stderr}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"ztpd did not answer /healthz within {timeout}s")

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stderr = err or ""
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
