"""POST /v1/feedback: an app rates an answer it got (see `experiments.feedback`)."""

from django.http import JsonResponse

from experiments import feedback
from routing.api import GatewayView, _read_json, authenticate_request, current_snapshot


class FeedbackView(GatewayView):
    """POST /v1/feedback — a score for one chat completion, by the key that made it.

    Served by the lean API handler: the rated request is read from the database only on `experiments.feedback`'s own
    threads, and the row is written by its writer thread. No RequestLog row: the log is for model traffic.
    """

    async def post(self, request):
        """Store (replace) the key's feedback on one of its requests; answer the stored feedback."""
        snap = await current_snapshot()
        key = authenticate_request(request, snap)
        given = await feedback.feedback_give(key_pk=key.pk, body=_read_json(request))
        return JsonResponse(given)
