"""The in-process routing snapshot: keys, models and instances as plain immutable values.

The hot path reads `current()` and never queries the database. A background thread per worker polls
`ConfigRevision` every `CHATVAULT_CONFIG_POLL_SECONDS` and swaps in a fresh snapshot when the token changed, so an
admin change reaches every worker within about one poll interval, without a restart.
"""

import collections
import dataclasses
import logging
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from routing import adapters, health, metadata, scoring, secrets
from routing.models import (
    ApiKey,
    ConfigRevision,
    InstanceProbe,
    Model,
    ModelMode,
    ProviderInstance,
    RoutingSettings,
    RoutingStrategy,
)

logger = logging.getLogger(__name__)

# Used when an instance sets no timeout of its own (litellm's defaults are of the same order).
DEFAULT_TIMEOUT_SECONDS = 600.0
DEFAULT_STREAM_TIMEOUT_SECONDS = 120.0
# How an instance missing its API key (`key_missing`) is shown: its state, and the reason it is not routed to.
NO_KEY = "no key"
NO_KEY_REASON = "no API key"


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceConfig:
    """An enabled instance as the hot path needs it, with its secret resolved."""

    id: str
    model: str
    provider_kind: str
    litellm_model: str
    api_base: str | None
    api_key: str | None
    openai_compatible: bool
    weight: float
    rpm: int | None
    tpm: int | None
    timeout: float
    stream_timeout: float
    input_cost_per_token: Decimal | None
    output_cost_per_token: Decimal | None
    drained: bool = False
    breaker_reset_at: float | None = None
    # No API key where one is needed (`key_missing`): never routed to, shown as "no key".
    missing_key: bool = False
    # Its model serves embeddings (Model.mode): probes ask for an embedding instead of a chat completion.
    embedding: bool = False
    # Provider-specific litellm_params, resolved (ProviderInstance.resolved_params); not part of the hash.
    params: dict = dataclasses.field(default_factory=dict, hash=False)

    def secrets(self):
        """Return every credential of this instance, for masking in texts that leave the adapter."""
        found = [self.api_key]
        for name, value in self.params.items():
            if secrets.is_secret_param(name):
                found.extend(_strings(value))
        return tuple(found)

    @property
    def price_per_token(self):
        """Return the input plus output price per token (what cost-based routing compares), or None if unknown."""
        if self.input_cost_per_token is None and self.output_cost_per_token is None:
            return None
        return float((self.input_cost_per_token or 0) + (self.output_cost_per_token or 0))

    @property
    def upstream_model(self):
        """Return the model name the upstream itself expects (the litellm string without its provider prefix)."""
        prefix, sep, rest = self.litellm_model.partition("/")
        return rest if sep and prefix == self.provider_kind else self.litellm_model


@dataclasses.dataclass(frozen=True, slots=True)
class ModelConfig:
    """An enabled public model with its enabled instances and its resolved metadata (`routing.metadata`).

    Each metadata value is None when unknown; `sources` says where each came from ("override", "litellm" or None).
    """

    name: str
    description: str
    strategy: str
    capabilities: tuple[str, ...]
    context_window: int | None
    created: int
    instances: tuple[InstanceConfig, ...]
    supports_function_calling: bool | None = None
    supports_vision: bool | None = None
    supports_response_schema: bool | None = None
    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    sources: dict = dataclasses.field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()  # model names, tried in order when this model cannot serve
    context_window_fallbacks: tuple[str, ...] = ()  # model names for requests too long for this model
    served_by: str = ""  # an alias: requests naming this model are served by that one (a promoted winner)
    mode: str = "chat"  # Model.mode: which endpoint it serves (chat and legacy completions, or embeddings)

    @property
    def embedding(self):
        """Return whether this model serves /v1/embeddings (and not chat)."""
        return self.mode == ModelMode.EMBEDDING


