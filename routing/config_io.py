"""Import and export of the routing configuration as a LiteLLM proxy `config.yaml`.

The file is the desired state. Import validates the whole file first (a bad file changes nothing), then, in one
transaction, makes the database match it: models and instances it lists are created or updated, the ones it no
longer lists are disabled (never deleted). Only rows whose fields actually change are saved, so importing the same
file again saves nothing and leaves `ConfigRevision` alone. Providers (one per litellm prefix) are created when
missing and never modified.

The format, beyond LiteLLM's own keys:
- `model_info.id` is the stable instance id (`ProviderInstance.id`), `model_info.enabled` its switch;
- `model_routing` holds ChatVault's `auto_select`, per-model `capabilities` and the A/B `experiments`, whose
  validation, writing and export live in `experiments.config` (with an `experiments` list, running experiments it
  leaves out are stopped, never deleted; without one, experiments are left as they are; running experiments that
  could claim the same request are refused, naming both).
A model's metadata overrides travel as LiteLLM's own `model_info` keys (`max_input_tokens`, `supports_*`,
`input_cost_per_token`, `output_cost_per_token`, prices per token) on its entries. They belong to the model, not the
instance: export writes them on every entry of the model; on import an entry that leaves a key out says nothing
about it, and entries that disagree give the most conservative value (`routing.metadata`) and a warning.
A section or key left out means its default (round-robin, auto_select false, no capabilities, no metadata override:
the litellm map decides), as for any desired state. Keys of a real LiteLLM config that ChatVault does not use give
one warning each and are otherwise ignored. `model_info.mode: embedding` makes an embedding model (served at
`/v1/embeddings`, never for chat). Entries ChatVault cannot serve (wildcard names such as `*` or `anthropic/*`, a
`model_info.mode` other than chat, completion or embedding: image_generation, audio, …) are
skipped with one warning each, naming the entry and why; the rest of the file imports.
An entry without `api_key` keeps the instance's stored key; `api_key: ""` clears it. An instance left without a key
where one is needed (`routing.snapshot.key_missing`: importing an export where its secret was never stored) gets a
warning naming it, and is not routed to until one is set.

Export writes the same format, without disabled models. Literal API keys are left out unless asked for, so
export -> import round-trips without a secret ever being printed.
"""

import dataclasses
import json
import math
from decimal import Decimal

import yaml
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from experiments import config as experiments_config
from routing import metadata, secrets, snapshot
from routing.adapters import OPENAI_COMPATIBLE_KINDS
from routing.balancer import APPROXIMATED, normalize_strategy
from routing.models import Model, ModelMode, Provider, ProviderInstance, RoutingSettings, RoutingStrategy

TOP_LEVEL_KEYS = ("model_list", "router_settings", "litellm_settings", "model_routing")
# LiteLLM's load_balancer.yaml puts rpm/tpm beside litellm_params; litellm_params' own win.
ENTRY_KEYS = ("model_name", "litellm_params", "model_info", "rpm", "tpm")
PARAM_KEYS = ("model", "api_base", "api_key", "weight", "rpm", "tpm", "timeout", "stream_timeout")
# Provider-specific litellm_params, stored per instance (ProviderInstance.params / secret_params) and passed to
# litellm on every call, as LiteLLM's router does. Names with a SECRET_PARAM_WORDS word are credentials.
PROVIDER_PARAM_KEYS = (
    "custom_llm_provider", "api_version", "organization", "extra_headers", "max_retries", "region_name",
    "aws_region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_session_name",
    "aws_profile_name", "aws_role_name", "aws_web_identity_token", "aws_sts_endpoint", "aws_external_id",
    "aws_bedrock_runtime_endpoint", "vertex_project", "vertex_location", "vertex_credentials", "azure_ad_token",
    "tenant_id", "client_id", "client_secret", "azure_scope", "azure_username", "azure_password",
    "watsonx_region_name", "project_id", "space_id",
)  # fmt: skip
# model_info keys LiteLLM itself reads for a deployment; ChatVault keeps them per model, on these Model fields.
METADATA_KEYS = {
    "max_input_tokens": "context_window",
    "supports_function_calling": "supports_function_calling",
    "supports_vision": "supports_vision",
    "supports_response_schema": "supports_response_schema",
    "input_cost_per_token": "input_cost_per_mtok",
    "output_cost_per_token": "output_cost_per_mtok",
}
INFO_KEYS = ("id", "enabled", "mode", *METADATA_KEYS)
# model_info.mode values ChatVault serves, with the Model.mode each becomes; LiteLLM's others (image_generation,
# audio_*, moderation, rerank, batch, …) are skipped with a warning rather than turned into chat models.
SERVED_MODES = {"chat": ModelMode.CHAT, "completion": ModelMode.CHAT, "embedding": ModelMode.EMBEDDING}
# router_settings / litellm_settings keys mapped to gateway-wide settings (router_settings wins where both set one).
SETTINGS_KEYS = ("num_retries", "timeout", "request_timeout", "allowed_fails", "cooldown_time")
ROUTER_KEYS = ("routing_strategy", "fallbacks", "context_window_fallbacks", "model_group_alias", *SETTINGS_KEYS)
LITELLM_SETTINGS_KEYS = ("model_group_alias", *SETTINGS_KEYS)
# router_settings lists of {model: [fallback models]}, stored on these Model fields.
FALLBACK_KEYS = ("fallbacks", "context_window_fallbacks")
MODEL_ROUTING_KEYS = ("auto_select", "capabilities", "experiments")

