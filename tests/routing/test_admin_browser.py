"""A real browser (Debian's headless chromium through selenium) on the routing admin of a real gateway process: sign
in, see a broken instance in red on the dashboard, reset its breaker, drain the other instance, filter the request
log by outcome and open a request's decision — each step checked on the page and in what the gateway then does.

.ci/run installs chromium and chromium-driver; elsewhere the test is skipped when they are missing (never in CI).
Screenshots are kept in /tmp for a human to look at.
"""

import openai
import pytest
from django.contrib.auth import get_user_model

from routing.models import ProviderInstance
from routing.rollups import rollup_request_logs
from tests.browser import sign_in
from tests.factories import make_key, make_model, tune, wait_for_model, wait_for_reload, wait_until_open
from tests.gateway import wait_until
from tests.helpers import MESSAGES, rows, wait_rows

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-for-operator-123"
RED, GREEN, GREY_BLUE = "rgba(198, 40, 40, 1)", "rgba(46, 125, 50, 1)", "rgba(84, 110, 122, 1)"
SCREENSHOT = "/tmp/chatvault-{}.png"


def badge(browser, instance_id):
    """Return (words, background colour) of an instance's state badge on the dashboard, as the browser shows it."""
    from selenium.webdriver.common.by import By

    found = browser.find_element(By.CSS_SELECTOR, f'tr.instance-row[data-instance="{instance_id}"] .state-badge')
    return found.text, found.value_of_css_property("background-color")


def dashboard_shows(browser, root_url, instance_id, words):
    """Reload the dashboard until the instance's badge says these words (the gateway applies changes within ~0.1 s)."""

    def shown():
        browser.get(f"{root_url}/admin/")
        return badge(browser, instance_id)[0] == words

    wait_until(shown, timeout=10, interval=0.3, message=f"{instance_id} {words} on the dashboard")
    return badge(browser, instance_id)


def run_action(browser, root_url, action, instance_id):
    """Select an instance on the instance list, run an action on it; return the success message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    browser.get(f"{root_url}/admin/routing/providerinstance/")
    browser.find_element(By.CSS_SELECTOR, f'input.action-select[value="{instance_id}"]').click()
    Select(browser.find_element(By.NAME, "action")).select_by_value(action)
    browser.find_element(By.CSS_SELECTOR, 'button[name="index"]').click()
    return browser.find_element(By.CSS_SELECTOR, "ul.messagelist li.success").text


def test_an_operator_finds_fixes_and_traces_a_broken_instance(browser, gateway, fake, fake_b):
    from selenium.webdriver.common.by import By

    get_user_model().objects.create_superuser(username="operator", email="op@example.com", password=PASSWORD)
    tune(gateway, breaker_cooldown_seconds=300)  # the breaker stays open while the browser looks
    model = make_model("vault-console", [fake, fake_b])
    sick, healthy = model.instance_ids
    raw = make_key(name="console")
    wait_for_model(gateway, raw, "vault-console")
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    fake.set_config(status=503)
    for _ in range(12):  # round-robin: every other request fails over from the sick instance, until it opens
        sdk.chat.completions.create(model="vault-console", messages=MESSAGES)
    wait_until_open(gateway, sick)
    wait_rows(12)
    rollup_request_logs()

    # Sign in: the admin index is the dashboard, the sick instance in red with why, the other in green.
    sign_in(browser, gateway.root_url, "operator", PASSWORD)
    assert badge(browser, sick) == ("open", RED)
    assert badge(browser, healthy) == ("closed", GREEN)
    sick_row = browser.find_element(By.CSS_SELECTOR, f'tr.instance-row[data-instance="{sick}"]')
    assert "5 consecutive failures, last: HTTP 503" in sick_row.text
    healthy_row = browser.find_element(By.CSS_SELECTOR, f'tr.instance-row[data-instance="{healthy}"]')
    assert healthy_row.find_element(By.CSS_SELECTOR, "td.requests").text == "12"  # from the rollups
    browser.save_screenshot(SCREENSHOT.format("dashboard"))

    # Reset the sick instance's breaker: every worker closes it.
    assert run_action(browser, gateway.root_url, "reset_breaker", sick) == (
        "Reset the circuit breaker of 1 provider instances."
    )
    assert dashboard_shows(browser, gateway.root_url, sick, "closed") == ("closed", GREEN)

    # Drain the healthy instance: it shows as drained, and the gateway sends it nothing more.
    assert run_action(browser, gateway.root_url, "drain_selected", healthy) == "Drained 1 provider instances."
    assert dashboard_shows(browser, gateway.root_url, healthy, "drained") == ("drained", GREY_BLUE)
    assert ProviderInstance.objects.get(pk=healthy).drained
    wait_for_reload(gateway)
    with pytest.raises(openai.APIStatusError) as failed:  # only the sick instance is left, and it answers 503
        sdk.chat.completions.create(model="vault-console", messages=MESSAGES)
    assert failed.value.status_code == 502
    (failure,) = [r for r in wait_rows(13) if r.outcome == "upstream_error"]

    # Filter the request log by outcome: that one request.
    browser.get(f"{gateway.root_url}/admin/routing/requestlog/")
    browser.find_element(By.ID, "changelist-filter").find_element(By.LINK_TEXT, "Upstream error").click()
    wait_until(lambda: "outcome" in browser.current_url, message="the filtered list")
    links = browser.find_elements(By.CSS_SELECTOR, '#result_list tbody tr a[href*="/change/"]')
    assert len(links) == 1 and len(rows()) == 13
    browser.save_screenshot(SCREENSHOT.format("request-log"))

    # Open its decision: the drained instance skipped, the one attempt failed with 503, the instance linked.
    links[0].click()
    story = browser.find_element(By.ID, "decision-story")
    assert str(failure.request_id) in browser.title or str(failure.request_id) in browser.page_source
    assert f"Skipped {healthy}: drained" in story.text
    attempt = story.find_element(By.CSS_SELECTOR, "table.attempts tbody tr")
    assert attempt.text.split()[:4] == ["1", sick, "status", "503"]
    assert "Ended Upstream error (502)" in story.text
    raw = browser.find_element(By.CSS_SELECTOR, "details.decision-raw")
    assert not raw.get_attribute("open")  # the raw JSON is folded
    browser.save_screenshot(SCREENSHOT.format("request-decision"))
    attempt.find_element(By.LINK_TEXT, sick).click()
    assert browser.find_element(By.CSS_SELECTOR, ".field-id .readonly").text == sick
