"""Bring an InfluxDB 2 to the state dsmr-ts needs: onboarded, both buckets, the statistics tasks.

Idempotent: running it again on a set-up server changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from influxdb_client import Authorization, BucketRetentionRules, InfluxDBClient, Permission, PermissionResource
from influxdb_client.domain.onboarding_request import OnboardingRequest
from influxdb_client.rest import ApiException
from influxdb_client.service.setup_service import SetupService
from urllib3.exceptions import HTTPError

from dsmr_ts.config import Config, InfluxConfig, save_setting
from dsmr_ts.influx.client import InfluxClient, StoreUnavailable
from dsmr_ts.influx.statistics import HOUR_TASK, Statistics, ensure_tasks

log = logging.getLogger(__name__)

ADMIN_USER = "dsmr-ts"


class BootstrapError(Exception):
    """Setup cannot go on; str() says what to do."""


@dataclass
class BootstrapResult:
    token: str
    org_id: str
    onboarded: bool  # False when the server was already set up
    created_buckets: list[str]
    tasks: list[str]  # InfluxDB tasks created or updated


def bootstrap(config: Config, *, login_file: Path | None = None) -> BootstrapResult:
    """Onboard (first time only), create missing buckets, create or update the tasks, and make sure
    influxdb.token is a token limited to the two buckets that influxd knows (the API and the reader
    use only that one; a token influxd does not know, e.g. from a config reused with a fresh data
    dir, is replaced).

    The operator (all-access) token lives in influxdb.admin_token and is used by setup alone.
    A config from before this split, with the all-access token in influxdb.token, is migrated."""
    settings = config.influxdb
    onboarded = False
    admin_key = "influxdb.admin_token"
    try:
        with InfluxDBClient(url=settings.url, token=settings.admin_token or "-", timeout=30_000) as client:
            if SetupService(client.api_client).get_setup().allowed:
                admin = _onboard(client, config, login_file)
                onboarded = True
            elif settings.admin_token:
                admin = settings.admin_token
            elif settings.token:
                admin, admin_key = settings.token, "influxdb.token"  # an older config: try it as the admin
            else:
                raise BootstrapError(
                    f"InfluxDB at {settings.url} is already set up but influxdb.admin_token is empty"
                    f"{_in_file(config)}: put an all-access token of org {settings.org!r} there"
                )
        with InfluxDBClient(url=settings.url, token=admin, org=settings.org, timeout=30_000) as client:
            org_id = _org_id(client, settings.org, settings.url)
            bucket_ids = _ensure_buckets(client, org_id, [settings.bucket, settings.stats_bucket],
                                         {settings.stats_bucket: STATS_SHARD_SECONDS})
            tasks = ensure_tasks(client, config, org_id)
            if admin != settings.admin_token:
                _save(config, "admin_token", admin)
            if onboarded or not settings.token or settings.token == admin or not token_works(settings):
                _save(config, "token", _scoped_token(client, org_id, bucket_ids))
        _start_index(config)
    except ApiException as exc:
        if exc.status in (401, 403):
            raise BootstrapError(f"InfluxDB at {settings.url} refused {admin_key}{_in_file(config)}") from None
        raise BootstrapError(f"InfluxDB at {settings.url} answered {exc.status}: {exc.reason}") from None
    except (HTTPError, OSError) as exc:
        raise BootstrapError(f"InfluxDB at {settings.url} is unreachable: {exc.__class__.__name__}") from None
    created = [name for name, (_, new) in bucket_ids.items() if new]
    return BootstrapResult(token=settings.token, org_id=org_id, onboarded=onboarded, created_buckets=created,
                           tasks=tasks)


def _start_index(config: Config) -> None:
    """The statistics count index's watermark (statistics.py), with the API's own token."""
    client = InfluxClient(config.influxdb, timeout_ms=600_000)
    try:
        Statistics(client, config.timezone).start_index()
    except StoreUnavailable as exc:
        raise BootstrapError(f"InfluxDB at {config.influxdb.url}: {exc}") from None
    finally:
        client.close()


SCOPED_TOKEN_DESCRIPTION = "dsmr-ts API and reader: read and write its two buckets, nothing else"


def _scoped_token(client: InfluxDBClient, org_id: str, bucket_ids: dict[str, tuple[str, bool]]) -> str:
    """Read and write on the two buckets; read on the org's tasks (the housekeeping job follows the
    hour task's runs). Nothing else: no other bucket, no users, no tokens, no task changes."""
    permissions = [
        Permission(action=action, resource=PermissionResource(type="buckets", id=bucket_id, org_id=org_id))
        for bucket_id, _ in bucket_ids.values() for action in ("read", "write")
    ] + [Permission(action="read", resource=PermissionResource(type="tasks", org_id=org_id))]
    authorization = client.authorizations_api().create_authorization(authorization=Authorization(
        org_id=org_id, permissions=permissions, description=SCOPED_TOKEN_DESCRIPTION))
    log.info("created a token limited to the buckets %s", ", ".join(bucket_ids))
    return authorization.token


