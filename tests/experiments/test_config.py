"""Tests for experiments/config.py: `model_routing.experiments` through the routing config import and export."""

import copy
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from django.utils import timezone

from experiments.models import Experiment, ExperimentStatus, Variant
from routing.auth import api_key_create
from routing.config_io import ConfigError, routing_config_export, routing_config_import
from routing.models import ConfigRevision, Model

CONFIG = """\
model_list:
  - model_name: vault-mini
    litellm_params: {model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:9001/v1", api_key: os.environ/OPENAI_KEY}
    model_info: {id: exp-mini}
  - model_name: vault-4o
    litellm_params: {model: openai/gpt-4o, api_base: "http://127.0.0.1:9001/v1", api_key: os.environ/OPENAI_KEY}
    model_info: {id: exp-4o}
  - model_name: vault-claude
    litellm_params: {model: anthropic/claude-3-5-haiku-20241022}
    model_info: {id: exp-claude}
model_routing:
  experiments:
    - id: exp-compact
      name: Mini vs 4o
      models: [vault-mini, vault-4o]
      traffic_percentage: 10.0
    - id: exp-rich
      name: Tone test
      status: paused
      variants:
        - model: vault-claude
          name: claude-terse
          weight: 2
          overrides: {temperature: 0.2, system_prompt_prefix: Be brief.}
        - {model: vault-claude, name: claude-plain}
        - {model: vault-4o}
      control: claude-plain
      traffic_percentage: 25.5
      targets: {context_types: [code_generation, math], keys: [mobile-app]}
      primary_metric: feedback
      guardrail_metrics: [latency_ms, cost_usd]
      metric_directions: {toxicity: lower}
      minimum_detectable_effect: 0.05
      hypothesis: A terse system prompt gets better feedback on code.
      starts_at: "2030-01-01T00:00:00Z"
      ends_at: "2030-02-01T12:30:00Z"
      salt: tone-v2
    - id: exp-weights
      name: Weighted
      status: draft
      models: [vault-claude, vault-mini]
      weights: [1, 3]
      control: vault-mini
      traffic_percentage: 50.0
"""


@pytest.fixture
def data(db):
    """Return the config as a fresh mapping, with the API key it targets."""
    api_key_create(name="mobile-app")
    return yaml.safe_load(CONFIG)


def entries(data):
    """Return the experiments list of a config mapping."""
    return data["model_routing"]["experiments"]


def variants(experiment_id):
    """Return (name, model, weight, is_control, overrides) of an experiment's variants in order."""
    return [
        (v.name, v.model.name, v.weight, v.is_control, v.overrides)
        for v in Variant.objects.filter(experiment_id=experiment_id).select_related("model")
    ]


def test_it_imports_experiments_with_their_variants_and_targets(data):
    report = routing_config_import(data=data)

    compact = Experiment.objects.get(pk="exp-compact")
    assert (compact.name, compact.status, compact.traffic_percentage) == ("Mini vs 4o", "running", 10.0)
    assert compact.started_at is not None  # listed without a status: running, as in the seed
    assert variants("exp-compact") == [
        ("vault-mini", "vault-mini", 1.0, True, {}),
        ("vault-4o", "vault-4o", 1.0, False, {}),
    ]
    rich = Experiment.objects.get(pk="exp-rich")
    assert (rich.status, rich.started_at, rich.traffic_percentage, rich.salt) == ("paused", None, 25.5, "tone-v2")
    assert rich.target_context_types == ["code_generation", "math"]
    assert [k.name for k in rich.target_keys.all()] == ["mobile-app"]
    assert (rich.primary_metric, rich.guardrail_metrics, rich.metric_directions) == (
        "feedback", ["latency_ms", "cost_usd"], {"toxicity": "lower"}
    )  # fmt: skip
    assert (rich.minimum_detectable_effect, rich.hypothesis) == (
        0.05,
        "A terse system prompt gets better feedback on code.",
    )
    assert (rich.starts_at, rich.ends_at) == (
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2030, 2, 1, 12, 30, tzinfo=UTC),
    )
    assert variants("exp-rich") == [
        ("claude-terse", "vault-claude", 2.0, False, {"temperature": 0.2, "system_prompt_prefix": "Be brief."}),
        ("claude-plain", "vault-claude", 1.0, True, {}),
        ("vault-4o", "vault-4o", 1.0, False, {}),
    ]
    assert variants("exp-weights") == [
        ("vault-claude", "vault-claude", 1.0, False, {}), ("vault-mini", "vault-mini", 3.0, True, {})
    ]  # fmt: skip
    assert "create experiment exp-rich" in report.changes and "create variant exp-rich/claude-terse" in report.changes
    assert report.warnings == []


