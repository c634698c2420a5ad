"""GET /api/v2/schema: the OpenAPI 3.1 description of everything dsmr-ts serves.

Built from the same tables the resources use (reading fields and formats, v2 POST fields,
statistics fields), so it cannot drift from them; the test suite validates every response it
receives against it. Public, like DSMR-reader's. YAML by default; JSON with ?format=json or
Accept: application/json.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from typing import Any, Callable

import falcon
import yaml

from dsmr_ts import __version__
from dsmr_ts.config import AREA
from dsmr_ts.costs import DAY_POSITIONS
from dsmr_ts.fields import SCHEMA, Kind, Post, ReadingField, ReadingSchema
from dsmr_ts.resources.datalogger import reading_fields
from dsmr_ts.resources.meter_statistics import patch_fields
from dsmr_ts.resources.pagination import PAGE_PARAM_SCHEMA
from dsmr_ts.resources.prices import MAX_POSTED, PRICE, PRICE_START_PATTERN
from dsmr_ts.resources.statistics import DAY_POST_FIELDS, TEMPERATURES, USAGE_OUTPUT
from dsmr_ts.resources.validation import (
    DATE_SCHEMA,
    DATETIME_SCHEMA,
    FILTER_DATE_SCHEMA,
    FILTER_DATETIME_SCHEMA,
    METER_SCHEMA,
    PAGE_DAY_SCHEMA,
    PAGE_MONTH_SCHEMA,
    PAGE_YEAR_SCHEMA,
    Field,
    field_schema,
)

JSON = "application/json"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


DECIMAL_3 = {"type": "string", "pattern": r"^-?\d+\.\d{3}$"}
MONEY = {"type": "string", "pattern": r"^-?\d+\.\d{2}$"}
DATETIME = {"type": "string", "format": "date-time"}


def _decimal(places: int) -> dict[str, Any]:
    return {"type": "string", "pattern": rf"^-?\d+\.\d{{{places}}}$"}


def _output_schema(spec: ReadingField) -> dict[str, Any]:
    """How a field looks in a reading (from its row in the field table); null when absent."""
    if spec.kind is Kind.DATETIME:
        schema = _nullable(DATETIME)
    elif spec.kind is Kind.INTEGER:
        schema = {"type": ["integer", "null"]}
    else:
        schema = _nullable(_decimal(spec.places))
    description = " ".join(part for part in (spec.description, f"({spec.unit})" if spec.unit else "") if part)
    return {**schema, "description": description} if description else schema


def _body_schema(fields: list[Field], form: bool = False, **more: Any) -> dict[str, Any]:
    """A body of fields, each as its check takes it (validation.field_schema); form: sent as a
    form (urlencoded or multipart), where nothing is null."""
    return {
        "type": "object",
        "properties": {spec.name: field_schema(spec, form) for spec in fields},
        "required": [spec.name for spec in fields if spec.required],
        **more,
    }


def _json_and_form(name: str, build: Callable[[bool], dict[str, Any]]) -> dict[str, Any]:
    """Component schemas `name` (a JSON body) and `nameForm` (the same as a form)."""
    return {name: build(False), f"{name}Form": build(True)}


def _reading_input_schema(schema: ReadingSchema, form: bool = False) -> dict[str, Any]:
    """POST datalogger/dsmrreading. A meter position and its time go together: one given (not
    empty, not null) needs the other. Other properties are ignored."""
    present = {"not": {"enum": [""] if form else [None, ""]}}
    pairs = [
        {
            "if": {"required": [one], "properties": {one: present}},
            "then": {"required": [other], "properties": {other: present}},
        }
        for value, time in schema.mbus_pairs
        for one, other in ((value, time), (time, value))
        if value in schema.by_name and schema.by_name[value].post is not Post.REFUSED
    ]
    fields = reading_fields(dt.timezone.utc, schema)
    return _body_schema(
        fields,
        form,
        allOf=pairs,
        description="timestamp and the six required values; a value of the table's precision (400: a"
        " timestamp more than 24 h ahead, before 1970, or a device time more than 24 h from it)",
    )


def _reading_schema(schema: ReadingSchema) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "integer", "description": "Unix seconds of the timestamp"},
        "timestamp": DATETIME,
    }
    properties.update({spec.name: _output_schema(spec) for spec in schema.api_fields})
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _hour_schema() -> dict[str, Any]:
    properties = {
        "id": {"type": "integer", "description": "Unix seconds of hour_start / 3600"},
        "hour_start": DATETIME,
        **{n: DECIMAL_3 for n in USAGE_OUTPUT},
        "gas": _nullable(DECIMAL_3),
    }
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _day_schema() -> dict[str, Any]:
    properties = {
        "id": {"type": "integer", "description": "the day as YYYYMMDD"},
        "day": {"type": "string", "format": "date"},
        "total_cost": _nullable(MONEY),
        **{n: DECIMAL_3 for n in USAGE_OUTPUT},
        "electricity1_cost": _nullable(MONEY),
        "electricity2_cost": _nullable(MONEY),
        "gas": _nullable(DECIMAL_3),
        "gas_cost": _nullable(MONEY),
        **{
            name: {**_nullable(_decimal(1)), "description": "null: dsmr-ts has no weather source"}
            for name in TEMPERATURES
        },
        "fixed_cost": {**MONEY, "description": "the price period's fixed daily cost (or as posted)"},
        "electricity_reading_timestamp": {**_nullable(DATETIME), "description": "the day's last reading"},
        **{
            name: {**_nullable(DECIMAL_3), "description": f"{field} at the day's end"}
            for name, field in DAY_POSITIONS.items()
            if name != "gas_reading"
        },
        "gas_reading_timestamp": {**_nullable(DATETIME), "description": "the day's last gas value (as booked)"},
        "gas_reading": {**_nullable(DECIMAL_3), "description": "the gas meter position at the day's end"},
    }
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _day_input_schema(form: bool = False) -> dict[str, Any]:
    """POST statistics/day, as DSMR-reader's DayStatistics columns. Other properties are ignored."""
    fields = [
        Field("day", lambda value: value, required=True, schema=DATE_SCHEMA),
        *DAY_POST_FIELDS,
        Field("meter", lambda value: value, schema=METER_SCHEMA),
    ]
    return _body_schema(fields, form, description="400 also for a day that exists, or one before 1970 or after 2199")


