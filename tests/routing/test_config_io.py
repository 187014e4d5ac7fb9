"""Tests for routing/config_io.py and the import_routing_config / export_routing_config commands."""

import copy
import io
import json
import re
from decimal import Decimal

import openai
import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from routing import secrets, snapshot
from routing.config_io import ConfigError, load_config_file, routing_config_export, routing_config_import
from routing.models import ConfigRevision, Model, Provider, ProviderInstance, RoutingSettings
from tests.factories import make_key, make_model, set_instance, wait_for_model
from tests.helpers import MESSAGES, wait_rows

LITERAL_KEY = "sk-literal-secret-abcd1234"

REALISTIC = """\
model_list:
  - model_name: vault-gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:9001/v1
      api_key: os.environ/OPENAI_API_KEY
      weight: 2
      rpm: 100
      tpm: 10000
      timeout: 30
      stream_timeout: 10
    model_info:
      id: mini-a
      max_input_tokens: 64000
      supports_vision: false
      input_cost_per_token: 1.23456e-07
  - model_name: vault-gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:9002/v1
      api_key: sk-literal-secret-abcd1234
      max_parallel_requests: 5
    model_info:
      max_input_tokens: 64000
      supports_vision: false
  - model_name: vault-claude
    litellm_params:
      model: anthropic/claude-3-5-haiku-20241022
      api_key: os.environ/ANTHROPIC_API_KEY
      timeout: 60
    model_info:
      id: claude-1
      enabled: true
      supports_function_calling: true
      supports_response_schema: true
      output_cost_per_token: 4.0e-06
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 2
  fallbacks: [{vault-gpt-4o-mini: [vault-claude]}]
  context_window_fallbacks: [{vault-gpt-4o-mini: [vault-claude]}]
litellm_settings:
  drop_params: true
  success_callback: ["langfuse"]
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
model_routing:
  auto_select: false
  capabilities:
    vault-gpt-4o-mini: [general_chat, question_answering, analysis]
    vault-claude: [analysis]
  experiments: []
"""


METADATA_FIELDS = (
    "context_window",
    "supports_function_calling",
    "supports_vision",
    "supports_response_schema",
    "input_cost_per_mtok",
    "output_cost_per_mtok",
)


def realistic():
    """Return the realistic config as a fresh mapping."""
    return yaml.safe_load(REALISTIC)


def db_state():
    """Return every routing row that an import may touch, as comparable plain values."""
    return {
        "providers": sorted(Provider.objects.values_list("name", "kind", "openai_compatible", "api_base")),
        "models": sorted(
            Model.objects.values_list(
                "name", "enabled", "capabilities", "fallbacks", "context_window_fallbacks", *METADATA_FIELDS
            )
        ),
        "instances": sorted(
            ProviderInstance.objects.values_list(
                "id",
                "model__name",
                "provider__name",
                "litellm_model",
                "api_base",
                "weight",
                "rpm",
                "tpm",
                "timeout",
                "stream_timeout",
                "enabled",
                "api_key_ciphertext",
                "api_key_env",
                "api_key_last4",
            )
        ),
        "settings": list(RoutingSettings.objects.values_list("default_strategy", "auto_select")),
        "revision": ConfigRevision.current_token(),
    }


