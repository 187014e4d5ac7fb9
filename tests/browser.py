"""A real browser for the admin's tests and for bench/screenshots.py: Debian's headless chromium, driven by selenium
through chromium-driver (apt packages `chromium` and `chromium-driver`; .ci/run installs them, nothing is downloaded).
"""

import importlib.util
import os
import shutil

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def missing():
    """Return why no browser can be started here, or None when selenium, chromium and its driver are installed."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    if not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)):
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


def skip_reason():
    """Return why a browser test is skipped here, or None: never in CI, which installs the browser, so that a
    missing one fails there instead."""
    return None if os.environ.get("CI") else missing()


def start_chromium(width=1400, height=3200):
    """Return a headless chromium with a window of this size, driven by selenium."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    return driver


def sign_in(driver, root_url, username, password):
    """Sign in to the admin at root_url through its login form; leave the browser on the admin index."""
    from selenium.webdriver.common.by import By

    driver.get(f"{root_url}/admin/login/?next=/admin/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    driver.find_element(By.ID, "user-tools")  # signed in: the page greets the user
