"""Tests for the experiments admin: the list at a glance, the edit form's checks, the status actions, the results
page (table, SRM banner, sample size, charts, actions, promote) and who may reach it."""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments import statistics
from experiments.models import Experiment, ExperimentStatus, Feedback, UnitRollup, Variant, VariantRollup
from routing.models import ApiKey, Model
from tests.factories import make_experiment

pytestmark = pytest.mark.django_db

HOUR = timedelta(hours=1)


@pytest.fixture
def models():
    """Return four models (no instances: nothing here sends a request)."""
    return {name: Model.objects.create(name=name) for name in ("m-a", "m-b", "m-c", "m-d")}


def url(name, *args):
    """Return an experiments admin URL."""
    return reverse(f"admin:experiments_{name}", args=args)


def message_texts(response):
    """Return the texts of the messages queued on a response."""
    return [str(m) for m in get_messages(response.wsgi_request)]


def add_units(experiment_id, variant, values, *, start=0, successes=None, tokens=None):
    """Create one UnitRollup per latency value (one request each); successes and tokens per unit if given."""
    now = timezone.now()
    UnitRollup.objects.bulk_create(
        UnitRollup(
            experiment=experiment_id,
            variant=variant,
            unit=f"{variant}-{start + i}",
            first_seen=now,
            last_seen=now,
            requests=1,
            successes=1 if successes is None else successes[i],
            latency_ms_n=1,
            latency_ms_sum=value,
            completion_tokens_n=0 if tokens is None else 1,
            completion_tokens_sum=0 if tokens is None else tokens[i],
        )
        for i, value in enumerate(values)
    )


