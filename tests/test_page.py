"""The energy page in a real browser: Debian's chromium (headless, driven by Playwright) against a
real stack (influxd, gunicorn) with known readings. What the page shows equals what the API says,
a new reading shows without a reload, nothing is asked of another origin, the console stays clean,
axe-core finds no serious or critical WCAG violation, and screenshots are kept (desktop, phone)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import requests
from falcon import testing
from helpers import TEST_KEY, debian_binary, npm_packages, start_api, wait_for
from playwright.sync_api import expect

from dsmr_ts.app import create_app
from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading

pytestmark = pytest.mark.slow

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
METER = "E-PAGE"
AXE_VERSION = "4.11"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


def axe_source() -> str:
    """axe-core from the npm registry."""
    return (npm_packages(f"axe-core@{AXE_VERSION}") / "axe-core" / "axe.min.js").read_text()


def values(d1: float, d2: float, power: float) -> dict:
    return {"electricity_delivered_1": d1, "electricity_delivered_2": d2, "electricity_returned_1": 0.0,
            "electricity_returned_2": 0.0, "electricity_currently_delivered": power,
            "electricity_currently_returned": 0.0, "phase_currently_delivered_l1": power}  # fmt: skip


@pytest.fixture(scope="module")
def stack(influxd_binary, tmp_path_factory):
    """A stack of its own with a day and a half of readings of one meter, ending now, and prices."""
    folder = tmp_path_factory.mktemp("page")
    influxd = ManagedInfluxd(influxd_binary, folder / "influxd", port=free_port()).start()
    path = folder / "dsmr-ts.yaml"
    path.write_text(
        f"api:\n  enabled: true\n  key: {TEST_KEY}\n"
        f"influxdb:\n  managed: false\n  url: {influxd.url}\n"
        "prices:\n  - {start: 2020-01-01, electricity_delivered_1: 0.25, electricity_delivered_2: 0.30,"
        " electricity_returned_1: 0.1, electricity_returned_2: 0.1, gas: 1.2, fixed_daily_cost: 0.5}\n"
    )
    bootstrap(load_config(path))
    config = load_config(path)
    store = Store(config.influxdb, timezone=config.timezone)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    start = now - dt.timedelta(hours=36)
    readings = [
        Reading(
            start + dt.timedelta(minutes=5 * i), METER, values(1000 + i * 0.01, 500 + i * 0.005, 0.6 + (i % 7) / 10)
        )
        for i in range(36 * 12)
    ]
    store.writer.store_readings(readings)
    store.compute.regenerate(start - dt.timedelta(days=1), now.replace(minute=0, second=0) + dt.timedelta(hours=1))
    api, url = start_api(config, folder / "api.log")
    yield config, store, url, readings[-1]
    api.terminate()
    api.wait(30)
    store.close()
    influxd.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = debian_binary("chromium", "chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser, url: str, width: int = 1280, height: int = 900):
    """A fresh context with the page loaded; records requests, console errors and page errors."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    seen = {"requests": [], "errors": []}
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("console", lambda message: message.type == "error" and seen["errors"].append(message.text))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return context, page, seen


