"""Chat request validation: what a client's body must look like before any model is chosen.

The checks that make a body safe to route once, at the edge (STYLE.md 9): a JSON object with a model name and
messages of known roles, no key that would let a client choose the upstream endpoint or credentials (at any depth),
and no nesting deep enough to exhaust the stack of whoever walks it next.
"""

from routing.errors import InvalidRequest

FORBIDDEN_KEYS = frozenset({"api_base", "base_url", "api_key"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_NESTING = 64


def _find_forbidden_key(value, path, depth=0):
    """Return the path of the first credential or endpoint key anywhere in value, or None."""
    if depth > MAX_NESTING:
        raise InvalidRequest("The request body is nested too deeply.")
    if isinstance(value, dict):
        for key, item in value.items():
            if key in FORBIDDEN_KEYS:
                return f"{path}.{key}" if path else key
            found = _find_forbidden_key(item, f"{path}.{key}" if path else key, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_forbidden_key(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
    return None


def validate_body(body):
    """Raise InvalidRequest unless body is a usable chat completion request."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    forbidden = _find_forbidden_key(body, "")
    if forbidden:
        raise InvalidRequest(
            f"'{forbidden}' may not be set by clients: the gateway chooses the upstream endpoint and credentials.",
            param=forbidden,
            code="forbidden_parameter",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{index}] must be an object.", param=f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}.", param=f"messages[{index}].role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"messages[{index}].content must be a string or an array of content parts.",
                param=f"messages[{index}].content",
            )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
