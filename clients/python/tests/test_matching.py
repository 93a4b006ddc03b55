"""The Python client against real processes: redis-server and `kim-worker match`."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import LABEL, VERSION, Cluster, Dataset
from kim_client import ListenerGone, MatcherClient, RawDescriptor
from kim_client.protocol import unix_ms

VERSION_NEEDED = 'field "version" is missing: a bare descriptor needs it (the SDK form, dp\\0\\0 + version, carries it in its header)'
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def sdk(version: int, payload: bytes) -> bytes:
    return b"dp\0\0" + version.to_bytes(4, "little") + payload


async def match(
    client: MatcherClient,
    payload: bytes,
    *,
    version: int = VERSION,
    label: str = LABEL,
    limit: int = 10,
    timeout: float = 10,
    luna: str | None = None,
) -> dict[str, Any]:
    async with client.session() as conn:
        return await conn.match(
            descriptor=RawDescriptor(descriptor=payload, version=version),
            label=label,
            limit=limit,
            lunaRequestId=luna,
            timeout=timeout,
        )


def assert_ok(resp: dict[str, Any], limit: int) -> None:
    assert resp["status_code"] == 201, resp
    assert resp["error"] is None
    sims = [s for _, s in resp["result"]]
    assert 0 < len(sims) <= limit
    assert all(0.0 <= s <= 1.0 for s in sims), sims
    assert sims == sorted(sims, reverse=True), sims


def assert_error(resp: dict[str, Any], code: int, status: int, desc: str) -> None:
    assert resp["status_code"] == status, resp
    assert resp["result"] is None
    err = resp["error"]
    assert err is not None and err["error_code"] == code, resp
    assert err["desc"] == desc
    assert err["link"] == f"docs/errors.md#{code}"
    assert set(resp) == {"rid", "luna_request_id", "status_code", "result", "error"}
    assert re.fullmatch(UUID4, resp["rid"]), resp["rid"]


async def raw_request(
    r: aioredis.Redis, fields: dict[str, Any], channel: str | None, wait: float = 5.0
) -> tuple[bytes, dict[str, Any] | None]:
    """XADDs ``fields`` to the label stream; returns the entry id and the reply on ``channel``."""
    if channel is None:
        return await r.xadd(LABEL, fields), None
    ps = r.pubsub()
    try:
        await ps.subscribe(channel)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            m = await ps.get_message(timeout=0.5)
            if m and m["type"] == "subscribe":
                break
        else:
            pytest.fail("subscription not confirmed")
        entry = await r.xadd(LABEL, fields)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if m and m["type"] == "message":
                return entry, json.loads(m["data"])
        return entry, None
    finally:
        await ps.aclose()


def text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def raw_fields(dataset: Dataset, **over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "descriptor": dataset.mated[0].tobytes(),
        "version": str(VERSION),
        "label": LABEL,
        "limit": "3",
        "response_channel": f"test:reply:{uuid.uuid4()}",
        "luna_request_id": f"{int(time.time())},{uuid.uuid4()}",
        "rid": str(uuid.uuid4()),
        "deadline": str(unix_ms() + 10_000),
    }
    for k, v in over.items():
        if v is None:
            f.pop(k)
        else:
            f[k] = v
    return f


async def test_mated_probes_recall_and_identity(client: MatcherClient, dataset: Dataset) -> None:
    n = dataset.mated.shape[0]
    recall, top1 = 0.0, 0
    for i in range(n):
        resp = await match(client, dataset.mated[i].tobytes(), limit=10)
        assert_ok(resp, 10)
        ids = [hit[0] for hit in resp["result"]]
        assert len(ids) == 10
        recall += len(set(ids) & set(dataset.truth[i][:10])) / 10
        top1 += ids[0].rsplit("-", 1)[0] == dataset.identity[i]
    assert recall / n >= 0.95, f"recall@10 = {recall / n:.3f}"
    assert top1 / n >= 0.95, f"top-1 identity rate = {top1 / n:.3f}"


async def test_sdk_form_equals_bare_form(client: MatcherClient, dataset: Dataset) -> None:
    for i in range(0, dataset.mated.shape[0], 10):
        payload = dataset.mated[i].tobytes()
        bare = await match(client, payload, limit=5)
        with_header = await match(client, sdk(VERSION, payload), limit=5)
        assert_ok(bare, 5)
        assert bare["result"] == with_header["result"]


async def test_version_mismatch(client: MatcherClient, dataset: Dataset) -> None:
    resp = await match(client, dataset.mated[1].tobytes(), version=60)
    assert_error(resp, 26305, 400, "Descriptor version mismatch")
    assert resp["error"]["detail"] == "Descriptor of version 60 cannot be searched in index of version 59"


async def test_sdk_header_version_mismatch(client: MatcherClient, dataset: Dataset) -> None:
    resp = await match(client, sdk(61, dataset.mated[1].tobytes()), version=VERSION)
    assert_error(resp, 26305, 400, "Descriptor version mismatch")
    assert resp["error"]["detail"] == "Descriptor of version 61 cannot be searched in index of version 59"


async def test_unknown_label_answers_at_once(client: MatcherClient, raw: aioredis.Redis, dataset: Dataset) -> None:
    t0 = time.monotonic()
    resp = await match(client, dataset.mated[0].tobytes(), label="nope", timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert_error(resp, 26304, 404, "Index for label not found")
    assert resp["error"]["detail"] == 'no matcher serves label "nope"'
    assert await raw.exists("nope") == 0, "nothing may be sent for an unknown label"


async def test_wrong_descriptor_length(client: MatcherClient, dataset: Dataset) -> None:
    payload = dataset.mated[2].tobytes()
    for bad in (payload[:-1], payload + b"\0", sdk(VERSION, payload[:-1]), b""):
        resp = await match(client, bad)
        assert_error(resp, 26302, 400, "Descriptor cannot be decoded")
        assert "512" in resp["error"]["detail"], resp


async def test_client_side_validation_sends_nothing(
    client: MatcherClient, raw: aioredis.Redis, dataset: Dataset
) -> None:
    before = await raw.xlen(LABEL)
    payload = dataset.mated[0].tobytes()
    for label, limit in ((LABEL, 0), (LABEL, 1001), (LABEL, -1), ("", 5)):
        resp = await match(client, payload, label=label, limit=limit, luna="1,given")
        assert_error(resp, 26301, 400, "Request validation failed")
        assert resp["error"]["detail"] == "label must be non-empty and limit in 1..=1000"
        assert resp["luna_request_id"] == "1,given"
    assert await raw.xlen(LABEL) == before
    assert_ok(await match(client, payload, limit=1000), 1000)


async def test_expired_deadline(raw: aioredis.Redis, dataset: Dataset) -> None:
    f = raw_fields(dataset, deadline=str(unix_ms() - 1000))
    _, resp = await raw_request(raw, f, f["response_channel"])
    assert resp is not None, "no reply to an expired request"
    assert_error(resp, 26309, 504, "Matching timeout")
    assert resp["rid"] == f["rid"]
    assert resp["luna_request_id"] == f["luna_request_id"]


@pytest.mark.parametrize(
    "field,value,detail",
    [
        ("limit", "abc", 'field "limit" must be an integer in 1..=1000'),
        ("limit", "1001", 'field "limit" must be an integer in 1..=1000'),
        ("version", "-1", 'field "version" must be a non-negative decimal integer'),
        ("deadline", "soon", 'field "deadline" must be unix milliseconds'),
        ("descriptor", None, 'field "descriptor" is missing'),
        ("label", "other", 'label field "other" differs from stream label "faces"'),
        ("version", None, VERSION_NEEDED),
        ("threshold", "1.5", 'field "threshold" must be a similarity in [0, 1]'),
    ],
)
async def test_malformed_entry_with_channel_gets_26301(
    raw: aioredis.Redis, dataset: Dataset, field: str, value: str | None, detail: str
) -> None:
    f = raw_fields(dataset, **{field: value})
    _, resp = await raw_request(raw, f, f["response_channel"])
    assert resp is not None, "no reply to a malformed request"
    assert_error(resp, 26301, 400, "Request validation failed")
    assert resp["error"]["detail"] == detail
    assert resp["rid"] == f["rid"]
    assert resp["luna_request_id"] == f["luna_request_id"]


async def test_lim_message_without_version(client: MatcherClient, raw: aioredis.Redis, dataset: Dataset) -> None:
    """LUNA LIM's documented message: no version field, the SDK header carries it."""
    payload = dataset.mated[5].tobytes()
    f = raw_fields(dataset, descriptor=sdk(VERSION, payload), version=None, deadline=None, limit="5")
    assert sorted(f) == ["descriptor", "label", "limit", "luna_request_id", "response_channel", "rid"]
    _, resp = await raw_request(raw, f, f["response_channel"])
    assert resp is not None
    kim_form = await match(client, payload, limit=5)
    assert_ok(kim_form, 5)
    assert (resp["status_code"], resp["error"], resp["result"]) == (201, None, kim_form["result"])
    # An SDK header of another version (here 0): 26305 with result null.
    f = raw_fields(dataset, descriptor=sdk(0, payload), version=None)
    _, resp = await raw_request(raw, f, f["response_channel"])
    assert resp is not None
    assert (resp["status_code"], resp["result"], resp["error"]["error_code"]) == (400, None, 26305)
    assert resp["error"]["detail"] == "Descriptor of version 0 cannot be searched in index of version 59"


