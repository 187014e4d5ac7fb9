"""The request log's day partitions (Postgres) and its retention.

On Postgres `routing_requestlog` is partitioned by range of created_at: one partition per UTC day, named
`routing_requestlog_pYYYYMMDD`, and a default partition that takes every timestamp no day covers (a client clock far
off, a row from before the window), so no row is ever refused for its timestamp. `maintain()` (the hourly beat task
`routing.tasks.maintain_request_log`; `manage.py maintain_request_log` by hand) creates the day partitions of the
whole retention window and AHEAD_DAYS ahead, then drops the days whose every row is older than the retention
(`RoutingSettings.request_log_retention_days`): a DROP TABLE, not millions of DELETEs. Rows that old in the default
partition are deleted. After every `migrate` the partitions are created too (`routing.apps`), never dropped. On SQLite
(`make run`) the table is one table and retention deletes the old rows.

Before rows go, `experiments.rollups.retire_units` adds their experiment units' totals to RetiredUnitTotals, and
`RoutingSettings.request_log_purged_before` moves past them; the rollups are never recomputed from before it
(`kept_since`), so they outlive the rows they were made from.

A new day partition is built beside the table and then attached, taking along any rows of its day the default
partition caught: ATTACH PARTITION locks the table less than CREATE TABLE ... PARTITION OF does. Each partition's
DDL waits at most LOCK_TIMEOUT for its locks; one that times out is left for the next run.
"""

import dataclasses
import logging
import re
from datetime import UTC, datetime, timedelta

from django.db import OperationalError, connection, transaction
from django.utils import timezone

from routing.models import RequestLog, RoutingSettings

logger = logging.getLogger(__name__)

TABLE = RequestLog._meta.db_table
DEFAULT_PARTITION = f"{TABLE}_default"
AHEAD_DAYS = 7
LOCK_TIMEOUT = "2s"
_DAY_PARTITION = re.compile(rf"^{TABLE}_p(\d{{8}})$")
# The rollups' advisory locks (routing.rollups, experiments.rollups): a purge waits for a rollup run's chunk to end,
# so no run reads rows that are being dropped.
_ROLLUP_LOCKS = (0x6376_726F_6C6C, 0x6376_6578_7072)


@dataclasses.dataclass
class MaintenanceRun:
    """What one run did: the day partitions created and dropped, the rows deleted, the partitions left for later."""

    created: list = dataclasses.field(default_factory=list)
    dropped: list = dataclasses.field(default_factory=list)
    deleted_rows: int = 0
    skipped: list = dataclasses.field(default_factory=list)


