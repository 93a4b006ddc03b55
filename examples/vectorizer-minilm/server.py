"""A Vald ingress filter (filter.ingress.v1.Filter) that embeds text with all-MiniLM-L6-v2.

    python server.py --listen 127.0.0.1:8090

GenVector: the object's bytes are read as UTF-8 text and embedded (384 dimensions, unit
length, so use agents with `--dimensions 384 --metric cosine`). FilterVector: L2-normalises.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from concurrent import futures

import grpc
import numpy as np
from minilm import MiniLM
from vald.v1.filter.ingress import ingress_filter_pb2_grpc
from vald.v1.payload import payload_pb2 as pb

log = logging.getLogger("vectorizer-minilm")


class Vectorizer(ingress_filter_pb2_grpc.FilterServicer):
    def __init__(self, model: MiniLM):
        self.model = model
        # numpy releases the GIL in matmuls, but one forward pass at a time keeps memory flat.
        self.lock = threading.Lock()

    def GenVector(self, request: pb.Object.Blob, context: grpc.ServicerContext) -> pb.Object.Vector:
        text = request.object.decode("utf-8", errors="replace").strip()
        if not text:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "object is empty")
        t = time.perf_counter()
        with self.lock:
            v = self.model.encode([text])[0]
        log.debug("GenVector id=%s chars=%d %.1f ms", request.id, len(text), (time.perf_counter() - t) * 1e3)
        return pb.Object.Vector(id=request.id, vector=v.tolist())

    def FilterVector(self, request: pb.Object.Vector, context: grpc.ServicerContext) -> pb.Object.Vector:
        v = np.asarray(request.vector, dtype=np.float32)
        n = float(np.linalg.norm(v))
        return pb.Object.Vector(id=request.id, vector=(v / n if n > 0 else v).tolist(), timestamp=request.timestamp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="0.0.0.0:8090", help="gRPC address (HOST:PORT)")
    ap.add_argument("--workers", type=int, default=4, help="gRPC worker threads")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    t = time.perf_counter()
    model = MiniLM()
    log.info("model loaded in %.2f s (%d dimensions)", time.perf_counter() - t, model.dims)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    ingress_filter_pb2_grpc.add_FilterServicer_to_server(Vectorizer(model), server)
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"cannot listen on {args.listen}")
    server.start()
    log.info("serving filter.ingress.v1.Filter on %s", args.listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
