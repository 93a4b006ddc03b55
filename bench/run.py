"""`make bench`: kim against hnswlib, faiss (IndexHNSWFlat, IndexHNSWSQ 8-bit), usearch, ScaNN
(per query and batched) and VSAG (hgraph) on the same data.

Data sets
  face-<N>   seeded face-like 512-d descriptors from `kim-worker gen` (f32 and u8 from the same
             seed, so they are the same vectors before quantisation); queries = mated + non-mated
             probes. N = 100k by default, 1M with --large.
  minilm-kjv all-MiniLM-L6-v2 embeddings (384-d) of King James Bible verses (bench/minilm.py);
             1000 held-out verses are the queries. Embedded once and cached.

For each data set: exact ground truth (cosine, float64, brute force), then for every engine and
build (3 by default, --quick 1): build with 2 threads, save, load in a fresh process (load time,
resident memory added), and sweep ef (ScaNN: leaves to search and reorder candidates) with ONE
search thread measuring recall@1, recall@10 and QPS. Medians over builds; QPS at recall@10
0.90/0.95/0.99 is interpolated on the median curve, and at each the best peer is named (most queries
per search-thread CPU-second; bench/targets.py has that rule and the target verdicts). Then the
Redis path (kim-bench redis) on the face data, and the
u8 label split into 4 shards beside the unsharded one (--redis-shards). Output: a table on stdout and in
<out>/table.txt, <out>/results.json and <out>/recall-qps.png (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from targets import BATCHED_PEERS, TARGETS, acceptance, best_peer, fmt, fmt_qps, qps_at

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KIM_CACHE") or Path.home() / ".cache" / "kim")
BIN = Path(os.environ.get("KIM_BIN_DIR") or ROOT / "target" / "release")
PEERS = ("hnswlib", "faiss", "faiss-sq8", "usearch", "usearch-i8", "scann", "scann-batched", "vsag")
# Peers searching an index built for another row: both ScaNN rows search one build.
BUILD_OF = {"scann-batched": "scann"}
DEFAULT_EFS = "10,16,24,32,48,64,96,128,192,256,384,512"
# On some processors these are set for older OpenBLAS builds; they slow a current numpy. The
# peers' processes run without them (and record which BLAS/SIMD path they got).
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def peer_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}


def run_json(cmd: list, timeout: float, env: dict | None = None) -> dict:
    """Runs a benchmark step; its last stdout line is a JSON object."""
    cmd = [str(c) for c in cmd]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if p.returncode != 0:
        raise RuntimeError(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Data and ground truth


def exact_topk(
    base: np.ndarray, queries: np.ndarray, k: int, zero_point: float = 0.0, chunk: int = 20000
) -> np.ndarray:
    """Exact cosine top-k rows per query (float64; ties broken by lower row, as kim does)."""
    q = queries.astype(np.float64) - zero_point
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    best_s = np.empty((len(q), 0))
    best_i = np.empty((len(q), 0), dtype=np.int64)
    for s in range(0, len(base), chunk):
        b = base[s : s + chunk].astype(np.float64) - zero_point
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
        sim = q @ b.T
        kk = min(k, sim.shape[1])
        idx = (
            np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            if sim.shape[1] > kk
            else np.tile(np.arange(sim.shape[1]), (len(q), 1))
        )
        best_s = np.concatenate([best_s, np.take_along_axis(sim, idx, axis=1)], axis=1)
        best_i = np.concatenate([best_i, idx + s], axis=1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, order, axis=1)
        best_i = np.take_along_axis(best_i, order, axis=1)
    return best_i


def write_truth(path: Path, rows: np.ndarray) -> None:
    path.write_text("".join(" ".join(str(int(x)) for x in r) + "\n" for r in rows))


class Dataset:
    def __init__(self, name: str, title: str, n: int, dims: int, d: Path, f32: tuple, u8: tuple | None):
        self.name, self.title, self.n, self.dims, self.dir = name, title, n, dims, d
        self.f32_base, self.f32_queries, self.f32_truth = f32
        # (base, queries, truth, zero point, scale) or None
        self.u8 = u8

    def meta(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "vectors": self.n,
            "dimensions": self.dims,
            "dir": str(self.dir),
        }


def prepare_face(n: int, nq: int, k: int, data_dir: Path, seed: int = 42) -> Dataset:
    identities = max(1, n // 5)
    d = data_dir / f"face-{identities * 5}-q{nq}-seed{seed}"
    for enc in ("f32", "u8"):
        out = d / enc
        if not (out / "meta.json").exists():
            log(f"generating {identities * 5} face-like {enc} vectors into {out}")
            run_json(
                [
                    BIN / "kim-worker",
                    "gen",
                    "--out",
                    out,
                    "--identities",
                    identities,
                    "--samples",
                    5,
                    "--encoding",
                    enc,
                    "--mated-probes",
                    nq // 2,
                    "--nonmated-probes",
                    nq - nq // 2,
                    "--truth-k",
                    0,
                    "--seed",
                    seed,
                ],
                timeout=3600,
            )
        if not (out / "queries.npy").exists():
            np.save(out / "queries.npy", np.concatenate([np.load(out / "mated.npy"), np.load(out / "nonmated.npy")]))
        truth = out / f"truth{k}.txt"
        if not truth.exists():
            log(f"exact ground truth for {enc} (cosine, float64)")
            meta = json.loads((out / "meta.json").read_text())
            zp = float(meta.get("zeroPoint", 0)) if enc == "u8" else 0.0
            write_truth(
                truth, exact_topk(np.load(out / "base.npy", mmap_mode="r"), np.load(out / "queries.npy"), k, zp)
            )
    meta = json.loads((d / "u8" / "meta.json").read_text())
    n_real = identities * 5
    name = f"face-{n_real // 1000}k" if n_real < 1_000_000 else f"face-{n_real / 1e6:g}M"
    return Dataset(
        name,
        f"face-like 512-d (kim-worker gen, seed {seed})",
        n_real,
        512,
        d,
        (d / "f32" / "base.npy", d / "f32" / "queries.npy", d / "f32" / f"truth{k}.txt"),
        (
            d / "u8" / "base.npy",
            d / "u8" / "queries.npy",
            d / "u8" / f"truth{k}.txt",
            int(meta["zeroPoint"]),
            float(meta["scale"]),
        ),
    )


def prepare_minilm(nq: int, k: int, limit: int, data_dir: Path) -> Dataset:
    d = data_dir / f"minilm-kjv-{limit or 'all'}-q{nq}-s7"
    if not (d / "meta.json").exists():
        log(f"embedding the KJV verses with MiniLM (numpy; once, cached in {d}; ~10-20 min on 2 cores)")
        run_json(
            [sys.executable, ROOT / "bench" / "minilm.py", "--out", d, "--queries", nq, "--limit", limit],
            timeout=6 * 3600,
            env=peer_env(),
        )
    base = np.load(d / "base.npy")
    queries = np.load(d / "queries.npy")
    if not (d / f"truth{k}.txt").exists():
        log("exact ground truth for minilm f32")
        write_truth(d / f"truth{k}.txt", exact_topk(base, queries, k))
    # A u8 copy for kim's u8 encoding: zero point 128, one scale so the largest component fits.
    scale = 127.0 / float(np.abs(base).max())
    if not (d / "u8" / f"truth{k}.txt").exists():
        (d / "u8").mkdir(exist_ok=True)
        quant = lambda x: np.clip(np.rint(x * scale) + 128, 0, 255).astype(np.uint8)  # noqa: E731
        np.save(d / "u8" / "base.npy", quant(base))
        np.save(d / "u8" / "queries.npy", quant(queries))
        write_truth(
            d / "u8" / f"truth{k}.txt",
            exact_topk(np.load(d / "u8" / "base.npy"), np.load(d / "u8" / "queries.npy"), k, 128.0),
        )
    meta = json.loads((d / "meta.json").read_text())
    return Dataset(
        "minilm-kjv",
        f"all-MiniLM-L6-v2 384-d, {meta['base']} KJV verses",
        int(meta["base"]),
        int(meta["dimensions"]),
        d,
        (d / "base.npy", d / "queries.npy", d / f"truth{k}.txt"),
        (d / "u8" / "base.npy", d / "u8" / "queries.npy", d / "u8" / f"truth{k}.txt", 128, 1.0 / scale),
    )


# ---------------------------------------------------------------------------------------------
# Running engines


def graph_flags(a) -> list:
    """The graph settings every engine builds with (kim-bench and peer.py take the same flags)."""
    return ["--m", a.m, "--ef-construction", a.ef_construction, "--threads", a.threads]


def sweep_flags(a) -> list:
    """The search sweep every engine runs."""
    return ["--k", a.k, "--efs", a.efs, "--min-seconds", a.min_seconds, "--max-passes", a.max_passes]


def run_kim(ds: Dataset, enc: str, b: int, a, work: Path) -> dict:
    storage = work / f"kim-{ds.name}-{enc}-b{b}"
    shutil.rmtree(storage, ignore_errors=True)
    if enc == "f32":
        base, queries, truth, extra, alt = ds.f32_base, ds.f32_queries, ds.f32_truth, [], []
    else:
        base, queries, truth, zp, scale = ds.u8
        extra, alt = ["--zero-point", zp, "--scale", scale], ["--truth-alt", ds.f32_truth]
    kb = BIN / "kim-bench"
    built = run_json(
        [
            kb,
            "build",
            "--base",
            base,
            "--storage",
            storage,
            "--label",
            "bench",
            *graph_flags(a),
            *extra,
        ],
        timeout=a.step_timeout,
    )
    searched = run_json(
        [
            kb,
            "search",
            "--storage",
            storage,
            "--label",
            "bench",
            "--queries",
            queries,
            "--truth",
            truth,
            *alt,
            *sweep_flags(a),
        ],
        timeout=a.step_timeout,
    )
    return {**built, **searched, "storage": str(storage), "queries_file": str(queries), "truth_file": str(truth)}


def run_peer(ds: Dataset, engine: str, b: int, a, work: Path, builds: dict, users: int) -> dict:
    """Builds (or reuses, see BUILD_OF) the peer's index and searches it in a fresh process.
    `builds` keeps an index shared by `users` rows until the last of them has searched it."""
    base_engine = BUILD_OF.get(engine, engine)
    key = (ds.name, base_engine, b)
    peer = [sys.executable, ROOT / "bench" / "peer.py"]
    env = peer_env()
    if key not in builds:
        idx = work / f"{ds.name}-{base_engine}-b{b}.idx"
        builds[key] = {"idx": idx, "users": users, "built": None}
    shared = builds[key]
    idx = shared["idx"]
    try:
        if shared["built"] is None:
            shared["built"] = run_json(
                [
                    *peer,
                    "build",
                    "--engine",
                    base_engine,
                    "--base",
                    ds.f32_base,
                    "--index",
                    idx,
                    *graph_flags(a),
                    "--seed",
                    100 + b,
                    "--k",
                    a.k,
                ],
                timeout=a.step_timeout,
                env=env,
            )
            built = shared["built"]
        else:
            built = {**shared["built"], "build_shared_with": base_engine}
        searched = run_json(
            [
                *peer,
                "search",
                "--engine",
                engine,
                "--index",
                idx,
                "--queries",
                ds.f32_queries,
                "--truth",
                ds.f32_truth,
                *sweep_flags(a),
                # what VSAG needs to load its index
                *graph_flags(a),
                "--vectors",
                ds.n,
            ],
            timeout=a.step_timeout,
            env=env,
        )
    except Exception:
        shared["users"] = 1  # a failed build or search ends the index
        raise
    finally:
        shared["users"] -= 1
        if shared["users"] <= 0:
            if idx.is_dir():
                shutil.rmtree(idx, ignore_errors=True)
            else:
                idx.unlink(missing_ok=True)
            builds.pop(key, None)
    return {**built, **searched}


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.median(xs)) if xs else None


SWEEP_KEYS = ("reorder", "recall1", "recall10", "qps", "cpu_qps", "process_cpu_qps", "recall1_alt", "recall10_alt")


def aggregate(runs: list[dict]) -> dict:
    keys = ("build_seconds", "build_cpu_seconds", "bytes_per_vector", "rss_bytes_per_vector", "load_seconds")
    out = {k: median([r.get(k) for r in runs]) for k in keys}
    efs = [p["ef"] for p in runs[0]["sweep"]]
    sweep = []
    for i, ef in enumerate(efs):
        pts = [r["sweep"][i] for r in runs]
        row = {"ef": ef}
        for key in SWEEP_KEYS:
            if key in pts[0]:
                row[key] = median([p.get(key) for p in pts])
        if "latency" in pts[0]:
            row["p50_us"] = median([p["latency"]["p50_us"] for p in pts])
        sweep.append(row)
    out["sweep"] = sweep
    out["at_recall"] = {f"{t:.2f}": qps_at(sweep, t) for t in TARGETS}
    out["at_recall_cpu"] = {f"{t:.2f}": qps_at(sweep, t, qkey="cpu_qps") for t in TARGETS}
    if "recall10_alt" in sweep[0]:
        out["at_recall_alt"] = {f"{t:.2f}": qps_at(sweep, t, "recall10_alt") for t in TARGETS}
    return out


# ---------------------------------------------------------------------------------------------
# Report


def ratio(a: dict | None, b: dict | None) -> str:
    if a is None or b is None:
        return "–"
    s = f"{a['qps'] / b['qps']:.2f}×"
    return s + ("*" if a["lower_bound"] or b["lower_bound"] else "")


def sweep_tables(ds: dict) -> list[str]:
    """The sweeps: one table for the engines that share a list of ef values (kim and the HNSW
    peers), one per ScaNN row (leaves to search and reorder candidates instead of ef)."""
    L = []
    groups: dict[tuple, list[str]] = {}
    scann = []
    for e, g in ds["engines"].items():
        if any("reorder" in p for p in g["sweep"]):
            scann.append(e)
        else:
            groups.setdefault(tuple(p["ef"] for p in g["sweep"]), []).append(e)
    for efs, engines in groups.items():
        L.append("")
        L.append("sweep (recall@1 / recall@10 / QPS, one search thread):")
        L.append(f"{'ef':>5} " + " ".join(f"{e:>24}" for e in engines))
        for i, ef in enumerate(efs):
            cells = []
            for e in engines:
                p = ds["engines"][e]["sweep"][i]
                cells.append(f"{p['recall1']:.3f} / {p['recall10']:.4f} / {p['qps']:>6.0f}")
            L.append(f"{ef:>5} " + " ".join(f"{c:>24}" for c in cells))
    for e in scann:
        L.append("")
        L.append(
            f"{e} sweep, one search thread (leaves to search, reorder candidates; recall@1 / recall@10 / QPS / cpu QPS):"
        )
        for p in ds["engines"][e]["sweep"]:
            L.append(
                f"{p['ef']:>6} {fmt(p.get('reorder')):>5}   {p['recall1']:.3f} / {p['recall10']:.4f} / {p['qps']:>7.0f} / {fmt(p.get('cpu_qps')):>7}"
            )
    return L


def best_peer_table(ds: dict, kims: list[str]) -> list[str]:
    """At each recall target: the best peer of all and the best per-query peer (most queries per
    search-thread CPU-second, bench/targets.py), and kim's CPU-time ratio to each."""
    e = ds["engines"]
    L = [
        "best peer at equal recall@10 (most queries per search-thread CPU-second; ratios by CPU time, * = a lower bound"
        f" was involved; per-query = all peers but {', '.join(BATCHED_PEERS)}):"
    ]
    head = f"  {'recall':<6} {'best peer':<14} {'cpuQPS':>8} " + " ".join(f"{k + ' ÷':>10}" for k in kims)
    head += f"   {'best per-query':<14} {'cpuQPS':>8} " + " ".join(f"{k + ' ÷':>10}" for k in kims)
    L.append(head)
    for t in (f"{x:.2f}" for x in TARGETS):
        cells = [f"  {t:<6}"]
        for per_query in (False, True):
            name, q = best_peer(e, t, per_query_only=per_query)
            cells.append(f"{name or 'none reached':<14} {fmt_qps(q) if q else '–':>8}")
            cells.append(" ".join(f"{ratio(e[k]['at_recall_cpu'][t], q):>10}" for k in kims))
            if not per_query:
                cells.append("  ")
        L.append(" ".join(cells))
    return L