def write(tmp_path, data, name="config.yaml"):
    """Write data (a mapping or YAML text) to a file and return its path."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def run_import(path, *args):
    """Run import_routing_config on path and return its stdout."""
    out = io.StringIO()
    call_command("import_routing_config", str(path), *args, stdout=out)
    return out.getvalue()


def run_export(*args):
    """Run export_routing_config to stdout and return the parsed YAML and the raw text."""
    out = io.StringIO()
    call_command("export_routing_config", *args, stdout=out)
    return yaml.safe_load(out.getvalue()), out.getvalue()


@pytest.mark.django_db
def test_it_imports_a_realistic_litellm_config():
    report = routing_config_import(data=realistic())

    mini = Model.objects.get(name="vault-gpt-4o-mini")
    assert mini.enabled
    assert mini.capabilities == ["general_chat", "question_answering", "analysis"]
    assert Model.objects.get(name="vault-claude").capabilities == ["analysis"]

    a = ProviderInstance.objects.get(pk="mini-a")
    assert (a.model, a.litellm_model, a.api_base) == (mini, "openai/gpt-4o-mini", "http://127.0.0.1:9001/v1")
    assert (a.weight, a.rpm, a.tpm, a.timeout, a.stream_timeout, a.enabled) == (2.0, 100, 10000, 30.0, 10.0, True)
    b = ProviderInstance.objects.get(model=mini, api_base="http://127.0.0.1:9002/v1")
    assert b.id.startswith("inst-")
    assert (b.weight, b.rpm, b.tpm, b.timeout, b.stream_timeout) == (1.0, None, None, None, None)
    claude = ProviderInstance.objects.get(pk="claude-1")
    assert claude.model.name == "vault-claude"
    assert claude.timeout == 60.0
    assert claude.api_base == ""

    openai = Provider.objects.get(name="openai")
    assert (openai.kind, openai.openai_compatible, openai.api_base) == ("openai", True, "https://api.openai.com/v1")
    anthropic = Provider.objects.get(name="anthropic")
    assert (anthropic.kind, anthropic.openai_compatible) == ("anthropic", False)
    assert a.provider == b.provider == openai
    assert claude.provider == anthropic

    row = RoutingSettings.load()
    assert row.default_strategy == "weighted"
    assert row.auto_select is False

    assert row.max_attempts == 3  # router_settings.num_retries: 2 retries after the first attempt

    assert (report.created, report.updated, report.disabled) == (2 + 3 + 2 + 1, 0, 0)
    assert "litellm_settings.drop_params is not used by ChatVault; ignored" in report.warnings
    assert "litellm_settings.success_callback is not used by ChatVault; ignored" in report.warnings
    assert any(w.startswith("general_settings ") for w in report.warnings)
    assert any("model_list[1]" in w and "litellm_params.max_parallel_requests" in w for w in report.warnings)
    assert len(report.warnings) == 4


@pytest.mark.django_db
def test_it_maps_model_strings_to_provider_kinds():
    data = {
        "model_list": [
            {"model_name": "bare", "litellm_params": {"model": "gpt-4o"}},
            {
                "model_name": "vllm",
                "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://127.0.0.1:8000/v1"},
            },
        ]
    }
    routing_config_import(data=data)

    assert ProviderInstance.objects.get(model__name="bare").provider.kind == "openai"
    vllm = Provider.objects.get(name="hosted_vllm")
    assert (vllm.openai_compatible, vllm.api_base) == (True, "")


@pytest.mark.django_db
def test_it_reuses_existing_providers_without_changing_them():
    existing = Provider.objects.create(name="openai", kind="openai", openai_compatible=False, api_base="")

    routing_config_import(data=realistic())

    existing.refresh_from_db()
    assert (existing.openai_compatible, existing.api_base) == (False, "")
    assert Provider.objects.filter(kind="openai").count() == 1
    assert ProviderInstance.objects.get(pk="mini-a").provider == existing


@pytest.mark.django_db
def test_it_stores_literal_keys_encrypted_and_references_as_references():
    routing_config_import(data=realistic())

    literal = ProviderInstance.objects.get(api_base="http://127.0.0.1:9002/v1")
    assert literal.api_key_ciphertext
    assert LITERAL_KEY not in literal.api_key_ciphertext
    assert secrets.decrypt(literal.api_key_ciphertext) == LITERAL_KEY
    assert literal.api_key_last4 == "1234"
    assert literal.api_key_env == ""

    reference = ProviderInstance.objects.get(pk="mini-a")
    assert reference.api_key_env == "OPENAI_API_KEY"
    assert (reference.api_key_ciphertext, reference.api_key_last4) == ("", "")
    assert reference.api_key_reference() == "os.environ/OPENAI_API_KEY"


@pytest.mark.django_db
def test_a_second_import_of_the_same_file_changes_nothing():
    routing_config_import(data=realistic())
    before = db_state()

    report = routing_config_import(data=realistic())

    assert (report.created, report.updated, report.disabled) == (0, 0, 0)
    assert report.unchanged == 2 + 3 + 1  # models, instances, settings
    assert not report.changes
    assert db_state() == before
    assert ConfigRevision.current_token() == before["revision"]


@pytest.mark.django_db
def test_it_matches_instances_without_id_by_model_string_and_endpoint():
    routing_config_import(data=realistic())
    generated = ProviderInstance.objects.get(api_base="http://127.0.0.1:9002/v1").pk
    data = realistic()
    data["model_list"][1]["litellm_params"]["weight"] = 5

    report = routing_config_import(data=data)

    assert ProviderInstance.objects.count() == 3
    assert ProviderInstance.objects.get(pk=generated).weight == 5.0
    assert (report.created, report.updated) == (0, 1)
    assert report.changes == [f"update instance {generated}: weight"]


@pytest.mark.django_db
def test_leaving_a_model_or_instance_out_disables_it():
    routing_config_import(data=realistic())
    data = realistic()
    del data["model_list"][2]  # vault-claude, the model's only instance
    del data["model_list"][0]  # mini-a
    del data["model_routing"]["capabilities"]["vault-claude"]
    del data["router_settings"]["fallbacks"], data["router_settings"]["context_window_fallbacks"]

    report = routing_config_import(data=data)

    assert Model.objects.get(name="vault-claude").enabled is False
    assert ProviderInstance.objects.get(pk="claude-1").enabled is False
    assert ProviderInstance.objects.get(pk="mini-a").enabled is False
    assert Model.objects.get(name="vault-gpt-4o-mini").enabled is True
    assert ProviderInstance.objects.filter(enabled=True).count() == 1
    assert (Model.objects.count(), ProviderInstance.objects.count()) == (2, 3)
    assert report.disabled == 3

    # Listing them again brings them back.
    routing_config_import(data=realistic())
    assert Model.objects.filter(enabled=True).count() == 2
    assert ProviderInstance.objects.filter(enabled=True).count() == 3


@pytest.mark.django_db
def test_an_entry_without_api_key_keeps_the_stored_secret():
    routing_config_import(data=realistic())
    literal = ProviderInstance.objects.get(api_base="http://127.0.0.1:9002/v1")
    stored = (literal.api_key_ciphertext, literal.api_key_last4)
    data = realistic()
    for entry in data["model_list"]:
        entry["litellm_params"].pop("api_key")
    token = ConfigRevision.current_token()

    report = routing_config_import(data=data)

    literal.refresh_from_db()
    assert (literal.api_key_ciphertext, literal.api_key_last4) == stored
    assert ProviderInstance.objects.get(pk="mini-a").api_key_env == "OPENAI_API_KEY"
    assert not report.changed
    assert ConfigRevision.current_token() == token


@pytest.mark.django_db
def test_a_changed_key_replaces_the_stored_one():
    routing_config_import(data=realistic())
    data = realistic()
    data["model_list"][0]["litellm_params"]["api_key"] = "sk-new-key-9999"

    report = routing_config_import(data=data)

    inst = ProviderInstance.objects.get(pk="mini-a")
    assert (inst.api_key_env, inst.api_key_last4) == ("", "9999")
    assert inst.resolve_api_key() == "sk-new-key-9999"
    assert report.changes == ["update instance mini-a: api_key"]


@pytest.mark.django_db
def test_export_leaves_literal_secrets_out_unless_asked():
    routing_config_import(data=realistic())

    exported = routing_config_export()
    text = yaml.safe_dump(exported)
    assert LITERAL_KEY not in text
    assert "os.environ/OPENAI_API_KEY" in text
    by_id = {e["model_info"]["id"]: e for e in exported["model_list"]}
    assert by_id["mini-a"]["litellm_params"]["api_key"] == "os.environ/OPENAI_API_KEY"
    literal_id = ProviderInstance.objects.get(api_base="http://127.0.0.1:9002/v1").pk
    assert "api_key" not in by_id[literal_id]["litellm_params"]

    with_secrets = routing_config_export(include_secrets=True)
    by_id = {e["model_info"]["id"]: e for e in with_secrets["model_list"]}
    assert by_id[literal_id]["litellm_params"]["api_key"] == LITERAL_KEY
    assert by_id["mini-a"]["litellm_params"]["api_key"] == "os.environ/OPENAI_API_KEY"


@pytest.mark.django_db
def test_export_writes_the_import_format():
    routing_config_import(data=realistic())
    disabled = Model.objects.create(name="aaa-disabled", enabled=False, capabilities=["x"])
    ProviderInstance.objects.create(
        id="old-1", model=disabled, provider=Provider.objects.get(name="openai"), litellm_model="openai/gpt-3.5-turbo"
    )
    ProviderInstance.objects.filter(pk="mini-a").update(enabled=False)

    exported = routing_config_export()

    literal_id = ProviderInstance.objects.get(api_base="http://127.0.0.1:9002/v1").pk
    names_ids = [(e["model_name"], e["model_info"]["id"]) for e in exported["model_list"]]
    assert names_ids == sorted(
        [("vault-claude", "claude-1"), ("vault-gpt-4o-mini", "mini-a"), ("vault-gpt-4o-mini", literal_id)]
    )
    # A model's metadata overrides go on every entry of the model, the litellm map's values nowhere.
    mini_metadata = {"max_input_tokens": 64000, "supports_vision": False, "input_cost_per_token": 1.23456e-07}
    mini_a = next(e for e in exported["model_list"] if e["model_info"]["id"] == "mini-a")
    assert mini_a["model_info"] == {"id": "mini-a", "enabled": False, **mini_metadata}
    literal = next(e for e in exported["model_list"] if e["model_info"]["id"] == literal_id)
    assert literal["model_info"] == {"id": literal_id, "enabled": True, **mini_metadata}
    assert mini_a["litellm_params"] == {
        "model": "openai/gpt-4o-mini",
        "api_base": "http://127.0.0.1:9001/v1",
        "api_key": "os.environ/OPENAI_API_KEY",
        "weight": 2,
        "rpm": 100,
        "tpm": 10000,
        "timeout": 30,
        "stream_timeout": 10,
    }
    claude = next(e for e in exported["model_list"] if e["model_info"]["id"] == "claude-1")
    assert claude["model_info"] == {
        "id": "claude-1",
        "enabled": True,
        "supports_function_calling": True,
        "supports_response_schema": True,
        "output_cost_per_token": 4e-06,
    }
    assert claude["litellm_params"] == {
        "model": "anthropic/claude-3-5-haiku-20241022",
        "api_key": "os.environ/ANTHROPIC_API_KEY",
        "weight": 1,
        "timeout": 60,
    }
    assert exported["router_settings"] == {
        "routing_strategy": "weighted",
        "fallbacks": [{"vault-gpt-4o-mini": ["vault-claude"]}],
        "context_window_fallbacks": [{"vault-gpt-4o-mini": ["vault-claude"]}],
        "num_retries": 2,
        "allowed_fails": 4,
        "cooldown_time": 10,
    }
    assert exported["model_routing"] == {
        "auto_select": False,
        "capabilities": {
            "vault-claude": ["analysis"],
            "vault-gpt-4o-mini": ["general_chat", "question_answering", "analysis"],
        },
        "experiments": [],
    }


@pytest.mark.django_db
def test_export_then_import_is_a_no_op():
    routing_config_import(data=realistic())
    # State the file did not create: a disabled model with a still-enabled instance, and a disabled instance.
    disabled = Model.objects.create(name="retired", enabled=False)
    ProviderInstance.objects.create(
        id="retired-1", model=disabled, provider=Provider.objects.get(name="openai"), litellm_model="openai/gpt-4"
    )
    ProviderInstance.objects.filter(pk="claude-1").update(enabled=False)
    ConfigRevision.bump()
    before = db_state()

    report = routing_config_import(data=yaml.safe_load(yaml.safe_dump(routing_config_export())))

    assert not report.changed, report.changes
    assert report.warnings == []
    assert db_state() == before


@pytest.mark.django_db
def test_a_dry_run_saves_nothing():
    before = db_state()

    report = routing_config_import(data=realistic(), dry_run=True)

    assert report.created == 8
    assert report.dry_run
    assert db_state() == before


BAD_FILES = [
    (
        lambda d: d["model_list"][2]["litellm_params"].pop("model"),
        "model_list[2] (vault-claude): litellm_params.model is required",
    ),
    (
        lambda d: d["model_list"][0]["litellm_params"].update(weight="heavy"),
        "model_list[0] (vault-gpt-4o-mini): litellm_params.weight must be a number",
    ),
    (
        lambda d: d["model_list"][0]["litellm_params"].update(weight=-1),
        "model_list[0] (vault-gpt-4o-mini): litellm_params.weight must not be negative",
    ),
    (
        lambda d: d["model_list"][2]["litellm_params"].update(timeout=0),
        "model_list[2] (vault-claude): litellm_params.timeout must be positive",
    ),
    (
        lambda d: d["model_list"][1]["litellm_params"].update(rpm=1.5),
        "model_list[1] (vault-gpt-4o-mini): litellm_params.rpm must be a whole number",
    ),
    (
        lambda d: d["model_list"][1]["litellm_params"].update(api_base="not a url"),
        "model_list[1] (vault-gpt-4o-mini): litellm_params.api_base 'not a url' is not an http(s) URL",
    ),
    (
        lambda d: d["model_list"][1].pop("model_name"),
        "model_list[1]: model_name is required",
    ),
    (
        lambda d: d["model_list"][2]["model_info"].update(id="mini-a"),
        "model_list[2] (vault-claude): model_info.id 'mini-a' is already used by model_list[0]",
    ),
    (
        lambda d: d["router_settings"].update(routing_strategy="fastest"),
        "router_settings.routing_strategy: unknown routing strategy 'fastest'",
    ),
    (
        lambda d: d["router_settings"].update(fallbacks=[{"vault-gpt-4o-mini": ["vault-ghost"]}]),
        "router_settings.fallbacks[0]: 'vault-ghost' not in model_list",
    ),
    (
        lambda d: d["router_settings"].update(fallbacks={"vault-gpt-4o-mini": ["vault-claude"]}),
        "router_settings.fallbacks must be a list of {model: [fallback models]} mappings",
    ),
    (
        lambda d: d["router_settings"].update(context_window_fallbacks=[{"vault-claude": "vault-gpt-4o-mini"}]),
        "router_settings.context_window_fallbacks[0].vault-claude must be a list of model names",
    ),
    (
        lambda d: d["router_settings"].update(fallbacks=[{"vault-claude": ["vault-claude"]}]),
        "router_settings.fallbacks[0]: 'vault-claude' cannot be its own fallback",
    ),
    (
        lambda d: d["model_routing"]["capabilities"].update({"vault-claude": "analysis"}),
        "model_routing.capabilities.vault-claude: must be a list of capability strings",
    ),
    (
        lambda d: d["model_routing"]["capabilities"].update({"vault-ghost": ["analysis"]}),
        "model_routing.capabilities.vault-ghost: model 'vault-ghost' is not in model_list",
    ),
    (
        lambda d: d["model_list"][0]["model_info"].update(supports_vision="no"),
        "model_list[0] (vault-gpt-4o-mini): model_info.supports_vision must be true or false, not 'no'",
    ),
    (
        lambda d: d["model_list"][2]["model_info"].update(supports_function_calling=1),
        "model_list[2] (vault-claude): model_info.supports_function_calling must be true or false, not 1",
    ),
    (
        lambda d: d["model_list"][1]["model_info"].update(max_input_tokens=0),
        "model_list[1] (vault-gpt-4o-mini): model_info.max_input_tokens must be a whole number of tokens from 1",
    ),
    (
        lambda d: d["model_list"][1]["model_info"].update(max_input_tokens=128000.5),
        "model_list[1] (vault-gpt-4o-mini): model_info.max_input_tokens must be a whole number of tokens",
    ),
    (
        lambda d: d["model_list"][0]["model_info"].update(input_cost_per_token=-1.0e-07),
        "model_list[0] (vault-gpt-4o-mini): model_info.input_cost_per_token must be a number of USD per token",
    ),
    (
        lambda d: d["model_list"][2]["model_info"].update(output_cost_per_token=2),
        "model_list[2] (vault-claude): model_info.output_cost_per_token must be a number of USD per token from 0",
    ),
    (
        lambda d: d["model_list"][2]["model_info"].update(output_cost_per_token=True),
        "model_list[2] (vault-claude): model_info.output_cost_per_token must be a number of USD per token",
    ),
    (
        lambda d: d["model_list"][2]["model_info"].update(output_cost_per_token="4e-06"),
        "model_info.output_cost_per_token must be a number of USD per token from 0 to 0.999999, not '4e-06' "
        "(YAML reads 1e-06, without a dot, as text: write 1.0e-06)",
    ),
    (
        lambda d: d.update(model_list={"vault-x": {}}),
        "model_list must be a list",
    ),
    (
        lambda d: d.pop("model_list"),
        "model_list is required",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("spoil", "message"), BAD_FILES, ids=[m.split(":")[0] + m[-12:] for _, m in BAD_FILES])
def test_a_bad_file_is_refused_naming_the_entry_and_changes_nothing(tmp_path, spoil, message):
    routing_config_import(data=realistic())
    # Make the valid part of the bad file differ from the database, so a partial write would show.
    data = copy.deepcopy(realistic())
    data["model_list"][0]["litellm_params"]["rpm"] = 999
    data["router_settings"]["routing_strategy"] = "least-busy"
    spoil(data)
    before = db_state()

    with pytest.raises(CommandError, match=r"(?s)invalid routing config.*" + re.escape(message)):
        run_import(write(tmp_path, data))

    assert db_state() == before
    with pytest.raises(ConfigError):
        routing_config_import(data=data)
    assert db_state() == before


@pytest.mark.django_db
def test_every_problem_is_reported_at_once():
    data = realistic()
    data["model_list"][0]["litellm_params"]["weight"] = -3
    data["model_list"][2]["litellm_params"]["stream_timeout"] = "soon"

    with pytest.raises(ConfigError) as info:
        routing_config_import(data=data)

    assert len(info.value.errors) == 2
    assert info.value.errors[0].startswith("model_list[0] (vault-gpt-4o-mini): litellm_params.weight")
    assert info.value.errors[1].startswith("model_list[2] (vault-claude): litellm_params.stream_timeout")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("model_list: [\n  - model_name: x\n", "invalid YAML"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("", "the top level must be a mapping"),
    ],
)
def test_load_config_file_refuses_what_is_not_a_yaml_mapping(tmp_path, content, message):
    path = write(tmp_path, content)

    with pytest.raises(ConfigError, match=message):
        load_config_file(path)


@pytest.mark.django_db
def test_the_import_command_refuses_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="cannot read the file"):
        run_import(tmp_path / "missing.yaml")
    assert Model.objects.count() == 0


@pytest.mark.django_db
def test_the_import_command_prints_one_line_per_warning_and_a_summary(tmp_path):
    data = realistic()
    data["model_routing"]["budgets"] = {"vault-claude": 10}
    path = write(tmp_path, data)

    lines = run_import(path).splitlines()

    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 5
    assert "warning: model_routing.budgets is not used by ChatVault; ignored" in warnings
    assert "warning: litellm_settings.drop_params is not used by ChatVault; ignored" in warnings
    assert lines[-1] == "8 created, 0 updated, 0 disabled, 0 unchanged, 5 warnings"
    assert len(lines) == 6
    assert Model.objects.count() == 2

    assert run_import(path).splitlines()[-1] == "0 created, 0 updated, 0 disabled, 6 unchanged, 5 warnings"


@pytest.mark.django_db
def test_the_import_command_dry_run_saves_nothing(tmp_path):
    out = run_import(write(tmp_path, realistic()), "--dry-run", "--verbosity", "2")

    assert "create model vault-claude" in out
    assert out.splitlines()[-1].startswith("dry run, nothing saved: 8 created")
    assert Model.objects.count() == 0
    assert ConfigRevision.current_token() is None


@pytest.mark.django_db
def test_the_export_command_round_trips_through_a_file(tmp_path):
    routing_config_import(data=realistic())
    path = tmp_path / "exported.yaml"

    out = io.StringIO()
    call_command("export_routing_config", str(path), stdout=out)

    assert LITERAL_KEY not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    before = db_state()
    assert run_import(path).splitlines() == ["0 created, 0 updated, 0 disabled, 6 unchanged, 0 warnings"]
    assert db_state() == before


@pytest.mark.django_db
def test_the_export_command_writes_yaml_to_stdout():
    routing_config_import(data=realistic())

    plain, text = run_export()
    assert LITERAL_KEY not in text
    assert plain == routing_config_export()

    with_secrets, text = run_export("--include-secrets")
    assert LITERAL_KEY in text
    assert with_secrets == routing_config_export(include_secrets=True)


@pytest.mark.django_db
def test_an_export_imports_into_an_empty_database(tmp_path):
    routing_config_import(data=realistic())
    exported = routing_config_export(include_secrets=True)
    ProviderInstance.objects.all().delete()
    Model.objects.all().delete()
    Provider.objects.all().delete()

    routing_config_import(data=exported)

    assert routing_config_export(include_secrets=True) == exported
    literal = ProviderInstance.objects.get(api_base="http://127.0.0.1:9002/v1")
    assert literal.resolve_api_key() == LITERAL_KEY


@pytest.mark.django_db
def test_a_provider_name_taken_by_another_kind_is_refused_and_changes_nothing():
    Provider.objects.create(name="openai", kind="azure")
    before = db_state()

    with pytest.raises(ConfigError, match=r"model_list\[0\] \(vault-gpt-4o-mini\): provider 'openai' exists"):
        routing_config_import(data=realistic())

    assert db_state() == before


@pytest.mark.django_db
def test_an_instance_id_listed_under_another_model_moves_there():
    routing_config_import(data=realistic())
    data = realistic()
    data["model_list"][0]["model_name"] = "vault-claude"

    report = routing_config_import(data=data)

    assert ProviderInstance.objects.get(pk="mini-a").model.name == "vault-claude"
    # The metadata mini-a's entry carries moves with it: it now speaks for vault-claude, no longer for the mini.
    assert report.changes == [
        "update model vault-claude: context_window, supports_vision, input_cost_per_mtok",
        "update model vault-gpt-4o-mini: input_cost_per_mtok",
        "update instance mini-a: model",
    ]


@pytest.mark.django_db
def test_auto_select_is_stored_and_acted_on_without_a_warning():
    from routing.config_io import routing_config_import
    from routing.models import RoutingSettings

    report = routing_config_import(
        data={
            "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/gpt-4o-mini"}}],
            "model_routing": {"auto_select": True},
        }
    )
    assert RoutingSettings.load().auto_select is True
    assert not any("auto_select" in w for w in report.warnings)


@pytest.mark.django_db
def test_it_imports_model_metadata_from_model_info_as_model_overrides():
    report = routing_config_import(data=realistic())

    mini = Model.objects.get(name="vault-gpt-4o-mini")
    assert (mini.context_window, mini.supports_vision) == (64000, False)
    assert mini.input_cost_per_mtok == Decimal("0.123456")  # 1.23456e-07 per token, exactly
    # What the file leaves out stays unset, for the litellm map to decide.
    assert (mini.supports_function_calling, mini.supports_response_schema, mini.output_cost_per_mtok) == (
        None,
        None,
        None,
    )
    claude = Model.objects.get(name="vault-claude")
    assert (claude.supports_function_calling, claude.supports_response_schema) == (True, True)
    assert claude.output_cost_per_mtok == Decimal("4")
    assert (claude.context_window, claude.supports_vision, claude.input_cost_per_mtok) == (None, None, None)
    # mini-a alone names the input price; the other entry is silent about it, which is no disagreement.
    assert not any("disagree" in w for w in report.warnings)


@pytest.mark.django_db
def test_entries_that_disagree_give_the_most_conservative_value_and_a_warning_naming_model_and_key():
    data = realistic()
    other = data["model_list"][1]["model_info"]
    other.update(max_input_tokens=8000, supports_vision=True, input_cost_per_token=2.0e-07)
    data["model_list"][0]["model_info"]["supports_function_calling"] = True
    other["supports_function_calling"] = False

    report = routing_config_import(data=data)

    mini = Model.objects.get(name="vault-gpt-4o-mini")
    assert mini.context_window == 8000  # the smallest window
    assert mini.supports_vision is False  # False over True
    assert mini.supports_function_calling is False
    assert mini.input_cost_per_mtok == Decimal("0.2")  # the highest price
    disagreements = [w for w in report.warnings if "disagree" in w]
    assert disagreements == [
        "model vault-gpt-4o-mini: its entries disagree on model_info.max_input_tokens (64000, 8000); "
        "using the most conservative, 8000",
        "model vault-gpt-4o-mini: its entries disagree on model_info.supports_function_calling (true, false); "
        "using the most conservative, false",
        "model vault-gpt-4o-mini: its entries disagree on model_info.supports_vision (false, true); "
        "using the most conservative, false",
        "model vault-gpt-4o-mini: its entries disagree on model_info.input_cost_per_token (1.23456e-07, 2e-07); "
        "using the most conservative, 2e-07",
    ]


@pytest.mark.django_db
def test_leaving_metadata_out_of_the_file_clears_the_overrides():
    routing_config_import(data=realistic())
    data = realistic()
    for entry in data["model_list"]:
        entry["model_info"] = {key: value for key, value in entry["model_info"].items() if key in ("id", "enabled")}

    report = routing_config_import(data=data)

    assert set(Model.objects.values_list(*METADATA_FIELDS)) == {(None,) * len(METADATA_FIELDS)}
    assert sorted(report.changes) == [
        "update model vault-claude: supports_function_calling, supports_response_schema, output_cost_per_mtok",
        "update model vault-gpt-4o-mini: context_window, supports_vision, input_cost_per_mtok",
    ]


@pytest.mark.django_db
def test_a_price_finer_than_chatvault_stores_is_rounded_with_a_warning():
    data = realistic()
    data["model_list"][0]["model_info"]["input_cost_per_token"] = 1.2345678e-07

    report = routing_config_import(data=data)

    assert Model.objects.get(name="vault-gpt-4o-mini").input_cost_per_mtok == Decimal("0.123457")
    assert report.warnings[-1] == (
        "model vault-gpt-4o-mini: model_info.input_cost_per_token is stored rounded to 1.23457e-07 "
        "(ChatVault keeps prices to 6 decimal places per million tokens)"
    )
    # The rounded value is what the database holds, so the same file imports again without a change.
    assert not routing_config_import(data=data).changed


@pytest.mark.django_db
@pytest.mark.parametrize("per_mtok", ["999999.999999", "0.000001", "0", "2.5", "0.123456"])
def test_every_storable_price_round_trips_exactly(per_mtok):
    routing_config_import(data=realistic())
    Model.objects.filter(name="vault-claude").update(input_cost_per_mtok=Decimal(per_mtok))
    before = db_state()

    text = yaml.safe_dump(routing_config_export())
    report = routing_config_import(data=yaml.safe_load(text))

    assert not report.changed, report.changes
    assert report.warnings == []
    assert db_state() == before
    assert Model.objects.get(name="vault-claude").input_cost_per_mtok == Decimal(per_mtok)


@pytest.mark.django_db
def test_router_fallbacks_are_stored_on_the_model_they_belong_to():
    routing_config_import(data=realistic())
    mini = Model.objects.get(name="vault-gpt-4o-mini")
    assert (mini.fallbacks, mini.context_window_fallbacks) == (["vault-claude"], ["vault-claude"])
    assert Model.objects.get(name="vault-claude").fallbacks == []
    data = realistic()
    del data["router_settings"]["fallbacks"]
    routing_config_import(data=data)
    assert Model.objects.get(name="vault-gpt-4o-mini").fallbacks == [], "the file is the desired state"


PROVIDERS = """\
model_list:
  - model_name: vault-azure
    litellm_params:
      model: azure/gpt-4o
      api_base: os.environ/AZURE_API_BASE
      api_key: os.environ/AZURE_API_KEY
      api_version: os.environ/AZURE_API_VERSION
      organization: org-42
      extra_headers: {X-Team: research}
      max_retries: 2
    model_info: {id: az-1}
  - model_name: vault-bedrock
    litellm_params:
      model: bedrock/anthropic.claude-3-haiku
      aws_region_name: us-east-1
      aws_access_key_id: AKIA-literal-1234
      aws_secret_access_key: os.environ/AWS_SECRET_ACCESS_KEY
      aws_session_token: session-literal-5678
    model_info: {id: br-1}
    rpm: 30
    tpm: 9000
  - model_name: vault-vertex
    litellm_params:
      model: vertex_ai/gemini-1.5-pro
      vertex_project: os.environ/VERTEXAI_PROJECT
      vertex_location: us-central1
      vertex_credentials: {type: service_account, private_key: "-----BEGIN KEY-----abc"}
    model_info: {id: vx-1}
  - model_name: vault-custom
    litellm_params:
      model: my-llama
      custom_llm_provider: hosted_vllm
      api_base: http://127.0.0.1:8000/v1
    model_info: {id: cu-1}
