"""One peer engine's side of the benchmark, run as a subprocess by bench/run.py.

    python bench/peer.py build  --engine hnswlib --base base.npy --index out.bin ...
    python bench/peer.py search --engine hnswlib --index out.bin --queries q.npy --truth t.txt ...

`build` times index construction with 2 threads and saves the index; `search` runs in a fresh
process, times loading the saved index and the resident memory that adds, then sweeps the
engine's search knob with ONE search thread. Each prints one JSON object on stdout, shaped like
kim-bench's.

Engines and how queries reach them (the JSON's `search_call` says the same):
  hnswlib, faiss, faiss-sq8, usearch, usearch-i8
      one call with the whole query matrix (no per-query Python overhead); the library still
      searches each query on its own. Sweep: ef (efSearch / expansion_search).
  faiss-sq8      faiss IndexHNSWSQ, 8-bit scalar quantiser (QT_8bit), same M/efConstruction.
  scann          ScaNN (tree + asymmetric hashing + f32 reordering), `search` called once per
                 query from Python: what a user answering one request at a time pays.
  scann-batched  the same index, `search_batched` over all queries in one call (work is shared
                 across the batch), one thread.
  vsag           VSAG hgraph, sq8 codes with fp32 reordering; pyvsag only answers one query per
                 call, so it is called once per query from Python.
ScaNN's sweep walks leaves_to_search up a fixed ladder of fractions of its leaves; at each rung
pre_reorder_num_neighbors climbs a fixed list until the next value adds less than 0.0005 to
recall@10 (batched, untimed), and the last value that still helped is used. The other engines
sweep --efs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

ENGINES = ("hnswlib", "faiss", "faiss-sq8", "usearch", "usearch-i8", "scann", "scann-batched", "vsag")
# The module each engine imports (imported before the first RSS reading of `search`).
MODULES = {
    "hnswlib": "hnswlib",
    "faiss": "faiss",
    "faiss-sq8": "faiss",
    "usearch": "usearch.index",
    "usearch-i8": "usearch.index",
    "scann": "scann",
    "scann-batched": "scann",
    "vsag": "pyvsag",
}
SEARCH_CALL = {
    "hnswlib": "one call per query matrix; each query searched on its own",
    "faiss": "one call per query matrix; each query searched on its own",
    "faiss-sq8": "one call per query matrix; each query searched on its own",
    "usearch": "one call per query matrix; each query searched on its own",
    "usearch-i8": "one call per query matrix; each query searched on its own",
    "scann": "one Python call per query (searcher.search); Python call overhead included",
    "scann-batched": "one search_batched call per query matrix (work shared across queries), not parallel",
    "vsag": "one Python call per query (pyvsag has no batch search); JSON parameters parsed per call",
}
# ScaNN: leaves_to_search as fractions of the leaves, and the pre-reorder candidate counts tried
# at each of them.
SCANN_LEAF_FRACTIONS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.4, 0.55, 0.75, 1.0)
SCANN_REORDER = (20, 40, 80, 160, 320)
SCANN_RECALL_TOLERANCE = 0.0005
VSAG_NOTE = (
    "hgraph allocates rows in steps of a power of two (128 MiB / the largest per-row code, so "
    "65,536 rows for 512-d fp32); the saved file and the memory cover that capacity, not only the "
    "vectors, and pyvsag offers no way to change the step"
)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def simd_info(engine: str) -> dict:
    """Which instruction-set paths this process runs (numpy's BLAS, the engine's kernels)."""
    info: dict = {"numpy": np.__version__}
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats  # numpy ≥ 2

        info["numpy_cpu_features"] = (
            sorted(k for k, v in feats.items() if v and k.startswith("AVX512"))[:4]
            or sorted(k for k, v in feats.items() if v)[-4:]
        )
    except Exception:  # pragma: no cover - older numpy
        pass
    try:
        import threadpoolctl

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "prefix")}
            for p in threadpoolctl.threadpool_info()
            if p.get("user_api") == "blas"
        ]
    except Exception:
        pass
    info["env_openblas"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    from importlib.metadata import version

    if engine.startswith("faiss"):
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_compile_options"] = faiss.get_compile_options()
        info["faiss_module"] = sorted(m for m in sys.modules if m.startswith("faiss.swigfaiss"))
        try:  # dynamic-dispatch builds pick the level at run time
            info["faiss_simd_level"] = faiss.SIMDConfig.get_level_name()
        except Exception:
            pass
    elif engine.startswith("usearch"):
        import usearch

        info["usearch"] = usearch.__version__
    elif engine == "hnswlib":
        info["hnswlib"] = version("hnswlib")
        info["hnswlib_note"] = "built from source by pip (setup.py adds -march=native)"
    elif engine.startswith("scann"):
        info["scann"] = version("scann")
        info["tensorflow_loaded"] = "tensorflow" in sys.modules
    elif engine == "vsag":
        import pyvsag

        info["pyvsag"] = pyvsag.__version__
    return info


def load_f32(path: str) -> np.ndarray:
    x = np.load(path)
    return np.ascontiguousarray(x, dtype=np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Cosine as inner product: rows scaled to unit length (the data sets already are)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-30), dtype=np.float32)


def scann_leaves(n: int) -> int:
    """ScaNN's partition count: about sqrt(10 n), i.e. 1000 leaves at 100k vectors."""
    return max(1, min(n, round((10 * n) ** 0.5)))