@dataclasses.dataclass(frozen=True, slots=True)
class KeyConfig:
    """A client API key (by hash) and what it may do."""

    pk: int
    name: str
    prefix: str
    is_admin: bool
    allowed_models: frozenset[str] | None
    expires_at: datetime | None
    revoked: bool
    auto_select: bool = True
    auto_models: frozenset[str] | None = None

    def may_use(self, model_name):
        """Return whether this key may call the named model."""
        return self.allowed_models is None or model_name in self.allowed_models

    def may_select(self, model_name):
        """Return whether automatic selection may pick the named model for this key."""
        return self.may_use(model_name) and (self.auto_models is None or model_name in self.auto_models)


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the hot path needs, loaded at once."""

    token: object
    models: dict[str, ModelConfig]
    keys_by_hash: dict[str, KeyConfig]
    default_strategy: str
    auto_select: bool
    loaded_at: float
    breaker_policy: health.BreakerPolicy = health.BreakerPolicy()
    max_attempts: int = 3
    retry_budget_ratio: float = 0.1
    selection_weights: scoring.Weights = scoring.Weights()
    type_weights: dict[str, scoring.Weights] = dataclasses.field(default_factory=dict)
    # Running experiments (`experiments.assignment.LiveExperiment`) by the model names they may claim, in id order.
    experiments_by_model: dict[str, tuple] = dataclasses.field(default_factory=dict)
    # Feedback for selection's quality term: {(model, context type): (ratings, sum of scores)} over the last 30 days
    # (`experiments.quality.quality_figures`, from the daily rollup), reloaded with the snapshot and every
    # QUALITY_REFRESH_SECONDS.
    quality: dict[tuple[str, str], tuple[int, float]] = dataclasses.field(default_factory=dict)

    def weights_for(self, context_type):
        """Return the selection weights for a context type: its own if an admin set them, else the defaults."""
        return self.type_weights.get(context_type, self.selection_weights)


def _strings(value):
    """Return every string inside a parameter value (a credential may be a mapping, e.g. vertex_credentials)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def passes_through(inst, params):
    """Return whether calls to the instance go through the OpenAI-compatible pass-through rather than litellm."""
    # The pass-through speaks plain OpenAI: provider parameters (api_version, organization, extra_headers, …)
    # are honoured only by litellm, so an instance that sets any goes through it.
    return inst.provider.openai_compatible and not params


def key_missing(inst, params):
    """Return whether the instance needs an API key and neither it nor its provider has one configured.

    Only a pass-through to a hosted service (a kind with a public endpoint: openai, groq, …) is known to need one:
    ChatVault itself sends its Authorization header. litellm reads provider keys from its own environment variables
    (ANTHROPIC_API_KEY, AWS credentials, …) and self-hosted servers (hosted_vllm, openai_compatible) often take
    none, so those are never flagged. An os.environ/NAME reference counts as a key even when NAME is unset here:
    the variable is the deployment's business, and an upstream refusing the key is caught as a misconfiguration.
    """
    if not passes_through(inst, params) or not adapters.OPENAI_COMPATIBLE_KINDS.get(inst.provider.kind):
        return False
    return not (inst.has_api_key() or inst.provider.has_api_key())


def instance_config(inst, model):
    """Return the hot-path view of one ProviderInstance."""
    # What a call served here costs: the model's price when it sets one, else this instance's upstream's own.
    prices = metadata.for_model(model, [inst.litellm_model])
    params = inst.resolved_params()
    return InstanceConfig(
        id=inst.id,
        model=model.name,
        provider_kind=inst.provider.kind,
        litellm_model=inst.litellm_model,
        api_base=(inst.effective_api_base() or None),
        api_key=inst.effective_api_key(),
        openai_compatible=passes_through(inst, params),
        weight=inst.weight,
        rpm=inst.rpm,
        tpm=inst.tpm,
        timeout=inst.timeout or DEFAULT_TIMEOUT_SECONDS,
        stream_timeout=inst.stream_timeout or DEFAULT_STREAM_TIMEOUT_SECONDS,
        input_cost_per_token=prices.input_cost_per_token,
        output_cost_per_token=prices.output_cost_per_token,
        drained=inst.drained,
        breaker_reset_at=inst.breaker_reset_at.timestamp() if inst.breaker_reset_at else None,
        missing_key=key_missing(inst, params),
        embedding=model.mode == ModelMode.EMBEDDING,
        params=params,
    )


