"""`manage.py rollup_request_logs [--since ISO-TIME]`: roll the request log up now, without Celery."""

from datetime import UTC

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from routing.rollups import rollup_request_logs


def _moment(value):
    """Return an ISO time as an aware datetime (UTC when it names no offset)."""
    try:
        moment = parse_datetime(value)
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"--since needs an ISO time such as 2026-01-31T09:00 or 2026-01-31T09:00+02:00: {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    """Recompute the minute and hour rollups of the request log, as the Celery beat task does."""

    help = (
        "Recompute the per-model and per-instance minute and hour rollups of the request log, from the start of the "
        "hour of --since (default: the newest rollup's, or the whole log when there is none) through the current "
        "hour, replacing the rows of those buckets."
    )

    def add_arguments(self, parser):
        """Declare the command's arguments."""
        parser.add_argument("--since", type=_moment, help="ISO time to recompute from (its hour); UTC if no offset.")

    def handle(self, *args, since, **options):
        """Run the rollup and report it."""
        run = rollup_request_logs(since=since)
        if run.start is None:
            self.stdout.write("The request log is empty: nothing to roll up.")
            return
        self.stdout.write(
            f"Rolled up {run.requests} requests from {run.start.isoformat()} to {run.end.isoformat()}: "
            f"{run.hour_rows} hour rows, {run.minute_rows} minute rows."
        )
