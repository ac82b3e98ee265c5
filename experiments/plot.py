"""`moe-sim-plot`: the figures of a sweep, as PNG and PDF, with one fixed colour per policy in every figure.

Each figure is drawn only when the sweep has its dimension (two cache sizes for a curve, two machine profiles for
the hardware bars, two traces for the locality figure, timed runs for times); otherwise a line says why it was
skipped. Other config keys that vary in the sweep (trace, scope, dtype, ...) become panels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import textwrap
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from experiments.report import labels, load_layers, load_runs, varying  # noqa: E402
from experiments.results import TIMELINE_FILE  # noqa: E402
from simulator.errors import InputError  # noqa: E402

POLICY_COLOURS = {
    "lru": "#0072B2",  # Okabe-Ito palette: distinguishable with colour-blindness and in greyscale print
    "lfu": "#E69F00",
    "fifo": "#009E73",
    "random": "#999999",
    "static": "#CC79A7",
    "arc": "#D55E00",
    "sieve": "#56B4E9",
    "s3fifo": "#00543C",  # darker kin of fifo
    "lfu-aging": "#8C6D00",  # darker kin of lfu
    "lirs": "#3B3B98",
    "moe-infinity": "#A6192E",
    "finemoe": "#6A3D9A",
    "belady": "#000000",  # the offline bound, drawn dashed
}
BOUND = "belady"
_EXTRA = sns.color_palette("dark", 10).as_hex()


def policy_colour(name: str) -> str:
    """The policy's fixed colour; a policy without one gets a colour from its name, so it too never changes."""
    return POLICY_COLOURS.get(name) or _EXTRA[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(_EXTRA)]


def policy_order(names) -> list[str]:
    known = [p for p in POLICY_COLOURS if p in set(names) and p != BOUND]
    rest = sorted(set(names) - set(POLICY_COLOURS))
    return known + rest + ([BOUND] if BOUND in set(names) else [])


def line_style(policy: str) -> dict:
    if policy == BOUND:
        return dict(color=policy_colour(policy), linestyle="--", linewidth=1.2, marker=None, label=f"{policy} (bound)")
    return dict(color=policy_colour(policy), linestyle="-", linewidth=1.2, marker="o", markersize=2.5, label=policy)


def set_style() -> None:
    sns.set_theme(context="paper", style="ticks", font_scale=0.9, rc={
        "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "axes.spines.top": False,
        "axes.spines.right": False, "legend.frameon": False, "pdf.fonttype": 42, "ps.fonttype": 42,
        "savefig.dpi": 300, "figure.dpi": 100,
    })


def save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return paths


