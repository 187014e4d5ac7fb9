"""The adapter seam: whatever an upstream says, the instance's secrets never leave it.

Upstreams echo the key they refused. The fake provider does so on every error (`echo_key`), for both adapters, in
errors before the stream and in an error event mid-stream; the key must not reach the client, the request log, the
probe results or the gateway's own log.
"""

import json

import openai
import pytest

from routing.models import RequestLog
from tests.factories import UPSTREAM_KEY, make_key, make_model, wait_for_model
from tests.gateway import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(params=["passthrough", "litellm"])
def echoing(request, gateway, fake):
    """Return (client, instance id) for a model whose upstream echoes the key in every error."""
    model = make_model("vault-echo", [fake], adapter=request.param)
    raw = make_key()
    wait_for_model(gateway, raw, "vault-echo")
    fake.set_config(echo_key=True)
    return openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0), model.instance_ids[0]


def _rows(instance_id):
    return list(RequestLog.objects.filter(instance_id=instance_id))


@pytest.mark.parametrize("status", [400, 401, 422, 500])
def test_an_upstream_error_that_echoes_the_key_is_masked_everywhere(echoing, fake, gateway, status):
    client, instance_id = echoing
    fake.set_config(status=status)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="vault-echo", messages=MESSAGES)
    answer = caught.value.response.text
    assert caught.value.status_code >= 400 and "error" in json.loads(answer)
    assert UPSTREAM_KEY not in answer
    (row,) = wait_until(lambda: _rows(instance_id), message="the request's row")
    assert row.error_message and UPSTREAM_KEY not in row.error_message
    assert "***" in row.error_message, "the upstream's words are kept, with the key masked"
    assert UPSTREAM_KEY not in gateway.log()


def test_a_mid_stream_error_that_echoes_the_key_is_masked_everywhere(echoing, fake, gateway):
    client, instance_id = echoing
    fake.set_config(fault="midstream_error")
    with client.chat.completions.with_streaming_response.create(
        model="vault-echo", messages=MESSAGES, stream=True
    ) as response:
        text = b"".join(response.iter_bytes()).decode()
    assert '"error"' in text and UPSTREAM_KEY not in text
    (row,) = wait_until(lambda: _rows(instance_id), message="the request's row")
    assert row.outcome != "ok" and UPSTREAM_KEY not in row.error_message and "***" in row.error_message
    assert UPSTREAM_KEY not in gateway.log()
