"""`moe-trace analyze`: routing locality of a trace as numbers (JSON), tables (Parquet and CSV) and figures.

Model level (the JSON's top-level keys): one cache over all (layer, expert) keys of C = ρ·L·k, a token's L·k
lookups judged together: `sch_m{m}_rho{ρ}`, `lru_rho{ρ}`, `lfu_rho{ρ}`, `belady_rho{ρ}`, and `srp_m{m}`. Per layer
(`per_layer`, a table of lists beside them): each layer its own cache of C = ρ·k, the same keys per layer, plus
popularity, consecutive overlap, next-layer predictability. Hit rates are per-sequence rates averaged over
sequences (REFERENCE §4); confidence intervals are percentile intervals of that mean over `bootstrap` resamples of
the sequences (`ci`: [low, high] per key, 95%).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from traces.locality import cache, sch, srp as srp_mod, stats
from traces.locality.grid import RoutingGrid, load_grid

BASELINES = ("lru", "lfu", "belady")
CONFIDENCE = 0.95


def rho_name(rho: float) -> str:
    return f"{rho:g}"


def capacities(grid: RoutingGrid, rho: float) -> tuple[int, int]:
    """(per-layer C = ρ·k, model-level C = ρ·L·k), rounded, at least 1."""
    m = grid.model
    return max(1, int(round(rho * m.top_k))), max(1, int(round(rho * m.moe_layers * m.top_k)))


def analyze(path: str | os.PathLike, *, segments=(16,), rhos=(1.0, 2.0, 4.0), bootstrap: int = 1000, seed: int = 0,
            split: int | None = None, min_tokens: int = 1) -> tuple[dict, dict]:
    """The analysis of the trace at `path`: (JSON-ready document, tables as dicts of column arrays)."""
    segments, rhos = _checked_arguments(segments, rhos, bootstrap)
    clock = time.perf_counter()
    grid = _selected_grid(path, split, min_tokens)
    doc = _header(path, grid, segments=segments, rhos=rhos, bootstrap=bootstrap, seed=seed, split=split,
                  min_tokens=min_tokens)
    results = _Results(doc, {"layer": list(range(grid.model.moe_layers)), "moe_layer_id": list(grid.meta.moe_layer_ids)},
                       _bootstrap_weights(grid.sequences, bootstrap, seed))
    layer_streams = cache.layer_streams(grid)
    timings = _hit_rates(results, grid, layer_streams, rhos, segments)
    _srp(results, grid, segments)
    counts, co, top = _routing_stats(results.per_layer, grid)
    reuse = _reuse_histogram(grid, layer_streams)

    per_layer = results.per_layer
    doc["per_layer_mean"] = {key: _mean(v) for key, v in per_layer.items() if key not in ("layer", "moe_layer_id")}
    doc["ci"] = results.ci
    doc["per_layer"] = per_layer
    doc["per_layer_ci"] = results.per_layer_ci
    doc["popularity"] = {"top_experts": top, "uniform_entropy_bits": float(np.log2(grid.model.experts_per_layer))}
    doc["reuse_distance"] = {"bins": "LRU stack distance 0..E-1 (distinct experts of the layer used since the "
                                     "previous use), then first use in the sequence",
                             "histogram": reuse.sum(axis=0).tolist()}
    doc["timings_s"] = {**timings, "total": round(time.perf_counter() - clock, 3)}
    return doc, _tables(grid, per_layer, counts, reuse, co)


def _checked_arguments(segments, rhos, bootstrap: int) -> tuple[list[int], list[float]]:
    """The segment lengths and cache ratios, sorted and deduplicated; InputError for a value out of range."""
    segments = sorted({int(m) for m in segments})
    rhos = sorted({float(r) for r in rhos})
    if not segments or min(segments) < 1:
        raise InputError(f"arguments: --segment {segments}: segment lengths must be ≥ 1")
    if not rhos or min(rhos) <= 0:
        raise InputError(f"arguments: --rho {rhos}: cache ratios must be > 0")
    if bootstrap < 0:
        raise InputError(f"arguments: --bootstrap {bootstrap}: must be ≥ 0")
    return segments, rhos


def _selected_grid(path: str | os.PathLike, split: int | None, min_tokens: int) -> RoutingGrid:
    """The trace's grid, its sequences cut into pieces of `split` tokens and those shorter than `min_tokens` left out."""
    grid = load_grid(path)
    if split:
        grid = grid.split(split)
    if min_tokens > 1:
        grid = grid.select(grid.lengths >= min_tokens)
    if grid.sequences == 0 or not (grid.experts >= 0).any():
        raise InputError(f"{path}: rows: no accesses to analyse (after --split/--min-tokens)")
    return grid


