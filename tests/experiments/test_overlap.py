"""Tests for experiments/overlap.py: which scopes could claim the same request, and the messages naming both."""

from datetime import UTC, datetime, timedelta

import pytest

from experiments.models import Experiment, ExperimentStatus, Variant
from experiments.overlap import Scope, overlap_errors, overlaps, running_scopes, scope_of
from routing.auth import api_key_create
from routing.models import Model

T0 = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def scope(id="exp-1", name="Model test", models=("gpt-4o",), context_types=(), key_pks=(), starts_at=None,
          ends_at=None):  # fmt: skip
    """Return a Scope with everything open but the models."""
    return Scope(
        id=id,
        name=name,
        models=frozenset(models),
        context_types=frozenset(context_types),
        key_pks=frozenset(key_pks),
        starts_at=starts_at,
        ends_at=ends_at,
    )


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ({}, {}, True),
        ({"models": ("a", "b")}, {"models": ("b", "c")}, True),
        ({"models": ("a",)}, {"models": ("b",)}, False),
        # Context types: empty means all.
        ({"context_types": ("code_generation",)}, {}, True),
        ({"context_types": ("code_generation", "math")}, {"context_types": ("math",)}, True),
        ({"context_types": ("code_generation",)}, {"context_types": ("math",)}, False),
        # Keys: empty means all.
        ({"key_pks": (1,)}, {}, True),
        ({"key_pks": (1, 2)}, {"key_pks": (2, 3)}, True),
        ({"key_pks": (1,)}, {"key_pks": (2,)}, False),
        # Everything but one dimension shared is still no overlap.
        ({"context_types": ("math",), "key_pks": (1,)}, {"context_types": ("math",), "key_pks": (2,)}, False),
        # Time windows: None is open-ended; an end is exclusive.
        ({"starts_at": T0}, {"ends_at": T0 + DAY}, True),
        ({"ends_at": T0}, {"starts_at": T0}, False),
        ({"starts_at": T0, "ends_at": T0 + DAY}, {"starts_at": T0 + DAY / 2}, True),
        ({"starts_at": T0, "ends_at": T0 + DAY}, {"starts_at": T0 + 2 * DAY, "ends_at": T0 + 3 * DAY}, False),
        ({"starts_at": T0 + 2 * DAY}, {"starts_at": T0, "ends_at": T0 + DAY}, False),
        ({}, {"starts_at": T0, "ends_at": T0 + DAY}, True),
    ],
)
def test_overlaps_needs_a_shared_model_context_type_key_and_time(a, b, expected):
    first, second = scope(**a), scope(id="exp-2", **b)
    assert overlaps(first, second) is expected
    assert overlaps(second, first) is expected


def test_the_message_names_both_experiments_and_what_they_share():
    mine = scope(id="exp-2", name="Tone test", models=("gpt-4o", "mini"))
    other = scope(id="exp-1", name="Model test", models=("gpt-4o", "claude"))

    assert overlap_errors(mine, others=[other]) == [
        "Experiment 'exp-2' (Tone test) overlaps running experiment 'exp-1' (Model test): both claim requests for "
        "model 'gpt-4o' (all context types, all keys)."
    ]


def test_the_message_names_the_shared_context_types_and_times():
    mine = scope(id="exp-2", context_types=("math", "code_generation"), starts_at=T0)
    other = scope(id="exp-1", context_types=("math",), ends_at=T0 + DAY)

    (message,) = overlap_errors(mine, others=[other])

    assert "model 'gpt-4o' (context type 'math', all keys, from 2030-01-01 00:00 UTC until 2030-01-02 00:00 UTC)" in (
        message
    )


def test_no_message_when_nothing_overlaps_or_for_the_scope_itself():
    mine = scope(id="exp-1")
    assert overlap_errors(mine, others=[scope(id="exp-1"), scope(id="exp-2", models=("other",))]) == []


# --- against the database -----------------------------------------------------------------------------------------


def experiment(id, models, status=ExperimentStatus.RUNNING, **fields):
    """Create an experiment with one variant per model name (models created when missing)."""
    row = Experiment.objects.create(id=id, name=fields.pop("name", id.title()), status=status, **fields)
    for position, name in enumerate(models):
        model, _ = Model.objects.get_or_create(name=name)
        Variant.objects.create(experiment=row, model=model, position=position)
    return row


@pytest.mark.django_db
def test_scope_of_reads_the_saved_variants_and_keys_unless_given():
    key = api_key_create(name="mobile")[0]
    row = experiment("exp-1", ["a", "b"], target_context_types=["math"], starts_at=T0)
    row.target_keys.set([key])

    assert scope_of(row) == scope(
        id="exp-1", name="Exp-1", models=("a", "b"), context_types=("math",), key_pks=(key.pk,), starts_at=T0
    )
    assert scope_of(row, models=[Model.objects.get(name="a")], key_pks=[]).models == frozenset({"a"})
    assert scope_of(row, models=["c"], key_pks=[]).key_pks == frozenset()
    unsaved = Experiment(id="exp-9", name="New")
    assert scope_of(unsaved).models == frozenset() and scope_of(unsaved, models=["a"]).models == {"a"}


@pytest.mark.django_db
def test_by_default_only_running_experiments_that_have_not_ended_count():
    experiment("exp-run", ["a", "b"])
    experiment("exp-draft", ["a", "b"], status=ExperimentStatus.DRAFT)
    experiment("exp-paused", ["a", "b"], status=ExperimentStatus.PAUSED)
    experiment("exp-stopped", ["a", "b"], status=ExperimentStatus.STOPPED)
    experiment("exp-ended", ["a", "b"], ends_at=datetime(2020, 1, 1, tzinfo=UTC))

    assert [s.id for s in running_scopes()] == ["exp-run"]
    new = scope(id="exp-new", name="New", models=("b",))
    (message,) = overlap_errors(new)
    assert message.startswith("Experiment 'exp-new' (New) overlaps running experiment 'exp-run' (Exp-Run)")


@pytest.mark.django_db
def test_the_message_names_the_shared_keys_by_name():
    key = api_key_create(name="mobile")[0]
    row = experiment("exp-1", ["a", "b"])
    row.target_keys.set([key])

    (message,) = overlap_errors(scope(id="exp-2", models=("a",), key_pks=(key.pk, key.pk + 1)))

    assert f"(all context types, key '{key}')" in message
