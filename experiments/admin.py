"""Admin for experiments: the list at a glance (status, traffic, units, days running, SRM), the edit form with its
variants, start / pause / stop / promote, the results page with its charts, and the read-only feedback list.

Status changes go through `experiments.services`, which refuse an overlapping or under-filled experiment; the edit
form refuses the same things from the data being saved (its variants' models and target keys, not the database), so
a running experiment is never saved into a state the snapshot would have to guess about. Every change is in the
admin history (LogEntry): the form's by Django, the actions' and the results page's through `log_change`.
"""

import math
import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from experiments import charts, overlap, services, statistics
from experiments.assignment import validate_overrides
from experiments.models import METRIC_NAME, Experiment, ExperimentStatus, Feedback, UnitRollup, Variant
from experiments.results import experiment_results, metric_timeseries
from routing.admin.logs import ReadOnlyAdmin
from routing.analysis import CONTEXT_TYPES

STATUS_COLOURS = {
    ExperimentStatus.DRAFT: "#777",
    ExperimentStatus.RUNNING: "#2e7d32",
    ExperimentStatus.PAUSED: "#ef6c00",
    ExperimentStatus.STOPPED: "#455a64",
}
# The actions the results page offers, with what each is called in messages and history.
STATUS_ACTIONS = {"start": "Started", "pause": "Paused", "stop": "Stopped"}
PERCENTILE_METRICS = ("latency_ms", "ttft_ms")
Y_LABELS = {
    "success_rate": "success rate",
    "latency_ms": "mean latency (ms)",
    "ttft_ms": "mean time to first token (ms)",
    "prompt_tokens": "mean prompt tokens",
    "completion_tokens": "mean completion tokens",
    "cost_usd": "mean cost (USD)",
}


# --- Reads for the list ---------------------------------------------------------------------------------------------


def units_by_variant(experiment_ids):
    """Return {experiment id: {variant name: units}} from the unit rollups, in one grouped query."""
    counts = {}
    rows = (
        UnitRollup.objects.filter(experiment__in=list(experiment_ids))
        .values_list("experiment", "variant")
        .annotate(units=Count("id"))
        .order_by()
    )
    for experiment_id, variant, units in rows:
        counts.setdefault(experiment_id, {})[variant] = units
    return counts


def srm_check(weights, units):
    """Return the sample-ratio check of units ({variant: n}) against weights ({variant: w}), or None if it can't run.

    It can't with fewer than two variants, with no weight, or before any unit arrived.
    """
    names = list(weights)
    if len(names) < 2 or sum(weights.values()) <= 0 or not sum(units.get(name, 0) for name in names):
        return None
    return statistics.srm([units.get(name, 0) for name in names], [weights[name] for name in names])


def days_running(experiment, now=None):
    """Return the days since the experiment first ran (until it stopped), or None if it never ran."""
    if experiment.started_at is None:
        return None
    end = experiment.stopped_at if experiment.status == ExperimentStatus.STOPPED and experiment.stopped_at else None
    return max(((end or now or timezone.now()) - experiment.started_at).total_seconds() / 86400, 0.0)


class ExperimentChangeList(ChangeList):
    """The experiment list, with each row's units per variant read for the whole page at once."""

    def get_results(self, request):
        """Fetch the page's rows, then their units per variant in one query (not one per row)."""
        super().get_results(request)
        counts = units_by_variant(experiment.pk for experiment in self.result_list)
        for experiment in self.result_list:
            experiment.units_by_variant = counts.get(experiment.pk, {})


# --- Forms ----------------------------------------------------------------------------------------------------------