def test_export_writes_what_was_imported(data):
    routing_config_import(data=data)

    assert routing_config_export()["model_routing"]["experiments"] == entries(data)


def test_importing_the_same_file_or_its_export_again_changes_nothing(data):
    routing_config_import(data=data)
    revision = ConfigRevision.current_token()
    rows = list(Experiment.objects.values()) + list(Variant.objects.values())

    again = routing_config_import(data=yaml.safe_load(CONFIG))
    exported = routing_config_import(data=yaml.safe_load(yaml.safe_dump(routing_config_export(), sort_keys=False)))

    for report in (again, exported):
        assert not report.changed, report.changes
    assert ConfigRevision.current_token() == revision
    assert list(Experiment.objects.values()) + list(Variant.objects.values()) == rows


def test_a_changed_entry_updates_its_rows_and_keeps_variant_rows_by_name_then_model(data):
    routing_config_import(data=data)
    before = {v.name: v.pk for v in Variant.objects.filter(experiment_id="exp-rich")}
    rich = entries(data)[1]
    rich["variants"] = [
        {"model": "vault-claude", "name": "claude-plain", "weight": 3},  # kept by name
        {"model": "vault-4o", "name": "gpt-4o"},  # renamed: kept by model
    ]
    del rich["control"]  # claude-plain, now the first: the control by default
    rich["status"] = "draft"
    rich["targets"] = {"context_types": ["math"]}
    revision = ConfigRevision.current_token()

    report = routing_config_import(data=data)

    after = {v.name: v.pk for v in Variant.objects.filter(experiment_id="exp-rich")}
    assert after == {"claude-plain": before["claude-plain"], "gpt-4o": before["vault-4o"]}
    assert variants("exp-rich") == [
        ("claude-plain", "vault-claude", 3.0, True, {}), ("gpt-4o", "vault-4o", 1.0, False, {})
    ]  # fmt: skip
    row = Experiment.objects.get(pk="exp-rich")
    assert (row.status, row.target_context_types, list(row.target_keys.all())) == ("draft", ["math"], [])
    assert sorted(report.changes) == [
        "delete variant exp-rich/claude-terse",
        "update experiment exp-rich: target_context_types, status, target_keys",
        "update variant exp-rich/claude-plain: weight, position",
        "update variant exp-rich/vault-4o: name, position",
    ]
    assert ConfigRevision.current_token() != revision
    assert routing_config_export()["model_routing"]["experiments"] == entries(data)


def test_a_running_experiment_left_out_of_the_file_is_stopped_never_deleted(data):
    routing_config_import(data=data)
    del entries(data)[:]

    report = routing_config_import(data=data)

    assert dict(Experiment.objects.values_list("id", "status")) == {
        "exp-compact": "stopped", "exp-rich": "paused", "exp-weights": "draft"
    }  # fmt: skip
    assert Experiment.objects.get(pk="exp-compact").stopped_at is not None
    assert report.changes == ["stop experiment exp-compact"] and report.disabled == 1
    assert [e["id"] for e in routing_config_export()["model_routing"]["experiments"]] == ["exp-rich", "exp-weights"]


def test_a_running_experiment_in_the_database_the_file_leaves_out_does_not_block_the_files(data):
    # The import stops it, so the file's running experiments are the only ones running afterwards.
    old = Experiment.objects.create(id="exp-old", name="Old", status=ExperimentStatus.RUNNING)
    for name in ("vault-mini", "vault-other"):
        Variant.objects.create(experiment=old, model=Model.objects.create(name=name))

    routing_config_import(data=data)

    assert dict(Experiment.objects.filter(status="running").values_list("id", "name")) == {"exp-compact": "Mini vs 4o"}


def test_a_running_experiment_whose_end_has_passed_is_stored_as_stopped(data):
    entries(data)[0]["ends_at"] = (timezone.now() - timedelta(hours=1)).isoformat()

    report = routing_config_import(data=data)

    row = Experiment.objects.get(pk="exp-compact")
    assert row.status == ExperimentStatus.STOPPED
    assert report.warnings == [
        "model_routing.experiments[0] (exp-compact): ends_at has passed, so it is stored as stopped"
    ]
    assert not routing_config_import(data=data).changed


