"""Experiments in the routing config file (`model_routing.experiments`): validate, apply and export them.

`routing.config_io` owns the file; it hands this module the `experiments` list to validate with the rest of the file
(a bad file changes nothing) and calls `apply_experiments` in the same transaction as the rest of the import.

An entry, in the seed's shape plus optional keys:

    - id: exp-001                      # required, stable: headers, rows and the admin URL name it
      name: Mini vs 4o                 # default: the id
      models: [vault-gpt-4o-mini, vault-gpt-4o]
      traffic_percentage: 10.0         # 0-100, default 10
      status: running                  # draft | running | paused | stopped; absent means running
      weights: [1, 1]                  # one per model, >= 0, not all 0; default equal
      control: vault-gpt-4o-mini       # default: the first
      targets: {context_types: [code_generation], keys: [mobile-app]}   # keys by name or prefix; empty: all
      primary_metric: success_rate
      guardrail_metrics: [latency_ms]
      metric_directions: {toxicity: lower}
      minimum_detectable_effect: 0.05
      hypothesis: "4o answers code questions better."
      starts_at: 2030-01-01T00:00:00Z  # ISO 8601; without an offset, UTC
      ends_at: 2030-02-01T00:00:00Z
      salt: ""                         # default: the id

`variants: [{model, name, weight, overrides}]` may replace `models`/`weights` when a variant has its own name or
request overrides; `control` then names a variant. Variant rows are matched by name, then by model, so an
experiment's variants keep their rows (and the names its logs and rollups use) across imports.

The file is the desired state: experiments it lists are created or updated (only rows that change are saved, so a
second import changes nothing); a running experiment it no longer lists is stopped, never deleted. Running
experiments whose scopes overlap are refused, naming both; since every running experiment the file leaves out is
stopped by the import, the running experiments of the file are all those that run afterwards. An experiment listed
as running whose end time has passed is stored as stopped, with a warning. Export writes every experiment that is
not stopped, in id order, in the compact shape when it can.
"""

import dataclasses
import math
from datetime import UTC, date, datetime

from django.core.exceptions import ValidationError
from django.utils import timezone

from experiments.assignment import validate_overrides
from experiments.models import EXPERIMENT_ID, METRIC_NAME, Experiment, ExperimentStatus, Variant
from experiments.overlap import Scope, overlap_errors
from experiments.services import status_fields
from routing.analysis import CONTEXT_TYPES
from routing.models import ApiKey, Model

