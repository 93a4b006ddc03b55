"""All twelve vald.v1.Filter RPCs of kim's gateway through vald-client-python 1.8.0
(3 agents, replicas 2, the kim vectorizer), checking results and Vald's error semantics."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from conftest import Online
from vald.v1.filter.egress import egress_filter_pb2_grpc
from vald.v1.payload import payload_pb2 as pb
from vald.v1.vald import filter_pb2_grpc

Code = grpc.StatusCode


def stub(online: Online, gw=None) -> filter_pb2_grpc.FilterStub:
    return filter_pb2_grpc.FilterStub(online.channel(gw or online.gateway))


def blob(id: str, text: str) -> pb.Object.Blob:
    return pb.Object.Blob(id=id, object=text.encode())


def insert_req(id: str, text: str, **cfg) -> pb.Insert.ObjectRequest:
    return pb.Insert.ObjectRequest(object=blob(id, text), config=pb.Insert.Config(**cfg))


def update_req(id: str, text: str) -> pb.Update.ObjectRequest:
    return pb.Update.ObjectRequest(object=blob(id, text), config=pb.Update.Config())


def upsert_req(id: str, text: str) -> pb.Upsert.ObjectRequest:
    return pb.Upsert.ObjectRequest(object=blob(id, text), config=pb.Upsert.Config())


def search_req(
    text: str, num: int = 5, timeout_ns: int = 0, request_id: str = "", target=None
) -> pb.Search.ObjectRequest:
    cfg = pb.Search.Config(num=num, timeout=timeout_ns, request_id=request_id)
    return pb.Search.ObjectRequest(object=text.encode(), config=cfg, vectorizer=target)


def top(online: Online, text: str, num: int = 5) -> list[pb.Object.Distance]:
    return list(stub(online).SearchObject(search_req(text, num)).results)


def code_of(e: pytest.ExceptionInfo) -> grpc.StatusCode:
    return e.value.code()


def test_insert_then_search_finds_the_same_bytes_at_distance_zero(online: Online):
    loc = stub(online).InsertObject(insert_req("doc-1", "the cat sat on the warm mat"))
    assert loc.uuid == "doc-1" and len(loc.ips) == 2  # two replicas
    stub(online).InsertObject(insert_req("doc-2", "stock markets fell sharply on monday"))
    res = stub(online).SearchObject(search_req("the cat sat on the warm mat", request_id="req-42"))
    assert res.request_id == "req-42"
    assert res.results[0].id == "doc-1"
    assert res.results[0].distance == pytest.approx(0.0, abs=1e-5)
    assert [r.distance for r in res.results] == sorted(r.distance for r in res.results)


def test_insert_of_an_existing_id_is_already_exists(online: Online):
    stub(online).InsertObject(insert_req("dup-1", "first version"))
    with pytest.raises(grpc.RpcError) as e:
        stub(online).InsertObject(insert_req("dup-1", "second version"))
    assert code_of(e) == Code.ALREADY_EXISTS
    # skip_strict_exist_check writes anyway.
    stub(online).InsertObject(insert_req("dup-1", "second version", skip_strict_exist_check=True))
    assert top(online, "second version")[0].id == "dup-1"


def test_update_changes_what_search_returns(online: Online):
    stub(online).InsertObject(insert_req("upd-1", "apples and oranges in a basket"))
    assert top(online, "apples and oranges in a basket")[0].id == "upd-1"
    stub(online).UpdateObject(update_req("upd-1", "submarine sonar under the arctic ice"))
    hit = top(online, "submarine sonar under the arctic ice")[0]
    assert (hit.id, round(hit.distance, 5)) == ("upd-1", 0.0)
    old = top(online, "apples and oranges in a basket", 20)
    assert all(not (r.id == "upd-1" and r.distance < 1e-5) for r in old)


def test_update_of_a_missing_id_is_not_found(online: Online):
    with pytest.raises(grpc.RpcError) as e:
        stub(online).UpdateObject(update_req("never-inserted", "anything"))
    assert code_of(e) == Code.NOT_FOUND


def test_upsert_inserts_then_updates(online: Online):
    stub(online).UpsertObject(upsert_req("ups-1", "violin concerto in d major"))
    assert top(online, "violin concerto in d major")[0].id == "ups-1"
    stub(online).UpsertObject(upsert_req("ups-1", "volcanic eruption ash cloud"))
    hit = top(online, "volcanic eruption ash cloud")[0]
    assert hit.id == "ups-1" and hit.distance < 1e-5


def test_multi_insert_update_upsert(online: Online):
    texts = {
        f"multi-{i}": f"multi item {i} speaks of {w}"
        for i, w in enumerate(["rivers", "deserts", "forests", "glaciers"])
    }
    locs = stub(online).MultiInsertObject(
        pb.Insert.MultiObjectRequest(requests=[insert_req(k, v) for k, v in texts.items()])
    )
    assert sorted(l.uuid for l in locs.locations) == sorted(texts)
    for k, v in texts.items():
        assert top(online, v)[0].id == k
    # A duplicate inside a Multi call: reported per item, the others applied.
    with pytest.raises(grpc.RpcError) as e:
        stub(online).MultiInsertObject(
            pb.Insert.MultiObjectRequest(
                requests=[insert_req("multi-new", "a fresh one"), insert_req("multi-0", "dup")]
            )
        )
    assert code_of(e) == Code.ALREADY_EXISTS
    assert "1 of 2 items failed" in e.value.details() and "#1" in e.value.details()
    assert top(online, "a fresh one")[0].id == "multi-new"

    locs = stub(online).MultiUpdateObject(
        pb.Update.MultiObjectRequest(requests=[update_req("multi-1", "multi item updated to canyons")])
    )
    assert [l.uuid for l in locs.locations] == ["multi-1"]
    assert top(online, "multi item updated to canyons")[0].id == "multi-1"
    with pytest.raises(grpc.RpcError) as e:
        stub(online).MultiUpdateObject(
            pb.Update.MultiObjectRequest(requests=[update_req("multi-2", "ok"), update_req("multi-missing", "no")])
        )
    assert code_of(e) == Code.NOT_FOUND

    locs = stub(online).MultiUpsertObject(
        pb.Upsert.MultiObjectRequest(
            requests=[
                upsert_req("multi-3", "glaciers melted into lakes"),
                upsert_req("multi-9", "brand new via upsert"),
            ]
        )
    )
    assert sorted(l.uuid for l in locs.locations) == ["multi-3", "multi-9"]
    assert top(online, "brand new via upsert")[0].id == "multi-9"


def test_stream_insert_reports_a_bad_item_in_band_and_continues(online: Online):
    reqs = [
        insert_req("str-1", "stream one about bicycles"),
        insert_req("", "no id at all"),
        insert_req("str-2", "stream two about tractors"),
        insert_req("str-1", "duplicate of one"),
        insert_req("str-3", "stream three about sailboats"),
    ]
    replies = list(stub(online).StreamInsertObject(iter(reqs)))
    assert len(replies) == 5
    kinds = [r.WhichOneof("payload") for r in replies]
    assert kinds == ["location", "status", "location", "status", "location"]
    assert replies[1].status.code == Code.INVALID_ARGUMENT.value[0]
    assert replies[3].status.code == Code.ALREADY_EXISTS.value[0]
    for id, text in [
        ("str-1", "stream one about bicycles"),
        ("str-2", "stream two about tractors"),
        ("str-3", "stream three about sailboats"),
    ]:
        assert top(online, text)[0].id == id


def test_stream_update_and_upsert(online: Online):
    stub(online).InsertObject(insert_req("su-1", "before the stream update"))
    replies = list(
        stub(online).StreamUpdateObject(
            iter([update_req("su-1", "after the stream update"), update_req("su-missing", "x")])
        )
    )
    assert [r.WhichOneof("payload") for r in replies] == ["location", "status"]
    assert replies[1].status.code == Code.NOT_FOUND.value[0]
    assert top(online, "after the stream update")[0].id == "su-1"
    replies = list(
        stub(online).StreamUpsertObject(
            iter([upsert_req("su-2", "streamed upsert new"), upsert_req("su-1", "streamed upsert over existing")])
        )
    )
    assert [r.WhichOneof("payload") for r in replies] == ["location", "location"]
    assert top(online, "streamed upsert new")[0].id == "su-2"
    assert top(online, "streamed upsert over existing")[0].id == "su-1"


def test_multi_and_stream_search(online: Online):
    stub(online).InsertObject(insert_req("ms-1", "quantum entanglement of photons"))
    stub(online).InsertObject(insert_req("ms-2", "baking sourdough bread at home"))
    res = stub(online).MultiSearchObject(
        pb.Search.MultiObjectRequest(
            requests=[
                search_req("quantum entanglement of photons", request_id="a"),
                search_req("baking sourdough bread at home", request_id="b"),
            ]
        )
    )
    assert [(r.request_id, r.results[0].id) for r in res.responses] == [("a", "ms-1"), ("b", "ms-2")]
    replies = list(
        stub(online).StreamSearchObject(
            iter(
                [
                    search_req("baking sourdough bread at home", request_id="s1"),
                    search_req("quantum entanglement of photons", timeout_ns=1, request_id="s2"),
                    search_req("quantum entanglement of photons", request_id="s3"),
                ]
            )
        )
    )
    assert [r.WhichOneof("payload") for r in replies] == ["response", "status", "response"]
    assert replies[0].response.results[0].id == "ms-2"
    assert replies[1].status.code == Code.DEADLINE_EXCEEDED.value[0]
    assert replies[2].response.request_id == "s3" and replies[2].response.results[0].id == "ms-1"


def test_replica_duplicates_never_appear_twice(online: Online):
    res = stub(online).SearchObject(search_req("stream multi item about the", num=100))
    ids = [r.id for r in res.results]
    assert len(ids) > 10
    assert len(ids) == len(set(ids))


def test_one_nanosecond_timeout_is_deadline_exceeded(online: Online):
    with pytest.raises(grpc.RpcError) as e:
        stub(online).SearchObject(search_req("the cat sat on the warm mat", timeout_ns=1))
    assert code_of(e) == Code.DEADLINE_EXCEEDED


def test_missing_vectorizer_is_invalid_argument(online: Online):
    bare = stub(online, online.bare_gateway)
    with pytest.raises(grpc.RpcError) as e:
        bare.SearchObject(search_req("no vectorizer anywhere"))
    assert code_of(e) == Code.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        bare.InsertObject(
            pb.Insert.ObjectRequest(object=blob("nv-1", "x"), vectorizer=pb.Filter.Target(host="127.0.0.1", port=0))
        )
    assert code_of(e) == Code.INVALID_ARGUMENT
    # Naming the vectorizer in the request works on a gateway without a default.
    host, port = online.vectorizer.addr.split(":")
    target = pb.Filter.Target(host=host, port=int(port))
    bare.InsertObject(pb.Insert.ObjectRequest(object=blob("nv-2", "named vectorizer target"), vectorizer=target))
    assert bare.SearchObject(search_req("named vectorizer target", target=target)).results[0].id == "nv-2"


def test_vectorizer_down_is_unavailable(online: Online):
    dead = online.procs.start("vectorizer-2", "vectorize", "--dimensions", "256")
    host, port = dead.addr.split(":")
    target = pb.Filter.Target(host=host, port=int(port))
    stub(online).SearchObject(search_req("reachable for now", target=target))
    dead.stop()
    with pytest.raises(grpc.RpcError) as e:
        stub(online).SearchObject(search_req("now it is gone", target=target))
    assert code_of(e) == Code.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as e:
        stub(online).InsertObject(pb.Insert.ObjectRequest(object=blob("vd-1", "x"), vectorizer=target))
    assert code_of(e) == Code.UNAVAILABLE


def test_vectorizer_failure_is_internal(online: Online):
    # The kim vectorizer refuses an empty object; the gateway reports that as INTERNAL.
    with pytest.raises(grpc.RpcError) as e:
        stub(online).SearchObject(pb.Search.ObjectRequest(object=b"", config=pb.Search.Config(num=1)))
    assert code_of(e) == Code.INTERNAL


class ShiftDistance(egress_filter_pb2_grpc.FilterServicer):
    """An egress filter (a real gRPC service) that adds 10 to every distance and tags ids."""

    def __init__(self):
        self.calls = 0

    def FilterDistance(self, request, context):
        self.calls += 1
        return pb.Object.Distance(id=request.id + "+egress", distance=request.distance + 10.0)


def test_egress_and_ingress_filters_from_the_request(online: Online):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    shift = ShiftDistance()
    egress_filter_pb2_grpc.add_FilterServicer_to_server(shift, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        # Ingress: the kim vectorizer's FilterVector (L2 normalisation) as the request's filter.
        host, vport = online.vectorizer.addr.split(":")
        ingress = pb.Filter.Config(targets=[pb.Filter.Target(host=host, port=int(vport))])
        stub(online).InsertObject(
            pb.Insert.ObjectRequest(
                object=blob("flt-1", "filters on both sides"), config=pb.Insert.Config(filters=ingress)
            )
        )
        egress = pb.Filter.Config(targets=[pb.Filter.Target(host="127.0.0.1", port=port)])
        cfg = pb.Search.Config(num=3, egress_filters=egress)
        res = stub(online).SearchObject(pb.Search.ObjectRequest(object=b"filters on both sides", config=cfg))
        assert res.results[0].id == "flt-1+egress"
        assert res.results[0].distance == pytest.approx(10.0, abs=1e-4)
        assert all(r.distance >= 10.0 for r in res.results)
        assert shift.calls == len(res.results) == 3
    finally:
        server.stop(grace=1)