async def test_threshold_keeps_only_similar_candidates(client: MatcherClient, dataset: Dataset) -> None:
    payload = dataset.mated[6].tobytes()
    everything = await match(client, payload, limit=10)
    assert_ok(everything, 10)
    sims = [s for _, s in everything["result"]]
    cut = (sims[2] + sims[3]) / 2 if sims[2] > sims[3] else sims[2]
    async with client.session() as conn:
        some = await conn.match(
            descriptor=RawDescriptor(descriptor=payload, version=VERSION), label=LABEL, limit=10, threshold=cut
        )
        none = await conn.match(
            descriptor=RawDescriptor(descriptor=payload, version=VERSION), label=LABEL, limit=10, threshold=1.0
        )
        bad = await conn.match(
            descriptor=RawDescriptor(descriptor=payload, version=VERSION), label=LABEL, limit=10, threshold=1.5
        )
    assert some["status_code"] == 201
    assert some["result"] == [h for h in everything["result"] if h[1] >= cut] and len(some["result"]) >= 3
    assert (none["status_code"], none["result"]) == (201, [])
    assert_error(bad, 26301, 400, "Request validation failed")
    assert bad["error"]["detail"] == "threshold must be a similarity in [0, 1]"


async def test_malformed_entry_without_channel_is_acked(
    client: MatcherClient, raw: aioredis.Redis, dataset: Dataset
) -> None:
    f = raw_fields(dataset, limit="abc", response_channel=None)
    entry, _ = await raw_request(raw, f, None)
    entry_id = tuple(int(x) for x in text(entry).split("-"))

    async def delivered_and_acked() -> bool:
        groups = {text(g["name"]): g for g in await raw.xinfo_groups(LABEL)}
        last = tuple(int(x) for x in text(groups["kim-matchers"]["last-delivered-id"]).split("-"))
        pending = (await raw.xpending(LABEL, "kim-matchers"))["pending"]
        return last >= entry_id and pending == 0

    deadline = time.monotonic() + 5
    while not await delivered_and_acked():
        assert time.monotonic() < deadline, "the malformed entry was not delivered and acknowledged within 5 s"
        await asyncio.sleep(0.05)
    assert_ok(await match(client, dataset.mated[3].tobytes(), limit=3), 3)