def form_data(experiment_id, variants, *, status="draft", keys=(), initial=(), **overrides):
    """Return POST data for the experiment form with its variant rows (dicts of model pk, name, weight, ...)."""
    data = {
        "id": experiment_id,
        "name": f"Experiment {experiment_id}",
        "status": status,
        "hypothesis": "b is faster",
        "traffic_percentage": "10",
        "target_context_types": "[]",
        "target_keys": [str(key.pk) for key in keys],
        "primary_metric": "success_rate",
        "guardrail_metrics": '["latency_ms"]',
        "metric_directions": "{}",
        "starts_at_0": "",
        "starts_at_1": "",
        "ends_at_0": "",
        "ends_at_1": "",
        "minimum_detectable_effect": "",
        "salt": "",
        "variants-TOTAL_FORMS": str(len(variants)),
        "variants-INITIAL_FORMS": str(len(initial)),
        "variants-MIN_NUM_FORMS": "0",
        "variants-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(variants):
        row = {"name": "", "weight": "1", "overrides": "{}", **row}
        if i < len(initial):
            row.update(id=str(initial[i].pk), experiment=experiment_id)
        if row.pop("is_control", False):
            row["is_control"] = "on"
        data.update({f"variants-{i}-{field}": value for field, value in row.items()})
    data.update(overrides)
    return data


def formset_errors(response):
    """Return the variant formset's non-form errors on a re-shown form."""
    assert response.status_code == 200, "the form was accepted"
    return [str(e) for e in response.context["inline_admin_formsets"][0].formset.non_form_errors()]


# --- The list -------------------------------------------------------------------------------------------------------


def test_the_list_shows_units_days_and_srm(admin_client, models):
    fair = make_experiment("exp-fair", [models["m-a"], models["m-b"]], started_at=timezone.now() - timedelta(days=3))
    skewed = make_experiment("exp-skew", [models["m-c"], models["m-d"]])
    make_experiment("exp-draft", [], status="draft")
    add_units("exp-fair", "m-a", [100.0] * 500)
    add_units("exp-fair", "m-b", [100.0] * 510)
    add_units("exp-skew", "m-c", [100.0] * 700)
    add_units("exp-skew", "m-d", [100.0] * 300)

    response = admin_client.get(url("experiment_changelist"))
    assert response.status_code == 200
    rows = {row.pk: row for row in response.context["cl"].result_list}
    admin = response.context["cl"].model_admin
    assert admin.units(rows["exp-fair"]) == "1,010" and admin.units(rows["exp-skew"]) == "1,000"
    assert admin.units(rows["exp-draft"]) == "0"
    assert "ok" in admin.srm(rows["exp-fair"]) and "mismatch" in admin.srm(rows["exp-skew"])
    assert admin.srm(rows["exp-draft"]) == "—"
    assert admin.days(rows["exp-fair"]) == "3.0" and admin.days(rows["exp-draft"]) == "—"
    html = response.content.decode()
    assert "1,010" in html and "srm-mismatch" in html and "status-running" in html
    assert url("experiment_results", fair.pk) in html and url("experiment_results", skewed.pk) in html


def test_the_list_reads_units_in_one_query_for_the_page(admin_client, models):
    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(url("experiment_changelist")).status_code == 200
        return len(captured)

    make_experiment("exp-1", [models["m-a"], models["m-b"]])
    add_units("exp-1", "m-a", [1.0] * 3)
    few = queries()
    for i in range(2, 8):
        make_experiment(f"exp-{i}", [models["m-c"], models["m-d"]], status="draft")
        add_units(f"exp-{i}", "m-c", [1.0] * 2, start=10 * i)
    assert queries() == few


def test_the_list_filters_by_status_and_searches(admin_client, models):
    make_experiment("exp-run", [models["m-a"], models["m-b"]], name="Faster model")
    make_experiment("exp-draft", [models["m-c"], models["m-d"]], status="draft", name="Cheaper model")

    def listed(**query):
        return {e.pk for e in admin_client.get(url("experiment_changelist"), query).context["cl"].result_list}

    assert listed(status__exact="draft") == {"exp-draft"}
    assert listed(q="Faster") == {"exp-run"}
    assert listed(q="exp-dr") == {"exp-draft"}


# --- The form -------------------------------------------------------------------------------------------------------


def test_the_form_saves_an_experiment_and_makes_the_first_variant_the_control(admin_client, models):
    data = form_data("exp-new", [{"model": models["m-a"].pk}, {"model": models["m-b"].pk, "name": "fast"}])
    response = admin_client.post(url("experiment_add"), data)
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    variants = list(Variant.objects.filter(experiment="exp-new").order_by("position"))
    assert [(v.name, v.is_control, v.position) for v in variants] == [("m-a", True, 0), ("fast", False, 1)]
    entry = LogEntry.objects.get(object_id="exp-new")
    assert entry.is_addition() and entry.user.username == "admin"


def test_the_form_refuses_an_overlap_naming_both_experiments(admin_client, models):
    make_experiment("exp-live", [models["m-a"], models["m-b"]], name="Live one")
    data = form_data("exp-new", [{"model": models["m-b"].pk}, {"model": models["m-c"].pk}], status="running")
    (error,) = formset_errors(admin_client.post(url("experiment_add"), data))
    assert "exp-new" in error and "exp-live" in error and "m-b" in error
    assert not Experiment.objects.filter(pk="exp-new").exists()
    # The same variants are fine in a draft: only running experiments claim requests.
    data["status"] = "draft"
    assert admin_client.post(url("experiment_add"), data).status_code == 302


def test_the_overlap_check_reads_the_form_not_the_database(admin_client, models):
    key_1 = ApiKey.objects.create(name="one", prefix="cv-one00000", key_hash="1" * 64)
    key_2 = ApiKey.objects.create(name="two", prefix="cv-two00000", key_hash="2" * 64)
    live = make_experiment("exp-live", [models["m-a"], models["m-b"]])
    live.target_keys.set([key_1])
    draft = make_experiment("exp-next", [models["m-c"], models["m-d"]], status="draft")
    saved = list(draft.variants.order_by("position"))
    # Saved variants (m-c, m-d) don't overlap; the form swaps m-d for m-b, which does, on key one.
    rows = [{"model": models["m-c"].pk, "name": "m-c"}, {"model": models["m-b"].pk, "name": "m-b"}]
    data = form_data("exp-next", rows, status="running", keys=[key_1], initial=saved)
    (error,) = formset_errors(admin_client.post(url("experiment_change", "exp-next"), data))
    assert "exp-live" in error and "exp-next" in error and "one" in error
    # Narrowed to the other key (in the form, not yet saved) the two no longer meet.
    data = form_data("exp-next", rows, status="running", keys=[key_2], initial=saved)
    assert admin_client.post(url("experiment_change", "exp-next"), data).status_code == 302
    draft.refresh_from_db()
    assert draft.status == ExperimentStatus.RUNNING and draft.started_at is not None
    assert set(draft.variants.values_list("model__name", flat=True)) == {"m-c", "m-b"}


@pytest.mark.parametrize(
    ("rows", "status", "expected"),
    [
        ([{"is_control": True}, {"is_control": True}], "draft", "at most one variant as the control"),
        ([{"weight": "0"}, {"weight": "0"}], "draft", "weight above 0"),
        ([{}, {"model": "m-a"}], "draft", "its own model: m-a"),
        ([{"name": "x"}, {"name": "x"}], "draft", "names must differ: x"),
        ([{}], "running", "at least two variants"),
    ],
)
def test_the_form_refuses_bad_variants(admin_client, models, rows, status, expected):
    names = iter(("m-a", "m-b"))
    variants = [{**row, "model": models[row.get("model") or next(names)].pk} for row in rows]
    errors = formset_errors(admin_client.post(url("experiment_add"), form_data("exp-bad", variants, status=status)))
    assert any(expected in error for error in errors), errors
    assert not Experiment.objects.filter(pk="exp-bad").exists()


def test_the_form_refuses_to_run_an_experiment_whose_end_has_passed(admin_client, models):
    rows = [{"model": models["m-a"].pk}, {"model": models["m-b"].pk}]
    data = form_data("exp-old", rows, status="running", ends_at_0="2020-01-01", ends_at_1="00:00:00")
    (error,) = formset_errors(admin_client.post(url("experiment_add"), data))
    assert "ended at 2020-01-01" in error


def test_a_status_set_in_the_form_is_stamped_like_the_services_do(admin_client, models):
    experiment = make_experiment("exp-1", [models["m-a"], models["m-b"]], started_at=timezone.now() - HOUR)
    saved = list(experiment.variants.order_by("position"))
    rows = [{"model": models["m-a"].pk, "name": "m-a", "is_control": True}, {"model": models["m-b"].pk, "name": "m-b"}]
    data = form_data("exp-1", rows, status="stopped", initial=saved)
    assert admin_client.post(url("experiment_change", "exp-1"), data).status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == "stopped" and experiment.stopped_at is not None
    assert "Status" in LogEntry.objects.get(object_id="exp-1").get_change_message()


def test_the_form_refuses_overrides_assignment_does_not_know(admin_client, models):
    rows = [{"model": models["m-a"].pk, "overrides": '{"temprature": 0.2}'}, {"model": models["m-b"].pk}]
    response = admin_client.post(url("experiment_add"), form_data("exp-bad", rows))
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.errors[0]["overrides"]
    assert "unknown override 'temprature'" in errors[0]
    rows[0]["overrides"] = '{"temperature": "hot"}'
    response = admin_client.post(url("experiment_add"), form_data("exp-bad", rows))
    assert "must be a number" in response.context["inline_admin_formsets"][0].formset.errors[0]["overrides"][0]
    rows[0]["overrides"] = '{"temperature": 0.2, "system_prompt_prefix": "Be brief."}'
    assert admin_client.post(url("experiment_add"), form_data("exp-bad", rows)).status_code == 302


def test_the_form_refuses_unknown_context_types_and_bad_metric_directions(admin_client, models):
    rows = [{"model": models["m-a"].pk}, {"model": models["m-b"].pk}]
    data = form_data("exp-bad", rows, target_context_types='["poetry"]', metric_directions='{"feedback": "up"}')
    errors = admin_client.post(url("experiment_add"), data).context["adminform"].form.errors
    assert "poetry" in errors["target_context_types"][0]
    assert "higher" in errors["metric_directions"][0]


def test_the_change_page_links_to_the_results(admin_client, models):
    make_experiment("exp-1", [models["m-a"], models["m-b"]])
    html = admin_client.get(url("experiment_change", "exp-1")).content.decode()
    assert url("experiment_results", "exp-1") in html
    assert "collapse" in html and "reassigns every unit" in html  # the salt, folded away with its warning


# --- Actions on the list --------------------------------------------------------------------------------------------


def test_list_actions_change_status_and_log_history(admin_client, models):
    make_experiment("exp-1", [models["m-a"], models["m-b"]], status="draft")
    make_experiment("exp-2", [models["m-c"], models["m-d"]], status="draft")
    changelist = url("experiment_changelist")
    response = admin_client.post(changelist, {"action": "start_selected", "_selected_action": ["exp-1", "exp-2"]})
    assert "Started 2 experiments." in message_texts(response)
    assert set(Experiment.objects.values_list("status", flat=True)) == {"running"}
    admin_client.post(changelist, {"action": "pause_selected", "_selected_action": ["exp-1"]})
    admin_client.post(changelist, {"action": "stop_selected", "_selected_action": ["exp-2"]})
    assert dict(Experiment.objects.values_list("id", "status")) == {"exp-1": "paused", "exp-2": "stopped"}
    history = {(e.object_id, e.get_change_message()) for e in LogEntry.objects.all()}
    assert history == {("exp-1", "Started."), ("exp-2", "Started."), ("exp-1", "Paused."), ("exp-2", "Stopped.")}


def test_a_refused_start_is_shown_and_changes_nothing(admin_client, models):
    make_experiment("exp-live", [models["m-a"], models["m-b"]])
    make_experiment("exp-2", [models["m-b"], models["m-c"]], status="draft")
    response = admin_client.post(
        url("experiment_changelist"), {"action": "start_selected", "_selected_action": ["exp-2"]}
    )
    (message,) = message_texts(response)
    assert "exp-2" in message and "exp-live" in message
    assert Experiment.objects.get(pk="exp-2").status == "draft"
    assert not LogEntry.objects.exists()


# --- The results page -----------------------------------------------------------------------------------------------

CONTROL_LATENCY = [90.0, 95.0, 100.0, 105.0, 110.0] * 8  # 40 units, mean 100
TREATMENT_LATENCY = [140.0, 145.0, 150.0, 155.0, 160.0] * 8  # 40 units, mean 150: clearly worse
CONTROL_TOKENS = [80, 90, 100, 110, 120] * 8
TREATMENT_TOKENS = [84, 94, 104, 114, 124] * 8  # +4 on a spread of ~14: a p-value in the middle


@pytest.fixture
def measured(models):
    """Return a running experiment (m-a control, m-b) with 40 units per variant in the rollups and 3 hours of data."""
    experiment = make_experiment(
        "exp-lat",
        [models["m-a"], models["m-b"]],
        name="Latency test",
        hypothesis="m-b answers as well, faster <or not>",
        primary_metric="latency_ms",
        guardrail_metrics=["success_rate"],
        started_at=timezone.now() - timedelta(days=2),
    )
    add_units("exp-lat", "m-a", CONTROL_LATENCY, tokens=CONTROL_TOKENS, successes=[1] * 38 + [0] * 2)
    add_units("exp-lat", "m-b", TREATMENT_LATENCY, tokens=TREATMENT_TOKENS, successes=[1] * 37 + [0] * 3)
    start = timezone.now().replace(minute=0, second=0, microsecond=0) - 3 * HOUR
    for hour in range(3):
        for variant, mean in (("m-a", 100.0), ("m-b", 150.0 + hour)):
            if variant == "m-b" and hour == 1:
                continue  # a gap in the treatment's line
            VariantRollup.objects.create(
                experiment="exp-lat",
                variant=variant,
                bucket_start=start + hour * HOUR,
                requests=10,
                units=10,
                sums={"latency_ms": [10, mean * 10, mean * mean * 10]},
            )
    return experiment


def cells(html, metric, variant):
    """Return {cell class: text} of a variant's row in a metric's table on the results page."""
    table = re.search(rf'<div class="module metric" id="metric-{metric}">(.*?)</table>', html, re.S).group(1)
    row = re.search(rf'<tr class="variant-row" data-variant="{variant}">(.*?)</tr>', table, re.S).group(1)
    found = dict(re.findall(r'<td class="num ([\w-]+)">(.*?)</td>', row))
    found["verdict"] = re.search(r'<span class="verdict ([\w-]+)">(.*?)</span>', row).groups()
    return found


def test_the_results_page_shows_the_table_with_the_right_numbers(admin_client, measured):
    response = admin_client.get(url("experiment_results", "exp-lat"))
    assert response.status_code == 200
    html = response.content.decode()
    control, treatment = cells(html, "latency_ms", "m-a"), cells(html, "latency_ms", "m-b")
    assert control["mean"] == "100" and treatment["mean"] == "150"
    assert treatment["diff"] == "+50" and treatment["lift"] == "+50.0 %"
    assert control["verdict"] == ("verdict-control", "control")
    assert treatment["verdict"] == ("verdict-worse", "worse")  # lower latency is better
    # A middling difference: the figures are Welch's on the unit means, and the verdict stays grey.
    sd = lambda xs: statistics.math.sqrt(sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1))  # noqa: E731
    welch = statistics.welch(100.0, sd(CONTROL_TOKENS), 40, 104.0, sd(TREATMENT_TOKENS), 40)
    tokens = cells(html, "completion_tokens", "m-b")
    assert tokens["p-value"] == f"{welch.p_value:.4f}"
    assert tokens["ci"] == f"[{welch.ci_low:.4g}, {welch.ci_high:.4g}]"
    assert tokens["verdict"] == ("verdict-inconclusive", "inconclusive")
    assert cells(html, "ttft_ms", "m-b")["verdict"] == ("verdict-insufficient-data", "insufficient data")
    # Labels analysts know, the primary metric first and marked, the guardrail marked, the method stated.
    for label in ("lift", "95 % CI", "always-valid 95 % CI", "p-value", "adjusted p-value (Holm)", "p50", "p95"):
        assert f">{label}</th>" in html
    assert [t["metric"] for t in response.context["tables"]][:2] == ["latency_ms", "success_rate"]
    primary_badge = html.index('class="metric-role role-primary"')
    assert html.index('id="metric-latency_ms"') < primary_badge < html.index('id="metric-success_rate"')
    assert 'class="metric-role role-guardrail"' in html
    assert "Holm" in html and "randomisation unit" in html
    assert "m-b answers as well, faster &lt;or not&gt;" in html


