"""`make bench`: kim against hnswlib, faiss (IndexHNSWFlat) and usearch on the same data.

Data sets
  face-<N>   seeded face-like 512-d descriptors from `kim-worker gen` (f32 and u8 from the same
             seed, so they are the same vectors before quantisation); queries = mated + non-mated
             probes. N = 100k by default, 1M with --large.
  minilm-kjv all-MiniLM-L6-v2 embeddings (384-d) of King James Bible verses (bench/minilm.py);
             1000 held-out verses are the queries. Embedded once and cached.

For each data set: exact ground truth (cosine, float64, brute force), then for every engine and
build (3 by default, --quick 1): build with 2 threads, save, load in a fresh process (load time,
resident memory added), and sweep ef with ONE search thread measuring recall@1, recall@10 and QPS.
Medians over builds; QPS at recall@10 0.90/0.95/0.99 is interpolated on the median curve. Then the
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

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KIM_CACHE") or Path.home() / ".cache" / "kim")
BIN = Path(os.environ.get("KIM_BIN_DIR") or ROOT / "target" / "release")
PEERS = ("hnswlib", "faiss", "usearch", "usearch-i8")
TARGETS = (0.90, 0.95, 0.99)
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
            "--m",
            a.m,
            "--ef-construction",
            a.ef_construction,
            "--threads",
            a.threads,
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
            "--k",
            a.k,
            "--efs",
            a.efs,
            "--min-seconds",
            a.min_seconds,
            "--max-passes",
            a.max_passes,
        ],
        timeout=a.step_timeout,
    )
    return {**built, **searched, "storage": str(storage), "queries_file": str(queries), "truth_file": str(truth)}


def run_peer(ds: Dataset, engine: str, b: int, a, work: Path) -> dict:
    idx = work / f"{ds.name}-{engine}-b{b}.idx"
    peer = [sys.executable, ROOT / "bench" / "peer.py"]
    env = peer_env()
    try:
        built = run_json(
            [
                *peer,
                "build",
                "--engine",
                engine,
                "--base",
                ds.f32_base,
                "--index",
                idx,
                "--m",
                a.m,
                "--ef-construction",
                a.ef_construction,
                "--threads",
                a.threads,
                "--seed",
                100 + b,
            ],
            timeout=a.step_timeout,
            env=env,
        )
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
                "--k",
                a.k,
                "--efs",
                a.efs,
                "--min-seconds",
                a.min_seconds,
                "--max-passes",
                a.max_passes,
            ],
            timeout=a.step_timeout,
            env=env,
        )
    finally:
        idx.unlink(missing_ok=True)
    return {**built, **searched}


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.median(xs)) if xs else None


def aggregate(runs: list[dict]) -> dict:
    keys = ("build_seconds", "build_cpu_seconds", "bytes_per_vector", "rss_bytes_per_vector", "load_seconds")
    out = {k: median([r.get(k) for r in runs]) for k in keys}
    efs = [p["ef"] for p in runs[0]["sweep"]]
    sweep = []
    for i, ef in enumerate(efs):
        pts = [r["sweep"][i] for r in runs]
        row = {"ef": ef}
        for key in ("recall1", "recall10", "qps", "cpu_qps", "recall1_alt", "recall10_alt"):
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


def qps_at(sweep: list[dict], target: float, key: str = "recall10", qkey: str = "qps") -> dict | None:
    """QPS where recall first reaches `target`: linear in recall between the bracketing sweep
    points, geometric in QPS. If the smallest ef already reaches it, that QPS is a lower bound."""
    prev = None
    for p in sweep:
        if p[key] is not None and p[key] >= target:
            if prev is None:
                return {"qps": p[qkey], "ef": p["ef"], "lower_bound": True}
            r0, r1 = prev[key], p[key]
            f = (target - r0) / (r1 - r0) if r1 > r0 else 1.0
            q0, q1 = prev[qkey], p[qkey]
            return {
                "qps": math.exp(math.log(q0) + f * (math.log(q1) - math.log(q0))),
                "ef": [prev["ef"], p["ef"]],
                "lower_bound": False,
            }
        prev = p
    return None


# ---------------------------------------------------------------------------------------------
# Report


def fmt(x, spec: str = ".0f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def fmt_qps(q: dict | None) -> str:
    if q is None:
        return "not reached"
    return ("≥" if q["lower_bound"] else "") + f"{q['qps']:.0f}"


def ratio(a: dict | None, b: dict | None) -> str:
    if a is None or b is None:
        return "–"
    s = f"{a['qps'] / b['qps']:.2f}×"
    return s + ("*" if a["lower_bound"] or b["lower_bound"] else "")


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
            f"{'engine':<12} {'build s':>8} {'cpu s':>7} {'B/vec':>7} {'RSS B/v':>8} {'load s':>7} {'QPS@.90':>9} {'QPS@.95':>9} {'QPS@.99':>11}"
            f" {'cpuQPS@.95':>11}"
        )
        L.append(hdr)
        L.append("-" * len(hdr))
        for e, g in ds["engines"].items():
            at = g["at_recall"]
            L.append(
                f"{e:<12} {fmt(g['build_seconds'], '.1f'):>8} {fmt(g['build_cpu_seconds'], '.1f'):>7} {fmt(g['bytes_per_vector']):>7} "
                f"{fmt(g['rss_bytes_per_vector']):>8} {fmt(g['load_seconds'], '.3f'):>7} {fmt_qps(at['0.90']):>9} {fmt_qps(at['0.95']):>9} {fmt_qps(at['0.99']):>11}"
                f" {fmt_qps(g['at_recall_cpu']['0.95']):>11}"
            )
        L.append("")
        L.append("sweep (recall@1 / recall@10 / QPS, one search thread):")
        engines = list(ds["engines"])
        L.append(f"{'ef':>5} " + " ".join(f"{e:>24}" for e in engines))
        for i, ef in enumerate(p["ef"] for p in ds["engines"][engines[0]]["sweep"]):
            cells = []
            for e in engines:
                p = ds["engines"][e]["sweep"][i]
                cells.append(f"{p['recall1']:.3f} / {p['recall10']:.4f} / {p['qps']:>6.0f}")
            L.append(f"{ef:>5} " + " ".join(f"{c:>24}" for c in cells))
        kims = [e for e in engines if e.startswith("kim")]
        peers = [e for e in engines if not e.startswith("kim")]
        if kims and peers:
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
                        f"  {k:<8} ÷ {p:<11} wall "
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


def acceptance(res: dict) -> list[dict]:
    out = []

    def add(target, value, ok, measured):
        out.append(
            {
                "target": target,
                "value": value,
                "verdict": "n/a" if ok is None else ("MET" if ok else "MISSED"),
                "measured": measured,
            }
        )

    face = next((d for d in res["datasets"] if d["name"].startswith("face")), None)
    if face:
        e = face["engines"]
        h = e.get("hnswlib")
        for k, need in (("kim-f32", 1.25), ("kim-u8", 2.5)):
            if k in e and h:
                a, b = e[k]["at_recall"]["0.95"], h["at_recall"]["0.95"]
                r = a["qps"] / b["qps"] if a and b else None
                ac, bc = e[k]["at_recall_cpu"]["0.95"], h["at_recall_cpu"]["0.95"]
                rc = ac["qps"] / bc["qps"] if ac and bc else None
                add(
                    f"{face['name']}: {k} QPS at recall@10 0.95 ≥ {need}× hnswlib-f32 (verdict by CPU time)",
                    rc,
                    None if rc is None else rc >= need,
                    f"by CPU time {fmt_qps(ac)} vs {fmt_qps(bc)} = {fmt(rc, '.2f')}×; by wall clock {fmt_qps(a)} vs {fmt_qps(b)} = {fmt(r, '.2f')}×",
                )
            if k in e and h:
                kb, hb = e[k]["build_seconds"], h["build_seconds"]
                add(
                    f"{face['name']}: {k} build time (2 threads) ≤ hnswlib's",
                    kb / hb if kb and hb else None,
                    kb <= hb if kb and hb else None,
                    f"{fmt(kb, '.1f')} s vs {fmt(hb, '.1f')} s",
                )
                kv, hv = e[k]["rss_bytes_per_vector"], h["rss_bytes_per_vector"]
                add(
                    f"{face['name']}: {k} serving bytes/vector (RSS added by loading) ≤ hnswlib's",
                    kv / hv if kv and hv else None,
                    kv <= hv if kv and hv else None,
                    f"{fmt(kv)} B vs {fmt(hv)} B (self-reported: kim {fmt(e[k]['bytes_per_vector'])} B, hnswlib file {fmt(h['bytes_per_vector'])} B)",
                )
    for r in res.get("redis", []):
        one = next((c for c in r["configs"] if c["matchers"] == 1), None)
        if one:
            added = one["serial"]["added_p50_us"]
            add(
                f"{r['dataset']}/{r['encoding']} Redis p50 added latency ≤ 0.5 ms (1 in flight, 1 matcher)",
                added,
                added <= 500,
                f"{added:.0f} µs",
            )
            wall = one["batched"]["per_matcher_core_vs_in_process"]
            cpu = one["batched"]["per_matcher_cpu_second_vs_in_process"]
            add(
                f"{r['dataset']}/{r['encoding']} Redis batched throughput per matcher core ≥ 80% of in-process QPS (verdict by CPU time)",
                cpu,
                cpu >= 0.8,
                f"{cpu:.0%} per matcher CPU-second; {wall:.0%} by wall clock ({one['batched']['throughput']:.0f} req/s, 1 matcher × 1 search thread)",
            )
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dss = res["datasets"]
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
    ap.add_argument("--minilm-limit", type=int, default=0, help="at most this many MiniLM base vectors (0 = all ~30k)")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--redis-encodings", default="u8,f32")
    ap.add_argument("--redis-configs", default="1x1,2x1,4x1")
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
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
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
        for b in range(a.builds):
            for e in engines:
                t = time.time()
                if e.startswith("kim-"):
                    r = run_kim(ds, e[4:], b, a, work)
                    if b == 0:
                        kim_storage[(ds.name, e[4:])] = r  # served again by the Redis phase
                    else:
                        shutil.rmtree(r["storage"], ignore_errors=True)
                else:
                    r = run_peer(ds, e, b, a, work)
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
                "engines": {e: aggregate(runs[e]) for e in engines},
                "runs": {e: runs[e] for e in engines},
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
