"""kim's agent through vald-client-python 1.8.0's agent-side stubs: the vald.v1 write,
search, object, index and flush services and core.v1.Agent, as a Vald LB gateway would call
them."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from conftest import Procs
from vald.v1.agent.core import agent_pb2_grpc
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

DIMS = 4


@pytest.fixture()
def agent(tmp_path) -> Iterator[grpc.Channel]:
    procs = Procs(tmp_path)
    try:
        a = procs.start("agent", "agent", "--data", str(tmp_path / "data"), "--dimensions", str(DIMS), "--metric", "l2")
        ch = grpc.insecure_channel(a.addr)
        yield ch
        ch.close()
    finally:
        procs.stop_all()


def vec(id: str, *xs: float) -> pb.Object.Vector:
    return pb.Object.Vector(id=id, vector=list(xs))


def test_agent_services(agent: grpc.Channel):
    ins, upd, ups = (
        insert_pb2_grpc.InsertStub(agent),
        update_pb2_grpc.UpdateStub(agent),
        upsert_pb2_grpc.UpsertStub(agent),
    )
    srch, obj, rm = (
        search_pb2_grpc.SearchStub(agent),
        object_pb2_grpc.ObjectStub(agent),
        remove_pb2_grpc.RemoveStub(agent),
    )
    idx, core, flush = index_pb2_grpc.IndexStub(agent), agent_pb2_grpc.AgentStub(agent), flush_pb2_grpc.FlushStub(agent)

    loc = ins.Insert(pb.Insert.Request(vector=vec("a", 1, 0, 0, 0)))
    assert loc.uuid == "a"
    ins.MultiInsert(
        pb.Insert.MultiRequest(
            requests=[pb.Insert.Request(vector=vec("b", 0, 1, 0, 0)), pb.Insert.Request(vector=vec("c", 0, 0, 3, 4))]
        )
    )
    replies = list(
        ins.StreamInsert(
            iter([pb.Insert.Request(vector=vec("d", 0, 0, 0, 1)), pb.Insert.Request(vector=vec("a", 9, 9, 9, 9))])
        )
    )
    assert [r.WhichOneof("payload") for r in replies] == ["location", "status"]
    assert replies[1].status.code == grpc.StatusCode.ALREADY_EXISTS.value[0]

    res = srch.Search(pb.Search.Request(vector=[0, 0, 3, 4], config=pb.Search.Config(num=2, request_id="r1")))
    assert res.request_id == "r1" and [r.id for r in res.results] == ["c", "d"]
    assert res.results[0].distance == pytest.approx(0.0) and res.results[1].distance == pytest.approx(
        (9 + 9) ** 0.5
    )  # euclidean, not squared
    assert srch.SearchByID(pb.Search.IDRequest(id="b", config=pb.Search.Config(num=1))).results[0].id == "b"
    assert (
        srch.LinearSearch(pb.Search.Request(vector=[1, 0, 0, 0], config=pb.Search.Config(num=1))).results[0].id == "a"
    )

    upd.Update(pb.Update.Request(vector=vec("b", 0, 0, 3, 4)))
    ups.Upsert(pb.Upsert.Request(vector=vec("e", 5, 5, 5, 5)))
    assert list(obj.GetObject(pb.Object.VectorRequest(id=pb.Object.ID(id="b"))).vector) == [0, 0, 3, 4]
    assert obj.Exists(pb.Object.ID(id="e")).id == "e"
    rm.Remove(pb.Remove.Request(id=pb.Object.ID(id="e")))
    with pytest.raises(grpc.RpcError) as e:
        obj.Exists(pb.Object.ID(id="e"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    count = idx.IndexInfo(pb.Empty())
    assert (count.stored, count.uncommitted) == (0, 4)
    core.CreateIndex(pb.Control.CreateIndexRequest(pool_size=1))
    core.SaveIndex(pb.Empty())
    core.CreateAndSaveIndex(pb.Control.CreateIndexRequest())
    count = idx.IndexInfo(pb.Empty())
    assert (count.stored, count.uncommitted, count.indexing, count.saving) == (4, 0, False, False)
    listed = {m.vector.id: list(m.vector.vector) for m in obj.StreamListObject(pb.Object.List.Request())}
    assert listed == {"a": [1, 0, 0, 0], "b": [0, 0, 3, 4], "c": [0, 0, 3, 4], "d": [0, 0, 0, 1]}

    count = flush.Flush(pb.Flush.Request())
    assert (count.stored, count.uncommitted) == (0, 0)
    assert list(obj.StreamListObject(pb.Object.List.Request())) == []


def test_agent_search_forms_timestamps_and_index_figures(agent: grpc.Channel):
    ins, srch, obj = (
        insert_pb2_grpc.InsertStub(agent),
        search_pb2_grpc.SearchStub(agent),
        object_pb2_grpc.ObjectStub(agent),
    )
    upd, rm, idx = update_pb2_grpc.UpdateStub(agent), remove_pb2_grpc.RemoveStub(agent), index_pb2_grpc.IndexStub(agent)
    core = agent_pb2_grpc.AgentStub(agent)
    points = {"a": (1, 0, 0, 0), "b": (0, 1, 0, 0), "c": (0, 0, 3, 4), "d": (0, 0, 0, 1), "e": (2, 2, 0, 0)}
    for i, (k, v) in enumerate(points.items()):
        ins.Insert(pb.Insert.Request(vector=vec(k, *v), config=pb.Insert.Config(timestamp=100 + i)))
    core.CreateIndex(pb.Control.CreateIndexRequest())  # some searches go through the graph

    def ids(r):
        return [x.id for x in r.results]

    one = pb.Search.Config(num=1)
    assert ids(srch.LinearSearchByID(pb.Search.IDRequest(id="c", config=pb.Search.Config(num=2)))) == ["c", "d"]
    multi = srch.MultiSearchByID(
        pb.Search.MultiIDRequest(
            requests=[pb.Search.IDRequest(id="a", config=one), pb.Search.IDRequest(id="b", config=one)]
        )
    )
    assert [ids(r) for r in multi.responses] == [["a"], ["b"]]
    multi = srch.MultiLinearSearch(
        pb.Search.MultiRequest(requests=[pb.Search.Request(vector=[2, 2, 0, 0.1], config=one)])
    )
    assert [ids(r) for r in multi.responses] == [["e"]]
    multi = srch.MultiLinearSearchByID(pb.Search.MultiIDRequest(requests=[pb.Search.IDRequest(id="d", config=one)]))
    assert [ids(r) for r in multi.responses] == [["d"]]
    for rpc, reqs in [
        ("StreamSearchByID", [pb.Search.IDRequest(id="a", config=one), pb.Search.IDRequest(id="zz", config=one)]),
        ("StreamLinearSearchByID", [pb.Search.IDRequest(id="a", config=one), pb.Search.IDRequest(id="zz", config=one)]),
        (
            "StreamLinearSearch",
            [pb.Search.Request(vector=[1, 0, 0, 0], config=one), pb.Search.Request(vector=[1, 0], config=one)],
        ),
    ]:
        out = list(getattr(srch, rpc)(iter(reqs)))
        assert ids(out[0].response) == ["a"], rpc
        assert out[1].status.code in (grpc.StatusCode.NOT_FOUND.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0]), (
            rpc
        )

    # Timestamps: read, updated (only forward unless forced), and removal by timestamp.
    assert obj.GetTimestamp(pb.Object.TimestampRequest(id=pb.Object.ID(id="b"))).timestamp == 101
    upd.UpdateTimestamp(pb.Update.TimestampRequest(id="b", timestamp=150))
    assert obj.GetTimestamp(pb.Object.TimestampRequest(id=pb.Object.ID(id="b"))).timestamp == 150
    with pytest.raises(grpc.RpcError) as e:
        upd.UpdateTimestamp(pb.Update.TimestampRequest(id="b", timestamp=120))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    upd.UpdateTimestamp(pb.Update.TimestampRequest(id="b", timestamp=120, force=True))
    assert obj.GetTimestamp(pb.Object.TimestampRequest(id=pb.Object.ID(id="b"))).timestamp == 120
    assert list(obj.GetObject(pb.Object.VectorRequest(id=pb.Object.ID(id="b"))).vector) == [0, 1, 0, 0]
    with pytest.raises(grpc.RpcError) as e:
        upd.UpdateTimestamp(pb.Update.TimestampRequest(id="zz", timestamp=5))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    out = list(
        obj.StreamGetObject(
            iter([pb.Object.VectorRequest(id=pb.Object.ID(id="c")), pb.Object.VectorRequest(id=pb.Object.ID(id="zz"))])
        )
    )
    assert list(out[0].vector.vector) == [0, 0, 3, 4] and out[1].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    # a=100, b=120, c=102, d=103, e=104: remove 101 <= t < 104 → c, d.
    conds = [
        pb.Remove.Timestamp(timestamp=101, operator=pb.Remove.Timestamp.GE),
        pb.Remove.Timestamp(timestamp=104, operator=pb.Remove.Timestamp.LT),
    ]
    removed = rm.RemoveByTimestamp(pb.Remove.TimestampRequest(timestamps=conds))
    assert sorted(l.uuid for l in removed.locations) == ["c", "d"]
    with pytest.raises(grpc.RpcError) as e:
        rm.RemoveByTimestamp(pb.Remove.TimestampRequest(timestamps=conds))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert sorted(m.vector.id for m in obj.StreamListObject(pb.Object.List.Request())) == ["a", "b", "e"]

    # Index figures.
    core.CreateIndex(pb.Control.CreateIndexRequest())
    detail = idx.IndexDetail(pb.Empty())
    assert detail.replica == 1 and detail.live_agents == 1 and [c.stored for c in detail.counts.values()] == [3]
    stats = idx.IndexStatistics(pb.Empty())
    assert (
        stats.valid
        and stats.number_of_objects == 3
        and stats.number_of_indexed_objects == 3
        and stats.number_of_nodes == 3
    )
    assert stats.number_of_edges == 6 and stats.mean_number_of_edges_per_node == pytest.approx(2.0)
    assert list(idx.IndexStatisticsDetail(pb.Empty()).details.values())[0].number_of_objects == 3
    prop = list(idx.IndexProperty(pb.Empty()).details.values())[0]
    assert (prop.dimension, prop.distance_type, prop.index_type, prop.outgoing_edge) == (DIMS, "L2", "HNSW", 16)