ENTRY_KEYS = (
    "id", "name", "status", "models", "weights", "control", "variants", "traffic_percentage", "targets",
    "primary_metric", "guardrail_metrics", "metric_directions", "minimum_detectable_effect", "hypothesis",
    "starts_at", "ends_at", "salt",
)  # fmt: skip
VARIANT_KEYS = ("model", "name", "weight", "overrides")
TARGET_KEYS = ("context_types", "keys")
DEFAULT_TRAFFIC = Experiment._meta.get_field("traffic_percentage").default
DEFAULT_METRIC = Experiment._meta.get_field("primary_metric").default
WHERE = "model_routing.experiments"


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One validated variant of an experiment."""

    name: str
    model: str
    weight: float
    overrides: dict


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    """One validated `model_routing.experiments` entry: the desired state of one experiment."""

    id: str
    name: str
    status: str
    variants: tuple[VariantSpec, ...]
    control: str  # a variant's name
    traffic_percentage: float
    context_types: tuple[str, ...]
    key_pks: frozenset[int]
    primary_metric: str
    guardrail_metrics: tuple[str, ...]
    metric_directions: dict
    minimum_detectable_effect: float | None
    hypothesis: str
    starts_at: datetime | None
    ends_at: datetime | None
    salt: str

    def fields(self):
        """Return the Experiment fields the entry sets (not the status, the keys or the variants)."""
        return {
            "name": self.name,
            "traffic_percentage": self.traffic_percentage,
            "target_context_types": list(self.context_types),
            "primary_metric": self.primary_metric,
            "guardrail_metrics": list(self.guardrail_metrics),
            "metric_directions": dict(self.metric_directions),
            "minimum_detectable_effect": self.minimum_detectable_effect,
            "hypothesis": self.hypothesis,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "salt": self.salt,
        }

    def scope(self):
        """Return the requests the experiment may claim."""
        return Scope(
            id=self.id,
            name=self.name,
            models=frozenset(v.model for v in self.variants),
            context_types=frozenset(self.context_types),
            key_pks=self.key_pks,
            starts_at=self.starts_at,
            ends_at=self.ends_at,
        )


# --- validation ---------------------------------------------------------------------------------------------------


def parse_experiments(raw, model_names, errors, warnings, *, now=None):
    """Return the validated experiments of `model_routing.experiments`; add each problem to errors.

    model_names are the models of the file's model_list; a variant may also name a model that exists already
    (it stays disabled, so its variant's requests fall back), which keeps an export of such an experiment importable.
    """
    if raw is None:  # not managed by this file: experiments stay as they are (an empty list stops them all)
        return None
    if not isinstance(raw, list):
        errors.append(f"{WHERE} must be a list of experiments")
        return []
    now = now or timezone.now()
    context = _Context(model_names)
    specs, seen = [], {}
    for index, entry in enumerate(raw):
        spec = _parse_entry(index, entry, context, errors, warnings, now)
        if spec is None:
            continue
        if spec.id in seen:
            errors.append(f"{WHERE}[{index}] ({spec.id}): id is already used by {WHERE}[{seen[spec.id]}]")
            continue
        seen[spec.id] = index
        specs.append(spec)
    running = []
    for spec in specs:
        if spec.status == ExperimentStatus.RUNNING:
            scope = spec.scope()
            errors.extend(f"{WHERE}: {message}" for message in overlap_errors(scope, others=running))
            running.append(scope)
    return specs


class _Context:
    """What entries are checked against: the file's models, the stored models and the API keys."""

    def __init__(self, model_names):
        self.model_names = set(model_names)
        self._stored = None
        self._keys = None

    def model_problem(self, name):
        """Return why name cannot be a variant's model, None if it can; warn-worthy text as the second value."""
        if name in self.model_names:
            return None, None
        if self._stored is None:
            self._stored = set(Model.objects.values_list("name", flat=True))
        if name in self._stored:
            return None, f"model {name!r} is not in model_list, so it is disabled and its variant's requests fall back"
        return f"model {name!r} is not in model_list", None

    def key_pk(self, label):
        """Return (pk, None) for an API key named by its prefix or name, else (None, the problem)."""
        if self._keys is None:
            self._keys = list(ApiKey.objects.values_list("pk", "prefix", "name"))
        by_prefix = [pk for pk, prefix, _ in self._keys if prefix == label]
        if by_prefix:
            return by_prefix[0], None
        by_name = [pk for pk, _, name in self._keys if name == label]
        if len(by_name) == 1:
            return by_name[0], None
        if by_name:
            return None, f"{len(by_name)} API keys are named {label!r}; name it by its prefix"
        return None, f"no API key has the name or prefix {label!r}"


def _parse_entry(index, raw, context, errors, warnings, now):
    """Return the validated experiment at index, or None after adding its problems to errors."""
    if not isinstance(raw, dict):
        errors.append(f"{WHERE}[{index}]: must be a mapping with id, name, models and traffic_percentage")
        return None
    problems = []
    experiment_id = raw.get("id")
    if isinstance(experiment_id, int) and not isinstance(experiment_id, bool):
        experiment_id = str(experiment_id)
    if experiment_id is None:
        problems.append("id is required")
    elif not isinstance(experiment_id, str) or not _valid(EXPERIMENT_ID, experiment_id):
        problems.append(f"id {experiment_id!r} is not valid: {EXPERIMENT_ID.message}")
        experiment_id = None
    label = f"{WHERE}[{index}] ({experiment_id})" if experiment_id else f"{WHERE}[{index}]"
    unused = [str(key) for key in raw if key not in ENTRY_KEYS]
    if unused:
        warnings.append(f"{label}: {', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used; ignored")

    name = _text(raw, "name", problems, default=experiment_id or "", limit=200, required=True)
    status = raw.get("status", ExperimentStatus.RUNNING)
    if status not in ExperimentStatus.values:
        problems.append(f"status must be one of {', '.join(ExperimentStatus.values)}, not {status!r}")
    traffic = _number(raw, "traffic_percentage", problems, default=DEFAULT_TRAFFIC, low=0, high=100)
    variants = _parse_variants(raw, context, problems, warnings, label)
    control = _parse_control(raw, variants, problems)
    context_types, key_pks = _parse_targets(raw.get("targets"), context, problems, warnings, label)
    primary_metric = _metric(raw.get("primary_metric", DEFAULT_METRIC), "primary_metric", problems)
    guardrails = _metric_list(raw.get("guardrail_metrics"), problems)
    directions = _directions(raw.get("metric_directions"), problems)
    effect = _number(raw, "minimum_detectable_effect", problems, default=None, low=0, above_low=True)
    hypothesis = _text(raw, "hypothesis", problems, default="")
    salt = _text(raw, "salt", problems, default="", limit=64)
    starts_at = _moment(raw, "starts_at", problems)
    ends_at = _moment(raw, "ends_at", problems)
    if starts_at and ends_at and ends_at <= starts_at:
        problems.append("ends_at must be after starts_at")

    if status == ExperimentStatus.RUNNING and variants is not None and len(variants) < 2:
        problems.append("a running experiment needs at least two models")
    if problems:
        errors.extend(f"{label}: {problem}" for problem in problems)
        return None
    if status == ExperimentStatus.RUNNING and ends_at is not None and ends_at <= now:
        warnings.append(f"{label}: ends_at has passed, so it is stored as stopped")
        status = ExperimentStatus.STOPPED
    return ExperimentSpec(
        id=experiment_id,
        name=name,
        status=status,
        variants=tuple(variants),
        control=control,
        traffic_percentage=float(traffic),
        context_types=context_types,
        key_pks=key_pks,
        primary_metric=primary_metric,
        guardrail_metrics=guardrails,
        metric_directions=directions,
        minimum_detectable_effect=None if effect is None else float(effect),
        hypothesis=hypothesis,
        starts_at=starts_at,
        ends_at=ends_at,
        salt=salt,
    )


def _parse_variants(raw, context, problems, warnings, label):
    """Return the variants from `models` + `weights` or from `variants`; None after adding problems."""
    if "variants" in raw:
        if "models" in raw or "weights" in raw:
            problems.append("give either models (and weights) or variants, not both")
            return None
        items = raw["variants"]
        if not isinstance(items, list):
            problems.append("variants must be a list of {model, name, weight, overrides}")
            return None
    else:
        models, weights = raw.get("models"), raw.get("weights")
        if not isinstance(models, list):
            problems.append("models is required: a list of model names")
            return None
        if weights is not None and (not isinstance(weights, list) or len(weights) != len(models)):
            problems.append(f"weights must be a list of one number per model ({len(models)})")
            return None
        weights = [1] * len(models) if weights is None else weights
        items = [{"model": m, "weight": w} for m, w in zip(models, weights, strict=True)]
        if len(set(map(repr, models))) < len(models):
            problems.append("models lists a model twice (use variants to compare one model with two settings)")
            return None

    variants, count, compact = [], len(problems), "variants" not in raw
    for position, item in enumerate(items):
        where = f"models[{position}]" if compact else f"variants[{position}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be a mapping with a model")
            continue
        unused = [str(key) for key in item if key not in VARIANT_KEYS]
        if unused:
            warnings.append(f"{label}: {where}: {', '.join(unused)} not used; ignored")
        model = item.get("model")
        if not isinstance(model, str) or not model:
            problems.append(f"{where}.model must be a model name")
            continue
        problem, warning = context.model_problem(model)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        if warning:
            warnings.append(f"{label}: {warning}")
        name = _text(item, "name", problems, default=model, limit=100, required=True, where=f"{where}.")
        weight = _number(item, "weight", problems, default=1, low=0,
                         where=f"weights[{position}]" if compact else f"{where}.weight")  # fmt: skip
        overrides = item.get("overrides") or {}
        problems.extend(f"{where}.overrides: {p}" for p in validate_overrides(overrides))
        variants.append(VariantSpec(name=name, model=model, weight=float(weight or 0), overrides=overrides))
    if len(problems) > count:
        return None
    names = [v.name for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"variant name{'s' if len(twice) > 1 else ''} {', '.join(map(repr, twice))} used twice")
        return None
    if variants and not any(v.weight > 0 for v in variants):
        problems.append("weights must not all be 0")
        return None
    return variants


