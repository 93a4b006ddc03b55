"""Every RPC of every vald.v1 service kim's gateway serves besides Filter (Insert, Update,
Upsert, Search, Remove, Object, Index, Flush), through vald-client-python 1.8.0 against three
agents with replicas 2, checking results and codes. A recording wrapper proves that no RPC of
those services went uncalled."""

from __future__ import annotations

import importlib

import grpc
import numpy as np
import pytest
from conftest import DIMS, Online
from google.protobuf import descriptor_pool
from vald.v1.payload import payload_pb2 as pb
from vald.v1.vald import (
    flush_pb2_grpc,
    index_pb2_grpc,
    insert_pb2_grpc,
    object_pb2_grpc,
    remove_pb2_grpc,
    search_pb2_grpc,
    update_pb2_grpc,
    upsert_pb2_grpc,
)

Code = grpc.StatusCode
SERVICES = ["Insert", "Update", "Upsert", "Search", "Remove", "Object", "Index", "Flush"]
STUBS = {
    "Insert": insert_pb2_grpc.InsertStub,
    "Update": update_pb2_grpc.UpdateStub,
    "Upsert": upsert_pb2_grpc.UpsertStub,
    "Search": search_pb2_grpc.SearchStub,
    "Remove": remove_pb2_grpc.RemoveStub,
    "Object": object_pb2_grpc.ObjectStub,
    "Index": index_pb2_grpc.IndexStub,
    "Flush": flush_pb2_grpc.FlushStub,
}
CALLED: set[str] = set()


class Recorded:
    """A stub whose every call is remembered as Service/Method."""

    def __init__(self, service: str, channel: grpc.Channel):
        self.service, self.stub = service, STUBS[service](channel)

    def __getattr__(self, name: str):
        CALLED.add(f"{self.service}/{name}")
        return getattr(self.stub, name)


@pytest.fixture(scope="module")
def gw(online: Online) -> dict[str, Recorded]:
    return {s: Recorded(s, online.channel(online.gateway)) for s in SERVICES}


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)
    return list(v / np.linalg.norm(v))


def vec(id: str, seed: int, ts: int = 0) -> pb.Object.Vector:
    return pb.Object.Vector(id=id, vector=unit(seed), timestamp=ts)


def cfg(num: int = 5, **kw) -> pb.Search.Config:
    return pb.Search.Config(num=num, **kw)