class ExperimentForm(forms.ModelForm):
    """An experiment's own fields; its JSON fields are checked for the shapes assignment and results read."""

    class Meta:
        model = Experiment
        fields = (
            "id",
            "name",
            "status",
            "hypothesis",
            "traffic_percentage",
            "target_context_types",
            "target_keys",
            "primary_metric",
            "guardrail_metrics",
            "metric_directions",
            "starts_at",
            "ends_at",
            "minimum_detectable_effect",
            "salt",
        )
        widgets = {
            "hypothesis": forms.Textarea(attrs={"rows": 3, "cols": 80}),
            "target_context_types": forms.Textarea(attrs={"rows": 1, "cols": 60}),
            "guardrail_metrics": forms.Textarea(attrs={"rows": 1, "cols": 60}),
            "metric_directions": forms.Textarea(attrs={"rows": 1, "cols": 60}),
        }

    def clean_target_context_types(self):
        """Accept a list of known context types."""
        value = self.cleaned_data["target_context_types"]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValidationError('Give a list of context types, e.g. ["code_generation"].')
        unknown = [item for item in value if item not in CONTEXT_TYPES]
        if unknown:
            raise ValidationError(f"Unknown context type(s): {', '.join(unknown)} (known: {', '.join(CONTEXT_TYPES)}).")
        return value

    def clean_guardrail_metrics(self):
        """Accept a list of metric names."""
        value = self.cleaned_data["guardrail_metrics"]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValidationError('Give a list of metric names, e.g. ["latency_ms", "cost_usd"].')
        for item in value:
            METRIC_NAME(item)
        return value

    def clean_metric_directions(self):
        """Accept {metric: "higher" | "lower"}."""
        value = self.cleaned_data["metric_directions"]
        if not isinstance(value, dict) or not all(v in ("higher", "lower") for v in value.values()):
            raise ValidationError('Give {"metric": "higher" or "lower"}, e.g. {"toxicity": "lower"}.')
        for item in value:
            METRIC_NAME(item)
        return value

    def _post_clean(self):
        """Keep the target keys being saved on the instance: the variant formset checks overlap with them."""
        super()._post_clean()
        keys = self.cleaned_data.get("target_keys")
        self.instance.pending_key_pks = frozenset(key.pk for key in keys) if keys is not None else None


class VariantForm(forms.ModelForm):
    """One variant: its overrides must be ones assignment knows how to apply."""

    class Meta:
        model = Variant
        fields = ("model", "name", "weight", "is_control", "overrides")
        widgets = {"overrides": forms.Textarea(attrs={"rows": 2, "cols": 40})}

    def clean(self):
        """Name the variant after its model when no name is given, before names are checked for repeats."""
        cleaned = super().clean()
        if not cleaned.get("name") and cleaned.get("model"):
            cleaned["name"] = cleaned["model"].name
        return cleaned

    def clean_overrides(self):
        """Refuse overrides assignment would not apply."""
        overrides = self.cleaned_data["overrides"]
        problems = validate_overrides(overrides)
        if problems:
            raise ValidationError(problems)
        return overrides


def variant_problems(rows):
    """Return what is wrong with a set of variants (dicts with model, name, weight, is_control) as messages."""
    problems = []
    controls = sum(1 for row in rows if row.get("is_control"))
    if controls > 1:
        problems.append(f"Mark at most one variant as the control ({controls} are marked).")
    models = [row["model"].name for row in rows]
    repeated = sorted({name for name in models if models.count(name) > 1})
    if repeated:
        problems.append(f"Each variant needs its own model: {', '.join(repeated)} is used more than once.")
    names = [row.get("name") or row["model"].name for row in rows]  # unnamed: the model's name, as saving does
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(f"Variant names must differ: {', '.join(repeated)} is used more than once.")
    if rows and sum(row.get("weight") or 0 for row in rows) <= 0:
        problems.append("At least one variant needs a weight above 0.")
    return problems


class VariantFormSet(BaseInlineFormSet):
    """The experiment's variants, checked together, and against the other running experiments when it runs."""

    def clean(self):
        """Refuse two controls, repeated models or names, all-zero weights, and (running) too few or an overlap."""
        if any(self.errors):
            return
        kept = [
            form
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE") and form.cleaned_data.get("model")
        ]
        rows = [form.cleaned_data for form in kept]
        experiment = self.instance
        problems = variant_problems(rows)
        if experiment.status == ExperimentStatus.RUNNING and not problems:
            variants = [form.instance for form in kept]  # as the form would save them
            problems = services.start_problems(experiment, variants=variants, now=timezone.now())
            problems = problems or self.overlap_problems(experiment, rows)
        if problems:
            raise ValidationError(problems)
        super().clean()  # the unique checks, after ours: "names must differ" says more than "duplicate data"

    def overlap_problems(self, experiment, rows):
        """Return the overlaps of the experiment as being saved with the other running experiments."""
        key_pks = getattr(experiment, "pending_key_pks", None)
        scope = overlap.scope_of(experiment, models=[row["model"].name for row in rows], key_pks=key_pks)
        return overlap.overlap_errors(scope)

    def save_new(self, form, commit=True):
        """Place a new variant after the ones before it in the form."""
        form.instance.position = self.forms.index(form)
        return super().save_new(form, commit=commit)


