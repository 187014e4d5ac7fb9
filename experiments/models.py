"""A/B experiments: what is compared (variants), on which traffic, and what apps said about the answers (feedback).

An experiment's id is the one written in the config file (`model_routing.experiments[].id`); the API, the admin URLs,
response headers and every RequestLog row name it by that id. Assignment reads these rows only through the routing
snapshot (`experiments.assignment`), never on the request path. Saving an experiment or a variant bumps the routing
configuration revision (see `routing.signals`), so every worker picks the change up within a poll interval.
"""

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from routing.models import ApiKey, Model

# The metrics every experiment has, as results and exports name them; feedback adds its own metrics by name.
BUILTIN_METRICS = ("success_rate", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost_usd")
FEEDBACK_METRIC = "feedback"
# Which way is good for each built-in metric (a custom feedback metric: higher is better unless the admin says not).
HIGHER_IS_BETTER = {
    "success_rate": True,
    "latency_ms": False,
    "ttft_ms": False,
    "prompt_tokens": False,
    "completion_tokens": False,
    "cost_usd": False,
    FEEDBACK_METRIC: True,
}
METRIC_NAME = RegexValidator(
    r"^[a-z][a-z0-9_]{0,63}$", "A metric name is lowercase letters, digits and underscores, starting with a letter."
)
EXPERIMENT_ID = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", "An id is letters, digits, '.', '_' and '-' (at most 64), e.g. exp-001."
)


class ExperimentStatus(models.TextChoices):
    """Where an experiment is in its life; only a running one takes traffic."""

    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    STOPPED = "stopped", "Stopped"


class Experiment(models.Model):
    """A comparison of models (variants) on a share of live traffic."""

    id = models.CharField(
        primary_key=True, max_length=64, validators=[EXPERIMENT_ID], help_text="Stable id, as in the config file."
    )
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=ExperimentStatus.choices, default=ExperimentStatus.DRAFT)
    hypothesis = models.TextField(blank=True, default="")
    traffic_percentage = models.FloatField(
        default=10.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(100.0)],
        help_text="Share of the matching units enrolled (0–100). Raising it keeps every enrolled unit's variant.",
    )
    salt = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Hash salt of the assignment; empty means the id. Changing it reshuffles every unit.",
    )
    target_context_types = models.JSONField(
        default=list, blank=True, help_text="Only requests of these context types (empty: all)."
    )
    target_keys = models.ManyToManyField(
        ApiKey, blank=True, related_name="experiments", help_text="Only requests made with these API keys (none: all)."
    )
    primary_metric = models.CharField(max_length=64, default="success_rate", validators=[METRIC_NAME])
    guardrail_metrics = models.JSONField(default=list, blank=True, help_text="Metric names that must not get worse.")
    metric_directions = models.JSONField(
        default=dict,
        blank=True,
        help_text='Which way is good for custom feedback metrics, e.g. {"toxicity": "lower"} (default: higher).',
    )
    minimum_detectable_effect = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0)],
        help_text="Smallest relative change of the primary metric worth detecting (0.05 = 5 %), for the sample size.",
    )
    starts_at = models.DateTimeField(null=True, blank=True, help_text="Takes no traffic before this time.")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="Stops by itself at this time.")
    started_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="When it first ran.")
    stopped_at = models.DateTimeField(null=True, blank=True, editable=False)
    promoted_variant = models.CharField(max_length=100, blank=True, default="", editable=False)
    promoted_by = models.CharField(max_length=150, blank=True, default="", editable=False)
    promoted_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(traffic_percentage__gte=0) & models.Q(traffic_percentage__lte=100),
                name="%(app_label)s_%(class)s_traffic_percentage_range",
            ),
        ]

    def __str__(self):
        return f"{self.id}: {self.name}"

    def assignment_salt(self):
        """Return the salt units are hashed with."""
        return self.salt or self.id

    def is_live(self, now=None):
        """Return whether the experiment takes traffic at now (running, and inside its start and end times)."""
        now = now or timezone.now()
        return (
            self.status == ExperimentStatus.RUNNING
            and (self.starts_at is None or self.starts_at <= now)
            and (self.ends_at is None or now < self.ends_at)
        )

    def control(self):
        """Return the control variant (the first one when none is marked)."""
        variants = list(self.variants.all())
        return next((v for v in variants if v.is_control), variants[0] if variants else None)

    def higher_is_better(self, metric):
        """Return whether a higher value of metric is the good direction."""
        direction = (self.metric_directions or {}).get(metric)
        if direction in ("higher", "lower"):
            return direction == "higher"
        return HIGHER_IS_BETTER.get(metric, True)


