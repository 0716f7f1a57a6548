"""The operator console in a real headless browser (Debian's Chromium driven by selenium) against the whole
stack: log in with the admin key, see the demo tenants, open one, promote an alias, lose a stale promotion
with a clear conflict, refuse a tenant key and a form without its CSRF token, render without console errors.

CONSOLE_SCREENSHOTS_DIR=docs/img saves the main pages as console-*.png (docs/console.md shows them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import upload
from tests.waiting import wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,800")
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS_DIR")


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("the console's browser tests need Debian's chromium and chromium-driver: run `make install` "
                    "(scripts/install.sh installs them) or `apt-get install -y chromium chromium-driver`")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager would try the internet
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lpx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def console(stack, demo, browser):
    """A tenant of its own with three versions of one adapter (prod at the first), and a logged-out browser."""
    key = stack.add_tenant("console-t")
    versions = [upload(stack, key, "helper", demo.adapter_dirs[a])["version"] for a in ("reverse", "shout", "caesar")]
    move_alias(stack, "helper", "prod", versions[0], None, key)
    return {"url": stack.admin_url + "/console", "key": key, "versions": versions}


def move_alias(stack, name, alias, version, expected, key) -> httpx.Response:
    with stack.client(key) as c:
        r = c.put(f"/v1/adapters/{name}/aliases/{alias}", json={"version": version, "expected_version": expected})
    assert r.status_code == 200, r.text
    return r


def prod_of(stack, key) -> str:
    with stack.client(key) as c:
        return c.get("/v1/adapters/helper").json()["aliases"]["prod"]


def by_css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector)


def all_css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def submit(browser, selector: str, accept_alert: bool = False) -> None:
    """Click `selector` and wait until the browser has left this page (the form's answer replaced it)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = by_css(browser, "html")
    by_css(browser, selector).click()
    if accept_alert:
        WebDriverWait(browser, 30).until(expected_conditions.alert_is_present()).accept()
    WebDriverWait(browser, 60).until(lambda _b: _gone(page))
    # the old page is gone, but the answer may still be arriving: read nothing before it is whole
    WebDriverWait(browser, 60).until(lambda b: b.execute_script("return document.readyState") == "complete")


def _gone(element) -> bool:
    """The element's page has been replaced. Chrome may answer a node of a page being torn down with an
    inspector error ("does not belong to the document") instead of a stale reference: that is gone too."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
        return False
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise


def text_of(browser, selector) -> str:
    """The text of the first match, '' while there is none (the next page may still be loading)."""
    found = all_css(browser, selector)
    return found[0].text if found else ""


def logged_in(browser, url, admin_key) -> None:
    """Log in unless this browser's session still holds."""
    browser.get(url + "/login")
    if all_css(browser, "#login"):
        log_in(browser, url, admin_key)
        wait_until(lambda: text_of(browser, "#readiness"), timeout=60, what="the overview after logging in")


def log_in(browser, url, key) -> None:
    browser.get(url + "/login")
    by_css(browser, "#login input[name=key]").send_keys(key)
    submit(browser, "#login button")


def console_errors(browser) -> list[dict]:
    """Console messages at error level since the last call (reading the log empties it)."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def shoot(browser, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))


def test_a_tenant_key_cannot_log_in_and_the_tenant_port_has_no_console(stack, console, browser):
    log_in(browser, console["url"], console["key"])
    assert "tenant's API key" in by_css(browser, ".error").text
    assert browser.current_url.endswith("/console/login")
    browser.get(stack.url + "/console")  # the tenants' plane
    assert "not_found" in browser.page_source
    with httpx.Client(base_url=stack.url) as c:
        assert c.get("/console/login").status_code == 404
    browser.get(console["url"] + "/tenants")  # not logged in: back to the form
    assert browser.current_url.endswith("/console/login")


def test_log_in_see_every_page_without_console_errors(stack, console, browser):
    log_in(browser, console["url"], stack.admin_key)
    wait_until(lambda: text_of(browser, "#readiness") == "ready", timeout=60, what="the overview, ready")
    cookie = browser.get_cookie("lpx_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    console_errors(browser)  # the refused login above logged its 401
    pages = {"overview": "", "tenants": "/tenants", "tenant": "/tenants/console-t", "residency": "/residency",
             "jobs": "/jobs", "audit": "/audit", "benchmarks": "/benchmarks"}
    for name, path in pages.items():
        browser.get(console["url"] + path)
        assert not all_css(browser, ".error"), (name, by_css(browser, ".error").text)
        assert console_errors(browser) == [], name
        assert name != "overview" or len(all_css(browser, "#charts svg")) == 6  # drawn on the server
        shoot(browser, name)
    browser.get(console["url"] + "/tenants")
    shown = {row.get_attribute("data-tenant") for row in all_css(browser, "#tenants tbody tr[data-tenant]")}
    assert set(stack.tenants) | {"console-t"} <= shown
    browser.set_window_size(420, 800)  # a narrow window: the tables scroll inside their box, not the page
    browser.get(console["url"] + "/tenants/console-t")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shoot(browser, "narrow")
    browser.set_window_size(1280, 800)


def test_promote_then_a_stale_promotion_is_a_conflict_not_a_lost_update(stack, console, browser):
    from selenium.webdriver.support.select import Select

    v1, v2, v3 = console["versions"]
    logged_in(browser, console["url"], stack.admin_key)
    browser.get(console["url"] + "/tenants/console-t")
    prod_row = '[data-adapter=helper] tr[data-alias=prod]'
    assert by_css(browser, f"{prod_row} .target").text == v1
    Select(by_css(browser, f"{prod_row} select")).select_by_value(v2)
    submit(browser, f"{prod_row} button")
    assert by_css(browser, f"{prod_row} .target").text == v2
    assert f"now points to {v2}" in by_css(browser, ".notice").text
    assert prod_of(stack, console["key"]) == v2

    move_alias(stack, "helper", "prod", v3, v2, console["key"])  # someone else, after the page was loaded
    Select(by_css(browser, f"{prod_row} select")).select_by_value(v1)
    submit(browser, f"{prod_row} button")
    message = by_css(browser, ".error").text
    assert "conflict" in message and f"points to {v3} now" in message and "nothing was overwritten" in message
    assert by_css(browser, f"{prod_row} .target").text == v3  # the page now shows where it is
    assert prod_of(stack, console["key"]) == v3  # the other write stands

    with stack.admin() as c:  # both writes are in the audit log, each with its actor
        events = c.get("/admin/audit", params={"tenant": "console-t", "action": "adapter.alias"}).json()["data"]
    assert [(e["actor"], e["outcome"]) for e in events[:3]] == [("admin", "alias_conflict"), ("console-t", "ok"),
                                                               ("admin", "ok")]


def test_a_form_without_its_csrf_token_is_refused(stack, console, browser):
    from selenium.webdriver.support.select import Select

    v1, _, v3 = console["versions"]
    logged_in(browser, console["url"], stack.admin_key)
    browser.get(console["url"] + "/tenants/console-t")
    prod_row = '[data-adapter=helper] tr[data-alias=prod]'
    Select(by_css(browser, f"{prod_row} select")).select_by_value(v1)
    browser.execute_script("document.querySelector(arguments[0] + ' input[name=csrf]').remove()", prod_row)
    submit(browser, f"{prod_row} button")
    assert "CSRF" in by_css(browser, ".error").text
    assert prod_of(stack, console["key"]) == v3  # nothing moved


def test_an_aliased_version_is_not_deleted_and_says_why(stack, console, browser):
    v3 = console["versions"][2]
    logged_in(browser, console["url"], stack.admin_key)
    browser.get(console["url"] + "/tenants/console-t")
    submit(browser, f"tr[data-version='{v3}'] .delete-version button", accept_alert=True)
    message = by_css(browser, ".error").text
    assert "not deleted" in message and "in use by alias prod" in message
    assert v3 in {r.get_attribute("data-version") for r in all_css(browser, "tr[data-version]")}


@pytest.mark.skipif(not SHOTS, reason="screenshots for the docs: set CONSOLE_SCREENSHOTS_DIR=docs/img")
def test_screenshots_of_the_overview_under_traffic(stack, console, browser):
    """Not a check: streams of every demo tenant for a minute, so the docs' overview shows live charts."""
    import threading
    import time

    def stream(key: str, model: str, until: float) -> None:
        with stack.client(key) as c:
            while time.monotonic() < until:
                body = {"model": model, "prompt": "hello world", "max_tokens": 12, "temperature": 0, "stream": True}
                with c.stream("POST", "/v1/completions", json=body) as r:
                    r.read()

    until = time.monotonic() + 60
    threads = [threading.Thread(target=stream, args=(t["key"], t["adapter"], until)) for t in stack.tenants.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logged_in(browser, console["url"], stack.admin_key)
    for name, path in (("overview", ""), ("residency", "/residency"), ("tenants", "/tenants")):
        browser.get(console["url"] + path)
        shoot(browser, name)


def test_create_rotate_set_quotas_and_delete_a_tenant(stack, console, browser):
    logged_in(browser, console["url"], stack.admin_key)
    browser.get(console["url"] + "/tenants")
    by_css(browser, "#create-tenant input[name=name]").send_keys("console-new")
    by_css(browser, "#create-tenant input[name=requests_per_minute]").send_keys("600")
    submit(browser, "#create-tenant button")
    first = by_css(browser, "#api-key").text
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {first}"}) as c:
        assert c.get("/v1/models").status_code == 200  # the key shown once works on the tenants' plane
    browser.get(console["url"] + "/tenants")
    assert first not in browser.page_source  # shown once only

    row = "#tenants tr[data-tenant=console-new]"
    submit(browser, f"{row} form[action$=rotate] button", accept_alert=True)
    second = by_css(browser, "#api-key").text
    with httpx.Client(base_url=stack.url) as c:
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {first}"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {second}"}).status_code == 200

    field = by_css(browser, f"{row} input[name=max_concurrent]")
    field.clear()
    field.send_keys("two")
    submit(browser, f"{row} form.quotas button")
    assert "max concurrent must be a whole number" in by_css(browser, ".error").text
    field = by_css(browser, f"{row} input[name=max_concurrent]")
    field.clear()
    field.send_keys("2")
    submit(browser, f"{row} form.quotas button")
    assert "quotas saved" in by_css(browser, ".notice").text
    with stack.admin() as c:
        quotas = {t["name"]: t["quotas"] for t in c.get("/admin/tenants").json()["data"]}["console-new"]
    assert quotas == {"requests_per_minute": 600, "max_concurrent": 2}

    by_css(browser, f"{row} details summary").click()
    submit(browser, f"{row} details button")  # the name not typed: refused
    assert "type the tenant's name" in by_css(browser, ".error").text
    by_css(browser, f"{row} details summary").click()
    by_css(browser, f"{row} details input[name=confirm]").send_keys("console-new")
    submit(browser, f"{row} details button")
    assert "console-new deleted" in by_css(browser, ".notice").text
    assert not all_css(browser, row)