class VariantInline(admin.TabularInline):
    """The variants, edited on the experiment's page."""

    model = Variant
    form = VariantForm
    formset = VariantFormSet
    fields = ("model", "name", "weight", "is_control", "overrides")
    autocomplete_fields = ()
    extra = 0
    min_num = 0


# --- Experiments ----------------------------------------------------------------------------------------------------


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    """Experiments: the list at a glance, the edit form with variants, status actions and the results page."""

    form = ExperimentForm
    list_display = (
        "id",
        "name",
        "status_badge",
        "traffic",
        "units",
        "days",
        "srm",
        "primary_metric",
        "results_link",
    )
    list_display_links = ("id", "name")
    list_filter = ("status",)
    search_fields = ("id", "name")
    filter_horizontal = ("target_keys",)
    inlines = (VariantInline,)
    actions = ("start_selected", "pause_selected", "stop_selected")
    fieldsets = (
        (None, {"fields": ("id", "name", "status", "hypothesis")}),
        (
            "Targeting",
            {
                "description": "The experiment applies to requests for one of its variants' models (as requested, "
                "or as chosen by automatic selection), narrowed to these context types and API keys if any are set.",
                "fields": ("traffic_percentage", "target_context_types", "target_keys"),
            },
        ),
        ("Metrics", {"fields": ("primary_metric", "guardrail_metrics", "metric_directions")}),
        ("Schedule", {"fields": ("starts_at", "ends_at", "started_at", "stopped_at")}),
        ("Sample size", {"fields": ("minimum_detectable_effect",)}),
        ("Promotion", {"fields": ("promoted_variant", "promoted_by", "promoted_at")}),
        (
            "Assignment salt",
            {
                "classes": ("collapse",),
                "description": "Warning: changing the salt of an experiment that has run reassigns every unit to a "
                "new variant (and re-draws who is enrolled), which invalidates the results so far.",
                "fields": ("salt",),
            },
        ),
    )
    readonly_fields = ("started_at", "stopped_at", "promoted_variant", "promoted_by", "promoted_at")

    def get_readonly_fields(self, request, obj=None):
        """Make the id read-only once the experiment exists (rows, headers and exports name it)."""
        readonly = super().get_readonly_fields(request, obj)
        return ("id", *readonly) if obj is not None else readonly

    def get_queryset(self, request):
        """Fetch the variants and their models with the experiments (the list's SRM column reads them)."""
        return super().get_queryset(request).prefetch_related("variants__model")

    def get_changelist(self, request, **kwargs):
        """Use the list that reads units per variant for the whole page at once."""
        return ExperimentChangeList

    # --- Columns

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj):
        """Return the status as a coloured badge."""
        return format_html(
            '<span class="experiment-status status-{}" style="background:{};color:#fff;padding:1px 7px;'
            'border-radius:8px;white-space:nowrap">{}</span>',
            obj.status,
            STATUS_COLOURS.get(obj.status, "#777"),
            obj.get_status_display(),
        )

    @admin.display(description="Traffic", ordering="traffic_percentage")
    def traffic(self, obj):
        """Return the traffic percentage."""
        return f"{obj.traffic_percentage:g} %"

    @admin.display(description="Units")
    def units(self, obj):
        """Return the units enrolled so far (from the unit rollups)."""
        return f"{sum(getattr(obj, 'units_by_variant', {}).values()):,}"

    @admin.display(description="Days running")
    def days(self, obj):
        """Return the days since the experiment first ran, or —."""
        days = days_running(obj)
        return "—" if days is None else f"{days:.1f}"

    @admin.display(description="SRM")
    def srm(self, obj):
        """Return a warning when the units per variant do not match the weights (p < 0.001), else ok or —."""
        weights = {variant.label: variant.weight for variant in obj.variants.all()}
        check = srm_check(weights, getattr(obj, "units_by_variant", {}))
        if check is None:
            return "—"
        if check.mismatch:
            return format_html(
                '<strong class="srm-mismatch" style="color:#c62828">⚠ mismatch (p={})</strong>', f"{check.p_value:.2g}"
            )
        return format_html('<span class="srm-ok">ok</span>')

    @admin.display(description="Results")
    def results_link(self, obj):
        """Return a link to the results page."""
        return format_html('<a href="{}">Results</a>', results_url(obj.pk))

    # --- Saving

    def save_model(self, request, obj, form, change):
        """Stamp a status set in the form as the services do (when it first ran, when it stopped)."""
        if not change or "status" in form.changed_data:
            before = Experiment(status=form.initial.get("status"), started_at=obj.started_at, stopped_at=obj.stopped_at)
            for field, value in services.status_fields(before, obj.status, now=timezone.now()).items():
                setattr(obj, field, value)
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        """Save the variants, then make the first one the control when none is marked."""
        super().save_related(request, form, formsets, change)
        variants = list(form.instance.variants.all())
        if variants and not any(variant.is_control for variant in variants):
            variants[0].is_control = True
            variants[0].save(update_fields=["is_control"])

    # --- Status changes (list actions and the results page)

    def change_status(self, request, experiment, action):
        """Start, pause or stop one experiment through its service; log it, or say why it was refused."""
        service = getattr(services, f"experiment_{action}")
        try:
            service(experiment=experiment, user=request.user)
        except ValidationError as error:
            self.message_user(request, f"{experiment.pk}: {' '.join(error.messages)}", messages.ERROR)
            return False
        self.log_change(request, experiment, f"{STATUS_ACTIONS[action]}.")
        return True

    def _change_selected(self, request, queryset, action):
        """Apply a status action to each selected experiment and report how many changed."""
        done = sum(self.change_status(request, experiment, action) for experiment in queryset)
        if done:
            self.message_user(
                request, f"{STATUS_ACTIONS[action]} {done} experiment{'s' if done != 1 else ''}.", messages.SUCCESS
            )

    @admin.action(description="Start selected experiments", permissions=["change"])
    def start_selected(self, request, queryset):
        """Start the selected experiments (refused on overlap or with fewer than two variants)."""
        self._change_selected(request, queryset, "start")

    @admin.action(description="Pause selected experiments", permissions=["change"])
    def pause_selected(self, request, queryset):
        """Pause the selected experiments: they keep their assignment and take no traffic."""
        self._change_selected(request, queryset, "pause")

    @admin.action(description="Stop selected experiments", permissions=["change"])
    def stop_selected(self, request, queryset):
        """Stop the selected experiments."""
        self._change_selected(request, queryset, "stop")

    # --- Results page

    def get_urls(self):
        """Add the results and promote pages before the change pages' catch-all."""
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<str:object_id>/results/", self.admin_site.admin_view(self.results_view), name=f"{info}_results"),
            path("<str:object_id>/promote/", self.admin_site.admin_view(self.promote_view), name=f"{info}_promote"),
            *super().get_urls(),
        ]

    def _experiment(self, request, object_id, *, change):
        """Return the experiment the user may view (or change), or raise PermissionDenied / Http404."""
        experiment = self.get_object(request, object_id)
        if experiment is None:
            raise Http404(f"No experiment {object_id!r}.")
        allowed = self.has_change_permission if change else self.has_view_permission
        if not allowed(request, experiment):
            raise PermissionDenied
        return experiment

    def results_view(self, request, object_id):
        """Show the experiment's results; a POST starts, pauses or stops it."""
        if request.method == "POST":
            experiment = self._experiment(request, object_id, change=True)
            action = request.POST.get("action")
            if action not in STATUS_ACTIONS:
                self.message_user(request, "Unknown action.", messages.ERROR)
            elif self.change_status(request, experiment, action):
                self.message_user(request, f"{STATUS_ACTIONS[action]} {experiment.pk}.", messages.SUCCESS)
            return HttpResponseRedirect(results_url(experiment.pk))
        experiment = self._experiment(request, object_id, change=False)
        context = {
            **self.admin_site.each_context(request),
            **results_context(experiment, experiment_results(experiment), metric_timeseries(experiment)),
            "title": f"Results: {experiment.name}",
            "opts": self.opts,
            "original": experiment,
            "can_change": self.has_change_permission(request, experiment),
        }
        return TemplateResponse(request, "admin/experiments/experiment/results.html", context)

    def promote_view(self, request, object_id):
        """Ask to confirm promoting a variant; once confirmed, promote it, log it and go back to the results."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        experiment = self._experiment(request, object_id, change=True)
        variants = {variant.label: variant for variant in experiment.variants.all()}
        chosen = variants.get(request.POST.get("variant", ""))
        if chosen is None:
            self.message_user(request, "Choose a variant to promote.", messages.ERROR)
            return HttpResponseRedirect(results_url(experiment.pk))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": f"Promote {chosen.label}?",
                "opts": self.opts,
                "original": experiment,
                "variant": chosen,
                "losers": [v for v in variants.values() if v.model_id != chosen.model_id],
            }
            return TemplateResponse(request, "admin/experiments/experiment/promote_confirm.html", context)
        try:
            message = services.experiment_promote(experiment=experiment, variant_name=chosen.label, user=request.user)
        except ValidationError as error:
            self.message_user(request, " ".join(error.messages), messages.ERROR)
            return HttpResponseRedirect(results_url(experiment.pk))
        self.log_change(request, experiment, f"Promoted {chosen.label}: {message}")
        self.message_user(request, message, messages.SUCCESS)
        return HttpResponseRedirect(results_url(experiment.pk))


def results_url(experiment_id):
    """Return the admin results page of an experiment."""
    return reverse("admin:experiments_experiment_results", args=[experiment_id])


# --- The results page's table, shaped for the template ----------------------------------------------------------------


def number(value, signed=False):
    """Return a figure with four significant digits (thousands grouped), or — when there is none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"+{text}" if signed and value > 0 else text