def code(f, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        f(*args)
    return e.value.code()


def ids(res: pb.Search.Response) -> list[str]:
    return [r.id for r in res.results]


def exact_top(stored: dict[str, list[float]], q: list[float], k: int) -> list[str]:
    names = sorted(stored)
    m = np.array([stored[n] for n in names], dtype=np.float32)
    qv = np.array(q, dtype=np.float32)
    d = 1.0 - (m @ qv) / (np.linalg.norm(m, axis=1) * np.linalg.norm(qv))
    return [names[i] for i in np.argsort(d, kind="stable")[:k]]


def test_every_gateway_rpc(online: Online, gw: dict[str, Recorded]):
    stored: dict[str, list[float]] = {}

    # Insert: unary, Multi, Stream; each id on exactly two agents; a strict re-insert fails.
    loc = gw["Insert"].Insert(pb.Insert.Request(vector=vec("v0", 0)))
    assert loc.uuid == "v0" and len(loc.ips) == 2
    gw["Insert"].MultiInsert(
        pb.Insert.MultiRequest(requests=[pb.Insert.Request(vector=vec(f"v{i}", i)) for i in range(1, 10)])
    )
    replies = list(gw["Insert"].StreamInsert(iter([pb.Insert.Request(vector=vec(f"v{i}", i)) for i in (10, 11, 0)])))
    assert [r.WhichOneof("payload") for r in replies] == ["location", "location", "status"]
    assert replies[2].status.code == Code.ALREADY_EXISTS.value[0]
    assert code(gw["Insert"].Insert, pb.Insert.Request(vector=vec("v1", 99))) == Code.ALREADY_EXISTS
    for i in range(12):
        stored[f"v{i}"] = unit(i)
    for i in range(12):
        held = 0
        for a in online.agents:
            try:
                object_pb2_grpc.ObjectStub(online.channel(a)).Exists(pb.Object.ID(id=f"v{i}"))
                held += 1
            except grpc.RpcError as e:
                assert e.code() == Code.NOT_FOUND
        assert held == 2, f"v{i} on {held} agents"

    # Object: GetObject returns the stored vector; StreamGetObject answers per message;
    # GetTimestamp agrees; StreamListObject lists every id once.
    got = gw["Object"].GetObject(pb.Object.VectorRequest(id=pb.Object.ID(id="v3")))
    assert got.id == "v3" and np.allclose(got.vector, stored["v3"], atol=1e-7) and got.timestamp > 0
    assert gw["Object"].GetTimestamp(pb.Object.TimestampRequest(id=pb.Object.ID(id="v3"))).timestamp == got.timestamp
    assert gw["Object"].Exists(pb.Object.ID(id="v3")).id == "v3"
    assert code(gw["Object"].Exists, pb.Object.ID(id="nope")) == Code.NOT_FOUND
    assert code(gw["Object"].GetObject, pb.Object.VectorRequest(id=pb.Object.ID(id="nope"))) == Code.NOT_FOUND
    replies = list(
        gw["Object"].StreamGetObject(
            iter([pb.Object.VectorRequest(id=pb.Object.ID(id=i)) for i in ("v4", "nope", "v5")])
        )
    )
    assert [r.WhichOneof("payload") for r in replies] == ["vector", "status", "vector"]
    assert replies[0].vector.id == "v4" and np.allclose(replies[0].vector.vector, stored["v4"], atol=1e-7)
    assert replies[1].status.code == Code.NOT_FOUND.value[0]
    listed = [m.vector.id for m in gw["Object"].StreamListObject(pb.Object.List.Request())]
    assert sorted(listed) == sorted(stored) and len(listed) == len(set(listed))

    # Search: by vector and by id, approximate and linear, unary, Multi and Stream.
    q = unit(1000)
    top = exact_top(stored, q, 5)
    assert ids(gw["Search"].LinearSearch(pb.Search.Request(vector=q, config=cfg(5)))) == top, (
        "LinearSearch equals exact search"
    )
    assert ids(gw["Search"].Search(pb.Search.Request(vector=q, config=cfg(5))))[0] == top[0]
    res = gw["Search"].Search(pb.Search.Request(vector=stored["v2"], config=cfg(3, request_id="rq")))
    assert (
        res.request_id == "rq" and res.results[0].id == "v2" and res.results[0].distance == pytest.approx(0, abs=1e-5)
    )
    assert len(set(ids(res))) == len(res.results), "no replica twice"
    by_id = gw["Search"].SearchByID(pb.Search.IDRequest(id="v6", config=cfg(4)))
    assert ids(by_id)[0] == "v6"
    assert ids(gw["Search"].LinearSearchByID(pb.Search.IDRequest(id="v6", config=cfg(4)))) == exact_top(
        stored, stored["v6"], 4
    )
    assert code(gw["Search"].SearchByID, pb.Search.IDRequest(id="nope", config=cfg(1))) == Code.NOT_FOUND
    multi = gw["Search"].MultiSearch(
        pb.Search.MultiRequest(requests=[pb.Search.Request(vector=stored[f"v{i}"], config=cfg(1)) for i in (7, 8)])
    )
    assert [ids(r) for r in multi.responses] == [["v7"], ["v8"]]
    multi = gw["Search"].MultiSearchByID(
        pb.Search.MultiIDRequest(requests=[pb.Search.IDRequest(id=i, config=cfg(1)) for i in ("v9", "v1")])
    )
    assert [ids(r) for r in multi.responses] == [["v9"], ["v1"]]
    multi = gw["Search"].MultiLinearSearch(
        pb.Search.MultiRequest(requests=[pb.Search.Request(vector=q, config=cfg(5))])
    )
    assert ids(multi.responses[0]) == top
    multi = gw["Search"].MultiLinearSearchByID(
        pb.Search.MultiIDRequest(requests=[pb.Search.IDRequest(id="v2", config=cfg(3))])
    )
    assert ids(multi.responses[0]) == exact_top(stored, stored["v2"], 3)
    for rpc, reqs in [
        (
            "StreamSearch",
            [pb.Search.Request(vector=stored["v5"], config=cfg(1)), pb.Search.Request(vector=[1.0], config=cfg(1))],
        ),
        (
            "StreamLinearSearch",
            [pb.Search.Request(vector=stored["v5"], config=cfg(1)), pb.Search.Request(vector=[1.0], config=cfg(1))],
        ),
    ]:
        out = list(getattr(gw["Search"], rpc)(iter(reqs)))
        assert ids(out[0].response) == ["v5"], rpc
        assert out[1].status.code == Code.INVALID_ARGUMENT.value[0], rpc  # wrong dimension, in-band
    for rpc in ("StreamSearchByID", "StreamLinearSearchByID"):
        out = list(
            getattr(gw["Search"], rpc)(
                iter([pb.Search.IDRequest(id="v10", config=cfg(1)), pb.Search.IDRequest(id="nope", config=cfg(1))])
            )
        )
        assert ids(out[0].response) == ["v10"] and out[1].status.code == Code.NOT_FOUND.value[0], rpc

    # Update: unary, Multi, Stream, UpdateTimestamp.
    gw["Update"].Update(pb.Update.Request(vector=vec("v0", 500)))
    stored["v0"] = unit(500)
    assert np.allclose(
        gw["Object"].GetObject(pb.Object.VectorRequest(id=pb.Object.ID(id="v0"))).vector, stored["v0"], atol=1e-7
    )
    assert code(gw["Update"].Update, pb.Update.Request(vector=vec("nope", 1))) == Code.NOT_FOUND
    gw["Update"].MultiUpdate(pb.Update.MultiRequest(requests=[pb.Update.Request(vector=vec("v1", 501))]))
    stored["v1"] = unit(501)
    out = list(
        gw["Update"].StreamUpdate(
            iter([pb.Update.Request(vector=vec("v2", 502)), pb.Update.Request(vector=vec("nope", 1))])
        )
    )
    assert [r.WhichOneof("payload") for r in out] == ["location", "status"]
    stored["v2"] = unit(502)
    assert ids(gw["Search"].LinearSearch(pb.Search.Request(vector=stored["v1"], config=cfg(1)))) == ["v1"]
    ts = gw["Object"].GetTimestamp(pb.Object.TimestampRequest(id=pb.Object.ID(id="v3"))).timestamp
    gw["Update"].UpdateTimestamp(pb.Update.TimestampRequest(id="v3", timestamp=ts + 10))
    assert gw["Object"].GetTimestamp(pb.Object.TimestampRequest(id=pb.Object.ID(id="v3"))).timestamp == ts + 10
    assert code(gw["Update"].UpdateTimestamp, pb.Update.TimestampRequest(id="v3", timestamp=ts)) == Code.ALREADY_EXISTS
    gw["Update"].UpdateTimestamp(pb.Update.TimestampRequest(id="v3", timestamp=ts, force=True))
    assert gw["Object"].GetTimestamp(pb.Object.TimestampRequest(id=pb.Object.ID(id="v3"))).timestamp == ts
    assert np.allclose(
        gw["Object"].GetObject(pb.Object.VectorRequest(id=pb.Object.ID(id="v3"))).vector, stored["v3"], atol=1e-7
    )

    # Upsert: unary, Multi, Stream (new and existing ids).
    gw["Upsert"].Upsert(pb.Upsert.Request(vector=vec("u0", 600)))
    gw["Upsert"].Upsert(pb.Upsert.Request(vector=vec("v4", 601)))
    gw["Upsert"].MultiUpsert(pb.Upsert.MultiRequest(requests=[pb.Upsert.Request(vector=vec("u1", 602))]))
    out = list(gw["Upsert"].StreamUpsert(iter([pb.Upsert.Request(vector=vec("u2", 603))])))
    assert out[0].location.uuid == "u2"
    stored.update(u0=unit(600), v4=unit(601), u1=unit(602), u2=unit(603))
    for i in ("u0", "v4", "u1", "u2"):
        assert ids(gw["Search"].SearchByID(pb.Search.IDRequest(id=i, config=cfg(1)))) == [i]
    assert ids(gw["Search"].LinearSearch(pb.Search.Request(vector=q, config=cfg(6)))) == exact_top(stored, q, 6)

    # Remove: then Exists is NOT_FOUND and the id is never found again.
    gw["Remove"].Remove(pb.Remove.Request(id=pb.Object.ID(id="v5")))
    gw["Remove"].MultiRemove(pb.Remove.MultiRequest(requests=[pb.Remove.Request(id=pb.Object.ID(id="v6"))]))
    out = list(
        gw["Remove"].StreamRemove(
            iter([pb.Remove.Request(id=pb.Object.ID(id="v7")), pb.Remove.Request(id=pb.Object.ID(id="v7"))])
        )
    )
    assert [r.WhichOneof("payload") for r in out] == ["location", "status"] and out[
        1
    ].status.code == Code.NOT_FOUND.value[0]
    assert code(gw["Remove"].Remove, pb.Remove.Request(id=pb.Object.ID(id="v5"))) == Code.NOT_FOUND
    for gone in ("v5", "v6", "v7"):
        del stored[gone]
        assert code(gw["Object"].Exists, pb.Object.ID(id=gone)) == Code.NOT_FOUND
        assert code(gw["Object"].GetObject, pb.Object.VectorRequest(id=pb.Object.ID(id=gone))) == Code.NOT_FOUND
        assert code(gw["Search"].SearchByID, pb.Search.IDRequest(id=gone, config=cfg(1))) == Code.NOT_FOUND
        for rpc in ("Search", "LinearSearch"):
            res = getattr(gw["Search"], rpc)(pb.Search.Request(vector=unit(int(gone[1:])), config=cfg(50)))
            assert gone not in ids(res), f"{gone} found by {rpc} after removal"
    listed = [m.vector.id for m in gw["Object"].StreamListObject(pb.Object.List.Request())]
    assert sorted(listed) == sorted(stored)

    # RemoveByTimestamp: every object whose timestamp meets all conditions, on every agent.
    for i, t in enumerate((1000, 1001, 1002, 1003)):
        gw["Insert"].Insert(pb.Insert.Request(vector=vec(f"t{i}", 700 + i), config=pb.Insert.Config(timestamp=t)))
    conds = [
        pb.Remove.Timestamp(timestamp=1000, operator=pb.Remove.Timestamp.GE),
        pb.Remove.Timestamp(timestamp=1003, operator=pb.Remove.Timestamp.LT),
    ]
    removed = gw["Remove"].RemoveByTimestamp(pb.Remove.TimestampRequest(timestamps=conds))
    assert sorted(l.uuid for l in removed.locations) == ["t0", "t1", "t2"]
    assert all(len(l.ips) == 2 for l in removed.locations), "removed from both replicas"
    assert code(gw["Remove"].RemoveByTimestamp, pb.Remove.TimestampRequest(timestamps=conds)) == Code.NOT_FOUND
    assert gw["Object"].Exists(pb.Object.ID(id="t3")).id == "t3"
    stored["t3"] = unit(703)

    # Index: counts, per-agent details, statistics and properties, aggregated over agents.
    n = len(stored)
    count = gw["Index"].IndexInfo(pb.Empty())
    assert count.stored + count.uncommitted == 2 * n
    detail = gw["Index"].IndexDetail(pb.Empty())
    assert set(detail.counts) == {a.addr for a in online.agents} and detail.replica == 2 and detail.live_agents == 3
    assert sum(c.stored + c.uncommitted for c in detail.counts.values()) == 2 * n
    stats = gw["Index"].IndexStatistics(pb.Empty())
    assert stats.valid and stats.number_of_objects == 2 * n
    sd = gw["Index"].IndexStatisticsDetail(pb.Empty())
    assert set(sd.details) == {a.addr for a in online.agents}
    assert sum(s.number_of_objects for s in sd.details.values()) == 2 * n
    props = gw["Index"].IndexProperty(pb.Empty())
    assert set(props.details) == {a.addr for a in online.agents}
    assert all(p.dimension == DIMS and p.distance_type == "Cosine" for p in props.details.values())

    # Limits hold on these services too.
    assert code(gw["Search"].Search, pb.Search.Request(vector=q, config=cfg(2**32 - 1))) == Code.INVALID_ARGUMENT
    assert code(gw["Insert"].Insert, pb.Insert.Request(vector=vec("x" * 513, 1))) == Code.INVALID_ARGUMENT
    assert (
        code(gw["Search"].SearchByID, pb.Search.IDRequest(id="v1", config=cfg(5, min_num=5000)))
        == Code.INVALID_ARGUMENT
    )

    # Flush empties every agent.
    gw["Flush"].Flush(pb.Flush.Request())
    count = gw["Index"].IndexInfo(pb.Empty())
    assert (count.stored, count.uncommitted) == (0, 0)
    assert list(gw["Object"].StreamListObject(pb.Object.List.Request())) == []
    assert code(gw["Object"].Exists, pb.Object.ID(id="v1")) == Code.NOT_FOUND
    assert ids(gw["Search"].LinearSearch(pb.Search.Request(vector=q, config=cfg(5)))) == []


def test_no_rpc_of_a_served_service_went_uncalled():
    for m in [
        "vald.v1.vald.insert_pb2",
        "vald.v1.vald.update_pb2",
        "vald.v1.vald.upsert_pb2",
        "vald.v1.vald.search_pb2",
        "vald.v1.vald.remove_pb2",
        "vald.v1.vald.object_pb2",
        "vald.v1.vald.index_pb2",
        "vald.v1.vald.flush_pb2",
    ]:
        importlib.import_module(m)
    pool = descriptor_pool.Default()
    every = {f"{s}/{m.name}" for s in SERVICES for m in pool.FindServiceByName(f"vald.v1.{s}").methods}
    assert len(every) == 3 + 4 + 3 + 12 + 4 + 5 + 5 + 1
    assert every - CALLED == set()
