"""GET /api/v2/datalogger/dsmrreading against real influxd: filters, ordering, pagination,
exact counts (index vs brute force, also after late inserts), DST edges, errors, multi-meter."""

from __future__ import annotations

import datetime as dt
import itertools
import urllib.parse

import pytest
from falcon import testing
from helpers import TEST_KEY

from dsmr_ts.app import create_app
from dsmr_ts.influx.readings import DIRECT_OFFSET
from dsmr_ts.influx.store import Store
from dsmr_ts.telegram import Reading

UTC = dt.timezone.utc
PATH = "/api/v2/datalogger/dsmrreading"
KEY = {"X-AUTHKEY": TEST_KEY}
METER = "E-PAGING"
OTHER = "E-PAGING-OTHER"


def irregular_times() -> list[dt.datetime]:
    """Readings around both 2026 DST changes, at irregular steps, plus a few in the current hour."""
    times = []
    for start in (dt.datetime(2026, 3, 28, 23, 0, 3, tzinfo=UTC), dt.datetime(2026, 10, 24, 23, 0, 5, tzinfo=UTC)):
        moment = start
        for step in itertools.islice(itertools.cycle([67, 301, 13, 900, 45]), 60):
            times.append(moment)
            moment += dt.timedelta(seconds=step)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    times += [now - dt.timedelta(seconds=s) for s in (120, 60, 5)]
    return sorted(times)


TIMES = irregular_times()


@pytest.fixture(scope="module")
def loaded(session_config):
    """The readings, written as the ingest path writes them (their old hours get repair marks),
    then repaired as the reader's housekeeping job does: the count index covers them."""
    store = Store(session_config.influxdb)
    readings = []
    for index, moment in enumerate(TIMES):
        readings.append(
            Reading(
                moment,
                METER,
                {
                    "electricity_delivered_1": 1000 + index * 0.001,
                    "electricity_delivered_2": 5.0,
                    "electricity_returned_1": 0.0,
                    "electricity_returned_2": 0.0,
                    "electricity_currently_delivered": 0.25,
                    "electricity_currently_returned": 0.0,
                    "phase_voltage_l1": 231.0,
                    "phase_power_current_l1": 2,
                },
            )
        )
        readings.append(
            Reading(
                moment + dt.timedelta(seconds=1),
                OTHER,
                {
                    "electricity_delivered_1": 1.0,
                    "electricity_delivered_2": 1.0,
                    "electricity_returned_1": 0.0,
                    "electricity_returned_2": 0.0,
                    "electricity_currently_delivered": 0.1,
                    "electricity_currently_returned": 0.0,
                },
            )
        )
    store.writer.store_readings(readings)
    store.housekeeping.repair()
    assert not store.index.pending_marks(METER, 0, 2**31)  # every hour indexed
    yield store
    store.close()


@pytest.fixture
def client(config, loaded):
    return testing.TestClient(create_app(config, loaded))


def get(client, **params):
    response = client.simulate_get(PATH, headers=KEY, query_string=urllib.parse.urlencode(params))
    return response


def walk(client, **params) -> tuple[int, list[int]]:
    """Follow next links from the first page; returns (count, ids in the order served)."""
    response = get(client, **params)
    assert response.status_code == 200, response.text
    count, ids, pages = response.json["count"], [], 0
    while True:
        body = response.json
        assert body["count"] == count
        ids += [row["id"] for row in body["results"]]
        pages += 1
        if body["next"] is None:
            break
        url = urllib.parse.urlsplit(body["next"])
        assert url.scheme == "http" and url.path == PATH
        response = client.simulate_get(PATH, headers=KEY, query_string=url.query)
        assert response.status_code == 200
        assert pages < 500
    return count, ids


def expected_ids(gte=None, lte=None, descending=False) -> list[int]:
    ids = [int(t.timestamp()) for t in TIMES if (gte is None or t >= gte) and (lte is None or t <= lte)]
    return ids[::-1] if descending else ids