def vsag_params(dims: int, m: int, ef_construction: int, threads: int) -> str:
    """hgraph with sq8 codes searched and fp32 codes for reordering ("precise"); max_degree
    2·M, the bottom-layer degree of the HNSW peers."""
    return json.dumps(
        {
            "dtype": "float32",
            "metric_type": "ip",
            "dim": dims,
            "index_param": {
                "base_quantization_type": "sq8",
                "use_reorder": True,
                "precise_quantization_type": "fp32",
                "max_degree": 2 * m,
                "ef_construction": ef_construction,
                "build_thread_count": threads,
            },
        }
    )


def path_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return os.path.getsize(path)


def build(a) -> dict:
    x = load_f32(a.base)
    n, d = x.shape
    extra: dict = {}
    t = time.perf_counter()
    cpu = time.process_time()
    if a.engine == "hnswlib":
        import hnswlib

        idx = hnswlib.Index(space="cosine", dim=d)
        idx.init_index(max_elements=n, ef_construction=a.ef_construction, M=a.m, random_seed=a.seed)
        idx.set_num_threads(a.threads)
        idx.add_items(x, np.arange(n), num_threads=a.threads)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        idx.save_index(a.index)
    elif a.engine in ("faiss", "faiss-sq8"):
        import faiss

        faiss.omp_set_num_threads(a.threads)
        faiss.normalize_L2(x)  # cosine as inner product on unit vectors (the data already is)
        t = time.perf_counter()
        cpu = time.process_time()
        if a.engine == "faiss":
            idx = faiss.IndexHNSWFlat(d, a.m, faiss.METRIC_INNER_PRODUCT)
        else:
            idx = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, a.m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = a.ef_construction
        idx.train(x)  # the scalar quantiser's per-dimension ranges (a no-op for IndexHNSWFlat)
        idx.add(x)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        faiss.write_index(idx, a.index)
    elif a.engine.startswith("scann"):
        import scann

        x = unit_rows(x)
        leaves = a.leaves or scann_leaves(n)
        t = time.perf_counter()
        cpu = time.process_time()
        searcher = (
            scann.scann_ops_pybind.builder(x, a.k, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 20), training_sample_size=min(n, 100_000))
            .score_ah(2, anisotropic_quantization_threshold=a.anisotropic_threshold)
            .reorder(a.reorder)
            .set_n_training_threads(a.threads)
            .build()
        )
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        shutil.rmtree(a.index, ignore_errors=True)
        os.makedirs(a.index)
        searcher.serialize(a.index)
        extra = {
            "leaves": leaves,
            "dims_per_block": 2,
            "anisotropic_threshold": a.anisotropic_threshold,
            "reorder": "float32",
            "training_sample_size": min(n, 100_000),
        }
    elif a.engine == "vsag":
        import pyvsag

        pyvsag.set_logger_off()
        x = unit_rows(x)
        params = vsag_params(d, a.m, a.ef_construction, a.threads)
        t = time.perf_counter()
        cpu = time.process_time()
        idx = pyvsag.Index("hgraph", params)
        idx.build(vectors=x, ids=np.arange(n, dtype=np.int64), num_elements=n, dim=d)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        idx.save(a.index)
        extra = {"params": json.loads(params)}
    else:
        from usearch.index import Index

        dtype = "i8" if a.engine == "usearch-i8" else "f32"
        idx = Index(ndim=d, metric="cos", dtype=dtype, connectivity=a.m, expansion_add=a.ef_construction)
        idx.add(np.arange(n, dtype=np.uint64), x, threads=a.threads)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        idx.save(a.index)
    return {
        "engine": a.engine,
        "vectors": n,
        "dimensions": d,
        "build_seconds": secs,
        "build_threads": a.threads,
        "build_cpu_seconds": cpu,
        "m": a.m,
        "ef_construction": a.ef_construction,
        "index_bytes": path_bytes(a.index),
        **({"config": extra} if extra else {}),
    }


def take_ids(results, k: int) -> np.ndarray:
    """One query's ids from a (ids, distances) pair, padded with -1 to k."""
    a, b = results
    ids = np.asarray(a if np.asarray(a).dtype.kind in "iu" else b).reshape(-1)[:k].astype(np.int64)
    if len(ids) < k:
        ids = np.concatenate([ids, np.full(k - len(ids), -1, dtype=np.int64)])
    return ids


