"""Fixtures for the online (Vald) path: real `kim-worker agent|filter|vectorize` processes
on loopback, driven by the outside client `vald-client-python` 1.8.0.

Binaries come from ``$KIM_BIN_DIR`` (default ``<repo>/target/release``). Every wait is
bounded; every process started here is stopped at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DIMS = 256


def kim_worker() -> Path:
    exe = Path(os.environ.get("KIM_BIN_DIR", REPO_ROOT / "target" / "release")) / "kim-worker"
    if not os.access(exe, os.X_OK):
        pytest.fail(f"{exe} is missing: run `cargo build --release -p kim-worker` or set KIM_BIN_DIR", pytrace=False)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> list[str]:
    """A command prefix that SIGKILLs the child if pytest dies without its teardown. setpriv
    sets it in the child; a Python preexec_fn cannot, because forking a process that runs
    gRPC threads and then running Python code in the child is unsafe."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv and sys.platform.startswith("linux") else []


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    port: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Procs:
    logs: Path
    running: list[Proc] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Proc:
        """Starts `kim-worker ARGS --listen --http` and waits until its gRPC port accepts."""
        port, http = free_port(), free_port()
        argv = [str(kim_worker()), *args, "--listen", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http}"]
        return self.spawn(name, argv, port, dict(os.environ, KIM_LOG="info,kim_worker=debug,hnsw_rs=warn"))

    def spawn(self, name: str, argv: list[str], port: int, env: dict[str, str], wait: float = 30.0) -> Proc:
        """Starts `argv` and waits (at most `wait` s) until `port` accepts connections."""
        log = self.logs / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(
                [*_die_with_parent(), *argv], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        proc = Proc(name, p, log, port)
        self.running.append(proc)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if p.poll() is not None:
                pytest.fail(f"{name} exited ({p.returncode}); log:\n{proc.tail()}", pytrace=False)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return proc
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"{name} did not listen within {wait} s; log:\n{proc.tail()}", pytrace=False)

    def stop_all(self) -> None:
        for p in reversed(self.running):
            p.stop()


@dataclass
class Online:
    """Three agents, the kim vectorizer, a gateway with it as default (`gw`) and one
    without a default vectorizer (`bare`)."""

    agents: list[Proc]
    vectorizer: Proc
    gateway: Proc
    bare_gateway: Proc
    procs: Procs
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, p: Proc) -> grpc.Channel:
        if p.addr not in self.channels:
            self.channels[p.addr] = grpc.insecure_channel(p.addr)
            grpc.channel_ready_future(self.channels[p.addr]).result(timeout=10)
        return self.channels[p.addr]


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Online]:
    d = tmp_path_factory.mktemp("online")
    procs = Procs(d)
    try:
        agents = [
            procs.start(
                f"agent{i}", "agent", "--data", str(d / f"agent{i}"), "--dimensions", str(DIMS), "--metric", "cosine"
            )
            for i in range(3)
        ]
        vec = procs.start("vectorizer", "vectorize", "--dimensions", str(DIMS))
        addrs = ",".join(a.addr for a in agents)
        # Tests name vectorizers and filters of their own on loopback ports: the gateway lets
        # requests call any port of 127.0.0.1; the bare one only the shared vectorizer.
        gw = procs.start(
            "gateway",
            "filter",
            "--agents",
            addrs,
            "--replicas",
            "2",
            "--vectorizer",
            vec.addr,
            "--allow-target",
            "127.0.0.1:*",
        )
        bare = procs.start("gateway-bare", "filter", "--agents", addrs, "--replicas", "2", "--allow-target", vec.addr)
        o = Online(agents, vec, gw, bare, procs)
        yield o
        for c in o.channels.values():
            c.close()
    finally:
        procs.stop_all()
