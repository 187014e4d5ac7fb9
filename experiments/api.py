"""POST /v1/feedback (being built: issue 9)."""

from routing.api import GatewayView
from routing.errors import GatewayError


class FeedbackView(GatewayView):
    """POST /v1/feedback — not built yet."""

    async def post(self, request):
        """Refuse until built."""
        return GatewayError("Feedback is not available yet.").response()
