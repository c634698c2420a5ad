"""Read a POST body as a flat mapping of fields, whatever form the client used (and however it
sent it: with a Content-Length, or chunked)."""

from __future__ import annotations

import io
from typing import Any

import falcon

# Telegrams are about 1 KB and a v2 reading less; anything near this is not a reading.
MAX_BODY_BYTES = 64 * 1024


def _too_large() -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(description=f"Request body is larger than {MAX_BODY_BYTES} bytes.")


class ChunkedBodyMiddleware:
    """A body sent with `Transfer-Encoding: chunked` has no Content-Length, and Falcon reads such a
    body as empty. gunicorn decodes the chunks: read at most MAX_BODY_BYTES of them (413 beyond),
    then hand the body on as if it had come with its length. Runs after the key check, so only an
    authorised client's body is read."""

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict) -> None:
        if req.content_length is not None or "chunked" not in (req.get_header("Transfer-Encoding") or "").lower():
            return
        body = req.stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
        req.stream = req.env["wsgi.input"] = io.BytesIO(body)
        req.env["CONTENT_LENGTH"] = str(len(body))


def read_fields(req: falcon.Request) -> dict[str, Any]:
    """JSON object, application/x-www-form-urlencoded or multipart/form-data -> dict.

    For a repeated form field the last value wins. Raises 4xx HTTPErrors with a clear message.
    """
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise _too_large()
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    try:
        if media_type in ("", falcon.MEDIA_URLENCODED):
            return _urlencoded(req)
        if media_type == falcon.MEDIA_JSON:
            data = req.get_media()
            if not isinstance(data, dict):
                raise falcon.HTTPBadRequest(description="Expected a JSON object.")
            return data
        if media_type == falcon.MEDIA_MULTIPART:
            return _multipart(req)
    except falcon.MediaMalformedError as exc:
        raise falcon.HTTPBadRequest(description=f"Malformed request body: {_reason(exc)}") from None
    except RecursionError:  # [[[[... : Python's JSON parser gives up without a ValueError
        raise falcon.HTTPBadRequest(description="Malformed request body: nested too deeply.") from None
    except falcon.MediaNotFoundError:
        return {}
    raise falcon.HTTPUnsupportedMediaType(description=f'Unsupported media type "{media_type}" in request.')


def _urlencoded(req: falcon.Request) -> dict[str, Any]:
    body = req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise _too_large()
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise falcon.HTTPBadRequest(
            description="A url-encoded body must be ASCII (percent-encode other bytes)."
        ) from None
    fields = falcon.uri.parse_query_string(text, keep_blank=True, csv=False)
    return {name: value[-1] if isinstance(value, list) else value for name, value in fields.items()}


def _multipart(req: falcon.Request) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for part in req.get_media():
        if part.name is not None:  # a part named "" is a field named "" (refused where fields are checked)
            # get_text() decodes with the part's charset (default UTF-8); falcon caps a part at 1 MiB.
            fields[part.name] = part.get_text()
    return fields


def _reason(exc: falcon.MediaMalformedError) -> str:
    cause = exc.__cause__
    return str(cause).splitlines()[0] if cause else "cannot be parsed"
