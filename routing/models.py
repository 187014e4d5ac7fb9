"""Routing configuration (providers, models, instances, API keys) and the per-request log.

The configuration tables are read on the hot path only through `routing.snapshot`, never directly: every write to
them bumps `ConfigRevision`, which each worker polls to rebuild its in-process snapshot.
"""

import json
import secrets as pysecrets
import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from routing import secrets


class RoutingStrategy(models.TextChoices):
    """How a request picks among the healthy instances of a model."""

    ROUND_ROBIN = "round-robin", "Round-robin"
    LEAST_LOADED = "least-loaded", "Least loaded (fewest in-flight)"
    RANDOM = "random", "Random"
    WEIGHTED = "weighted", "Weighted random (by instance weight)"
    LATENCY_BASED = "latency-based", "Latency-based (power of two choices on EWMA)"
    USAGE_BASED = "usage-based", "Usage-based (most rpm/tpm headroom this minute)"
    COST_BASED = "cost-based", "Cost-based (cheapest instance)"


class ModelMode(models.TextChoices):
    """Which endpoint a model serves."""

    CHAT = "chat", "Chat (/v1/chat/completions, /v1/completions)"
    EMBEDDING = "embedding", "Embedding (/v1/embeddings)"


class ConfigRevision(models.Model):
    """A single row whose token changes on every routing-configuration write."""

    token = models.UUIDField(default=uuid.uuid4)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"revision {self.token} at {self.changed_at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def bump(cls):
        """Record that the routing configuration changed, so every worker reloads it."""
        cls.objects.update_or_create(pk=1, defaults={"token": uuid.uuid4()})

    @classmethod
    def current_token(cls):
        """Return the current revision token, or None before the first change."""
        return cls.objects.filter(pk=1).values_list("token", flat=True).first()


# One partition a day on Postgres (routing.partitions): a longer retention would mean more partitions than a query
# plan should walk.
MAX_LOG_RETENTION_DAYS = 400


def default_type_weights():
    """Return the default per-context-type selection weights: plain chat goes cheap first."""
    return {"general_chat": {"capability": 0.55, "performance": 0.15, "cost": 0.3}}


