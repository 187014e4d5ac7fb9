"""Request validation: what a client's chat (or legacy text completion, or embeddings) body must look like before any
model is chosen.

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


def _validate_common(body):
    """Raise InvalidRequest unless body is an object naming a model, with no forbidden key and no deep nesting."""
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


def validate_body(body):
    """Raise InvalidRequest unless body is a usable chat completion request."""
    _validate_common(body)
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


def _is_int(value):
    """Return whether value is a JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    """Return whether value is a JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_prompt(value):
    """Return whether value is a legacy prompt: a string, or a non-empty array of strings, of token ids, or of arrays
    of token ids."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(item, str) for item in value):
        return True
    if all(_is_int(item) and item >= 0 for item in value):
        return True
    return all(isinstance(item, list) and item and all(_is_int(t) and t >= 0 for t in item) for item in value)


# The legacy completion parameters whose type is checked here, with what they must be (null always allowed); the
# upstream judges the values, and passes on any parameter not listed.
COMPLETION_PARAMS = {
    "max_tokens": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "n": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "best_of": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "logprobs": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "seed": ("an integer", _is_int),
    "temperature": ("a number", _is_number),
    "top_p": ("a number", _is_number),
    "presence_penalty": ("a number", _is_number),
    "frequency_penalty": ("a number", _is_number),
    "echo": ("a boolean", lambda v: isinstance(v, bool)),
    "stream": ("a boolean", lambda v: isinstance(v, bool)),
    "stream_options": ("an object", lambda v: isinstance(v, dict)),
    "logit_bias": ("an object", lambda v: isinstance(v, dict)),
    "suffix": ("a string", lambda v: isinstance(v, str)),
    "user": ("a string", lambda v: isinstance(v, str)),
    "stop": (
        "a string or an array of strings",
        lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
    ),
}


def validate_completion_body(body):
    """Raise InvalidRequest unless body is a usable legacy text completion request (`POST /v1/completions`)."""
    _validate_common(body)
    if not _is_prompt(body.get("prompt")):
        raise InvalidRequest(
            "'prompt' is required and must be a string, or a non-empty array of strings, of token ids or of arrays "
            "of token ids.",
            param="prompt",
        )
    for name, (kind, valid) in COMPLETION_PARAMS.items():
        value = body.get(name)
        if value is not None and not valid(value):
            raise InvalidRequest(f"'{name}' must be {kind}.", param=name)


# OpenAI's limit on the inputs of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
EMBEDDING_ENCODINGS = ("float", "base64")


def _is_embedding_input(value):
    """Return whether value is an embeddings input: a non-empty string, or a non-empty array of non-empty strings,
    of token ids, or of non-empty arrays of token ids."""
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(item, str) for item in value):
        return all(value)
    return _is_prompt(value)


def embedding_input_count(value):
    """Return how many embeddings a valid input asks for (one per string or token-id array)."""
    if isinstance(value, str) or all(_is_int(item) for item in value):
        return 1
    return len(value)


def validate_embeddings_body(body):
    """Raise InvalidRequest unless body is a usable embeddings request (`POST /v1/embeddings`)."""
    _validate_common(body)
    value = body.get("input")
    if not _is_embedding_input(value):
        raise InvalidRequest(
            "'input' is required and must be a non-empty string, or a non-empty array of non-empty strings, of token "
            "ids or of arrays of token ids.",
            param="input",
        )
    if embedding_input_count(value) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items.", param="input")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in EMBEDDING_ENCODINGS:
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (_is_int(dimensions) and dimensions >= 1):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    if "stream" in body and body["stream"] not in (None, False):
        raise InvalidRequest("Embeddings are not streamed: leave 'stream' out.", param="stream")