def _minute_schema(schema: ReadingSchema) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "integer", "description": "read_at in Unix minutes"},
        "read_at": {**DATETIME, "description": "the end of the minute"},
    }
    for spec, name, how in schema.minute_columns:
        shown = {"type": ["integer", "null"]} if spec.kind is Kind.INTEGER else _nullable(_decimal(spec.places))
        properties[name] = {
            **shown,
            "description": f"{'the last' if how == 'last' else 'the mean'} {spec.name} of the minute",
        }
    return _object(properties)


def _counted_operation(item: str, field: str, orderings: list[str], summary: str) -> dict[str, Any]:
    """A paged route filtered on a datetime field."""
    operation = _list_operation(item, field, FILTER_DATETIME_SCHEMA, summary)
    operation["get"]["parameters"][2] = _param(
        "ordering", {"type": "string"}, " or ".join(f"`{o}`" for o in orderings) + " (first: the default)"
    )
    return operation


def _object(properties: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required else [],
        "additionalProperties": False,
    }


def _v5_schemas(schema: ReadingSchema) -> dict[str, Any]:
    counter = {"type": ["integer", "null"], "minimum": 0}
    statistics = {s.name: ({"type": ["string", "null"]} if s.kind is Kind.TEXT else counter) for s in schema.statistics}
    usage = {n: DECIMAL_3 for n in USAGE_OUTPUT}
    return {
        "Version": _object({"version": {"type": "string"}}),
        "Monitoring": _object(
            {
                "problems": {"type": "integer", "minimum": 0},
                "details": {
                    "type": "array",
                    "items": _object(
                        {"source": {"type": "string"}, "description": {"type": "string"}, "since": _nullable(DATETIME)}
                    ),
                },
            }
        ),
        "MeterStatistics": _object(
            {
                "id": {"type": "integer"},
                "timestamp": _nullable(DATETIME),
                **statistics,
                "rejected_telegrams": {"type": "integer", "minimum": 0},
                "latest_telegram": {
                    "type": ["string", "null"],
                    "description": "the newest raw telegram, as received (v1 or the reader); null when none came",
                },
            }
        ),
        **_json_and_form(
            "MeterStatisticsInput",
            lambda form: _body_schema(patch_fields(schema.statistics), form, additionalProperties=False),
        ),
        "ElectricityLive": _object(
            {
                "timestamp": DATETIME,
                "currently_delivered": {"type": "integer"},
                "currently_returned": {"type": "integer"},
                "cost_per_hour": _nullable(MONEY),
                "tariff_name": {"type": ["string", "null"]},
            },
            required=False,
        ),
        "GasLive": _object(
            {"timestamp": DATETIME, "currently_delivered": DECIMAL_3, "cost_per_interval": MONEY}, required=False
        ),
        "Today": {
            "anyOf": [
                _object(
                    {
                        "day": {"type": "string", "format": "date"},
                        **usage,
                        "electricity1_cost": _nullable(MONEY),
                        "electricity2_cost": _nullable(MONEY),
                        "gas": DECIMAL_3,
                        "gas_cost": _nullable(MONEY),
                        "total_cost": _nullable(MONEY),
                    }
                ),
                {"type": "string", "description": "No electricity readings found for: <day>"},
            ]
        },
        "EnergySupplierPrice": _object(
            {
                "id": {"type": "integer"},
                "description": {"type": "string"},
                "start": {"type": "string", "format": "date"},
                "end": {"type": ["string", "null"], "format": "date"},
                **{
                    f"{n}_price": {"type": "string"}
                    for n in (
                        "electricity_delivered_1",
                        "electricity_delivered_2",
                        "electricity_returned_1",
                        "electricity_returned_2",
                        "gas",
                    )
                },
                "fixed_daily_cost": {"type": "string"},
            }
        ),
        "EnergySupplierPricePage": _page("EnergySupplierPrice"),
        "ElectricityConsumption": _minute_schema(schema),
        "ElectricityConsumptionPage": _page("ElectricityConsumption"),
        "GasConsumption": _object(
            {
                "id": {"type": "integer", "description": "read_at in Unix seconds"},
                "read_at": {**DATETIME, "description": "when the gas value is booked"},
                "delivered": DECIMAL_3,
                "currently_delivered": DECIMAL_3,
            }
        ),
        "GasConsumptionPage": _page("GasConsumption"),
        "QuarterHourPeak": _object(
            {
                "id": {"type": "integer", "description": "quarter start in Unix s / 900"},
                "read_at_start": DATETIME,
                "read_at_end": DATETIME,
                "average_delivered": {**DECIMAL_3, "description": "kW"},
            }
        ),
        "QuarterHourPeakPage": _page("QuarterHourPeak"),
    }