def p_value(value):
    """Return a p-value as analysts read it ("< 0.0001" below that)."""
    if value is None:
        return "—"
    return "< 0.0001" if value < 0.0001 else f"{value:.4f}"


def interval(low, high):
    """Return a confidence interval as "[low, high]", or — when there is none."""
    if low is None or high is None:
        return "—"
    return f"[{number(low)}, {number(high)}]"


def lift(rel_diff):
    """Return a relative difference as a signed percentage."""
    return "—" if rel_diff is None else f"{rel_diff * 100:+.1f} %"


def metric_tables(rows):
    """Return the results' metric rows grouped per metric (primary first, then guardrails), with display cells."""
    tables = {}
    for row in rows:
        metric = row["metric"]
        table = tables.setdefault(
            metric,
            {
                "metric": metric,
                "role": row.get("role", "secondary"),
                "higher_is_better": row.get("higher_is_better", True),
                "percentiles": metric in PERCENTILE_METRICS,
                "rows": [],
            },
        )
        verdict = row.get("verdict") or "inconclusive"
        table["rows"].append(
            {
                "variant": row["variant"],
                "is_control": row.get("is_control", False),
                "units": number(row.get("units")),
                "requests": number(row.get("requests")),
                "n": number(row.get("n")),
                "mean": number(row.get("mean")),
                "sd": number(row.get("sd")),
                "diff": "—" if row.get("is_control") else number(row.get("diff"), signed=True),
                "lift": "—" if row.get("is_control") else lift(row.get("rel_diff")),
                "ci": interval(row.get("ci_low"), row.get("ci_high")),
                "seq_ci": interval(row.get("seq_ci_low"), row.get("seq_ci_high")),
                "p_value": p_value(row.get("p_value")),
                "p_value_adjusted": p_value(row.get("p_value_adjusted")),
                "verdict": verdict,
                "verdict_class": "verdict-" + verdict.replace(" ", "-"),
                "p50": number(row.get("p50")),
                "p95": number(row.get("p95")),
            }
        )
    order = {"primary": 0, "guardrail": 1}
    return sorted(tables.values(), key=lambda table: order.get(table["role"], 2))


