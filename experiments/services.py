"""Experiment lifecycle: start, pause, stop and promote a winner; the writes the admin, the API and beat call.

Each service runs in a transaction and saves through the ORM, so the routing configuration revision is bumped
(`experiments.signals`) and every worker's snapshot follows within a poll interval.
"""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from experiments.models import Experiment, ExperimentStatus
from experiments.overlap import overlap_errors, scope_of
from routing.models import Model


def status_fields(experiment, status, *, now):
    """Return the fields that moving experiment to status sets (the status and the start / stop times)."""
    fields = {"status": status}
    if status == ExperimentStatus.RUNNING:
        if experiment.started_at is None:
            fields["started_at"] = now
        if experiment.stopped_at is not None:  # restarted: it is not stopped any more
            fields["stopped_at"] = None
    elif status == ExperimentStatus.STOPPED and experiment.status != ExperimentStatus.STOPPED:
        fields["stopped_at"] = now
    return fields


def start_problems(experiment, *, variants, now):
    """Return why experiment (with these variants) may not run; empty when it may."""
    problems = []
    if len(variants) < 2:
        problems.append(f"Experiment '{experiment.id}' needs at least two variants to run.")
    elif not any(v.weight > 0 for v in variants):
        problems.append(f"Experiment '{experiment.id}' has every variant's weight at 0; give one a weight.")
    if experiment.ends_at is not None and experiment.ends_at <= now:
        ended = f"{experiment.ends_at:%Y-%m-%d %H:%M}"
        problems.append(f"Experiment '{experiment.id}' ended at {ended}; move its end time to start it.")
    return problems


def _set_status(experiment, status, now):
    """Save the experiment's move to status (only the fields that change)."""
    fields = status_fields(experiment, status, now=now)
    for field, value in fields.items():
        setattr(experiment, field, value)
    experiment.save(update_fields=[*fields, "updated_at"])


def _locked(experiment):
    """Return the experiment's row, locked for the rest of the transaction, and its variants with their models."""
    row = Experiment.objects.select_for_update().get(pk=experiment.pk)
    return row, list(row.variants.select_related("model"))


def experiment_start(*, experiment: Experiment, user=None) -> Experiment:
    """Start (or resume) an experiment; raise ValidationError when it may not run or overlaps a running one."""
    with transaction.atomic():
        row, variants = _locked(experiment)
        if row.status == ExperimentStatus.RUNNING:
            _copy(row, experiment)
            return experiment
        # Two overlapping experiments share a model: locking the models makes a concurrent start of the other one
        # wait for this transaction, then see this experiment running.
        list(Model.objects.select_for_update().filter(pk__in={v.model_id for v in variants}).order_by("pk"))
        now = timezone.now()
        problems = start_problems(row, variants=variants, now=now)
        problems += overlap_errors(scope_of(row, models=[v.model.name for v in variants]))
        if problems:
            raise ValidationError(problems)
        _set_status(row, ExperimentStatus.RUNNING, now)
    _copy(row, experiment)
    return experiment


def experiment_pause(*, experiment: Experiment, user=None) -> Experiment:
    """Pause a running experiment: it takes no traffic until started again."""
    with transaction.atomic():
        row, _ = _locked(experiment)
        if row.status not in (ExperimentStatus.RUNNING, ExperimentStatus.PAUSED):
            raise ValidationError(f"Experiment '{row.id}' is {row.status}; only a running experiment can be paused.")
        if row.status == ExperimentStatus.RUNNING:
            _set_status(row, ExperimentStatus.PAUSED, timezone.now())
    _copy(row, experiment)
    return experiment


def experiment_stop(*, experiment: Experiment, user=None) -> Experiment:
    """Stop an experiment and record when: it takes no traffic, and its results stand unless it is started again."""
    with transaction.atomic():
        row, _ = _locked(experiment)
        if row.status != ExperimentStatus.STOPPED:
            _set_status(row, ExperimentStatus.STOPPED, timezone.now())
    _copy(row, experiment)
    return experiment


def experiment_promote(*, experiment: Experiment, variant_name: str, user=None) -> str:
    """Stop the experiment and serve its other variants' models with the winner's model; return what changed.

    The winner serves through an alias (`Model.served_by`), so clients keep the model names they send. A model that
    already aliased to a losing model is pointed at the winner as well (selection follows one alias only), and the
    winner's own alias, if any, is cleared so that it serves its own requests.
    """
    with transaction.atomic():
        row, variants = _locked(experiment)
        if row.status == ExperimentStatus.DRAFT:
            raise ValidationError(f"Experiment '{row.id}' has not run; there is no winner to promote.")
        winner = next((v for v in variants if v.label == variant_name), None)
        if winner is None:
            names = ", ".join(repr(v.label) for v in variants)
            raise ValidationError(f"Experiment '{row.id}' has no variant '{variant_name}' (its variants: {names}).")
        target = winner.model.name
        losers = sorted({v.model.name for v in variants} - {target})
        now = timezone.now()
        if row.status != ExperimentStatus.STOPPED:
            _set_status(row, ExperimentStatus.STOPPED, now)
        row.promoted_variant = winner.label
        row.promoted_by = getattr(user, "username", "") or "api"
        row.promoted_at = now
        row.save(update_fields=["promoted_variant", "promoted_by", "promoted_at", "updated_at"])

        changed = []
        aliased = Model.objects.select_for_update().filter(Q(name__in=losers) | Q(served_by__in=losers))
        for model in aliased.exclude(name=target).order_by("name"):
            if model.served_by != target:
                model.served_by = target
                model.save(update_fields=["served_by", "updated_at"])
                changed.append(model.name)
        winner_model = Model.objects.select_for_update().get(pk=winner.model_id)
        cleared = bool(winner_model.served_by)
        if cleared:
            winner_model.served_by = ""
            winner_model.save(update_fields=["served_by", "updated_at"])
    _copy(row, experiment)
    message = f"Stopped experiment '{row.id}' and promoted variant '{winner.label}'"
    if changed:
        message += f": requests for {', '.join(map(repr, changed))} are now served by '{target}'"
    else:
        message += f"; every request of its models was already served by '{target}'"
    if cleared:
        message += f"; '{target}' serves its own requests again"
    return message + "."


def stop_ended_experiments(*, now=None) -> int:
    """Stop the running experiments whose end time has passed; return how many were stopped."""
    now = now or timezone.now()
    stopped = 0
    for experiment in Experiment.objects.filter(status=ExperimentStatus.RUNNING, ends_at__lte=now):
        with transaction.atomic():
            row, _ = _locked(experiment)
            # Re-read under the lock: an admin may have moved its end time or stopped it meanwhile.
            if row.status == ExperimentStatus.RUNNING and row.ends_at is not None and row.ends_at <= now:
                _set_status(row, ExperimentStatus.STOPPED, row.ends_at)
                stopped += 1
    return stopped


def _copy(row, experiment):
    """Copy the saved row's lifecycle fields onto the caller's instance, so it reads what was saved."""
    if row is experiment:
        return
    for field in ("status", "started_at", "stopped_at", "promoted_variant", "promoted_by", "promoted_at", "updated_at"):
        setattr(experiment, field, getattr(row, field))