def _parse_control(raw, variants, problems):
    """Return the control's variant name (default: the first variant)."""
    if not variants:
        return ""
    control = raw.get("control")
    if control is None:
        return variants[0].name
    names = [v.name for v in variants]
    if control not in names:
        problems.append(f"control {control!r} is not one of the {'variants' if 'variants' in raw else 'models'}")
    return control


def _parse_targets(raw, context, problems, warnings, label):
    """Return (context types, API key pks) from `targets`; empty means all."""
    if raw is None:
        return (), frozenset()
    if not isinstance(raw, dict):
        problems.append("targets must be a mapping with context_types and/or keys")
        return (), frozenset()
    unused = [str(key) for key in raw if key not in TARGET_KEYS]
    if unused:
        warnings.append(f"{label}: targets.{', targets.'.join(unused)} not used; ignored")
    context_types = raw.get("context_types") or []
    if not isinstance(context_types, list) or not all(isinstance(t, str) for t in context_types):
        problems.append("targets.context_types must be a list of context types")
        context_types = []
    unknown = [t for t in context_types if t not in CONTEXT_TYPES]
    if unknown:
        problems.append(
            f"targets.context_types: unknown {', '.join(map(repr, unknown))} (known: {', '.join(CONTEXT_TYPES)})"
        )
    keys = raw.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        problems.append("targets.keys must be a list of API key names or prefixes")
        keys = []
    pks = set()
    for key in keys:
        pk, problem = context.key_pk(key)
        if problem:
            problems.append(f"targets.keys: {problem}")
        else:
            pks.add(pk)
    return tuple(dict.fromkeys(context_types)), frozenset(pks)


