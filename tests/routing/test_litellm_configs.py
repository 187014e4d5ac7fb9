"""The walk over every example config inside the installed litellm package (routing/config_io.py).

A litellm upgrade that adds an example is covered without touching this file; litellm itself is not imported (its
package directory is found without running it).
"""

import importlib.util
import pathlib

import pytest
import yaml

from routing.config_io import ConfigError, load_config_file, routing_config_export, routing_config_import
from routing.models import Model

PACKAGE = pathlib.Path(importlib.util.find_spec("litellm").submodule_search_locations[0])

# The only packaged configs ChatVault refuses, and why: each is malformed for ChatVault too.
REFUSED = {
    "proxy/example_config_yaml/langfuse_config.yaml": "model_list[0] (gpt-3.5-turbo): litellm_params is required",
}

# Entries ChatVault skips with a warning (wildcards, modes other than chat and embedding), by config; the rest of
# each file imports.
SKIPPED = {
    "proxy/example_config_yaml/oai_misc_config.yaml": [
        "model_list[1] (*)",
        "model_list[2] (anthropic/*)",
        "model_list[3] (groq/*)",
        "model_list[4] (bedrock/batch-us.anthropic.claude-haiku-4-5-20251001-v1:0)",
    ],
    "proxy/example_config_yaml/otel_test_config.yaml": ["model_list[5] (bedrock/*)", "model_list[6] (openai/*)"],
    "proxy/example_config_yaml/pass_through_config.yaml": ["model_list[5] (anthropic/*)", "model_list[6] (openai/*)"],
    "proxy/wildcard_config.yaml": [f"model_list[{i}] ({p}/*)" for i, p in enumerate(
        ["anthropic", "bedrock", "vertex_ai", "azure_ai", "azure", "gemini", "openai"]
    )],
}  # fmt: skip


def example_configs():
    """Return the packaged LiteLLM proxy configs that have a model_list, as paths relative to the package."""
    found = []
    for path in sorted((PACKAGE / "proxy").rglob("*.yaml")):
        try:
            data = load_config_file(path)
        except ConfigError:
            continue
        if "model_list" in data:
            found.append(str(path.relative_to(PACKAGE)))
    return found


CONFIGS = example_configs()


def test_the_walk_finds_the_packaged_examples():
    assert len(CONFIGS) >= 25
    assert set(REFUSED) <= set(CONFIGS)


@pytest.mark.django_db
@pytest.mark.parametrize("relative", CONFIGS)
def test_every_packaged_example_imports_or_is_refused_naming_the_entry(relative):
    data = load_config_file(PACKAGE / relative)

    if relative in REFUSED:
        with pytest.raises(ConfigError) as info:
            routing_config_import(data=data)
        assert info.value.errors == [REFUSED[relative]]
        return
    report = routing_config_import(data=data)

    assert report.created, report.summary()
    skipped = [w.removesuffix("; skipped") for w in report.warnings if w.endswith("; skipped")]
    assert [w.split(": ")[0] for w in skipped] == SKIPPED.get(relative, [])
    assert Model.objects.count() == len({e["model_name"] for e in data["model_list"]}) - len(skipped)
    # Export -> import is a no-op, and literal secrets never leave: they are kept as they are stored.
    text = yaml.safe_dump(routing_config_export())
    for entry in data["model_list"]:
        for key, value in (entry.get("litellm_params") or {}).items():
            if isinstance(value, str) and ("key" in key or "secret" in key) and not value.startswith("os.environ/"):
                assert value not in text, f"{key} of {entry['model_name']} exported"
    again = routing_config_import(data=yaml.safe_load(text))
    assert not again.changed, again.changes