def srm_banner(srm, variants):
    """Return the SRM warning's figures (p-value, observed vs expected share per variant), or None when it's fine."""
    if not srm or not srm.get("mismatch"):
        return None
    observed, expected = srm.get("observed") or {}, srm.get("expected_share") or {}
    names = [variant["variant"] for variant in variants]
    if isinstance(observed, list):
        observed = dict(zip(names, observed, strict=False))
    if isinstance(expected, list):
        expected = dict(zip(names, expected, strict=False))
    total = sum(observed.values()) or 1
    return {
        "p_value": p_value(srm.get("p_value")),
        "shares": [
            {
                "variant": name,
                "observed": f"{observed.get(name, 0) / total * 100:.1f} %",
                "units": f"{observed.get(name, 0):,}",
                "expected": f"{(expected.get(name) or 0) * 100:.1f} %",
            }
            for name in names
        ],
    }


def sample_size_context(sample_size, experiment):
    """Return the sample-size progress for the page, or a hint to set the MDE when it is not set."""
    if experiment.minimum_detectable_effect is None:
        return {"hint": "Set a minimum detectable effect on the experiment to see how many units it needs."}
    if not sample_size or not sample_size.get("needed_per_variant"):
        return {"hint": "Not enough data yet to estimate the sample size the minimum detectable effect needs."}
    progress = max(0.0, float(sample_size.get("progress") or 0.0))
    return {
        "metric": sample_size.get("metric"),
        "mde": f"{(sample_size.get('mde_relative') or experiment.minimum_detectable_effect) * 100:g} %",
        "needed": f"{sample_size['needed_per_variant']:,}",
        "so_far": f"{sample_size.get('smallest_variant_units') or 0:,}",
        "progress": min(progress, 1.0),
        "percent": f"{progress * 100:.0f} %",
    }


