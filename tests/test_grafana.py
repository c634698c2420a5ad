"""Grafana: every panel query of every dashboard runs against real influxd holding a week of
simulated readings and statistics, with Grafana's variables substituted; provisioning is coherent."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import subprocess
import zoneinfo
from decimal import Decimal

import pytest
import yaml
from falcon import testing
from helpers import REPO, TEST_KEY, flux, npm_packages

from dsmr_ts.app import create_app
from dsmr_ts.config import DynamicContract, PricePeriod
from dsmr_ts.influx.store import Store, StoreUnavailable
from dsmr_ts.reader.simulator import MeterSimulator
from dsmr_ts.tariffs import MarketPrice

GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
UTC = dt.timezone.utc
WEEK = dt.timedelta(days=7)
AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")


@pytest.fixture(scope="module")
def week_store(session_config):
    """A week of one-minute simulated readings (with a water meter) up to now, and their statistics
    and quarter-hour peaks."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    store = Store(session_config.influxdb, timeout_ms=120_000, prices=week_prices(now))
    # NL's market prices for the week, hourly (the dynamic contract of its last days uses them).
    hour = now.replace(minute=0, second=0)
    market = [MarketPrice(hour - WEEK + dt.timedelta(hours=i), 3600, Decimal(f"{0.05 + (i % 24) / 200:.3f}"))
              for i in range(24 * 7 + 2)]  # fmt: skip
    store.prices.store("NL", market)
    simulator = MeterSimulator(meter="E-GRAFANA", seed=3, water=True)
    readings = []
    moment = now - WEEK
    while moment <= now:
        readings.append(simulator.reading(moment))
        moment += dt.timedelta(minutes=1)
    for first in range(0, len(readings), 5000):
        store.writer.store_readings(readings[first : first + 5000])
    store.compute.recompute(hour - WEEK - dt.timedelta(hours=1), hour + dt.timedelta(hours=1), "E-GRAFANA")
    # The panels run with Grafana's own token: read-only on the two buckets (made by setup).
    token = (session_config.resolve_path(session_config.influxdb.grafana_token_file)).read_text().strip()
    grafana = Store(dataclasses.replace(session_config.influxdb, token=token), timeout_ms=120_000)
    yield grafana, now
    grafana.close()
    store.close()


def week_prices(now: dt.datetime) -> list[PricePeriod]:
    """Fixed prices, then a dynamic contract for the week's last three days."""
    return [
        PricePeriod(
            start=dt.date(2000, 1, 1),
            electricity_delivered_1=0.25,
            electricity_delivered_2=0.30,
            electricity_returned_1=0.10,
            electricity_returned_2=0.10,
            gas=1.20,
            fixed_daily_cost=0.50,
        ),
        PricePeriod(
            start=now.astimezone(AMSTERDAM).date() - dt.timedelta(days=3),
            dynamic=DynamicContract(area="NL", markup=0.02, energy_tax=0.10, vat=21),
            gas=1.20,
            fixed_daily_cost=0.50,
        ),
    ]


def test_daily_cost_panel_shows_the_costs_the_api_computes(week_store, config):
    """The panel reads the costs dsmr-ts stored: for a fixed-price day and a dynamic one, its
    electricity + gas + fixed equal the API's total_cost (rounded per part, so within a cent)."""
    store, now = week_store
    config.prices = week_prices(now)
    client = testing.TestClient(create_app(config, store))
    (query,) = [q for _, title, q, _ in QUERIES if title.startswith("Daily cost")]
    variables = next(v for _, title, _, v in QUERIES if title.startswith("Daily cost"))
    rows = flux(store, grafana_substitute(query, variables, now - WEEK, now), {})
    panel = {row["_time"].astimezone(AMSTERDAM).date(): row["electricity"] + row["gas"] + row["fixed"] for row in rows}
    today = now.astimezone(AMSTERDAM).date()
    for day in (today - dt.timedelta(days=5), today - dt.timedelta(days=1)):  # fixed, then dynamic
        response = client.simulate_get(
            "/api/v2/statistics/day",
            headers={"X-AUTHKEY": TEST_KEY},
            params={"meter": "E-GRAFANA", "day__gte": day.isoformat(), "day__lte": day.isoformat()},
        )
        (api_day,) = response.json["results"]
        assert abs(Decimal(api_day["total_cost"]) - Decimal(repr(panel[day]))) <= Decimal("0.015"), (day, api_day)