# LiteLLM's own rule for a model string without a provider prefix.
DEFAULT_KIND = "openai"
# PositiveIntegerField's upper bound on every backend we run on.
MAX_INT = 2_147_483_647
API_KEY_FIELDS = ["api_key_ciphertext", "api_key_env", "api_key_last4"]
# Model stores prices per million tokens with 6 decimal places (DecimalField(max_digits=12, decimal_places=6)).
PRICE_STEP = Decimal("0.000001")
MAX_PRICE_PER_MTOK = Decimal("999999.999999")

_validate_url = URLValidator(schemes=["http", "https"])


class ConfigError(Exception):
    """A routing configuration that cannot be imported; `errors` names each bad entry, `warnings` what the file's
    valid part would ignore (so a user fixes a file in one pass)."""

    def __init__(self, errors, warnings=()):
        self.errors = list(errors)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.errors))


@dataclasses.dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do)."""

    created: int = 0
    updated: int = 0
    disabled: int = 0
    unchanged: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    changes: list[str] = dataclasses.field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self):
        """Return whether the import changed (or would change) anything."""
        return bool(self.created or self.updated or self.disabled)

    def summary(self):
        """Return a one-line summary of the counts."""
        counts = (
            f"{self.created} created, {self.updated} updated, {self.disabled} disabled, "
            f"{self.unchanged} unchanged, {len(self.warnings)} warning{'' if len(self.warnings) == 1 else 's'}"
        )
        return f"dry run, nothing saved: {counts}" if self.dry_run else counts


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One validated `model_list` entry: the desired state of one instance."""

    label: str
    model_name: str
    kind: str
    litellm_model: str
    api_base: str
    api_base_env: str  # api_base: os.environ/NAME, read at snapshot time
    api_key: str | None  # None keeps the key the instance already has
    params: dict  # provider parameters: plain values and os.environ/ references
    secret_params: dict  # literal credentials; "" clears one; a credential left out keeps the stored one
    weight: float
    rpm: int | None
    tpm: int | None
    timeout: float | None
    stream_timeout: float | None
    instance_id: str | None
    enabled: bool
    metadata: dict  # model_info metadata key -> value this entry sets (prices as exact Decimals per million tokens)
    mode: str = ModelMode.CHAT  # the Model.mode its model_info.mode asks for


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A validated configuration file."""

    entries: list[_Entry]
    model_names: list[str]
    strategy: str
    auto_select: bool
    capabilities: dict[str, list[str]]
    metadata: dict[str, dict]  # model name -> Model metadata field -> value (None = not overridden)
    fallbacks: dict[str, dict[str, list[str]]]  # fallbacks / context_window_fallbacks -> model -> fallback models
    experiments: list | None  # experiments.config.ExperimentSpec; None: the file leaves experiments as they are
    settings: dict  # RoutingSettings field -> value, from router_settings / litellm_settings
    aliases: dict[str, str]  # model_group_alias: alias model name -> the model serving it
    modes: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> Model.mode


def load_config_file(path):
    """Return the mapping in a YAML config file; raise ConfigError if it is unreadable or not a YAML mapping."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError([f"{path}: invalid YAML: {detail}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping with a model_list"])
    return data


def routing_config_import(*, data: dict, dry_run: bool = False) -> ImportReport:
    """Make the routing configuration match a LiteLLM-style config; raise ConfigError and change nothing if invalid."""
    plan, warnings = _parse(data)
    report = ImportReport(warnings=warnings, dry_run=dry_run)
    with transaction.atomic():
        _apply(plan, report)
        if dry_run:
            transaction.set_rollback(True)
    return report


def routing_config_export(*, include_secrets: bool = False) -> dict:
    """Return the routing configuration as a LiteLLM-style config; literal keys only when include_secrets."""
    row = RoutingSettings.objects.filter(pk=1).first()
    # Disabled models are left out entirely, so importing an export never re-enables anything.
    instances = (
        ProviderInstance.objects.filter(model__enabled=True).select_related("model").order_by("model__name", "id")
    )
    model_list = [_export_entry(inst, include_secrets=include_secrets) for inst in instances]
    listed = {entry["model_name"] for entry in model_list}
    capabilities = {
        model.name: list(model.capabilities)
        for model in Model.objects.filter(enabled=True, name__in=listed).order_by("name")
        if model.capabilities
    }
    return {
        "model_list": model_list,
        "router_settings": {
            "routing_strategy": row.default_strategy if row else str(RoutingStrategy.ROUND_ROBIN),
            **_export_fallbacks(listed),
            **_export_settings(row or RoutingSettings()),
            **_export_aliases(listed),
        },
        "model_routing": {
            "auto_select": row.auto_select if row else False,
            "capabilities": capabilities,
            "experiments": experiments_config.export_experiments(),
        },
    }


# --- validation ---------------------------------------------------------------------------------------------------