def panels(table: pd.DataFrame, dims: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """One (title, rows) per combination of the `dims` values (missing values labelled `n/a`); titles wrap so that
    neighbouring panels' titles do not run into each other."""
    if not dims:
        return [("", table)]
    groups = table.groupby([labels(table[d]) for d in dims], sort=True)
    return [("\n".join(textwrap.wrap(", ".join(f"{d}={v}" for d, v in zip(dims, key if isinstance(key, tuple) else (key,))), 40)), sub)
            for key, sub in groups]


def grid(n: int, ncols: int, size=(3.2, 2.4), sharey=True):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             sharey=sharey, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def capacity_label(sub: pd.DataFrame) -> str:
    scopes = set(sub["cache.scope"])
    return "cache size (experts per layer)" if scopes == {"layer"} else "cache size (experts in all)" if scopes == {"global"} else "cache size"


def gb_axis(ax, sub: pd.DataFrame) -> None:
    """A top axis in GB when the panel has one model and one scope (cache_gb is proportional to capacity)."""
    ratio = (sub["cache_gb"] / sub["cache.capacity"]).round(12)
    if ratio.nunique() == 1:
        k = float(ratio.iloc[0])
        top = ax.secondary_xaxis("top", functions=(lambda c: c * k, lambda g: g / k))
        top.set_xlabel("cache size (GB)")


def policy_legend(fig, policies) -> None:
    handles = [Line2D([], [], **line_style(p)) for p in policy_order(policies)]
    fig.legend(handles=handles, loc="outside right upper", title="policy")


def per_policy_lines(ax, sub: pd.DataFrame, y: str, scale: float = 1.0) -> None:
    for policy in policy_order(sub["policy"].unique()):
        data = sub[sub["policy"] == policy].groupby("cache.capacity", as_index=False)[y].mean()
        ax.plot(data["cache.capacity"], data[y] * scale, **line_style(policy))


# ---- the figures: each returns the paths written, or a note saying why it was skipped ------------------------------

def hit_rate_vs_capacity(runs: pd.DataFrame, out_dir: Path, **_) -> list[Path] | str:
    if runs["cache.capacity"].nunique() < 2:
        return "one cache size only"
    dims = varying(runs, {"hardware", "replay.timed"})  # hit rate does not depend on the machine
    parts = panels(runs, dims)
    fig, axes = grid(len(parts), 3)
    for ax, (title, sub) in zip(axes, parts):
        per_policy_lines(ax, sub, "hit_rate")
        ax.set(title=title, xlabel=capacity_label(sub), ylabel="hit rate", ylim=(0, 1))
        gb_axis(ax, sub)
    policy_legend(fig, runs["policy"].unique())
    return save(fig, out_dir, "hit_rate_vs_capacity")


def stall_vs_capacity(runs: pd.DataFrame, out_dir: Path, **_) -> list[Path] | str:
    timed = runs[runs["time_per_token_s"].notna()] if "time_per_token_s" in runs else runs.iloc[:0]
    if timed.empty:
        return "no timed run (replay.timed=false)"
    if timed["cache.capacity"].nunique() < 2:
        return "one cache size only"
    timed = timed.assign(stall_per_token_s=timed["stall_time_s"] / timed["tokens"],
                         compute_per_token_s=timed["compute_time_s"] / timed["tokens"])
    parts = panels(timed, varying(timed, {"replay.timed"}))
    fig, axes = plt.subplots(len(parts), 2, figsize=(6.4, 2.0 * len(parts) + 0.5), squeeze=False, sharex=True,
                             layout="constrained")
    for row, (title, sub) in zip(axes, parts):
        per_policy_lines(row[0], sub, "stall_per_token_s", 1e3)
        per_policy_lines(row[1], sub, "time_per_token_s", 1e3)
        floor = sub["compute_per_token_s"].mean() * 1e3
        row[1].axhline(floor, color="0.5", linestyle=":", linewidth=1)
        row[1].annotate("compute only", (0.02, floor), xycoords=("axes fraction", "data"), ha="left", va="bottom",
                        fontsize="small", color="0.4")
        for ax, label in zip(row, ["stall per token (ms)", "time per token (ms)"]):
            ax.set(ylabel=label, title=title)
            ax.set_ylim(bottom=0)
    for ax in axes[-1]:
        ax.set_xlabel(capacity_label(timed))
    for ax in axes[0]:
        gb_axis(ax, timed)
    policy_legend(fig, timed["policy"].unique())
    return save(fig, out_dir, "stall_and_time_vs_capacity")


def hardware_bars(runs: pd.DataFrame, out_dir: Path, max_capacities: int = 3, **_) -> list[Path] | str:
    timed = runs[runs["time_per_token_s"].notna()] if "time_per_token_s" in runs else runs.iloc[:0]
    if timed["hardware"].nunique() < 2 if len(timed) else True:
        return "fewer than two machine profiles with timed runs"
    capacities = sorted(timed["cache.capacity"].unique())
    if len(capacities) > max_capacities:
        picks = [capacities[round(i * (len(capacities) - 1) / (max_capacities - 1))] for i in range(max_capacities)]
        print(f"  hardware bars: {len(capacities)} cache sizes in the sweep, drawing {picks}")
        timed = timed[timed["cache.capacity"].isin(picks)]
    parts = panels(timed, [*varying(timed, {"hardware", "replay.timed"}), "cache.capacity"])
    order = timed.groupby("hardware")["time_per_token_s"].mean().sort_values(ascending=False).index.tolist()
    policies = policy_order(timed["policy"].unique())
    width = 0.8 / len(policies)
    fig, axes = grid(len(parts), 3, size=(0.4 * len(order) + 1.0, 2.6), sharey=True)
    for ax, (title, sub) in zip(axes, parts):
        for j, policy in enumerate(policies):
            data = sub[sub["policy"] == policy].groupby("hardware").mean(numeric_only=True).reindex(order)
            x = np.arange(len(order)) + (j - (len(policies) - 1) / 2) * width
            total = data["time_per_token_s"] * 1e3
            compute = data["compute_time_s"] / data["tokens"] * 1e3
            ax.bar(x, total, width, color=policy_colour(policy), edgecolor="white", linewidth=0.3)
            ax.bar(x, compute, width, color="white", alpha=0.55, hatch="////", edgecolor="0.3", linewidth=0)
        ax.set_xticks(np.arange(len(order)), order, rotation=35, ha="right")
        ax.set(title=title, ylabel="time per token (ms)", xlabel="")
    handles = [Patch(color=policy_colour(p), label=p) for p in policies]
    handles.append(Patch(facecolor="white", hatch="////", edgecolor="0.3", label="compute share"))
    fig.legend(handles=handles, loc="outside right upper", title="policy")
    return save(fig, out_dir, "hardware_time_per_token")


def per_layer_heatmap(runs: pd.DataFrame, out_dir: Path, sweep_dir: Path, **_) -> list[Path] | str:
    # the machine does not change hits: one profile's runs stand for all
    runs = runs[runs["hardware"] == sorted(runs["hardware"].unique())[0]]
    layers = load_layers(sweep_dir, runs)
    if layers.empty:
        return "no per_layer.parquet in the sweep"
    dims = varying(runs, {"hardware", "replay.timed"})
    by_capacity = runs["cache.capacity"].nunique() >= 2
    layers = layers.merge(runs[["run", *[d for d in dims if d not in layers]]], on="run")
    parts = panels(layers, [*dims, "policy"] if by_capacity else dims)
    policies = policy_order(layers["policy"].unique())
    ncols = 3
    if by_capacity:  # a panel per policy (layer × capacity); a row per value of the other varying keys
        parts.sort(key=lambda p: (p[0].rsplit("policy=", 1)[0], policies.index(p[1]["policy"].iloc[0])))
        ncols = len(policies) if dims else 3
    n_layers = layers["layer"].nunique()
    fig, axes = grid(len(parts), ncols, size=(3.0, 0.11 * n_layers + 1.0), sharey=False)
    for ax, (title, sub) in zip(axes, parts):
        column = "cache.capacity" if by_capacity else "policy"
        table = sub.pivot_table(index="layer", columns=column, values="hit_rate", aggfunc="mean")
        if not by_capacity:
            table = table[policy_order(table.columns)]
        sns.heatmap(table, ax=ax, vmin=0, vmax=1, cmap="viridis", cbar=False, square=False,
                    xticklabels=max(1, table.shape[1] // 12), yticklabels=max(1, n_layers // 13))
        ax.set(title=title, xlabel=capacity_label(sub) if by_capacity else "policy", ylabel="MoE layer")
        ax.tick_params(axis="both", labelsize="x-small")
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap="viridis"), ax=axes, label="hit rate",
                 shrink=0.6)
    return save(fig, out_dir, "per_layer_hit_rate")


def locality_across_traces(runs: pd.DataFrame, out_dir: Path, **_) -> list[Path] | str:
    if runs["trace"].nunique() < 2:
        return "one trace only"
    if runs["cache.capacity"].nunique() < 2:
        return "one cache size only"
    dims = [d for d in varying(runs, {"hardware", "replay.timed"}) if d not in ("trace", "trace.path")]
    policies = policy_order(runs["policy"].unique())
    parts = panels(runs, [*dims, "policy"])
    parts.sort(key=lambda p: policies.index(p[1]["policy"].iloc[0]))
    traces = sorted(runs["trace"].unique())
    colours = dict(zip(traces, sns.color_palette("Set2", len(traces))))
    fig, axes = grid(len(parts), 3)
    for ax, (title, sub) in zip(axes, parts):
        for trace in traces:
            data = sub[sub["trace"] == trace].groupby("cache.capacity", as_index=False)["hit_rate"].mean()
            ax.plot(data["cache.capacity"], data["hit_rate"], marker="o", markersize=2.5, color=colours[trace], label=trace)
        ax.set(title=title, xlabel=capacity_label(sub), ylabel="hit rate", ylim=(0, 1))
    handles = [Line2D([], [], color=colours[t], marker="o", markersize=2.5, label=t) for t in traces]
    fig.legend(handles=handles, loc="outside right upper", title="trace")
    return save(fig, out_dir, "locality_across_traces")


# ---- batched serving (serve=continuous): throughput and latency ----------------------------------------------------

SERVE_KEYS = {"serve.mode", "serve.max_batch", "serve.arrival", "serve.rate_rps", "replay.timed"}
CAPACITY_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CAPACITY_STYLES = ("-", "--", ":", "-.")


def serving_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The timed batched-serving runs (serve=continuous) that report throughput."""
    if "serve.mode" not in runs or "throughput_tok_s" not in runs:
        return runs.iloc[:0]
    return runs[(runs["serve.mode"] == "continuous") & runs["throughput_tok_s"].notna()]


def policy_capacity_lines(ax, sub: pd.DataFrame, x: str, y: str, capacities: list, scale: float = 1.0,
                          linestyle: str | None = None) -> None:
    """One line per policy × cache size: colour by policy, marker (and dash) by cache size."""
    for policy in policy_order(sub["policy"].unique()):
        for i, capacity in enumerate(capacities):
            rows = sub[(sub["policy"] == policy) & (sub["cache.capacity"] == capacity)]
            if rows.empty:
                continue
            data = rows.groupby(x, as_index=False)[y].mean().sort_values(x)
            ax.plot(data[x], data[y] * scale, color=policy_colour(policy),
                    linestyle=linestyle or CAPACITY_STYLES[i % len(CAPACITY_STYLES)], linewidth=1.2,
                    marker=CAPACITY_MARKERS[i % len(CAPACITY_MARKERS)], markersize=3)


def policy_capacity_legend(fig, policies, capacities, extra: list | None = None) -> None:
    handles = [Line2D([], [], color=policy_colour(p), linewidth=1.2, label=p) for p in policy_order(policies)]
    handles += [Line2D([], [], color="0.3", linestyle=CAPACITY_STYLES[i % len(CAPACITY_STYLES)],
                       marker=CAPACITY_MARKERS[i % len(CAPACITY_MARKERS)], markersize=3, label=f"capacity {c}")
                for i, c in enumerate(capacities)]
    fig.legend(handles=handles + (extra or []), loc="outside right upper", title="policy, cache size")


def throughput_vs_batch(runs: pd.DataFrame, out_dir: Path, **_) -> list[Path] | str:
    """Throughput (tok/s) and expert hit rate against serve.max_batch, offline arrivals (every request at t=0): a
    row of two panels per value of the other varying keys."""
    served = serving_runs(runs)
    if served.empty:
        return "no timed batched-serving run (serve=continuous)"
    if "serve.arrival" in served:
        served = served[served["serve.arrival"] == "offline"]
    if served.empty:
        return "no run with offline arrivals (serve.arrival=offline)"
    if served["serve.max_batch"].nunique() < 2:
        return "one batch size only (serve.max_batch)"
    hit = "expert_hit_rate" if "expert_hit_rate" in served and served["expert_hit_rate"].notna().all() else "hit_rate"
    parts = panels(served, varying(served, SERVE_KEYS))
    capacities = sorted(served["cache.capacity"].unique())
    fig, axes = plt.subplots(len(parts), 2, figsize=(6.6, 2.2 * len(parts) + 0.4), squeeze=False, sharex=True,
                             layout="constrained")
    for row, (title, sub) in zip(axes, parts):
        policy_capacity_lines(row[0], sub, "serve.max_batch", "throughput_tok_s", capacities)
        policy_capacity_lines(row[1], sub, "serve.max_batch", hit, capacities)
        row[0].set(ylabel="throughput (tok/s)", title=title)
        row[0].set_ylim(bottom=0)
        row[1].set(ylabel="expert hit rate" if hit == "expert_hit_rate" else "hit rate", title=title, ylim=(0, 1))
    batches = sorted(served["serve.max_batch"].unique())
    for ax in axes[-1]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("max batch (requests)")
    policy_capacity_legend(fig, served["policy"].unique(), capacities)
    return save(fig, out_dir, "throughput_vs_batch")


def latency_vs_rate(runs: pd.DataFrame, out_dir: Path, **_) -> list[Path] | str:
    """TTFT and TPOT (p50 solid, p99 dashed) against the Poisson request rate serve.rate_rps: a row of two panels
    per value of the other varying keys (batch size, ...)."""
    served = serving_runs(runs)
    if "serve.arrival" in served:
        served = served[served["serve.arrival"] == "poisson"]
    if served.empty or "ttft_p50_s" not in served:
        return "no timed batched-serving run with Poisson arrivals (serve=continuous serve.arrival=poisson)"
    if served["serve.rate_rps"].nunique() < 2:
        return "one request rate only (serve.rate_rps)"
    parts = panels(served, varying(served, SERVE_KEYS - {"serve.max_batch"}))
    capacities = sorted(served["cache.capacity"].unique())
    fig, axes = plt.subplots(len(parts), 2, figsize=(6.6, 2.2 * len(parts) + 0.4), squeeze=False, sharex=True,
                             layout="constrained")
    for row, (title, sub) in zip(axes, parts):
        for ax, metric, label in zip(row, ("ttft", "tpot"), ("TTFT (s)", "TPOT (ms)")):
            scale = 1.0 if metric == "ttft" else 1e3
            policy_capacity_lines(ax, sub, "serve.rate_rps", f"{metric}_p50_s", capacities, scale, linestyle="-")
            policy_capacity_lines(ax, sub, "serve.rate_rps", f"{metric}_p99_s", capacities, scale, linestyle="--")
            ax.set(ylabel=label, title=title)
            ax.set_ylim(bottom=0)
    for ax in axes[-1]:
        ax.set_xlabel("request rate (requests/s, Poisson)")
    extra = [Line2D([], [], color="0.3", linestyle="-", label="p50"), Line2D([], [], color="0.3", linestyle="--", label="p99")]
    policy_capacity_legend(fig, served["policy"].unique(), capacities, extra)
    return save(fig, out_dir, "latency_vs_rate")


def time_vs_cpu_layers(runs: pd.DataFrame, out_dir: Path, **_) -> list[Path] | str:
    """Time per token and CPU utilisation against the MoE layers whose experts run on the CPU
    (`placement=static-layers placement.cpu_layers=N`, llama.cpp's --n-cpu-moe): a row of two panels per value of
    the other varying keys, a line per policy × cache size."""
    if "placement" not in runs or "placement.cpu_layers" not in runs:
        return "no placement=static-layers run"
    placed = runs[(runs["placement"] == "static-layers") & runs["time_per_token_s"].notna()].copy()
    placed = placed[placed["placement.cpu_layers"].map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))]
    if placed["placement.cpu_layers"].nunique() < 2:
        return "one value of placement.cpu_layers only (a number of layers)"
    parts = panels(placed, varying(placed, {"placement.cpu_layers"}))
    capacities = sorted(placed["cache.capacity"].unique())
    fig, axes = plt.subplots(len(parts), 2, figsize=(6.6, 2.2 * len(parts) + 0.4), squeeze=False, sharex=True,
                             layout="constrained")
    for row, (title, sub) in zip(axes, parts):
        policy_capacity_lines(row[0], sub, "placement.cpu_layers", "time_per_token_s", capacities, 1e3)
        policy_capacity_lines(row[1], sub, "placement.cpu_layers", "cpu_utilisation", capacities)
        row[0].set(ylabel="time per token (ms)", title=title)
        row[0].set_ylim(bottom=0)
        row[1].set(ylabel="CPU utilisation", title=title, ylim=(0, 1))
    for ax in axes[-1]:
        ax.set_xlabel("MoE layers on the CPU (--n-cpu-moe)")
    policy_capacity_legend(fig, placed["policy"].unique(), capacities)
    return save(fig, out_dir, "time_vs_cpu_layers")


TIMELINE_COLOURS = {
    "non-expert": "#BBBBBB",
    "issue prefetches": "#882255",
    "issue fetches": "#CC79A7",
    "resident experts": "#009E73",
    "fetched expert": "#E69F00",
    "demand": "#0072B2",
    "prefetch": "#56B4E9",
    "iteration": "#44AA99",
}
RESOURCES = ("iteration", "gpu", "h2d", "gds", "nvme")
"""Timeline rows, top to bottom; `iteration` (batched serving): one span per iteration, id = its tokens, what =
"N requests"."""
ITERATION_SHADES = ("#44AA99", "#2D7367")
"""Alternate shades, so that back-to-back iterations stay apart."""


def timeline_gantt(runs: pd.DataFrame, out_dir: Path, sweep_dir: Path, max_runs: int = 4, **_) -> list[Path] | str:
    """Gantt chart of GPU and link activity over the recorded token window (`replay.timeline=[first,last]`), one
    panel per run that recorded one (at most `max_runs`)."""
    recorded = [(run, Path(sweep_dir) / run / TIMELINE_FILE) for run in runs["run"]]
    recorded = [(run, path) for run, path in recorded if path.exists()][:max_runs]
    if not recorded:
        return "no run recorded a timeline (set replay.timeline=[first,last])"
    fig, axes = plt.subplots(len(recorded), 1, figsize=(7.5, 1.5 + 1.1 * len(recorded)), squeeze=False,
                             layout="constrained")
    for ax, (run, path) in zip(axes[:, 0], recorded):
        events = pd.read_parquet(path)
        origin = events["start_s"].min()
        rows = [r for r in RESOURCES if r in set(events["resource"])]
        for y, resource in enumerate(rows):
            mine = events[events["resource"] == resource]
            if resource == "iteration":
                iteration_row(ax, mine.sort_values("start_s"), origin, y)
                continue
            for what, group in mine.groupby("what"):
                spans = list(zip((group["start_s"] - origin) * 1e3, (group["end_s"] - group["start_s"]) * 1e3))
                ax.broken_barh(spans, (y - 0.35, 0.7), color=TIMELINE_COLOURS.get(what, "#999999"), linewidth=0)
        ax.set_yticks(range(len(rows)), rows)
        ax.set(xlabel="time from window start (ms)", title=run)
        ax.invert_yaxis()
    handles = [Patch(color=c, label=w) for w, c in TIMELINE_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    return save(fig, out_dir, "timeline")


def iteration_row(ax, events: pd.DataFrame, origin: float, y: int, max_labels: int = 40) -> None:
    """Batched serving's iterations as one row of spans in alternating shades, each labelled with its tokens and
    requests (`id` tokens, `what` "N requests") when there are few enough to read."""
    starts = ((events["start_s"] - origin) * 1e3).to_numpy()
    widths = ((events["end_s"] - events["start_s"]) * 1e3).to_numpy()
    for k, shade in enumerate(ITERATION_SHADES):
        spans = list(zip(starts[k::2], widths[k::2]))
        if spans:
            ax.broken_barh(spans, (y - 0.35, 0.7), color=shade, linewidth=0)
    if 0 < len(events) <= max_labels:
        for start, width, tokens, what in zip(starts, widths, events["id"], events["what"]):
            requests = str(what).split()[0]
            ax.annotate(f"{tokens}t/{requests}r", (start + width / 2, y), ha="center", va="center",
                        fontsize=4, color="white")


FIGURES: dict[str, Callable] = {
    "hit_rate_vs_capacity": hit_rate_vs_capacity,
    "stall_and_time_vs_capacity": stall_vs_capacity,
    "hardware_time_per_token": hardware_bars,
    "per_layer_hit_rate": per_layer_heatmap,
    "locality_across_traces": locality_across_traces,
    "timeline": timeline_gantt,
}
SERVING_FIGURES: dict[str, Callable] = {
    "throughput_vs_batch": throughput_vs_batch,
    "latency_vs_rate": latency_vs_rate,
}
"""Drawn (or reported skipped) only for a sweep with batched-serving runs (serve=continuous)."""
PLACEMENT_FIGURES: dict[str, Callable] = {
    "time_vs_cpu_layers": time_vs_cpu_layers,
}
"""Drawn (or reported skipped) only for a sweep with placement=static-layers runs."""


def plot_sweep(sweep_dir: Path, out_dir: Path) -> dict[str, list[Path] | str]:
    """Every figure the sweep supports; returns figure name -> files written, or the reason it was skipped."""
    set_style()
    runs = load_runs(sweep_dir)
    figures = dict(FIGURES)
    if "serve.mode" in runs and (runs["serve.mode"] == "continuous").any():
        figures |= SERVING_FIGURES
    if "placement" in runs and (runs["placement"] == "static-layers").any():
        figures |= PLACEMENT_FIGURES
    return {name: draw(runs, out_dir, sweep_dir=Path(sweep_dir)) for name, draw in figures.items()}


def hit_rate_curves(curve_files: list[Path], out_dir: Path) -> list[Path]:
    """Hit rate against cache size from `moe-trace curve` JSONs (one line each, in the policy's colour; Belady
    dashed), one panel per scope, since the capacities of the two scopes count different things."""
    curves = []
    for path in curve_files:
        try:
            doc = json.loads(Path(path).read_text())
            curves.append((Path(path).stem, doc["policy"], doc["scope"], doc["capacities"], doc["hit_rate"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: not a moe-trace curve JSON ({type(err).__name__}: {err})") from None
    set_style()
    scopes = sorted({c[2] for c in curves})
    fig, axes = grid(len(scopes), 2, sharey=True)
    for ax, scope in zip(axes, scopes):
        for name, policy, _, capacities, rates in (c for c in curves if c[2] == scope):
            style = line_style(policy) | {"marker": None, "label": f"{name} ({policy})"}
            ax.plot(capacities, rates, **style)
        ax.set(title=f"scope={scope}", xlabel="cache size (experts per layer)" if scope == "layer" else
               "cache size (experts in all)", ylabel="hit rate", ylim=(0, 1))
        ax.legend(fontsize="small")
    return save(fig, out_dir, "hit_rate_curve")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["curve"]:
        return _main_curve(argv[1:])
    parser = argparse.ArgumentParser(prog="moe-sim-plot", description="Draw the figures of a sweep (PNG and PDF); "
                                     "`moe-sim-plot curve A.json ... --out DIR` draws `moe-trace curve` outputs.")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the figures (default SWEEP_DIR/figures)")
    args = parser.parse_args(argv)
    out = args.out or args.sweep_dir / "figures"
    try:
        results = plot_sweep(args.sweep_dir, out)
    except InputError as err:
        print(f"moe-sim-plot: {err}", file=sys.stderr)
        sys.exit(2)
    for name, result in results.items():
        print(f"{name}: " + (", ".join(str(p) for p in result) if isinstance(result, list) else f"skipped ({result})"))


def _main_curve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="moe-sim-plot curve", description="Hit rate against cache size from "
                                     "`moe-trace curve` JSONs (PNG and PDF).")
    parser.add_argument("curves", nargs="+", metavar="CURVE.json", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the figure")
    args = parser.parse_args(argv)
    try:
        paths = hit_rate_curves(args.curves, args.out)
    except InputError as err:
        print(f"moe-sim-plot: {err}", file=sys.stderr)
        sys.exit(2)
    print("hit_rate_curve: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
