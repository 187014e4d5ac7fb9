"""Tests for experiments/services.py: start, pause, stop, promote a winner, and stopping experiments that ended."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

from experiments.models import Experiment, ExperimentStatus, Variant
from experiments.services import (
    experiment_pause,
    experiment_promote,
    experiment_start,
    experiment_stop,
    stop_ended_experiments,
)
from experiments.tasks import stop_ended_experiments as stop_ended_task
from routing.models import ConfigRevision, Model
from tests.factories import make_key, make_model, wait_for_model, wait_for_reload
from tests.helpers import MESSAGES

RUNNING, PAUSED, STOPPED, DRAFT = (ExperimentStatus.RUNNING, ExperimentStatus.PAUSED, ExperimentStatus.STOPPED,
                                   ExperimentStatus.DRAFT)  # fmt: skip


def experiment(id, models, status=DRAFT, weights=None, **fields):
    """Create an experiment with one variant per model name (models created when missing)."""
    row = Experiment.objects.create(id=id, name=fields.pop("name", id.title()), status=status, **fields)
    for position, name in enumerate(models):
        model, _ = Model.objects.get_or_create(name=name)
        weight = 1.0 if weights is None else weights[position]
        Variant.objects.create(experiment=row, model=model, position=position, weight=weight)
    return row


def messages_of(excinfo):
    """Return the messages of a ValidationError."""
    return excinfo.value.messages


@pytest.mark.django_db
def test_start_runs_a_draft_and_records_the_first_start_only():
    row = experiment("exp-1", ["a", "b"])
    before = ConfigRevision.current_token()

    experiment_start(experiment=row)

    row.refresh_from_db()
    assert row.status == RUNNING and row.started_at is not None
    assert ConfigRevision.current_token() != before
    first = row.started_at
    experiment_pause(experiment=row)
    assert Experiment.objects.get(pk="exp-1").status == PAUSED
    experiment_start(experiment=row)
    assert row.status == RUNNING and Experiment.objects.get(pk="exp-1").started_at == first


@pytest.mark.django_db
@pytest.mark.parametrize(
    "models, weights, fields, message",
    [
        (["a"], None, {}, "needs at least two variants"),
        (["a", "b"], [0, 0], {}, "every variant's weight at 0"),
        (["a", "b"], None, {"ends_at": datetime(2020, 1, 1, tzinfo=UTC)}, "ended at 2020-01-01 00:00"),
    ],
)
def test_start_refuses_an_experiment_that_cannot_run(models, weights, fields, message):
    row = experiment("exp-1", models, weights=weights, **fields)

    with pytest.raises(ValidationError) as excinfo:
        experiment_start(experiment=row)

    assert message in " ".join(messages_of(excinfo))
    assert Experiment.objects.get(pk="exp-1").status == DRAFT


@pytest.mark.django_db
def test_start_refuses_to_overlap_a_running_experiment_naming_both():
    experiment("exp-1", ["gpt-4o", "mini"], status=RUNNING, name="Model test")
    row = experiment("exp-2", ["gpt-4o", "claude"], name="Tone test")

    with pytest.raises(ValidationError) as excinfo:
        experiment_start(experiment=row)

    assert messages_of(excinfo) == [
        "Experiment 'exp-2' (Tone test) overlaps running experiment 'exp-1' (Model test): both claim requests for "
        "model 'gpt-4o' (all context types, all keys)."
    ]
    assert Experiment.objects.get(pk="exp-2").status == DRAFT


@pytest.mark.django_db
def test_a_paused_or_draft_experiment_does_not_block_a_start():
    experiment("exp-1", ["a", "b"], status=PAUSED)
    experiment("exp-3", ["a", "b"], status=DRAFT)
    row = experiment("exp-2", ["a", "c"])

    experiment_start(experiment=row)

    assert row.status == RUNNING
    with pytest.raises(ValidationError):
        experiment_start(experiment=Experiment.objects.get(pk="exp-1"))


@pytest.mark.django_db
def test_pause_refuses_what_is_not_running_and_stop_records_when():
    row = experiment("exp-1", ["a", "b"])
    with pytest.raises(ValidationError, match="only a running experiment can be paused"):
        experiment_pause(experiment=row)

    experiment_start(experiment=row)
    experiment_stop(experiment=row)

    row = Experiment.objects.get(pk="exp-1")
    assert row.status == STOPPED and row.stopped_at is not None
    stopped_at = row.stopped_at
    experiment_stop(experiment=row)
    assert Experiment.objects.get(pk="exp-1").stopped_at == stopped_at
    # Started again, it is not stopped any more.
    experiment_start(experiment=row)
    assert Experiment.objects.get(pk="exp-1").stopped_at is None


@pytest.mark.django_db
def test_promote_stops_the_experiment_and_aliases_the_other_models_to_the_winner():
    row = experiment("exp-1", ["a", "b", "c"], status=RUNNING)
    Model.objects.filter(name="a").update(served_by="b")  # a leftover alias the other way
    Model.objects.create(name="old-c", served_by="c")  # clients still naming an older alias of a loser
    user = get_user_model().objects.create_user("ana")

    message = experiment_promote(experiment=row, variant_name="a", user=user)

    assert dict(Model.objects.values_list("name", "served_by")) == {"a": "", "b": "a", "c": "a", "old-c": "a"}
    row = Experiment.objects.get(pk="exp-1")
    assert row.status == STOPPED and row.stopped_at is not None
    assert (row.promoted_variant, row.promoted_by) == ("a", "ana") and row.promoted_at is not None
    assert message == (
        "Stopped experiment 'exp-1' and promoted variant 'a': requests for 'b', 'c', 'old-c' are now served by 'a'; "
        "'a' serves its own requests again."
    )


@pytest.mark.django_db
def test_promote_without_a_user_is_recorded_as_the_api_and_refuses_an_unknown_variant():
    row = experiment("exp-1", ["a", "b"], status=PAUSED)
    with pytest.raises(ValidationError, match="has no variant 'z' \\(its variants: 'a', 'b'\\)"):
        experiment_promote(experiment=row, variant_name="z")

    experiment_promote(experiment=row, variant_name="b")

    assert Experiment.objects.get(pk="exp-1").promoted_by == "api"
    with pytest.raises(ValidationError, match="has not run"):
        experiment_promote(experiment=experiment("exp-2", ["a", "b"]), variant_name="a")


@pytest.mark.django_db
def test_stop_ended_experiments_stops_only_running_ones_past_their_end():
    now = timezone.now()
    experiment("ended", ["a", "b"], status=RUNNING, ends_at=now - timedelta(minutes=1))
    experiment("later", ["c", "d"], status=RUNNING, ends_at=now + timedelta(minutes=1))
    experiment("open", ["e", "f"], status=RUNNING)
    experiment("paused", ["g", "h"], status=PAUSED, ends_at=now - timedelta(minutes=1))

    assert stop_ended_experiments(now=now) == 1

    assert dict(Experiment.objects.values_list("id", "status")) == {
        "ended": STOPPED, "later": RUNNING, "open": RUNNING, "paused": PAUSED
    }  # fmt: skip
    assert Experiment.objects.get(pk="ended").stopped_at == now - timedelta(minutes=1)
    assert stop_ended_experiments(now=now + timedelta(minutes=2)) == 1
    assert stop_ended_task() == 0


@pytest.mark.django_db(transaction=True)
def test_after_promotion_a_request_for_the_losing_model_is_served_by_the_winner(gateway, fake, fake_b):
    make_model("exp-winner", [fake])
    make_model("exp-loser", [fake_b])
    raw = make_key()
    row = experiment("exp-promote", ["exp-winner", "exp-loser"], traffic_percentage=100.0)
    experiment_start(experiment=row)
    wait_for_model(gateway, raw, "exp-loser")
    wait_for_reload(gateway)
    headers = {"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}
    body = json.dumps({"model": "exp-loser", "messages": MESSAGES, "user": "u-1"}).encode()

    status, before, _ = gateway.request("POST", "/v1/chat/completions", body, headers)
    assert status == 200 and before["x-chatvault-experiment"] == "exp-promote"

    experiment_promote(experiment=row, variant_name="exp-winner")
    wait_for_reload(gateway)
    fake.clear_requests()
    fake_b.clear_requests()
    for user in ("u-1", "u-2", "u-3"):
        body = json.dumps({"model": "exp-loser", "messages": MESSAGES, "user": user}).encode()
        status, after, _ = gateway.request("POST", "/v1/chat/completions", body, headers)
        assert status == 200
        assert after["x-chatvault-model"] == "exp-winner"
        assert after.get("x-chatvault-experiment") is None
    assert len(fake.requests()) == 3 and fake_b.requests() == []
