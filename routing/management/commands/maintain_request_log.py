"""`manage.py maintain_request_log`: create the request log's coming day partitions and drop the expired ones now."""

from django.core.management.base import BaseCommand

from routing.partitions import maintain


class Command(BaseCommand):
    """Run the request-log maintenance the hourly beat task runs."""

    help = (
        "Create the request log's day partitions for the retention window and the week ahead, and drop the days older "
        "than the retention (Routing settings; on SQLite, delete those rows). Rollups are kept."
    )

    def handle(self, *args, **options):
        """Run the maintenance and report it."""
        run = maintain()
        self.stdout.write(
            f"Created {len(run.created)} partitions, dropped {len(run.dropped)}, deleted {run.deleted_rows} rows"
            + (f"; left for the next run (locks busy): {', '.join(run.skipped)}" if run.skipped else "")
            + "."
        )
