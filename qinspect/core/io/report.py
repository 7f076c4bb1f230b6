"""Self-contained HTML report of a float vs quantized comparison (no scripts, no external files).

Sections: accuracy (when the data has labels), the model outputs, the sensitivity ranking of
quantizer groups (when given), every tensor sorted worst SQNR first, and for the worst tensors a
histogram of float and quantized values drawn as inline SVG, with the encoding's range marked.
"""
from __future__ import annotations

import html
import math
import time
from pathlib import Path

import numpy as np

from .files import atomic_write

WIDTH, HEIGHT, PAD = 520, 180, 28
BINS = 64


def _db(value) -> str:
    if value is None:
        return "&ndash;"
    if math.isinf(value):
        return "exact" if value > 0 else "-&infin;"
    return f"{value:.1f}"


def _num(value: float) -> str:
    return "&infin;" if math.isinf(value) else f"{value:.3g}"


def _level(sqnr: float) -> str:
    """A CSS class by SQNR: 8-bit noise on a well-used range is about 40-50 dB."""
    if sqnr < 20:
        return "bad"
    if sqnr < 30:
        return "warn"
    return "ok"


def _rows(errors, local: bool) -> str:
    out = []
    for t in errors:
        cells = [f"<td>{html.escape(t.name)}</td>", f"<td>{t.kind}</td>", f"<td>{html.escape(t.encoding)}</td>",
                 f'<td class="num {_level(t.sqnr_db)}">{_db(t.sqnr_db)}</td>']
        if local:
            cells.append(f'<td class="num">{_db(t.local_sqnr_db)}</td>')
        cells += [f'<td class="num">{_num(t.rel_error)}</td>', f'<td class="num">{_num(t.max_abs_error)}</td>']
        if t.nonfinite:
            cells[-1] = cells[-1][:-5] + f" ({t.nonfinite} NaN/Inf)</td>"
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out)


def _range(enc) -> tuple[float, float] | None:
    if enc is None or enc.is_float or not enc.scale:
        return None
    return float(np.min(enc.min)), float(np.max(enc.max))


