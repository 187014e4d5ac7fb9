"""Experiment results and request exports for analysts (being built: issue 9)."""

from routing.api import GatewayView
from routing.errors import GatewayError


class ExperimentResultsView(GatewayView):
    """GET /v1/admin/experiments/{id}/results — not built yet."""

    async def get(self, request, experiment_id):
        """Refuse until built."""
        return GatewayError("Experiment results are not available yet.").response()


class ExperimentRequestsView(ExperimentResultsView):
    """GET /v1/admin/experiments/{id}/requests — not built yet."""