def peer_notes(ds: dict) -> list[str]:
    """How each peer was called, and any peer whose process used clearly more CPU than its
    search thread (a library searching on threads of its own)."""
    L = []
    for e, r in ds.get("runs", {}).items():
        if e.startswith("kim") or not r:
            continue
        call = r[0].get("search_call")
        if call:
            L.append(f"  {e}: {call}")
        worst = min(
            (p["process_cpu_qps"] / p["cpu_qps"] for p in ds["engines"][e]["sweep"] if p.get("process_cpu_qps")),
            default=1.0,
        )
        if worst < 0.9:
            L.append(f"  {e}: WARNING process CPU up to {1 / worst:.2f}× the search thread's (threads of its own?)")
        if r[0].get("note"):
            L.append(f"  {e}: {r[0]['note']}")
    return L


def table(res: dict) -> str:
    L = []
    m = res["meta"]
    L.append(
        f"kim benchmark — {m['started']} — {m['cpu']} ({m['cores']} cores), load average {m['loadavg_start']} → {m.get('loadavg_end', '?')}"
    )
    L.append(
        f"M={res['params']['m']} efConstruction={res['params']['ef_construction']} k={res['params']['k']}, build threads {res['params']['threads']}, "
        f"search threads 1, {res['params']['builds']} build(s) per engine (medians)"
    )
    L.append("CAVEAT: the machine may be shared; absolute numbers are noisy, compare rows of one run.")
    for ds in res["datasets"]:
        L.append("")
        L.append(
            f"== {ds['name']}: {ds['title']} — {ds['vectors']} vectors × {ds['dimensions']}, {ds['queries']} queries"
        )
        hdr = (
            f"{'engine':<14} {'build s':>8} {'cpu s':>7} {'B/vec':>7} {'RSS B/v':>8} {'load s':>7} {'QPS@.90':>9} {'QPS@.95':>9} {'QPS@.99':>11}"
            f" {'cpuQPS@.95':>11}"
        )
        L.append(hdr)
        L.append("-" * len(hdr))
        for e, g in ds["engines"].items():
            at = g["at_recall"]
            L.append(
                f"{e:<14} {fmt(g['build_seconds'], '.1f'):>8} {fmt(g['build_cpu_seconds'], '.1f'):>7} {fmt(g['bytes_per_vector']):>7} "
                f"{fmt(g['rss_bytes_per_vector']):>8} {fmt(g['load_seconds'], '.3f'):>7} {fmt_qps(at['0.90']):>9} {fmt_qps(at['0.95']):>9} {fmt_qps(at['0.99']):>11}"
                f" {fmt_qps(g['at_recall_cpu']['0.95']):>11}"
            )
        L.extend(peer_notes(ds))
        for f in res.get("failures", []):
            if f["dataset"] == ds["name"]:
                L.append(
                    f"  {f['engine']}: FAILED in build {f['build'] + 1}, left out: {f['error'].splitlines()[0][:200]}"
                )
        L.extend(sweep_tables(ds))
        engines = list(ds["engines"])
        kims = [e for e in engines if e.startswith("kim")]
        peers = [e for e in engines if not e.startswith("kim")]
        if kims and peers:
            L.append("")
            L.extend(best_peer_table(ds, kims))
            L.append("")
            L.append(
                "kim's QPS ratio to each peer at equal recall@10 0.90 / 0.95 / 0.99, by wall clock and by search-thread CPU time"
            )
            L.append("(* = a lower bound was involved):")
            for k in kims:
                for p in peers:
                    cells = [
                        ratio(ds["engines"][k]["at_recall"][t], ds["engines"][p]["at_recall"][t])
                        for t in ("0.90", "0.95", "0.99")
                    ]
                    cpu = [
                        ratio(ds["engines"][k]["at_recall_cpu"][t], ds["engines"][p]["at_recall_cpu"][t])
                        for t in ("0.90", "0.95", "0.99")
                    ]
                    L.append(
                        f"  {k:<8} ÷ {p:<13} wall "
                        + " ".join(f"{c:>7}" for c in cells)
                        + "   cpu "
                        + " ".join(f"{c:>7}" for c in cpu)
                    )
        for k in kims:
            alt = ds["engines"][k].get("at_recall_alt")
            if alt:
                L.append(
                    f"  ({k} recall measured against its own {k[4:]} data's exact truth; against the f32 truth: QPS@.90/.95/.99 = "
                    f"{fmt_qps(alt['0.90'])} / {fmt_qps(alt['0.95'])} / {fmt_qps(alt['0.99'])})"
                )
    if res.get("redis"):
        L.append("")
        L.append("== Redis path (real redis-server + kim-worker match, kim-client closed loop, loopback)")
        hdr = (
            f"{'index':<14} {'matchers':>8} {'in-proc p50':>11} {'1-flight p50':>12} {'p99':>7} {'p99.9':>7} {'added p50':>9} "
            f"{'batched QPS':>11} {'p50':>7} {'p99':>7} {'p99.9':>7} {'/core':>6} {'/CPU-s':>7} {'in-proc QPS':>11}"
        )
        L.append(hdr)
        L.append("-" * len(hdr))
        for r in res["redis"]:
            ip = r["in_process"]
            for c in r["configs"]:
                s, bt = c["serial"], c["batched"]
                L.append(
                    f"{r['dataset'] + '/' + r['encoding']:<14} {c['config']:>8} {ip['latency']['p50_us']:>9.0f}µs {s['latency']['p50_us']:>10.0f}µs "
                    f"{s['latency']['p99_us']:>7.0f} {s['latency']['p999_us']:>7.0f} {s['added_p50_us']:>7.0f}µs "
                    f"{bt['throughput']:>11.0f} {bt['latency']['p50_us']:>7.0f} {bt['latency']['p99_us']:>7.0f} {bt['latency']['p999_us']:>7.0f} "
                    f"{bt['per_matcher_core_vs_in_process']:>5.0%} {bt['per_matcher_cpu_second_vs_in_process']:>6.0%} {ip['qps']:>11.0f}"
                )
        L.append("  latencies in µs; /core = batched QPS ÷ (matchers × search threads) ÷ in-process QPS;")
        L.append(
            "  /CPU-s = requests per CPU-second the matcher processes used ÷ in-process queries per search-thread CPU-second"
        )
        L.append("  (robust to a shared machine).")
        shard_rows = [r for r in res["redis"] if r.get("sharded")]
        if shard_rows:
            L.append("")
            L.append("== Sharded label beside the unsharded one (same probes, same search threads in all)")
            L.extend(shard_table(shard_rows))
    if res.get("acceptance"):
        L.append("")
        L.append("== performance targets (reported, not asserted)")
        for t in res["acceptance"]:
            L.append(f"  [{t['verdict']:^7}] {t['target']}: {t['measured']}")
    return "\n".join(L)