async def test_label_registry(client: MatcherClient, cluster: Cluster) -> None:
    assert await client.readMatchingLabels() == [LABEL]
    assert await client.checkMatchingLabel(LABEL) is True
    for other in ("nope", "fa*", "f?ces", "[f]aces", "face", ""):
        assert await client.checkMatchingLabel(other) is False, other
    info = await client.readLabelInfo(LABEL)
    assert info and all(i["version"] == VERSION and i["dimensions"] == 512 and i["vectors"] == 10_000 for i in info), (
        info
    )
    # A prefixed client sees only prefixed keys.
    prefixed = await MatcherClient.create(cluster.redis.url, prefix="p:")
    r = aioredis.Redis(port=cluster.redis.port)
    try:
        assert prefixed.response_channel.startswith("p:kim:reply:")
        assert await prefixed.checkMatchingLabel(LABEL) is False
        await r.set("p:matching_label__x__y__m1", "{}", px=5000)
        assert await prefixed.readMatchingLabels() == ["x__y"]
        assert await prefixed.checkMatchingLabel("x__y") is True
        assert await client.readMatchingLabels() == [LABEL]
    finally:
        await r.delete("p:matching_label__x__y__m1")
        await r.aclose()
        await prefixed.close()


async def test_luna_request_id(client: MatcherClient, dataset: Dataset) -> None:
    given = f"{int(time.time())},{uuid.uuid4()}"
    resp = await match(client, dataset.mated[4].tobytes(), limit=1, luna=given)
    assert_ok(resp, 1)
    assert resp["luna_request_id"] == given
    resp = await match(client, dataset.mated[4].tobytes(), limit=1)
    secs, rest = resp["luna_request_id"].split(",")
    assert abs(int(secs) - time.time()) < 60 and re.fullmatch(UUID4, rest), resp["luna_request_id"]