def test_grafana_token_reads_and_cannot_write(week_store):
    grafana, _ = week_store
    assert grafana.readings.latest("E-GRAFANA") is not None
    with pytest.raises(StoreUnavailable, match="HTTP 40[13]"):
        grafana.client.write("reading,meter=E-INTRUDER electricity_delivered_1=1.0 0")


def panel_queries() -> list[tuple[str, str, str, dict]]:
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"]}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                found.append((path.name, panel["title"], target["query"], variables))
    return found


QUERIES = panel_queries()


def test_there_are_dashboards_with_the_panels_users_expect():
    titles = " | ".join(title for _, title, _, _ in QUERIES).lower()
    for wanted in (
        "live power",
        "phase",
        "voltage",
        "today",
        "this month",
        "daily usage",
        "daily cost",
        "gas",
        "heat map",
        "quarter-hour peaks",
        "month peak",
        "water",
    ):
        assert wanted in titles


def grafana_substitute(query: str, variables: dict, start: dt.datetime, stop: dt.datetime) -> str:
    """What Grafana's InfluxDB (Flux) datasource does before it sends a query."""
    for name, value in variables.items():
        query = query.replace("${" + name + "}", str(value)).replace("$" + name, str(value))
    assert "$" not in query, f"unknown variable in {query}"
    query = query.replace("v.timeRangeStart", start.strftime("%Y-%m-%dT%H:%M:%SZ"))
    query = query.replace("v.timeRangeStop", stop.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return query.replace("v.windowPeriod", "1h")


@pytest.mark.parametrize("dashboard, title, query, variables", QUERIES, ids=[q[1] for q in QUERIES])
def test_panel_query_runs_and_returns_rows(week_store, dashboard, title, query, variables):
    store, now = week_store
    text = grafana_substitute(query, variables, now - WEEK, now + dt.timedelta(minutes=1))
    rows = flux(store, text, {})
    assert rows, f"{dashboard}: panel {title!r} returned no rows"
    values = [v for row in rows for k, v in row.items() if k in ("_value", "cost", "kWh", "electricity", "gas")]
    assert values and all(isinstance(v, (int, float)) for v in values)


def test_provisioning_points_panels_at_the_provisioned_datasource():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "influxdb" and source["jsonData"]["version"] == "Flux"
    used = set(re.findall(r"\$\{(\w+)\}", json.dumps(source)))
    assert used == {"DSMR_TS_INFLUXDB_URL", "DSMR_TS_INFLUXDB_ORG"}
    assert "$__file{" in source["secureJsonData"]["token"]  # the read-only token setup writes
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == source["uid"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dsmr-ts.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


GRAFANA_SCHEMA = "@grafana/schema@13.2.3"  # Grafana's own published types of a dashboard
TYPESCRIPT = "typescript@7.0.2"


def _typecheck(modules, dashboard: str, folder) -> subprocess.CompletedProcess:
    """tsc checks a dashboard as an object literal of @grafana/schema's Dashboard type: a key it
    does not know, or a value of the wrong type, is an error."""
    check = folder / "dashboard.ts"
    check.write_text(f'import type {{ Dashboard }} from "@grafana/schema";\nconst dashboard: Dashboard = {dashboard};\n'
                     "export default dashboard;\n")  # fmt: skip
    if not (folder / "node_modules").exists():
        (folder / "node_modules").symlink_to(modules)  # where tsc looks for @grafana/schema
    return subprocess.run(
        [str(modules / ".bin" / "tsc"), "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution",
         "nodenext", "--target", "es2020", "--skipLibCheck", str(check)],
        capture_output=True, text=True, timeout=600, cwd=folder,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda path: path.name)
def test_dashboards_match_grafanas_published_schema(dashboard, tmp_path):
    modules = npm_packages(GRAFANA_SCHEMA, TYPESCRIPT)
    result = _typecheck(modules, dashboard.read_text(), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # The check bites: one misspelt panel key fails it.
    broken = _typecheck(modules, dashboard.read_text().replace('"title"', '"titel"', 2), tmp_path)
    assert broken.returncode != 0 and "titel" in broken.stdout
