"""Server-rendered SVG line charts for the experiment results page: one line per variant over time.

Pure: plain values in, an SVG string out (no Django, no I/O, no JavaScript), so the admin works offline and the
charts are unit-tested without fixtures. Every text that reaches the markup (title, axis labels, variant names,
bucket labels) is escaped here, so the caller may mark the result safe. A `None` value is a gap: the line breaks
there instead of pretending the metric was zero, and a value with no neighbour is drawn as a dot.
"""

import math
from html import escape

# One colour per variant, in order (the control first); distinguishable for the common colour-vision deficiencies.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
WIDTH, HEIGHT = 640, 260
# Room for the y tick labels and axis title (left), the x labels (bottom), the title (top) and the legend (right).
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 150, 28, 48
Y_TICKS = 5
X_LABELS = 6


def nice_step(span, ticks=Y_TICKS):
    """Return a round step (1, 2, 2.5 or 5 times a power of ten) that cuts span into about `ticks` intervals."""
    raw = span / max(ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def y_range(values):
    """Return (low, high, step): round bounds holding every value, with zero in view for non-negative data."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0, 0.2
    low, high = min(finite), max(finite)
    if low >= 0 and low <= high * 0.5:
        low = 0.0  # a baseline at zero unless it would flatten the lines into the top of the chart
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad if low != 0 else 0.0, high + pad
    step = nice_step(high - low)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def format_number(value):
    """Return a tick value compactly: no trailing zeros, thousands as k, up to four significant digits."""
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:.4g}k"
    return f"{value:.4g}"


def segments(values):
    """Return the runs of consecutive non-None (finite) values as lists of (index, value)."""
    runs, current = [], []
    for index, value in enumerate(values):
        if value is None or not math.isfinite(value):
            if current:
                runs.append(current)
            current = []
        else:
            current.append((index, value))
    if current:
        runs.append(current)
    return runs


def bucket_label(bucket):
    """Return an ISO hour ("2025-01-02T13:00:00+00:00") as "01-02 13:00"; anything else as given."""
    text = str(bucket)
    if len(text) >= 16 and text[4] == "-" and text[10] == "T":
        return f"{text[5:10]} {text[11:16]}"
    return text


def line_chart(*, title, buckets, series, y_label, x_label="hour (UTC)", width=WIDTH, height=HEIGHT):
    """Return an SVG line chart of series ({name: [value or None per bucket]}) over the buckets."""
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM
    low, high, step = y_range([v for values in series.values() for v in values])
    count = len(buckets)

    def x_at(index):
        return MARGIN_LEFT + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    def y_at(value):
        return MARGIN_TOP + plot_h * (1 - (value - low) / (high - low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="metric-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{MARGIN_LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    # Horizontal grid lines with the y tick labels.
    ticks = round((high - low) / step)
    for i in range(ticks + 1):
        value = low + i * step
        y = y_at(value)
        parts.append(
            f'<line x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{MARGIN_LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{escape(format_number(value))}</text>"
        )
    # Axes and their titles.
    bottom = MARGIN_TOP + plot_h
    parts.append(
        f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{bottom}" stroke="#666"/>'
        f'<line x1="{MARGIN_LEFT}" y1="{bottom}" x2="{MARGIN_LEFT + plot_w}" y2="{bottom}" stroke="#666"/>'
        f'<text class="x-label" x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{height - 6}" font-size="11" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="y-label" x="14" y="{MARGIN_TOP + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 14 {MARGIN_TOP + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    # A few bucket labels along the x axis, evenly spaced, always including the first and the last.
    if count:
        shown = sorted({round(i * (count - 1) / (X_LABELS - 1)) for i in range(X_LABELS)} if count > 1 else {0})
        for index in shown:
            parts.append(
                f'<text x="{x_at(index):.1f}" y="{bottom + 16}" font-size="10" text-anchor="middle">'
                f"{escape(bucket_label(buckets[index]))}</text>"
            )
    else:
        parts.append(
            f'<text x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{MARGIN_TOP + plot_h / 2:.1f}" font-size="12" '
            'text-anchor="middle" fill="#666">No data yet</text>'
        )
    # One line (broken at gaps) and one legend entry per series.
    for number, (name, values) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        for run in segments(values[:count]):
            if len(run) == 1:
                index, value = run[0]
                parts.append(f'<circle cx="{x_at(index):.1f}" cy="{y_at(value):.1f}" r="2.5" fill="{colour}"/>')
            else:
                points = " ".join(f"{x_at(i):.1f},{y_at(v):.1f}" for i, v in run)
                parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        legend_y = MARGIN_TOP + 6 + number * 18
        legend_x = MARGIN_LEFT + plot_w + 14
        parts.append(
            f'<g class="legend"><rect x="{legend_x}" y="{legend_y - 8}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{legend_x + 18}" y="{legend_y + 2}" font-size="11">{escape(str(name))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
