"""API access: the on/off switch and the key, answered exactly as DSMR-reader does.

v1 (plain text): disabled -> 405 `API is disabled` (Allow: POST); bad key -> 403 `Invalid auth key`.
v2 (JSON):       disabled -> 403 {"detail": "API is disabled"}; bad key -> 403 {"detail": "Invalid auth key"}.
Resources with `auth_exempt = True` (/health, /api/v2/schema) are always public.

Either header right authorises a request (as in DSMR-reader, which checks both).

Guessing the key: a client that sent a wrong key `limit` times (api.wrong_keys_per_minute, default
MAX_FAILURES; 0: never) within WINDOW seconds gets 429
(`Retry-After`) for every request until the oldest of those failures is WINDOW old, even with the
right key (else guessing would go on); other clients are not affected. A client is its address,
or behind a trusted proxy (server.trust_forwarded_headers) the address the proxy forwards. Counted
per worker process. A request without any key is refused but guesses nothing, so it does not count:
a keyless monitoring probe never locks out the datalogger behind the same address.
"""

from __future__ import annotations

import collections
import hmac
import math
import threading
import time
from typing import Callable

import falcon
from falcon.routing import StaticRoute

from dsmr_ts.config import ApiConfig

KEY_HEADER = "X-AUTHKEY"
TOKEN_PREFIX = "Token "


def is_v1(req: falcon.Request) -> bool:
    return req.path.startswith("/api/v1/")


def presented_keys(req: falcon.Request) -> list[str]:
    """The keys a request presents: `X-AUTHKEY: <key>` and `Authorization: Token <key>` (exact, one
    space); either being right authorises it, as in DSMR-reader."""
    keys = []
    key = req.get_header(KEY_HEADER)
    if key is not None:
        keys.append(key)
    authorization = req.get_header("Authorization")
    if authorization and authorization.startswith(TOKEN_PREFIX):
        keys.append(authorization[len(TOKEN_PREFIX) :])
    return keys


def key_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison (hmac.compare_digest), so timing tells nothing about the key."""
    if presented is None or not expected:
        return False
    return hmac.compare_digest(presented.encode("latin-1", "replace"), expected.encode("latin-1", "replace"))


MAX_FAILURES = 10
WINDOW = 60.0  # seconds
MAX_CLIENTS = 10_000  # clients remembered at once (the oldest are forgotten first)


class FailedKeys:
    """Wrong keys per client within the last WINDOW seconds; `limit` of them lock it out (0: never)."""

    def __init__(self, limit: int = MAX_FAILURES, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until the client may try again (0: it may now)."""
        now = self.clock()
        with self._lock:
            failures = self._failures.get(client)
            if not failures:
                return 0
            while failures and now - failures[0] >= WINDOW:
                failures.popleft()
            if len(failures) < self.limit:
                return 0
            return max(1, math.ceil(WINDOW - (now - failures[0])))

    def failed(self, client: str) -> None:
        if not self.limit:
            return
        with self._lock:
            failures = self._failures.setdefault(client, collections.deque(maxlen=self.limit))
            failures.append(self.clock())
            self._failures.move_to_end(client)
            while len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)


class ApiAccessMiddleware:
    def __init__(self, settings: ApiConfig, trust_forwarded: bool = False, failed: FailedKeys | None = None):
        self.settings = settings
        self.trust_forwarded = trust_forwarded
        self.failed = failed or FailedKeys(settings.wrong_keys_per_minute)

    def _client(self, req: falcon.Request) -> str:
        return req.access_route[0] if self.trust_forwarded and req.access_route else req.remote_addr

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict) -> None:
        if resource is None or getattr(resource, "auth_exempt", False) or isinstance(resource, StaticRoute):
            return  # public, or the energy page's files and data (web.require_key decides for those)
        if not self.settings.enabled:
            if is_v1(req):
                _refuse(resp, falcon.HTTP_405, "API is disabled", text=True)
                resp.set_header("Allow", "POST")
            else:
                _refuse(resp, falcon.HTTP_403, "API is disabled", text=False)
            return
        client = self._client(req)
        keys = presented_keys(req)
        # A request without any key guesses nothing (a monitoring probe, say): it neither counts as a
        # wrong key nor meets the lock-out, so it is always the plain 403.
        wait = self.failed.retry_after(client) if keys else 0
        if wait:
            _refuse(resp, falcon.HTTP_429, f"Too many wrong keys; try again in {wait} s", text=is_v1(req))
            resp.set_header("Retry-After", str(wait))
        elif not any([key_matches(key, self.settings.key) for key in keys]):  # a list: compare every key
            if keys:
                self.failed.failed(client)
            _refuse(resp, falcon.HTTP_403, "Invalid auth key", text=is_v1(req))


def _refuse(resp: falcon.Response, status: str, message: str, *, text: bool) -> None:
    resp.status = status
    if text:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = message
    else:
        resp.media = {"detail": message}
    resp.complete = True  # the responder does not run