def test_running_experiments_that_overlap_are_refused_naming_both_and_nothing_changes(data):
    entries(data)[2]["status"] = "running"  # shares vault-mini with exp-compact, for every context type and key

    with pytest.raises(ConfigError) as excinfo:
        routing_config_import(data=data)

    assert excinfo.value.errors == [
        "model_routing.experiments: Experiment 'exp-weights' (Weighted) overlaps running experiment 'exp-compact' "
        "(Mini vs 4o): both claim requests for model 'vault-mini' (all context types, all keys)."
    ]
    assert not Experiment.objects.exists()


def test_running_experiments_that_cannot_claim_the_same_request_may_both_run(data):
    entries(data)[1]["status"] = "running"  # shares vault-4o with exp-compact, but only from 2030 on
    entries(data)[0]["ends_at"] = "2029-12-31T00:00:00Z"

    routing_config_import(data=data)

    assert Experiment.objects.filter(status="running").count() == 2


def test_a_key_is_named_by_its_prefix_when_its_name_is_shared(data):
    api_key_create(name="mobile-app")
    with pytest.raises(ConfigError, match="2 API keys are named 'mobile-app'; name it by its prefix"):
        routing_config_import(data=data)
    key = api_key_create(name="mobile-app")[0]
    entries(data)[1]["targets"]["keys"] = [key.prefix]

    routing_config_import(data=data)

    assert list(Experiment.objects.get(pk="exp-rich").target_keys.all()) == [key]
    assert routing_config_export()["model_routing"]["experiments"][1]["targets"]["keys"] == [key.prefix]


def test_a_variant_may_name_a_stored_model_the_file_leaves_out_with_a_warning(data):
    routing_config_import(data=data)
    del data["model_list"][2]  # vault-claude: disabled by this import, still a model

    report = routing_config_import(data=data)

    assert (
        "model_routing.experiments[1] (exp-rich): model 'vault-claude' is not in model_list, so it is disabled and "
        "its variant's requests fall back"
    ) in report.warnings


def spoil(path, value):
    """Return a function setting (or, for value None, removing) a key of the config's experiments."""

    def apply(data):
        target = entries(data)
        for part in path[:-1]:
            target = target[part]
        if value is None:
            target.pop(path[-1])
        else:
            target[path[-1]] = value

    return apply


R = "model_routing.experiments[1] (exp-rich)"
C = "model_routing.experiments[0] (exp-compact)"
BAD = [
    (spoil([0, "id"], "has space"), "model_routing.experiments[0]: id 'has space' is not valid"),
    (spoil([0, "id"], None), "model_routing.experiments[0]: id is required"),
    (spoil([2, "id"], "exp-compact"), "model_routing.experiments[2] (exp-compact): id is already used by "
                                      "model_routing.experiments[0]"),
    (spoil([0, "models"], None), f"{C}: models is required"),
    (spoil([0, "models"], ["vault-mini", "vault-ghost"]), f"{C}: models[1]: model 'vault-ghost' is not in model_list"),
    (spoil([0, "models"], ["vault-mini"]), f"{C}: a running experiment needs at least two models"),
    (spoil([0, "models"], ["vault-mini", "vault-mini"]), f"{C}: models lists a model twice"),
    (spoil([0, "weights"], [1]), f"{C}: weights must be a list of one number per model (2)"),
    (spoil([0, "weights"], [0, 0]), f"{C}: weights must not all be 0"),
    (spoil([0, "weights"], [1, -1]), f"{C}: weights[1] must be at least 0, not -1"),
    (spoil([0, "weights"], [1, "x"]), f"{C}: weights[1] must be a number, not 'x'"),
    (spoil([0, "control"], "vault-claude"), f"{C}: control 'vault-claude' is not one of the models"),
    (spoil([0, "traffic_percentage"], 100.5), f"{C}: traffic_percentage must be at most 100, not 100.5"),
    (spoil([0, "traffic_percentage"], -1), f"{C}: traffic_percentage must be at least 0, not -1"),
    (spoil([0, "traffic_percentage"], True), f"{C}: traffic_percentage must be a number, not True"),
    (spoil([0, "status"], "live"), f"{C}: status must be one of draft, running, paused, stopped, not 'live'"),
    (spoil([0, "starts_at"], "next week"), f"{C}: starts_at must be an ISO 8601 date and time"),
    (spoil([1, "ends_at"], "2029-01-01T00:00:00Z"), f"{R}: ends_at must be after starts_at"),
    (spoil([1, "models"], ["vault-mini"]), f"{R}: give either models (and weights) or variants, not both"),
    (spoil([1, "variants", 0, "overrides"], {"seed": 1}), f"{R}: variants[0].overrides: unknown override 'seed'"),
    (spoil([1, "variants", 1, "name"], "claude-terse"), f"{R}: variant name 'claude-terse' used twice"),
    (spoil([1, "variants", 1, "weight"], -2), f"{R}: variants[1].weight must be at least 0, not -2"),
    (spoil([1, "control"], "claude-loud"), f"{R}: control 'claude-loud' is not one of the variants"),
    (spoil([1, "targets", "keys"], ["desktop"]), f"{R}: targets.keys: no API key has the name or prefix 'desktop'"),
    (spoil([1, "targets", "context_types"], ["poetry"]), f"{R}: targets.context_types: unknown 'poetry'"),
    (spoil([1, "primary_metric"], "Bad Metric"), f"{R}: primary_metric 'Bad Metric' is not a metric name"),
    (spoil([1, "metric_directions"], {"toxicity": "down"}), f'{R}: metric_directions.toxicity must be "higher" or'),
    (spoil([1, "minimum_detectable_effect"], 0), f"{R}: minimum_detectable_effect must be above 0, not 0"),
    (spoil([1, "name"], "x" * 201), f"{R}: name is longer than 200 characters"),
    (spoil([1, "hypothesis"], "a\x00b"), f"{R}: hypothesis contains a character that cannot be stored"),
    (spoil([1], "exp-2"), "model_routing.experiments[1]: must be a mapping"),
]  # fmt: skip


