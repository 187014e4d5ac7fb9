"""Tests for the Django admin: pages render, upstream keys stay write-only, client keys are shown once, the log is
read-only, and actions tell the workers that the configuration changed."""

import json
import re
import uuid
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from routing import secrets
from routing.auth import KEY_PREFIX, hash_key
from routing.models import (
    ApiKey,
    ConfigRevision,
    Model,
    Outcome,
    Provider,
    ProviderInstance,
    RequestLog,
    RoutingSettings,
)

pytestmark = pytest.mark.django_db

SECRET = "sk-live-very-secret-value-9f3a"
OTHER_SECRET = "sk-live-another-secret-77b2"


@pytest.fixture
def provider():
    """Return a provider with an encrypted key."""
    obj = Provider(name="openai", kind="openai", api_base="https://api.openai.example/v1")
    obj.set_api_key(SECRET)
    obj.save()
    return obj


@pytest.fixture
def model():
    """Return an enabled public model."""
    return Model.objects.create(name="vault-gpt", capabilities=["general_chat", "code"])


@pytest.fixture
def instance(model, provider):
    """Return an instance of the model on the provider, without a key of its own."""
    return ProviderInstance.objects.create(id="inst-a", model=model, provider=provider, litellm_model="openai/gpt-4o")


@pytest.fixture
def api_key(model):
    """Return a client key row."""
    return ApiKey.objects.create(name="ci", prefix="cv-abcdefgh", key_hash="0" * 64)


@pytest.fixture
def routing_settings():
    """Return the settings row."""
    return RoutingSettings.load()


@pytest.fixture
def request_log(api_key, instance):
    """Return a logged request with a routing decision."""
    return RequestLog.objects.create(
        request_id=uuid.uuid4(),
        created_at=timezone.now(),
        api_key=api_key,
        instance=instance,
        requested_model="auto",
        served_model="vault-gpt",
        outcome=Outcome.OK,
        status_code=200,
        decision={"strategy": "round-robin", "candidates": ["inst-a"]},
    )


@pytest.fixture
def everything(provider, model, instance, api_key, routing_settings, request_log):
    """Return one object of each registered model, keyed by model name."""
    return {
        "provider": provider,
        "model": model,
        "providerinstance": instance,
        "apikey": api_key,
        "routingsettings": routing_settings,
        "requestlog": request_log,
    }


def url(name, *args):
    """Return the admin URL of a routing model view."""
    return reverse(f"admin:routing_{name}", args=args)


def provider_data(**overrides):
    """Return POST data for the provider form."""
    data = {"name": "openai", "kind": "openai", "api_base": "https://api.openai.example/v1", "api_key": ""}
    data.update(overrides)
    return data


def instance_data(model, provider, **overrides):
    """Return POST data for the instance form."""
    data = {
        "id": "inst-new",
        "model": model.pk,
        "provider": provider.pk,
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": "",
        "weight": "1.0",
        "rpm": "",
        "tpm": "",
        "timeout": "",
        "stream_timeout": "",
        "enabled": "on",
        "api_key": "",
    }
    data.update(overrides)
    return data