def test_the_results_page_draws_a_chart_per_metric(admin_client, measured):
    html = admin_client.get(url("experiment_results", "exp-lat")).content.decode()
    chart = re.search(r'<div class="chart" id="chart-latency_ms">(<svg.*?</svg>)</div>', html, re.S).group(1)
    assert chart.count('class="legend"') == 2 and ">m-a</text>" in chart and ">m-b</text>" in chart
    assert chart.count("<polyline") == 1 and chart.count("<circle") == 2  # the treatment's line has a gap
    charted = set(re.findall(r'<div class="chart" id="chart-([a-z_]+)">', html))
    assert charted == {"latency_ms"}  # the fixture's hours hold latency only: no empty chart for the rest


def test_the_results_page_warns_of_a_sample_ratio_mismatch(admin_client, models):
    make_experiment("exp-skew", [models["m-a"], models["m-b"]])
    add_units("exp-skew", "m-a", [100.0] * 700)
    add_units("exp-skew", "m-b", [100.0] * 300)
    html = admin_client.get(url("experiment_results", "exp-skew")).content.decode()
    banner = re.search(r'<div class="srm-warning" id="srm-warning">(.*?)</div>', html, re.S).group(1)
    assert "p-value &lt; 0.0001" in banner and "70.0 %" in banner and "30.0 %" in banner and "50.0 %" in banner


