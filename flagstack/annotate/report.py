"""Evaluation records and the leaderboard: JSON plus one static HTML page with the table and inline
SVG plots (accuracy bars, accuracy vs speed, reliability diagrams) — no plotting dependency.

An evaluation record is a dict: {"run": name, "method", "model", "shots", "selection",
"calibration", "readout", "llm": bool, "accuracy", "macro_f1", "ece", "docs_per_s", "tokens_per_s",
"prompt_tokens", "cache_hit_rate", ..., "metrics": the full evaluate_results dict}.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

COLUMNS = ("run", "method", "model", "shots", "selection", "calibration", "readout", "n", "accuracy", "accuracy_ci95",
           "macro_f1", "ece", "docs_per_s", "tokens_per_s", "prompt_tokens", "cache_hit_rate")


def save_record(record: dict, runs_dir: str | Path) -> Path:
    """Write one evaluation record as runs_dir/<run>.eval.json (replacing an older one)."""
    if not record.get("run"):
        raise ValueError("record must have a non-empty 'run' name")
    path = Path(runs_dir) / f"{record['run']}.eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    return path


def load_records(runs_dir: str | Path) -> list[dict]:
    """Every evaluation record under runs_dir, sorted by accuracy (best first), then speed."""
    records = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob("*.eval.json"))]
    return sorted(records, key=lambda r: (-r.get("accuracy", 0.0), -(r.get("docs_per_s") or 0.0)))


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):  # an interval
        return "-".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def _svg_bars(records: list[dict]) -> str:
    width, bar, gap, left = 640, 18, 6, 220
    height = len(records) * (bar + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{left}" y="14" font-size="12">accuracy (0 to 1)</text>']
    for i, r in enumerate(records):
        y = 22 + i * (bar + gap)
        w = (width - left - 60) * float(r.get("accuracy", 0))
        color = "#3b7dd8" if r.get("llm") else "#999999"
        parts += [f'<text x="{left - 6}" y="{y + 13}" font-size="12" text-anchor="end">{html.escape(r["run"])}</text>',
                  f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}"/>',
                  f'<text x="{left + w + 4:.1f}" y="{y + 13}" font-size="12">{float(r.get("accuracy", 0)):.3f}</text>']
    return "".join(parts) + "</svg>"


def _svg_speed(records: list[dict]) -> str:
    import math

    pts = [r for r in records if r.get("docs_per_s")]
    if not pts:
        return ""
    width, height, pad = 640, 320, 50
    xs = [math.log10(r["docs_per_s"]) for r in pts]
    lo, hi = min(xs) - 0.3, max(xs) + 0.3
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="10" x2="{pad}" y2="{height - pad}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 12}" font-size="12" text-anchor="middle">docs/s (log scale)</text>',
             f'<text x="12" y="{height / 2}" font-size="12" transform="rotate(-90 12 {height / 2})">accuracy</text>']
    for r, x in zip(pts, xs):
        cx = pad + (x - lo) / (hi - lo) * (width - pad - 20)
        cy = (height - pad) - float(r["accuracy"]) * (height - pad - 20)
        color = "#3b7dd8" if r.get("llm") else "#999999"
        parts += [f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}"/>',
                  f'<text x="{cx + 7:.1f}" y="{cy + 4:.1f}" font-size="11">{html.escape(r["run"])}</text>']
    return "".join(parts) + "</svg>"


def reliability_svg(bins: list[dict], title: str, size: int = 200) -> str:
    """A reliability diagram: per confidence bin, accuracy (bar) against the diagonal."""
    pad = 24
    inner = size - 2 * pad
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 16}" role="img">',
             f'<text x="{size / 2}" y="12" font-size="11" text-anchor="middle">{html.escape(title)}</text>',
             f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" stroke="#cc4444" '
             'stroke-dasharray="4"/>']
    for b in bins:
        x = pad + b["lo"] * inner
        h = b["accuracy"] * inner
        parts.append(f'<rect x="{x:.1f}" y="{pad + inner - h:.1f}" width="{(b["hi"] - b["lo"]) * inner:.1f}" '
                     f'height="{h:.1f}" fill="#3b7dd8" fill-opacity="0.7" stroke="white"/>')
    parts.append(f'<text x="{size / 2}" y="{size + 10}" font-size="10" text-anchor="middle">confidence</text>')
    return "".join(parts) + "</svg>"


def write_leaderboard(records: list[dict], out_dir: str | Path, title: str = "flagstack annotate leaderboard"
                      ) -> tuple[Path, Path]:
    """leaderboard.json and leaderboard.html (table sorted by accuracy, plots inline) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: (-r.get("accuracy", 0.0), -(r.get("docs_per_s") or 0.0)))
    rows = [{c: r.get(c) for c in COLUMNS} | {"llm": bool(r.get("llm"))} for r in records]
    json_path = out_dir / "leaderboard.json"
    json_path.write_text(json.dumps({"title": title, "rows": rows}, indent=1, default=float) + "\n")
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr" + ("" if r["llm"] else ' class="nollm"') + ">" +
                   "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    diagrams = "".join(reliability_svg(r["metrics"]["reliability"], r["run"])
                       for r in records if r.get("metrics", {}).get("reliability"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}tr.nollm{{color:#666}}</style></head><body>
<h1>{html.escape(title)}</h1><p>Sorted by accuracy. Grey rows use no LLM (trained on the same demo pool).</p>
<table><tr>{head}</tr>{body}</table>
<h2>Accuracy</h2>{_svg_bars(records)}
<h2>Accuracy vs speed</h2>{_svg_speed(records)}
<h2>Reliability diagrams</h2><div>{diagrams}</div></body></html>
"""
    html_path = out_dir / "leaderboard.html"
    html_path.write_text(page)
    return json_path, html_path
