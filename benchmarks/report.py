"""What bench_peers makes of its results.json: the generated section of BENCHMARKS.md, PNG plots
and the stdout table. Pure Python (matplotlib optional), so it runs without torch or a GPU."""

import os
import sys
from collections import defaultdict
from pathlib import Path

MARK_BEGIN = "<!-- bench_peers:begin -->"
MARK_END = "<!-- bench_peers:end -->"

LABELS = {
    "nha": "NHA",
    "sdpa_flash": "SDPA flash (causal, full)",
    "flex_swa": "FlexAttention (window W)",
    "fla_chunk_gsa": "fla chunk_gsa",
    "fla_fused_recurrent_gsa": "fla fused_recurrent_gsa",
}
SECTION_TITLES = {"prefill": "Prefill", "decode": "Decode (one token per sequence, window full)"}


def label(impl: str) -> str:
    if impl.startswith("sdpa_kv"):
        return f"SDPA flash, KV cache {impl.removeprefix('sdpa_kv')}"
    return LABELS.get(impl, impl)


def cases_of(results: dict, section: str) -> list:
    return [case for case in results["cases"] if case["section"] == section]


def implementations(cases: list) -> list:
    """Every implementation met in these cases, NHA first, then in the order measured."""
    found = {}
    for case in cases:
        found.update(dict.fromkeys(case["results"]))
    return ["nha"] + [impl for impl in found if impl != "nha"]


def time_ms(case: dict, impl: str):
    """The median ms of impl on this case, or None where it was skipped or is absent."""
    return case["results"].get(impl, {}).get("ms")


def roofline_fraction(case: dict, bandwidth_gb_per_s: float):
    """The time an ideal kernel needs to move NHA's minimum bytes at the copy bandwidth, over
    NHA's measured time."""
    ms = time_ms(case, "nha")
    if ms is None:
        return None
    return case["nha_cost"]["min_bytes"] / (bandwidth_gb_per_s * 1e9) / (ms * 1e-3)


def tflops(case: dict):
    ms = time_ms(case, "nha")
    return None if ms is None else case["nha_cost"]["flops"] / (ms * 1e-3) / 1e12