def _parse(data):
    """Return the validated plan and the warnings for a config mapping; raise ConfigError listing every problem."""
    errors, warnings = [], []
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping with a model_list"])
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            warnings.append(f"{key} is not used by ChatVault; ignored")

    entries = []
    # Unused keys inside entries are reported once per key path, with the entries that have it.
    unused = {}
    raw_list = data.get("model_list")
    if "model_list" not in data:
        errors.append("model_list is required (an empty list disables every model)")
    elif raw_list is None:
        raw_list = []
    elif not isinstance(raw_list, list):
        errors.append("model_list must be a list of entries")
        raw_list = []
    skipped = set()
    for index, raw in enumerate(raw_list or []):
        reason = _unserved(raw)
        if reason:
            warnings.append(f"model_list[{index}] ({raw['model_name']}): {reason}; skipped")
            skipped.add(index)
            continue
        entry = _parse_entry(index, raw, errors, unused)
        if entry is not None:
            entries.append(entry)
    for path, indexes in unused.items():
        where = ", ".join(str(i) for i in indexes)
        warnings.append(f"model_list[{where}]: {path} is not used by ChatVault; ignored")

    seen_ids = {}
    for entry in entries:
        if entry.instance_id is None:
            continue
        if entry.instance_id in seen_ids:
            errors.append(
                f"{entry.label}: model_info.id {entry.instance_id!r} is already used by {seen_ids[entry.instance_id]}"
            )
        else:
            seen_ids[entry.instance_id] = entry.label
    model_names = list(dict.fromkeys(entry.model_name for entry in entries))

    # Invalid entries' names count too: their error is already reported, and a second one about capabilities
    # would point at the wrong place.
    # A skipped entry's name is no model: a reference to it is an error beside the warning that says why.
    kept = [raw for i, raw in enumerate(raw_list or []) if i not in skipped]
    named = {raw.get("model_name") for raw in kept if isinstance(raw, dict)}
    named = {name for name in named if isinstance(name, str)}
    strategy = _parse_router_settings(data.get("router_settings"), errors, warnings)
    fallbacks = _parse_fallbacks(data.get("router_settings"), named, errors)
    litellm_settings = _parse_litellm_settings(data.get("litellm_settings"), errors, warnings)
    router = data.get("router_settings") if isinstance(data.get("router_settings"), dict) else {}
    settings, default_timeout = _parse_settings(router, litellm_settings, errors)
    aliases = _parse_aliases(router.get("model_group_alias", litellm_settings.get("model_group_alias")), named, errors)
    if default_timeout is not None:
        entries = [e if e.timeout is not None else dataclasses.replace(e, timeout=default_timeout) for e in entries]
    auto_select, capabilities, experiments = _parse_model_routing(data.get("model_routing"), named, errors, warnings)
    by_model = {}
    for entry in entries:
        by_model.setdefault(entry.model_name, []).append(entry)
    model_metadata = {name: _model_metadata(name, by_model[name], warnings) for name in model_names}
    modes = {name: _model_mode(name, by_model[name], errors) for name in model_names}

    if errors:
        raise ConfigError(errors, warnings)
    plan = _Plan(
        entries=entries,
        model_names=model_names,
        strategy=strategy,
        auto_select=auto_select,
        capabilities=capabilities,
        metadata=model_metadata,
        fallbacks=fallbacks,
        experiments=experiments,
        settings=settings,
        aliases=aliases,
        modes=modes,
    )
    return plan, warnings