def shard_table(rows: list[dict]) -> list[str]:
    """The sharded comparison of `kim-bench redis --shards N`: one line per set-up, then the
    ratios sharded / unsharded, build and memory figures."""
    L = []
    hdr = (
        f"{'index':<14} {'set-up':>14} {'recall@10':>9} {'same top-10':>11} {'1-flight p50':>12} {'p99':>7} "
        f"{'batched QPS':>11} {'p50':>7} {'p99':>7} {'QPS/CPU-s':>9} {'RSS MiB':>8}"
    )
    L.append(hdr)
    L.append("-" * len(hdr))
    for r in rows:
        sh = r["sharded"]
        name = f"{r['dataset']}/{r['encoding']}"
        for what, c in (("unsharded", sh["unsharded"]), (f"{sh['shards']} shards", sh["sharded"])):
            s, bt = c["serial"], c["batched"]
            setup = f"{what} {c['matchers']}×{c['threads_per_matcher']}"
            L.append(
                f"{name:<14} {setup:>14} {fmt(bt['recall10'], '.4f'):>9} {bt['agreement_with_in_process']:>11.1%} "
                f"{s['latency']['p50_us']:>10.0f}µs {s['latency']['p99_us']:>7.0f} {bt['throughput']:>11.0f} "
                f"{bt['latency']['p50_us']:>7.0f} {bt['latency']['p99_us']:>7.0f} {bt['per_matcher_cpu_second_qps']:>9.0f} "
                f"{sum(c['matcher_rss_bytes']) / 2**20:>8.1f}"
            )
        q = sh["ratio"]
        L.append(
            f"{name:<14} {'ratio':>14} {fmt(q['recall10'], '.3f'):>9} {'':>11} {fmt(q['serial_p50'], '.2f'):>11}× "
            f"{fmt(q['serial_p99'], '.2f'):>6}× {fmt(q['throughput'], '.2f'):>10}× {fmt(q['batched_p50'], '.2f'):>6}× "
            f"{fmt(q['batched_p99'], '.2f'):>6}× {fmt(q['per_matcher_cpu_second_qps'], '.2f'):>8}×"
        )
        b, d, m = sh["build"], sh["disk"], sh["memory"]
        L.append(
            f"  {name}: {sh['vectors']} vectors at ef {sh['ef']}; shards {b['shard_vectors']} built in {b['seconds']:.1f} s "
            f"({b['threads']} threads; unsharded {b['unsharded_seconds']:.1f} s), {b['cpu_seconds_per_vector'] * 1e6:.0f} CPU-µs/vector; "
            f"disk {d['unsharded_bytes_per_vector']:.0f} B/vector unsharded, {d['sharded_bytes_per_vector']:.0f} sharded; "
            f"matcher RSS added once ready {fmt(m.get('unsharded_rss_ready_added_per_vector'))} B/vector unsharded, "
            f"{fmt(m.get('sharded_rss_ready_added_per_vector'))} sharded; after the load {m['unsharded_rss_added_per_vector']:.0f} "
            f"and {m['sharded_rss_added_per_vector']:.0f} (empty matcher {m['empty_matcher_rss_bytes'] / 2**20:.1f} MiB)"
        )
    L.append("  ratio = sharded ÷ unsharded; same top-10 = answers identical to the unsharded in-process search;")
    L.append("  QPS/CPU-s = answered requests per CPU-second of all matcher processes (a sharded request costs one")
    L.append("  search per shard).")
    return L


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dss = [d for d in res["datasets"] if d["engines"]]  # a data set whose every engine failed has no curve
    if not dss:
        return
    fig, axes = plt.subplots(2, len(dss), figsize=(7 * len(dss), 10), squeeze=False)
    for row, (qkey, what) in enumerate(
        (("qps", "queries per second (1 thread, wall clock)"), ("cpu_qps", "queries per CPU-second (1 search thread)"))
    ):
        for ax, ds in zip(axes[row], dss):
            for e, g in ds["engines"].items():
                xs = [p["recall10"] for p in g["sweep"]]
                ys = [p.get(qkey) for p in g["sweep"]]
                style = "-o" if e.startswith("kim") else "--s"
                ax.plot(xs, ys, style, label=e, markersize=4, linewidth=2 if e.startswith("kim") else 1.2)
            for t in TARGETS:
                ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("recall@10")
            ax.set_ylabel(what)
            ax.set_title(
                f"{ds['name']} ({ds['vectors']} × {ds['dimensions']}), M={res['params']['m']}, efC={res['params']['ef_construction']}"
            )
            ax.set_xlim(
                left=max(0.5, min(p["recall10"] for g in ds["engines"].values() for p in g["sweep"]) - 0.02),
                right=1.002,
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(
        f"kim vs peers — {res['meta']['started']} — shared {res['meta']['cores']}-core machine: compare curves, not absolute numbers",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def machine_meta() -> dict:
    cpu = next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor()
    )
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "index", "bench"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    rustc = (
        subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
        if shutil.which("rustc")
        else None
    )
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": git + ("+dirty" if dirty else ""),
        "rustc": rustc,
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "openblas_env_removed_for_peers": {k: os.environ.get(k) for k in OPENBLAS_VARS},
    }


