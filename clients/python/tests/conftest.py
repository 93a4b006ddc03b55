"""Fixtures running the real thing: redis-server, `kim-worker gen|index|match`.

Binaries come from ``$KIM_BIN_DIR`` (default ``<repo>/target/release``); ``redis-server`` must
be on PATH. Every wait is bounded; every process started here is stopped at teardown.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from kim_client import MatcherClient

REPO_ROOT = Path(__file__).resolve().parents[3]
LABEL = "faces"
VERSION = 59


def bin_dir() -> Path:
    return Path(os.environ.get("KIM_BIN_DIR", REPO_ROOT / "target" / "release"))


def kim_worker() -> Path:
    exe = bin_dir() / "kim-worker"
    if not os.access(exe, os.X_OK):
        pytest.fail(
            f"{exe} is missing: build it with `cargo build --release -p kim-worker` "
            f"or point KIM_BIN_DIR at the directory holding kim-worker",
            pytrace=False,
        )
    return exe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


@dataclass
class Proc:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def _die_with_parent() -> None:
    """Child side of Popen: get SIGKILL if pytest dies without running its teardown (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start(name: str, args: list[str], log_dir: Path, extra_env: dict[str, str] | None = None) -> Proc:
    log = log_dir / f"{name}.log"
    f = open(log, "wb")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1", **(extra_env or {}))
    try:
        p = subprocess.Popen(
            [str(a) for a in args],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        f.close()
    return Proc(name, p, log)


def run(args: list[str], timeout: float) -> None:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}", pytrace=False
        )


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, proc: Proc | None = None, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(
                f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}; log:\n{tail(proc.log)}",
                pytrace=False,
            )
        if check():
            return
        time.sleep(interval)
    log = f"; log of {proc.name}:\n{tail(proc.log)}" if proc else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}{log}", pytrace=False)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return 0, ""


@dataclass
class Redis:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@dataclass
class Dataset:
    dir: Path
    mated: np.ndarray
    truth: list[list[str]]
    identity: list[str]


@dataclass
class Matcher:
    proc: Proc
    http: int
    id: str = ""

    def metrics(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.http}/metrics")
        assert status == 200, f"/metrics of {self.proc.name} answered {status}"
        return body

    def requests_total(self, status: int = 201, label: str = LABEL) -> float:
        pat = re.compile(r'^kim_matcher_requests_total\{([^}]*)\}\s+(\S+)', re.M)
        total = 0.0
        for labels, value in pat.findall(self.metrics()):
            if f'label="{label}"' in labels and f'status="{status}"' in labels:
                total += float(value)
        return total


@dataclass
class Cluster:
    redis: Redis
    storage: Path
    logs: Path
    matchers: list[Matcher] = field(default_factory=list)

    def start_matcher(self, name: str) -> Matcher:
        """Starts a matcher and waits until it is ready, registered and reading the stream."""
        known = set(self.registry_keys())
        http = free_port()
        proc = start(
            name,
            [
                kim_worker(),
                "match",
                "--storage",
                self.storage,
                "--redis",
                self.redis.url,
                "--http",
                f"127.0.0.1:{http}",
                "--claim-idle",
                "1s",
                "--claim-interval",
                "200ms",
            ],
            self.logs,
        )
        m = Matcher(proc, http)
        self.matchers.append(m)
        wait_until(f"{name} /readyz", lambda: http_get(f"http://127.0.0.1:{http}/readyz", 1.0)[0] == 200, 30.0, proc)
        wait_until(f"the registry key of {name}", lambda: bool(set(self.registry_keys()) - known), 10.0, proc)
        (key,) = set(self.registry_keys()) - known
        m.id = key.decode().split(f"matching_label__{LABEL}__", 1)[1]
        # /readyz can turn 200 up to 200 ms before the matcher's first XREADGROUP: wait until
        # every running matcher has a connection reading the stream.
        wait_until(f"{name} reading the stream", lambda: self.stream_readers() >= len(self.matchers), 10.0, proc)
        return m

    def registry_keys(self) -> list[bytes]:
        with redis.Redis(port=self.redis.port) as r:
            return list(r.scan_iter(match=f"matching_label__{LABEL}__*", count=1000))

    def stream_readers(self) -> int:
        """Connections whose last command was XREADGROUP (one per reading matcher)."""
        with redis.Redis(port=self.redis.port, decode_responses=True) as r:
            return sum(1 for c in r.client_list() if c.get("cmd") == "xreadgroup")

    def stop_matcher(self, m: Matcher) -> None:
        m.proc.stop()
        if m in self.matchers:
            self.matchers.remove(m)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH", pytrace=False)
    logs = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = start(
        "redis",
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", logs],
        logs,
    )

    def up() -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as r:
                return bool(r.ping())
        except redis.RedisError:
            return False

    try:
        wait_until("redis-server", up, 10.0, proc)
        yield Redis(port, proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    d = tmp_path_factory.mktemp("data")
    run([kim_worker(), "gen", "--out", d, "--identities", "2500", "--samples", "4"], timeout=60)
    mated = np.load(d / "mated.npy")
    assert mated.dtype == np.uint8 and mated.ndim == 2 and mated.shape[1] == 512, (mated.dtype, mated.shape)
    truth = [line.split() for line in (d / "mated_truth.txt").read_text().splitlines()]
    identity = (d / "mated_identity.txt").read_text().split()
    assert len(truth) == len(identity) == mated.shape[0] > 0
    return Dataset(d, mated, truth, identity)


@pytest.fixture(scope="session")
def cluster(redis_server: Redis, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis plus one matcher serving label ``faces`` (version 59) built from the dataset."""
    storage = tmp_path_factory.mktemp("storage")
    logs = tmp_path_factory.mktemp("logs")
    run(
        [
            kim_worker(),
            "index",
            "--label",
            LABEL,
            "--storage",
            storage,
            "--source",
            dataset.dir / "base.npy",
            "--ids",
            dataset.dir / "ids.txt",
            "--version",
            str(VERSION),
        ],
        timeout=120,
    )
    c = Cluster(redis_server, storage, logs)
    try:
        c.start_matcher("matcher-1")
        yield c
    finally:
        for m in list(c.matchers):
            m.proc.stop()


@pytest.fixture
async def client(cluster: Cluster) -> MatcherClient:
    c = await MatcherClient.create(cluster.redis.url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def raw(cluster: Cluster) -> aioredis.Redis:
    """A plain Redis connection for writing stream entries by hand."""
    r = aioredis.Redis(port=cluster.redis.port)
    try:
        yield r
    finally:
        await r.aclose()