def _simple_get(schema: str, summary: str, meter: bool = True) -> dict[str, Any]:
    errors = {name: V2_ERRORS[name] for name in (("400", "403", "429", "503") if meter else ("403", "429", "503"))}
    return {
        "get": {
            "summary": summary,
            "security": KEY_SECURITY,
            "parameters": [PAGING[2]] if meter else [],
            "responses": {"200": _json(schema, summary), **errors},
        }
    }


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["count", "next", "previous", "results"],
        "additionalProperties": False,
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "next": {"type": ["string", "null"], "format": "uri"},
            "previous": {"type": ["string", "null"], "format": "uri"},
            "results": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
        },
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


PAGING = [
    _param("offset", PAGE_PARAM_SCHEMA, "rows to skip (empty: 0)"),
    _param("limit", PAGE_PARAM_SCHEMA, "rows per page (default 25; 0 and empty also mean 25; no maximum)"),
    _param(
        "meter",
        {"anyOf": [METER_SCHEMA, {"const": ""}]},
        "an equipment id or a configured name (default, or empty: the only meter, or the one that reported last)",
    ),
]
V2_ERRORS = {
    "400": {
        "description": "invalid parameters or fields {name: [message]}, or a malformed body {detail}",
        "content": {
            JSON: {
                "schema": {
                    "anyOf": [{"$ref": "#/components/schemas/FieldErrors"}, {"$ref": "#/components/schemas/Detail"}]
                }
            }
        },
    },
    "403": _json("Detail", "API disabled, or a wrong or missing key"),
    "429": _json("Detail", "too many wrong keys from this client lately (Retry-After)"),
    "503": _json("Detail", "InfluxDB unavailable"),
}
KEY_SECURITY: list[dict[str, list[str]]] = [{"X-AUTHKEY": []}, {"TokenAuth": []}]


