"""The Python client against TLS-only Redis with an ACL user, and through a Redis restart.

Real processes: redis-server (TLS certificates made by the openssl CLI), ``kim-worker match``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions as rexc
from conftest import LABEL, VERSION, Cluster, Dataset, Proc, free_port, http_get, kim_worker, start, wait_until
from kim_client import MatcherClient, RawDescriptor
from kim_client.connection import RedisSettings, redact

USER, PASSWORD = "kim", "pw-Py-7731-never-logged"


def test_redact_and_settings(tmp_path: Path) -> None:
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact("rediss://kim:s3cret@redis:6380/1") == "rediss://kim:***@redis:6380/1"
    assert redact("redis://u:pa/ss@wo@rd@host:1/0") == "redis://u:***@host:1/0"
    assert redact("redis://s3cret@h") == "redis://***@h"
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    s = RedisSettings.from_url("redis://h:1/0", env={"KIM_REDIS_USERNAME": "kim", "KIM_REDIS_PASSWORD_FILE": str(pw)})
    assert (s.username, s.password, s.tls) == ("kim", "from-file", False)
    s = RedisSettings.from_url("redis+sentinel://:p%40ss@a:26380,b/mymaster/3", env={})
    assert s.sentinels == [("a", 26380), ("b", 26379)] and (s.master, s.db, s.password) == ("mymaster", 3, "p@ss")
    for bad in ["http://u:hunter2@h", "redis+sentinel://u:hunter2@a:1", "redis+sentinel://u:hunter2@a:x/m"]:
        with pytest.raises(ValueError) as e:
            RedisSettings.from_url(bad, env={})
        assert "hunter2" not in str(e.value) and "***" in str(e.value), e.value
    with pytest.raises(ValueError, match="need a rediss://"):
        RedisSettings.from_url("redis://h:1", env={"KIM_REDIS_CA": "/ca.pem"})
    with pytest.raises(ValueError, match="only one of"):
        RedisSettings.from_url("redis://h:1", env={"KIM_REDIS_PASSWORD": "a", "KIM_REDIS_PASSWORD_FILE": str(pw)})


def make_certs(d: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not on PATH (scripts/deps.sh installs it)", pytrace=False)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kim-py-test-ca")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ossl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=kim-py-test-server")
    ossl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    )
    return d


def start_redis(name: str, port: int, logs: Path, extra: list[str]) -> Proc:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not on PATH"
    p = start(name, [exe, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", logs, *extra], logs)
    wait_until(f"{name} to listen", lambda: _listening(port), 10.0, p)
    return p


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_matcher(name: str, url: str, storage: Path, logs: Path, env: dict[str, str] | None = None) -> Proc:
    http = free_port()
    p = start(
        name,
        [
            kim_worker(),
            "match",
            "--storage",
            storage,
            "--redis",
            url,
            "--http",
            f"127.0.0.1:{http}",
            "--claim-idle",
            "1s",
            "--claim-interval",
            "200ms",
            "--matcher-id",
            name,
        ],
        logs,
        env,
    )
    wait_until(f"{name} /readyz", lambda: http_get(f"http://127.0.0.1:{http}/readyz", 1.0)[0] == 200, 30.0, p)
    return p


async def match(client: MatcherClient, payload: bytes, timeout: float = 10.0) -> dict[str, Any]:
    async with client.session() as conn:
        return await conn.match(
            descriptor=RawDescriptor(descriptor=payload, version=VERSION), label=LABEL, limit=3, timeout=timeout
        )


async def test_tls_only_redis_with_acl_user(cluster: Cluster, dataset: Dataset, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    port = free_port()
    tls = [
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        certs / "server.crt",
        "--tls-key-file",
        certs / "server.key",
        "--tls-ca-cert-file",
        certs / "ca.crt",
        "--tls-auth-clients",
        "no",
        "--user",
        USER,
        "on",
        f">{PASSWORD}",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]
    r = start_redis("redis-tls", port, tmp_path, [str(a) for a in tls])
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")
    url = f"rediss://127.0.0.1:{port}"
    m = start_matcher(
        "tls-matcher",
        url,
        cluster.storage,
        tmp_path,
        {
            "KIM_REDIS_CA": str(certs / "ca.crt"),
            "KIM_REDIS_USERNAME": USER,
            "KIM_REDIS_PASSWORD_FILE": str(pwfile),
            "KIM_REDIS_REQUIRE_TLS": "true",
        },
    )
    try:
        c = await MatcherClient.create(url, username=USER, password=PASSWORD, ssl_ca_certs=str(certs / "ca.crt"))
        try:
            for i in range(10):
                resp = await match(c, dataset.mated[i].tobytes())
                assert resp["status_code"] == 201, resp
                assert len(resp["result"]) == 3
            assert await c.readMatchingLabels() == [LABEL]
        finally:
            await c.close()
        # Plaintext against the TLS port: a connection error that names the fix.
        with pytest.raises(rexc.ConnectionError) as e:
            await asyncio.wait_for(
                MatcherClient.create(f"redis://127.0.0.1:{port}", username=USER, password=PASSWORD), 15
            )
        assert "rediss://" in str(e.value), e.value
        # Without the CA the self-made certificate is not trusted.
        with pytest.raises(rexc.ConnectionError):
            await asyncio.wait_for(MatcherClient.create(url, username=USER, password=PASSWORD), 15)
        # Wrong password: refused, and the password does not show up in the error.
        with pytest.raises(rexc.AuthenticationError) as e:
            await asyncio.wait_for(
                MatcherClient.create(url, username=USER, password="wrong-Pw-123", ssl_ca_certs=str(certs / "ca.crt")),
                15,
            )
        assert "wrong-Pw-123" not in str(e.value)
        assert PASSWORD not in m.log.read_text(errors="replace")
    finally:
        m.stop()
        r.stop()


async def test_redis_killed_and_restarted_under_load(cluster: Cluster, dataset: Dataset, tmp_path: Path) -> None:
    """SIGKILL Redis under a bounded load (count and time), restart it empty on the same port:
    every call ends with a match or 26309 within its timeout, and matches resume."""
    port = free_port()
    r = start_redis("redis-fault", port, tmp_path, ["--port", str(port)])
    url = f"redis://127.0.0.1:{port}"
    m = start_matcher("fault-matcher", url, cluster.storage, tmp_path)
    timeout = 3.0
    outcomes: list[tuple] = []
    stop = asyncio.Event()
    c = await MatcherClient.create(url)
    try:

        async def worker(w: int) -> None:
            i = w
            while not stop.is_set() and len(outcomes) < 50_000:
                t = time.monotonic()
                resp = await match(c, dataset.mated[i % len(dataset.mated)].tobytes(), timeout=timeout)
                outcomes.append((t, time.monotonic() - t, resp["status_code"], (resp["error"] or {}).get("error_code")))
                i += 8

        async def pacer() -> None:
            calls = []
            for i in range(400):
                if stop.is_set():
                    break
                calls.append(asyncio.ensure_future(worker_once(i)))
                await asyncio.sleep(0.025)
            await asyncio.gather(*calls)

        async def worker_once(i: int) -> None:
            t = time.monotonic()
            resp = await match(c, dataset.mated[i % len(dataset.mated)].tobytes(), timeout=timeout)
            outcomes.append((t, time.monotonic() - t, resp["status_code"], (resp["error"] or {}).get("error_code")))

        tasks = [asyncio.ensure_future(worker(w)) for w in range(8)] + [asyncio.ensure_future(pacer())]
        await asyncio.sleep(0.7)
        before = len(outcomes)
        r.popen.kill()
        r.popen.wait(timeout=5)
        killed = time.monotonic()
        await asyncio.sleep(1.0)
        r = start_redis("redis-fault-2", port, tmp_path, ["--port", str(port)])
        restarted = time.monotonic()
        await asyncio.sleep(5.0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout + 10)

        ok = sum(1 for o in outcomes if o[2] == 201)
        timeouts = sum(1 for o in outcomes if o[3] == 26309)
        during = sum(1 for o in outcomes if killed <= o[0] < restarted)
        first_after = min(
            (o[0] + o[1] - restarted for o in outcomes if o[2] == 201 and o[0] >= restarted), default=None
        )
        print(
            f"python redis fault: {len(outcomes)} calls ({before} before the kill, {during} during the outage): "
            f"{ok} matched, {timeouts} timed out; slowest {max(o[1] for o in outcomes):.3f} s; "
            f"first match after restart {first_after} s"
        )
        assert before > 0 and during > 0
        for _t, took, status, code in outcomes:
            assert status == 201 or code == 26309, (status, code)
            assert took <= timeout + 1.0, took
        assert first_after is not None and first_after < 4.0, first_after
        assert m.popen.poll() is None, "matcher exited"
        for i in range(10):
            resp = await match(c, dataset.mated[i].tobytes())
            assert resp["status_code"] == 201, resp
    finally:
        await c.close()
        m.stop()
        r.stop()


async def test_sentinel_resolution(cluster: Cluster, dataset: Dataset, tmp_path: Path) -> None:
    """The client finds the master through Sentinel (the first sentinel listed is down)."""
    port, sport = free_port(), free_port()
    r = start_redis("redis-sentinel-master", port, tmp_path, ["--port", str(port)])
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sport}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor kimmaster 127.0.0.1 {port} 1\n")
    s = start("sentinel", [shutil.which("redis-server"), conf, "--sentinel"], tmp_path)
    wait_until("sentinel to listen", lambda: _listening(sport), 10.0, s)
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sport}/kimmaster/0"
    m = start_matcher("sentinel-matcher", url, cluster.storage, tmp_path)
    try:
        c = await MatcherClient.create(url)
        try:
            for i in range(5):
                resp = await match(c, dataset.mated[i].tobytes())
                assert resp["status_code"] == 201, resp
        finally:
            await c.close()
        with redis.Redis(port=port) as direct:
            assert direct.xlen(LABEL) >= 5, "requests went to the master Sentinel named"
    finally:
        m.stop()
        s.stop()
        r.stop()