class Searcher:
    """Loads a saved index and answers queries with one thread at one sweep point."""

    def __init__(self, engine: str, path: str, dims: int, a=None):
        self.engine = engine
        self.point: dict = {}
        if engine == "hnswlib":
            import hnswlib

            self.idx = hnswlib.Index(space="cosine", dim=dims)
            self.idx.load_index(path)
            self.idx.set_num_threads(1)
        elif engine.startswith("faiss"):
            import faiss

            faiss.omp_set_num_threads(1)
            self.idx = faiss.read_index(path)
        elif engine.startswith("scann"):
            import scann

            self.idx = scann.scann_ops_pybind.load_searcher(path)
            self.idx.set_num_threads(1)
        elif engine == "vsag":
            import pyvsag

            pyvsag.set_logger_off()
            # The index must be constructed with the parameters it was built with.
            self.idx = pyvsag.Index("hgraph", vsag_params(dims, a.m, a.ef_construction, a.threads))
            self.idx.load(path)
        else:
            from usearch.index import Index

            self.idx = Index.restore(path, view=False)

    def __len__(self) -> int:
        if self.engine == "hnswlib":
            return self.idx.get_current_count()
        if self.engine.startswith("faiss"):
            return self.idx.ntotal
        if self.engine.startswith("scann"):
            return self.idx.size()
        if self.engine == "vsag":
            return self.vectors
        return len(self.idx)

    def set_point(self, point: dict) -> None:
        self.point = point
        ef = point.get("ef")
        if self.engine == "hnswlib":
            self.idx.set_ef(ef)
        elif self.engine.startswith("faiss"):
            self.idx.hnsw.efSearch = ef
        elif self.engine == "vsag":
            self.vsag_params = json.dumps({"hgraph": {"ef_search": ef}})
        elif self.engine.startswith("usearch"):
            self.idx.expansion_search = ef

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        if self.engine == "hnswlib":
            labels, _ = self.idx.knn_query(q, k=k, num_threads=1)
            return labels
        if self.engine.startswith("faiss"):
            _, labels = self.idx.search(q, k)
            return labels
        if self.engine == "scann-batched":
            labels, _ = self.idx.search_batched(q, k, self.point["reorder"], self.point["ef"])
            return np.asarray(labels)
        if self.engine == "scann":
            out = np.empty((len(q), k), dtype=np.int64)
            find, reorder, leaves = self.idx.search, self.point["reorder"], self.point["ef"]
            for i, v in enumerate(q):
                out[i] = take_ids(find(v, k, reorder, leaves), k)
            return out
        if self.engine == "vsag":
            out = np.empty((len(q), k), dtype=np.int64)
            find, params = self.idx.knn_search, self.vsag_params
            for i, v in enumerate(q):
                out[i] = take_ids(find(v, k, params), k)
            return out
        return self.idx.search(q, k, threads=1).keys

    def hardware(self) -> str | None:
        if self.engine.startswith("usearch"):
            return str(getattr(self.idx, "hardware_acceleration", None))
        return None


def read_truth(path: str) -> list[list[int]]:
    with open(path) as f:
        return [[int(x) for x in line.split()] for line in f]


def recalls(results: np.ndarray, truth: list[list[int]], k: int) -> tuple[float, float]:
    r1 = rk = 0.0
    for got, want in zip(results, truth):
        want = want[:k]
        got = [int(g) for g in got[:k]]
        r1 += float(bool(got) and got[0] == want[0])
        rk += len(set(got) & set(want)) / len(want)
    n = max(1, min(len(results), len(truth)))
    return r1 / n, rk / n


def scann_points(s: Searcher, q: np.ndarray, truth: list[list[int]], k: int, leaves: int) -> tuple[list, list]:
    """The ScaNN sweep (see the module docstring): rungs of leaves_to_search, each with the
    smallest pre-reorder count after which the next one in SCANN_REORDER adds less than
    SCANN_RECALL_TOLERANCE to recall@10. Recall here comes from untimed batched searches;
    returns the points and the grid they were chosen from."""
    rungs = sorted({max(1, min(leaves, round(f * leaves))) for f in SCANN_LEAF_FRACTIONS})
    grid, points = [], []
    for ls in rungs:
        chosen, prev = None, None
        for r in SCANN_REORDER:
            r = max(r, k)
            labels, _ = s.idx.search_batched(q, k, r, ls)
            rec = recalls(np.asarray(labels), truth, k)[1]
            grid.append({"leaves_to_search": ls, "pre_reorder_num_neighbors": r, "recall10": rec})
            if prev is not None and rec - prev[1] < SCANN_RECALL_TOLERANCE:
                chosen = prev[0]
                break
            prev = (r, rec)
        points.append({"ef": ls, "reorder": chosen if chosen is not None else prev[0]})
    return points, grid


