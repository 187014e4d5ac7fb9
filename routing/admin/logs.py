"""Read-only admin for what the gateway records: active-probe results and the request log."""

import uuid
from datetime import UTC, datetime, timedelta
from html import escape

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.safestring import mark_safe

from routing.admin import decision_story
from routing.admin.keyset import KeysetChangeList
from routing.models import (
    InstanceProbe,
    Model,
    Outcome,
    RequestLog,
)

# Text searches scan rows (no index helps a substring): unless a time filter is chosen, only the newest this many,
# and never more than a day of them (a row with an odd timestamp must not open the whole log).
TEXT_SEARCH_ROWS = 100_000
TEXT_SEARCH_MAX_WINDOW = timedelta(days=1)
OUTCOME_LABELS = dict(Outcome.choices)
# The list's badges, short enough for its row to fit 1,366 px (the full label on hover).
OUTCOME_BADGES = {
    Outcome.OK: "ok",
    Outcome.CLIENT_ERROR: "client error",
    Outcome.UPSTREAM_ERROR: "upstream error",
    Outcome.UPSTREAM_TIMEOUT: "timeout",
    Outcome.RATE_LIMITED: "rate limited",
    Outcome.NO_CAPACITY: "no capacity",
    Outcome.CLIENT_DISCONNECTED: "disconnected",
    Outcome.INTERNAL_ERROR: "internal error",
    Outcome.SERVER_SHUTDOWN: "shutdown",
}
OUTCOME_TONES = {
    Outcome.OK: "ok",
    Outcome.CLIENT_ERROR: "warn",
    Outcome.RATE_LIMITED: "warn",
    Outcome.NO_CAPACITY: "warn",
    Outcome.CLIENT_DISCONNECTED: "muted",
    Outcome.SERVER_SHUTDOWN: "muted",
    Outcome.UPSTREAM_ERROR: "error",
    Outcome.UPSTREAM_TIMEOUT: "error",
    Outcome.INTERNAL_ERROR: "error",
}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Admin for rows only the gateway writes: view, never add, change or delete."""

    def has_add_permission(self, request):
        """Refuse: rows are written by the gateway only."""
        return False

    def has_change_permission(self, request, obj=None):
        """Refuse: the rows are a record."""
        return False

    def has_delete_permission(self, request, obj=None):
        """Refuse: the rows are a record."""
        return False


@admin.register(InstanceProbe)
class InstanceProbeAdmin(ReadOnlyAdmin):
    """Active health-check results (kept 24 h)."""

    list_display = ("checked_at", "instance", "ok", "status_code", "latency_ms", "error")
    list_filter = ("ok", "instance")
    list_select_related = ("instance",)
    date_hierarchy = "checked_at"
    show_full_result_count = False


class TimeFilter(admin.ListFilter):
    """Filter by when the request arrived: a recent period, or a range (`since`, `until`), on the time index."""

    title = "time"
    template = "admin/routing/requestlog/time_filter.html"
    PERIODS = {
        "15m": ("Last 15 minutes", timedelta(minutes=15)),
        "1h": ("Last hour", timedelta(hours=1)),
        "24h": ("Last 24 hours", timedelta(hours=24)),
        "7d": ("Last 7 days", timedelta(days=7)),
    }
    PARAMS = ("period", "since", "until")

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.values = {name: params.pop(name)[-1] for name in self.PARAMS if name in params}
        self.period = self.PERIODS.get(self.values.get("period"))
        if "period" in self.values and self.period is None:
            raise IncorrectLookupParameters(f"unknown period {self.values['period']!r}")
        self.since, self.until = (self._moment(self.values.get(name)) for name in ("since", "until"))

    @staticmethod
    def _moment(value):
        """Return a time or date from the query string as an aware datetime (UTC when it names no zone), or None."""
        if not value:
            return None
        try:
            moment = parse_datetime(value)
            if moment is None and (day := parse_date(value)) is not None:
                moment = datetime(day.year, day.month, day.day)
        except ValueError:
            moment = None
        if moment is None:
            raise IncorrectLookupParameters(f"not a time: {value!r}")
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    @classmethod
    def bounds_time(cls, query):
        """Return whether a query string chooses a time."""
        return any(query.get(name) for name in cls.PARAMS)

    def has_output(self):
        """Always show the filter."""
        return True

    def expected_parameters(self):
        """Return the parameters this filter reads."""
        return list(self.PARAMS)

    def queryset(self, request, queryset):
        """Return the rows of the chosen time (a range on created_at: the partitions and the time index)."""
        if self.period is not None:
            queryset = queryset.filter(created_at__gte=timezone.now() - self.period[1])
        if self.since is not None:
            queryset = queryset.filter(created_at__gte=self.since)
        if self.until is not None:
            queryset = queryset.filter(created_at__lt=self.until)
        return queryset

    def choices(self, changelist):
        """Yield "any time" and the periods; keep what the range form needs."""
        self.range = {"since": self.values.get("since", ""), "until": self.values.get("until", "")}
        self.hidden = [
            (name, value)
            for name, values in changelist.filter_params.items()
            if name not in self.PARAMS
            for value in values
        ]
        yield {
            "selected": not self.values,
            "query_string": changelist.get_query_string(remove=self.PARAMS),
            "display": "Any time",
        }
        for key, (label, _) in self.PERIODS.items():
            yield {
                "selected": self.values.get("period") == key,
                "query_string": changelist.get_query_string({"period": key}, remove=["since", "until"]),
                "display": label,
            }


class ServedModelFilter(admin.SimpleListFilter):
    """Filter by the model that served the request; the choices are the configured models."""

    title = "served model"
    parameter_name = "served_model"

    def lookups(self, request, model_admin):
        """Return the configured model names."""
        return [(name, name) for name in Model.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request, queryset):
        """Return the requests served by the chosen model."""
        return queryset.filter(served_model=self.value()) if self.value() else queryset


@admin.register(RequestLog)
class RequestLogAdmin(ReadOnlyAdmin):
    """The per-request log, view-only: a compact list that reads only the page it shows (see `keyset`)."""

    list_display = (
        "request",
        "time",
        "key",
        "route",
        "instance_id",
        "outcome_badge",
        "status",
        "latency",
        "tokens",
        "cost",
    )
    list_display_links = ("request",)
    # Filter choices come from the configuration and the Outcome choices, never from the log.
    list_filter = (TimeFilter, "outcome", ServedModelFilter, "instance", "api_key", "stream")
    list_select_related = ("api_key",)
    sortable_by = ("time",)  # time order is the one the indexes give: any other would sort the whole log
    date_hierarchy = None  # its links are a DISTINCT over the whole log
    show_facets = admin.ShowFacets.NEVER  # facet counts are a COUNT per choice
    # And request ids, through their index (get_search_results). Case-sensitive: half the cost of a scan that
    # upper-cases every value it reads.
    search_fields = ("user__contains", "requested_model__contains")
    search_help_text = (
        "A request id, or its first 8 or more characters, finds it at once. Other text is looked for (case "
        f"matters) in the user and the requested model of the newest {TEXT_SEARCH_ROWS:,} requests (of the last day "
        "at most), or of the chosen time."
    )
    fieldsets = (
        (None, {"fields": ("request_id", "created_at", "endpoint", "api_key", "user")}),
        (
            "Routing",
            {"fields": ("requested_model", "served_model", "instance", "attempts")},
        ),
        ("Outcome", {"fields": ("stream", "outcome", "status_code", "error_type", "error_message")}),
        ("Usage", {"fields": ("prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms")}),
        ("Experiment", {"fields": ("experiment", "variant", "experiment_unit")}),
    )

    def changelist_view(self, request, extra_context=None):
        """Show the list without the admin's navigation sidebar: the row needs the width (breadcrumbs lead back)."""
        return super().changelist_view(request, {"is_nav_sidebar_enabled": False, **(extra_context or {})})

    def get_changelist(self, request, **kwargs):
        """Return the keyset change list: no COUNT of the log, no OFFSET."""
        return KeysetChangeList

    @staticmethod
    def search_kind(term):
        """Return "id" for a whole request id, "prefix" for its start (8+ hex digits), else "text"."""
        digits = term.strip().lower().replace("-", "")
        if len(digits) >= 8 and all(c in "0123456789abcdef" for c in digits):
            return "id" if len(digits) == 32 else "prefix"
        return "text"

    def get_search_results(self, request, queryset, search_term):
        """Look request ids up through their index (a prefix is a range of ids); search other text in the newest
        TEXT_SEARCH_ROWS rows only, unless a time filter bounds it."""
        if not search_term.strip():
            return queryset, False
        kind = self.search_kind(search_term)
        if kind == "text":
            if not TimeFilter.bounds_time(request.GET):
                queryset = queryset.filter(created_at__gte=self._newest_rows_start())
            return super().get_search_results(request, queryset, search_term)
        digits = search_term.strip().lower().replace("-", "")
        if kind == "id":
            return queryset.filter(request_id=uuid.UUID(digits)), False
        low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
        return queryset.filter(request_id__gte=low, request_id__lte=high), False

    @staticmethod
    def _newest_rows_start():
        """Return when the TEXT_SEARCH_ROWS-th newest request was created (at most TEXT_SEARCH_MAX_WINDOW ago).

        Newest by id, the order rows are written in, so no OFFSET is needed: two reads of the primary key's index.
        """
        floor = timezone.now() - TEXT_SEARCH_MAX_WINDOW
        last = RequestLog.objects.order_by("-id").values_list("id", flat=True).first()
        if last is None:
            return floor
        rows = RequestLog.objects.filter(id__gt=last - TEXT_SEARCH_ROWS).order_by("id")
        first = rows.values_list("created_at", flat=True).first()
        return max(first, floor) if first is not None else floor

    @admin.display(description="Request")
    def request(self, obj):
        """Return the request id's first block, the whole id on hover."""
        request_id = str(obj.request_id)
        return mark_safe(f'<span title="{request_id}">{request_id[:8]}</span>')  # hex digits and dashes only

    @admin.display(description="Time", ordering="created_at")
    def time(self, obj):
        """Return when the request arrived, to the second (the date in full on hover)."""
        moment = timezone.localtime(obj.created_at)
        return mark_safe(f'<span title="{moment.isoformat()}">{moment:%m-%d %H:%M:%S}</span>')  # digits only

    @admin.display(description="Key")
    def key(self, obj):
        """Return the API key's name."""
        return obj.api_key.name if obj.api_key_id and obj.api_key else "—"

    @admin.display(description="Requested → served")
    def route(self, obj):
        """Return the model the client named and the one that served it (once when they are the same)."""
        requested, served = obj.requested_model or "—", obj.served_model or "—"
        text = escape(requested if requested == served else f"{requested} → {served}")
        return mark_safe(f'<span title="{text}">{text}</span>{" ⇢" if obj.stream else ""}')

    @admin.display(description="Instance")
    def instance_id(self, obj):
        """Return the instance's id (no join: the id is on the row)."""
        return obj.instance_id or "—"

    @admin.display(description="Outcome")
    def outcome_badge(self, obj):
        """Return the outcome in its colour."""
        tone, label = OUTCOME_TONES.get(obj.outcome, "error"), escape(OUTCOME_LABELS.get(obj.outcome, obj.outcome))
        badge = escape(OUTCOME_BADGES.get(obj.outcome, obj.outcome))
        return mark_safe(f'<span class="cv-outcome cv-{tone}" title="{label}">{badge}</span>')

    @admin.display(description="Status")
    def status(self, obj):
        """Return the HTTP status the client got."""
        return obj.status_code

    @admin.display(description="Latency")
    def latency(self, obj):
        """Return the latency in ms, or seconds from 10 s."""
        if obj.latency_ms is None:
            return "—"
        return f"{obj.latency_ms / 1000:.1f} s" if obj.latency_ms >= 10_000 else f"{obj.latency_ms:.0f} ms"

    @admin.display(description="Tokens in/out")
    def tokens(self, obj):
        """Return the prompt and completion tokens."""
        if obj.prompt_tokens is None and obj.completion_tokens is None:
            return "—"
        return f"{obj.prompt_tokens or 0:,} / {obj.completion_tokens or 0:,}"

    @admin.display(description="Cost")
    def cost(self, obj):
        """Return the cost in US dollars."""
        return "—" if obj.cost_usd is None else f"${obj.cost_usd:.6f}".rstrip("0").rstrip(".")

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        """Add the decision, told as a story with its raw JSON folded below (`decision_story`), to the detail page."""
        if obj is not None:
            context["story"] = decision_story.story(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)
