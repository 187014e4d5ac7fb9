"""Tests for experiments.charts: the results page's SVG line charts (escaping, scaling, gaps, legend)."""

import re
import xml.etree.ElementTree as ET

import pytest

from experiments import charts

SVG = "{http://www.w3.org/2000/svg}"
BUCKETS = [f"2025-03-04T{hour:02d}:00:00+00:00" for hour in range(10, 15)]


def chart(series, buckets=BUCKETS, **kwargs):
    """Return the chart's SVG parsed as XML (so a markup mistake fails the parse)."""
    kwargs.setdefault("title", "latency_ms")
    kwargs.setdefault("y_label", "mean latency (ms)")
    return ET.fromstring(charts.line_chart(buckets=buckets, series=series, **kwargs))


def points(polyline):
    """Return a polyline's points as (x, y) floats."""
    return [tuple(float(c) for c in pair.split(",")) for pair in polyline.get("points").split()]


def texts(svg):
    """Return every text element's content."""
    return [t.text for t in svg.iter(f"{SVG}text")]


def test_it_escapes_every_text():
    hostile = '<script>alert("x")</script>&'
    markup = charts.line_chart(
        title=hostile, buckets=[hostile, hostile], series={hostile: [1, 2]}, y_label=hostile, x_label=hostile
    )
    assert "<script>" not in markup
    svg = ET.fromstring(markup)
    assert texts(svg).count(hostile) >= 4  # title, x label, y label, legend (and the bucket labels)
    assert svg.get("aria-label") == hostile


def test_it_scales_values_into_the_plot_area():
    svg = chart({"control": [0, 100, 200, 300, 400]})
    (line,) = svg.iter(f"{SVG}polyline")
    xs, ys = zip(*points(line), strict=True)
    top, bottom = charts.MARGIN_TOP, charts.HEIGHT - charts.MARGIN_BOTTOM
    left, right = charts.MARGIN_LEFT, charts.WIDTH - charts.MARGIN_RIGHT
    assert xs[0] == pytest.approx(left) and xs[-1] == pytest.approx(right)
    assert ys[0] == pytest.approx(bottom, abs=0.1) and ys[-1] == pytest.approx(top, abs=0.1)  # 0 and 400 at the ends
    assert ys[2] == pytest.approx((top + bottom) / 2, abs=0.1)  # 200 halfway up
    # Evenly spaced in time, higher values higher up (smaller y).
    assert [round(b - a, 1) for a, b in zip(xs, xs[1:], strict=False)] == [round((right - left) / 4, 1)] * 4
    assert list(ys) == sorted(ys, reverse=True)


def test_the_y_axis_has_round_ticks_holding_every_value():
    assert charts.y_range([120, 340, None, 95]) == (0, 400, 100)
    low, high, step = charts.y_range([0.91, 0.97])
    assert (low, high, step) == pytest.approx((0.9, 0.98, 0.02))
    assert charts.y_range([]) == (0.0, 1.0, 0.2)
    low, high, _ = charts.y_range([5, 5])
    assert low < 5 < high
    low, high, _ = charts.y_range([-3, 7])
    assert low <= -3 and high >= 7
    svg = chart({"control": [120, 340, None, 95, 200]})
    assert {"0", "100", "200", "300", "400"} <= set(texts(svg))


def test_none_values_break_the_line():
    svg = chart({"treatment": [1.0, 2.0, None, None, 3.0]})
    lines = list(svg.iter(f"{SVG}polyline"))
    dots = list(svg.iter(f"{SVG}circle"))
    assert len(lines) == 1 and len(points(lines[0])) == 2  # the first two buckets
    assert len(dots) == 1  # the lone last value
    assert float(dots[0].get("cx")) == pytest.approx(charts.WIDTH - charts.MARGIN_RIGHT)
    assert charts.segments([None, 1, float("nan"), 2, 3]) == [[(1, 1)], [(3, 2), (4, 3)]]


def test_each_variant_gets_its_own_colour_and_legend_entry():
    svg = chart({"control": [1, 2, 3, 4, 5], "treatment": [2, 3, 4, 5, 6], "third": [3, 4, 5, 6, 7]})
    colours = [line.get("stroke") for line in svg.iter(f"{SVG}polyline")]
    assert colours == list(charts.PALETTE[:3])
    legend = [g.find(f"{SVG}text").text for g in svg.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert legend == ["control", "treatment", "third"]


def test_axes_are_labelled_with_readable_hours():
    svg = chart({"control": [1, 2, 3, 4, 5]}, x_label="hour (UTC)")
    labels = texts(svg)
    assert "hour (UTC)" in labels and "mean latency (ms)" in labels
    assert "03-04 10:00" in labels and "03-04 14:00" in labels  # first and last bucket


def test_an_empty_chart_says_so():
    markup = charts.line_chart(title="feedback", buckets=[], series={}, y_label="mean score")
    assert "No data yet" in markup
    assert not re.search(r"<polyline|<circle", markup)
    ET.fromstring(markup)