class RoutingSettings(models.Model):
    """Gateway-wide routing defaults (one row, edited in admin or by `import_routing_config`)."""

    default_strategy = models.CharField(
        max_length=32, choices=RoutingStrategy.choices, default=RoutingStrategy.ROUND_ROBIN
    )
    auto_select = models.BooleanField(
        default=False,
        help_text=(
            "Select the model for every request, not only for model=\"auto\": the model a client names counts as a "
            "preference, never past a hard filter. Config: model_routing.auto_select."
        ),
    )
    # Automatic model selection: how much each part of a candidate's score counts (see routing/scoring.py).
    selection_weight_capability = models.FloatField(
        default=0.6, help_text="Weight of capability fit (tagged for the request's context type)."
    )
    selection_weight_performance = models.FloatField(
        default=0.25, help_text="Weight of measured reliability and latency."
    )
    selection_weight_cost = models.FloatField(default=0.15, help_text="Weight of the request's expected cost.")
    selection_weight_quality = models.FloatField(
        default=0.05,
        help_text=(
            "Weight of the answers' quality as apps rated it (POST /v1/feedback): mean feedback per model and context "
            "type, shrunk towards a neutral prior until enough feedback arrives; 0 turns it off."
        ),
    )
    selection_type_weights = models.JSONField(
        default=default_type_weights,
        blank=True,
        help_text=(
            "Per context type, weights that replace the three above, e.g. "
            '{"general_chat": {"capability": 0.55, "performance": 0.15, "cost": 0.3}} (cheap first for chat).'
        ),
    )
    # Circuit breaker (passive health), per instance.
    breaker_consecutive_failures = models.PositiveIntegerField(
        default=5, help_text="Open an instance's breaker after this many failures in a row."
    )
    breaker_error_ratio = models.FloatField(
        default=0.5, help_text="…or when at least this share of its recent requests failed…"
    )
    breaker_min_requests = models.PositiveIntegerField(default=10, help_text="…over at least this many requests…")
    breaker_window_seconds = models.PositiveIntegerField(default=60, help_text="…within this many seconds.")
    breaker_cooldown_seconds = models.FloatField(
        default=10, help_text="How long an opened breaker stays open before a trial request (doubles per trip)."
    )
    breaker_max_cooldown_seconds = models.FloatField(default=300, help_text="Longest cooldown after repeated trips.")
    breaker_half_open_successes = models.PositiveIntegerField(
        default=2, help_text="Successful trial requests that close a half-open breaker."
    )
    # Retries and failover.
    max_attempts = models.PositiveIntegerField(
        default=3, help_text="Upstream attempts per request, across instances (1 = no failover)."
    )
    retry_budget_ratio = models.FloatField(
        default=0.1,
        help_text="Retries allowed per request on average (plus a burst of 10), so an outage cannot multiply traffic.",
    )
    # Active health checks (Celery beat).
    health_check_interval_seconds = models.PositiveIntegerField(
        default=30, help_text="How often each enabled instance is probed; 0 turns probing off."
    )
    health_check_timeout_seconds = models.FloatField(default=10, help_text="Timeout of one probe.")
    # Request log retention (routing.partitions).
    request_log_retention_days = models.PositiveIntegerField(
        "request log retention (days)",
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_LOG_RETENTION_DAYS)],
        help_text=(
            "Keep request-log rows at least this many days; older days are dropped whole, hourly. The rollups behind "
            "the stats, the dashboard and experiment results are kept on their own and do not need the rows."
        ),
    )
    request_log_purged_before = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Request-log rows created before this were dropped by retention; rollups are never recomputed "
        "before it.",
    )

    class Meta:
        verbose_name = "routing settings"
        verbose_name_plural = "routing settings"

    def __str__(self):
        return f"default strategy {self.default_strategy}"

    @classmethod
    def load(cls):
        """Return the settings row, creating it with defaults if missing."""
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj


class UpstreamSecret(models.Model):
    """An upstream API key that is either encrypted at rest or a reference to an environment variable."""

    api_key_ciphertext = models.TextField(blank=True, default="", editable=False)
    api_key_env = models.CharField(
        max_length=128, blank=True, default="", help_text="Environment variable holding the key (os.environ/NAME)."
    )
    api_key_last4 = models.CharField(max_length=4, blank=True, default="", editable=False)

    class Meta:
        abstract = True

    def set_api_key(self, value):
        """Store an `os.environ/NAME` reference as-is, or a literal key encrypted; empty clears it."""
        self.api_key_ciphertext = ""
        self.api_key_env = ""
        self.api_key_last4 = ""
        if not value:
            return
        env_name = secrets.env_reference_name(value)
        if env_name:
            self.api_key_env = env_name
        else:
            self.api_key_ciphertext = secrets.encrypt(value)
            self.api_key_last4 = value[-4:]

    def has_api_key(self):
        """Return whether a key or a key reference is configured."""
        return bool(self.api_key_ciphertext or self.api_key_env)

    def api_key_reference(self):
        """Return the `os.environ/NAME` form when the key is a reference, else None."""
        return secrets.env_reference(self.api_key_env) if self.api_key_env else None

    def resolve_api_key(self):
        """Return the usable key (decrypted or read from the environment), or None."""
        if self.api_key_env:
            return secrets.resolve_env(self.api_key_env)
        if self.api_key_ciphertext:
            return secrets.decrypt(self.api_key_ciphertext)
        return None

    def api_key_display(self):
        """Return a safe description of the key for admin pages."""
        if self.api_key_env:
            return secrets.env_reference(self.api_key_env)
        if self.api_key_ciphertext:
            return f"…{self.api_key_last4}"
        return "—"


