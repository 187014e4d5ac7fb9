"""Make values from clients and upstreams storable: the one place that knows what Postgres refuses.

Postgres text and jsonb refuse NUL characters and lone UTF-16 surrogates (which Python strings can hold: JSON
`"\\ud800"` decodes to one), `integer` columns refuse numbers outside 32 bits, `numeric(14, 8)` refuses costs of a
million dollars, and jsonb refuses NaN. One such value in a batch of request-log rows would fail the whole batch, so
every row is passed through `row()` when it is built. Pure functions only: no Django, no I/O.
"""

import math
import re
from decimal import Decimal, InvalidOperation

MAX_INT = 2**31 - 1  # Postgres `integer`
MAX_SMALLINT = 2**15 - 1  # Postgres `smallint`
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text(value, limit=None):
    """Return value as text Postgres stores: NUL and lone surrogates written as escapes, cut to limit characters."""
    if not isinstance(value, str):
        value = str(value)
    if _UNSTORABLE.search(value):
        value = value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return value[:limit] if limit is not None else value


def json_value(value, depth=0):
    """Return value with every string made storable and every number representable in jsonb."""
    kind = type(value)  # exact types first: this runs for every request's decision
    if kind is str:
        return value if not _UNSTORABLE.search(value) else text(value)
    if value is None or kind is int or kind is bool:
        return value
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if depth >= 32:
        return text(repr(value), 200)
    if isinstance(value, dict):
        return {text(key): json_value(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item, depth + 1) for item in value]
    if isinstance(value, str):
        return text(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return json_value(float(value))
    return text(value, 200)


def count(value, high=MAX_INT):
    """Return (value as a count in [0, high] or None, what was wrong with it or None).

    Integers outside the range are clamped; anything that is not an integer (a string, a float, a bool) is None.
    """
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"not an integer: {text(repr(value), 100)}"
    if value < 0:
        return 0, f"negative: {value}"
    if value > high:
        return high, f"too large: {text(str(value), 100)}"
    return value, None


def number(value):
    """Return (value as a finite float or None, what was wrong with it or None)."""
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"not a finite number: {text(repr(value), 100)}"
    return float(value), None


def decimal(value, max_digits, places):
    """Return (value as a Decimal that fits numeric(max_digits, places) or None, what was wrong with it or None)."""
    if value is None:
        return None, None
    try:
        value = Decimal(value).quantize(Decimal(1).scaleb(-places))
    except (InvalidOperation, TypeError, ValueError):
        return None, f"not a number: {text(repr(value), 100)}"
    if not value.is_finite() or abs(value) >= Decimal(10) ** (max_digits - places):
        return None, f"out of range: {text(str(value), 100)}"
    return value, None


def usage(value):
    """Return (prompt tokens, completion tokens, total tokens, problems) from an upstream's `usage`.

    An upstream's usage is hostile like any input: each count is checked with `count`, and problems maps a field
    to what was wrong with it (empty when all is well).
    """
    if value is None:
        return None, None, None, {}
    if not isinstance(value, dict):
        return None, None, None, {"usage": f"not an object: {text(repr(value), 100)}"}
    problems = {}
    counts = []
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        checked, problem = count(value.get(name))
        if problem:
            problems[name] = problem
        counts.append(checked)
    prompt, completion, total = counts
    if total is None and (prompt is not None or completion is not None):
        total = min((prompt or 0) + (completion or 0), MAX_INT)
    return prompt, completion, total, problems


class RowSpec:
    """How to make each field of a model's rows storable, read once from the model's fields."""

    def __init__(self, fields):
        """Build the spec from Django model fields (duck-typed: attname, get_internal_type(), max_length, …)."""
        self.rules = []
        for field in fields:
            attname, kind = field.attname, field.get_internal_type()
            if kind == "ForeignKey":  # store the key like the column it points to
                field = field.target_field
                kind = field.get_internal_type()
            self.rules.append((attname, kind, field))

    def row(self, values):
        """Return a copy of values (a dict of attname -> value) that the database stores; note fixes in `decision`."""
        fixed = {}
        problems = {}
        for name, kind, field in self.rules:
            if name not in values:
                continue
            value = values[name]
            if value is None:
                fixed[name] = None
                continue
            problem = None
            if kind in ("CharField", "TextField"):
                value = text(value, field.max_length)
            elif kind == "JSONField":
                value = json_value(value)
            elif kind in ("PositiveIntegerField", "IntegerField"):
                value, problem = count(value)
            elif kind in ("PositiveSmallIntegerField", "SmallIntegerField"):
                value, problem = count(value, MAX_SMALLINT)
            elif kind == "FloatField":
                value, problem = number(value)
            elif kind == "DecimalField":
                value, problem = decimal(value, field.max_digits, field.decimal_places)
            if problem:
                problems[name] = problem
            fixed[name] = value
        if problems and "decision" in fixed:
            decision = dict(fixed["decision"] or {})
            decision["unstorable"] = {**decision.get("unstorable", {}), **problems}
            fixed["decision"] = decision
        return {**values, **fixed}
