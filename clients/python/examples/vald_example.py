"""Insert and search text objects through kim's Vald-compatible Filter gateway with the
unmodified vald-client-python package.

usage: python vald_example.py GATEWAY_HOST:PORT
"""

import sys

import grpc
from vald.v1.payload import payload_pb2 as pb
from vald.v1.vald import filter_pb2_grpc

SENTENCES = {
    "s1": "the quick brown fox jumps over the lazy dog",
    "s2": "stock markets fell sharply on monday morning",
    "s3": "a violin concerto performed by the city orchestra",
    "s4": "heavy rain and strong winds are expected tomorrow",
}


def main(addr: str) -> None:
    stub = filter_pb2_grpc.FilterStub(grpc.insecure_channel(addr))
    reqs = [
        pb.Insert.ObjectRequest(object=pb.Object.Blob(id=k, object=v.encode()), config=pb.Insert.Config())
        for k, v in SENTENCES.items()
    ]
    locs = stub.MultiInsertObject(pb.Insert.MultiObjectRequest(requests=reqs))
    print(f"inserted {len(locs.locations)} objects, each on {len(locs.locations[0].ips)} agents")
    for query in ["a quick brown fox jumped over a lazy dog", "rain and wind tomorrow"]:
        res = stub.SearchObject(
            pb.Search.ObjectRequest(object=query.encode(), config=pb.Search.Config(num=2, request_id="demo"))
        )
        print(
            f"search {query!r}: "
            + ", ".join(f"{r.id} ({SENTENCES[r.id]!r}) distance {r.distance:.3f}" for r in res.results)
        )
    try:
        stub.InsertObject(reqs[0])
    except grpc.RpcError as e:
        print("inserting s1 again ->", e.code().name)


if __name__ == "__main__":
    main(sys.argv[1])