def test_the_results_page_has_no_srm_banner_on_a_fair_split(admin_client, measured):
    assert 'id="srm-warning"' not in admin_client.get(url("experiment_results", "exp-lat")).content.decode()


def test_the_sample_size_shows_progress_or_asks_for_the_mde(admin_client, measured):
    html = admin_client.get(url("experiment_results", "exp-lat")).content.decode()
    assert "Set a minimum detectable effect" in html and "<progress" not in html
    Experiment.objects.filter(pk="exp-lat").update(minimum_detectable_effect=0.05)
    response = admin_client.get(url("experiment_results", "exp-lat"))
    size = response.context["sample_size"]
    assert size["so_far"] == "40" and size["mde"] == "5 %" and "<progress" in response.content.decode()
    needed = int(size["needed"].replace(",", ""))
    assert size["percent"] == f"{40 / needed * 100:.0f} %"


def test_the_results_page_links_the_exports(admin_client, measured):
    html = admin_client.get(url("experiment_results", "exp-lat")).content.decode()
    for path in ("results?format=json", "results?format=csv", "requests?format=csv", "requests?format=jsonl"):
        assert f'href="/v1/admin/experiments/exp-lat/{path}"' in html


def test_the_results_page_pauses_stops_and_starts(admin_client, measured):
    results = url("experiment_results", "exp-lat")
    for action, status in (("pause", "paused"), ("start", "running"), ("stop", "stopped")):
        response = admin_client.post(results, {"action": action})
        assert response.status_code == 302 and response["Location"] == results
        assert Experiment.objects.get(pk="exp-lat").status == status
    history = list(LogEntry.objects.order_by("pk").values_list("change_message", flat=True))
    assert history == ["Paused.", "Started.", "Stopped."]
    # A refused action says why.
    response = admin_client.post(results, {"action": "pause"})
    assert any("only a running experiment" in text for text in message_texts(response))