async def test_client_timeout_forgets_the_request(client: MatcherClient, raw: aioredis.Redis, dataset: Dataset) -> None:
    # A registry key without a matcher behind it: the request is sent but never answered.
    await raw.set("matching_label__ghost__nobody", "{}", px=10_000)
    try:
        t0 = time.monotonic()
        resp = await match(client, dataset.mated[0].tobytes(), label="ghost", timeout=0.3)
        elapsed = time.monotonic() - t0
        assert_error(resp, 26309, 504, "Matching timeout")
        assert resp["error"]["detail"] == "no reply within 300 ms"
        assert 0.3 <= elapsed < 2.0, elapsed
        assert client._pending == {}
        entries = await raw.xrange("ghost")
        assert len(entries) == 1
        fields = entries[0][1]
        assert fields[b"rid"].decode() == resp["rid"] and fields[b"label"] == b"ghost"
        assert fields[b"response_channel"].decode() == client.response_channel
        assert abs(int(fields[b"deadline"]) - (unix_ms() - elapsed * 1000 + 300)) < 1000
    finally:
        await raw.delete("matching_label__ghost__nobody", "ghost")


async def test_close_fails_waiting_matches(cluster: Cluster, raw: aioredis.Redis, dataset: Dataset) -> None:
    c = await MatcherClient.create(cluster.redis.url)
    await raw.set("matching_label__ghost2__nobody", "{}", px=10_000)
    try:
        waiting = asyncio.create_task(match(c, dataset.mated[0].tobytes(), label="ghost2", timeout=10))
        for _ in range(100):
            if c._pending:
                break
            await asyncio.sleep(0.01)
        assert c._pending, "the request was not sent"
        await c.close()
        with pytest.raises(ListenerGone):
            await asyncio.wait_for(waiting, 2)
        with pytest.raises(ListenerGone):
            await match(c, dataset.mated[0].tobytes())
    finally:
        await c.close()
        await raw.delete("matching_label__ghost2__nobody", "ghost2")


async def test_200_concurrent_matches_are_routed_by_rid(client: MatcherClient, dataset: Dataset) -> None:
    n = min(200, dataset.mated.shape[0])
    assert n == 200
    payloads = [dataset.mated[i].tobytes() for i in range(n)]
    sequential = [await match(client, p, limit=5) for p in payloads]
    lunas = [f"{i},{uuid.uuid4()}" for i in range(n)]
    t0 = time.monotonic()
    concurrent = await asyncio.wait_for(
        asyncio.gather(*(match(client, p, limit=5, luna=l) for p, l in zip(payloads, lunas))), 30
    )
    elapsed = time.monotonic() - t0
    assert len({r["rid"] for r in concurrent}) == n
    for i, (seq, con) in enumerate(zip(sequential, concurrent)):
        assert_ok(con, 5)
        assert con["luna_request_id"] == lunas[i]
        assert con["result"] == seq["result"], f"probe {i}: concurrent result differs from sequential"
    assert client._pending == {}
    assert elapsed < 20, elapsed


async def test_two_matchers_share_load(cluster: Cluster, client: MatcherClient, dataset: Dataset) -> None:
    first = cluster.matchers[0]
    second = cluster.start_matcher("matcher-2")
    try:
        assert len(cluster.registry_keys()) == 2 and first.id != second.id
        before = [first.requests_total(), second.requests_total()]
        n, wave = 300, 20
        for start in range(0, n, wave):
            batch = [dataset.mated[i % dataset.mated.shape[0]].tobytes() for i in range(start, start + wave)]
            resps = await asyncio.gather(*(match(client, p, limit=3) for p in batch))
            for r in resps:
                assert_ok(r, 3)
        after = [first.requests_total(), second.requests_total()]
        served = [a - b for a, b in zip(after, before)]
        print(f"requests served by matcher-1, matcher-2: {served}")
        assert served[0] > 0 and served[1] > 0, f"load not shared: {served}"
        assert sum(served) >= n, served
        assert after[0] > 0 and after[1] > 0 and sum(after) >= n
    finally:
        cluster.stop_matcher(second)
