"""Experiment enrolment through a live gateway: which variant serves, what the client is told, what the row keeps."""

import json

import pytest

from experiments.models import Experiment
from routing.models import Model, RequestLog
from tests.factories import make_experiment, make_key, make_model, wait_for_model, wait_for_reload
from tests.gateway import wait_until
from tests.helpers import MESSAGES

pytestmark = pytest.mark.django_db(transaction=True)


def chat(gateway, raw_key, model, *, user=None, session=None, messages=MESSAGES):
    """Send one chat request; return (status, headers, body)."""
    body = {"model": model, "messages": messages}
    if user is not None:
        body["user"] = user
    headers = {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}
    if session is not None:
        headers["x-chatvault-session"] = session
    status, response_headers, raw = gateway.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                                    headers=headers)  # fmt: skip
    return status, {k.lower(): v for k, v in response_headers.items()}, raw


def row(request_id):
    """Wait for and return a request's RequestLog row."""
    return wait_until(lambda: RequestLog.objects.filter(request_id=request_id).first(), message="the request's row")


def two_models(fake, fake_b, prefix):
    """Return two models, each served by its own fake provider."""
    return make_model(f"{prefix}-a", [fake]), make_model(f"{prefix}-b", [fake_b])


def test_an_enrolled_unit_gets_its_variant_on_every_request_and_the_row_says_so(gateway, fake, fake_b):
    control, treatment = two_models(fake, fake_b, "enr")
    make_experiment("exp-enr", [control, treatment], names={"enr-b": "challenger"})
    raw = make_key()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "enr-a")

    seen = {}
    for user in (f"user-{i}" for i in range(40)):
        answers = {chat(gateway, raw, "enr-a", user=user)[1]["x-chatvault-variant"] for _ in range(3)}
        assert len(answers) == 1, f"{user} moved between variants: {answers}"
        seen[user] = answers.pop()
    assert set(seen.values()) == {"enr-a", "challenger"}  # both arms get units (40 units: 1 in 2**39 to fail)

    status, headers, _ = chat(gateway, raw, "enr-a", user="user-7")
    assert status == 200
    assert headers["x-chatvault-experiment"] == "exp-enr"
    assert headers["x-chatvault-model"] == ("enr-b" if seen["user-7"] == "challenger" else "enr-a")
    stored = row(headers["x-request-id"])
    assert (stored.experiment, stored.variant) == ("exp-enr", seen["user-7"])
    assert stored.served_model == headers["x-chatvault-model"] and stored.requested_model == "enr-a"
    assert len(stored.experiment_unit) == 24 and "user-7" not in stored.experiment_unit
    served = "enr-b" if seen["user-7"] == "challenger" else "enr-a"
    assert stored.decision["experiment"] == {"id": "exp-enr", "variant": seen["user-7"], "model": served}


def test_traffic_outside_the_share_goes_where_it_would_have_gone(gateway, fake, fake_b):
    control, treatment = two_models(fake, fake_b, "out")
    make_experiment("exp-out", [control, treatment], traffic_percentage=0.0)
    raw = make_key()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "out-a")

    for user in ("x", "y", "z"):
        status, headers, _ = chat(gateway, raw, "out-a", user=user)
        assert status == 200 and headers["x-chatvault-model"] == "out-a"
        assert "x-chatvault-experiment" not in headers and "x-chatvault-variant" not in headers
    stored = row(headers["x-request-id"])
    assert (stored.experiment, stored.variant, stored.experiment_unit) == ("", "", "")


def test_the_session_header_is_the_unit_when_no_user_is_sent_and_the_key_when_neither(gateway, fake, fake_b):
    control, treatment = two_models(fake, fake_b, "ses")
    make_experiment("exp-ses", [control, treatment])
    raw = make_key()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "ses-a")

    by_session = {}
    for session in (f"s{i}" for i in range(30)):
        variants = {chat(gateway, raw, "ses-a", session=session)[1]["x-chatvault-variant"] for _ in range(2)}
        assert len(variants) == 1
        by_session[session] = variants.pop()
    assert set(by_session.values()) == {"ses-a", "ses-b"}
    # The `user` field wins over the session: the same user in two sessions keeps one variant.
    assert len({chat(gateway, raw, "ses-a", user="u", session=s)[1]["x-chatvault-variant"] for s in by_session}) == 1
    # Neither: the key is the unit, so every such request of one key shares a variant.
    assert len({chat(gateway, raw, "ses-a")[1]["x-chatvault-variant"] for _ in range(5)}) == 1


