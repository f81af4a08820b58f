"""The ingest bench's picture (issue 17 §5), written by hand as SVG (no plotting dependency):

1. envelopes committed over time, from each contender's first commit (sampled every ~250 ms: the
   worker's /metrics, the peer's table) — the steeper, the faster;
2. CPU per envelope: for each LMDB layout × verification setting, the limit's components (the work
   no implementation can skip, each measured alone) stacked, and beside it what the worker's run
   actually spent (the worker, PostgreSQL, the broker, everything else on the machine), with the
   budget a core count allows at the measured rate (cores ÷ envelopes/s); the peer likewise.
"""
from html import escape

US = 1e6
W = 1100
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'

RUN_STYLE = {
    "compatible_noverify": ("#1f77b4", ""),
    "compatible_verify": ("#1f77b4", "6,4"),
    "append_noverify": ("#2ca02c", ""),
    "append_verify": ("#2ca02c", "6,4"),
}
PEER_COLOURS = ["#d62728", "#ff7f0e", "#9467bd"]
COMPONENT_COLOURS = {
    "decode_validate": "#4e79a7",
    "canonical_hash": "#a0cbe8",
    "ed25519_verify": "#e15759",
    "postgres_copy_backend": "#76b7b2",
    "kafka_consume_client": "#59a14f",
    "kafka_broker": "#edc948",
    "lmdb_put": "#b07aa1",
}
COMPONENT_LABELS = {
    "decode_validate": "decode + validate",
    "canonical_hash": "canonicalize + SHA-256",
    "ed25519_verify": "Ed25519 (exact)",
    "postgres_copy_backend": "PostgreSQL COPY (backend)",
    "kafka_consume_client": "consume (client)",
    "kafka_broker": "broker",
    "lmdb_put": "LMDB put",
}
SPENT_COLOURS = {
    "worker": "#2f4b7c",
    "connect": "#d62728",
    "postgres": "#76b7b2",
    "kafka": "#edc948",
    "other": "#c7c7c7",
}
SPENT_LABELS = {
    "worker": "worker process",
    "connect": "Kafka Connect JVM",
    "postgres": "PostgreSQL (all processes)",
    "kafka": "broker",
    "other": "rest of the machine",
}


def _text(x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}" {FONT}>{escape(str(s))}</text>')


def _nice_step(span, ticks=6):
    raw = span / max(ticks, 1)
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v):
    if v >= 1000 and v % 1000 == 0:
        return f"{int(v / 1000)}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:g}"


def throughput_panel(results, top):
    """Committed envelopes over time, per contender. Returns (svg parts, height)."""
    series = []
    for tag, r in results.get("runs", {}).items():
        colour, dash = RUN_STYLE.get(tag, ("#555", ""))
        label = f"worker {tag.replace('_', ', ').replace('noverify', 'verification off').replace(', verify', ', verification on')}"
        series.append((label, r.get("series") or [], colour, dash, r.get("envelopes_per_s")))
    peer = results.get("peer") or {}
    for i, pr in enumerate(peer.get("runs", [])):
        series.append((f"peer: Kafka Connect + JDBC sink, tasks.max={pr['tasks']}", pr.get("series") or [],
                       PEER_COLOURS[i % len(PEER_COLOURS)], "2,3" if i else "", pr.get("rows_per_s")))
    x0, y0, pw, ph = 80, top + 40, 640, 300
    every = results.get("sample_ms", 250)
    parts = [_text(20, top + 18, f"Envelopes committed since the first commit (sampled every {every} ms)", 15,
                   weight="bold")]
    tmax = max((s[-1][0] for _, s, *_ in series if s), default=1.0) or 1.0
    nmax = max((s[-1][1] for _, s, *_ in series if s), default=1.0) or 1.0
    xs, ys = _nice_step(tmax), _nice_step(nmax)
    tmax = xs * (int(tmax / xs) + (tmax % xs > 0))
    nmax = ys * (int(nmax / ys) + (nmax % ys > 0))
    parts.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>')
    v = 0.0
    while v <= tmax + 1e-9:
        x = x0 + pw * v / tmax
        parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + ph}" stroke="#e3e3e3"/>')
        parts.append(_text(x, y0 + ph + 16, f"{v:g}", 11, "middle"))
        v += xs
    v = 0.0
    while v <= nmax + 1e-9:
        y = y0 + ph - ph * v / nmax
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(_text(x0 - 6, y + 4, _fmt(v), 11, "end"))
        v += ys
    parts.append(_text(x0 + pw / 2, y0 + ph + 34, "seconds since the contender's first commit", 12, "middle"))
    parts.append(f'<text x="{x0 - 58}" y="{y0 + ph / 2}" font-size="12" text-anchor="middle" {FONT} '
                 f'transform="rotate(-90 {x0 - 58} {y0 + ph / 2})">envelopes committed</text>')
    for label, s, colour, dash, rate in series:
        if not s:
            continue
        pts = " ".join(f"{x0 + pw * t / tmax:.1f},{y0 + ph - ph * n / nmax:.1f}" for t, n in s)
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2.2"{d}/>')
    lx, ly = x0 + pw + 20, y0 + 6
    for label, s, colour, dash, rate in series:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{colour}" stroke-width="2.2"{d}/>')
        parts.append(_text(lx + 34, ly + 4, label, 11))
        parts.append(_text(lx + 34, ly + 18, f"{rate:,.0f} /s" if rate else "no figure", 11, fill="#555"))
        ly += 36
    return parts, ph + 90