def day_start(moment):
    """Return the start of the UTC day of an aware datetime."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def partition_name(day):
    """Return the name of the partition of the UTC day starting at day."""
    return f"{TABLE}_p{day:%Y%m%d}"


def retention_days():
    """Return how many days request-log rows are kept (the settings row's value, else the field's default)."""
    days = RoutingSettings.objects.filter(pk=1).values_list("request_log_retention_days", flat=True).first()
    return days or RoutingSettings._meta.get_field("request_log_retention_days").default


def kept_since():
    """Return the time before which retention dropped the rows (rollups are never recomputed before it), or None."""
    return RoutingSettings.objects.filter(pk=1).values_list("request_log_purged_before", flat=True).first()


def retention_cutoff(now, days):
    """Return the start of the oldest UTC day whose rows are kept, at now, with days of retention."""
    return day_start(now) - timedelta(days=days)


def is_partitioned():
    """Return whether the request log is a partitioned table (Postgres after migration 0012)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def day_partitions():
    """Return {day start: partition name} of the day partitions attached to the request log."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s)",
            [TABLE],
        )
        names = [name for (name,) in cursor.fetchall()]
    days = {}
    for name in names:
        match = _DAY_PARTITION.match(name)
        if match:
            days[datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC)] = name
    return days


def estimated_rows():
    """Return the planner's estimate of the request log's rows (Postgres, partitioned), else None: never a scan."""
    if not is_partitioned():
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(GREATEST(c.reltuples, 0)), 0) FROM pg_inherits i JOIN pg_class c "
            "ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [TABLE],
        )
        return int(cursor.fetchone()[0])


# --- maintenance --------------------------------------------------------------------------------------------------


def maintain(*, now=None):
    """Create the day partitions of the retention window and ahead, then drop (or delete) the expired rows."""
    now = now or timezone.now()
    run = MaintenanceRun()
    ensure_partitions(now=now, run=run)
    purge(now=now, run=run)
    return run


def ensure_partitions(*, now=None, run=None):
    """Create every missing day partition from the retention cutoff (never before the purged time) to AHEAD_DAYS
    ahead; return the run. Nothing to do where the table is not partitioned."""
    now = now or timezone.now()
    run = run or MaintenanceRun()
    if not is_partitioned():
        return run
    first = retention_cutoff(now, retention_days())
    purged = kept_since()
    if purged is not None:
        first = max(first, day_start(purged))
    existing = day_partitions()
    day = first
    while day <= day_start(now) + timedelta(days=AHEAD_DAYS):
        if day not in existing:
            name = partition_name(day)
            try:
                _attach_day(day, name)
            except OperationalError as exc:
                logger.warning("request log partition %s not created this time: %s", name, exc)
                run.skipped.append(name)
            else:
                run.created.append(name)
        day += timedelta(days=1)
    return run


def _attach_day(day, name):
    """Build the partition of one day beside the table, move in the default partition's rows of that day, attach."""
    following = day + timedelta(days=1)
    bounds = [day, following]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        # Lets ATTACH skip scanning the new table for rows outside its day.
        cursor.execute(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds CHECK (created_at >= %s AND created_at < %s)", bounds
        )
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE created_at >= %s AND created_at < %s RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved",
            bounds,
        )
        if cursor.rowcount:
            logger.info("moved %d request log rows from the default partition to %s", cursor.rowcount, name)
        cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", bounds)
        cursor.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds")


def purge(*, now=None, run=None):
    """Drop the day partitions older than the retention (on SQLite: delete those rows) and delete the default
    partition's rows that old; return the run. Their experiment units' totals are retired first."""
    now = now or timezone.now()
    run = run or MaintenanceRun()
    cutoff = retention_cutoff(now, retention_days())
    if is_partitioned():
        for day, name in sorted(day_partitions().items()):
            if day + timedelta(days=1) > cutoff:
                break
            try:
                _drop_day(day, name)
            except OperationalError as exc:
                logger.warning("request log partition %s not dropped this time: %s", name, exc)
                run.skipped.append(name)
                return run  # never a newer day before an older one: kept_since must stay true
            run.dropped.append(name)
    run.deleted_rows += _delete_before(cutoff)
    return run


def _drop_day(day, name):
    """Retire the experiment totals of one day partition's rows and drop it, in one transaction."""
    from experiments.rollups import retire_units

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        _wait_for_rollups(cursor)
        # Holds new rows out (reads go on) until the partition is gone, so every row retired is a row dropped.
        cursor.execute(f"LOCK TABLE ONLY {TABLE} IN SHARE ROW EXCLUSIVE MODE")
        retire_units(since=day, before=day + timedelta(days=1))
        cursor.execute(f"DROP TABLE {name}")
        _mark_purged(day + timedelta(days=1))


def _delete_before(cutoff):
    """Delete the rows created before cutoff that no dropped partition took (the default partition's, or every old
    row where the table is not partitioned); return how many."""
    from experiments.rollups import retire_units

    old = RequestLog.objects.filter(created_at__lt=cutoff)
    if not old.exists():
        return 0
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                _wait_for_rollups(cursor)
        retire_units(since=None, before=cutoff)
        deleted, _ = old.delete()
        _mark_purged(cutoff)
    return deleted


def _wait_for_rollups(cursor):
    """Take the rollups' advisory locks for this transaction."""
    for key in _ROLLUP_LOCKS:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _mark_purged(moment):
    """Record that the rows created before moment are gone (the mark only moves forward)."""
    settings_row = RoutingSettings.load()
    if settings_row.request_log_purged_before is None or settings_row.request_log_purged_before < moment:
        # .update(): a retention run is not a configuration change for the workers to reload.
        RoutingSettings.objects.filter(pk=settings_row.pk).update(request_log_purged_before=moment)