def metric_charts(timeseries, order):
    """Return one SVG chart per metric that has a value (in the table's order, then any other), each line a variant.

    A metric no request has (TTFT without streams, tokens from an upstream that reports no usage) gets no empty chart.
    """
    series = {
        metric: lines
        for metric, lines in (timeseries.get("series") or {}).items()
        if any(value is not None for points in lines.values() for value in points)
    }
    names = [metric for metric in order if metric in series] + [metric for metric in series if metric not in order]
    return [
        {
            "metric": metric,
            "svg": mark_safe(  # noqa: S308 — charts.line_chart escapes every text it writes
                charts.line_chart(
                    title=metric,
                    buckets=timeseries.get("buckets") or [],
                    series=series[metric],
                    y_label=Y_LABELS.get(metric, f"mean {metric}"),
                )
            ),
        }
        for metric in names
    ]


def results_context(experiment, results, timeseries):
    """Return the results page's context from experiment_results and metric_timeseries."""
    tables = metric_tables(results.get("metrics") or [])
    days = days_running(experiment)
    export = {name: reverse(f"admin-experiment-{name}", args=[experiment.pk]) for name in ("results", "requests")}
    return {
        "experiment": experiment,
        "days_running": "—" if days is None else f"{days:.1f}",
        "variants": results.get("variants") or [],
        "srm": srm_banner(results.get("srm"), results.get("variants") or []),
        "srm_p_value": p_value((results.get("srm") or {}).get("p_value")),
        "tables": tables,
        "correction": results.get("correction") or {},
        "aggregation": results.get("aggregation") or "",
        "sample_size": sample_size_context(results.get("sample_size"), experiment),
        "charts": metric_charts(timeseries, [table["metric"] for table in tables]),
        "status_actions": [
            (action, label)
            for action, label in (("start", "Start"), ("pause", "Pause"), ("stop", "Stop"))
            if allowed_action(experiment.status, action)
        ],
        "exports": [
            ("Results (JSON)", f"{export['results']}?format=json"),
            ("Results (CSV)", f"{export['results']}?format=csv"),
            ("Requests (CSV)", f"{export['requests']}?format=csv"),
            ("Requests (JSONL)", f"{export['requests']}?format=jsonl"),
        ],
    }


def allowed_action(status, action):
    """Return whether the results page offers action for an experiment in status."""
    return {
        "start": status in (ExperimentStatus.DRAFT, ExperimentStatus.PAUSED),
        "pause": status == ExperimentStatus.RUNNING,
        "stop": status in (ExperimentStatus.RUNNING, ExperimentStatus.PAUSED),
    }[action]


# --- Feedback -------------------------------------------------------------------------------------------------------


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    """What apps said about answers (`POST /v1/feedback`), view-only."""

    list_display = ("request_id", "metric", "score", "experiment", "variant", "served_model", "created_at")
    list_filter = ("metric", "experiment")
    search_fields = ("experiment", "variant", "served_model")
    show_full_result_count = False

    def get_search_results(self, request, queryset, search_term):
        """Look a full request id up exactly; other terms search the experiment, variant and model."""
        try:
            request_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(request_id=request_id), False