GTE = dt.datetime(2026, 3, 29, 0, 41, 17, tzinfo=UTC)  # mid-hour edges
LTE = dt.datetime(2026, 10, 25, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("limit", [1, 7, 25, 1000])
@pytest.mark.parametrize("ordering", ["timestamp", "-timestamp", "bogus"])
@pytest.mark.parametrize("bounds", [(None, None), (GTE, None), (None, LTE), (GTE, LTE)])
@pytest.mark.parametrize("located", [False, True], ids=["offset", "located"])
def test_walking_all_pages_gives_every_reading_once_in_order(
    client, loaded, limit, ordering, bounds, located, monkeypatch
):
    # located: every page found through the count index (span sums, hours), not InfluxQL's OFFSET.
    monkeypatch.setattr(loaded.readings, "direct_offset", 0 if located else 3600)
    gte, lte = bounds
    params = {"limit": limit, "ordering": ordering, "meter": METER}
    if gte:
        params["timestamp__gte"] = gte.strftime("%Y-%m-%dT%H:%M:%SZ")
    if lte:
        params["timestamp__lte"] = lte.isoformat()
    count, ids = walk(client, **params)
    expected = expected_ids(gte, lte, descending=ordering == "-timestamp")
    assert ids == expected
    assert count == len(expected)


@pytest.mark.parametrize("offset", [0, 1, 59, 60, 119, 121, 10_000])
def test_offsets_and_previous_links(client, offset):
    response = get(client, meter=METER, limit=10, offset=offset, ordering="-timestamp")
    body = response.json
    assert [r["id"] for r in body["results"]] == expected_ids(descending=True)[offset : offset + 10]
    if offset == 0:
        assert body["previous"] is None
    else:
        previous = urllib.parse.parse_qs(urllib.parse.urlsplit(body["previous"]).query)
        assert previous["limit"] == ["10"] and previous["meter"] == [METER]
        assert previous.get("offset", ["0"]) == [str(max(0, offset - 10))] or offset - 10 <= 0


def test_default_limit_and_documented_url_shape(client):
    body = get(client, meter=METER, ordering="-timestamp").json
    assert len(body["results"]) == 25
    assert body["next"] == (f"http://falconframework.org{PATH}?limit=25&meter={METER}&offset=25&ordering=-timestamp")
    assert body["results"][0]["id"] == int(TIMES[-1].timestamp())  # the latest reading


def test_limit_zero_means_default_like_dsmr_reader(client):
    assert len(get(client, meter=METER, limit=0).json["results"]) == 25


@pytest.mark.parametrize(
    "params, errors",
    [
        ({"limit": "abc"}, {"limit": ["A positive integer is required."]}),
        ({"limit": "-1"}, {"limit": ["A positive integer is required."]}),
        ({"offset": "x"}, {"offset": ["A non-negative integer is required."]}),
        ({"offset": "-5"}, {"offset": ["A non-negative integer is required."]}),
        ({"timestamp__gte": "yesterday"}, {"timestamp__gte": ["Enter a valid date/time."]}),
        ({"timestamp__lte": "2026-13-01"}, {"timestamp__lte": ["Enter a valid date/time."]}),
        (
            {"limit": "x", "timestamp__lte": "?"},
            {"limit": ["A positive integer is required."], "timestamp__lte": ["Enter a valid date/time."]},
        ),
    ],
)
def test_bad_parameters_are_400_naming_them(client, params, errors):
    response = get(client, **params)
    assert response.status_code == 400
    assert response.json == errors


def test_output_format(client):
    row = get(client, meter=METER, limit=1).json["results"][0]
    assert list(row)[:13] == [
        "id",
        "timestamp",
        "electricity_delivered_1",
        "electricity_returned_1",
        "electricity_delivered_2",
        "electricity_returned_2",
        "electricity_currently_delivered",
        "electricity_currently_returned",
        "phase_currently_delivered_l1",
        "phase_currently_delivered_l2",
        "phase_currently_delivered_l3",
        "extra_device_timestamp",
        "extra_device_delivered",
    ]
    assert row["timestamp"] == TIMES[0].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert row["id"] == int(TIMES[0].timestamp())
    assert (row["electricity_delivered_1"], row["electricity_currently_delivered"]) == ("1000.000", "0.250")
    assert (row["phase_voltage_l1"], row["phase_power_current_l1"]) == ("231.0", 2)
    assert row["phase_currently_delivered_l1"] is None and row["extra_device_delivered"] is None


def test_local_datetimes_option(config, loaded):
    config.api.local_datetimes = True
    client = testing.TestClient(create_app(config, loaded))
    row = get(client, meter=METER, limit=1).json["results"][0]
    assert row["timestamp"] == "2026-03-29T00:00:03+01:00"


@pytest.mark.parametrize(
    "naive, utc",
    [
        # Autumn: 02:30 happens twice; a naive time means the first (summer) one, as Django does.
        ("2026-10-25 02:30:00", dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        ("2026-10-25T03:00:00", dt.datetime(2026, 10, 25, 2, 0, tzinfo=UTC)),
        # Spring: 02:30 does not exist on 2026-03-29; it is read with the offset before the change.
        ("2026-03-29 02:30:00", dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        ("2026-03-29", dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC)),
    ],
)
def test_naive_filters_are_local_time_across_dst(client, naive, utc):
    _, ids = walk(client, meter=METER, limit=1000, timestamp__gte=naive)
    assert ids == expected_ids(gte=utc)
    _, ids = walk(client, meter=METER, limit=1000, timestamp__lte=naive)
    assert ids == expected_ids(lte=utc)


def test_meter_parameter_selects_one_meter(client):
    body = get(client, meter=OTHER, limit=1).json
    assert body["count"] == len(TIMES)
    assert body["results"][0]["id"] == int(TIMES[0].timestamp()) + 1
    assert get(client, meter="NO-SUCH-METER").json == {"count": 0, "next": None, "previous": None, "results": []}


def test_counts_equal_brute_force_also_after_late_inserts(client, loaded):
    ranges = [(None, None), (GTE, None), (None, LTE), (GTE, LTE), (TIMES[5], TIMES[5]), (LTE, GTE)]
    for gte, lte in ranges:
        assert loaded.readings.count(METER, gte, lte) == loaded.readings.brute_force_count(METER, gte, lte)
    # Late data into an old, already indexed hour (a v2 POST of history) and a brand-new old hour.
    for late in (dt.datetime(2026, 3, 29, 1, 33, 33, tzinfo=UTC), dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)):
        response = client.simulate_post(
            PATH,
            headers=KEY,
            json={
                "timestamp": late.isoformat(),
                "meter": METER,
                "electricity_currently_delivered": 0.5,
                "electricity_currently_returned": 0,
                "electricity_delivered_1": 1,
                "electricity_delivered_2": 2,
                "electricity_returned_1": 0,
                "electricity_returned_2": 0,
            },
        )
        assert response.status_code == 201
        # Before the repair job: the marked hour is counted raw; after it: from its repaired index row.
        for _ in ("pending", "repaired"):
            for gte, lte in ranges:
                assert loaded.readings.count(METER, gte, lte) == loaded.readings.brute_force_count(METER, gte, lte)
            assert get(client, meter=METER).json["count"] == loaded.readings.brute_force_count(METER, None, None)
            loaded.housekeeping.repair()
        assert not loaded.index.pending_marks(METER, 0, 2**31)


def test_big_limit_streams_everything(client):
    body = get(client, meter=METER, limit=100000).json
    assert len(body["results"]) == body["count"] >= len(TIMES)
    assert body["next"] is None


def test_next_links_behind_a_trusted_proxy(config, loaded):
    headers = {**KEY, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "dsmr.example.org"}
    untrusted = testing.TestClient(create_app(config, loaded))
    assert (
        untrusted.simulate_get(PATH, headers=headers, query_string=f"meter={METER}")
        .json["next"]
        .startswith("http://falconframework.org/")
    )
    config.server.trust_forwarded_headers = True
    trusted = testing.TestClient(create_app(config, loaded))
    assert (
        trusted.simulate_get(PATH, headers=headers, query_string=f"meter={METER}")
        .json["next"]
        .startswith(f"https://dsmr.example.org{PATH}?limit=25&meter={METER}&offset=25")
    )


def test_dense_hours_across_shard_groups(client, loaded):
    """Regression: pages whose bounds sit deep inside a dense hour, with data in several
    7-day shard groups (found by the 1 M benchmark)."""
    meter = "E-DENSE"
    starts = [dt.datetime(2025, 5, 5, 10, 0, 0, tzinfo=UTC), dt.datetime(2025, 5, 20, 10, 0, 0, tzinfo=UTC)]
    times = [start + dt.timedelta(seconds=s) for start in starts for s in range(0, 400, 2)]
    loaded.writer.store_readings(
        [
            Reading(t, meter, {"electricity_delivered_1": float(i), "electricity_currently_delivered": 0.1})
            for i, t in enumerate(times)
        ]
    )
    ids = [int(t.timestamp()) for t in times]
    for direct_offset in (loaded.readings.direct_offset, 0):  # near the ends, and located via the index
        loaded.readings.direct_offset = direct_offset
        try:
            for ordering, expected in (("timestamp", ids), ("-timestamp", ids[::-1])):
                # The hours are marked, not yet repaired: pages are found through their raw counts.
                count, served = walk(client, meter=meter, limit=37, ordering=ordering)
                assert (count, served) == (len(ids), expected)
        finally:
            loaded.readings.direct_offset = DIRECT_OFFSET
    body = get(client, meter=meter, limit=25, offset=150).json
    assert [r["id"] for r in body["results"]] == ids[150:175]


def test_first_page_sees_readings_older_than_the_remembered_first(client, loaded):
    """The first page is read within a day of the meter's first reading, which the API remembers for
    a minute; a reading imported meanwhile before it is still served first."""
    meter = "E-EARLIER"
    start = dt.datetime(2025, 9, 1, 12, tzinfo=UTC)
    loaded.writer.store_readings(
        [
            Reading(
                start + dt.timedelta(minutes=i),
                meter,
                {"electricity_delivered_1": float(i), "electricity_currently_delivered": 0.1},
            )
            for i in range(30)
        ]
    )
    assert [r["id"] for r in get(client, meter=meter, limit=3).json["results"]] == [
        int((start + dt.timedelta(minutes=i)).timestamp()) for i in range(3)
    ]
    older = start - dt.timedelta(days=40)
    loaded.writer.store_readings(
        [Reading(older, meter, {"electricity_delivered_1": 0.5, "electricity_currently_delivered": 0.1})]
    )
    body = get(client, meter=meter, limit=3).json
    assert body["count"] == 31
    assert [r["id"] for r in body["results"]] == [int(older.timestamp())] + [
        int((start + dt.timedelta(minutes=i)).timestamp()) for i in range(2)
    ]


def test_latest_and_first_reading_beside_and_beyond_the_day_looked_at_first(loaded):
    """readings.latest looks within a day of its bound first (before, now, or after for the oldest)
    and in the rest of the range only when that day has none: both ways give the brute-force answer,
    also for a reading exactly a day from the bound."""
    meter = "E-LATEST"
    now = dt.datetime.now(UTC).replace(microsecond=0)
    times = [
        dt.datetime(2025, 6, 1, 12, tzinfo=UTC),
        dt.datetime(2025, 6, 3, 12, tzinfo=UTC),
        dt.datetime(2025, 6, 3, 18, tzinfo=UTC),
        dt.datetime(2025, 6, 20, 0, tzinfo=UTC),
        now - dt.timedelta(days=3),
    ]
    loaded.writer.store_readings(
        [
            Reading(t, meter, {"electricity_delivered_1": float(i), "electricity_currently_delivered": 0.1})
            for i, t in enumerate(times)
        ]
    )
    day = dt.timedelta(days=1)
    bounds = [
        (None, None),
        (None, times[2]),  # the day before has times[1]
        (None, times[3]),  # nothing within a day: the far part
        (None, times[2] + day),  # times[2] exactly a day before the bound
        (times[0], times[3]),
        (times[1] - day, None),  # times[1] exactly a day after the bound
        (times[0] + dt.timedelta(seconds=1), None),
        (times[3] + dt.timedelta(seconds=1), None),
        (times[4] + dt.timedelta(seconds=1), None),  # nothing at all
    ]
    for after, before in bounds:
        inside = [t for t in times if (after is None or t >= after) and (before is None or t < before)]
        newest = loaded.readings.latest(meter, before=before, after=after)
        oldest = loaded.readings.latest(meter, before=before, after=after, first=True)
        assert (newest and newest["_time"]) == (max(inside) if inside else None), (after, before)
        assert (oldest and oldest["_time"]) == (min(inside) if inside else None), (after, before)
    # The newest reading of a meter silent for days is remembered as the bound; a new one still shows.
    assert loaded.readings.latest(meter)["_time"] == times[4]
    assert loaded.readings.latest(meter)["_time"] == times[4]
    loaded.writer.store_readings([Reading(now, meter, {"electricity_delivered_1": 9.0})])
    assert loaded.readings.latest(meter)["_time"] == now
