"""Start gpumon and real servers (Prometheus) as subprocesses on loopback ports, and stop them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import pytest

from tests.support.net import free_port

if TYPE_CHECKING:
    from typing import Self


def need(command: str) -> str:
    """The path of a server binary `make test` installs; a clear failure if it is missing."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} not found: run the tests with `make test`, which installs it")
    return path


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout,
                                    context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None,
             headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if http_get(url, timeout=1.0, headers=headers, context=context)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; a process that already exited is left alone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_gpumon(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a gpumon command to completion (for commands that are expected to exit)."""
    return subprocess.run([sys.executable, "-m", "gpumon", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GPUMON_DEBUG": ""})


class Gpumon:
    """`gpumon run` in the background; stderr (the log) is kept in a file for assertions."""

    def __init__(self, tmp: Path, *args: str, backend: str = "replay:demo,loop", tls: bool = False,
                 ready_headers: dict[str, str] | None = None) -> None:
        """`tls` and `ready_headers` (credentials): how to ask a gpumon behind its web-config whether it
        is ready; the test's own certificates are not verified."""
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._ready_headers = ready_headers
        self._context = ssl._create_unverified_context() if tls else None
        self.log_path = tmp / f"gpumon-{self.port}.log"
        self.args = ["run", "--backend", backend, "--listen", f"127.0.0.1:{self.port}",
                     "--state-dir", str(tmp / "state"), "--log-format", "json", *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gpumon:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gpumon", *self.args], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        wait_for(f"{self.url}/-/ready", proc=self.proc, headers=self._ready_headers, context=self._context)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self.proc is not None
        stop(self.proc)
        self._log.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url + path)


class _HttpServer:
    """A real server binary on a loopback port, with its own directory, config file and log."""

    name = ""
    config_file = ""

    def __init__(self, tmp: Path, config: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp / f"{self.name}-{self.port}"
        self.dir.mkdir()
        (self.dir / self.config_file).write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._log = (self.dir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(f"{self.url}/-/ready", timeout=30, proc=self.proc)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self.proc is not None
        stop(self.proc)
        self._log.close()


class Prometheus(_HttpServer):
    """A real Prometheus server on a loopback port."""

    name, config_file = "prometheus", "prometheus.yml"

    def command(self) -> list[str]:
        return [need("prometheus"), f"--config.file={self.dir / self.config_file}",
                f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"]


class Alertmanager(_HttpServer):
    """A real Alertmanager on a loopback port (cluster mode off)."""

    name, config_file = "alertmanager", "alertmanager.yml"

    def __init__(self, tmp: Path, config: str = "route: {receiver: none}\nreceivers: [{name: none}]\n") -> None:
        super().__init__(tmp, config)

    def command(self) -> list[str]:
        return [need("prometheus-alertmanager"), f"--config.file={self.dir / self.config_file}",
                f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address="]


class Mosquitto:
    """A real mosquitto broker on a loopback port; `restart()` stops and starts it on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / f"mosquitto-{self.port}"
        self.dir.mkdir()
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = (self.dir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([need("mosquitto"), "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self._log.close()
            self.proc = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
