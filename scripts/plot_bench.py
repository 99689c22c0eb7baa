#!/usr/bin/env python3
"""Draws the benchmark plots (SVG) from target/bench/results.json.

Usage: plot_bench.py [RESULTS_JSON] [OUT_DIR]

Defaults: target/bench/results.json and docs/. Needs matplotlib;
scripts/bench.sh --plot installs it into a venv under target/. A plot whose
figures are missing from the JSON is skipped with a note, so a partial run
still plots what it has. Schema: docs/performance.md, "results.json".
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

matplotlib.rcParams["svg.hashsalt"] = "snp-bench"  # stable SVG ids
matplotlib.rcParams["svg.fonttype"] = "none"


def figures(doc, bench, figure):
    return [b for b in doc["benches"] if b["bench"] == bench and b["figure"] == figure]


def subtitle(doc):
    m = doc["machine"]
    quick = ", QUICK MODE" if m.get("quick") else ""
    return f"{m['cpus']} CPUs, kernel {m['kernel']}, {m['date']}, {m['git_commit']}{quick}"


def save(fig, out, name):
    path = out / name
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    print(f"plot_bench: wrote {path}")


def cdf(ax, samples, label, style):
    xs = sorted(x for x in samples if x is not None)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    if len(xs) > 400:  # keep the SVG small: 400 evenly spaced ranks
        idx = [round(k * (len(xs) - 1) / 399) for k in range(400)]
        xs, ys = [xs[i] for i in idx], [ys[i] for i in idx]
    ax.step(xs, ys, where="post", label=label, linestyle=style)


def plot_wake_cdf(doc, out):
    rows = {b["figure"]: b for b in figures_any(doc, "lock_wake")}
    need = ["wake_ours", "wake_floor_setlkw", "wake_qemu_v1_returns"]
    if not all(n in rows and rows[n].get("samples") for n in need):
        print("plot_bench: no lock_wake samples: skipping wake_cdf")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    cdf(ax, rows["wake_floor_setlkw"]["samples"], "floor: bare F_OFD_SETLKW", ":")
    cdf(ax, rows["wake_ours"]["samples"], "ours: snp_certs::lock::lock", "-")
    if "wake_qemu_v1_taken" in rows:
        cdf(ax, rows["wake_qemu_v1_taken"]["samples"], "QEMU v1 1 ms poll: lock taken", "-.")
    cdf(ax, rows["wake_qemu_v1_returns"]["samples"], "QEMU v1 1 ms poll: returns", "--")
    ax.set_xscale("log")
    ax.set_xlabel("unlock -> reader holds the lock (µs, log)")
    ax.set_ylabel("fraction of waits")
    ax.set_title("Wake-up latency CDF\n" + subtitle(doc), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out, "bench-wake-cdf.svg")


def figures_any(doc, bench):
    return [b for b in doc["benches"] if b["bench"] == bench]


def plot_writer(doc, out):
    rows = sorted(figures(doc, "writer_starvation", "writer_wait"),
                  key=lambda b: b["params"]["readers"])
    if not rows:
        print("plot_bench: no writer_starvation figures: skipping")
        return
    xs = [max(b["params"]["readers"], 0.5) for b in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^-."), ("max", "x:")):
        ax.plot(xs, [b["values"][key] for b in rows], style, label=key)
    ax.axhline(10, color="red", linewidth=0.8, label="target p99 10 ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(b["params"]["readers"]) for b in rows])
    ax.set_xlabel("hammering reader processes (0 = floor)")
    ax.set_ylabel("ExclusiveLock::acquire wait (ms, log)")
    ax.set_title("Writer wait vs hammering readers\n" + subtitle(doc), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out, "bench-writer-wait.svg")


def plot_herd(doc, out):
    rows = figures(doc, "update_herd", "herd_completion")
    cpu = figures(doc, "update_herd", "herd_cpu_per_waiter")
    if not rows:
        print("plot_bench: no update_herd figures: skipping")
        return
    holds = sorted({b["params"]["hold_ms"] for b in rows})
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"ours": "o-", "floor": "s:", "qemu_v1": "^--"}
    for method in ("ours", "floor", "qemu_v1"):
        for hold in holds:
            sel = sorted((b for b in rows if b["params"]["method"] == method
                          and b["params"]["hold_ms"] == hold),
                         key=lambda b: b["params"]["waiters"])
            if sel:
                ax.plot([b["params"]["waiters"] for b in sel],
                        [b["values"]["p50"] / 1e3 for b in sel],
                        styles[method], label=f"{method}, hold {hold} ms")
            csel = sorted((b for b in cpu if b["params"]["method"] == method
                           and b["params"]["hold_ms"] == hold),
                          key=lambda b: b["params"]["waiters"])
            if csel:
                bx.plot([b["params"]["waiters"] for b in csel],
                        [b["values"]["p50"] for b in csel],
                        styles[method], label=f"{method}, hold {hold} ms")
    ax.axhline(5, color="red", linewidth=0.8, label="target 5 ms")
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("waiting requests")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("unlock -> last served (ms, median, log)")
    bx.set_ylabel("CPU per waiter over the wait (µs, median, log)")
    ax.set_title("Herd completion", fontsize=9)
    bx.set_title("CPU burnt while waiting", fontsize=9)
    fig.suptitle("Update herd\n" + subtitle(doc), fontsize=9)
    save(fig, out, "bench-herd.svg")


def plot_scale(doc, out):
    size = sorted(figures(doc, "serve_scale", "serve_vs_size"),
                  key=lambda b: b["params"]["table_kib"])
    thr = sorted(figures(doc, "serve_scale", "serve_vs_threads_cpu"),
                 key=lambda b: b["params"]["threads"])
    if not size or not thr:
        print("plot_bench: no serve_scale figures: skipping")
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot([b["params"]["table_kib"] for b in size], [b["values"]["p50"] for b in size],
            "o-", label="ours: serve()")
    ax.plot([b["params"]["table_kib"] for b in size], [b["floor"]["p50"] for b in size],
            "s:", label="floor: open+lock+pread+unlock+close")
    ax.set_xlabel("table size (KiB)")
    ax.set_ylabel("ns per request (median)")
    ax.set_ylim(bottom=0)
    ax.set_title("Cost vs table size", fontsize=9)
    bx.plot([b["params"]["threads"] for b in thr], [b["values"]["p50"] for b in thr],
            "o-", label="ours: serve()")
    bx.plot([b["params"]["threads"] for b in thr], [b["floor"]["p50"] for b in thr],
            "s:", label="floor")
    bx.set_xscale("log", base=2)
    bx.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    bx.set_ylim(bottom=0)
    bx.set_xlabel("concurrent vCPU threads, one file")
    bx.set_ylabel("process CPU ns per request (median)")
    bx.set_title("Cost vs concurrent threads", fontsize=9)
    for a in (ax, bx):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("serve_scale\n" + subtitle(doc), fontsize=9)
    save(fig, out, "bench-serve-scale.svg")


def plot_api(doc, out):
    rows = figures(doc, "api_load", "api_rtt")
    if not rows:
        print("plot_bench: no api_load figures: skipping")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, clients in zip(axes, (1, 8)):
        sel = [b for b in rows if b["params"]["clients"] == clients and b.get("samples")]
        for b in sel:
            cdf(ax, b["samples"], b["params"]["route"], "-")
        ax.set_xscale("log")
        ax.set_xlabel("round trip (µs, log)")
        ax.set_title(f"{clients} client(s)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.axvline(300, color="red", linewidth=0.8)
    axes[0].set_ylabel("fraction of requests")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("API round trips to a live snp-vmm (red: 300 µs)\n" + subtitle(doc),
                 fontsize=9)
    save(fig, out, "bench-api.svg")


def main():
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.json")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs")
    doc = json.loads(results.read_text())
    if doc.get("schema") != 1:
        sys.exit(f"plot_bench: {results}: schema {doc.get('schema')!r}, expected 1")
    out.mkdir(parents=True, exist_ok=True)
    plot_wake_cdf(doc, out)
    plot_writer(doc, out)
    plot_herd(doc, out)
    plot_scale(doc, out)
    plot_api(doc, out)


if __name__ == "__main__":
    main()