def test_a_variant_whose_model_cannot_serve_falls_back_and_the_row_records_it(gateway, fake, fake_b):
    control, treatment = two_models(fake, fake_b, "fb")
    make_experiment("exp-fb", [control, treatment], weights=[0.0, 1.0])  # every unit gets fb-b
    raw = make_key()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "fb-a")
    assert chat(gateway, raw, "fb-a", user="u1")[1]["x-chatvault-model"] == "fb-b"

    Model.objects.filter(name="fb-b").update(enabled=False)
    Experiment.objects.get(id="exp-fb").save()  # a save bumps the revision (.update() does not)
    wait_for_reload(gateway)
    status, headers, _ = chat(gateway, raw, "fb-a", user="u1")
    assert status == 200 and headers["x-chatvault-model"] == "fb-a"
    assert headers["x-chatvault-variant"] == "fb-b"  # still counted in its variant (intent to treat)
    stored = row(headers["x-request-id"])
    assert stored.variant == "fb-b" and stored.served_model == "fb-a"
    assert "not an enabled chat model" in stored.decision["experiment"]["fell_back"]


def test_an_unreachable_variant_fails_over_to_the_model_the_request_named(gateway, fake, fake_b):
    control, treatment = two_models(fake, fake_b, "dn")
    make_experiment("exp-dn", [control, treatment], weights=[0.0, 1.0])
    raw = make_key()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "dn-a")
    fake_b.set_config(status=503)

    status, headers, _ = chat(gateway, raw, "dn-a", user="u2")
    assert status == 200 and headers["x-chatvault-model"] == "dn-a"
    stored = row(headers["x-request-id"])
    assert stored.variant == "dn-b" and stored.served_model == "dn-a"
    assert stored.decision["fallbacks"] == [{"from": "dn-b", "to": "dn-a"}]


def test_variant_overrides_reach_the_upstream(gateway, fake, fake_b):
    control, treatment = two_models(fake, fake_b, "ovr")
    make_experiment("exp-ovr", [control, treatment], weights=[0.0, 1.0],
                    overrides={"ovr-b": {"temperature": 0.1, "system_prompt_prefix": "Answer in French."}})  # fmt: skip
    raw = make_key()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "ovr-a")

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    status, headers, _ = chat(gateway, raw, "ovr-a", user="u3", messages=messages)
    assert status == 200 and headers["x-chatvault-variant"] == "ovr-b"
    sent = fake_b.requests()[-1]["body"]
    assert sent["temperature"] == 0.1
    assert sent["messages"][0] == {"role": "system", "content": "Answer in French.\n\nYou are terse."}
    assert row(headers["x-request-id"]).decision["experiment"]["overrides"] == ["system_prompt_prefix", "temperature"]


def test_targeting_narrows_the_experiment_to_context_types_and_keys(gateway, fake, fake_b):
    control, treatment = two_models(fake, fake_b, "tgt")
    experiment = make_experiment("exp-tgt", [control, treatment], target_context_types=["code_generation"])
    raw = make_key(name="targeted")
    other = make_key(name="other")
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "tgt-a")
    code = [{"role": "user", "content": "Write a Python function that parses an ISO 8601 date and returns a datetime."}]

    assert "x-chatvault-experiment" in chat(gateway, raw, "tgt-a", user="u", messages=code)[1]
    assert "x-chatvault-experiment" not in chat(gateway, raw, "tgt-a", user="u")[1]  # plain chat is not targeted

    from routing.models import ApiKey

    experiment.target_keys.set([ApiKey.objects.get(name="targeted")])
    wait_for_reload(gateway)
    assert "x-chatvault-experiment" in chat(gateway, raw, "tgt-a", user="u", messages=code)[1]
    assert "x-chatvault-experiment" not in chat(gateway, other, "tgt-a", user="u", messages=code)[1]


def test_an_experiment_stops_taking_traffic_at_its_end_time(gateway, fake, fake_b):
    from datetime import timedelta

    from django.utils import timezone

    control, treatment = two_models(fake, fake_b, "end")
    make_experiment("exp-end", [control, treatment], ends_at=timezone.now() + timedelta(seconds=3))
    raw = make_key()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "end-a")
    assert "x-chatvault-experiment" in chat(gateway, raw, "end-a", user="u")[1]
    wait_until(lambda: "x-chatvault-experiment" not in chat(gateway, raw, "end-a", user="u")[1], timeout=10,
               message="the experiment to end")  # fmt: skip


def test_a_model_chosen_by_auto_selection_is_claimed_like_a_named_one(gateway, fake, fake_b):
    from routing.models import ApiKey

    control, treatment = two_models(fake, fake_b, "aut")
    make_experiment("exp-aut", [control, treatment], weights=[0.0, 1.0])
    raw = make_key(name="auto-pool")
    key = ApiKey.objects.get(name="auto-pool")
    key.auto_models.set([control])  # selection can only choose aut-a; the experiment moves it to aut-b
    key.save()
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "aut-a")

    status, headers, _ = chat(gateway, raw, "auto", user="u")
    assert status == 200
    assert (headers["x-chatvault-variant"], headers["x-chatvault-model"]) == ("aut-b", "aut-b")
    stored = row(headers["x-request-id"])
    assert stored.decision["selection"]["winner"] == "aut-a" and stored.served_model == "aut-b"