def model_data(model, rows=(), **overrides):
    """Return POST data for the model form with its instance inline rows."""
    data = {
        "name": model.name,
        "description": "",
        "enabled": "on",
        "mode": "chat",
        "strategy": "",
        "capabilities": "general_chat",
        "input_cost_per_mtok": "",
        "output_cost_per_mtok": "",
        "context_window": "",
        "instances-TOTAL_FORMS": str(len(rows)),
        "instances-INITIAL_FORMS": str(sum(1 for row in rows if row.pop("_initial", False))),
        "instances-MIN_NUM_FORMS": "0",
        "instances-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        data.update({f"instances-{i}-{field}": value for field, value in row.items()})
    data.update(overrides)
    return data


def message_texts(response):
    """Return the texts of the messages queued on a response."""
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- Pages --------------------------------------------------------------------------------------------------------


NAMES = ("provider", "model", "providerinstance", "apikey", "routingsettings", "requestlog")


@pytest.mark.parametrize("name", NAMES)
def test_changelist_renders(admin_client, everything, name):
    assert admin_client.get(url(f"{name}_changelist")).status_code == 200


@pytest.mark.parametrize("name", NAMES)
def test_change_page_renders(admin_client, everything, name):
    assert admin_client.get(url(f"{name}_change", everything[name].pk)).status_code == 200


@pytest.mark.parametrize("name", ("provider", "model", "providerinstance", "apikey"))
def test_add_page_renders(admin_client, everything, name):
    assert admin_client.get(url(f"{name}_add")).status_code == 200


def test_index_has_the_chatvault_header(admin_client):
    assert "ChatVault administration" in admin_client.get(reverse("admin:index")).content.decode()


def test_changelists_search_and_filter(admin_client, everything):
    log = everything["requestlog"]
    assert admin_client.get(url("model_changelist"), {"q": "vault", "enabled__exact": "1"}).status_code == 200
    assert admin_client.get(url("apikey_changelist"), {"status": "active"}).status_code == 200
    by_id = admin_client.get(url("requestlog_changelist"), {"q": str(log.request_id)})
    assert by_id.status_code == 200 and list(by_id.context["cl"].result_list) == [log]
    by_text = admin_client.get(url("requestlog_changelist"), {"q": "aut"})
    assert list(by_text.context["cl"].result_list) == [log]


def test_non_staff_user_is_sent_to_login(client, django_user_model):
    user = django_user_model.objects.create_user(username="bob", password="pw-for-bob-123")
    client.force_login(user)
    response = client.get(url("provider_changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# --- Upstream keys are write-only ---------------------------------------------------------------------------------


def test_provider_typed_key_is_stored_encrypted_and_never_shown(admin_client):
    response = admin_client.post(url("provider_add"), provider_data(api_key=SECRET))
    assert response.status_code == 302
    provider = Provider.objects.get(name="openai")
    assert SECRET not in provider.api_key_ciphertext
    assert secrets.decrypt(provider.api_key_ciphertext) == SECRET
    assert provider.api_key_last4 == SECRET[-4:]

    page = admin_client.get(url("provider_change", provider.pk)).content.decode()
    assert SECRET not in page
    assert provider.api_key_ciphertext not in page
    assert f"…{SECRET[-4:]}" in page
    listing = admin_client.get(url("provider_changelist")).content.decode()
    assert SECRET not in listing and f"…{SECRET[-4:]}" in listing


def test_provider_blank_key_keeps_the_current_one(admin_client, provider):
    ciphertext = provider.api_key_ciphertext
    response = admin_client.post(url("provider_change", provider.pk), provider_data(kind="openai-v2"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.kind == "openai-v2"
    assert provider.api_key_ciphertext == ciphertext
    assert provider.resolve_api_key() == SECRET


def test_provider_key_is_replaced_or_cleared(admin_client, provider):
    admin_client.post(url("provider_change", provider.pk), provider_data(api_key=OTHER_SECRET))
    provider.refresh_from_db()
    assert provider.resolve_api_key() == OTHER_SECRET

    admin_client.post(url("provider_change", provider.pk), provider_data(clear_api_key="on"))
    provider.refresh_from_db()
    assert not provider.has_api_key()
    assert provider.api_key_display() == "—"


def test_provider_key_may_be_an_environment_reference(admin_client, provider):
    admin_client.post(url("provider_change", provider.pk), provider_data(api_key="os.environ/OPENAI_API_KEY"))
    provider.refresh_from_db()
    assert provider.api_key_env == "OPENAI_API_KEY"
    assert provider.api_key_ciphertext == ""
    assert "os.environ/OPENAI_API_KEY" in admin_client.get(url("provider_change", provider.pk)).content.decode()


@pytest.mark.parametrize(
    "overrides", [{"api_key": "os.environ/"}, {"api_key": OTHER_SECRET, "clear_api_key": "on"}], ids=str
)
def test_provider_rejects_a_bad_key_change(admin_client, provider, overrides):
    response = admin_client.post(url("provider_change", provider.pk), provider_data(**overrides))
    assert response.status_code == 200  # the form comes back with errors
    assert response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.resolve_api_key() == SECRET


def test_instance_typed_key_is_stored_encrypted_and_never_shown(admin_client, model, provider):
    response = admin_client.post(url("providerinstance_add"), instance_data(model, provider, api_key=OTHER_SECRET))
    assert response.status_code == 302
    instance = ProviderInstance.objects.get(id="inst-new")
    assert OTHER_SECRET not in instance.api_key_ciphertext
    assert instance.effective_api_key() == OTHER_SECRET

    page = admin_client.get(url("providerinstance_change", instance.pk)).content.decode()
    assert OTHER_SECRET not in page and SECRET not in page
    assert instance.api_key_ciphertext not in page
    assert f"…{OTHER_SECRET[-4:]}" in page


def test_instance_blank_key_keeps_the_current_one_and_id_is_fixed(admin_client, model, provider, instance):
    instance.set_api_key(OTHER_SECRET)
    instance.save()
    data = instance_data(model, provider, id="inst-renamed", weight="3")
    response = admin_client.post(url("providerinstance_change", instance.pk), data)
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.weight == 3
    assert instance.resolve_api_key() == OTHER_SECRET
    assert not ProviderInstance.objects.filter(id="inst-renamed").exists()


def test_instance_without_a_key_shows_the_providers(admin_client, instance):
    listing = admin_client.get(url("providerinstance_changelist")).content.decode()
    assert f"provider&#x27;s (…{SECRET[-4:]})" in listing
    assert SECRET not in listing


# --- Models and inline instances ----------------------------------------------------------------------------------


def test_model_capabilities_are_edited_as_comma_separated_text(admin_client, model):
    page = admin_client.get(url("model_change", model.pk)).content.decode()
    assert 'value="general_chat, code"' in page
    admin_client.post(url("model_change", model.pk), model_data(model, capabilities=" code, , vision,code "))
    model.refresh_from_db()
    assert model.capabilities == ["code", "vision"]


def test_a_model_is_made_an_embedding_model_in_admin(admin_client, model):
    page = admin_client.get(url("model_change", model.pk)).content.decode()
    assert 'name="mode"' in page and 'value="embedding"' in page
    response = admin_client.post(url("model_change", model.pk), model_data(model, mode="embedding"))
    assert response.status_code == 302
    model.refresh_from_db()
    assert model.mode == "embedding"


def test_model_fallbacks_are_edited_as_names_of_other_models(admin_client, model):
    Model.objects.create(name="vault-backup")
    data = model_data(model, fallbacks="vault-backup", context_window_fallbacks=" vault-backup ")
    admin_client.post(url("model_change", model.pk), data)
    model.refresh_from_db()
    assert (model.fallbacks, model.context_window_fallbacks) == (["vault-backup"], ["vault-backup"])
    for bad, error in (("vault-ghost", "No such model: vault-ghost."), ("vault-gpt", "cannot be its own fallback")):
        response = admin_client.post(url("model_change", model.pk), model_data(model, fallbacks=bad))
        assert response.status_code == 200 and error in str(response.context["adminform"].form.errors["fallbacks"])
    model.refresh_from_db()
    assert model.fallbacks == ["vault-backup"]


def test_model_inline_adds_an_instance_and_keeps_saved_ids(admin_client, model, provider, instance):
    rows = [
        {
            "_initial": True,
            "id": instance.pk,
            "provider": provider.pk,
            "litellm_model": "openai/gpt-4o",
            "api_base": "",
            "weight": "2",
            "timeout": "",
            "stream_timeout": "",
            "enabled": "on",
        },
        {
            "id": "inst-b",
            "provider": provider.pk,
            "litellm_model": "openai/gpt-4o-mini",
            "api_base": "",
            "weight": "1",
            "timeout": "30",
            "stream_timeout": "",
            "enabled": "on",
        },
    ]
    response = admin_client.post(url("model_change", model.pk), model_data(model, rows))
    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    assert set(model.instances.values_list("id", flat=True)) == {"inst-a", "inst-b"}
    assert ProviderInstance.objects.get(id="inst-a").weight == 2
    assert ProviderInstance.objects.get(id="inst-b").timeout == 30


def test_model_inline_locks_the_id_of_saved_instances(admin_client, model, instance):
    page = admin_client.get(url("model_change", model.pk)).content.decode()
    assert re.search(r'<input[^>]*name="instances-0-id"[^>]*readonly', page)
    assert "api_key" not in page


def test_model_changelist_counts_instances(admin_client, instance):
    response = admin_client.get(url("model_changelist"))
    assert response.context["cl"].result_list[0].instance_count == 1


# --- Model metadata -----------------------------------------------------------------------------------------------


def effective_rows(page):
    """Return the effective-metadata table of a model page as {label: (value, source)}."""
    table = re.search(r'<table class="effective-metadata">.*?</table>', page, re.S).group(0)
    cells = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", table)
    return {label: (value, source) for label, value, source in cells}


def test_model_metadata_overrides_are_edited_in_admin(admin_client, model):
    data = model_data(
        model,
        context_window="32000",
        supports_function_calling="true",
        supports_vision="false",
        supports_response_schema="unknown",
        input_cost_per_mtok="0.15",
        output_cost_per_mtok="0",
    )

    response = admin_client.post(url("model_change", model.pk), data)

    assert response.status_code == 302
    model.refresh_from_db()
    assert model.context_window == 32000
    assert (model.supports_function_calling, model.supports_vision, model.supports_response_schema) == (
        True,
        False,
        None,
    )
    assert (model.input_cost_per_mtok, model.output_cost_per_mtok) == (Decimal("0.15"), Decimal("0"))
    page = admin_client.get(url("model_change", model.pk)).content.decode()
    assert '<option value="unknown" selected>From the litellm map</option>' in page


@pytest.mark.parametrize(
    ("field", "value"),
    [("context_window", "0"), ("input_cost_per_mtok", "-1"), ("output_cost_per_mtok", "0.0000001")],
)
def test_model_metadata_refuses_values_out_of_range(admin_client, model, field, value):
    response = admin_client.post(url("model_change", model.pk), model_data(model, **{field: value}))

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    model.refresh_from_db()
    assert getattr(model, field) is None


def test_model_page_shows_each_effective_value_and_where_it_came_from(admin_client, model, instance):
    # instance runs openai/gpt-4o, which litellm's map knows.
    Model.objects.filter(pk=model.pk).update(context_window=1000, supports_vision=False)

    rows = effective_rows(admin_client.get(url("model_change", model.pk)).content.decode())

    assert rows == {
        "Context window (max input tokens)": ("1,000", "override"),
        "Function calling": ("yes", "litellm map"),
        "Vision (image input)": ("no", "override"),
        "Response schema / JSON mode": ("yes", "litellm map"),
        "Input price (USD per million tokens)": ("2.5", "litellm map"),
        "Output price (USD per million tokens)": ("10", "litellm map"),
        "Capability tags": ("general_chat, code", "override"),
    }


def test_a_model_the_map_does_not_know_shows_unknown_values(admin_client, provider):
    llama = Model.objects.create(name="vault-llama")
    ProviderInstance.objects.create(id="llama-1", model=llama, provider=provider, litellm_model="hosted_vllm/llama-3")
    # A disabled instance serves nothing, so what the map says about it does not count.
    ProviderInstance.objects.create(
        id="llama-old", model=llama, provider=provider, litellm_model="openai/gpt-4o", enabled=False
    )

    rows = effective_rows(admin_client.get(url("model_change", llama.pk)).content.decode())

    assert set(rows.values()) == {("unknown", "unknown"), ("none", "unknown")}


def test_the_model_list_flags_and_filters_models_without_a_price_or_window(admin_client, model, instance, provider):
    llama = Model.objects.create(name="vault-llama")
    ProviderInstance.objects.create(id="llama-1", model=llama, provider=provider, litellm_model="hosted_vllm/llama-3")
    priced = Model.objects.create(name="vault-priced", input_cost_per_mtok=1, output_cost_per_mtok=2)
    ProviderInstance.objects.create(id="priced-1", model=priced, provider=provider, litellm_model="hosted_vllm/x")

    page = admin_client.get(url("model_changelist")).content.decode()

    assert '<td class="field-missing_metadata">missing price, missing window</td>' in page
    assert '<td class="field-missing_metadata">missing window</td>' in page
    assert '<td class="field-effective_prices">1 / 2</td>' in page
    assert '<td class="field-effective_window">128,000</td>' in page  # gpt-4o's, from the map

    def listed(**params):
        response = admin_client.get(url("model_changelist"), params)
        return sorted(m.name for m in response.context["cl"].result_list)

    assert listed(metadata="price") == ["vault-llama"]
    assert listed(metadata="window") == ["vault-llama", "vault-priced"]
    assert listed(metadata="complete") == ["vault-gpt"]
    assert listed() == ["vault-gpt", "vault-llama", "vault-priced"]


def test_model_changelist_does_not_query_per_row(admin_client, provider, django_assert_max_num_queries):
    for n in range(5):
        row = Model.objects.create(name=f"vault-{n}")
        ProviderInstance.objects.create(id=f"i-{n}", model=row, provider=provider, litellm_model="openai/gpt-4o")
    admin_client.get(url("model_changelist"))  # warm the session and content types
    with django_assert_max_num_queries(11):  # 8, and the page's instance states and rollups of two windows
        assert admin_client.get(url("model_changelist")).status_code == 200


@pytest.mark.parametrize("name", ("model", "providerinstance"))
def test_enable_and_disable_actions_bump_the_revision(admin_client, everything, name):
    obj = everything[name]
    for action, enabled in (("disable_selected", False), ("enable_selected", True)):
        before = ConfigRevision.current_token()
        admin_client.post(url(f"{name}_changelist"), {"action": action, "_selected_action": [obj.pk]})
        obj.refresh_from_db()
        assert obj.enabled is enabled
        assert ConfigRevision.current_token() != before


# --- Client API keys ----------------------------------------------------------------------------------------------


def api_key_data(model, name="billing"):
    """Return POST data for the API key add form."""
    return {"name": name, "is_admin": "on", "allowed_models": [model.pk], "expires_at_0": "", "expires_at_1": ""}


def shown_key(response):
    """Return the raw key shown on the page that answers the add form."""
    html = response.content.decode()
    assert "Copy this key now; it will not be shown again:" in html
    return re.search(rf'value="({re.escape(KEY_PREFIX)}[A-Za-z0-9_-]+)"', html).group(1)


def test_adding_an_api_key_shows_it_once_and_stores_only_its_hash(admin_client, model):
    response = admin_client.post(url("apikey_add"), api_key_data(model))
    assert response.status_code == 200
    raw = shown_key(response)

    key = ApiKey.objects.get(name="billing")
    assert key.key_hash == hash_key(raw)
    assert key.prefix == raw[: len(key.prefix)]
    assert raw not in {key.name, key.prefix, key.key_hash}
    assert key.is_admin
    assert list(key.allowed_models.all()) == [model]

    for page in (url("apikey_changelist"), url("apikey_change", key.pk)):
        html = admin_client.get(page).content.decode()
        assert raw not in html
        assert key.key_hash not in html


def cookie_texts(response, client):
    """Return the value of every cookie set or held, and the decoded messages of a messages cookie."""
    texts = []
    for morsel in [*response.cookies.values(), *client.cookies.values()]:
        texts.append(morsel.value)
        if morsel.key == CookieStorage.cookie_name:  # signed and compressed: the key would not show as is
            texts += [str(m) for m in CookieStorage(response.wsgi_request)._decode(morsel.value) or []]
    return texts


@pytest.mark.parametrize("storage", ["session.SessionStorage", "cookie.CookieStorage"])
def test_a_new_api_key_never_reaches_a_session_or_a_cookie(admin_client, model, settings, storage):
    settings.MESSAGE_STORAGE = f"django.contrib.messages.storage.{storage}"
    response = admin_client.post(url("apikey_add"), api_key_data(model))
    raw = shown_key(response)

    sessions = list(Session.objects.all())
    assert sessions  # the admin's own session is there to be looked at
    for session in sessions:
        assert raw not in json.dumps(session.get_decoded())
    assert not any(raw in text for text in cookie_texts(response, admin_client))


def test_api_key_change_page_does_not_offer_the_secret_fields(admin_client, api_key):
    form = admin_client.get(url("apikey_change", api_key.pk)).context["adminform"].form
    assert "key_hash" not in form.fields and "prefix" not in form.fields


def test_revoke_action_sets_revoked_at_and_bumps_the_revision(admin_client, api_key):
    before = ConfigRevision.current_token()
    response = admin_client.post(
        url("apikey_changelist"), {"action": "revoke_selected", "_selected_action": [api_key.pk]}
    )
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert ConfigRevision.current_token() != before
    listing = admin_client.get(url("apikey_changelist")).content.decode()
    assert "revoked" in listing


# --- Settings and the request log ---------------------------------------------------------------------------------


def test_routing_settings_is_a_singleton(admin_client):
    assert admin_client.get(url("routingsettings_add")).status_code == 200
    defaults = {f.name: f.get_default() for f in RoutingSettings._meta.fields if f.editable and f.name != "id"}
    defaults["auto_select"] = ""
    defaults["selection_type_weights"] = json.dumps(defaults["selection_type_weights"])
    response = admin_client.post(url("routingsettings_add"), {**defaults, "default_strategy": "weighted"})
    assert response.status_code == 302
    assert RoutingSettings.load().default_strategy == "weighted"
    assert RoutingSettings.objects.count() == 1
    assert admin_client.get(url("routingsettings_add")).status_code == 403
    assert admin_client.get(url("routingsettings_delete", 1)).status_code == 403


def test_request_log_is_read_only(admin_client, request_log):
    assert admin_client.get(url("requestlog_add")).status_code == 403
    assert admin_client.get(url("requestlog_delete", request_log.pk)).status_code == 403
    response = admin_client.post(url("requestlog_change", request_log.pk), {"status_code": "500"})
    assert response.status_code == 403
    request_log.refresh_from_db()
    assert request_log.status_code == 200


def test_request_log_detail_pretty_prints_the_decision(admin_client, request_log):
    page = admin_client.get(url("requestlog_change", request_log.pk)).content.decode()
    assert "<pre>{\n  &quot;candidates&quot;: [\n    &quot;inst-a&quot;\n  ]," in page


def test_request_log_changelist_does_not_query_per_row(admin_client, request_log, django_assert_max_num_queries):
    for _ in range(5):
        RequestLog.objects.create(
            request_id=uuid.uuid4(),
            created_at=timezone.now(),
            api_key=request_log.api_key,
            instance=request_log.instance,
            outcome=Outcome.OK,
            status_code=200,
        )
    admin_client.get(url("requestlog_changelist"))  # warm the session and content types
    with django_assert_max_num_queries(12):
        assert admin_client.get(url("requestlog_changelist")).status_code == 200


# --- Live routing state, breaker reset and drain ------------------------------------------------------------------


@pytest.fixture
def open_breaker(instance):
    """Open the instance's breaker in this process's routing state (what the admin page reads); undo afterwards."""
    import time

    from routing import state
    from routing.health import OPEN, BreakerState

    routing_state = state.get()
    reason = "5 consecutive failures, last: HTTP 503"
    routing_state.breakers[instance.pk] = BreakerState(state=OPEN, reason=reason, until=time.time() + 60, trips=1)
    routing_state.in_flight[instance.pk] += 2
    yield routing_state
    routing_state.breakers.pop(instance.pk, None)
    routing_state.in_flight.pop(instance.pk, None)


def test_instance_changelist_shows_state_reason_and_in_flight(admin_client, instance, open_breaker):
    response = admin_client.get(url("providerinstance_changelist"))
    page = response.content.decode()
    assert ">State<" in page and ">In flight<" in page
    assert '<td class="field-live_state"><span class="state-badge state-open" style="background: #c62828; ' in page
    assert ">open</span><br>5 consecutive failures, last: HTTP 503</td>" in page
    assert 'class="field-in_flight">2<' in page


def test_instance_pages_show_drained_and_a_closed_breaker(admin_client, instance):
    instance.drained = True
    instance.save()
    page = admin_client.get(url("providerinstance_changelist")).content.decode()
    assert 'class="state-badge state-drained" style="background: #546e7a; ' in page
    instance.drained = False
    instance.save()
    page = admin_client.get(url("providerinstance_changelist")).content.decode()
    assert 'class="state-badge state-closed" style="background: #2e7d32; ' in page
    assert admin_client.get(url("providerinstance_change", instance.pk)).status_code == 200


def test_model_inline_shows_the_instance_state(admin_client, model, instance, open_breaker):
    page = admin_client.get(url("model_change", model.pk)).content.decode()
    assert "5 consecutive failures, last: HTTP 503" in page


def test_reset_breaker_action_sets_the_reset_time_and_bumps_the_revision(admin_client, instance):
    before = ConfigRevision.current_token()
    started = timezone.now()
    response = admin_client.post(
        url("providerinstance_changelist"), {"action": "reset_breaker", "_selected_action": [instance.pk]}
    )
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.breaker_reset_at is not None and instance.breaker_reset_at >= started
    assert ConfigRevision.current_token() != before


def test_drain_and_undrain_actions_flip_drained_and_bump_the_revision(admin_client, instance):
    for action, drained in (("drain_selected", True), ("undrain_selected", False)):
        before = ConfigRevision.current_token()
        response = admin_client.post(
            url("providerinstance_changelist"), {"action": action, "_selected_action": [instance.pk]}
        )
        assert response.status_code == 302
        instance.refresh_from_db()
        assert instance.drained is drained
        assert ConfigRevision.current_token() != before


def test_instance_form_drains_an_instance(admin_client, model, provider, instance):
    response = admin_client.post(
        url("providerinstance_change", instance.pk), instance_data(model, provider, id=instance.pk, drained="on")
    )
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.drained is True


@pytest.mark.django_db
def test_probe_results_are_listed_read_only(admin_client):
    from django.utils import timezone

    from routing.models import InstanceProbe, Model, Provider, ProviderInstance

    provider = Provider.objects.create(name="probe-p", kind="openai")
    model = Model.objects.create(name="probe-m")
    inst = ProviderInstance.objects.create(id="probe-i", model=model, provider=provider, litellm_model="openai/x")
    InstanceProbe.objects.create(instance=inst, checked_at=timezone.now(), ok=False, status_code=503, error="HTTP 503")
    page = admin_client.get("/admin/routing/instanceprobe/")
    assert page.status_code == 200 and b"probe-i" in page.content and b"HTTP 503" in page.content
    assert admin_client.get("/admin/routing/instanceprobe/add/").status_code == 403


@pytest.mark.django_db
def test_every_routing_setting_is_tunable_in_admin(admin_client):
    from routing.models import ConfigRevision, RoutingSettings

    RoutingSettings.load()
    page = admin_client.get("/admin/routing/routingsettings/1/change/")
    editable = [f.name for f in RoutingSettings._meta.fields if f.editable and f.name != "id"]
    for name in editable:
        assert f'name="{name}"'.encode() in page.content, name
    data = {name: page.context["adminform"].form.initial[name] for name in editable}
    data.update(breaker_consecutive_failures=7, health_check_interval_seconds=0)
    data["auto_select"] = "on" if data["auto_select"] else ""
    data["selection_type_weights"] = json.dumps(data["selection_type_weights"])
    data["selection_weight_cost"] = 0.2
    before = ConfigRevision.current_token()
    response = admin_client.post("/admin/routing/routingsettings/1/change/", data)
    assert response.status_code == 302
    row = RoutingSettings.load()
    assert (row.breaker_consecutive_failures, row.health_check_interval_seconds) == (7, 0)
    assert row.selection_weight_cost == 0.2 and row.selection_type_weights["general_chat"]["cost"] == 0.3
    assert ConfigRevision.current_token() != before


def test_instance_provider_params_are_editable_and_credentials_write_only(admin_client, model, provider):
    data = instance_data(
        model,
        provider,
        api_base_env="AZURE_API_BASE",
        params='{"api_version": "2024-06-01", "aws_session_token": "os.environ/AWS_TOKEN"}',
        credential_params='{"aws_secret_access_key": "aws-secret-typed-9876"}',
    )
    assert admin_client.post(url("providerinstance_add"), data).status_code == 302

    instance = ProviderInstance.objects.get(id="inst-new")
    assert instance.api_base_env == "AZURE_API_BASE"
    assert instance.params == {"api_version": "2024-06-01", "aws_session_token": "os.environ/AWS_TOKEN"}
    assert instance.secret_param("aws_secret_access_key") == "aws-secret-typed-9876"
    page = admin_client.get(url("providerinstance_change", instance.pk)).content.decode()
    assert "aws-secret-typed-9876" not in page and instance.secret_params["aws_secret_access_key"] not in page
    assert "aws_secret_access_key" in page and "2024-06-01" in page

    # A literal credential among the plain parameters is refused: it would be stored unencrypted.
    bad = {**data, "id": "inst-new", "params": '{"aws_secret_access_key": "plain"}', "credential_params": ""}
    response = admin_client.post(url("providerinstance_change", instance.pk), bad)
    assert response.status_code == 200 and response.context["adminform"].form.errors