def build():
    """Load a fresh snapshot from the database."""
    token = ConfigRevision.current_token()
    routing_settings = RoutingSettings.load()
    models = {}
    instances = ProviderInstance.objects.filter(enabled=True, model__enabled=True).select_related("provider")
    by_model = {}
    for inst in instances:
        by_model.setdefault(inst.model_id, []).append(inst)
    for model in Model.objects.filter(enabled=True):
        configs = []
        for inst in by_model.get(model.pk, []):
            try:
                configs.append(instance_config(inst, model))
            except Exception:  # one undecryptable key must not take every other model down
                logger.exception("instance %s skipped: its configuration cannot be loaded", inst.id)
        meta = metadata.for_model(model, [inst.litellm_model for inst in by_model.get(model.pk, [])])
        models[model.name] = ModelConfig(
            name=model.name,
            description=model.description,
            strategy=model.strategy or routing_settings.default_strategy or RoutingStrategy.ROUND_ROBIN,
            capabilities=meta.capabilities,
            fallbacks=tuple(model.fallbacks or ()),
            context_window_fallbacks=tuple(model.context_window_fallbacks or ()),
            served_by=model.served_by,
            mode=model.mode,
            context_window=meta.context_window,
            created=int(model.created_at.timestamp()),
            instances=tuple(configs),
            supports_function_calling=meta.supports_function_calling,
            supports_vision=meta.supports_vision,
            supports_response_schema=meta.supports_response_schema,
            input_cost_per_token=meta.input_cost_per_token,
            output_cost_per_token=meta.output_cost_per_token,
            sources=meta.sources,
        )
    keys = {}
    for key in ApiKey.objects.prefetch_related("allowed_models", "auto_models"):
        allowed = frozenset(m.name for m in key.allowed_models.all())
        auto_pool = frozenset(m.name for m in key.auto_models.all())
        keys[key.key_hash] = KeyConfig(
            pk=key.pk,
            name=key.name,
            prefix=key.prefix,
            is_admin=key.is_admin,
            allowed_models=allowed or None,
            expires_at=key.expires_at,
            revoked=key.revoked_at is not None,
            auto_select=key.auto_select,
            auto_models=auto_pool or None,
        )
    weights = scoring.Weights(
        capability=routing_settings.selection_weight_capability,
        performance=routing_settings.selection_weight_performance,
        cost=routing_settings.selection_weight_cost,
        quality=routing_settings.selection_weight_quality,
    )
    return Snapshot(
        token=token,
        models=models,
        keys_by_hash=keys,
        default_strategy=routing_settings.default_strategy,
        auto_select=routing_settings.auto_select,
        loaded_at=time.time(),
        breaker_policy=health.BreakerPolicy(
            consecutive_failures=routing_settings.breaker_consecutive_failures,
            error_ratio=routing_settings.breaker_error_ratio,
            min_requests=routing_settings.breaker_min_requests,
            window_seconds=routing_settings.breaker_window_seconds,
            cooldown_seconds=routing_settings.breaker_cooldown_seconds,
            max_cooldown_seconds=routing_settings.breaker_max_cooldown_seconds,
            half_open_successes=routing_settings.breaker_half_open_successes,
        ),
        max_attempts=max(1, routing_settings.max_attempts),
        retry_budget_ratio=routing_settings.retry_budget_ratio,
        selection_weights=weights,
        type_weights=type_weights(routing_settings.selection_type_weights, weights),
        experiments_by_model=live_experiments(),
        quality=quality_figures(),
    )


def live_experiments():
    """Return the running experiments as {model name: (LiveExperiment, ...)}, each tuple in id order."""
    from experiments.assignment import LiveVariant, live_experiment
    from experiments.models import Experiment, ExperimentStatus

    by_model = {}
    running = (
        Experiment.objects.filter(status=ExperimentStatus.RUNNING)
        .prefetch_related("variants__model", "target_keys")
        .order_by("id")
    )
    for experiment in running:
        variants = [
            LiveVariant(
                name=v.label,
                model=v.model.name,
                weight=v.weight,
                is_control=v.is_control,
                overrides=tuple(sorted((v.overrides or {}).items())) if isinstance(v.overrides, dict) else (),
            )
            for v in experiment.variants.all()
        ]
        if not variants:
            continue
        live = live_experiment(
            id=experiment.id,
            salt=experiment.assignment_salt(),
            traffic_percentage=experiment.traffic_percentage,
            variants=variants,
            context_types=experiment.target_context_types or (),
            key_pks=[k.pk for k in experiment.target_keys.all()],
            starts_at=experiment.starts_at,
            ends_at=experiment.ends_at,
        )
        for model in sorted(live.models):
            by_model.setdefault(model, []).append(live)
    return {model: tuple(found) for model, found in by_model.items()}