def _valid(validator, value):
    """Return whether a Django validator accepts value."""
    try:
        validator(value)
    except ValidationError:
        return False
    return True


def _text(raw, key, problems, *, default, limit=None, required=False, where=""):
    """Return raw[key] as storable text (default when absent); add a problem if it is not."""
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        problems.append(f"{where}{key} must be {'a non-empty' if required else 'a'} string")
    elif "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        problems.append(f"{where}{key} contains a character that cannot be stored")
    elif limit is not None and len(value) > limit:
        problems.append(f"{where}{key} is longer than {limit} characters")
    else:
        return value
    return default


def _number(raw, key, problems, *, default, low=None, high=None, above_low=False, where=None):
    """Return raw[key] as a finite number within bounds (default when absent); add a problem if it is not."""
    value = raw.get(key)
    if value is None:
        return default
    name = where or key
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{name} must be a number, not {value!r}")
    elif low is not None and (value < low or (above_low and value == low)):
        problems.append(f"{name} must be {'above' if above_low else 'at least'} {low}, not {value!r}")
    elif high is not None and value > high:
        problems.append(f"{name} must be at most {high}, not {value!r}")
    else:
        return value
    return default


def _metric(value, key, problems):
    """Return a metric name; add a problem if it is not one."""
    if isinstance(value, str) and _valid(METRIC_NAME, value):
        return value
    problems.append(f"{key} {value!r} is not a metric name: {METRIC_NAME.message}")
    return DEFAULT_METRIC


