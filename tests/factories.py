"""Helpers that create routing configuration for tests through the real models and services."""

import itertools
import json

from routing.auth import api_key_create
from routing.models import ConfigRevision, Model, Provider, ProviderInstance, RoutingSettings
from tests.gateway import wait_until

UPSTREAM_KEY = "sk-upstream-test-0000"


def make_provider(adapter="passthrough"):
    """Return a Provider served by the given adapter ("passthrough" or "litellm")."""
    provider, _ = Provider.objects.get_or_create(
        name=f"fake-{adapter}", defaults={"kind": "openai", "openai_compatible": adapter == "passthrough"}
    )
    return provider


_models_made = itertools.count()


def make_model(name, fakes, *, adapter="passthrough", litellm_model="openai/gpt-4o-mini", **fields):
    """Create an enabled Model with one instance per fake provider; return it with `.instance_ids` in that order.

    Instance ids are unique across the test session (NAME-N-INDEX), because a gateway process outlives a test and
    remembers each instance's health by id.
    """
    model = Model.objects.create(name=name, **fields)
    provider = make_provider(adapter)
    serial = next(_models_made)
    model.instance_ids = []
    for index, fake in enumerate(fakes):
        inst = ProviderInstance(
            id=f"{name}-{serial}-{index}",
            model=model,
            provider=provider,
            litellm_model=litellm_model,
            api_base=fake.url,
        )
        model.instance_ids.append(inst.id)
        inst.set_api_key(UPSTREAM_KEY)
        inst.save()
    return model


def make_key(name="test", **kwargs):
    """Create an API key; return the raw key."""
    return api_key_create(name=name, **kwargs)[1]


def wait_for_model(gateway, raw_key, model_name, present=True, timeout=30):
    """Wait until the gateway's snapshot lists (or no longer lists) the model for this key.

    The first litellm-served model a gateway process loads makes it import litellm first (seconds, more on a busy
    machine), hence the generous timeout.
    """

    def listed():
        status, _, body = gateway.request("GET", "/v1/models", headers={"Authorization": f"Bearer {raw_key}"})
        if status != 200:
            return False
        names = {m["id"] for m in json.loads(body)["data"]}
        return (model_name in names) == present

    return wait_until(listed, timeout=timeout, message=f"model {model_name} present={present}")


def wait_for_reload(gateway):
    """Wait until the gateway serves the configuration revision now in the database."""
    revision = str(ConfigRevision.current_token())
    wait_until(lambda: gateway.health()["config_revision"] == revision, timeout=10, message="configuration reload")


def tune(gateway, **fields):
    """Change RoutingSettings the way admin does and wait until the gateway runs on the change."""
    settings = RoutingSettings.load()
    for name, value in fields.items():
        setattr(settings, name, value)
    settings.save()
    wait_for_reload(gateway)


def set_instance(gateway, instance_id, **fields):
    """Change an instance the way admin's bulk actions do and wait until the gateway runs on the change."""
    ProviderInstance.objects.filter(pk=instance_id).update(**fields)
    ConfigRevision.bump()
    wait_for_reload(gateway)


def _stats_key():
    """Return the Authorization header of a new admin key, for the load-balancer stats."""
    return {"Authorization": f"Bearer {make_key(name='stats', is_admin=True)}"}


def _breaker_states(gateway, headers):
    """Return {instance id: breaker state} from the load-balancer stats, or None while the key is not accepted yet."""
    status, _, body = gateway.request("GET", "/v1/admin/load-balancer/stats", headers=headers)
    if status != 200:
        return None
    return {i["id"]: i["state"] for m in json.loads(body)["models"] for i in m["instances"]}


def instance_stats(gateway):
    """Return {instance id: its entry in the gateway's load-balancer stats}."""
    headers = _stats_key()

    def read():
        status, _, body = gateway.request("GET", "/v1/admin/load-balancer/stats", headers=headers)
        return status == 200 and {i["id"]: i for m in json.loads(body)["models"] for i in m["instances"]}

    return wait_until(read, timeout=10, message="load-balancer stats")


def breaker_states(gateway):
    """Return {instance id: breaker state} from the gateway's load-balancer stats."""
    headers = _stats_key()
    return wait_until(lambda: _breaker_states(gateway, headers), timeout=10, message="load-balancer stats")


def wait_until_open(gateway, instance_id):
    """Wait until the gateway's load-balancer stats show the instance's breaker open."""
    headers = _stats_key()
    wait_until(
        lambda: (_breaker_states(gateway, headers) or {}).get(instance_id) == "open",
        timeout=10,
        message=f"breaker of {instance_id} open",
    )


def make_experiment(experiment_id, models, *, traffic_percentage=100.0, weights=None, status="running", names=None,
                    overrides=None, **fields):  # fmt: skip
    """Create an experiment over these Models (the first is the control); return it.

    Saving bumps the configuration revision; a test with a gateway then calls wait_for_reload.
    """
    from experiments.models import Experiment, Variant

    experiment = Experiment.objects.create(
        id=experiment_id, name=fields.pop("name", experiment_id), status=status,
        traffic_percentage=traffic_percentage, **fields,
    )  # fmt: skip
    for position, model in enumerate(models):
        Variant.objects.create(
            experiment=experiment,
            model=model,
            name=(names or {}).get(model.name, ""),
            weight=(weights or [1.0] * len(models))[position],
            is_control=position == 0,
            overrides=(overrides or {}).get(model.name, {}),
            position=position,
        )
    return experiment
