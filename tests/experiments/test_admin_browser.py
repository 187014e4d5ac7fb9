"""A real browser (Debian's headless chromium through selenium) on the experiment results page: sign in through the
admin's login form on a live server, read the verdicts and charts as rendered, press a status button (a real CSRF
POST), and keep a screenshot in /tmp for a human to look at.

.ci/run installs chromium and chromium-driver; elsewhere the test is skipped when they are missing (never in CI):
see the `browser` fixture (tests/conftest.py, tests/browser.py).
"""

from datetime import timedelta

from django.utils import timezone

from experiments.models import Experiment, VariantRollup
from routing.models import Model
from tests.experiments.test_admin import CONTROL_LATENCY, TREATMENT_LATENCY, add_units
from tests.factories import make_experiment

SCREENSHOT = "/tmp/chatvault-experiment-results.png"
PASSWORD = "pw-for-analyst-123"


def test_the_results_page_in_a_browser(browser, live_server, django_user_model):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.wait import WebDriverWait

    django_user_model.objects.create_superuser(username="analyst", email="a@example.com", password=PASSWORD)
    a, b = Model.objects.create(name="m-a"), Model.objects.create(name="m-b")
    make_experiment("exp-lat", [a, b], name="Latency test", primary_metric="latency_ms", started_at=timezone.now())
    add_units("exp-lat", "m-a", CONTROL_LATENCY)
    add_units("exp-lat", "m-b", TREATMENT_LATENCY)
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for i in range(12):
        for variant, mean in (("m-a", 100.0 + i % 3), ("m-b", 150.0 - i)):
            sums = {"latency_ms": [10, mean * 10, mean * mean * 10], "success_rate": [10, 9.0 + i % 2, 9.0 + i % 2]}
            VariantRollup.objects.create(
                experiment="exp-lat", variant=variant, bucket_start=hour - timedelta(hours=12 - i), requests=10,
                units=10, sums=sums,
            )  # fmt: skip

    results = f"{live_server.url}/admin/experiments/experiment/exp-lat/results/"
    browser.get(results)
    assert "/admin/login/" in browser.current_url  # sent to sign in first
    browser.find_element(By.ID, "id_username").send_keys("analyst")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    browser.find_element(By.ID, "metric-latency_ms")
    assert browser.current_url == results

    latency = browser.find_element(By.ID, "metric-latency_ms")
    worse = latency.find_element(By.CSS_SELECTOR, 'tr[data-variant="m-b"] .verdict')
    assert worse.text == "worse" and "verdict-worse" in worse.get_attribute("class")
    assert worse.value_of_css_property("background-color") == "rgba(198, 40, 40, 1)"  # the page's red, applied
    control = latency.find_element(By.CSS_SELECTOR, 'tr[data-variant="m-a"] .verdict')
    assert control.text == "control"
    charts = browser.find_elements(By.CSS_SELECTOR, "div.chart svg.metric-chart")
    assert len(charts) == 2  # the metrics the fixture's hours hold (latency, success rate); none drawn empty
    assert charts[0].size["width"] >= 640 and charts[0].size["height"] > 0  # drawn, not just present
    legend = [t.text for t in charts[0].find_elements(By.CSS_SELECTOR, "g.legend text")]
    assert legend == ["m-a", "m-b"]
    browser.save_screenshot(SCREENSHOT)

    before = browser.find_element(By.ID, "experiment-status")
    browser.find_element(By.CSS_SELECTOR, 'form.status-action input[name="_pause"]').click()
    # The redirect back to the page has loaded. Mid-navigation chromedriver may answer "Node with given id does not
    # belong to the document" instead of a stale-element error; the next poll then sees the element stale.
    WebDriverWait(browser, 10, ignored_exceptions=(WebDriverException,)).until(staleness_of(before))
    assert browser.find_element(By.ID, "experiment-status").text == "Paused"
    assert Experiment.objects.get(pk="exp-lat").status == "paused"