@pytest.mark.parametrize("change, message", BAD)
def test_a_bad_experiment_is_refused_naming_it_and_the_field_and_nothing_changes(data, change, message):
    routing_config_import(data=copy.deepcopy(data))
    before = list(Experiment.objects.values()) + list(Variant.objects.values())
    revision = ConfigRevision.current_token()
    change(data)

    with pytest.raises(ConfigError) as excinfo:
        routing_config_import(data=data)

    assert any(error.startswith(message) for error in excinfo.value.errors), excinfo.value.errors
    assert list(Experiment.objects.values()) + list(Variant.objects.values()) == before
    assert ConfigRevision.current_token() == revision


def test_experiments_must_be_a_list(data):
    data["model_routing"]["experiments"] = {"id": "exp-1"}

    with pytest.raises(ConfigError, match="model_routing.experiments must be a list of experiments"):
        routing_config_import(data=data)


def test_unused_keys_are_warned_about_and_ignored(data):
    entries(data)[0]["owner"] = "ana"
    entries(data)[1]["targets"]["users"] = ["u-1"]

    report = routing_config_import(data=data)

    assert f"{C}: owner is not used; ignored" in report.warnings
    assert f"{R}: targets.users not used; ignored" in report.warnings


def test_times_without_an_offset_are_utc_and_yaml_timestamps_are_read(data):
    entries(data)[1]["starts_at"] = "2030-01-01T06:00:00"
    entries(data)[1]["ends_at"] = datetime(2030, 3, 1, 0, 0, tzinfo=UTC)  # what YAML makes of an unquoted timestamp

    routing_config_import(data=data)

    row = Experiment.objects.get(pk="exp-rich")
    assert (row.starts_at, row.ends_at) == (datetime(2030, 1, 1, 6, tzinfo=UTC), datetime(2030, 3, 1, tzinfo=UTC))
    exported = routing_config_export()["model_routing"]["experiments"][1]
    assert (exported["starts_at"], exported["ends_at"]) == ("2030-01-01T06:00:00Z", "2030-03-01T00:00:00Z")


def test_a_dry_run_saves_no_experiment(data):
    report = routing_config_import(data=data, dry_run=True)

    assert "create experiment exp-compact" in report.changes
    assert not Experiment.objects.exists() and not Variant.objects.exists()


@pytest.mark.django_db
def test_a_file_without_experiments_leaves_running_experiments_alone():
    from tests.factories import make_experiment

    data = {"model_list": [
        {"model_name": "keep-a", "litellm_params": {"model": "openai/a", "api_base": "http://127.0.0.1:9/v1"}},
        {"model_name": "keep-b", "litellm_params": {"model": "openai/b", "api_base": "http://127.0.0.1:9/v1"}},
    ]}  # fmt: skip
    routing_config_import(data=data)
    make_experiment("exp-keep", [Model.objects.get(name="keep-a"), Model.objects.get(name="keep-b")])
    routing_config_import(data=data)
    assert Experiment.objects.get(id="exp-keep").status == "running"
    routing_config_import(data={**data, "model_routing": {"experiments": []}})
    assert Experiment.objects.get(id="exp-keep").status == "stopped"