def test_promote_asks_to_confirm_then_routes_the_losers_to_the_winner(admin_client, measured, models):
    promote = url("experiment_promote", "exp-lat")
    page = admin_client.post(promote, {"variant": "m-b"})
    assert page.status_code == 200 and "Yes, promote m-b" in page.content.decode()
    assert Experiment.objects.get(pk="exp-lat").status == "running"  # nothing happened yet

    response = admin_client.post(promote, {"variant": "m-b", "confirm": "yes"})
    assert response.status_code == 302
    experiment = Experiment.objects.get(pk="exp-lat")
    assert experiment.status == "stopped" and experiment.promoted_variant == "m-b"
    assert experiment.promoted_by == "admin" and experiment.promoted_at is not None
    assert Model.objects.get(name="m-a").served_by == "m-b" and Model.objects.get(name="m-b").served_by == ""
    (message,) = message_texts(response)
    assert "'m-a'" in message and "'m-b'" in message
    assert LogEntry.objects.get(object_id="exp-lat").get_change_message().startswith("Promoted m-b")


def test_promote_refuses_an_unknown_variant(admin_client, measured):
    response = admin_client.post(url("experiment_promote", "exp-lat"), {"variant": "nope", "confirm": "yes"})
    assert response.status_code == 302 and "Choose a variant to promote." in message_texts(response)
    assert Experiment.objects.get(pk="exp-lat").status == "running"