def _body_operation(
    summary: str, input_schema: str, status: str, output_schema: str, description: str, required: bool = True
) -> dict[str, Any]:
    """A v2 POST or PATCH taking JSON, a form or multipart."""
    return {
        "summary": summary,
        "security": KEY_SECURITY,
        "requestBody": {
            "required": required,
            "content": {
                JSON: {"schema": {"$ref": f"#/components/schemas/{input_schema}"}},
                **{
                    ct: {"schema": {"$ref": f"#/components/schemas/{input_schema}Form"}}
                    for ct in ("application/x-www-form-urlencoded", "multipart/form-data")
                },
            },
        },
        "responses": {
            status: _json(output_schema, description),
            **V2_ERRORS,
            "413": _json("Detail", "body too large"),
            "415": _json("Detail", "unsupported content type"),
        },
    }


def _list_operation(item: str, field: str, time_schema: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": KEY_SECURITY,
            "parameters": [
                _param(f"{field}__gte", time_schema, "on or after (naive values are local time)"),
                _param(f"{field}__lte", time_schema, "on or before"),
                _param(
                    "ordering",
                    {"type": "string"},
                    f"`{field}` (default) or `-{field}`; comma-separated terms: the first valid one counts",
                ),
                *PAGING,
            ],
            "responses": {"200": _json(f"{item}Page", "a page"), **V2_ERRORS},
        }
    }


# The energy page's data (resources/web.py): read-only, public unless web.require_key.
PAGE_DATA = {
    "meters": ("the meter picker, the default meter and the time zone the page shows", []),
    "live": ("power now (per phase), tariff, cost per hour, the running quarter hour, the month's peak", []),
    "summary": ("today (live), yesterday, this month and year with costs; monitoring's problems", []),
    "power": ("a local day of mean power per minute", [("day", PAGE_DAY_SCHEMA, "YYYY-MM-DD (default today)")]),
    "days": ("the days of a month: usage, return, gas, costs", [("month", PAGE_MONTH_SCHEMA, "YYYY-MM")]),
    "months": ("the months of a year, summed from their days", [("year", PAGE_YEAR_SCHEMA, "YYYY")]),
    "peaks": ("the quarter-hour peaks of a month", [("month", PAGE_MONTH_SCHEMA, "YYYY-MM (default this month)")]),
}
PAGE_SECURITY_NOTE = "public; with web.require_key the page's cookie (POST /web/login) or X-AUTHKEY, else 403"


def _one_field_body(name: str, schema: dict[str, Any], content_types: tuple[str, ...]) -> dict[str, Any]:
    """A required body of one required field, in each of these content types."""
    body = {"type": "object", "required": [name], "properties": {name: schema}}
    return {"required": True, "content": {ct: {"schema": body} for ct in content_types}}