def _bootstrap_weights(sequences: int, bootstrap: int, seed: int) -> np.ndarray | None:
    """[bootstrap, sequences]: how often each resample draws each sequence; None without resamples."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(sequences, np.full(sequences, 1 / sequences), size=bootstrap) if bootstrap else None


def _header(path: str | os.PathLike, grid: RoutingGrid, **settings) -> dict:
    """The document's first keys: the trace's shape and the analysis settings."""
    model = grid.model
    return {
        "file": str(path), "model": model.name, "moe_layers": model.moe_layers,
        "experts_per_layer": model.experts_per_layer, "top_k": model.top_k,
        "sequences": grid.sequences, "tokens": int(len(grid.experts)), "accesses": int((grid.experts >= 0).sum()),
        "segments": settings["segments"], "rhos": settings["rhos"], "bootstrap": settings["bootstrap"],
        "seed": settings["seed"], "split": settings["split"], "min_tokens": settings["min_tokens"],
        "confidence": CONFIDENCE,
        "convention": "REFERENCE.md §4: per-sequence reset, lookups of a token judged before update, cold-start "
                      "credit; hit rate = mean over sequences of hits / accesses; SCH as moe-lrc's calc_fsf (keys "
                      "inserted one by one in router order, the key being inserted never its own victim)",
    }


@dataclass
class _Results:
    """What the analysis fills in: model-level values (in the document) and per-layer lists, with their intervals."""

    doc: dict
    per_layer: dict
    weights: np.ndarray | None
    """The bootstrap resamples (`_bootstrap_weights`), or None for no intervals."""
    ci: dict = field(default_factory=dict)
    per_layer_ci: dict = field(default_factory=dict)

    def record(self, key: str, hits: np.ndarray, accesses: np.ndarray, layered: bool) -> None:
        """Store a model-level ([S]) or per-layer ([S, L]) hit-rate result with its bootstrap interval."""
        valid = accesses > 0
        rate = np.where(valid, hits / np.maximum(accesses, 1), 0.0)
        value = rate.sum(axis=0) / np.maximum(valid.sum(axis=0), 1)
        if layered:
            self.per_layer[key] = value.tolist()
        else:
            self.doc[key] = float(value)
        if self.weights is not None:
            boot = (self.weights @ rate) / np.maximum(self.weights @ valid, 1)
            lo, hi = np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], axis=0)
            if layered:
                self.per_layer_ci[key] = [lo.tolist(), hi.tolist()]
            else:
                self.ci[key] = [float(lo), float(hi)]


def _hit_rates(results: _Results, grid: RoutingGrid, layer_streams, rhos: list[float], segments: list[int]) -> dict:
    """LRU, LFU, Belady and SCH(m) at every ρ, per layer and model level, into `results`; their times in seconds.
    SCH gives every cache size in one pass per m (moe-lrc's stack algorithm), read here at each ρ's C."""
    S, L = grid.sequences, grid.model.moe_layers
    model_streams = cache.model_streams(grid)
    timings = {}
    for rho in rhos:
        c_layer, c_model = capacities(grid, rho)
        for policy in BASELINES:
            key = f"{policy}_rho{rho_name(rho)}"
            start = time.perf_counter()
            h, a = cache.hit_counts(layer_streams, c_layer, policy)
            results.record(key, h.reshape(S, L), a.reshape(S, L), layered=True)
            h, a = cache.hit_counts(model_streams, c_model, policy)
            results.record(key, h, a, layered=False)
            timings[key] = round(time.perf_counter() - start, 3)
    for m in segments:
        start = time.perf_counter()
        layer_hits, layer_accesses = sch.layer_curves(grid, m)
        model_hits, model_accesses = sch.model_curves(grid, m)
        for rho in rhos:
            c_layer, c_model = capacities(grid, rho)
            key = f"sch_m{m}_rho{rho_name(rho)}"
            results.record(key, layer_hits[:, :, min(c_layer, layer_hits.shape[2]) - 1], layer_accesses, layered=True)
            results.record(key, model_hits[:, min(c_model, model_hits.shape[1]) - 1], model_accesses, layered=False)
        timings[f"sch_m{m}"] = round(time.perf_counter() - start, 3)
    return timings


def _srp(results: _Results, grid: RoutingGrid, segments: list[int]) -> None:
    """SRP(m) for every segment length, model level (with its bootstrap interval) and per layer, into `results`."""
    for m in segments:
        hist = srp_mod.window_histograms(grid, m)  # [S, L, m+1]
        key = f"srp_m{m}"
        model_hist = hist.sum(axis=1)
        results.doc[key] = _float(srp_mod.srp(model_hist.sum(axis=0)))
        results.per_layer[key] = [_float(v) for v in srp_mod.srp(hist.sum(axis=0))]
        if results.weights is not None and model_hist.sum():
            boot = srp_mod.srp(results.weights @ model_hist)
            boot = boot[~np.isnan(boot)]
            if boot.size:
                results.ci[key] = [float(q) for q in np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])]


def _routing_stats(per_layer: dict, grid: RoutingGrid) -> tuple[np.ndarray, np.ndarray, int]:
    """Popularity, consecutive overlap and next-layer predictability per layer, into `per_layer`; returns the
    accesses per (layer, expert), the co-activation counts and how many experts the top share counts."""
    counts = stats.popularity(grid)
    top = stats.top_experts(grid.model.experts_per_layer)
    per_layer["entropy_bits"] = stats.entropy_bits(counts).tolist()
    per_layer[f"top{top}_share"] = stats.top_share(counts, top).tolist()
    per_layer["consecutive_overlap"] = [_float(v) for v in stats.consecutive_overlap(grid)]
    co = stats.coactivation(grid)
    by_co, by_pop = stats.next_layer_predictability(grid, co, counts)
    per_layer["next_layer_coactivation_topk"] = [_float(v) for v in by_co]
    per_layer["next_layer_popular_topk"] = [_float(v) for v in by_pop]
    return counts, co, top


def _reuse_histogram(grid: RoutingGrid, layer_streams) -> np.ndarray:
    """[L, E+1]: per layer, accesses at each LRU stack distance 0..E-1, then first uses in the sequence (bin E)."""
    L, E, k = grid.model.moe_layers, grid.model.experts_per_layer, grid.model.top_k
    distances = cache.lru_distances(layer_streams)
    # Packed row p of block t belongs to stream order[p]; its layer is order[p] % L.
    packed_stream = np.concatenate([layer_streams.order[:n] for n in layer_streams.active]) if layer_streams.steps else np.zeros(0, int)
    packed_layer = np.repeat((packed_stream % L)[:, None], k, axis=1)
    valid = layer_streams.keys >= 0
    bins = np.where(distances >= 0, distances, E)  # bin E = first use in the sequence
    return np.bincount((packed_layer * (E + 1) + bins)[valid], minlength=L * (E + 1)).reshape(L, E + 1)


def _tables(grid: RoutingGrid, per_layer: dict, counts: np.ndarray, reuse: np.ndarray, co: np.ndarray) -> dict:
    """The tables `write_outputs` writes, as dicts of column arrays."""
    L, E = grid.model.moe_layers, grid.model.experts_per_layer
    return {
        "per_layer": per_layer,
        "popularity": {"layer": np.repeat(np.arange(L), E), "expert": np.tile(np.arange(E), L),
                       "count": counts.ravel(), "share": (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).ravel()},
        "reuse_distance": {"layer": np.repeat(np.arange(L), E + 1), "distance": np.tile(np.append(np.arange(E), -1), L),
                           "count": reuse.ravel()},
        "coactivation": {"layer": np.repeat(np.arange(L - 1), E * E), "expert": np.tile(np.repeat(np.arange(E), E), L - 1),
                         "next_expert": np.tile(np.arange(E), (L - 1) * E), "count": co.ravel()},
    }


def summary_rows(doc: dict) -> list[dict]:
    """Model-level metrics as rows (metric, value, ci_low, ci_high, per-layer mean)."""
    rows = []
    for key, value in doc.items():
        if key.startswith(("sch_", "srp_", "lru_", "lfu_", "belady_")):
            lo, hi = doc["ci"].get(key, [None, None])
            rows.append({"metric": key, "value": value, "ci_low": lo, "ci_high": hi,
                         "per_layer_mean": doc["per_layer_mean"].get(key)})
    return rows


def write_outputs(doc: dict, tables: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Tables as Parquet and CSV, and the figures, into `out_dir`; returns the files written."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    frames = {"summary": pd.DataFrame(summary_rows(doc))}
    frames.update({name: pd.DataFrame(columns) for name, columns in tables.items()})
    for name, frame in frames.items():
        for suffix, write in ((".parquet", lambda f, p: f.to_parquet(p, index=False)), (".csv", lambda f, p: f.to_csv(p, index=False))):
            path = out / f"{name}{suffix}"
            write(frame, path)
            written.append(path)
    written += _figures(doc, frames["popularity"], out)
    return written


def _figures(doc: dict, popularity, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    paths = []
    share = popularity.pivot(index="layer", columns="expert", values="share")
    fig, ax = plt.subplots(figsize=(max(6, share.shape[1] * 0.18), max(3, share.shape[0] * 0.25)))
    sns.heatmap(share, cmap="viridis", ax=ax, cbar_kws={"label": "share of the layer's accesses"})
    ax.set_title(f"{doc['model']}: expert popularity ({Path(doc['file']).name})")
    fig.tight_layout()
    paths.append(out / "popularity_heatmap.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    rows = []
    for scope, source in (("model level", doc), ("per-layer mean", doc["per_layer_mean"])):
        for rho in doc["rhos"]:
            name = rho_name(rho)
            for m in doc["segments"]:
                rows.append({"scope": scope, "rho": rho, "policy": f"SCH(m={m})", "hit rate": source.get(f"sch_m{m}_rho{name}")})
            for p in BASELINES:
                rows.append({"scope": scope, "rho": rho, "policy": p.upper() if p != "belady" else "Belady",
                             "hit rate": source.get(f"{p}_rho{name}")})
    frame = pd.DataFrame(rows)
    grid = sns.relplot(data=frame, x="rho", y="hit rate", hue="policy", col="scope", kind="line", marker="o",
                       height=3.5, aspect=1.1)
    grid.set(xscale="log", xlabel="cache ratio ρ", xticks=doc["rhos"], xticklabels=[rho_name(r) for r in doc["rhos"]])
    grid.figure.suptitle(f"{doc['model']}: hit rate vs cache ratio (C = ρ·k per layer, ρ·L·k at model level)", y=1.03)
    paths.append(out / "sch_vs_rho.png")
    grid.figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    return paths


def format_report(doc: dict) -> str:
    """A short human-readable table of the model-level results."""
    lines = [f"{doc['file']}: {doc['model']}, {doc['sequences']:,} sequences, {doc['tokens']:,} tokens, "
             f"{doc['accesses']:,} accesses",
             f"{'metric':<18}{'model':>8}{'95% CI':>18}{'layer mean':>12}"]
    for row in summary_rows(doc):
        ci = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row["ci_low"] is not None else ""
        value, mean = (("n/a" if v is None else f"{v:.3f}") for v in (row["value"], row["per_layer_mean"]))
        lines.append(f"{row['metric']:<18}{value:>8}{ci:>18}{mean:>12}")
    lines.append(f"in {doc['timings_s']['total']:.1f} s")
    return "\n".join(lines)


def _mean(values) -> float | None:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    return None if np.isnan(v).all() else float(np.nanmean(v))


def _float(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v
