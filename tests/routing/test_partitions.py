"""Tests for routing/partitions.py: the request log's day partitions on Postgres, retention by dropping whole days,
rollups that outlive the rows, and migration 0012 moving an existing log into its partitions."""

import io
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from experiments.models import RetiredUnitTotals, UnitRollup, VariantRollup
from experiments.rollups import rollup_experiments
from routing import partitions
from routing.auth import api_key_create
from routing.models import KeyRollup, RequestLog, RequestRollup, RoutingSettings
from routing.partitions import DEFAULT_PARTITION, day_start, partition_name
from routing.request_log import write_batch
from routing.rollups import rollup_request_logs
from routing.tasks import maintain_request_log

pytestmark = pytest.mark.django_db


def row(at, **fields):
    """Return a RequestLog row dict as the writer gets it, created at `at`."""
    return {
        "request_id": uuid.uuid4(),
        "created_at": at,
        "served_model": "vault-a",
        "instance_id": "inst-a",
        "outcome": "ok",
        "status_code": 200,
        "latency_ms": 100.0,
        "decision": {},
        **fields,
    }


def partition_of(request_id):
    """Return the name of the partition holding a request's row."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM routing_requestlog WHERE request_id = %s", [request_id])
        return cursor.fetchone()[0]


def days(*offsets):
    """Return the partition names of the days this many days from today."""
    today = day_start(timezone.now())
    return {partition_name(today + timedelta(days=offset)) for offset in offsets}


def retain(days_kept):
    """Set the request-log retention."""
    RoutingSettings.objects.update_or_create(pk=1, defaults={"request_log_retention_days": days_kept})


# --- partitions -----------------------------------------------------------------------------------------------------


def test_migrate_leaves_one_partition_a_day_from_the_retention_window_to_a_week_ahead():
    assert partitions.is_partitioned()
    names = set(partitions.day_partitions().values())
    assert days(*range(-30, 8)) <= names
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_class WHERE relname = %s", [DEFAULT_PARTITION])
        assert cursor.fetchone()


def test_partitions_are_created_ahead_and_behind_as_time_and_retention_move():
    retain(60)
    run = partitions.ensure_partitions(now=timezone.now() + timedelta(days=10))

    names = set(partitions.day_partitions().values())
    assert days(*range(-50, 18)) <= names  # 60 days behind the moved clock, 7 ahead
    assert days(-50, 17) <= set(run.created) and not days(0) & set(run.created)
    assert partitions.ensure_partitions(now=timezone.now() + timedelta(days=10)).created == []


def test_a_row_lands_in_its_day_and_one_no_day_covers_in_the_default_partition():
    now = timezone.now()
    rows = [row(now), row(now - timedelta(days=400)), row(datetime(2100, 1, 1, 12, tzinfo=UTC))]
    write_batch(rows)

    assert partition_of(rows[0]["request_id"]) == partition_name(day_start(now))
    assert partition_of(rows[1]["request_id"]) == DEFAULT_PARTITION
    assert partition_of(rows[2]["request_id"]) == DEFAULT_PARTITION
    # A partition made later for that day takes its rows out of the default partition.
    partitions.ensure_partitions(now=datetime(2099, 12, 31, tzinfo=UTC))
    assert partition_of(rows[2]["request_id"]) == "routing_requestlog_p21000101"
    assert RequestLog.objects.count() == 3


def test_a_retried_batch_is_written_once():
    rows = [row(timezone.now()) for _ in range(3)]
    write_batch(rows)
    write_batch(rows)  # its first commit did land: COPY meets the unique (request id, time) and skips those rows

    assert RequestLog.objects.count() == 3


# --- retention ------------------------------------------------------------------------------------------------------


def hour_rollups():
    """Return the hour RequestRollups and the KeyRollups as comparable values."""
    return (
        sorted(RequestRollup.objects.filter(granularity="hour").values_list("bucket_start", "model", "requests")),
        sorted(KeyRollup.objects.values_list("bucket_start", "api_key_id", "requests", "cost_usd")),
    )


def experiment_rollups():
    """Return the variant and unit rollups as comparable values."""
    return (
        sorted(VariantRollup.objects.values_list("bucket_start", "variant", "requests", "sums")),
        sorted(UnitRollup.objects.values_list("unit", "requests", "latency_ms_sum", "first_seen")),
    )


def test_retention_drops_whole_old_days_and_every_rollup_outlives_them():
    retain(10)
    now = timezone.now()
    key = api_key_create(name="retention")[0]
    unit = {"experiment": "exp-r", "variant": "a", "experiment_unit": "unit-1", "api_key_id": key.pk}
    old = [row(now - timedelta(days=20), latency_ms=100.0, cost_usd=1, **unit), row(now - timedelta(days=12))]
    recent = row(now - timedelta(days=3), latency_ms=300.0, **unit)
    write_batch([*old, recent])
    rollup_request_logs(since=now - timedelta(days=21))
    rollup_experiments(since=now - timedelta(days=21))
    before = hour_rollups(), experiment_rollups()

    run = maintain_request_log()

    assert days(-20, -12) <= set(run["dropped"]) and not days(-10, -3) & set(run["dropped"])
    assert not days(*range(-30, -10)) & set(partitions.day_partitions().values())
    assert list(RequestLog.objects.values_list("request_id", flat=True)) == [recent["request_id"]]
    purged = RoutingSettings.load().request_log_purged_before
    assert purged == day_start(now) - timedelta(days=10)
    # Rollups rerun from before the drop leave the hours of the dropped rows as they were.
    rollup_request_logs(since=now - timedelta(days=21))
    rollup_experiments(since=now - timedelta(days=21))
    assert (hour_rollups(), experiment_rollups()) == before
    # A unit recomputed after its old rows went still counts them.
    write_batch([row(now, latency_ms=200.0, **unit)])
    rollup_experiments(since=now - timedelta(hours=1))
    totals = UnitRollup.objects.get(unit="unit-1")
    assert (totals.requests, totals.latency_ms_sum, totals.first_seen) == (3, 600.0, old[0]["created_at"])
    assert RetiredUnitTotals.objects.get(unit="unit-1").requests == 1


def test_retention_deletes_the_default_partitions_old_rows_and_keeps_the_future_ones():
    now = timezone.now()
    ancient, future = row(now - timedelta(days=400)), row(datetime(2100, 1, 1, tzinfo=UTC))
    write_batch([ancient, future])

    run = partitions.maintain()

    assert run.deleted_rows == 1
    assert list(RequestLog.objects.values_list("request_id", flat=True)) == [future["request_id"]]


def test_a_day_kept_busy_by_a_long_query_is_dropped_by_a_later_run():
    retain(10)
    db = settings.DATABASES["default"]
    reader = psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
                             password=db["PASSWORD"] or None, dbname=connection.settings_dict["NAME"])  # fmt: skip
    try:
        reader.execute("SELECT count(*) FROM routing_requestlog")  # holds its lock until the transaction ends

        run = partitions.purge()

        assert run.dropped == [] and run.skipped == sorted(days(-30))
        reader.rollback()
        assert days(*range(-30, -10)) == set(partitions.purge().dropped)
    finally:
        reader.close()


def test_the_command_reports_what_it_did():
    retain(29)
    out = io.StringIO()
    call_command("maintain_request_log", stdout=out)
    assert out.getvalue().startswith("Created 0 partitions, dropped 1, deleted 0 rows")


# --- migration 0012 -------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_0012_moves_every_existing_row_into_its_day_with_its_id():
    before, after = ("routing", "0011_model_mode_key_rollup"), ("routing", "0012_partitioned_request_log")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    try:
        old_log = executor.loader.project_state([before]).apps.get_model("routing", "RequestLog")
        now = timezone.now()
        times = [now, now - timedelta(days=45), datetime(2100, 1, 1, tzinfo=UTC)]
        made = [
            old_log.objects.create(request_id=uuid.uuid4(), created_at=at, outcome="ok", status_code=200, decision={})
            for at in times
        ]
        executor = MigrationExecutor(connection)
        executor.migrate([after])

        assert partitions.is_partitioned()
        moved = {r.request_id: r.pk for r in RequestLog.objects.all()}
        assert moved == {r.request_id: r.pk for r in made}
        assert [partition_of(r.request_id) for r in made] == [
            partition_name(day_start(now)),
            partition_name(day_start(now - timedelta(days=45))),  # the oldest row's day, before the retention
            DEFAULT_PARTITION,
        ]
        newer = RequestLog.objects.create(request_id=uuid.uuid4(), created_at=now, outcome="ok", status_code=200)
        assert newer.pk > max(r.pk for r in made)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        partitions.purge()  # the days before the retention that the old rows brought