router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 4
  allowed_fails: 2
  cooldown_time: 30
  model_group_alias: {gpt-4o: vault-azure, vault-custom: {model: vault-vertex, hidden: true}}
litellm_settings:
  request_timeout: 45
  num_retries: 9
"""

UPSTREAM_ENV = {
    "AZURE_API_BASE": "http://127.0.0.1:9100/azure",
    "AZURE_API_KEY": "az-key-from-env",
    "AZURE_API_VERSION": "2024-06-01",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-from-env",
    "VERTEXAI_PROJECT": "proj-7",
}


def providers():
    """Return the provider-specific config as a fresh mapping."""
    return yaml.safe_load(PROVIDERS)


@pytest.mark.django_db
def test_os_environ_references_in_any_string_field_are_stored_as_references():
    report = routing_config_import(data=providers())

    az = ProviderInstance.objects.get(pk="az-1")
    assert (az.api_base, az.api_base_env) == ("", "AZURE_API_BASE")
    assert az.params["api_version"] == "os.environ/AZURE_API_VERSION"
    assert ProviderInstance.objects.get(pk="vx-1").params["vertex_project"] == "os.environ/VERTEXAI_PROJECT"
    assert not [w for w in report.warnings if "model_list" in w], report.warnings


@pytest.mark.django_db
def test_references_are_resolved_when_the_snapshot_is_built(settings):
    from routing import snapshot

    settings.CHATVAULT_UPSTREAM_ENV = UPSTREAM_ENV
    routing_config_import(data=providers())

    models = snapshot.build().models
    az = models["vault-azure"].instances[0]
    assert (az.api_base, az.api_key) == ("http://127.0.0.1:9100/azure", "az-key-from-env")
    assert az.params == {
        "api_version": "2024-06-01",
        "organization": "org-42",
        "extra_headers": {"X-Team": "research"},
        "max_retries": 2,
    }
    br = models["vault-bedrock"].instances[0]
    assert br.params == {
        "aws_region_name": "us-east-1",
        "aws_access_key_id": "AKIA-literal-1234",
        "aws_secret_access_key": "aws-secret-from-env",
        "aws_session_token": "session-literal-5678",
    }
    assert set(br.secrets()) >= {"AKIA-literal-1234", "aws-secret-from-env", "session-literal-5678"}
    vx = models["vault-vertex"].instances[0]
    assert vx.params["vertex_project"] == "proj-7"
    assert "-----BEGIN KEY-----abc" in vx.secrets()
    # Provider parameters are litellm's: the pass-through would drop them.
    assert not az.openai_compatible and not models["vault-custom"].instances[0].openai_compatible

    settings.CHATVAULT_UPSTREAM_ENV = {}
    az = snapshot.build().models["vault-azure"].instances[0]
    assert az.api_base is None and "api_version" not in az.params


@pytest.mark.django_db
def test_literal_credential_params_are_encrypted_and_plain_ones_kept_as_given():
    routing_config_import(data=providers())

    br = ProviderInstance.objects.get(pk="br-1")
    assert br.params == {"aws_region_name": "us-east-1", "aws_secret_access_key": "os.environ/AWS_SECRET_ACCESS_KEY"}
    assert set(br.secret_params) == {"aws_access_key_id", "aws_session_token"}
    assert "literal" not in str(br.secret_params)
    assert br.secret_param("aws_session_token") == "session-literal-5678"
    vx = ProviderInstance.objects.get(pk="vx-1")
    assert vx.secret_param("vertex_credentials") == {"type": "service_account", "private_key": "-----BEGIN KEY-----abc"}
    cu = ProviderInstance.objects.get(pk="cu-1")
    assert (cu.provider.kind, cu.params) == ("hosted_vllm", {"custom_llm_provider": "hosted_vllm"})


@pytest.mark.django_db
def test_entry_level_rpm_tpm_router_and_litellm_settings_are_honoured():
    report = routing_config_import(data=providers())

    br = ProviderInstance.objects.get(pk="br-1")
    assert (br.rpm, br.tpm) == (30, 9000)
    row = RoutingSettings.load()
    assert row.default_strategy == "usage-based"
    # router_settings wins over litellm_settings; LiteLLM's num_retries are retries after the first attempt.
    assert (row.max_attempts, row.breaker_consecutive_failures, row.breaker_cooldown_seconds) == (5, 3, 30.0)
    # request_timeout is every entry's timeout unless it sets its own.
    assert set(ProviderInstance.objects.values_list("timeout", flat=True)) == {45.0}
    assert report.warnings == []


@pytest.mark.django_db
def test_model_group_alias_is_a_model_served_by_its_target():
    routing_config_import(data=providers())

    alias = Model.objects.get(name="gpt-4o")
    assert (alias.enabled, alias.served_by, alias.instances.count()) == (True, "vault-azure", 0)
    assert Model.objects.get(name="vault-custom").served_by == "vault-vertex"
    assert Model.objects.get(name="vault-azure").served_by == ""

    data = providers()
    del data["router_settings"]["model_group_alias"]
    routing_config_import(data=data)
    assert not Model.objects.get(name="gpt-4o").enabled
    assert Model.objects.get(name="vault-custom").served_by == ""


@pytest.mark.django_db
def test_provider_params_export_secrets_only_as_references_and_round_trip():
    routing_config_import(data=providers())
    before = db_state()
    stored = dict(ProviderInstance.objects.get(pk="br-1").secret_params)

    exported = routing_config_export()
    text = yaml.safe_dump(exported)
    for literal in ("AKIA-literal-1234", "session-literal-5678", "BEGIN KEY"):
        assert literal not in text
    by_id = {e["model_info"]["id"]: e["litellm_params"] for e in exported["model_list"]}
    assert by_id["br-1"]["aws_secret_access_key"] == "os.environ/AWS_SECRET_ACCESS_KEY"
    assert by_id["az-1"]["api_base"] == "os.environ/AZURE_API_BASE"
    assert by_id["az-1"]["extra_headers"] == {"X-Team": "research"}
    assert exported["router_settings"]["model_group_alias"] == {"gpt-4o": "vault-azure", "vault-custom": "vault-vertex"}

    report = routing_config_import(data=yaml.safe_load(text))
    assert not report.changed, report.changes
    assert db_state() == before
    assert ProviderInstance.objects.get(pk="br-1").secret_params == stored

    with_secrets = {
        e["model_info"]["id"]: e["litellm_params"] for e in routing_config_export(include_secrets=True)["model_list"]
    }
    assert with_secrets["br-1"]["aws_session_token"] == "session-literal-5678"


@pytest.mark.django_db
def test_a_credential_param_changes_clears_or_becomes_a_reference():
    routing_config_import(data=providers())
    data = providers()
    params = data["model_list"][1]["litellm_params"]
    params.update(aws_session_token="", aws_access_key_id="os.environ/AWS_ACCESS_KEY_ID")

    report = routing_config_import(data=data)

    br = ProviderInstance.objects.get(pk="br-1")
    assert br.secret_params == {}
    assert br.params["aws_access_key_id"] == "os.environ/AWS_ACCESS_KEY_ID"
    assert report.changes == ["update instance br-1: params, secret_params"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "canonical", "warned"),
    [
        ("usage-based-routing", "usage-based", False),
        ("cost-based-routing", "cost-based", False),
        ("least-busy", "least-loaded", False),
        ("provider-budget-routing", "weighted", True),
    ],
)
def test_every_litellm_strategy_imports(name, canonical, warned):
    data = providers()
    data["router_settings"]["routing_strategy"] = name

    report = routing_config_import(data=data)

    assert RoutingSettings.load().default_strategy == canonical
    assert any("routing_strategy" in w for w in report.warnings) == warned


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda p: p.update(api_version="os.environ/"), "litellm_params.api_version os.environ/ reference names no"),
        (lambda p: p.update(extra_headers=["X-A"]), "litellm_params.extra_headers must be a mapping"),
        (lambda p: p.update(max_retries=-1), "litellm_params.max_retries must be a whole number"),
        (lambda p: p.update(organization=42), "litellm_params.organization must be a string, not 42"),
    ],
)
def test_bad_provider_params_are_refused_naming_the_entry(spoil, message):
    data = providers()
    spoil(data["model_list"][0]["litellm_params"])

    with pytest.raises(ConfigError, match=re.escape(f"model_list[0] (vault-azure): {message}")):
        routing_config_import(data=data)


@pytest.mark.django_db
def test_bad_settings_and_aliases_are_refused_naming_the_key():
    data = providers()
    data["router_settings"].update(num_retries="many", model_group_alias={"x": "vault-ghost"})
    del data["router_settings"]["cooldown_time"]
    data["litellm_settings"]["cooldown_time"] = -1

    with pytest.raises(ConfigError) as info:
        routing_config_import(data=data)

    assert info.value.errors == [
        "router_settings.num_retries must be a whole number from 0 to 2147483647, not 'many'",
        "litellm_settings.cooldown_time must be positive, not -1",
        "model_group_alias.x: model 'vault-ghost' is not in model_list",
    ]


@pytest.mark.django_db
def test_the_import_command_prints_warnings_together_with_errors(tmp_path):
    data = realistic()
    data["model_list"][0]["litellm_params"]["weight"] = "heavy"

    with pytest.raises(CommandError) as info:
        run_import(write(tmp_path, data))

    text = str(info.value)
    assert "litellm_params.weight must be a number" in text
    assert "warning: litellm_settings.drop_params is not used by ChatVault; ignored" in text


@pytest.mark.django_db
def test_wildcards_and_unserved_modes_are_skipped_with_a_warning_naming_the_entry_and_the_rest_imports():
    data = {
        "model_list": [
            {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}},
            {"model_name": "*", "litellm_params": {"model": "openai/*"}},
            {"model_name": "anthropic/*", "litellm_params": {"model": "anthropic/*"}},
            {"model_name": "claude-any", "litellm_params": {"model": "anthropic/claude-*"}},
            {
                "model_name": "text-embedding-3-small",
                "litellm_params": {"model": "openai/text-embedding-3-small"},
                "model_info": {"mode": "embedding"},
            },
            {"model_name": "dall-e", "litellm_params": {"model": "openai/dall-e-3"},
             "model_info": {"mode": "image_generation"}},
            {"model_name": "legacy", "litellm_params": {"model": "openai/gpt-3.5-turbo-instruct", "api_key": "k"},
             "model_info": {"mode": "completion"}},
            {"model_name": "said-chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "k"},
             "model_info": {"mode": "chat"}},
        ]
    }  # fmt: skip

    report = routing_config_import(data=data)

    modes = dict(Model.objects.values_list("name", "mode"))
    assert modes == {"chat": "chat", "legacy": "chat", "said-chat": "chat", "text-embedding-3-small": "embedding"}
    assert ProviderInstance.objects.count() == 4
    assert report.warnings[:3] == [
        "model_list[1] (*): wildcard model names are not served (list each model by name); skipped",
        "model_list[2] (anthropic/*): wildcard model names are not served (list each model by name); skipped",
        "model_list[3] (claude-any): wildcard model names are not served (list each model by name); skipped",
    ]
    assert report.warnings[3] == "model_list[5] (dall-e): mode image_generation is not served yet; skipped"


@pytest.mark.django_db
def test_an_embedding_model_round_trips_and_may_not_share_a_name_with_chat_deployments():
    data = {"model_list": [{"model_name": "emb", "litellm_params": {"model": "openai/text-embedding-3-small"},
                            "model_info": {"id": "emb-1", "mode": "embedding"}}]}  # fmt: skip
    routing_config_import(data=data)
    exported = routing_config_export()
    (entry,) = exported["model_list"]
    assert entry["model_info"]["mode"] == "embedding"
    assert routing_config_import(data=exported).changes == []

    mixed = {"model_list": [*data["model_list"], {"model_name": "emb", "litellm_params": {"model": "openai/gpt-4o"}}]}
    with pytest.raises(ConfigError) as info:
        routing_config_import(data=mixed)
    assert info.value.errors == [
        "model emb: its entries mix chat and embedding deployments (model_list[0] (emb) is embedding, model_list[1] "
        "(emb) is chat); give each its own model_name"
    ]
    assert Model.objects.get(name="emb").mode == "embedding"


@pytest.mark.django_db
def test_a_malformed_entry_is_refused_even_when_it_would_be_skipped():
    data = {"model_list": [{"model_name": "anthropic/*", "litellm_params": "anthropic/*"}]}

    with pytest.raises(ConfigError) as info:
        routing_config_import(data=data)

    assert info.value.errors == ["model_list[0] (anthropic/*): litellm_params must be a mapping"]


@pytest.mark.django_db
def test_a_reference_to_a_skipped_entry_is_an_error_beside_the_warning_saying_why():
    data = {
        "model_list": [
            {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o"}},
            {"model_name": "img", "litellm_params": {"model": "openai/e"}, "model_info": {"mode": "image_generation"}},
        ],
        "router_settings": {"fallbacks": [{"chat": ["img"]}]},
    }

    with pytest.raises(ConfigError) as info:
        routing_config_import(data=data)

    assert info.value.errors == ["router_settings.fallbacks[0]: 'img' not in model_list"]
    assert info.value.warnings == ["model_list[1] (img): mode image_generation is not served yet; skipped"]
    assert not Model.objects.exists()


KEYED = {
    "model_list": [
        {"model_name": "m", "litellm_params": {"model": "openai/gpt-4o", "api_key": LITERAL_KEY},
         "model_info": {"id": "a"}},
        {"model_name": "m", "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/CV_UNSET_KEY"},
         "model_info": {"id": "ref"}},
        {"model_name": "m", "litellm_params": {"model": "anthropic/claude", "api_key": LITERAL_KEY},
         "model_info": {"id": "claude"}},
        {"model_name": "m", "litellm_params": {"model": "hosted_vllm/llama", "api_base": "http://127.0.0.1:8000/v1"},
         "model_info": {"id": "vllm"}},
        {"model_name": "m", "litellm_params": {"model": "openai/gpt-4o", "api_key": LITERAL_KEY, "organization": "o"},
         "model_info": {"id": "via-litellm"}},
    ]
}  # fmt: skip


def import_into_an_empty_database(exported):
    """Import an export where none of its rows (nor their secrets) exist; return the report."""
    ProviderInstance.objects.all().delete()
    Provider.objects.all().delete()
    Model.objects.all().delete()
    return routing_config_import(data=exported)


@pytest.mark.django_db
def test_importing_an_export_without_its_secrets_warns_once_per_instance_left_without_a_needed_key(monkeypatch):
    monkeypatch.delenv("CV_UNSET_KEY", raising=False)
    assert routing_config_import(data=KEYED).warnings == []
    exported = routing_config_export()

    report = import_into_an_empty_database(exported)

    # Only the pass-through to a hosted service: litellm reads its own environment (ANTHROPIC_API_KEY, …), a
    # self-hosted server may take no key, and a reference is a key even when unset here.
    assert report.warnings == [
        "instance a has no API key: the file gives none and none is stored for it or its provider openai; "
        "it is not routed to until one is set (admin, or api_key: os.environ/NAME)"
    ]
    flagged = {i.id: i.missing_key for model in snapshot.build().models.values() for i in model.instances}
    assert flagged == {"a": True, "ref": False, "claude": False, "vllm": False, "via-litellm": False}


@pytest.mark.django_db
def test_a_key_on_the_provider_is_enough():
    routing_config_import(data=KEYED)
    exported = routing_config_export()
    ProviderInstance.objects.all().delete()
    openai = Provider.objects.get(name="openai")
    openai.set_api_key(LITERAL_KEY)
    openai.save()

    assert routing_config_import(data=exported).warnings == []
    assert not any(i.missing_key for model in snapshot.build().models.values() for i in model.instances)


@pytest.mark.django_db
def test_the_admin_instance_list_shows_an_instance_missing_its_key(admin_client):
    routing_config_import(data=KEYED)
    import_into_an_empty_database(routing_config_export())

    page = admin_client.get("/admin/routing/providerinstance/").content.decode()

    assert page.count("no API key: set one on the instance or its provider") == 1
    assert ">no key<" in page


@pytest.mark.django_db(transaction=True)
def test_an_instance_missing_its_key_is_not_routed_to_and_says_why(gateway, fake, fake_b):
    model = make_model("vault-keyless", [fake, fake_b])
    keyless, keyed = model.instance_ids
    raw = make_key(is_admin=True)
    wait_for_model(gateway, raw, "vault-keyless")
    set_instance(gateway, keyless, api_key_ciphertext="", api_key_last4="")
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)

    served = {
        client.chat.completions.with_raw_response.create(model="vault-keyless", messages=MESSAGES).headers[
            "x-chatvault-instance"
        ]
        for _ in range(4)
    }

    assert served == {keyed} and fake.requests() == []
    assert wait_rows(4)[-1].decision["skipped"] == {keyless: "no API key"}
    _, _, body = gateway.request("GET", "/v1/admin/load-balancer/stats", headers={"Authorization": f"Bearer {raw}"})
    entry = next(i for m in json.loads(body)["models"] for i in m["instances"] if i["id"] == keyless)
    assert (entry["state"], entry["reason"]) == ("no key", "no API key")

    set_instance(gateway, keyed, api_key_ciphertext="", api_key_last4="")
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="vault-keyless", messages=MESSAGES)
    assert refused.value.status_code == 503 and "has an API key" in refused.value.message