def _bar(parts, x0, y, h, scale, pieces, colours):
    x = x0
    for key, value in pieces:
        w = max(value * US * scale, 0)
        if w <= 0:
            continue
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h}" fill="{colours[key]}" '
                     f'stroke="#fff" stroke-width="0.6"><title>{escape(key)}: {value * US:.1f} µs</title></rect>')
        if w > 30:
            parts.append(_text(x + w / 2, y + h / 2 + 4, f"{value * US:.0f}", 10, "middle", fill="#111"))
        x += w
    return x


def _budget(cpu, cores, rate):
    """CPU-seconds the machine had per envelope: cores ÷ the rate over the sampled CPU window (the
    same window as the bar; the reported rate when the window's is missing)."""
    r = (cpu or {}).get("envelopes_per_s") or rate
    return cores / r if r else None


def cpu_panel(results, top):
    limit = results.get("limit")
    parts = [_text(20, top + 18, "CPU per envelope (µs): the limit's components, measured alone, against what each run spent",
                   15, weight="bold")]
    if not limit:
        parts.append(_text(20, top + 44, "(no limit measured in this run)", 12))
        return parts, 60
    comp = limit["components_s_per_envelope"]
    runs = results.get("runs", {})
    cores = limit["cores"]
    rows = []
    for tag, lim in limit["limits"].items():
        pieces = []
        for name in ("decode_validate", "canonical_hash", "ed25519_verify", "postgres_copy_backend",
                     "kafka_consume_client", "kafka_broker"):
            if name in lim["components"]:
                pieces.append((name, comp[name]))
        for name in lim["components"]:
            if name.startswith("lmdb_put_"):
                pieces.append(("lmdb_put", comp[name]))
        nice = tag.replace("_noverify", ", verification off").replace("_verify", ", verification on")
        rows.append((f"limit  {nice}", pieces, COMPONENT_COLOURS,
                     f"{lim['envelopes_per_s']:,.0f}/s on {cores} cores", None))
        r = runs.get(tag) or {}
        cpu = (r.get("cpu") or {}).get("s_per_envelope")
        if cpu:
            spent = [(k, cpu[k]) for k in ("worker", "postgres", "kafka", "other")]
            rate = r.get("envelopes_per_s") or 0
            ratio = rate / lim["envelopes_per_s"] if lim["envelopes_per_s"] else 0
            rows.append((f"worker {nice}", spent, SPENT_COLOURS,
                         f"{rate:,.0f}/s = {ratio:.2f}× the limit", _budget(r["cpu"], cores, rate)))
    peer = results.get("peer") or {}
    best = peer.get("best")
    if best and (best.get("cpu") or {}).get("s_per_envelope"):
        cpu = best["cpu"]["s_per_envelope"]
        rows.append((f"peer  tasks.max={best['tasks']}", [(k, cpu[k]) for k in ("connect", "postgres", "kafka", "other")],
                     SPENT_COLOURS, f"{best['rows_per_s']:,.0f}/s", _budget(best["cpu"], cores, best["rows_per_s"])))
    x0, bh, gap = 250, 20, 9
    widest = max(sum(v for _, v in p) for _, p, *_ in rows) * US
    widest = max([widest] + [b * US for *_, b in rows if b])
    pw = 560
    scale = pw / (widest * 1.05)
    y = top + 40
    step = _nice_step(widest, 8)
    v = 0.0
    axis_top = y
    axis_bottom = y + len(rows) * (bh + gap) + (len(rows) // 2) * 4
    while v <= widest * 1.05:
        x = x0 + v * scale
        parts.append(f'<line x1="{x:.1f}" y1="{axis_top - 4}" x2="{x:.1f}" y2="{axis_bottom}" stroke="#eee"/>')
        parts.append(_text(x, axis_bottom + 14, f"{v:g}", 11, "middle"))
        v += step
    for i, (label, pieces, colours, note, budget) in enumerate(rows):
        if label.startswith("limit") and i:
            y += 6
        parts.append(_text(x0 - 8, y + bh / 2 + 4, label, 11, "end", weight="bold" if label.startswith("limit") else "normal"))
        end = _bar(parts, x0, y, bh, scale, pieces, colours)
        bx = x0 + budget * US * scale if budget else end
        parts.append(_text(max(end, bx) + 6, y + bh / 2 + 4, f"{sum(v for _, v in pieces) * US:.0f} µs · {note}", 11,
                           fill="#333"))
        if budget:
            parts.append(f'<line x1="{bx:.1f}" y1="{y - 3}" x2="{bx:.1f}" y2="{y + bh + 3}" stroke="#000" '
                         f'stroke-width="2"><title>cores ÷ rate = {budget * US:.1f} µs</title></line>')
        y += bh + gap
    parts.append(_text(x0 + pw / 2, axis_bottom + 30, "µs of CPU per envelope", 12, "middle"))
    y = axis_bottom + 50
    lx = 20
    for key, label in list(COMPONENT_LABELS.items()):
        parts.append(f'<rect x="{lx}" y="{y - 10}" width="12" height="12" fill="{COMPONENT_COLOURS[key]}"/>')
        parts.append(_text(lx + 16, y, label, 11))
        lx += 16 + 7 * len(label) + 18
        if lx > W - 160:
            lx, y = 20, y + 18
    y += 20
    lx = 20
    for key, label in SPENT_LABELS.items():
        parts.append(f'<rect x="{lx}" y="{y - 10}" width="12" height="12" fill="{SPENT_COLOURS[key]}"/>')
        parts.append(_text(lx + 16, y, label, 11))
        lx += 16 + 7 * len(label) + 18
    y += 20
    parts.append(f'<line x1="26" y1="{y - 11}" x2="26" y2="{y + 2}" stroke="#000" stroke-width="2"/>')
    parts.append(_text(36, y, "cores ÷ the rate over the sampled window: the CPU the machine had per envelope "
                              "(a gap between a bar and its mark: CPU left idle)", 11))
    return parts, y - top + 20


def write_svg(results, path):
    head = results.get("headline", "")
    parts = [_text(20, 26, f"nekhebet-store ingest bench — {results.get('count', 0):,} envelopes, "
                           f"{results.get('partitions', '?')} partitions, {results.get('cores', '?')} cores", 17, weight="bold")]
    y = 46
    if results.get("note"):
        parts.append(_text(20, y, results["note"], 13, weight="bold", fill="#b00"))
        y += 20
    if head:
        parts.append(_text(20, y, head, 12, fill="#333"))
    top = y + 14
    p1, h1 = throughput_panel(results, top)
    parts += p1
    p2, h2 = cpu_panel(results, top + h1 + 10)
    parts += p2
    height = top + h1 + 10 + h2 + 10
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height:.0f}" '
           f'viewBox="0 0 {W} {height:.0f}">\n<rect width="100%" height="100%" fill="#fff"/>\n'
           + "\n".join(parts) + "\n</svg>\n")
    with open(path, "w") as f:
        f.write(svg)


if __name__ == "__main__":
    # Redraws the picture from a results file: python3 benches/chart.py target/bench/ingest.json
    import json
    import sys
    src = sys.argv[1] if len(sys.argv) > 1 else "target/bench/ingest.json"
    dst = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".svg"
    with open(src) as f:
        write_svg(json.load(f), dst)
    print(f"wrote {dst}")
