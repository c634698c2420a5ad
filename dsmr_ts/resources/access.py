"""API access: the on/off switch and the key, answered exactly as DSMR-reader does.

v1 (plain text): disabled -> 405 `API is disabled` (Allow: POST); bad key -> 403 `Invalid auth key`.
v2 (JSON):       disabled -> 403 {"detail": "API is disabled"}; bad key -> 403 {"detail": "Invalid auth key"}.
Resources with `auth_exempt = True` (/health, /api/v2/schema) are always public.
"""

from __future__ import annotations

import hmac

import falcon

from dsmr_ts.config import ApiConfig

KEY_HEADER = "X-AUTHKEY"
TOKEN_PREFIX = "Token "


def is_v1(req: falcon.Request) -> bool:
    return req.path.startswith("/api/v1/")


def presented_key(req: falcon.Request) -> str | None:
    """The key from `X-AUTHKEY: <key>` or `Authorization: Token <key>` (exact, one space)."""
    key = req.get_header(KEY_HEADER)
    if key is not None:
        return key
    authorization = req.get_header("Authorization")
    if authorization and authorization.startswith(TOKEN_PREFIX):
        return authorization[len(TOKEN_PREFIX):]
    return None


def key_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison (hmac.compare_digest), so timing tells nothing about the key."""
    if presented is None or not expected:
        return False
    return hmac.compare_digest(presented.encode("latin-1", "replace"), expected.encode("latin-1", "replace"))


class ApiAccessMiddleware:
    def __init__(self, settings: ApiConfig):
        self.settings = settings

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict) -> None:
        if resource is None or getattr(resource, "auth_exempt", False):
            return
        if not self.settings.enabled:
            if is_v1(req):
                _refuse(resp, falcon.HTTP_405, "API is disabled", text=True)
                resp.set_header("Allow", "POST")
            else:
                _refuse(resp, falcon.HTTP_403, "API is disabled", text=False)
        elif not key_matches(presented_key(req), self.settings.key):
            _refuse(resp, falcon.HTTP_403, "Invalid auth key", text=is_v1(req))


def _refuse(resp: falcon.Response, status: str, message: str, *, text: bool) -> None:
    resp.status = status
    if text:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = message
    else:
        resp.media = {"detail": message}
    resp.complete = True  # the responder does not run
