"""`manage.py rollup_experiments [--since ISO-TIME]`: roll the experiments' requests and feedback up now."""

from django.core.management.base import BaseCommand

from experiments.quality import rollup_quality
from experiments.rollups import rollup_experiments
from routing.management.commands.rollup_request_logs import _moment


class Command(BaseCommand):
    """Recompute the per-variant hour rollups and the per-unit rollups of the experiments, as the beat task does."""

    help = (
        "Recompute the experiments' per-variant hour rollups and per-unit rollups from the start of the hour of "
        "--since (default: the newest rollup's, or the first request in an experiment when there is none) through "
        "the current hour, counting every request and feedback written before the run; replaces those rows. Also "
        "recomputes the daily feedback rollup that selection's quality term reads (every day, without --since)."
    )

    def add_arguments(self, parser):
        """Declare the command's arguments."""
        parser.add_argument("--since", type=_moment, help="ISO time to recompute from (its hour); UTC if no offset.")

    def handle(self, *args, since, **options):
        """Run the rollup and report it."""
        days = rollup_quality(since=since)
        self.stdout.write(f"Recomputed the quality rollup of {days} days of rated requests.")
        run = rollup_experiments(since=since)
        if run.start is None:
            self.stdout.write("No request was in an experiment: nothing to roll up.")
            return
        self.stdout.write(
            f"Rolled up {run.requests} experiment requests from {run.start.isoformat()} to {run.end.isoformat()}: "
            f"{run.variant_rows} variant-hour rows, {run.unit_rows} unit rows."
        )