def _page_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "dsmr-ts's energy page (when web.enabled)",
                "security": [],
                "responses": {
                    "200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "404": _json("Detail", "web.enabled is false: no page"),
                },
            }
        },
        "/web/login": {
            "post": {
                "summary": "the API key, once, for the energy page (web.require_key): answers with its cookie",
                "security": [],
                "requestBody": _one_field_body(
                    "key",
                    {"type": "string", "minLength": 1},
                    ("application/x-www-form-urlencoded", "multipart/form-data", JSON),
                ),
                "responses": {
                    "204": {"description": "the key is right: the page's cookie (HttpOnly, SameSite=Strict) is set"},
                    "400": V2_ERRORS["400"],
                    "403": _json("Detail", "not the key"),
                    "413": _json("Detail", "body too large"),
                    "415": _json("Detail", "unsupported content type"),
                    "429": _json("Detail", "too many wrong keys from this client lately (Retry-After)"),
                },
            }
        },
    }
    for name, (summary, extra) in PAGE_DATA.items():
        paths[f"/web/data/{name}"] = {
            "get": {
                "summary": f"the energy page: {summary}",
                "description": PAGE_SECURITY_NOTE,
                "security": [],
                "parameters": [PAGING[2], *(_param(param, schema, text) for param, schema, text in extra)],
                "responses": {
                    "200": {"description": summary, "content": {JSON: {"schema": {"type": "object"}}}},
                    "400": V2_ERRORS["400"],
                    "403": _json("Detail", "web.require_key: the page's cookie or the key is needed"),
                    "503": V2_ERRORS["503"],
                },
            }
        }
    return paths


UNIT_PRICE = {"type": "string", "pattern": r"^-?\d+\.\d{5}$", "description": "EUR/kWh"}
PRICE_RANGE = [
    _param("start__gte", FILTER_DATETIME_SCHEMA, "intervals starting on or after (default: today's start)"),
    _param("start__lte", FILTER_DATETIME_SCHEMA, "intervals starting on or before (default: two days on)"),
    _param(
        "area",
        {"anyOf": [{"type": "string", "pattern": f"^{AREA.pattern}$"}, {"const": ""}]},
        "market area (default, or empty: the contract's, else the only one stored)",
    ),
]


def _price_schemas() -> dict[str, Any]:
    return {
        "Price": _object(
            {
                "start": DATETIME,
                "end": DATETIME,
                "area": {"type": "string"},
                "resolution": {"enum": ["PT15M", "PT60M"]},
                "market_price": UNIT_PRICE,
                "price": {**_nullable(UNIT_PRICE), "description": "a delivered kWh all-in (null: no dynamic contract)"},
                "export_price": {**_nullable(UNIT_PRICE), "description": "a returned kWh (null: no dynamic contract)"},
            }
        ),
        "PricePage": _page("Price"),
        "PricesInput": {
            "type": "object",
            "required": ["area", "resolution", "prices"],
            "properties": {
                "area": {"type": "string", "pattern": f"^{AREA.pattern}$"},
                "resolution": {"enum": ["PT15M", "PT60M"]},
                "prices": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_POSTED,
                    "items": {
                        "type": "object",
                        "required": ["start", "price"],
                        "properties": {
                            "start": {
                                "allOf": [DATETIME_SCHEMA, {"type": "string", "pattern": PRICE_START_PATTERN}],
                                "description": "the interval's start, on a quarter hour (a start given twice: the"
                                " last counts)",
                            },
                            "price": {**PRICE.schema, "description": "market price, EUR/kWh"},
                        },
                    },
                },
            },
        },
        "PricesStored": _object(
            {"area": {"type": "string"}, "stored": {"type": "integer"}, "unchanged": {"type": "integer"}}
        ),
        "CheapestPrice": _object(
            {
                "area": {"type": "string"},
                "start": DATETIME,
                "end": DATETIME,
                "average_price": UNIT_PRICE,
                "average_market_price": UNIT_PRICE,
                "all_in": {"type": "boolean", "description": "average_price is the all-in price (a dynamic contract)"},
            }
        ),
    }


