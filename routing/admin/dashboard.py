"""The admin's dashboard (its index page) and the figures the model and instance lists share with it.

Per model and instance: the state as the router sees it now (closed / half open / open / drained / disabled / no
key, from this process's `routing.state`, shared across workers through Redis when it is configured), requests,
error rate, p50 / p95 latency and TTFT, cost and a sparkline over the last hour or 24 hours, and the latest probe;
the API keys that cost most and failed most; requests and errors over time per model as server-rendered SVG.

Everything is read from the rollups (`RequestRollup` per model and instance, `KeyRollup` per key, both written by
`routing.rollups`), the configuration and the latest probes — never from the request log — so a page costs the same
few queries whatever the log holds. The figures are as fresh as the last rollup run (every minute under beat).
"""

import dataclasses
import time
from datetime import timedelta
from decimal import Decimal

from django.contrib.admin.utils import quote
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from experiments.charts import line_chart
from routing import histogram, rollups, state
from routing.admin_api import latest_probes
from routing.health import CLOSED, HALF_OPEN, OPEN
from routing.models import ApiKey, KeyRollup, Model, ProviderInstance, RequestRollup
from routing.snapshot import NO_KEY, NO_KEY_REASON, key_missing

DISABLED, DRAINED = "disabled", "drained"
# One colour per state, on the dashboard and the lists alike: green serves, amber is on trial, red is out, the greys
# and purple are out by an operator's choice or a missing key.
STATE_COLOURS = {
    CLOSED: "#2e7d32",
    HALF_OPEN: "#ef6c00",
    OPEN: "#c62828",
    DRAINED: "#546e7a",
    DISABLED: "#9e9e9e",
    NO_KEY: "#6a1b9a",
}
# Inline, so that a badge looks the same on any admin page, whatever stylesheet the page has.
BADGE_STYLE = "color: #fff; padding: 1px 7px; border-radius: 8px; white-space: nowrap; font-weight: bold"
SERVING = (CLOSED, HALF_OPEN)
TOP_KEYS = 5
CHART_WIDTH = 600  # two side by side on a 1,366 px screen
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)
ROLLUP_FIELDS = (
    "bucket_start",
    "model",
    "instance_id",
    "requests",
    "successes",
    "cost_usd",
    "latency_ms_histogram",
    "ttft_ms_histogram",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """A stretch of time the figures cover, ending now, and the length of one point of its sparklines."""

    name: str
    label: str
    length: timedelta
    step: timedelta


WINDOWS = {
    "1h": Window("1h", "Last hour", HOUR, MINUTE),
    "24h": Window("24h", "Last 24 hours", timedelta(hours=24), HOUR),
}
DEFAULT_WINDOW = "24h"


# --- figures (pure) ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Figures:
    """The rolled-up traffic of one model or instance over a window, and its requests and errors per point.

    Latency and TTFT histograms are collected as they come (`add`) and merged once, when first read: merging them
    one row at a time would cost a pass over the histogram per row.
    """

    requests: int = 0
    errors: int = 0
    cost: Decimal = Decimal(0)
    points: list = dataclasses.field(default_factory=list)
    error_points: list = dataclasses.field(default_factory=list)
    parts: dict = dataclasses.field(default_factory=lambda: {"latency": [], "ttft": []})
    merged: dict = dataclasses.field(default_factory=dict)

    def add(self, point, requests, successes, cost, latency, ttft):
        """Count one rollup row, in the point (sparkline bucket) it falls in (None: the totals only)."""
        self.requests += requests
        self.errors += requests - successes
        self.cost += cost
        self.parts["latency"].append(latency)
        self.parts["ttft"].append(ttft)
        self.merged.clear()
        if point is not None:
            self.points[point] += requests
            self.error_points[point] += requests - successes

    def _histogram(self, name):
        """Return the merged latency or ttft histogram (successful requests)."""
        if name not in self.merged:
            self.merged[name] = histogram.merge(self.parts[name])
        return self.merged[name]

    @property
    def latency(self):
        """Return the latency histogram of the successful requests."""
        return self._histogram("latency")

    @property
    def ttft(self):
        """Return the time-to-first-token histogram of the successful streams."""
        return self._histogram("ttft")

    @property
    def error_rate(self):
        """Return the share of requests that did not end ok, or None without requests."""
        return self.errors / self.requests if self.requests else None

    @property
    def error_rate_text(self):
        """Return the error rate as a percentage, or "—"."""
        rate = self.error_rate
        return "—" if rate is None else f"{rate * 100:.1f} %"

    @property
    def latency_text(self):
        """Return "p50 / p95" of the latency in whole milliseconds, or "—"."""
        return _pair(self.latency)

    @property
    def ttft_text(self):
        """Return "p50 / p95" of the time to first token in whole milliseconds, or "—"."""
        return _pair(self.ttft)

    @property
    def cost_text(self):
        """Return the cost in USD to four decimals ("0" without any)."""
        if not self.cost:
            return "0"
        return f"{self.cost:,.4f}" if self.cost >= Decimal("0.0001") else "< 0.0001"

    @property
    def sparkline(self):
        """Return the SVG sparkline of the points (numbers only: safe to put in a page as is)."""
        return mark_safe(sparkline(self.points, self.error_points))  # noqa: S308 - built from integers here


def _pair(counts):
    """Return "p50 / p95" of a histogram in whole milliseconds, or "—" when it is empty."""
    if not sum(counts):
        return "—"
    return " / ".join(f"{histogram.percentile(counts, p):,.0f}" for p in (50, 95))


def points_of(start, end, step):
    """Return the starts of the points from start's through end's, step apart (minutes or hours, UTC)."""
    floor = rollups.floor_minute if step == MINUTE else rollups.floor_hour
    first, last = floor(start), floor(end)
    return [first + step * i for i in range(int((last - first) / step) + 1)]


def summarize(rows, points, step):
    """Return ({model: Figures}, {instance id: Figures}) of rollup rows (ROLLUP_FIELDS), bucketed into the points."""
    floor = rollups.floor_minute if step == MINUTE else rollups.floor_hour
    index_of = {point: i for i, point in enumerate(points)}
    by_model, by_instance = {}, {}

    def figures(table, key):
        if key not in table:
            table[key] = Figures(points=[0] * len(points), error_points=[0] * len(points))
        return table[key]

    for bucket_start, model, instance_id, requests, successes, cost, latency, ttft in rows:
        point = index_of.get(floor(bucket_start))
        if model:
            figures(by_model, model).add(point, requests, successes, cost, latency, ttft)
        if instance_id:
            figures(by_instance, instance_id).add(point, requests, successes, cost, latency, ttft)
    return by_model, by_instance


def sparkline(values, errors, width=120, height=22):
    """Return a small SVG of requests (blue) and errors (red) per point, on one scale from zero (no line for none)."""
    top = max([*values, *errors, 1])
    count = len(values)

    def polyline(series, colour):
        if count < 2 or not any(series):
            return ""  # no line for nothing: a flat red line would read as errors
        points = " ".join(
            f"{width * i / (count - 1):.1f},{height - 1 - (height - 2) * v / top:.1f}" for i, v in enumerate(series)
        )
        return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>'

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="requests and errors over time">'
        f"{polyline(values, '#1f77b4')}{polyline(errors, '#c62828')}</svg>"
    )