def histogram_svg(float_values: np.ndarray, quant_values: np.ndarray, enc_range=None, title: str = "") -> str:
    """Float values as bars, quantized values as an outline, the encoding range as dashed lines.

    Counts use a square-root scale."""
    f = np.asarray(float_values, np.float64)
    q = np.asarray(quant_values, np.float64)
    f, q = f[np.isfinite(f)], q[np.isfinite(q)]
    if f.size == 0:
        return "<p>no finite values</p>"
    lo = float(min(f.min(), q.min() if q.size else f.min()))
    hi = float(max(f.max(), q.max() if q.size else f.max()))
    if enc_range:
        lo, hi = min(lo, enc_range[0]), max(hi, enc_range[1])
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, BINS + 1)
    cf, _ = np.histogram(f, edges)
    cq, _ = np.histogram(q, edges)
    top = max(int(cf.max()), int(cq.max()), 1)
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def x(v):
        return PAD + (v - lo) / (hi - lo) * w

    def y(c):  # square-root scale: a spike at zero (ReLU) must not flatten the rest
        return PAD + h - math.sqrt(c / top) * h

    bar_w = w / BINS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><title>{html.escape(title)}</title>',
             f'<rect x="{PAD}" y="{PAD}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>']
    for i, c in enumerate(cf):
        if c:
            parts.append(f'<rect x="{PAD + i * bar_w:.2f}" y="{y(c):.2f}" width="{bar_w:.2f}" '
                         f'height="{PAD + h - y(c):.2f}" fill="#4a90d9" fill-opacity="0.6"/>')
    points = [f"{PAD:.2f},{PAD + h:.2f}"]
    for i, c in enumerate(cq):
        points += [f"{PAD + i * bar_w:.2f},{y(c):.2f}", f"{PAD + (i + 1) * bar_w:.2f},{y(c):.2f}"]
    points.append(f"{PAD + w:.2f},{PAD + h:.2f}")
    parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#e07020" stroke-width="1.2"/>')
    if enc_range:
        for v in enc_range:
            parts.append(f'<line x1="{x(v):.2f}" y1="{PAD}" x2="{x(v):.2f}" y2="{PAD + h}" stroke="#c00" '
                         f'stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="11">{lo:.4g}</text>')
    parts.append(f'<text x="{PAD + w}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">{hi:.4g}</text>')
    parts.append(f'<text x="{PAD}" y="{PAD - 8}" font-size="11">count, square-root scale (max {top})</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { background: #f8d0d0; } td.warn { background: #fbe8c0; } td.ok { background: #e0f2e0; }
.hist { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
.bar { display: inline-block; height: 0.8em; background: #d9534f; vertical-align: middle; }
.legend span { display: inline-block; width: 1em; height: 0.8em; margin: 0 0.3em 0 1em; }
"""


def _sensitivity_rows(ranking) -> str:
    scores = [e.score for e in ranking if e.quantized and math.isfinite(e.score)]
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    accuracy = any(e.only_quantized_accuracy is not None for e in ranking)
    out = []
    for i, e in enumerate(ranking, 1):
        g = e.group
        if e.quantized and scores:
            frac = 1.0 if hi <= lo or (math.isinf(e.score) and e.score > 0) else max(0.0, (e.score - lo) / (hi - lo))
            bar = f'<span class="bar" style="width:{1 + 119 * frac:.0f}px"></span> {_db(e.score)}'
        else:
            bar = "not quantized"
        cells = [f'<td class="num">{i}</td>', f"<td>{html.escape(g.name)}</td>", f"<td>{html.escape(g.op_type)}</td>",
                 f"<td>{bar}</td>",
                 f'<td class="num {_level(e.only_quantized_sqnr)}">{_db(e.only_quantized_sqnr)}</td>',
                 f'<td class="num">{_db(e.only_float_sqnr)}</td>']
        if accuracy:
            cells += [f'<td class="num">{_pct(e.only_quantized_accuracy)}</td>',
                      f'<td class="num">{_pct(e.only_float_accuracy)}</td>']
        cells.append(f"<td>{html.escape(', '.join(g.tensors))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out)


def _pct(value) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f}%"


def sensitivity_section(ranking, info: dict | None = None) -> list[str]:
    """The ranking table of `sensitivity.sensitivity`, most sensitive first."""
    info = info or {}
    first = ranking[0] if ranking else None
    plan = info.get("plan_sqnr", first.plan_sqnr if first is not None else None)
    samples = f" on {info['samples']} samples" if "samples" in info else ""
    samples += f", {info['note']}" if "note" in info else ""
    accuracy = any(e.only_quantized_accuracy is not None for e in ranking)
    acc_head = "<th>top-1 alone</th><th>top-1 kept float</th>" if accuracy else ""
    return ["<h2>Sensitivity</h2>",
            f"<p>Quantizer groups (an op's output activation, weights and bias), most sensitive first{samples}. "
            "Output SQNR when only the group is quantized (all else float) and when only the group is kept "
            f"float (all else as the plan, whose output SQNR is {_db(plan)} dB). Score: the second minus "
            "the first, in dB.</p><table>",
            "<tr><th>#</th><th>group</th><th>op</th><th>score dB</th><th>SQNR dB alone</th>"
            f"<th>SQNR dB kept float</th>{acc_head}<th>tensors</th></tr>",
            _sensitivity_rows(ranking), "</table>"]


def plan_section(plan, steps=()) -> list[str]:
    """The user's work: the precision plan's defaults and per-tensor edits, and the PTQ steps applied."""
    d = plan.defaults
    out = ["<h2>Precision plan</h2>",
           f"<p>defaults: activations {d.act_bw}-bit {html.escape(d.act_scheme)}, weights {d.param_bw}-bit "
           f"{html.escape(d.param_scheme)}{' per channel' if d.per_channel else ''}"
           + (f", power-of-two scales ({html.escape(d.pow2)})" if d.pow2 else "") + "</p>"]
    if plan.edits:
        out.append("<table><tr><th>tensor</th><th>edit</th></tr>")
        for name, e in plan.edits.items():
            fields = ", ".join(f"{k} {v}" for k, v in e.__dict__.items() if v is not None and k != "encoding")
            if e.encoding is not None:
                fields = (fields + ", " if fields else "") + "a fixed encoding"
            out.append(f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(fields)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No per-tensor edits.</p>")
    if steps:
        out.append("<h2>PTQ steps</h2><ol>")
        for r in steps:
            notes = "; ".join(r.notes[:4])
            out.append(f"<li>{html.escape(r.title)} ({r.seconds:.1f} s){': ' + html.escape(notes) if notes else ''}</li>")
        out.append("</ol>")
    return out


def report_html(comparison, *, title: str = "qinspect: float vs quantized", model: str | None = None,
                data: str | None = None, encodings_file: str | None = None, histograms: int = 6,
                sensitivity=None, sensitivity_info: dict | None = None, target: str | None = None,
                plan=None, steps=()) -> str:
    """`sensitivity`: a ranking from `sensitivity.sensitivity`, shown after the outputs when given.
    With a runtime check in `comparison`, its output SQNRs stand next to the simulated ones.
    `plan` (and `steps`, StepRecords): the edits and PTQ steps behind the encodings (the window's report)."""
    c = comparison
    head = [f"<h1>{html.escape(title)}</h1>", "<p>"]
    for label, value in (("model", model), ("encodings", encodings_file), ("data", data), ("target", target)):
        if value:
            head.append(f"{label}: <code>{html.escape(str(value))}</code><br>")
    head.append(f"samples: {c.samples} &middot; {time.strftime('%Y-%m-%d %H:%M')}</p>")
    if c.accuracy_float is not None:
        delta = 100 * (c.accuracy_quantized - c.accuracy_float)
        head.append(f"<h2>Accuracy</h2><p>float {100 * c.accuracy_float:.2f}% &middot; quantized "
                    f"{100 * c.accuracy_quantized:.2f}% ({delta:+.2f} points, top-1 on the data's labels)</p>")
    header = ("<tr><th>tensor</th><th>kind</th><th>encoding</th><th>SQNR dB</th>{}<th>rel. error</th>"
              "<th>max abs error</th></tr>")
    body = ["<h2>Model outputs</h2><table>", header.format(""), _rows(c.outputs.values(), False), "</table>"]
    if c.runtime is not None:
        body.append("<h2>Runtime check</h2><pre>" + html.escape("\n".join(c.runtime.lines())) + "</pre>")
    if plan is not None:
        body += plan_section(plan, steps)
    if sensitivity is not None:
        body += sensitivity_section(sensitivity, sensitivity_info)
    worst = c.worst()
    body += ["<h2>Tensors, worst first</h2>",
             "<p>SQNR: quantized model vs float model at this tensor (all upstream error included). "
             "Own: this tensor's quantizer alone on float values.</p><table>",
             header.format("<th>own SQNR dB</th>"), _rows(worst, True), "</table>"]
    shown = [t for t in worst if t.name in c.values and math.isfinite(t.sqnr_db)][:histograms]
    if shown:
        body.append('<h2>Histograms of the worst tensors</h2><p class="legend"><span style="background:#4a90d9">'
                    '</span>float<span style="background:#e07020"></span>quantized<span style="background:#c00">'
                    '</span>encoding range</p>')
        for t in shown:
            fv, qv = c.values[t.name]
            svg = histogram_svg(fv, qv, _range(c.encodings.get(t.name)), t.name)
            body.append(f'<div class="hist"><b>{html.escape(t.name)}</b> ({html.escape(t.encoding)}, '
                        f"{_db(t.sqnr_db)} dB)<br>{svg}</div>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(head + body) + "\n</body></html>\n")


def write_report(path, comparison, *, protect=(), **options) -> Path:
    """Write the HTML report atomically; `options` go to `report_html`."""
    return atomic_write(path, report_html(comparison, **options), protect=protect)
