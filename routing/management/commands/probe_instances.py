"""`manage.py probe_instances [--all]`: run one round of active health checks now, without Celery."""

from django.core.management.base import BaseCommand

from routing.probes import instances_probe_due


class Command(BaseCommand):
    """Probe the instances that are due (or all serving instances) and print one line per result."""

    help = (
        "Probe every enabled, undrained instance whose last probe is older than the health-check interval "
        "and store the results, as the Celery beat task does."
    )

    def add_arguments(self, parser):
        """Declare the command's arguments."""
        parser.add_argument(
            "--all",
            action="store_true",
            dest="probe_all",
            help="Probe every serving instance, ignoring the interval (even if 0).",
        )

    def handle(self, *args, probe_all, **options):
        """Run the round and report it."""
        probes = instances_probe_due(ignore_interval=probe_all)
        for probe in probes:
            outcome = "ok" if probe.ok else "failed"
            latency = f"{probe.latency_ms:.0f} ms" if probe.latency_ms is not None else "-"
            line = f"{probe.instance_id}  {outcome}  {latency}"
            self.stdout.write(f"{line}  {probe.error}" if probe.error else line)
        if not probes:
            self.stdout.write("No instance is due for a probe.")