def _price_paths() -> dict[str, Any]:
    return {
        "/api/v2/prices": {
            "get": {
                "summary": "day-ahead market prices, and each interval's all-in and export price (dsmr-ts)",
                "security": KEY_SECURITY,
                "parameters": [*PRICE_RANGE, *PAGING[:2]],
                "responses": {"200": _json("PricePage", "a page"), **V2_ERRORS},
            },
            "post": {
                "summary": "store market prices (dsmr-ts); the same prices again change nothing",
                "security": KEY_SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/PricesInput"}}},
                },
                "responses": {
                    "201": _json("PricesStored", "how many were stored (new or changed) and unchanged"),
                    **V2_ERRORS,
                    "413": _json("Detail", "body too large"),
                    "415": _json("Detail", "unsupported content type"),
                },
            },
        },
        "/api/v2/prices/cheapest": {
            "get": {
                "summary": "the cheapest consecutive window of a duration in a range (dsmr-ts)",
                "security": KEY_SECURITY,
                "parameters": [
                    {
                        "name": "duration",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": r"^PT(?:\d{1,2}H)?(?:\d{1,4}M)?$"},
                        "description": "ISO 8601, whole quarter hours up to a day: PT2H, PT45M",
                    },
                    *PRICE_RANGE,
                ],
                "responses": {
                    "200": _json("CheapestPrice", "the window"),
                    "404": _json("Detail", "no prices cover the duration without a gap in the range"),
                    **V2_ERRORS,
                },
            }
        },
    }