def search(a) -> dict:
    q = load_f32(a.queries)
    truth = read_truth(a.truth)
    assert len(truth) == len(q), f"{len(truth)} truth lines for {len(q)} queries"
    # Import the engine before the first RSS reading so only the index itself is counted.
    __import__(MODULES[a.engine])
    rss0 = rss_bytes()
    t = time.perf_counter()
    s = Searcher(a.engine, a.index, q.shape[1], a)
    load = time.perf_counter() - t
    rss1 = rss_bytes()
    if a.engine == "vsag":
        if a.vectors <= 0:
            sys.exit("vsag: pass --vectors (pyvsag does not report how many vectors an index holds)")
        s.vectors = a.vectors
    n = len(s)
    extra: dict = {}
    if a.engine.startswith("scann"):
        config = str(s.idx.config())
        leaves = next(
            (int(line.split(":")[1]) for line in config.splitlines() if line.strip().startswith("num_children:")),
            scann_leaves(n),
        )
        points, grid = scann_points(s, q, truth, a.k, leaves)
        extra = {"sweep_knob": "leaves_to_search (ef column) + pre_reorder_num_neighbors", "leaves": leaves}
        extra["scann_grid"] = grid
    else:
        points = [{"ef": ef} for ef in a.efs]
        extra = {"sweep_knob": "ef"}
    sweep = []
    for point in points:
        s.set_point(point)
        res = s.search(q, a.k)  # untimed: recall, and warms caches
        r1, rk = recalls(res, truth, a.k)
        times, cpu, proc = [], [], []
        start = time.perf_counter()
        while len(times) < max(1, a.max_passes) and (not times or time.perf_counter() - start < a.min_seconds):
            p0, c0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
            s.search(q, a.k)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            proc.append(time.process_time() - p0)
        times.sort()
        sweep.append(
            {
                **point,
                "recall1": r1,
                "recall10": rk,
                "qps": len(q) / times[0],
                "qps_median_pass": len(q) / times[len(times) // 2],
                "cpu_qps": len(q) / max(min(cpu), 1e-9),
                # Queries per CPU-second of the whole process: far below cpu_qps would mean the
                # library searched on threads of its own.
                "process_cpu_qps": len(q) / max(min(proc), 1e-9),
                "passes": len(times),
            }
        )
    return {
        "engine": a.engine,
        "vectors": n,
        "queries": len(q),
        "k": a.k,
        "load_seconds": load,
        "bytes_per_vector": path_bytes(a.index) / max(1, n),
        "rss_delta_bytes": rss1 - rss0,
        "rss_bytes_per_vector": (rss1 - rss0) / max(1, n),
        "search_threads": 1,
        "search_call": SEARCH_CALL[a.engine],
        "hardware": s.hardware(),
        "simd": simd_info(a.engine),
        **extra,
        **({"note": VSAG_NOTE} if a.engine == "vsag" else {}),
        "sweep": sweep,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--engine", choices=ENGINES, required=True)
    b.add_argument("--base", required=True)
    b.add_argument("--index", required=True, help="file (ScaNN: a directory)")
    b.add_argument("--m", type=int, default=16)
    b.add_argument("--ef-construction", type=int, default=200)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--seed", type=int, default=100)
    b.add_argument("--k", type=int, default=10, help="ScaNN: the searcher's default neighbour count")
    b.add_argument("--leaves", type=int, default=0, help="ScaNN partitions (0 = about sqrt(10 n))")
    b.add_argument("--anisotropic-threshold", type=float, default=0.2, help="ScaNN anisotropic quantisation")
    b.add_argument("--reorder", type=int, default=100, help="ScaNN default pre-reorder count (the sweep sets it)")
    s = sub.add_parser("search")
    s.add_argument("--engine", choices=ENGINES, required=True)
    s.add_argument("--index", required=True)
    s.add_argument("--queries", required=True)
    s.add_argument("--truth", required=True)
    s.add_argument("--k", type=int, default=10)
    s.add_argument(
        "--efs",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512],
    )
    s.add_argument("--min-seconds", type=float, default=1.0)
    s.add_argument("--max-passes", type=int, default=50)
    # VSAG loads only into an index constructed with its build parameters, and reports no size.
    s.add_argument("--m", type=int, default=16, help="vsag: the build's M")
    s.add_argument("--ef-construction", type=int, default=200, help="vsag: the build's efConstruction")
    s.add_argument("--threads", type=int, default=2, help="vsag: the build's thread count")
    s.add_argument("--vectors", type=int, default=0, help="vsag: how many vectors the index holds")
    a = p.parse_args()
    out = build(a) if a.cmd == "build" else search(a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
