"""Whose fault is an upstream's refusal: the request's, or the deployment's (the instance's configuration).

An upstream answers 400 both to a request it cannot serve (max_tokens out of range) and to a deployment set up wrong
(a model it does not serve, a key it does not know): only the words tell them apart. A refusal whose message is
about the deployment counts against the instance, whatever its status; any other 400/413/422 is judged by a peer
(`routing.services.ChatRequest._failover`).

Pure: takes an upstream's message, reads no clock, network or database.
"""

import re

# Phrases upstreams (OpenAI, Azure, Anthropic, Gemini, Bedrock, Vertex, LiteLLM proxies) use when the deployment,
# not the request, is wrong, matched case-insensitively anywhere in the message. Kept narrow on purpose: a phrase
# that also fits a bad request would blame healthy instances for their clients' mistakes.
DEPLOYMENT_PHRASES = (
    # the model: "Invalid model name passed in model=…", "The model `x` does not exist", "model_not_found"
    r"invalid model",
    r"unknown model",
    r"no such model",
    r"model[ _]not[ _]found",
    r"model\b.{0,80}\bdoes not exist",
    r"deployment[ _]?not[ _]?found",
    r"deployment\b.{0,80}\bdoes not exist",
    # the key: "Incorrect API key provided", "API key not valid", "invalid x-api-key", "invalid_api_key"
    r"(invalid|incorrect)[ _](x-)?api[ _-]key",
    r"api[ _-]key not valid",
    r"credentials",
    r"security token",
    r"authentication",
    # the account or region: "not available in your region", "do not have access to the model"
    r"region",
    r"(do|does) not have access",
)
_DEPLOYMENT = re.compile("|".join(f"(?:{phrase})" for phrase in DEPLOYMENT_PHRASES), re.IGNORECASE)


def about_deployment(message):
    """Return whether an upstream's refusal speaks of the deployment (model, key, credentials, region)."""
    return bool(message) and _DEPLOYMENT.search(message) is not None
