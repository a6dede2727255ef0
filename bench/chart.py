#!/usr/bin/env python3
"""Draws a load-benchmark result as one self-contained SVG file.

    python3 bench/chart.py bench/out/STAMP.json > STAMP.svg

`bench/run` calls it after every run and writes `bench/out/STAMP.svg` next
to the JSON and Markdown reports. Four panels, each a horizontal bar chart
on a logarithmic axis (the targets differ by up to four orders of
magnitude): throughput at 64 connections, latency at one connection, time
to the first token of a stream, and latency at the fixed rate. A scenario
a target failed is drawn as the word FAILED, never as a missing bar.
No dependencies beyond the standard library.
"""

import json
import math
import sys
from html import escape

WIDTH = 860
LABEL_W = 170
VALUE_W = 90
BAR_H = 14
GAP = 6
COLORS = {"p50": "#3b6ea8", "p99": "#a8c4e6", "rps": "#2e8b57"}


def fmt_us(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1e3:
        return f"{v / 1e3:.2f} ms"
    return f"{v:.0f} µs"


def fmt_rps(v: float) -> str:
    return f"{v:,.0f}/s"


def decade(v: float, fmt) -> str:
    """An axis label: a power of ten without trailing decimals."""
    return fmt(v).replace(".00 ", " ")


def scenario(results: dict, target: str, key: str) -> dict | None:
    """The scenario's figures, {"failed": reason} when it failed, or None if not run."""
    t = results["targets"].get(target, {})
    if t.get("failed"):
        return {"failed": t["failed"]}
    return t.get("scenarios", {}).get(key)


def panel(title: str, rows: list, fmt, y: int) -> tuple[list[str], int]:
    """rows: (label, [(series, value or None, failed?)]). Returns SVG parts and the next y."""
    values = [v for _, series in rows for _, v, _ in series if v]
    parts = [f'<text x="10" y="{y + 14}" class="title">{escape(title)}</text>']
    y += 24
    if not values:
        parts.append(f'<text x="{LABEL_W}" y="{y + 12}" class="note">no data</text>')
        return parts, y + 24
    lo = 10 ** math.floor(math.log10(min(values)))
    if min(values) < 2 * lo:
        lo /= 10  # room for the shortest bar
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    span = WIDTH - LABEL_W - VALUE_W - 20

    def xpos(v: float) -> float:
        return LABEL_W + span * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    top = y
    for label, series in rows:
        parts.append(f'<text x="{LABEL_W - 8}" y="{y + BAR_H * len(series) / 2 + 4}" '
                     f'class="label" text-anchor="end">{escape(label)}</text>')
        for name, v, failed in series:
            if failed:
                parts.append(f'<text x="{LABEL_W + 4}" y="{y + BAR_H - 3}" class="failed">FAILED</text>')
            elif v:
                w = max(1.0, xpos(v) - LABEL_W)
                parts.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H - 2}" '
                             f'fill="{COLORS.get(name, "#888")}"><title>{escape(label)} {name}: '
                             f'{escape(fmt(v))}</title></rect>')
                parts.append(f'<text x="{LABEL_W + w + 4:.1f}" y="{y + BAR_H - 3}" class="value">'
                             f'{escape(fmt(v))}{"" if name == "rps" else " " + name}</text>')
            else:
                parts.append(f'<text x="{LABEL_W + 4}" y="{y + BAR_H - 3}" class="note">not run</text>')
            y += BAR_H
        y += GAP
    # Decade grid lines and their labels, drawn under the bars.
    grid = []
    d = lo
    while d <= hi * 1.0001:
        x = xpos(d)
        grid.append(f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{y - GAP + 2}" class="grid"/>')
        grid.append(f'<text x="{x:.1f}" y="{y + 8}" class="axis" text-anchor="middle">{escape(decade(d, fmt))}</text>')
        d *= 10
    return parts[:1] + grid + parts[1:], y + 22


def latency_rows(results: dict, key: str, field: str, rate: float | None = None) -> list:
    rows = []
    for target in results["targets"]:
        r = scenario(results, target, key)
        if r is None:
            continue
        if "failed" in r:
            rows.append((target, [("p50", None, True)]))
            continue
        lat = r[field]
        # At a fixed rate, a target that could not keep up queued requests
        # for seconds: say so next to its name.
        label = f"{target} (saturated)" if rate and r["rps"] < 0.95 * rate else target
        rows.append((label, [("p50", lat["p50"], False), ("p99", lat["p99"], False)]))
    return rows


def render(results: dict) -> str:
    body: list[str] = []
    y = 44
    rps_rows = []
    for target in results["targets"]:
        r = scenario(results, target, "c64")
        if r is None:
            continue
        rps_rows.append((target, [("rps", None if "failed" in r else r["rps"], "failed" in r)]))
    rate = results.get("args", {}).get("rate")
    sections = [
        ("Throughput at 64 connections (requests/s, log scale; more is better)", rps_rows, fmt_rps),
        ("Latency at 1 connection, p50 and p99 (log scale; less is better)",
         latency_rows(results, "c1", "latency_us"), fmt_us),
        ("Stream: time to the first token at 1 connection, p50 and p99",
         latency_rows(results, "stream1", "ttft_us"), fmt_us),
        (f"Latency at a fixed {rate:g} requests/s, p50 and p99 (from the intended send time)"
         if rate else "Latency at a fixed rate, p50 and p99",
         latency_rows(results, "rate", "latency_us", rate), fmt_us),
    ]
    for title, rows, fmt in sections:
        if not rows:
            continue
        parts, y = panel(title, rows, fmt, y)
        body.extend(parts)
    m = results.get("machine", {})
    head = (f"Custos load benchmark, {results.get('started', '')}: {m.get('nproc', '?')} CPUs "
            f"({m.get('cpu_model', '')}), mock upstream nginx")
    sub = "Every Custos request is authenticated and recorded in the audit ledger before it is answered."

    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y + 10}" '
            f'viewBox="0 0 {WIDTH} {y + 10}" font-family="sans-serif">\n'
            "<style>.title{font-size:13px;font-weight:bold}.label{font-size:11px}"
            ".value{font-size:10px;fill:#333}.axis{font-size:9px;fill:#666}"
            ".note{font-size:10px;fill:#999}.failed{font-size:10px;fill:#b22222;font-weight:bold}"
            ".grid{stroke:#ddd;stroke-width:1}</style>\n"
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="10" y="16" font-size="12">{escape(head)}</text>\n'
            f'<text x="10" y="31" font-size="11" fill="#555">{escape(sub)}</text>\n'
            + "\n".join(body) + "\n</svg>\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        results = json.load(f)
    sys.stdout.write(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