def _unserved(raw):
    """Return why a well-formed entry cannot be served as a chat model (a wildcard, or a mode other than chat), or
    None; a malformed entry gets None, so its errors are reported as for any other."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model_name"), str):
        return None
    params, info = raw.get("litellm_params"), raw.get("model_info") or {}
    if not isinstance(params, dict) or not isinstance(params.get("model"), str) or not isinstance(info, dict):
        return None
    if "*" in raw["model_name"] or "*" in params["model"]:
        # LiteLLM routes any model matching the pattern; ChatVault serves only the models it lists.
        return "wildcard model names are not served (list each model by name)"
    mode = info.get("mode")
    if mode is not None and (not isinstance(mode, str) or mode not in SERVED_MODES):
        return f"mode {mode} is not served yet"
    return None


def _parse_entry(index, raw, errors, unused):
    """Return the validated entry at model_list[index], or None after adding its problems to errors."""
    if not isinstance(raw, dict):
        errors.append(f"model_list[{index}]: must be a mapping with model_name and litellm_params")
        return None
    name = raw.get("model_name")
    named = isinstance(name, str) and name.strip()
    label = f"model_list[{index}] ({name})" if named else f"model_list[{index}]"
    problems = []
    if name is None:
        problems.append("model_name is required")
    elif not named:
        problems.append("model_name must be a non-empty string")
    elif len(name) > Model._meta.get_field("name").max_length:
        problems.append("model_name is too long")
    for key in raw:
        if key not in ENTRY_KEYS:
            unused.setdefault(str(key), []).append(index)

    params = raw.get("litellm_params")
    params_given = isinstance(params, dict)
    if params is None:
        problems.append("litellm_params is required")
    elif not params_given:
        problems.append("litellm_params must be a mapping")
    if not params_given:
        params = {}
    info = raw.get("model_info")
    if info is None:
        info = {}
    elif not isinstance(info, dict):
        problems.append("model_info must be a mapping")
        info = {}
    for section, mapping, known in (
        ("litellm_params", params, (*PARAM_KEYS, *PROVIDER_PARAM_KEYS)),
        ("model_info", info, INFO_KEYS),
    ):
        for key in mapping:
            if key not in known:
                unused.setdefault(f"{section}.{key}", []).append(index)

    litellm_model = params.get("model")
    kind = ""
    if litellm_model is None:
        if params_given:  # a missing litellm_params is reported once, above
            problems.append("litellm_params.model is required")
    elif not isinstance(litellm_model, str) or not litellm_model.strip():
        problems.append("litellm_params.model must be a non-empty string")
    elif len(litellm_model) > ProviderInstance._meta.get_field("litellm_model").max_length:
        problems.append("litellm_params.model is too long")
    else:
        prefix, sep, _ = litellm_model.partition("/")
        kind = prefix if sep else DEFAULT_KIND
        if not kind:
            problems.append(f"litellm_params.model {litellm_model!r} has an empty provider prefix")
        elif len(kind) > Provider._meta.get_field("kind").max_length:
            problems.append(f"litellm_params.model {litellm_model!r} has a provider prefix that is too long")

    api_base, api_base_env = params.get("api_base"), ""
    if api_base is None:
        api_base = ""
    elif not isinstance(api_base, str):
        problems.append("litellm_params.api_base must be a URL string")
    elif api_base.startswith(secrets.ENV_PREFIX):
        api_base_env, api_base = _env_name(api_base, "api_base", problems) or "", ""
    elif api_base:
        try:
            _validate_url(api_base)
        except ValidationError:
            problems.append(f"litellm_params.api_base {api_base!r} is not an http(s) URL")
        if len(api_base) > ProviderInstance._meta.get_field("api_base").max_length:
            problems.append("litellm_params.api_base is too long")

    api_key = params.get("api_key")
    if "api_key" in params:
        if not isinstance(api_key, str):
            problems.append("litellm_params.api_key must be a string (omit it to keep the stored key)")
        elif api_key.startswith(secrets.ENV_PREFIX):
            _env_name(api_key, "api_key", problems)
    provider_params, secret_params = _provider_params(params, problems)
    if isinstance(provider_params.get("custom_llm_provider"), str) and kind:
        # LiteLLM calls the provider it names whatever the model string's prefix says.
        kind = provider_params["custom_llm_provider"]

    weight = _number(params, "weight", problems, minimum=0)
    rpm = _count(params, "rpm", problems)
    tpm = _count(params, "tpm", problems)
    if rpm is None:
        rpm = _count(raw, "rpm", problems, section="")
    if tpm is None:
        tpm = _count(raw, "tpm", problems, section="")
    timeout = _number(params, "timeout", problems, positive=True)
    stream_timeout = _number(params, "stream_timeout", problems, positive=True)

    instance_id = info.get("id")
    if instance_id is not None:
        # YAML reads `id: 42` as a number; LiteLLM treats ids as strings.
        if isinstance(instance_id, int) and not isinstance(instance_id, bool):
            instance_id = str(instance_id)
        if not isinstance(instance_id, str) or not instance_id.strip():
            problems.append("model_info.id must be a non-empty string")
        elif len(instance_id) > ProviderInstance._meta.get_field("id").max_length:
            problems.append("model_info.id is too long")
    enabled = info.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append("model_info.enabled must be true or false")
    entry_metadata = _entry_metadata(info, problems)

    if problems:
        errors.extend(f"{label}: {problem}" for problem in problems)
        return None
    return _Entry(
        label=label,
        model_name=name,
        kind=kind,
        litellm_model=litellm_model,
        api_base=api_base,
        api_base_env=api_base_env,
        api_key=api_key,
        params=provider_params,
        secret_params=secret_params,
        weight=1.0 if weight is None else float(weight),
        rpm=rpm,
        tpm=tpm,
        timeout=None if timeout is None else float(timeout),
        stream_timeout=None if stream_timeout is None else float(stream_timeout),
        instance_id=instance_id,
        enabled=enabled,
        metadata=entry_metadata,
        mode=ModelMode.EMBEDDING if info.get("mode") == "embedding" else ModelMode.CHAT,
    )


def _entry_metadata(info, problems):
    """Return the metadata keys an entry's model_info sets (null = not set); add a problem for each invalid one."""
    found = {}
    for key in METADATA_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if key in metadata.FEATURES:
            if isinstance(value, bool):
                found[key] = value
            else:
                problems.append(f"model_info.{key} must be true or false, not {value!r}")
        elif key == "max_input_tokens":
            if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_INT:
                found[key] = value
            else:
                problems.append(f"model_info.{key} must be a whole number of tokens from 1 to {MAX_INT}, not {value!r}")
        else:
            per_mtok = _price_per_mtok(value)
            if per_mtok is not None:
                found[key] = per_mtok
            else:
                hint = " (YAML reads 1e-06, without a dot, as text: write 1.0e-06)" if _looks_numeric(value) else ""
                problems.append(
                    f"model_info.{key} must be a number of USD per token from 0 to 0.999999, not {value!r}{hint}"
                )
    return found


def _price_per_mtok(value):
    """Return a per-token price as an exact Decimal per million tokens, or None if it is no storable price."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:  # NaN fails too
        return None
    per_mtok = Decimal(str(value)) * metadata.PER_MILLION
    return per_mtok if per_mtok.quantize(PRICE_STEP) <= MAX_PRICE_PER_MTOK else None


def _looks_numeric(value):
    """Return whether value is text in exponent notation, which YAML 1.1 reads as a number only with a dot."""
    if not isinstance(value, str) or "e" not in value.lower():
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _model_mode(name, entries, errors):
    """Return the Model.mode of a model's entries; add an error when they mix chat and embedding deployments."""
    modes = {entry.mode for entry in entries}
    if len(modes) > 1:
        labels = ", ".join(f"{entry.label} is {entry.mode}" for entry in entries)
        errors.append(f"model {name}: its entries mix chat and embedding deployments ({labels}); give each its own "
                      "model_name")  # fmt: skip
    return modes.pop()