class Provider(UpstreamSecret):
    """An upstream LLM provider account (OpenAI, Anthropic, a vLLM host, …) with its default endpoint and key."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(
        max_length=50, help_text="litellm provider prefix: openai, anthropic, azure, bedrock, groq, …"
    )
    api_base = models.URLField(
        "API base", max_length=500, blank=True, default="", help_text="Default endpoint for instances."
    )
    openai_compatible = models.BooleanField(
        "OpenAI-compatible",
        default=False,
        help_text="Speaks the OpenAI chat API natively, so requests are forwarded without going through litellm.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Model(models.Model):
    """A public model name that clients send (e.g. `vault-gpt-4o-mini`), served by one or more instances."""

    name = models.CharField(max_length=200, unique=True, help_text="The name clients put in `model`.")
    description = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    mode = models.CharField(
        max_length=16,
        choices=ModelMode.choices,
        default=ModelMode.CHAT,
        help_text="Chat models answer chat (and legacy) completions; embedding models answer /v1/embeddings.",
    )
    capabilities = models.JSONField(
        default=list, blank=True, help_text="Capability tags, e.g. code_generation, summarization, general_chat."
    )
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        help_text="Models tried in this order when this one cannot serve a request (router_settings.fallbacks).",
    )
    context_window_fallbacks = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "Models used instead, in this order, for a request too long for this model's context window "
            "(router_settings.context_window_fallbacks)."
        ),
    )
    served_by = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text=(
            "Serve requests that name this model with that model instead (an alias; set when an experiment's winner "
            "is promoted). Empty: this model serves its own requests."
        ),
    )
    strategy = models.CharField(
        max_length=32,
        choices=RoutingStrategy.choices,
        blank=True,
        default="",
        help_text="Load-balancing strategy; blank uses the gateway default.",
    )
    # Metadata overrides: blank (null) means "what litellm's model map says about the instances' upstream models"
    # (routing.metadata resolves the effective values).
    input_cost_per_mtok = models.DecimalField(
        "input price (USD per million tokens)",
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Price of prompt tokens; blank uses the litellm model map.",
    )
    output_cost_per_mtok = models.DecimalField(
        "output price (USD per million tokens)",
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Price of completion tokens; blank uses the litellm model map.",
    )
    context_window = models.PositiveIntegerField(
        "context window (max input tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Most prompt tokens a request may carry; blank uses the litellm model map.",
    )
    supports_function_calling = models.BooleanField(
        null=True, blank=True, help_text="Accepts tools / function calling; unknown uses the litellm model map."
    )
    supports_vision = models.BooleanField(
        null=True, blank=True, help_text="Accepts image input; unknown uses the litellm model map."
    )
    supports_response_schema = models.BooleanField(
        "supports response schema / JSON mode",
        null=True,
        blank=True,
        help_text="Honours response_format (JSON mode or a JSON schema); unknown uses the litellm model map.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


def new_instance_id():
    """Return a fresh stable instance id."""
    return f"inst-{pysecrets.token_hex(6)}"


class ProviderInstance(UpstreamSecret):
    """One deployment of a Model on a Provider: a litellm model string plus endpoint, key and limits."""

    id = models.CharField(
        primary_key=True,
        max_length=100,
        default=new_instance_id,
        help_text="Stable id (config `model_info.id`), shown in the x-chatvault-instance header.",
    )
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="instances")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="instances")
    litellm_model = models.CharField(
        "litellm model", max_length=300, help_text="litellm model string, e.g. openai/gpt-4o-mini."
    )
    api_base = models.URLField(
        "API base", max_length=500, blank=True, default="", help_text="Overrides the provider's."
    )
    api_base_env = models.CharField(
        "API base variable",
        max_length=128,
        blank=True,
        default="",
        help_text="Environment variable holding the endpoint (api_base: os.environ/NAME); wins over API base.",
    )
    params = models.JSONField(
        "provider parameters",
        default=dict,
        blank=True,
        help_text=(
            "Provider-specific litellm_params passed to litellm on every call (api_version, aws_region_name, "
            "vertex_project, extra_headers, …); a value may be an os.environ/NAME reference. Credentials go below."
        ),
    )
    secret_params = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="Credential litellm_params (names with key, secret, token, credentials, password), each encrypted.",
    )
    weight = models.FloatField(default=1.0)
    rpm = models.PositiveIntegerField(
        "RPM limit", null=True, blank=True, help_text="Requests per minute it takes (all workers); then it is skipped."
    )
    tpm = models.PositiveIntegerField(
        "TPM limit", null=True, blank=True, help_text="Tokens per minute it takes (all workers); then it is skipped."
    )
    timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds for a whole non-streaming call and for a stream's first byte."
    )
    stream_timeout = models.FloatField(null=True, blank=True, help_text="Seconds allowed between stream chunks.")
    enabled = models.BooleanField(default=True)
    drained = models.BooleanField(
        default=False, help_text="Send no new requests here (in-flight ones finish); undo to bring it back."
    )
    breaker_reset_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When an operator last reset this instance's breaker."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(weight__gte=0), name="%(app_label)s_%(class)s_weight_gte_0"),
        ]

    def __str__(self):
        return f"{self.id} ({self.litellm_model})"

    def effective_api_base(self):
        """Return the endpoint this instance calls: its own (read from the environment if a reference), else its
        provider's."""
        if self.api_base_env:
            return secrets.resolve_env(self.api_base_env) or ""
        return self.api_base or self.provider.api_base

    def set_secret_param(self, name, value):
        """Store a credential parameter: an os.environ/NAME reference as-is in params, a literal encrypted."""
        self.params = {k: v for k, v in self.params.items() if k != name}
        self.secret_params = {k: v for k, v in self.secret_params.items() if k != name}
        if value in (None, ""):
            return
        if secrets.env_reference_name(value):
            self.params[name] = value
        else:
            self.secret_params[name] = secrets.encrypt(json.dumps(value))

    def secret_param(self, name):
        """Return the literal value of an encrypted credential parameter (None if not stored)."""
        token = self.secret_params.get(name)
        return json.loads(secrets.decrypt(token)) if token else None

    def resolved_params(self):
        """Return every provider parameter as litellm takes it: references read from the environment, credentials
        decrypted; a reference to an unset variable is left out (litellm then uses its own default)."""
        resolved = {}
        for name, value in self.params.items():
            value = secrets.resolve_references(value)
            if value is not None:
                resolved[name] = value
        for name in self.secret_params:
            resolved[name] = self.secret_param(name)
        return resolved

    def effective_api_key(self):
        """Return the key this instance uses: its own, else its provider's."""
        if self.has_api_key():
            return self.resolve_api_key()
        return self.provider.resolve_api_key()