def quality_figures():
    """Return the feedback figures selection's quality term reads (see `Snapshot.quality`)."""
    from experiments.quality import quality_figures

    return quality_figures()


def refresh_quality():
    """Put the snapshot in force again with fresh feedback figures (the rest of it unchanged)."""
    global _current
    snap = _current
    if snap is not None:
        _current = dataclasses.replace(snap, quality=quality_figures())


def type_weights(raw, defaults):
    """Return {context type: Weights} from the admin's per-type JSON; a malformed entry is skipped and logged."""
    result = {}
    if not isinstance(raw, dict):
        logger.warning("selection type weights ignored: not an object")
        return result
    for context_type, entry in raw.items():
        try:
            result[context_type] = dataclasses.replace(defaults, **{k: float(v) for k, v in entry.items()})
        except (AttributeError, TypeError, ValueError):
            logger.warning("selection weights for %r ignored: not a mapping of weight name to number", context_type)
    return result


_current = None
# Active health-check results not yet fed to the breakers: (instance id, ok, checked at, detail). Filled by the
# refresher thread, drained on the event loop (routing.runtime), which owns the breakers.
probe_results = collections.deque(maxlen=10_000)
# Feedback moves slowly: its figures are reloaded this often (and with every configuration change).
QUALITY_REFRESH_SECONDS = 60.0
# Probe rows can commit out of id order (a slow round finishing after a fast one), so polling looks back over a
# window and remembers which rows it has fed, instead of trusting "id greater than the last one seen".
PROBE_LOOKBACK_SECONDS = 60
_seen_probes = {}  # probe pk -> checked_at, for rows inside the lookback window
_probes_primed = False


def poll_probes():
    """Queue probe results not seen before (the first poll only marks existing history as seen)."""
    global _probes_primed
    horizon = timezone.now() - timedelta(seconds=PROBE_LOOKBACK_SECONDS)
    rows = (
        InstanceProbe.objects.filter(checked_at__gte=horizon)
        .order_by("checked_at", "pk")
        .values_list("pk", "instance_id", "ok", "checked_at", "status_code", "error")
    )
    for pk, instance_id, ok, checked_at, status, error in rows:
        if pk in _seen_probes:
            continue
        _seen_probes[pk] = checked_at
        if _probes_primed:
            detail = f"probe: HTTP {status}" if status and not ok else f"probe: {error[:80]}" if error else "probe"
            probe_results.append((instance_id, ok, checked_at.timestamp(), detail))
    _probes_primed = True
    for pk in [pk for pk, at in _seen_probes.items() if at < horizon]:
        del _seen_probes[pk]


def current():
    """Return the snapshot in force (None until the first load)."""
    return _current


def reload():
    """Rebuild the snapshot from the database, prepare its adapters, and put it in force."""
    global _current
    snap = build()
    adapters.prepare(snap)
    _current = snap
    return _current


class Refresher(threading.Thread):
    """Poll the configuration revision and reload the snapshot when it changed; refresh its feedback figures every
    QUALITY_REFRESH_SECONDS in between."""

    def __init__(self, interval=None):
        super().__init__(name="chatvault-snapshot-refresher", daemon=True)
        self.interval = interval if interval is not None else settings.CHATVAULT_CONFIG_POLL_SECONDS
        self._stop_event = threading.Event()

    def run(self):
        """Poll until stopped; a failing database keeps the last good snapshot in force."""
        failing = False
        quality_due = time.monotonic() + QUALITY_REFRESH_SECONDS
        while not self._stop_event.wait(self.interval):
            try:
                close_old_connections()
                snap = _current
                if snap is None or ConfigRevision.current_token() != snap.token:
                    reload()
                    logger.info("routing configuration reloaded")
                    quality_due = time.monotonic() + QUALITY_REFRESH_SECONDS
                elif time.monotonic() >= quality_due:
                    refresh_quality()
                    quality_due = time.monotonic() + QUALITY_REFRESH_SECONDS
                poll_probes()
                if failing:
                    logger.warning("routing configuration refresh recovered")
                failing = False
            except Exception:
                if not failing:
                    logger.exception("routing configuration refresh failed; serving the last loaded configuration")
                failing = True
        connection.close()  # this thread's own connection; it ends with the thread

    def stop(self):
        """Ask the thread to end after its current poll."""
        self._stop_event.set()
