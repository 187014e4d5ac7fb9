"""POST /v1/feedback through a live gateway (checking, auth, replacing, rows still queued, graceful shutdown), its
writer and recent-request memory in process, and feedback reaching selection's quality term."""

import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from experiments import feedback
from experiments.models import Feedback
from experiments.quality import rollup_quality
from routing.models import ApiKey, ConfigRevision, Model, RequestLog
from tests.factories import make_experiment, make_key, make_model, tune, wait_for_model, wait_for_reload
from tests.gateway import Gateway, wait_until
from tests.helpers import MESSAGES

pytestmark = pytest.mark.django_db(transaction=True)

CODE_PROMPT = "Write a Python function that parses an ISO 8601 date string and returns a datetime."


def chat(gateway, raw, model, **fields):
    """Send a chat completion; return its response headers."""
    body = json.dumps({"model": model, "messages": MESSAGES, **fields}).encode()
    status, headers, answer = gateway.request("POST", "/v1/chat/completions", body,
                                              {"Authorization": f"Bearer {raw}"})  # fmt: skip
    assert status == 200, answer
    return headers


def give(gateway, raw, body):
    """POST /v1/feedback; return (status, parsed JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, answer = gateway.request("POST", "/v1/feedback", data, {"Authorization": f"Bearer {raw}"})
    return status, json.loads(answer)


def stored(request_id, metric="feedback", score=None):
    """Wait until the feedback row of a request (with that score, if given) is written; return it."""

    def found():
        row = Feedback.objects.filter(request_id=request_id, metric=metric).first()
        return row if row is not None and (score is None or row.score == score) else None

    return wait_until(found, message=f"feedback row {request_id}/{metric}")


def logged(request_id):
    """Wait until the RequestLog row of a request is written; return it."""
    return wait_until(lambda: RequestLog.objects.filter(request_id=request_id).first(), message="the log row")


@pytest.fixture
def served(gateway, fake):
    """Return (raw key, request id) of a chat completion served by the gateway."""
    make_model("fb-model", [fake])
    raw = make_key(name="fb")
    wait_for_model(gateway, raw, "fb-model")
    return raw, chat(gateway, raw, "fb-model")["x-request-id"]


def test_it_stores_the_score_and_answers_the_stored_feedback(gateway, served):
    raw, request_id = served
    written = gateway.health()["feedback"]["written"]
    status, answer = give(gateway, raw, {"request_id": request_id, "score": 0.75, "comment": "good\x00 \ud800 answer"})
    assert status == 200, answer
    assert answer == {
        "object": "feedback",
        "request_id": request_id,
        "metric": "feedback",
        "score": 0.75,
        "comment": "good\\x00 \\ud800 answer",  # made storable: Postgres refuses NUL and lone surrogates
        "model": "fb-model",
        "context_type": None,
        "experiment": None,
        "variant": None,
        "created_at": answer["created_at"],
    }
    row = stored(request_id)
    log = logged(request_id)
    assert (row.score, row.comment, row.served_model) == (0.75, answer["comment"], "fb-model")
    assert row.api_key_id == log.api_key_id and row.request_created_at == log.created_at
    assert row.created_at.isoformat() == answer["created_at"]
    wait_until(lambda: gateway.health()["feedback"]["written"] == written + 1, message="feedback counted written")
    assert gateway.health()["feedback"]["dropped"] == 0


MISSING = object()
BAD = [
    ({"request_id": MISSING, "score": 1}, "request_id"),
    ({"request_id": None, "score": 1}, "request_id"),
    ({"request_id": "not-a-uuid", "score": 1}, "request_id"),
    ({"request_id": 12345, "score": 1}, "request_id"),
    ({"request_id": "0" * 100, "score": 1}, "request_id"),
    ({"score": None}, "score"),
    ({}, "score"),
    ({"score": 2}, "score"),
    ({"score": -0.5}, "score"),
    ({"score": 1.5}, "score"),
    ({"score": -2}, "score"),
    ({"score": 10**400}, "score"),
    ({"score": "1"}, "score"),
    ({"score": "up"}, "score"),
    ({"score": [1]}, "score"),
    ({"score": 1, "metric": "Helpful"}, "metric"),
    ({"score": 1, "metric": "1st"}, "metric"),
    ({"score": 1, "metric": ""}, "metric"),
    ({"score": 1, "metric": "a" * 65}, "metric"),
    ({"score": 1, "metric": 7}, "metric"),
    ({"score": 1, "comment": 7}, "comment"),
    ({"score": 1, "comment": "x" * 4_001}, "comment"),
    ({"score": 1, "comment": ["a"]}, "comment"),
]


@pytest.mark.parametrize("fields, param", BAD)
def test_each_bad_field_is_a_400_naming_it(gateway, served, fields, param):
    raw, request_id = served
    body = {name: value for name, value in {"request_id": request_id, **fields}.items() if value is not MISSING}
    status, answer = give(gateway, raw, body)
    assert status == 400, answer
    assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw_score", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_score_that_is_not_a_finite_number_is_a_400(gateway, served, raw_score):
    raw, request_id = served
    body = b'{"request_id": "%s", "score": %s}' % (request_id.encode(), raw_score)
    status, answer = give(gateway, raw, body)
    assert status == 400 and answer["error"]["param"] == "score"


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"not json"])
def test_a_body_that_is_not_an_object_is_a_400(gateway, served, body):
    status, answer = give(gateway, served[0], body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"


def test_without_a_key_it_is_a_401(gateway, served):
    status, _, _ = gateway.request("POST", "/v1/feedback", json.dumps({"request_id": served[1], "score": 1}).encode())
    assert status == 401


@pytest.mark.parametrize(
    "score, expected",
    [(True, 1.0), (False, 0.0), (1, 1.0), (-1, 0.0), (0, 0.0), (1.0, 1.0), (0.0, 0.0), (0.25, 0.25), (-0.0, 0.0)],
)
def test_booleans_and_thumbs_become_scores_from_0_to_1(gateway, served, score, expected):
    raw, request_id = served
    status, answer = give(gateway, raw, {"request_id": request_id, "score": score, "metric": "thumbs"})
    assert status == 200 and answer["score"] == expected and answer["metric"] == "thumbs"
    assert stored(request_id, "thumbs", expected).score == expected


def test_another_keys_request_is_not_found_exactly_like_an_unknown_id(gateway, served):
    raw, request_id = served
    other = make_key(name="fb-other")
    wait_for_model(gateway, other, "fb-model")
    answers = []
    for key, rated in ((other, request_id), (raw, str(uuid.uuid4())), (other, str(uuid.uuid4()))):
        began = time.monotonic()
        status, answer = give(gateway, key, {"request_id": rated, "score": 1})
        answers.append((status, answer))
        # Both are looked for in the database for as long: the time taken tells nothing either.
        assert time.monotonic() - began >= feedback.LOOKUP_RETRY_SECONDS - 0.1
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 404 and answers[0][1]["error"]["param"] == "request_id"
    assert answers[0][1]["error"]["code"] == "request_not_found"
    assert give(gateway, raw, {"request_id": request_id, "score": 1})[0] == 200, "its own key may rate it"
    stored(request_id)
    assert Feedback.objects.count() == 1


def test_a_second_post_for_the_same_request_and_metric_replaces_the_first(gateway, served):
    raw, request_id = served
    assert give(gateway, raw, {"request_id": request_id, "score": 1, "comment": "first"})[0] == 200
    stored(request_id, score=1.0)
    status, answer = give(gateway, raw, {"request_id": request_id, "score": False, "comment": "second"})
    assert status == 200 and answer["score"] == 0.0
    row = stored(request_id, score=0.0)
    assert row.comment == "second" and row.created_at.isoformat() == answer["created_at"]
    assert give(gateway, raw, {"request_id": request_id, "score": 0.5, "metric": "accuracy"})[0] == 200
    stored(request_id, "accuracy")
    assert sorted(Feedback.objects.values_list("metric", "score")) == [("accuracy", 0.5), ("feedback", 0.0)]


def test_a_request_another_worker_has_not_written_yet_is_found_when_its_row_lands(gateway, served):
    raw, _ = served
    key = ApiKey.objects.get(name="fb")
    request_id = uuid.uuid4()  # served by "another worker": not in this gateway's memory
    created_at = timezone.now() - timedelta(seconds=1)

    def write_later():
        time.sleep(0.6)
        RequestLog.objects.create(request_id=request_id, created_at=created_at, api_key=key, served_model="fb-model",
                                  outcome="ok", status_code=200, context_type="math", experiment="exp-x",
                                  variant="b", experiment_unit="u-hash")  # fmt: skip

    writer = threading.Thread(target=write_later)
    writer.start()
    status, answer = give(gateway, raw, {"request_id": str(request_id), "score": 1})
    writer.join()
    assert status == 200, answer
    assert (answer["context_type"], answer["experiment"], answer["variant"]) == ("math", "exp-x", "b")
    row = stored(request_id)
    assert (row.experiment, row.variant, row.experiment_unit) == ("exp-x", "b", "u-hash")
    assert row.request_created_at == created_at


def test_feedback_copies_the_experiment_and_variant_of_the_request(gateway, fake, fake_b):
    a, b = make_model("fb-exp-a", [fake]), make_model("fb-exp-b", [fake_b])
    make_experiment("fb-exp", [a, b])
    raw = make_key(name="fb-exp")
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "fb-exp-a")
    seen = {}
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        headers = chat(gateway, raw, "fb-exp-a", user=user)
        seen[headers["x-chatvault-variant"]] = headers["x-request-id"]
    assert set(seen) == {"fb-exp-a", "fb-exp-b"}
    for variant, request_id in seen.items():
        status, answer = give(gateway, raw, {"request_id": request_id, "score": -1})
        assert status == 200 and (answer["experiment"], answer["variant"]) == ("fb-exp", variant)
        log, row = logged(request_id), stored(request_id)
        assert (row.experiment, row.variant, row.experiment_unit) == (log.experiment, log.variant, log.experiment_unit)
        assert log.experiment_unit and row.served_model == log.served_model == variant


def test_feedback_favouring_a_model_raises_its_quality_in_selection(gateway, fake, fake_b):
    a = make_model("fb-q-a", [fake], capabilities=["code_generation"])
    b = make_model("fb-q-b", [fake_b], capabilities=["code_generation"])

    def pool_key(name, *models):
        raw = make_key(name=name)
        key = ApiKey.objects.get(name=name)
        key.auto_models.set(Model.objects.filter(name__in=[m.name for m in models]))
        key.save()  # what admin does: a save bumps the configuration revision
        return raw

    only_a, only_b, both = pool_key("fb-q-a", a), pool_key("fb-q-b", b), pool_key("fb-q-both", a, b)
    wait_for_reload(gateway)
    wait_for_model(gateway, both, "fb-q-b")

    def recommend():
        body = json.dumps({"messages": [{"role": "user", "content": CODE_PROMPT}]}).encode()
        status, _, answer = gateway.request("POST", "/v1/models/recommend", body, {"Authorization": f"Bearer {both}"})
        assert status == 200, answer
        return {r["model"]: r for r in json.loads(answer)["recommendations"]}

    before = recommend()
    assert before["fb-q-a"]["rank"] == 1, "equal models: the tie breaks by name"
    assert before["fb-q-a"]["breakdown"]["quality"] == before["fb-q-b"]["breakdown"]["quality"] == 0.5
    for raw, score in ((only_a, 0), (only_b, 1)):
        for _ in range(10):
            headers = chat(gateway, raw, "auto", messages=[{"role": "user", "content": CODE_PROMPT}])
            assert headers["x-chatvault-context-type"] == "code_generation"
            assert give(gateway, raw, {"request_id": headers["x-request-id"], "score": score})[0] == 200
    wait_until(lambda: Feedback.objects.count() == 20, message="20 feedback rows")
    rollup_quality()  # what the experiments' beat task does every minute
    ConfigRevision.bump()  # figures reload with the configuration (and every minute)
    wait_for_reload(gateway)
    after = recommend()
    assert after["fb-q-b"]["breakdown"]["quality"] > after["fb-q-a"]["breakdown"]["quality"]

    # The two models' measured latencies differ by chance; a quality weight above the performance weight decides.
    tune(gateway, selection_weight_quality=1.0)
    after = recommend()
    quality_a, quality_b = after["fb-q-a"]["breakdown"]["quality"], after["fb-q-b"]["breakdown"]["quality"]
    assert quality_b == round((10 + 0.5 * 20) / 30, 4) and quality_a == round((0 + 0.5 * 20) / 30, 4)
    assert after["fb-q-b"]["rank"] == 1 and after["fb-q-b"]["score"] > after["fb-q-a"]["score"]
    weights = {"capability": 0.6, "performance": 0.25, "cost": 0.15, "quality": 1.0}
    for model in after.values():
        expected = sum(weight * model["breakdown"][part] for part, weight in weights.items())
        assert model["score"] == pytest.approx(expected, abs=1e-3), "the score is the weighted parts, quality at 1.0"
    assert "feedback 1.00 from 10 ratings" in after["fb-q-b"]["reasons"]


def test_feedback_on_a_request_still_queued_is_written_at_graceful_shutdown(database_url, fake):
    make_model("fb-shutdown", [fake])
    raw = make_key(name="fb-shutdown")
    # Rows would sit in memory for a minute: only the shutdown flush can write them in time.
    with Gateway.start(database_url, chatvault_log_flush_seconds=60, chatvault_log_batch_size=100000) as gw:
        wait_for_model(gw, raw, "fb-shutdown")
        request_id = chat(gw, raw, "fb-shutdown")["x-request-id"]
        assert not RequestLog.objects.filter(request_id=request_id).exists(), "its row is still queued"
        began = time.monotonic()
        status, answer = give(gw, raw, {"request_id": request_id, "score": True, "comment": "queued"})
        assert status == 200, answer
        assert time.monotonic() - began < 1, "found in this worker's memory, not by waiting on the database"
        assert gw.health()["feedback"]["pending"] == 1
        assert gw.terminate() in (0, -15)
        log = gw.log()
    assert "ChatVault worker stopped" in log and "Traceback" not in log
    row = Feedback.objects.get(request_id=request_id)
    assert (row.score, row.comment, row.served_model) == (1.0, "queued", "fb-shutdown")
    assert row.request_created_at == RequestLog.objects.get(request_id=request_id).created_at


# --- in process: the writer and the memory of recent requests --------------------------------------------------------


def feedback_row(request_id, score, at, metric="feedback"):
    """Return a feedback row as `feedback_give` queues it."""
    return {"request_id": request_id, "metric": metric, "score": score, "comment": "", "api_key_id": None,
            "experiment": "", "variant": "", "experiment_unit": "", "served_model": "m", "context_type": "",
            "request_created_at": None, "created_at": at, "updated_at": at}  # fmt: skip


def test_the_later_post_wins_whatever_order_the_rows_are_written_in():
    request_id, now = uuid.uuid4(), timezone.now()
    feedback.write_batch([feedback_row(request_id, 0.9, now)])
    feedback.write_batch([feedback_row(request_id, 0.1, now - timedelta(seconds=1))])  # older, from another worker
    assert Feedback.objects.get(request_id=request_id).score == 0.9
    feedback.write_batch([feedback_row(request_id, 0.2, now + timedelta(seconds=1)),
                          feedback_row(request_id, 0.3, now + timedelta(seconds=2))])  # fmt: skip
    assert Feedback.objects.get(request_id=request_id).score == 0.3


def test_a_row_the_database_refuses_is_dropped_alone():
    now = timezone.now()
    good = [feedback_row(uuid.uuid4(), 0.5, now) for _ in range(5)]
    bad = feedback_row(uuid.uuid4(), 7.0, now)  # outside the score range the table enforces
    writer = feedback.FeedbackWriter(batch_size=100, flush_seconds=0.01)
    writer.start()
    for row in good[:2] + [bad] + good[2:]:
        writer.submit(row)
    writer.stop()
    assert (writer.written, writer.dropped, writer.pending()) == (5, 1, 0)
    assert Feedback.objects.count() == 5


def test_recent_requests_are_bounded_in_count_and_age():
    recent = feedback.RecentRequests(max_size=3, max_age=0.2)
    ids = [uuid.uuid4() for _ in range(4)]
    for request_id in ids:
        recent.remember({"request_id": request_id, "endpoint": "chat.completions", "api_key_id": 1,
                         "served_model": "m", "created_at": None})  # fmt: skip
    assert recent.get(ids[0]) is None and recent.get(ids[3]).served_model == "m"
    recent.remember({"request_id": uuid.uuid4(), "endpoint": "models", "api_key_id": 1})
    recent.remember({"request_id": uuid.uuid4(), "endpoint": "chat.completions", "api_key_id": None})
    assert [recent.get(i) is not None for i in ids] == [False, True, True, True], "only keyed chat requests are kept"
    time.sleep(0.25)
    assert recent.get(ids[3]) is None