def _metric_list(value, problems):
    """Return the guardrail metric names."""
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append("guardrail_metrics must be a list of metric names")
        return ()
    return tuple(dict.fromkeys(_metric(name, "guardrail_metrics", problems) for name in value))


def _directions(value, problems):
    """Return {metric: "higher" | "lower"}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append('metric_directions must be a mapping of metric name to "higher" or "lower"')
        return {}
    for metric, direction in value.items():
        _metric(metric, "metric_directions", problems)
        if direction not in ("higher", "lower"):
            problems.append(f'metric_directions.{metric} must be "higher" or "lower", not {direction!r}')
    return dict(value)


def _moment(raw, key, problems):
    """Return raw[key] as an aware datetime (ISO 8601; without an offset, UTC), or None when absent."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, datetime):  # YAML reads an unquoted timestamp as a datetime, a bare date as a date
        shown = raw.get(key)
        hint = " (a date alone is not enough)" if isinstance(shown, date) else ""
        problems.append(f"{key} must be an ISO 8601 date and time such as 2030-01-31T12:00:00Z, not {shown!r}{hint}")
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# --- writing ------------------------------------------------------------------------------------------------------


def apply_experiments(specs, report, *, now=None):
    """Make the experiments match specs, counting what changed in report; stop running experiments not listed.

    specs None (the file has no `model_routing.experiments`) leaves every experiment as it is.
    """
    if specs is None:
        return
    now = now or timezone.now()
    existing = {
        row.id: row for row in Experiment.objects.select_for_update().prefetch_related("variants__model", "target_keys")
    }
    models = {m.name: m for m in Model.objects.filter(name__in={v.model for s in specs for v in s.variants})}
    for spec in specs:
        row = existing.get(spec.id)
        label = f"experiment {spec.id}"
        if row is None:
            row = Experiment(id=spec.id, **spec.fields())
            for field, value in status_fields(row, spec.status, now=now).items():
                setattr(row, field, value)
            row.save(force_insert=True)
            if spec.key_pks:
                row.target_keys.set(sorted(spec.key_pks))
            _count(report, "created", f"create {label}")
            _apply_variants(row, [], spec, models, report)
            continue
        desired = spec.fields()
        if row.status != spec.status:
            desired.update(status_fields(row, spec.status, now=now))
        keys_changed = {k.pk for k in row.target_keys.all()} != spec.key_pks
        _save_changes(row, desired, report, label, extra=["target_keys"] if keys_changed else [])
        if keys_changed:
            row.target_keys.set(sorted(spec.key_pks))
        _apply_variants(row, list(row.variants.all()), spec, models, report)

    listed = {spec.id for spec in specs}
    for row in existing.values():
        if row.id not in listed and row.status == ExperimentStatus.RUNNING:
            for field, value in status_fields(row, ExperimentStatus.STOPPED, now=now).items():
                setattr(row, field, value)
            row.save(update_fields=["status", "stopped_at", "updated_at"])
            _count(report, "disabled", f"stop experiment {row.id}")


def _apply_variants(row, current, spec, models, report):
    """Make the experiment's variants match the spec's, keeping each row by its name, else by its model."""
    by_name = {v.name: v for v in current}
    matched = [by_name.get(v.name) for v in spec.variants]
    taken = {v.pk for v in matched if v is not None}
    for index, variant in enumerate(spec.variants):
        if matched[index] is None:
            found = next((v for v in current if v.pk not in taken and v.model.name == variant.model), None)
            if found is not None:
                matched[index] = found
                taken.add(found.pk)
    # Deleted first: a kept row may take over a name only once the row that had it is gone.
    for old in current:
        if old.pk not in taken:
            old.delete()
            _count(report, "disabled", f"delete variant {row.id}/{old.name}")
    for position, (variant, old) in enumerate(zip(spec.variants, matched, strict=True)):
        desired = {
            "name": variant.name,
            "model_id": models[variant.model].pk,
            "weight": variant.weight,
            "is_control": variant.name == spec.control,
            "overrides": variant.overrides,
            "position": position,
        }
        if old is None:
            Variant.objects.create(experiment=row, **desired)
            _count(report, "created", f"create variant {row.id}/{variant.name}")
        else:
            _save_changes(old, desired, report, f"variant {row.id}/{old.name}")