def _save(config: Config, key: str, value: str) -> None:
    """Keep a token in the config (the file is 0600): influxd stores tokens hashed, so now or never."""
    setattr(config.influxdb, key, value)
    if config.path:
        save_setting(config.path, "influxdb", key, value)


def _in_file(config: Config) -> str:
    return f" in {config.path}" if config.path else ""


def token_works(settings: InfluxConfig) -> bool:
    """Does influxd know influxdb.token, may it read the readings bucket and the tasks (tokens made
    before the housekeeping job followed the hour task could not)? False when unreachable too:
    then setup says why."""
    if not settings.token:
        return False
    try:
        with InfluxDBClient(url=settings.url, token=settings.token, org=settings.org, timeout=10_000) as client:
            if client.buckets_api().find_bucket_by_name(settings.bucket) is None:
                return False
            client.tasks_api().find_tasks(name=HOUR_TASK)
            return True
    except (ApiException, HTTPError, OSError):
        return False


def _onboard(client: InfluxDBClient, config: Config, login_file: Path | None) -> str:
    settings = config.influxdb
    token = secrets.token_urlsafe(48)
    password = secrets.token_urlsafe(18)
    SetupService(client.api_client).post_setup(
        OnboardingRequest(username=ADMIN_USER, password=password, org=settings.org, bucket=settings.bucket, token=token)
    )
    _save(config, "admin_token", token)
    if login_file:
        login_file.parent.mkdir(parents=True, exist_ok=True)
        login_file.touch(mode=0o600)
        login_file.write_text(f"InfluxDB login for {settings.url} (influx CLI; this build has no web UI)\n"
                              f"user: {ADMIN_USER}\npassword: {password}\n")
    log.info("onboarded InfluxDB at %s: org %s, bucket %s", settings.url, settings.org, settings.bucket)
    return token


def _org_id(client: InfluxDBClient, org: str, url: str) -> str:
    orgs = client.organizations_api().find_organizations(org=org)
    if not orgs:
        raise BootstrapError(f"InfluxDB at {url} has no organization {org!r} (influxdb.org)")
    return orgs[0].id


# Shard group length per bucket (both keep everything). The readings get InfluxDB's default for
# infinite retention (7 days). Statistics are small (an hour row per meter and hour), and every
# count sums hour rows over all of history, which costs per shard: a year per shard keeps three
# years of counting at three shards instead of 156.
STATS_SHARD_SECONDS = 52 * 7 * 86400


def _ensure_buckets(client: InfluxDBClient, org_id: str, names: list[str],
                    shard_seconds: dict[str, int] | None = None) -> dict[str, tuple[str, bool]]:
    """name -> (bucket id, created now); a bucket whose shard length differs from `shard_seconds`
    gets it (for shards made from then on)."""
    api = client.buckets_api()
    found = {}
    for name in names:
        wanted = (shard_seconds or {}).get(name)
        rules = [BucketRetentionRules(type="expire", every_seconds=0, shard_group_duration_seconds=wanted)] if wanted else None
        bucket = api.find_bucket_by_name(name)
        if bucket is None:
            bucket = api.create_bucket(bucket_name=name, org=org_id, retention_rules=rules)  # kept forever
            log.info("created bucket %s", name)
            found[name] = (bucket.id, True)
            continue
        current = [r.shard_group_duration_seconds for r in bucket.retention_rules or []]
        if wanted and current != [wanted]:
            bucket.retention_rules = rules
            api.update_bucket(bucket)
            log.info("bucket %s: shard groups of %d days from now on", name, wanted // 86400)
        found[name] = (bucket.id, False)
    return found