def _model_metadata(name, entries, warnings):
    """Return a model's metadata overrides (Model field -> value) from its entries; warn where they disagree."""
    overrides = {}
    for key, field in METADATA_KEYS.items():
        said = list(dict.fromkeys(entry.metadata[key] for entry in entries if key in entry.metadata))
        value = metadata.most_conservative(key, said)
        if len(said) > 1:
            shown = ", ".join(_shown(key, v) for v in said)
            warnings.append(
                f"model {name}: its entries disagree on model_info.{key} ({shown}); "
                f"using the most conservative, {_shown(key, value)}"
            )
        if value is not None and field.endswith("_per_mtok") and value != value.quantize(PRICE_STEP):
            value = value.quantize(PRICE_STEP)
            warnings.append(
                f"model {name}: model_info.{key} is stored rounded to {_shown(key, value)} "
                "(ChatVault keeps prices to 6 decimal places per million tokens)"
            )
        overrides[field] = value
    return overrides


def _shown(key, value):
    """Return a metadata value as the file writes it (prices per token)."""
    if key in metadata.PRICES:
        return str(_per_token_number(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _number(params, key, problems, *, minimum=None, positive=False):
    """Return litellm_params[key] as a number or None when absent; add a problem if it is not a valid one."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"litellm_params.{key} must be a number, not {value!r}")
    elif positive and value <= 0:
        problems.append(f"litellm_params.{key} must be positive, not {value!r}")
    elif minimum is not None and value < minimum:
        problems.append(f"litellm_params.{key} must not be negative, not {value!r}")
    else:
        return value
    return None


def _count(params, key, problems, *, section="litellm_params."):
    """Return params[key] as a non-negative whole number or None when absent; add a problem if invalid."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        problems.append(f"{section}{key} must be a whole number from 0 to {MAX_INT}, not {value!r}")
        return None
    return value


def _env_name(value, key, problems):
    """Return NAME of an `os.environ/NAME` value of litellm_params[key], or None after adding a problem."""
    name = secrets.env_reference_name(value)
    if not name:
        problems.append(f"litellm_params.{key} os.environ/ reference names no variable")
    elif len(name) > ProviderInstance._meta.get_field("api_key_env").max_length:
        problems.append(f"litellm_params.{key} environment variable name is too long")
    else:
        return name
    return None


def _provider_params(params, problems):
    """Return (plain values and references, literal credentials) of an entry's provider-specific litellm_params."""
    plain, secret = {}, {}
    for key in PROVIDER_PARAM_KEYS:
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, str) and value.startswith(secrets.ENV_PREFIX):
            if _env_name(value, key, problems):
                plain[key] = value
        elif key == "max_retries":
            if _count(params, key, problems) is not None:
                plain[key] = value
        elif key == "extra_headers":
            if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                plain[key] = value
            else:
                problems.append("litellm_params.extra_headers must be a mapping of header names to strings")
        elif key == "vertex_credentials" and isinstance(value, dict):
            secret[key] = value  # a service account's JSON, inline
        elif not isinstance(value, str):
            problems.append(f"litellm_params.{key} must be a string, not {value!r}")
        elif secrets.is_secret_param(key):
            secret[key] = value
        elif value:
            plain[key] = value
    return plain, secret


def _parse_router_settings(raw, errors, warnings):
    """Return the canonical default strategy from router_settings."""
    if raw is None:
        return RoutingStrategy.ROUND_ROBIN
    if not isinstance(raw, dict):
        errors.append("router_settings must be a mapping")
        return RoutingStrategy.ROUND_ROBIN
    for key in raw:
        if key not in ROUTER_KEYS:
            warnings.append(f"router_settings.{key} is not used by ChatVault; ignored")
    name = raw.get("routing_strategy")
    if name is not None and not isinstance(name, str):
        errors.append(f"router_settings.routing_strategy must be a string, not {name!r}")
        return RoutingStrategy.ROUND_ROBIN
    try:
        strategy = normalize_strategy(name)
    except ValueError as exc:
        errors.append(f"router_settings.routing_strategy: {exc}")
        return RoutingStrategy.ROUND_ROBIN
    if name and name.strip().lower() in APPROXIMATED:
        warnings.append(
            f"router_settings.routing_strategy {name!r}: {APPROXIMATED[name.strip().lower()]}; using {strategy}"
        )
    return strategy


def _parse_litellm_settings(raw, errors, warnings):
    """Return the litellm_settings keys ChatVault maps (see SETTINGS_KEYS), warning once for each other key."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append("litellm_settings must be a mapping")
        return {}
    for key in raw:
        if key not in LITELLM_SETTINGS_KEYS:
            warnings.append(f"litellm_settings.{key} is not used by ChatVault; ignored")
    return {key: raw[key] for key in LITELLM_SETTINGS_KEYS if raw.get(key) is not None}


def _parse_settings(router, litellm_settings, errors):
    """Return (RoutingSettings field -> value, default instance timeout) from router_settings and litellm_settings.

    router_settings wins where both set a key. A key left out means the field's default, as for any desired state.
    LiteLLM's meanings: num_retries retries after the first attempt; a deployment cools down after more than
    allowed_fails failures, for cooldown_time seconds; timeout (router_settings) or request_timeout (litellm_settings)
    bounds each call of an entry that sets no timeout of its own.
    """
    field = RoutingSettings._meta.get_field
    result = {
        "max_attempts": field("max_attempts").default,
        "breaker_consecutive_failures": field("breaker_consecutive_failures").default,
        "breaker_cooldown_seconds": field("breaker_cooldown_seconds").default,
    }
    values, problems = {}, []
    for key in SETTINGS_KEYS:
        section, source = (
            ("router_settings", router) if router.get(key) is not None else ("litellm_settings", litellm_settings)
        )
        if source.get(key) is None:
            continue
        if key in ("num_retries", "allowed_fails"):
            values[key] = _count(source, key, problems, section=f"{section}.")
        else:
            found = []
            values[key] = _number(source, key, found, positive=True)
            problems += [p.replace("litellm_params.", f"{section}.") for p in found]
    errors.extend(problems)
    if values.get("num_retries") is not None:
        result["max_attempts"] = min(values["num_retries"], MAX_INT - 1) + 1
    if values.get("allowed_fails") is not None:
        result["breaker_consecutive_failures"] = min(values["allowed_fails"], MAX_INT - 1) + 1
    if values.get("cooldown_time") is not None:
        result["breaker_cooldown_seconds"] = float(values["cooldown_time"])
    timeout = values.get("timeout") or values.get("request_timeout")
    return result, None if timeout is None else float(timeout)


def _parse_aliases(raw, model_names, errors):
    """Return {alias: model} from model_group_alias (LiteLLM: `alias: model` or `alias: {model: ..., hidden: ...}`)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append("model_group_alias must be a mapping of alias to model name")
        return {}
    aliases = {}
    for alias, target in raw.items():
        if isinstance(target, dict):
            target = target.get("model")
        if not isinstance(alias, str) or not alias.strip() or not isinstance(target, str):
            errors.append(f"model_group_alias.{alias}: must name a model (alias: model, or alias: {{model: ...}})")
        elif target not in model_names:
            errors.append(f"model_group_alias.{alias}: model {target!r} is not in model_list")
        elif alias == target:
            errors.append(f"model_group_alias.{alias}: a model cannot be its own alias")
        elif len(alias) > Model._meta.get_field("name").max_length:
            errors.append(f"model_group_alias.{alias}: the alias is too long")
        else:
            aliases[alias] = target
    return aliases


def _parse_fallbacks(raw, model_names, errors):
    """Return {key: {model: [fallback models]}} for router_settings' fallbacks and context_window_fallbacks.

    LiteLLM's shape: a list of one-key mappings, `[{"model-a": ["model-b", "model-c"]}]`; every name must be a model
    of the file.
    """
    result = {key: {} for key in FALLBACK_KEYS}
    if not isinstance(raw, dict):
        return result
    for key in FALLBACK_KEYS:
        items = raw.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            errors.append(f"router_settings.{key} must be a list of {{model: [fallback models]}} mappings")
            continue
        for index, item in enumerate(items):
            where = f"router_settings.{key}[{index}]"
            if not isinstance(item, dict) or not item:
                errors.append(f"{where} must be a mapping of a model name to a list of fallback model names")
                continue
            for name, targets in item.items():
                if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                    errors.append(f"{where}.{name} must be a list of model names")
                    continue
                unknown = [n for n in [name, *targets] if n not in model_names]
                if unknown:
                    errors.append(f"{where}: {', '.join(map(repr, unknown))} not in model_list")
                    continue
                if name in targets:
                    errors.append(f"{where}: {name!r} cannot be its own fallback")
                    continue
                result[key][name] = list(dict.fromkeys(targets))
    return result


def _export_settings(row):
    """Return the router_settings keys that the gateway-wide settings map to (see `_parse_settings`)."""
    return {
        "num_retries": row.max_attempts - 1,
        "allowed_fails": row.breaker_consecutive_failures - 1,
        "cooldown_time": _plain(row.breaker_cooldown_seconds),
    }


def _export_aliases(listed):
    """Return model_group_alias for the enabled models served by an exported model (none: nothing)."""
    aliases = dict(
        Model.objects.filter(enabled=True, served_by__in=listed).order_by("name").values_list("name", "served_by")
    )
    return {"model_group_alias": aliases} if aliases else {}


def _export_fallbacks(listed):
    """Return router_settings' fallbacks and context_window_fallbacks for the exported models, in LiteLLM's shape."""
    exported = {}
    models = Model.objects.filter(enabled=True, name__in=listed).order_by("name")
    for key in FALLBACK_KEYS:
        items = [{m.name: [n for n in getattr(m, key) if n in listed]} for m in models if getattr(m, key)]
        if items:
            exported[key] = items
    return exported


def _parse_model_routing(raw, model_names, errors, warnings):
    """Return (auto_select, capabilities by model name, experiments) from model_routing."""
    if raw is None:
        return False, {}, None
    if not isinstance(raw, dict):
        errors.append("model_routing must be a mapping")
        return False, {}, None
    for key in raw:
        if key not in MODEL_ROUTING_KEYS:
            warnings.append(f"model_routing.{key} is not used by ChatVault; ignored")

    auto_select = raw.get("auto_select", False)
    if auto_select is None:
        auto_select = False
    elif not isinstance(auto_select, bool):
        errors.append(f"model_routing.auto_select must be true or false, not {auto_select!r}")

    capabilities = {}
    raw_caps = raw.get("capabilities")
    if raw_caps is not None and not isinstance(raw_caps, dict):
        errors.append("model_routing.capabilities must be a mapping of model name to a list of capability tags")
        raw_caps = None
    for name, tags in (raw_caps or {}).items():
        where = f"model_routing.capabilities.{name}"
        if name not in model_names:
            errors.append(f"{where}: model {name!r} is not in model_list")
        elif not isinstance(tags, list) or not all(isinstance(tag, str) and tag.strip() for tag in tags):
            errors.append(f"{where}: must be a list of capability strings")
        else:
            capabilities[name] = list(dict.fromkeys(tags))

    experiments = experiments_config.parse_experiments(raw.get("experiments"), model_names, errors, warnings)
    return auto_select, capabilities, experiments


# --- writing ------------------------------------------------------------------------------------------------------


def _apply(plan, report):
    """Write the plan to the database, counting what changed in report."""
    models = {model.name: model for model in Model.objects.all()}
    was_enabled = {name for name, model in models.items() if model.enabled}
    listed = set(plan.model_names) | set(plan.aliases)
    # A model_group_alias that is no model of the list is a model of its own, with no instances, served by its target.
    alias_only = [name for name in plan.aliases if name not in plan.metadata]
    unset_metadata = dict.fromkeys(METADATA_KEYS.values())

    for name in [*plan.model_names, *alias_only]:
        desired = {
            "enabled": True,
            "capabilities": plan.capabilities.get(name, []),
            **plan.metadata.get(name, unset_metadata),
            **{key: plan.fallbacks[key].get(name, []) for key in FALLBACK_KEYS},
            "served_by": plan.aliases.get(name, ""),
            "mode": plan.modes.get(name, ModelMode.CHAT),
        }
        model = models.get(name)
        if model is None:
            models[name] = Model.objects.create(name=name, **desired)
            _count_created(report, f"model {name}")
        else:
            _save_changes(model, desired, report, f"model {name}")
    for name, model in models.items():
        if name not in listed and model.enabled:
            _disable(model, report, f"model {name}")

    existing = {inst.id: inst for inst in ProviderInstance.objects.select_related("model", "provider")}
    claimed = {entry.instance_id for entry in plan.entries if entry.instance_id}
    providers = {}
    for entry in plan.entries:
        instance = existing.get(entry.instance_id) if entry.instance_id else _match(entry, existing, claimed)
        if instance is not None:
            claimed.add(instance.id)
        instance = _apply_entry(entry, instance, models[entry.model_name], providers, report)
        if entry.enabled and snapshot.key_missing(instance, instance.resolved_params()):
            # Typically an export (literal keys left out) imported where those secrets were never stored.
            report.warnings.append(
                f"instance {instance.id} has no API key: the file gives none and none is stored for it or its "
                f"provider {instance.provider.name}; it is not routed to until one is set (admin, or "
                "api_key: os.environ/NAME)"
            )

    for instance in existing.values():
        # Instances of a model that was already disabled and is still absent are not described by the file at all;
        # leaving them as they are is what makes importing an export (which skips disabled models) a no-op.
        described = instance.model.name in listed or instance.model.name in was_enabled
        if instance.id not in claimed and instance.enabled and described:
            _disable(instance, report, f"instance {instance.id}")

    _apply_settings(plan, report)
    experiments_config.apply_experiments(plan.experiments, report)


def _match(entry, existing, claimed):
    """Return the unclaimed existing instance of the entry's model with the same model string and endpoint."""
    candidates = [
        inst
        for inst in existing.values()
        if inst.id not in claimed
        and inst.model.name == entry.model_name
        and inst.litellm_model == entry.litellm_model
        and inst.api_base == entry.api_base
    ]
    candidates.sort(key=lambda inst: (not inst.enabled, inst.id))
    return candidates[0] if candidates else None


def _apply_entry(entry, instance, model, providers, report):
    """Create or update the instance an entry describes; return it."""
    if instance is not None and instance.provider.kind == entry.kind:
        # Keep an admin's choice among several providers of the same kind.
        provider = instance.provider
    else:
        provider = _provider_for(entry, providers, report)
    desired = {
        "model_id": model.pk,
        "provider_id": provider.pk,
        "litellm_model": entry.litellm_model,
        "api_base": entry.api_base,
        "api_base_env": entry.api_base_env,
        "params": entry.params,
        "secret_params": _desired_secret_params(entry, instance),
        "weight": entry.weight,
        "rpm": entry.rpm,
        "tpm": entry.tpm,
        "timeout": entry.timeout,
        "stream_timeout": entry.stream_timeout,
        "enabled": entry.enabled,
    }
    if instance is None:
        instance = ProviderInstance(**desired)  # secret_params: the entry's literals, encrypted above
        if entry.instance_id:
            instance.id = entry.instance_id
        if entry.api_key is not None:
            instance.set_api_key(entry.api_key)
        instance.save(force_insert=True)
        _count_created(report, f"instance {instance.id} of model {model.name}")
        return instance
    key_changed = entry.api_key is not None and not _key_matches(instance, entry.api_key)
    if key_changed:
        instance.set_api_key(entry.api_key)
    _save_changes(instance, desired, report, f"instance {instance.id}", extra=API_KEY_FIELDS if key_changed else ())
    return instance


def _desired_secret_params(entry, instance):
    """Return the encrypted credential parameters the instance should hold: the entry's literals (a stored one
    that decrypts to the same value is kept as is, so an unchanged file saves nothing), plus the stored ones the
    entry leaves out (an export leaves literals out), minus those it clears ("") or now gives as references."""
    stored = dict(instance.secret_params) if instance is not None else {}
    desired = {name: token for name, token in stored.items() if name not in entry.params}
    for name, value in entry.secret_params.items():
        if value == "":
            desired.pop(name, None)
        elif name not in desired or not _secret_param_matches(instance, name, value):
            desired[name] = secrets.encrypt(json.dumps(value))
    return desired


def _secret_param_matches(instance, name, value):
    """Return whether the instance's encrypted credential parameter decrypts to value."""
    try:
        return instance.secret_param(name) == value
    except ImproperlyConfigured:
        return False


def _key_matches(instance, value):
    """Return whether the instance already stores this key (reference or literal)."""
    env_name = secrets.env_reference_name(value)
    if env_name:
        return instance.api_key_env == env_name and not instance.api_key_ciphertext
    if not value:
        return not instance.has_api_key()
    if instance.api_key_env or not instance.api_key_ciphertext:
        return False
    # Ciphertexts are randomised, so the only way to compare is to decrypt.
    try:
        return secrets.decrypt(instance.api_key_ciphertext) == value
    except ImproperlyConfigured:
        return False


def _provider_for(entry, providers, report):
    """Return the provider for the entry's kind: the one named after the kind, else any of that kind, else a new one."""
    kind = entry.kind
    if kind in providers:
        return providers[kind]
    of_kind = list(Provider.objects.filter(kind=kind).order_by("name"))
    provider = next((p for p in of_kind if p.name == kind), of_kind[0] if of_kind else None)
    if provider is None:
        if Provider.objects.filter(name=kind).exists():
            raise ConfigError([f"{entry.label}: provider {kind!r} exists with another kind; rename it or fix its kind"])
        provider = Provider.objects.create(
            name=kind,
            kind=kind,
            openai_compatible=kind in OPENAI_COMPATIBLE_KINDS,
            api_base=OPENAI_COMPATIBLE_KINDS.get(kind) or "",
        )
        _count_created(report, f"provider {kind}")
    providers[kind] = provider
    return provider


def _apply_settings(plan, report):
    """Create or update the gateway-wide routing settings."""
    desired = {"default_strategy": str(plan.strategy), "auto_select": plan.auto_select, **plan.settings}
    # Not RoutingSettings.load(): creating the row with defaults first would be a second, needless write.
    row = RoutingSettings.objects.filter(pk=1).first()
    if row is None:
        RoutingSettings.objects.create(pk=1, **desired)
        _count_created(report, "routing settings")
    else:
        _save_changes(row, desired, report, "routing settings")


def _save_changes(obj, desired, report, label, extra=()):
    """Set the desired field values and save only if one differs, so an unchanged row never bumps the revision."""
    changed = [field for field, value in desired.items() if getattr(obj, field) != value]
    for field in changed:
        setattr(obj, field, desired[field])
    changed += list(extra)
    if not changed:
        report.unchanged += 1
        return
    update_fields = changed + (["updated_at"] if hasattr(obj, "updated_at") else [])
    obj.save(update_fields=update_fields)
    report.updated += 1
    shown = dict.fromkeys("api_key" if f in API_KEY_FIELDS else f.removesuffix("_id") for f in changed)
    report.changes.append(f"update {label}: {', '.join(shown)}")


def _disable(obj, report, label):
    """Disable a row the file no longer lists."""
    obj.enabled = False
    obj.save(update_fields=["enabled", "updated_at"])
    report.disabled += 1
    report.changes.append(f"disable {label}")


def _count_created(report, label):
    """Record a created row."""
    report.created += 1
    report.changes.append(f"create {label}")


# --- export -------------------------------------------------------------------------------------------------------


def _export_entry(instance, *, include_secrets):
    """Return the model_list entry for one instance, with only the fields it sets."""
    params = {"model": instance.litellm_model}
    if instance.api_base_env:
        params["api_base"] = secrets.env_reference(instance.api_base_env)
    elif instance.api_base:
        params["api_base"] = instance.api_base
    params.update(instance.params)
    if include_secrets:
        params.update({name: instance.secret_param(name) for name in instance.secret_params})
    reference = instance.api_key_reference()
    if reference:
        params["api_key"] = reference
    elif include_secrets and instance.api_key_ciphertext:
        params["api_key"] = instance.resolve_api_key()
    params["weight"] = _plain(instance.weight)
    for field in ("rpm", "tpm", "timeout", "stream_timeout"):
        value = getattr(instance, field)
        if value is not None:
            params[field] = _plain(value)
    return {
        "model_name": instance.model.name,
        "litellm_params": params,
        "model_info": {
            "id": instance.id,
            "enabled": instance.enabled,
            **({"mode": "embedding"} if instance.model.mode == ModelMode.EMBEDDING else {}),
            **_export_metadata(instance.model),
        },
    }


def _export_metadata(model):
    """Return the model's metadata overrides as model_info keys (the litellm map's values are not written)."""
    info = {}
    for key, field in METADATA_KEYS.items():
        value = getattr(model, field)
        if value is not None:
            info[key] = _per_token_number(value) if key in metadata.PRICES else value
    return info


def _per_token_number(per_mtok):
    """Return a price per million tokens as the per-token number LiteLLM reads.

    A float holds the stored value exactly enough: it has at most 12 significant digits, and a float's shortest
    representation keeps up to 15, so the file reads back to the same Decimal.
    """
    return float(metadata.per_token(per_mtok))


def _plain(value):
    """Return a whole float as an int, so the YAML reads `weight: 2` rather than `2.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