class Variant(models.Model):
    """One arm of an experiment: a model, optional request overrides, and a share of the enrolled units."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(
        max_length=100, blank=True, default="", help_text="What headers, results and exports call it (default: model)."
    )
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="variants")
    weight = models.FloatField(default=1.0, validators=[MinValueValidator(0.0)])
    is_control = models.BooleanField(default=False)
    overrides = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            'Request parameters this variant sets, e.g. {"temperature": 0.2, "system_prompt_prefix": "Be brief."}; '
            "allowed: temperature, top_p, max_tokens, presence_penalty, frequency_penalty, system_prompt_prefix."
        ),
    )
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["experiment", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="%(app_label)s_%(class)s_unique_name"),
            models.CheckConstraint(condition=models.Q(weight__gte=0), name="%(app_label)s_%(class)s_weight_gte_0"),
        ]

    def __str__(self):
        return self.label

    def save(self, *args, **kwargs):
        """Name the variant after its model when no name is given, so the name is unique and stable."""
        if not self.name and self.model_id:
            self.name = self.model.name
        super().save(*args, **kwargs)

    @property
    def label(self):
        """Return the variant's name: its own, else its model's."""
        return self.name or self.model.name


class Feedback(models.Model):
    """A score an app gave to one answer (`POST /v1/feedback`); one per (request, metric), the latest wins.

    The experiment, variant, model and context type are copied from the request's log row when the feedback is
    accepted, so results and rollups never join the request log.
    """

    request_id = models.UUIDField()
    metric = models.CharField(max_length=64, default=FEEDBACK_METRIC, validators=[METRIC_NAME])
    score = models.FloatField(help_text="0–1 (thumbs: 1 up, 0 down).")
    comment = models.TextField(blank=True, default="")
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.DO_NOTHING, null=True, blank=True, db_constraint=False, related_name="feedback"
    )
    experiment = models.CharField(max_length=64, blank=True, default="")
    variant = models.CharField(max_length=100, blank=True, default="")
    experiment_unit = models.CharField(max_length=32, blank=True, default="")
    served_model = models.CharField(max_length=200, blank=True, default="")
    context_type = models.CharField(max_length=32, blank=True, default="")
    request_created_at = models.DateTimeField(null=True, blank=True, help_text="When the rated request arrived.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(fields=["request_id", "metric"], name="%(app_label)s_%(class)s_unique_metric"),
            models.CheckConstraint(
                condition=models.Q(score__gte=0) & models.Q(score__lte=1), name="%(app_label)s_%(class)s_score_range"
            ),
        ]
        indexes = [
            models.Index(fields=["experiment", "variant"], name="experiments_feedback_variant"),
            # The quality rollup recomputes the feedback metric of one day of rated requests at a time.
            models.Index(fields=["metric", "request_created_at"], name="experiments_feedback_day"),
        ]

    def __str__(self):
        return f"{self.request_id} {self.metric}={self.score:g}"


class UnitTotals(models.Model):
    """A unit's request totals in one experiment and variant: `<metric>_n` counts its requests that have a value of
    the metric and `<metric>_sum` adds them."""

    experiment = models.CharField(max_length=64)
    variant = models.CharField(max_length=100)
    unit = models.CharField(max_length=32, help_text="Hashed unit.")
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    successes = models.PositiveIntegerField(default=0)
    latency_ms_n = models.PositiveIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0)
    ttft_ms_n = models.PositiveIntegerField(default=0)
    ttft_ms_sum = models.FloatField(default=0)
    prompt_tokens_n = models.PositiveIntegerField(default=0)
    prompt_tokens_sum = models.BigIntegerField(default=0)
    completion_tokens_n = models.PositiveIntegerField(default=0)
    completion_tokens_sum = models.BigIntegerField(default=0)
    cost_usd_n = models.PositiveIntegerField(default=0)
    cost_usd_sum = models.FloatField(default=0)

    class Meta:
        abstract = True
        ordering = ["experiment", "variant", "unit"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "variant", "unit"], name="%(app_label)s_%(class)s_unique"),
        ]

    def __str__(self):
        return f"{self.experiment}/{self.variant}/{self.unit}"


class UnitRollup(UnitTotals):
    """One unit's totals in one experiment and variant, over the whole experiment (what per-unit analysis needs).

    The unit is the randomisation unit, so results compare variants over units: each unit's mean of a per-request
    metric is one observation (`experiments.results`); feedback is {metric: [n, sum]}. Written only by
    `experiments.rollups`, which recomputes a unit's row from all its requests whenever it made a request or got
    feedback (the rows retention dropped counting through RetiredUnitTotals), so reruns give the same rows.
    """

    feedback = models.JSONField(default=dict, blank=True, help_text="{metric: [n, sum]} of the unit's feedback.")

    class Meta(UnitTotals.Meta):
        pass


class RetiredUnitTotals(UnitTotals):
    """A unit's totals over its request-log rows that retention dropped (`routing.partitions`), added as they go.

    UnitRollup is recomputed from these plus the rows still in the log, so a unit's totals stay whole after its
    oldest requests are gone. Written only by `experiments.rollups.retire_units`.
    """

    class Meta(UnitTotals.Meta):
        verbose_name_plural = "retired unit totals"


class VariantRollup(models.Model):
    """Request-level statistics of one variant over one hour: the charts over time and the latency percentiles.

    `sums` is {metric: [n, sum, sum of squares]} (feedback metrics by the hour of the rated request); latency and TTFT
    are also histograms (`routing.histogram`) of successful requests. Written only by `experiments.rollups`, which
    recomputes whole hours and replaces them.
    """

    experiment = models.CharField(max_length=64)
    variant = models.CharField(max_length=100)
    bucket_start = models.DateTimeField(help_text="Start of the hour (UTC).")
    requests = models.PositiveIntegerField(default=0)
    units = models.PositiveIntegerField(default=0, help_text="Distinct units with a request in this hour.")
    sums = models.JSONField(default=dict, blank=True)
    latency_ms_histogram = models.JSONField(default=list, blank=True)
    ttft_ms_histogram = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["experiment", "bucket_start", "variant"]
        constraints = [
            models.UniqueConstraint(
                fields=["experiment", "bucket_start", "variant"], name="%(app_label)s_%(class)s_unique_bucket"
            ),
        ]

    def __str__(self):
        return f"{self.experiment}/{self.variant} {self.bucket_start:%Y-%m-%d %H:%M}"


class QualityRollup(models.Model):
    """Ratings of the `feedback` metric per served model, context type and day of the rated request.

    Selection's quality term sums the last 30 days of these (`experiments.quality`), so no worker ever aggregates the
    Feedback table itself. Written only by `experiments.quality.rollup_quality`, which recomputes whole days.
    """

    day = models.DateField(help_text="Day (UTC) of the rated requests.")
    model = models.CharField(max_length=200)
    context_type = models.CharField(max_length=32)
    ratings = models.PositiveIntegerField(default=0)
    score_sum = models.FloatField(default=0)
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-day", "model", "context_type"]
        constraints = [
            models.UniqueConstraint(fields=["day", "model", "context_type"], name="%(app_label)s_%(class)s_unique_day"),
        ]

    def __str__(self):
        return f"{self.model} / {self.context_type} {self.day}: {self.ratings} ratings"