# --- Who may see what -----------------------------------------------------------------------------------------------


def test_non_staff_users_are_sent_to_login(client, django_user_model, measured):
    user = django_user_model.objects.create_user(username="bob", password="pw-for-bob-123")
    client.force_login(user)
    for response in (
        client.get(url("experiment_results", "exp-lat")),
        client.post(url("experiment_promote", "exp-lat"), {"variant": "m-b", "confirm": "yes"}),
    ):
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert Experiment.objects.get(pk="exp-lat").status == "running"


def test_staff_need_view_permission_to_read_and_change_permission_to_act(client, django_user_model, measured):
    staff = django_user_model.objects.create_user(username="viewer", password="pw-for-viewer-1", is_staff=True)
    client.force_login(staff)
    results = url("experiment_results", "exp-lat")
    assert client.get(results).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    page = client.get(results)
    assert page.status_code == 200 and 'name="action"' not in page.content.decode()  # no buttons to press
    assert client.post(results, {"action": "stop"}).status_code == 403
    assert client.post(url("experiment_promote", "exp-lat"), {"variant": "m-b", "confirm": "yes"}).status_code == 403
    assert Experiment.objects.get(pk="exp-lat").status == "running"


def test_an_unknown_experiment_is_404(admin_client):
    assert admin_client.get(url("experiment_results", "nope")).status_code == 404


# --- Feedback -------------------------------------------------------------------------------------------------------


def test_feedback_is_listed_read_only(admin_client):
    import uuid

    feedback = Feedback.objects.create(
        request_id=uuid.uuid4(), metric="feedback", score=1.0, experiment="exp-1", variant="m-a", served_model="m-a"
    )
    response = admin_client.get(url("feedback_changelist"), {"q": str(feedback.request_id)})
    assert response.status_code == 200 and list(response.context["cl"].result_list) == [feedback]
    assert admin_client.get(url("feedback_add")).status_code == 403
    change = admin_client.post(url("feedback_change", feedback.pk), {"score": "0"})
    assert change.status_code == 403
    feedback.refresh_from_db()
    assert feedback.score == 1.0