@functools.cache
def openapi_document(schema: ReadingSchema = SCHEMA) -> dict[str, Any]:
    """The document for a field table (cached per table)."""
    datetime_filter = FILTER_DATETIME_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dsmr-ts API",
            "version": __version__,
            "description": "DSMR-reader compatible API over InfluxDB 2 (v1 datalogger, v2 readings and statistics).",
        },
        "components": {
            "securitySchemes": {
                "X-AUTHKEY": {"type": "apiKey", "in": "header", "name": "X-AUTHKEY"},
                "TokenAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Token <key>`",
                },
            },
            "schemas": {
                "Reading": _reading_schema(schema),
                "ReadingPage": _page("Reading"),
                **_json_and_form("ReadingInput", lambda form: _reading_input_schema(schema, form)),
                "HourStatistics": _hour_schema(),
                "HourStatisticsPage": _page("HourStatistics"),
                "DayStatistics": _day_schema(),
                "DayStatisticsPage": _page("DayStatistics"),
                **_json_and_form("DayStatisticsInput", _day_input_schema),
                "Detail": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
                "FieldErrors": {
                    "type": "object",
                    "minProperties": 1,
                    # A list field's errors are per item ({} for a good one): POST /api/v2/prices.
                    "additionalProperties": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "object"}]},
                        "minItems": 1,
                    },
                },
                **_v5_schemas(schema),
                **_price_schemas(),
                "Health": {
                    "type": "object",
                    "required": ["status", "influxdb"],
                    "additionalProperties": False,
                    "properties": {
                        "status": {"enum": ["ok", "error"]},
                        "influxdb": {"enum": ["ok", "unreachable", "unauthorized"]},
                        "detail": {"type": "string", "description": "what is wrong"},
                    },
                },
            },
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "service and InfluxDB health (public)",
                    "security": [],
                    "responses": {
                        "200": _json("Health", "healthy"),
                        "503": _json("Health", "InfluxDB does not answer or refuses the token"),
                    },
                }
            },
            "/api/v2/schema": {
                "get": {
                    "summary": "this document (public)",
                    "security": [],
                    "parameters": [_param("format", {"type": "string"}, "`json`; anything else: YAML")],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {
                                "application/yaml": {"schema": {"type": "string"}},
                                JSON: {"schema": {"type": "object"}},
                            },
                        }
                    },
                }
            },
            "/api/v1/datalogger/dsmrreading": {
                "post": {
                    "summary": "store a raw P1 telegram (remote datalogger)",
                    "security": KEY_SECURITY,
                    "requestBody": _one_field_body(
                        "telegram",
                        {
                            "type": "string",
                            "pattern": r"[^\s\x00]",
                            "description": "the raw telegram (NUL bytes around it are dropped); one that does not"
                            " parse, or fails its CRC, is a 400 with the reason",
                        },
                        ("application/x-www-form-urlencoded", "multipart/form-data"),
                    ),
                    "responses": {
                        "201": {"description": "stored (empty body)"},
                        "400": _text("`Invalid data`, or why the telegram was rejected"),
                        "403": _text("`Invalid auth key`"),
                        "405": _text("`API is disabled`"),
                        "429": _text("too many wrong keys from this client lately (Retry-After)"),
                        "413": _text("body too large"),
                        "503": _text("InfluxDB unavailable"),
                    },
                }
            },
            "/api/v2/datalogger/dsmrreading": {
                **_list_operation("Reading", "timestamp", datetime_filter, "readings"),
                "post": _body_operation(
                    "store a reading given as values", "ReadingInput", "201", "Reading", "the stored reading"
                ),
            },
            "/api/v2/statistics/day": {
                **_list_operation("DayStatistics", "day", FILTER_DATE_SCHEMA, "day statistics with costs"),
                "post": _body_operation(
                    "create a day (history); an existing day is a 400",
                    "DayStatisticsInput",
                    "201",
                    "DayStatistics",
                    "the stored day",
                ),
            },
            "/api/v2/statistics/hour": _list_operation(
                "HourStatistics", "hour_start", datetime_filter, "hour statistics"
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (behind the key unless api.metrics_public)",
                    "security": [*KEY_SECURITY, {}],
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "403": V2_ERRORS["403"],
                        "429": V2_ERRORS["429"],
                    },
                }
            },
            "/api/v2/application/version": _simple_get("Version", "dsmr-ts version", meter=False),
            "/api/v2/application/monitoring": _simple_get(
                "Monitoring", "problems an operator should look at", meter=False
            ),
            "/api/v2/datalogger/meter-statistics": {
                **_simple_get("MeterStatistics", "the meter's counters from its latest telegram"),
                "patch": _body_operation(
                    "set meter statistics (remote dataloggers)",
                    "MeterStatisticsInput",
                    "200",
                    "MeterStatistics",
                    "the updated statistics",
                    required=False,  # nothing to set: the statistics as they are
                ),
            },
            "/api/v2/consumption/electricity-live": _simple_get("ElectricityLive", "power now ({} without readings)"),
            "/api/v2/consumption/gas-live": _simple_get("GasLive", "gas used in the newest interval ({} without gas)"),
            "/api/v2/consumption/today": _simple_get("Today", "today so far, with costs"),
            "/api/v2/consumption/energy-supplier-prices": {
                "get": {
                    "summary": "the price periods of the config",
                    "security": KEY_SECURITY,
                    "parameters": PAGING[:2],
                    "responses": {"200": _json("EnergySupplierPricePage", "a page"), **V2_ERRORS},
                }
            },
            "/api/v2/consumption/electricity": _counted_operation(
                "ElectricityConsumption", "read_at", ["read_at", "-read_at"], "electricity per minute with readings"
            ),
            "/api/v2/consumption/gas": _counted_operation(
                "GasConsumption", "read_at", ["read_at", "-read_at"], "gas values and the gas used since the one before"
            ),
            **_page_paths(),
            **_price_paths(),
            "/api/v2/consumption/quarter-hour-peak-electricity": _counted_operation(
                "QuarterHourPeak",
                "read_at_start",
                ["read_at_start", "-read_at_start", "average_delivered", "-average_delivered"],
                "average power of each completed quarter hour (Belgian capacity tariff)",
            ),
        },
    }


class SchemaResource:
    auth_exempt = True

    def __init__(self, schema: ReadingSchema = SCHEMA):
        self.schema = schema

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        document = openapi_document(self.schema)
        wants_json = req.get_param("format") == "json" or (
            req.get_param("format") is None and JSON in (req.accept or "") and "yaml" not in (req.accept or "")
        )
        if wants_json:
            resp.content_type = JSON
            resp.text = json.dumps(document)
        else:
            resp.content_type = "application/yaml"
            resp.text = yaml.safe_dump(document, sort_keys=False)