def format_number(x) -> str:
    if x is None:
        return "—"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def format_speedup(x: float) -> str:
    """Two significant digits, without an exponent (110, not 1.1e+02)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.2g}"


def peer_cell(case: dict, impl: str) -> str:
    """A peer's ms and, in brackets, NHA's speedup over it (peer ms / NHA ms)."""
    peer, nha = time_ms(case, impl), time_ms(case, "nha")
    if peer is None:
        return "skipped" if "skipped" in case["results"].get(impl, {}) else "—"
    if nha is None:
        return format_number(peer)
    return f"{format_number(peer)} ({format_speedup(peer / nha)}×)"


def eager_ms(case: dict):
    """NHA's ms with the host's work in it (``timing.EagerClock``), where it was measured."""
    return case["results"].get("nha", {}).get("eager_ms")


def section_rows(results: dict, section: str, naming=label):
    """The headers (peers named by naming(impl)) and string rows of one section's table; the
    NHA eager column only where some case measured it (older results have none)."""
    cases = cases_of(results, section)
    peers = implementations(cases)[1:]
    bandwidth = results["meta"]["copy_bandwidth"]["GB_per_s"]
    eager = any(eager_ms(case) is not None for case in cases)
    headers = (["shape", "NHA ms"] + (["NHA eager ms"] if eager else [])
               + [f"{naming(p)} ms (speedup)" for p in peers] + ["roofline", "TFLOP/s"])
    rows = []
    for case in cases:
        fraction = roofline_fraction(case, bandwidth)
        rows.append([case["name"], format_number(time_ms(case, "nha"))]
                    + ([format_number(eager_ms(case))] if eager else [])
                    + [peer_cell(case, p) for p in peers]
                    + ["—" if fraction is None else f"{100 * fraction:.2g} %", format_number(tflops(case))])
    return headers, rows


def markdown_table(headers: list, rows: list) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def text_table(headers: list, rows: list) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths))
                     for line in [headers, *rows])


def versions_line(versions: dict) -> str:
    names = [("nha_tvm", "nha_tvm"), ("tvm", "TVM"), ("torch", "torch"), ("cuda", "CUDA"),
             ("triton", "triton"), ("fla-core", "fla-core"), ("flash-linear-attention", "flash-linear-attention")]
    return ", ".join(f"{shown} {versions[key]}" for key, shown in names if versions.get(key))


def setup_paragraphs(meta: dict) -> list:
    config, timing, copy = meta["config"], meta["timing"], meta["copy_bandwidth"]
    decode = (f"; decode steps replayed from CUDA graphs of at least {timing['decode_graph_steps']} "
              "steps back to back, time per step" if timing.get("decode_graph_steps") else "")
    return [
        f"**{meta['card']}**, {meta['date']}, mode `{meta['mode']}`. {versions_line(meta['versions'])}.",
        f"Memory roofline: a device copy of {copy['bytes'] / 2**20:.0f} MiB moves "
        f"{copy['GB_per_s']:.0f} GB/s (bytes read + written).",
        f"Shapes: {config['io_dtype']} q/k/v, {config['gate_dtype']} log gates g = logsigmoid(randn) / 8, "
        f"HQ = H = {config['heads']}, K = {config['key_dim']}, V = {config['value_dim']}, "
        f"M = {config['slots']}; NHA with RoPE (theta {config['rope_theta']:g}) on its window path.",
        f"Timing: {timing['clock']}, median of {timing['reps']} calls after {timing['warmup']} "
        f"warm-up call(s), inputs rotated over copies that span twice the L2 cache "
        f"({meta['l2_cache_bytes'] / 2**20:.0f} MiB) so each call reads cold memory{decode}.",
        "Columns: each peer's ms and, in brackets, NHA's speedup over it (peer ms / NHA ms: above 1, "
        "NHA is faster). Roofline: the time an ideal kernel needs to move NHA's bytes at the copy "
        "bandwidth, over NHA's time (prefill: q, k, v, o once each in the io dtype and g in float32; "
        "decode: the float32 slot states read and written, the window ring read, the step's "
        "q, k, v, g, o). TFLOP/s: the spec's cost model, 4M(K+V) + 2·min(W, p+1)·(K+V) per token "
        "at position p and query head, over NHA's time (`benchmarks/cost_model.py`).",
    ]


def eager_notes(results: dict) -> list:
    if not any(eager_ms(case) is not None for case in results["cases"]):
        return []
    return ["- NHA eager: one prefill call, or one decode step, timed on the host clock up to a "
            "device synchronize after it, median of the same reps, so the host's Python and launch "
            "work is in it (as an eager PyTorch caller sees one call); NHA ms and the peers keep it "
            "out (decode: CUDA graphs)."]


def skipped_notes(results: dict) -> list:
    """One line per (implementation, reason), naming the shapes it applies to."""
    skipped = defaultdict(list)
    for case in results["cases"]:
        for impl, result in case["results"].items():
            if "skipped" in result:
                skipped[(impl, case["section"], result["skipped"])].append(case["name"])
    lines = []
    for (impl, section, reason), names in skipped.items():
        where = (f"every {section} shape" if len(names) == len(cases_of(results, section))
                 else f"{section} {', '.join(names)}")
        lines.append(f"- {label(impl)} skipped on {where}: {reason}")
    return lines


PEER_NOTES = [
    "- What the peers compute: SDPA prefill is causal full attention over all T keys (the "
    "Transformer layer NHA replaces); FlexAttention is the sliding window alone (NHA's window "
    "path, no slots); fla's chunk_gsa and fused_recurrent_gsa are gated slot attention alone "
    "(NHA's slot path, no window); SDPA decode is one query per head over a Transformer's full "
    "KV cache of the stated length.",
    "- fla gets s = 1 - exp(g) precomputed in the io dtype (as fla's GSA layer passes it); NHA "
    "derives s from g inside its timed call.",
    "- SDPA and chunk_gsa do the same work at every W: each is timed once per batch and length and "
    "shown on every row of that shape.",
    "- Decode is in steady state: NHA's cache comes from a prefill of 2W tokens, so the window is "
    "full and every step moves the token leaving it into the slots; the cache is updated in place "
    "and each replay advances its position.",
]


def section_markdown(results: dict, plots: list, md_dir: Path) -> str:
    parts = ["## NHA against its peers (`benchmarks/bench_peers.py`)",
             "Generated by `python benchmarks/bench_peers.py --write-md` (or `--from-json "
             "results.json`) between the bench_peers markers: edit the generator, not this section.",
             *setup_paragraphs(results["meta"])]
    for section, title in SECTION_TITLES.items():
        if cases_of(results, section):
            parts += [f"### {title}", markdown_table(*section_rows(results, section))]
    if plots:
        parts += [f"![{path.stem}]({Path(os.path.relpath(path, md_dir)).as_posix()})" for path in plots]
    else:
        parts.append("No plots: matplotlib was not installed when this section was generated.")
    parts += ["### Notes", "\n".join(PEER_NOTES + eager_notes(results) + skipped_notes(results))]
    return "\n\n".join(parts)


def splice(existing: str, section: str) -> str:
    """The document with its bench_peers section replaced, or appended where it has none."""
    block = f"{MARK_BEGIN}\n{section}\n{MARK_END}"
    if MARK_BEGIN in existing and MARK_END in existing:
        head, rest = existing.split(MARK_BEGIN, 1)
        return head + block + rest.split(MARK_END, 1)[1]
    return existing.rstrip("\n") + "\n\n" + block + "\n"


def write_markdown(results: dict, md_path: Path, plots: list) -> None:
    existing = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    md_path.write_text(splice(existing, section_markdown(results, plots, md_path.resolve().parent)))


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def line_plot(plt, path: Path, title: str, xlabel: str, series: dict) -> None:
    """One line per implementation, log-log axes, ticks at the measured x values."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    xs = sorted({x for points in series.values() for x, _ in points})
    for impl, points in series.items():
        axes.plot(*zip(*sorted(points)), marker="o", label=label(impl))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(xs, [str(x) for x in xs])
    axes.set_xticks([], minor=True)
    axes.set(title=title, xlabel=xlabel, ylabel="ms (median)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def series_over(cases: list, x_key: str) -> dict:
    """Per implementation, its (x, ms) points over these cases."""
    series = defaultdict(list)
    for case in cases:
        for impl in implementations([case]):
            if time_ms(case, impl) is not None:
                series[impl].append((case["shape"][x_key], time_ms(case, impl)))
    return dict(series)


def grouped_by_window(cases: list) -> dict:
    groups = defaultdict(list)
    for case in cases:
        groups[case["shape"]["window"]].append(case)
    return dict(sorted(groups.items()))


def write_plots(results: dict, out_dir: Path) -> list:
    """Prefill latency against T per window (batch 1, sliding window) and decode latency against
    batch; returns the files written, none (with a warning) without matplotlib."""
    plt = import_pyplot()
    if plt is None:
        print("bench_peers: matplotlib is not installed, so no plots (pip install matplotlib)", file=sys.stderr)
        return []
    card = results["meta"]["card"]
    sliding = [case for case in cases_of(results, "prefill")
               if case["shape"]["batch"] == 1 and case["shape"]["window"] < case["shape"]["seq_len"]]
    plots = []
    for window, cases in grouped_by_window(sliding).items():
        plots.append(out_dir / f"prefill_w{window}.png")
        line_plot(plt, plots[-1], f"Prefill, batch 1, W = {window} ({card})", "T (tokens)",
                  series_over(cases, "seq_len"))
    for window, cases in grouped_by_window(cases_of(results, "decode")).items():
        plots.append(out_dir / f"decode_w{window}.png")
        line_plot(plt, plots[-1], f"Decode step, W = {window} ({card})", "batch",
                  series_over(cases, "batch"))
    return plots


def stdout_summary(results: dict) -> str:
    meta = results["meta"]
    lines = [f"{meta['card']}  copy bandwidth {meta['copy_bandwidth']['GB_per_s']:.0f} GB/s"]
    for section in SECTION_TITLES:
        if cases_of(results, section):
            lines += ["", text_table(*section_rows(results, section, naming=str))]
    return "\n".join(lines)
