"""Request limits through vald-client-python 1.8.0: a search for 2^32 - 1 results, through the
gateway and straight to every agent, is INVALID_ARGUMENT and leaves every process running;
request-named targets outside the gateway's allowlist are refused."""

from __future__ import annotations

import grpc
import pytest
from conftest import DIMS, Online
from vald.v1.payload import payload_pb2 as pb
from vald.v1.vald import filter_pb2_grpc, index_pb2_grpc, search_pb2_grpc

Code = grpc.StatusCode
HUGE = 2**32 - 1


def test_num_2_pow_32_minus_1_is_invalid_everywhere_and_nothing_dies(online: Online):
    gw = filter_pb2_grpc.FilterStub(online.channel(online.gateway))
    gw.InsertObject(pb.Insert.ObjectRequest(object=pb.Object.Blob(id="lim-1", object=b"limits are checked first")))
    with pytest.raises(grpc.RpcError) as e:
        gw.SearchObject(pb.Search.ObjectRequest(object=b"limits are checked first", config=pb.Search.Config(num=HUGE)))
    assert e.value.code() == Code.INVALID_ARGUMENT
    for agent in online.agents:
        with pytest.raises(grpc.RpcError) as e:
            search_pb2_grpc.SearchStub(online.channel(agent)).Search(
                pb.Search.Request(vector=[0.5] * DIMS, config=pb.Search.Config(num=HUGE))
            )
        assert e.value.code() == Code.INVALID_ARGUMENT
    for agent in online.agents:
        assert agent.popen.poll() is None, agent.tail()
        index_pb2_grpc.IndexStub(online.channel(agent)).IndexInfo(pb.Empty())
    res = gw.SearchObject(
        pb.Search.ObjectRequest(object=b"limits are checked first", config=pb.Search.Config(num=16384))
    )
    assert res.results[0].id == "lim-1"


def test_min_num_not_reached_is_not_found(online: Online):
    gw = filter_pb2_grpc.FilterStub(online.channel(online.gateway))
    with pytest.raises(grpc.RpcError) as e:
        gw.SearchObject(pb.Search.ObjectRequest(object=b"anything", config=pb.Search.Config(num=16384, min_num=16384)))
    assert e.value.code() == Code.NOT_FOUND


def test_targets_outside_the_allowlist_are_refused(online: Online):
    bare = filter_pb2_grpc.FilterStub(online.channel(online.bare_gateway))
    elsewhere = pb.Filter.Target(host="127.0.0.1", port=online.gateway.port)
    with pytest.raises(grpc.RpcError) as e:
        bare.SearchObject(
            pb.Search.ObjectRequest(object=b"relay", config=pb.Search.Config(num=1), vectorizer=elsewhere)
        )
    assert e.value.code() == Code.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        bare.SearchObject(
            pb.Search.ObjectRequest(object=b"relay", vectorizer=pb.Filter.Target(host="127.0.0.1", port=70000))
        )
    assert e.value.code() == Code.INVALID_ARGUMENT