def api(url: str, path: str, **params) -> dict:
    response = requests.get(url + path, headers=KEY, params={"meter": METER, **params}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_page_shows_what_the_api_says_and_keeps_up(stack, browser, tmp_path):
    config, store, url, last = stack
    context, page, seen = open_page(browser, url)
    try:
        # Live watts, as electricity-live says.
        live = api(url, "/api/v2/consumption/electricity-live")
        assert page.inner_text("#delivered") == f"{live['currently_delivered']:,} W"
        cost = live["cost_per_hour"]
        assert page.inner_text("#cost-hour") == (f"€ {cost}" if cost else "–")
        # Today's kWh and costs, as consumption/today says.
        today = api(url, "/api/v2/consumption/today")
        cells = page.locator("#totals tbody tr").all()
        shown = {row.locator("th").inner_text(): row.locator("td").nth(0).inner_text() for row in cells}
        assert shown["Electricity low"] == f"{today['electricity1']} kWh"
        assert shown["Electricity normal"] == f"{today['electricity2']} kWh"
        assert shown["Cost"] == f"€ {today['total_cost']}"
        # A day's bar, as statistics/day says.
        month = dt.datetime.now(config.tz).strftime("%Y-%m")
        days = api(url, "/api/v2/statistics/day", day__gte=f"{month}-01", limit=40)["results"]
        assert days
        for day in days:
            bar = page.locator(f'#days-chart g[data-key="{day["day"]}"]')
            used = float(day["electricity1"]) + float(day["electricity2"])
            assert (
                bar.get_attribute("data-used") == f"{used:.3f}" and bar.get_attribute("data-cost") == day["total_cost"]
            )
        # A new reading shows without a reload (the page asks every 5 s).
        newer = Reading(dt.datetime.now(UTC).replace(microsecond=0), METER, values(1100.0, 600.0, 3.456))
        store.writer.store_reading(newer)
        expect(page.locator("#delivered")).to_have_text("3,456 W", timeout=20_000)
        assert "stale" not in (page.get_attribute("#freshness", "class") or "")
        # axe-core, run in the page (evaluate is not subject to the page's CSP, which stays on).
        page.evaluate(axe_source())
        result = page.evaluate("async () => JSON.stringify(await axe.run(document))")
        violations = [v for v in json.loads(result)["violations"] if v["impact"] in ("serious", "critical")]
        assert not violations, [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in violations]
        page.screenshot(path=str(tmp_path / "page-desktop.png"), full_page=True)
        phone, phone_page, phone_seen = open_page(browser, url, 390, 844)
        phone_page.screenshot(path=str(tmp_path / "page-phone.png"), full_page=True)
        # On a phone nothing widens the page, and charts are drawn at their size (text not squeezed).
        assert phone_page.evaluate("document.documentElement.scrollWidth") <= 390
        for chart in ("power-chart", "days-chart", "months-chart", "peaks-chart"):
            drawn = phone_page.evaluate(
                "(id) => { const s = document.getElementById(id);"
                " return [s.viewBox.baseVal.width, s.getBoundingClientRect().width]; }",
                chart,
            )
            assert abs(drawn[0] - drawn[1]) <= 1, (chart, drawn)
        phone.close()
        # Nothing from another origin, no console errors.
        assert seen["requests"] and all(request.startswith(url + "/") for request in seen["requests"]), seen
        assert not seen["errors"] and not phone_seen["errors"], (seen["errors"], phone_seen["errors"])
        assert (tmp_path / "page-desktop.png").stat().st_size > 10_000
    finally:
        context.close()


def test_stale_data_is_shown_as_stale(stack, browser):
    config, _, url, _ = stack
    quiet = Store(config.influxdb, timezone=config.timezone)
    try:
        old = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
        quiet.writer.store_reading(Reading(old, "E-QUIET", values(1.0, 1.0, 0.5)))
    finally:
        quiet.close()
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        page.select_option("#meter", "E-QUIET")
        expect(page.locator("#freshness")).to_have_text(re.compile(r"^stale: last reading "), timeout=20_000)
        assert "stale" in page.get_attribute("#freshness", "class")
    finally:
        context.close()


def test_the_page_is_served_with_the_api_off_and_sends_a_strict_csp(config, session_config):
    config.api.enabled = False
    client = testing.TestClient(create_app(config))
    page = client.simulate_get("/")
    assert page.status_code == 200 and "<title>dsmr-ts energy</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert client.simulate_get("/web/static/page.js").status_code == 200
    assert client.simulate_get("/web/data/live").status_code == 200  # the page's data: not the API
    assert client.simulate_get("/api/v2/datalogger/dsmrreading", headers=KEY).status_code == 403  # the API is off
    config.web.enabled = False
    assert testing.TestClient(create_app(config)).simulate_get("/").status_code == 404


def test_with_require_key_the_data_needs_the_key_once_kept_in_an_httponly_cookie(config, browser, tmp_path):
    path = tmp_path / "dsmr-ts.yaml"
    path.write_text(
        f"api:\n  key: {TEST_KEY}\nweb:\n  require_key: true\n"
        f"influxdb:\n  managed: false\n  url: {config.influxdb.url}\n  token: {config.influxdb.token}\n"
    )
    api_process, url = start_api(load_config(path), tmp_path / "api.log")
    try:
        assert requests.get(url + "/web/data/live", timeout=10).status_code == 403
        assert requests.post(url + "/web/login", data={"key": "wrong"}, timeout=10).status_code == 403
        context = browser.new_context()
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#login:not([hidden])", timeout=20_000)
        page.fill("#key", TEST_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TEST_KEY not in cookie["value"]
        assert TEST_KEY not in page.content() and all(TEST_KEY not in u for u in [page.url])
        assert page.evaluate("document.cookie") == ""  # the script cannot read it
        with_cookie = requests.get(url + "/web/data/live", cookies={cookie["name"]: cookie["value"]}, timeout=10)
        assert with_cookie.status_code == 200
        context.close()
    finally:
        api_process.terminate()
        api_process.wait(30)
    wait_for(lambda: api_process.poll() is not None, what="the API to stop")
