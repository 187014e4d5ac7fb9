"""Tests for routing/rejections.py: which upstream refusals are about the deployment rather than the request."""

import pytest

from routing.rejections import about_deployment


@pytest.mark.parametrize(
    "message",
    [
        "Invalid model name passed in model=gpt-nope. Call `/v1/models` to view available models for your key.",
        "The model `gpt-5-nope` does not exist or you do not have access to it.",
        "model_not_found",
        "Unknown model: claude-9",
        "The API deployment for this resource does not exist.",
        "DeploymentNotFound",
        "Incorrect API key provided: ***. You can find your API key at https://platform.openai.com.",
        "INVALID API KEY",
        "invalid x-api-key",
        "API key not valid. Please pass a valid API key.",
        "Unable to locate credentials",
        "The security token included in the request is invalid.",
        "User location is not supported for the API use. Unsupported country, region, or territory.",
    ],
)
def test_it_recognises_a_deployment_fault(message):
    assert about_deployment(message)


@pytest.mark.parametrize(
    "message",
    [
        "max_tokens must be a positive integer.",
        "'messages' must be a non-empty array.",
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
        "Invalid value for 'temperature': must be between 0 and 2.",
        "Fake provider rejected the request.",
        "",
        None,
    ],
)
def test_it_leaves_a_request_fault_to_the_request(message):
    assert not about_deployment(message)