def default_redis_configs() -> str:
    cores = len(os.sched_getaffinity(0))
    return ",".join(["1x1"] + ([f"1x{cores}"] if cores > 1 else []) + ["2x1", "4x1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000, help="face-like base size (default 100k)")
    ap.add_argument("--large", action="store_true", help="face-like 1M vectors")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--builds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one build per engine")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="build threads (search is always 1)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--efs", default=DEFAULT_EFS)
    ap.add_argument("--min-seconds", type=float, default=1.0, help="timed passes per ef last at least this long...")
    ap.add_argument("--max-passes", type=int, default=50, help="...or stop after this many (fastest pass counts)")
    ap.add_argument("--datasets", default="face,minilm")
    ap.add_argument("--engines", default="kim-f32,kim-u8," + ",".join(PEERS))
    ap.add_argument(
        "--skip-engines",
        default="",
        help="leave these out of --engines (e.g. usearch,vsag: the slowest builds; vsag,scann: one Python call per query)",
    )
    ap.add_argument(
        "--peer-failures",
        choices=("stop", "skip"),
        default="skip",
        help="a peer that fails to build or search: stop the run, or leave it out of that data set and go on",
    )
    ap.add_argument("--minilm-limit", type=int, default=0, help="at most this many MiniLM base vectors (0 = all ~30k)")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--redis-encodings", default="u8,f32")
    ap.add_argument(
        "--redis-configs",
        default=default_redis_configs(),
        help="MATCHERSxTHREADS set-ups; the default adds one matcher with a search thread per core (thread scaling)",
    )
    ap.add_argument("--redis-inflight", type=int, default=64)
    ap.add_argument("--redis-seconds", type=float, default=10.0, help="time limit of each Redis load phase")
    ap.add_argument(
        "--redis-shards",
        type=int,
        default=4,
        help="also serve the label split into this many shards beside the unsharded label (0 = off)",
    )
    ap.add_argument(
        "--redis-shard-encodings", default="u8", help="encodings the sharded comparison runs for (of --redis-encodings)"
    )
    ap.add_argument("--step-timeout", type=float, default=4 * 3600)
    ap.add_argument("--out", default=str(ROOT / "target" / "bench"))
    ap.add_argument(
        "--report-only", action="store_true", help="re-print the table and redraw the plot from <out>/results.json"
    )
    a = ap.parse_args()
    if a.report_only:
        out = Path(a.out)
        res = json.loads((out / "results.json").read_text())
        res["acceptance"] = acceptance(res)
        text = table(res)
        (out / "table.txt").write_text(text + "\n")
        plot(res, out / "recall-qps.png")
        print(text)
        return
    if a.quick:
        a.builds = 1
    if a.large:
        a.vectors = 1_000_000
    skip = {e.strip() for e in a.skip_engines.split(",") if e.strip()}
    engines = [e.strip() for e in a.engines.split(",") if e.strip() and e.strip() not in skip]
    unknown = [e for e in engines if e not in ("kim-f32", "kim-u8", *PEERS)]
    if unknown:
        sys.exit(f"unknown engine(s) {', '.join(unknown)} (kim-f32, kim-u8, {', '.join(PEERS)})")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = CACHE / "bench" / "data"
    work = CACHE / "bench" / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for b in ("kim-bench", "kim-worker"):
        if not (BIN / b).exists():
            sys.exit(f"{BIN / b} is missing: cargo build --release -p kim-bench -p kim-worker")

    res = {
        "meta": machine_meta(),
        "params": {
            k: getattr(a, k)
            for k in ("m", "ef_construction", "threads", "k", "builds", "queries", "efs", "min_seconds", "max_passes")
        },
        "datasets": [],
        "redis": [],
        "failures": [],
    }
    log(f"machine: {res['meta']['cpu']}, {res['meta']['cores']} cores, load {res['meta']['loadavg_start']}")
    t_all = time.time()
    datasets = []
    for name in a.datasets.split(","):
        name = name.strip()
        if name == "face":
            datasets.append(prepare_face(a.vectors, a.queries, a.k, data_dir))
        elif name == "minilm":
            datasets.append(prepare_minilm(a.queries, a.k, a.minilm_limit, data_dir))
        elif name:
            sys.exit(f"unknown data set {name!r} (face, minilm)")

    kim_storage: dict = {}
    for ds in datasets:
        runs: dict[str, list] = {e: [] for e in engines}
        failed: set = set()
        peer_builds: dict = {}
        for b in range(a.builds):
            for e in engines:
                if e in failed:
                    continue
                t = time.time()
                if e.startswith("kim-"):
                    r = run_kim(ds, e[4:], b, a, work)
                    if b == 0:
                        kim_storage[(ds.name, e[4:])] = r  # served again by the Redis phase
                    else:
                        shutil.rmtree(r["storage"], ignore_errors=True)
                else:
                    users = sum(1 for x in engines if BUILD_OF.get(x, x) == BUILD_OF.get(e, e) and x not in failed)
                    try:
                        r = run_peer(ds, e, b, a, work, peer_builds, users)
                    except RuntimeError as err:
                        if a.peer_failures == "stop":
                            raise
                        log(f"{ds.name} {e} build {b + 1}: FAILED, left out of this data set: {err}")
                        res["failures"].append({"dataset": ds.name, "engine": e, "build": b, "error": str(err)[-3000:]})
                        failed.add(e)
                        continue
                runs[e].append(r)
                best = max(r["sweep"], key=lambda p: p["recall10"])
                log(
                    f"{ds.name} {e} build {b + 1}/{a.builds}: build {r['build_seconds']:.1f} s, load {r['load_seconds']:.3f} s, "
                    f"{r['bytes_per_vector']:.0f} B/vec (RSS {r['rss_bytes_per_vector']:.0f}), top recall@10 {best['recall10']:.4f} "
                    f"[{time.time() - t:.0f} s]"
                )
        q = len(np.load(ds.f32_queries, mmap_mode="r"))
        res["datasets"].append(
            {
                **ds.meta(),
                "queries": q,
                "engines": {e: aggregate(runs[e]) for e in engines if e not in failed},
                "runs": {e: runs[e] for e in engines if e not in failed},
            }
        )
        (out / "results.json").write_text(json.dumps(res, indent=1))

    if not a.no_redis:
        for ds in datasets:
            if not ds.name.startswith("face"):
                continue
            for enc in [x.strip() for x in a.redis_encodings.split(",") if x.strip()]:
                r = kim_storage.get((ds.name, enc))
                if not r:
                    continue
                g = next(d for d in res["datasets"] if d["name"] == ds.name)["engines"][f"kim-{enc}"]
                ef = next((p["ef"] for p in g["sweep"] if p["recall10"] >= 0.95), g["sweep"][-1]["ef"])
                log(f"Redis path: {ds.name} kim-{enc} at ef {ef} (recall@10 ≥ 0.95), configs {a.redis_configs}")
                rr = run_json(
                    [
                        BIN / "kim-bench",
                        "redis",
                        "--storage",
                        r["storage"],
                        "--label",
                        "bench",
                        "--queries",
                        r["queries_file"],
                        "--truth",
                        r["truth_file"],
                        "--k",
                        a.k,
                        "--ef",
                        ef,
                        "--work",
                        work / f"redis-{ds.name}-{enc}",
                        "--configs",
                        a.redis_configs,
                        "--inflight",
                        a.redis_inflight,
                        "--max-seconds",
                        a.redis_seconds,
                        "--serial-requests",
                        5000,
                        "--batched-requests",
                        200000,
                        "--shards",
                        a.redis_shards if enc in a.redis_shard_encodings.split(",") else 0,
                        "--build-threads",
                        a.threads,
                    ],
                    timeout=a.step_timeout,
                )
                res["redis"].append({"dataset": ds.name, "encoding": enc, **rr})
    res["meta"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    res["meta"]["seconds"] = time.time() - t_all
    res["acceptance"] = acceptance(res)
    text = table(res)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "table.txt").write_text(text + "\n")
    try:
        plot(res, out / "recall-qps.png")
    except Exception as e:  # a missing font or backend must not lose the numbers
        log(f"plot failed: {e}")
    print(text)
    log(f"wrote {out / 'results.json'}, {out / 'table.txt'}, {out / 'recall-qps.png'} in {time.time() - t_all:.0f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