class InstanceProbe(models.Model):
    """The result of one active health check of an instance."""

    instance = models.ForeignKey(ProviderInstance, on_delete=models.CASCADE, related_name="probes")
    checked_at = models.DateTimeField(db_index=True)
    ok = models.BooleanField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField("latency (ms)", null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["instance", "-checked_at"], name="routing_probe_instance_time")]

    def __str__(self):
        return f"{self.instance_id} {'ok' if self.ok else 'failed'} at {self.checked_at:%H:%M:%S}"


class ApiKey(models.Model):
    """A client credential. Only a SHA-256 hash is stored; the secret is shown once, at creation."""

    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True, editable=False, help_text="Visible start of the key.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_admin = models.BooleanField(default=False, help_text="May also call the /v1/admin/ endpoints.")
    allowed_models = models.ManyToManyField(
        Model, blank=True, related_name="api_keys", help_text="Empty means every enabled model."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    auto_select = models.BooleanField(
        "automatic selection",
        default=True,
        help_text="May use model=\"auto\" (and, when the gateway selects for every request, is selected for).",
    )
    auto_models = models.ManyToManyField(
        Model,
        blank=True,
        related_name="auto_api_keys",
        help_text="The pool automatic selection picks from for this key; empty means every model it may use.",
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"


class Outcome(models.TextChoices):
    """How a request ended."""

    OK = "ok", "OK"
    CLIENT_ERROR = "client_error", "Client error"
    UPSTREAM_ERROR = "upstream_error", "Upstream error"
    UPSTREAM_TIMEOUT = "upstream_timeout", "Upstream timeout"
    RATE_LIMITED = "rate_limited", "Upstream rate limited"
    NO_CAPACITY = "no_capacity", "No instance available"
    CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"
    INTERNAL_ERROR = "internal_error", "Internal error"
    SERVER_SHUTDOWN = "server_shutdown", "Server shutting down"


class RequestLog(models.Model):
    """One row per authenticated request, written in batches off the request path.

    On Postgres the table is partitioned by day of created_at (`routing.partitions`), so its primary key is
    (id, created_at) there and the request id is unique together with created_at: a partitioned table's unique
    constraints must hold its partition key. Every index leads with a filter's column and ends with created_at, so
    each admin filter reads its newest rows in order.
    """

    request_id = models.UUIDField()
    created_at = models.DateTimeField(help_text="When the request arrived.")
    endpoint = models.CharField(max_length=32, default="chat.completions", help_text="chat.completions or models.")
    # No database constraints on these: rows are written in batches after the fact, and a key or instance deleted
    # in between must not make the batch fail. Deleting a key or instance leaves its id in the history
    # (DO_NOTHING) instead of rewriting every row that names it.
    # Their own indexes would only repeat the (key, time) and (instance, time) ones below.
    api_key = models.ForeignKey(
        ApiKey,
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        related_name="requests",
    )
    instance = models.ForeignKey(
        ProviderInstance,
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        related_name="requests",
    )
    user = models.CharField(max_length=256, blank=True, default="", help_text="The OpenAI `user` field.")
    requested_model = models.CharField(max_length=200, blank=True, default="")
    served_model = models.CharField(max_length=200, blank=True, default="")
    stream = models.BooleanField(default=False)
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField("cost (USD)", max_digits=14, decimal_places=8, null=True, blank=True)
    latency_ms = models.FloatField("latency (ms)", null=True, blank=True)
    ttft_ms = models.FloatField("TTFT (ms)", null=True, blank=True, help_text="Time to first token, streams only.")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Upstream calls made for this request.")
    decision = models.JSONField(default=dict, blank=True, help_text="Why this model and instance were chosen.")
    context_type = models.CharField(
        max_length=32, blank=True, default="", help_text="The request's context type, when the model was selected."
    )
    experiment = models.CharField(max_length=64, blank=True, default="", help_text="The experiment that enrolled it.")
    variant = models.CharField(max_length=100, blank=True, default="", help_text="Its variant in that experiment.")
    experiment_unit = models.CharField(
        max_length=32, blank=True, default="", help_text="The hashed unit (user, session or key) it was assigned by."
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Also the index of a request id lookup (one probe per partition).
            models.UniqueConstraint(fields=["request_id", "created_at"], name="%(app_label)s_%(class)s_unique_request"),
        ]
        indexes = [
            # The admin list's order and keyset pages: newest first, the id breaking ties.
            models.Index(fields=["created_at", "id"], name="routing_log_time"),
            models.Index(fields=["api_key", "created_at"], name="routing_log_key_time"),
            models.Index(fields=["served_model", "created_at"], name="routing_log_model_time"),
            models.Index(fields=["instance", "created_at"], name="routing_log_instance_time"),
            models.Index(fields=["outcome", "created_at"], name="routing_log_outcome_time"),
            models.Index(fields=["stream", "created_at"], name="routing_log_stream_time"),
            # The Selections list: the newest auto-selected requests, however few of the newest rows were selected.
            models.Index(
                fields=["created_at", "id"], name="routing_log_selected_time", condition=~models.Q(context_type="")
            ),
            # Experiment rollups and exports read an experiment's rows by time and by unit; most rows are in none.
            models.Index(
                fields=["experiment", "created_at"],
                name="routing_log_experiment_time",
                condition=~models.Q(experiment=""),
            ),
            models.Index(
                fields=["experiment", "experiment_unit"],
                name="routing_log_experiment_unit",
                condition=~models.Q(experiment=""),
            ),
        ]

    def __str__(self):
        return f"{self.request_id} {self.outcome}"


class SelectionManager(models.Manager):
    """The logged chat requests whose model automatic selection chose."""

    def get_queryset(self):
        """Return the rows with a context type, leaving out recommend calls (they rank models but serve none)."""
        return super().get_queryset().exclude(context_type="").exclude(endpoint="models.recommend")


class Selection(RequestLog):
    """An auto-selected request: the request log seen through its selection decision (for the admin)."""

    objects = SelectionManager()

    class Meta:
        proxy = True


class RollupGranularity(models.TextChoices):
    """How long a rollup bucket is."""

    MINUTE = "minute", "Minute"
    HOUR = "hour", "Hour"


class RequestRollup(models.Model):
    """RequestLog statistics of one model and instance over one minute or hour, recomputed from the log.

    Written only by `routing.rollups.rollup_request_logs`, which recomputes whole buckets and replaces them, so a
    rerun gives the same rows. Latency and TTFT are of successful requests, as histograms (`routing.histogram`)
    that merge by adding counts; counts by outcome and by context type are {name: count}.
    """

    granularity = models.CharField(max_length=8, choices=RollupGranularity.choices)
    bucket_start = models.DateTimeField(help_text="Start of the minute or hour (UTC).")
    model = models.CharField(
        max_length=200, blank=True, default="", help_text="The served model; empty when none was chosen."
    )
    instance_id = models.CharField(
        max_length=100, blank=True, default="", help_text="The instance that answered last; empty when none was tried."
    )
    requests = models.PositiveIntegerField(default=0)
    successes = models.PositiveIntegerField(default=0, help_text="Requests whose outcome is ok.")
    outcomes = models.JSONField(default=dict, blank=True, help_text="{outcome: requests}.")
    context_types = models.JSONField(
        default=dict, blank=True, help_text="{context type: requests} of the requests whose model was selected."
    )
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField("cost (USD)", max_digits=20, decimal_places=8, default=0)
    latency_ms_histogram = models.JSONField(default=list, blank=True, help_text="Bucket counts, see routing.histogram.")
    ttft_ms_histogram = models.JSONField(default=list, blank=True, help_text="Bucket counts, see routing.histogram.")

    class Meta:
        ordering = ["-bucket_start", "model", "instance_id"]
        constraints = [
            # Also the index of every read: a granularity and a range of bucket starts.
            models.UniqueConstraint(
                fields=["granularity", "bucket_start", "model", "instance_id"],
                name="%(app_label)s_%(class)s_unique_bucket",
            ),
            models.CheckConstraint(
                condition=models.Q(successes__lte=models.F("requests")),
                name="%(app_label)s_%(class)s_successes_lte_requests",
            ),
        ]

    def __str__(self):
        return f"{self.model or '-'} / {self.instance_id or '-'} {self.granularity} {self.bucket_start:%Y-%m-%d %H:%M}"


class KeyRollup(models.Model):
    """RequestLog totals of one API key over one hour, recomputed from the log (for the dashboard's top keys).

    Written only by `routing.rollups`, which recomputes whole hours and replaces them, like RequestRollup.
    """

    bucket_start = models.DateTimeField(help_text="Start of the hour (UTC).")
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.DO_NOTHING, db_constraint=False, related_name="rollups", help_text="The key."
    )
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Requests whose outcome is not ok.")
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField("cost (USD)", max_digits=20, decimal_places=8, default=0)

    class Meta:
        ordering = ["-bucket_start", "api_key"]
        constraints = [
            # Also the index of every read: a range of hours.
            models.UniqueConstraint(fields=["bucket_start", "api_key"], name="%(app_label)s_%(class)s_unique_bucket"),
            models.CheckConstraint(
                condition=models.Q(errors__lte=models.F("requests")),
                name="%(app_label)s_%(class)s_errors_lte_requests",
            ),
        ]

    def __str__(self):
        return f"key {self.api_key_id} {self.bucket_start:%Y-%m-%d %H:%M}"
