"""Error bodies: DSMR-reader's shapes, and never a 500 for anything a client sent."""

from __future__ import annotations

import logging
from typing import Any, Callable

import falcon

from dsmr_ts.influx.store import StoreUnavailable
from dsmr_ts.resources.access import is_v1

log = logging.getLogger(__name__)


class ValidationFailed(falcon.HTTPBadRequest):
    """400 whose body is the field errors themselves, {"field": ["message"]}, as DRF sends them."""

    def __init__(self, errors: dict[str, list[Any]]):  # messages, or per item of a list field its errors
        super().__init__(description="Invalid input.")
        self.errors = errors


def all_valid(*parsers: Callable[[], Any]) -> list[Any]:
    """Run every parser; one 400 listing the errors of all of them, or their results."""
    results, errors = [], {}
    for parse in parsers:
        try:
            results.append(parse())
        except ValidationFailed as exc:
            errors.update(exc.errors)
            results.append(None)
    if errors:
        raise ValidationFailed(errors)
    return results


def serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """v1: plain text; everything else: {"detail": "..."} like Django REST framework."""
    if isinstance(exc, ValidationFailed):
        resp.content_type = falcon.MEDIA_JSON
        resp.media = exc.errors
        return
    if isinstance(exc, falcon.HTTPMethodNotAllowed):
        message = f'Method "{req.method}" not allowed.'
    else:
        message = exc.description or exc.title
    if is_v1(req):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = message
    else:
        resp.content_type = falcon.MEDIA_JSON
        resp.media = {"detail": message}


def store_unavailable(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict) -> None:
    assert isinstance(exc, StoreUnavailable)
    log.warning("%s %s: %s", req.method, req.path, exc)  # with InfluxDB's own message
    raise falcon.HTTPServiceUnavailable(
        title="Service Unavailable", description=f"Storage is unavailable: {exc.summary}"
    )


def unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("%s %s failed", req.method, req.path)
    raise falcon.HTTPInternalServerError(title="Internal Server Error", description="Internal server error.")


def install(app: falcon.App) -> None:
    app.set_error_serializer(serialize_http_error)
    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(StoreUnavailable, store_unavailable)