def _save_changes(obj, desired, report, label, extra=()):
    """Set the desired field values and save only if one differs, so an unchanged row never bumps the revision.

    The pattern of `routing.config_io._save_changes`; `extra` names changes saved apart (the experiment's keys).
    """
    changed = [field for field, value in desired.items() if getattr(obj, field) != value]
    for field in changed:
        setattr(obj, field, desired[field])
    if changed:
        obj.save(update_fields=[*changed, *(["updated_at"] if hasattr(obj, "updated_at") else [])])
    changed += list(extra)
    if not changed:
        report.unchanged += 1
        return
    report.updated += 1
    report.changes.append(f"update {label}: {', '.join(dict.fromkeys(f.removesuffix('_id') for f in changed))}")


def _count(report, counter, change):
    """Count a created, stopped or deleted row in report."""
    setattr(report, counter, getattr(report, counter) + 1)
    report.changes.append(change)


# --- export -------------------------------------------------------------------------------------------------------


def export_experiments():
    """Return the experiments that are not stopped as `model_routing.experiments` entries, in id order."""
    rows = (
        Experiment.objects.exclude(status=ExperimentStatus.STOPPED)
        .prefetch_related("variants__model", "target_keys")
        .order_by("id")
    )
    keys = list(ApiKey.objects.values_list("prefix", "name"))
    return [_export(row, keys) for row in rows]


def _export(row, keys):
    """Return one experiment's entry with only the keys it sets beyond the defaults."""
    entry = {"id": row.id, "name": row.name}
    if row.status != ExperimentStatus.RUNNING:
        entry["status"] = str(row.status)
    variants = list(row.variants.all())
    if all(v.name == v.model.name and not v.overrides for v in variants):
        entry["models"] = [v.model.name for v in variants]
        if any(v.weight != 1 for v in variants):
            entry["weights"] = [_plain(v.weight) for v in variants]
    else:
        entry["variants"] = [_export_variant(v) for v in variants]
    control = next((v for v in variants if v.is_control), None)
    if control is not None and control is not variants[0]:
        entry["control"] = control.name
    entry["traffic_percentage"] = float(row.traffic_percentage)
    targets = {}
    if row.target_context_types:
        targets["context_types"] = list(row.target_context_types)
    if row.target_keys.all():
        targets["keys"] = sorted(_key_label(k, keys) for k in row.target_keys.all())
    if targets:
        entry["targets"] = targets
    if row.primary_metric != DEFAULT_METRIC:
        entry["primary_metric"] = row.primary_metric
    optional = {
        "guardrail_metrics": list(row.guardrail_metrics or []),
        "metric_directions": dict(row.metric_directions or {}),
        "minimum_detectable_effect": row.minimum_detectable_effect,
        "hypothesis": row.hypothesis,
        "starts_at": _iso(row.starts_at),
        "ends_at": _iso(row.ends_at),
        "salt": row.salt,
    }
    entry.update({key: value for key, value in optional.items() if value not in (None, "", [], {})})
    return entry


def _export_variant(variant):
    """Return one variant as a `variants` item, with only the keys it sets."""
    item = {"model": variant.model.name}
    if variant.name != variant.model.name:
        item["name"] = variant.name
    if variant.weight != 1:
        item["weight"] = _plain(variant.weight)
    if variant.overrides:
        item["overrides"] = dict(variant.overrides)
    return item


def _key_label(key, keys):
    """Return how the file names an API key: its name when that names it alone, else its prefix."""
    if sum(name == key.name for _, name in keys) == 1 and not any(prefix == key.name for prefix, _ in keys):
        return key.name
    return key.prefix


def _iso(moment):
    """Return a time as ISO 8601 in UTC ("Z"), or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value):
    """Return a whole float as an int, so the YAML reads `2` rather than `2.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