# --- state --------------------------------------------------------------------------------------------------------


def instance_state(inst, routing_state, now):
    """Return (state, reason) of a ProviderInstance row: disabled, drained, no key, or its breaker's state and why."""
    keyless = inst.enabled and key_missing(inst, inst.resolved_params())
    breaker = routing_state.breaker(inst.pk)
    current = breaker.current(now)
    if keyless:
        reason = f"{NO_KEY_REASON}: set one on the instance or its provider"
    else:
        reason = breaker.reason if current != CLOSED and breaker.reason else ""
    if not inst.enabled:
        return DISABLED, reason
    if inst.drained:
        return DRAINED, reason
    return (NO_KEY if keyless else current), reason


def state_badge(name, words=None):
    """Return a state as a coloured badge (words default to the state's: "half open")."""
    return format_html(
        '<span class="state-badge state-{}" style="background: {}; {}">{}</span>',
        name.replace(" ", "_"),
        STATE_COLOURS[name],
        BADGE_STYLE,
        words or name.replace("_", " "),
    )


def model_health(enabled, states):
    """Return (colour state, words) of a model from its instances' states: how many of them serve."""
    if not enabled:
        return DISABLED, "disabled"
    if not states:
        return OPEN, "no instance"
    serving = sum(s in SERVING for s in states)
    words = f"{serving} of {len(states)} serving"
    if serving == 0:
        return OPEN, words
    return (CLOSED if serving == len(states) and HALF_OPEN not in states else HALF_OPEN), words


# --- reading ------------------------------------------------------------------------------------------------------


def window_rows(window, now, *, models=None, instance_ids=None, histograms=True):
    """Return (points, rollup rows) of the window ending now: minute rows for the hour, rollups' window for a day.

    models / instance_ids narrow the rows to those names (a list page's rows); None reads every one. Without
    histograms, the rows carry empty ones: decoding a few thousand is most of what a read costs.
    """
    start = rollups.window_start(now, window.length)
    if window.step == MINUTE:
        rows = RequestRollup.objects.filter(granularity=rollups.MINUTE, bucket_start__gte=start, bucket_start__lte=now)
    else:
        rows = rollups.window_rollups(start, now)
    if models is not None:
        rows = rows.filter(model__in=models)
    if instance_ids is not None:
        rows = rows.filter(instance_id__in=instance_ids)
    points, rows = points_of(start, now, window.step), rows.order_by()
    if not histograms:
        return points, [(*row, [], []) for row in rows.values_list(*ROLLUP_FIELDS[:6])]
    return points, list(rows.values_list(*ROLLUP_FIELDS))


def window_figures(window, now, **narrow):
    """Return ({model: Figures}, {instance id: Figures}) over the window ending now (one query)."""
    points, rows = window_rows(window, now, **narrow)
    return summarize(rows, points, window.step)


