"""One peer engine's side of the benchmark, run as a subprocess by bench/run.py.

    python bench/peer.py build  --engine hnswlib --base base.npy --index out.bin ...
    python bench/peer.py search --engine hnswlib --index out.bin --queries q.npy --truth t.txt ...

`build` times index construction with 2 threads and saves the index; `search` runs in a fresh
process, times loading the saved index and the resident memory that adds, then sweeps ef with
ONE search thread (batched calls, so no per-query Python overhead is charged to the peer).
Each prints one JSON object on stdout, shaped like kim-bench's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ENGINES = ("hnswlib", "faiss", "usearch", "usearch-i8")


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
    if engine == "faiss":
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
        from importlib.metadata import version

        info["hnswlib"] = version("hnswlib")
        info["hnswlib_note"] = "built from source by pip (setup.py adds -march=native)"
    return info


def load_f32(path: str) -> np.ndarray:
    x = np.load(path)
    return np.ascontiguousarray(x, dtype=np.float32)


def build(a) -> dict:
    x = load_f32(a.base)
    n, d = x.shape
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
    elif a.engine == "faiss":
        import faiss

        faiss.omp_set_num_threads(a.threads)
        faiss.normalize_L2(x)  # cosine as inner product on unit vectors (the data already is)
        t = time.perf_counter()
        cpu = time.process_time()
        idx = faiss.IndexHNSWFlat(d, a.m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = a.ef_construction
        idx.add(x)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        faiss.write_index(idx, a.index)
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
        "index_bytes": os.path.getsize(a.index),
    }


class Searcher:
    """Loads a saved index and answers batched queries with one thread."""

    def __init__(self, engine: str, path: str, dims: int):
        self.engine = engine
        if engine == "hnswlib":
            import hnswlib

            self.idx = hnswlib.Index(space="cosine", dim=dims)
            self.idx.load_index(path)
            self.idx.set_num_threads(1)
        elif engine == "faiss":
            import faiss

            faiss.omp_set_num_threads(1)
            self.idx = faiss.read_index(path)
        else:
            from usearch.index import Index

            self.idx = Index.restore(path, view=False)

    def __len__(self) -> int:
        if self.engine == "hnswlib":
            return self.idx.get_current_count()
        if self.engine == "faiss":
            return self.idx.ntotal
        return len(self.idx)

    def set_ef(self, ef: int) -> None:
        if self.engine == "hnswlib":
            self.idx.set_ef(ef)
        elif self.engine == "faiss":
            self.idx.hnsw.efSearch = ef
        else:
            self.idx.expansion_search = ef

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        if self.engine == "hnswlib":
            labels, _ = self.idx.knn_query(q, k=k, num_threads=1)
            return labels
        if self.engine == "faiss":
            _, labels = self.idx.search(q, k)
            return labels
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


def search(a) -> dict:
    q = load_f32(a.queries)
    truth = read_truth(a.truth)
    assert len(truth) == len(q), f"{len(truth)} truth lines for {len(q)} queries"
    # Import the engine before the first RSS reading so only the index itself is counted.
    __import__({"hnswlib": "hnswlib", "faiss": "faiss"}.get(a.engine, "usearch.index"))
    rss0 = rss_bytes()
    t = time.perf_counter()
    s = Searcher(a.engine, a.index, q.shape[1])
    load = time.perf_counter() - t
    rss1 = rss_bytes()
    n = len(s)
    sweep = []
    for ef in a.efs:
        s.set_ef(ef)
        res = s.search(q, a.k)  # untimed: recall, and warms caches
        r1, rk = recalls(res, truth, a.k)
        times, cpu = [], []
        start = time.perf_counter()
        while len(times) < max(1, a.max_passes) and (not times or time.perf_counter() - start < a.min_seconds):
            c0, t0 = time.thread_time(), time.perf_counter()
            s.search(q, a.k)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        times.sort()
        sweep.append(
            {
                "ef": ef,
                "recall1": r1,
                "recall10": rk,
                "qps": len(q) / times[0],
                "qps_median_pass": len(q) / times[len(times) // 2],
                "cpu_qps": len(q) / max(min(cpu), 1e-9),
                "passes": len(times),
            }
        )
    return {
        "engine": a.engine,
        "vectors": n,
        "queries": len(q),
        "k": a.k,
        "load_seconds": load,
        "bytes_per_vector": os.path.getsize(a.index) / max(1, n),
        "rss_delta_bytes": rss1 - rss0,
        "rss_bytes_per_vector": (rss1 - rss0) / max(1, n),
        "search_threads": 1,
        "hardware": s.hardware(),
        "simd": simd_info(a.engine),
        "sweep": sweep,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--engine", choices=ENGINES, required=True)
    b.add_argument("--base", required=True)
    b.add_argument("--index", required=True)
    b.add_argument("--m", type=int, default=16)
    b.add_argument("--ef-construction", type=int, default=200)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--seed", type=int, default=100)
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
    a = p.parse_args()
    out = build(a) if a.cmd == "build" else search(a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
