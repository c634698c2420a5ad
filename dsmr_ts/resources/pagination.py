"""Limit/offset pagination like DRF's LimitOffsetPagination, with a streamed envelope.

- limit: default 25; limit=0 also gives 25 (as DSMR-reader: DRF reads a non-positive limit as
  "not given"); no maximum. Not a whole number, or negative -> 400 (DSMR-reader silently uses 25).
- offset: default 0; not a whole number, or negative -> 400.
- next/previous: absolute URLs with the other parameters kept, keys sorted like DRF; null at the ends.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import falcon

from dsmr_ts.resources.errors import ValidationFailed, all_valid

DEFAULT_LIMIT = 25
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Page:
    offset: int
    limit: int


PAGE_PARAM_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0}, {"const": ""}]}  # empty: the default


def _whole(req: falcon.Request, name: str) -> int | None:
    raw = req.get_param(name)
    if raw is None or raw == "":
        return None
    value = int(raw) if re.fullmatch(r"\d+", raw) else -1
    if value < 0:
        noun = "A positive integer" if name == "limit" else "A non-negative integer"
        raise ValidationFailed({name: [f"{noun} is required."]})
    return value


MAX_ROWS = 2**40  # more rows than any store holds: a bigger limit or offset means the same


def page_params(req: falcon.Request) -> Page:
    limit, offset = all_valid(lambda: _whole(req, "limit"), lambda: _whole(req, "offset"))
    return Page(offset=min(offset or 0, MAX_ROWS), limit=min(limit or DEFAULT_LIMIT, MAX_ROWS))


def ordering(req: falcon.Request, allowed: Iterable[str]) -> str | None:
    """The `ordering` asked for, as DRF's OrderingFilter reads it: comma-separated terms, the ones
    it does not know dropped, the first one left deciding (`-timestamp,foo` is `-timestamp`).
    None: nothing valid (the route's default order)."""
    known = set(allowed)
    terms = (term.strip() for term in (req.get_param("ordering") or "").split(","))
    return next((term for term in terms if term in known), None)


def base_url(req: falcon.Request, trust_forwarded: bool) -> str:
    """scheme://host/path as the client saw it (X-Forwarded-Proto/Host only when trusted)."""
    if trust_forwarded:
        scheme, host = req.forwarded_scheme, req.forwarded_host
    else:
        scheme, host = req.scheme, req.netloc
    return f"{scheme}://{host}{req.path}"


def _url(req: falcon.Request, trust_forwarded: bool, **changes: int | None) -> str:
    params: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(req.query_string, keep_blank_values=True):
        params[key] = value
    for key, change in changes.items():
        if change is None:
            params.pop(key, None)
        else:
            params[key] = str(change)
    return base_url(req, trust_forwarded) + "?" + urllib.parse.urlencode(sorted(params.items()))


def links(req: falcon.Request, page: Page, count: int, trust_forwarded: bool) -> tuple[str | None, str | None]:
    next_url = None
    if page.offset + page.limit < count:
        next_url = _url(req, trust_forwarded, limit=page.limit, offset=page.offset + page.limit)
    previous_url = None
    if page.offset > 0:
        back = page.offset - page.limit
        previous_url = _url(req, trust_forwarded, limit=page.limit, offset=back if back > 0 else None)
    return next_url, previous_url


def stream_envelope(
    count: int, next_url: str | None, previous_url: str | None, results: Iterable[dict[str, Any] | str]
) -> Iterator[bytes]:
    """{"count", "next", "previous", "results": [...]} produced item by item (bounded memory); an item
    given as a str is JSON text already."""
    head = {"count": count, "next": next_url, "previous": previous_url}
    chunk = [json.dumps(head)[:-1] + ', "results": [']
    size = 0
    for index, item in enumerate(results):
        text = (", " if index else "") + (item if isinstance(item, str) else json.dumps(item))
        chunk.append(text)
        size += len(text)
        if size >= CHUNK_BYTES:  # one write per ~64 KB, not per row
            yield "".join(chunk).encode()
            chunk, size = [], 0
    chunk.append("]}")
    yield "".join(chunk).encode()