def top_keys(since, limit=TOP_KEYS):
    """Return (by cost, by errors): the keys that cost most and failed most since an hour, as dicts (3 queries)."""
    totals = (
        KeyRollup.objects.filter(bucket_start__gte=since)
        .order_by()
        .values("api_key")
        .annotate(requests=Sum("requests"), errors=Sum("errors"), cost=Sum("cost_usd"))
    )
    by_cost = list(totals.filter(cost__gt=0).order_by("-cost", "api_key")[:limit])
    by_errors = list(totals.filter(errors__gt=0).order_by("-errors", "api_key")[:limit])
    ids = {row["api_key"] for row in (*by_cost, *by_errors)}
    names = {key.pk: str(key) for key in ApiKey.objects.filter(pk__in=ids)} if ids else {}
    for row in (*by_cost, *by_errors):
        row["name"] = names.get(row["api_key"], f"deleted key #{row['api_key']}")
        row["url"] = reverse("admin:routing_apikey_change", args=[row["api_key"]]) if row["api_key"] in names else ""
        row["error_rate"] = row["errors"] / row["requests"] if row["requests"] else None
    return by_cost, by_errors


def instance_url(instance_id):
    """Return the admin page of an instance."""
    return reverse("admin:routing_providerinstance_change", args=[quote(instance_id)])


def probe_summary(probe):
    """Return a stored probe as the dashboard and the instance list show it (ok, latency, error, when), or None."""
    if probe is None:
        return None
    error = probe.error or (f"HTTP {probe.status_code}" if not probe.ok and probe.status_code else "")
    return {"ok": probe.ok, "at": probe.checked_at, "latency_ms": probe.latency_ms, "error": error}


def dashboard(window_name=DEFAULT_WINDOW, now=None):
    """Return the dashboard's context: every model with its instances, the top keys and the charts (7 queries)."""
    window = WINDOWS.get(window_name) or WINDOWS[DEFAULT_WINDOW]
    now = now or timezone.now()
    routing_state, clock = state.get(), time.time()
    instances = list(ProviderInstance.objects.select_related("provider").order_by("model_id", "id"))
    models = list(Model.objects.order_by("name"))
    probes = latest_probes([inst.pk for inst in instances]) if instances else {}
    points, rows = window_rows(window, now)
    by_model, by_instance = summarize(rows, points, window.step)
    empty = Figures(points=[0] * len(points), error_points=[0] * len(points))

    instances_of = {}
    for inst in instances:
        current, reason = instance_state(inst, routing_state, clock)
        instances_of.setdefault(inst.model_id, []).append(
            {
                "id": inst.pk,
                "url": instance_url(inst.pk),
                "state": current,
                "badge": state_badge(current),
                "reason": reason,
                "in_flight": routing_state.total_in_flight(inst.pk),
                "probe": probe_summary(probes.get(inst.pk)),
                "figures": by_instance.get(inst.pk, empty),
            }
        )
    model_rows = []
    for model in models:
        members = instances_of.get(model.pk, [])
        health, words = model_health(model.enabled, [m["state"] for m in members])
        model_rows.append(
            {
                "name": model.name,
                "url": reverse("admin:routing_model_change", args=[model.pk]),
                "badge": state_badge(health, words),
                "figures": by_model.get(model.name, empty),
                "instances": members,
            }
        )
    keys_since = rollups.floor_hour(now - window.length)
    by_cost, by_errors = top_keys(keys_since)
    return {
        "window": window,
        "windows": WINDOWS.values(),
        "models": model_rows,
        "key_tables": [
            ("Most cost", by_cost, "No key has cost anything."),
            ("Most errors", by_errors, "No key had an error."),
        ],
        "keys_since": keys_since,
        "charts": charts(points, by_model, window),
        "rolled_up_to": max((row[0] for row in rows), default=None),
    }


def charts(points, by_model, window):
    """Return the SVG charts of requests and of errors per point, one line per model with traffic."""
    busy = {name: figures for name, figures in sorted(by_model.items()) if figures.requests}
    buckets = [point.isoformat() for point in points]
    x_label = "minute (UTC)" if window.step == MINUTE else "hour (UTC)"
    per = "minute" if window.step == MINUTE else "hour"
    return [
        mark_safe(  # noqa: S308 - line_chart escapes every text it draws
            line_chart(
                title=f"{title} per {per}",
                buckets=buckets,
                series={name: getattr(figures, attribute) for name, figures in busy.items()},
                y_label=title.lower(),
                x_label=x_label,
                width=CHART_WIDTH,
            )
        )
        for title, attribute in (("Requests", "points"), ("Errors", "error_points"))
    ]


# --- the lists' columns -------------------------------------------------------------------------------------------


def list_figures(*, instance_ids=None, models=None, now=None):
    """Return {"1h": (by model, by instance), "24h": (...)} for a list page's rows (one query per window).

    The lists show the last hour's requests and errors only, so its latency histograms are not read.
    """
    now = now or timezone.now()
    return {
        name: window_figures(window, now, instance_ids=instance_ids, models=models, histograms=name != "1h")
        for name, window in WINDOWS.items()
    }