def test_a_fine_tuning_job_shows_its_loss_curve(stack, console, browser):
    import json

    from registry.jobs import JobStore

    rows = "".join(json.dumps({"prompt": f"word {i}", "completion": f"WORD {i}"}) + "\n" for i in range(8))
    with stack.client(console["key"]) as c:
        file_id = c.post("/v1/files", files={"file": ("t.jsonl", rows.encode())}, data={"purpose": "fine-tune"})
        assert file_id.status_code == 200, file_id.text
        r = c.post("/v1/fine_tuning/jobs", json={"model": "base", "training_file": file_id.json()["id"]})
        assert r.status_code == 200, r.text
    store = JobStore(stack.gateway.store, stack.gateway.settings)
    job = store.get("console-t", r.json()["id"])
    for step, loss in ((1, 2.5), (2, 1.75), (3, 0.9)):  # what a worker logs (training/jobs/callback.py)
        store.add_event(job, f"Step {step}/3: training loss={loss}", type_="metrics",
                        data={"step": step, "total_steps": 3, "train_loss": loss})
    logged_in(browser, console["url"], stack.admin_key)
    browser.get(console["url"] + "/jobs")
    console_errors(browser)  # the refusals of the tests before (409, 403, 400) were logged
    submit(browser, f"#jobs a[href$='{job.id}']")
    assert "0.9" in text_of(browser, ".chart figcaption b")  # the last loss
    assert len(by_css(browser, ".chart polyline").get_attribute("points").split()) == 3
    assert console_errors(browser) == []
    shoot(browser, "job")
