"""Bring an InfluxDB 2 to the state dsmr-ts needs: onboarded, both buckets, the statistics tasks.

Idempotent: running it again on a set-up server changes nothing.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from influxdb_client import Authorization, BucketRetentionRules, InfluxDBClient, Permission, PermissionResource
from influxdb_client.domain.onboarding_request import OnboardingRequest
from influxdb_client.rest import ApiException
from influxdb_client.service.setup_service import SetupService
from urllib3.exceptions import HTTPError

from dsmr_ts.config import Config, InfluxConfig, read_secret_file, save_setting, write_secret_file
from dsmr_ts.influx.client import StoreUnavailable
from dsmr_ts.influx.store import Store
from dsmr_ts.influx.tasks import HOUR_TASK, ensure_tasks

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
    dir, is replaced), and that Grafana has a read-only token of its own.

    The operator (all-access) token is used by setup alone and kept in influxdb.admin_token_file
    (0600), never in the config that every API worker loads: an admin_token found in the config is
    moved there. A config from before tokens were split (the all-access token in influxdb.token)
    is migrated."""
    settings = config.influxdb
    admin_file = config.resolve_path(settings.admin_token_file)
    given = admin_token(config)
    onboarded = False
    admin_key = "influxdb.admin_token" if settings.admin_token else str(admin_file)
    try:
        with InfluxDBClient(url=settings.url, token=given or "-", timeout=30_000) as client:
            if SetupService(client.api_client).get_setup().allowed:
                admin = _onboard(client, config, login_file)
                onboarded = True
            elif given:
                admin = given
            elif settings.token:
                admin, admin_key = settings.token, "influxdb.token"  # an older config: try it as the admin
            else:
                raise BootstrapError(
                    f"InfluxDB at {settings.url} is already set up but there is no admin token: put an all-access"
                    f" token of org {settings.org!r} in {admin_file} (or influxdb.admin_token{_in_file(config)})"
                )
        with InfluxDBClient(url=settings.url, token=admin, org=settings.org, timeout=30_000) as client:
            org_id = _org_id(client, settings.org, settings.url)
            bucket_ids = _ensure_buckets(
                client, org_id, [settings.bucket, settings.stats_bucket], {settings.stats_bucket: STATS_SHARD_SECONDS}
            )
            tasks = ensure_tasks(client, config, org_id)
            _keep_admin_token(config, admin, admin_file)
            if onboarded or not settings.token or settings.token == admin or not token_works(settings):
                _save(config, "token", _scoped_token(client, org_id, bucket_ids))
            grafana_file = config.resolve_path(settings.grafana_token_file)
            grafana = read_secret_file(grafana_file, "Grafana's InfluxDB token")
            if not grafana or not token_works(settings, grafana, tasks=False):
                # 0640: read-only, and meant to be shared with Grafana (a group it runs in).
                write_secret_file(grafana_file, _read_only_token(client, org_id, bucket_ids), 0o640)
        _start_index(config)
    except ApiException as exc:
        if exc.status in (401, 403):
            raise BootstrapError(f"InfluxDB at {settings.url} refused {admin_key}{_in_file(config)}") from None
        raise BootstrapError(f"InfluxDB at {settings.url} answered {exc.status}: {exc.reason}") from None
    except (HTTPError, OSError) as exc:
        raise BootstrapError(f"InfluxDB at {settings.url} is unreachable: {exc.__class__.__name__}") from None
    created = [name for name, (_, new) in bucket_ids.items() if new]
    return BootstrapResult(
        token=settings.token, org_id=org_id, onboarded=onboarded, created_buckets=created, tasks=tasks
    )


def admin_token(config: Config) -> str:
    """The all-access token: influxdb.admin_token when given, else its file (setup, tests)."""
    return config.influxdb.admin_token or read_secret_file(
        config.resolve_path(config.influxdb.admin_token_file), "the InfluxDB admin token"
    )


def _keep_admin_token(config: Config, admin: str, admin_file: Path) -> None:
    """The admin token in its own 0600 file, and out of the config file. One handed in through the
    environment (docker compose's setup service) is used, not kept."""
    from_environment = bool(os.environ.get("DSMR_TS_INFLUXDB_ADMIN_TOKEN"))
    if not from_environment and read_secret_file(admin_file, "the InfluxDB admin token") != admin:
        write_secret_file(admin_file, admin)
        log.info("the InfluxDB admin token is kept in %s (mode 0600), for dsmr-ts setup alone", admin_file)
    if config.path and _config_holds(config.path, "admin_token"):
        save_setting(config.path, "influxdb", "admin_token", "")
        log.info("moved influxdb.admin_token out of %s: API workers and the reader never load it", config.path)


def _config_holds(path: Path, key: str) -> bool:
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return bool((raw.get("influxdb") or {}).get(key))


def _start_index(config: Config) -> None:
    """The statistics count index's watermark (statistics.py), with the API's own token."""
    store = Store.for_config(config, timeout_ms=600_000)
    try:
        store.compute.start_index()
        store.compute.reprice()  # stored costs follow changed price periods (Grafana reads them)
    except StoreUnavailable as exc:
        raise BootstrapError(f"InfluxDB at {config.influxdb.url}: {exc}") from None
    finally:
        store.close()


SCOPED_TOKEN_DESCRIPTION = "dsmr-ts API and reader: read and write its two buckets, nothing else"


def _scoped_token(client: InfluxDBClient, org_id: str, bucket_ids: dict[str, tuple[str, bool]]) -> str:
    """Read and write on the two buckets; read on the org's tasks (the housekeeping job follows the
    hour task's runs). Nothing else: no other bucket, no users, no tokens, no task changes."""
    permissions = [
        Permission(action=action, resource=PermissionResource(type="buckets", id=bucket_id, org_id=org_id))
        for bucket_id, _ in bucket_ids.values()
        for action in ("read", "write")
    ] + [Permission(action="read", resource=PermissionResource(type="tasks", org_id=org_id))]
    authorization = client.authorizations_api().create_authorization(
        authorization=Authorization(org_id=org_id, permissions=permissions, description=SCOPED_TOKEN_DESCRIPTION)
    )
    log.info("created a token limited to the buckets %s", ", ".join(bucket_ids))
    return authorization.token


GRAFANA_TOKEN_DESCRIPTION = "dsmr-ts Grafana: read the two buckets, nothing else"


def _read_only_token(client: InfluxDBClient, org_id: str, bucket_ids: dict[str, tuple[str, bool]]) -> str:
    """Read on the two buckets: what Grafana's dashboards need, and nothing else."""
    permissions = [
        Permission(action="read", resource=PermissionResource(type="buckets", id=bucket_id, org_id=org_id))
        for bucket_id, _ in bucket_ids.values()
    ]
    authorization = client.authorizations_api().create_authorization(
        authorization=Authorization(org_id=org_id, permissions=permissions, description=GRAFANA_TOKEN_DESCRIPTION)
    )
    log.info("created a read-only token for Grafana")
    return authorization.token


def _save(config: Config, key: str, value: str) -> None:
    """Keep a token in the config (the file is 0600): influxd stores tokens hashed, so now or never."""
    setattr(config.influxdb, key, value)
    if config.path:
        save_setting(config.path, "influxdb", key, value)


def _in_file(config: Config) -> str:
    return f" in {config.path}" if config.path else ""


def token_works(settings: InfluxConfig, token: str | None = None, tasks: bool = True) -> bool:
    """Does influxd know influxdb.token (or `token`), may it read the readings bucket and (tasks)
    the tasks (tokens made before the housekeeping job followed the hour task could not)? False
    when unreachable too: then setup says why."""
    token = token or settings.token
    if not token:
        return False
    try:
        with InfluxDBClient(url=settings.url, token=token, org=settings.org, timeout=10_000) as client:
            if client.buckets_api().find_bucket_by_name(settings.bucket) is None:
                return False
            if tasks:
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
    write_secret_file(config.resolve_path(settings.admin_token_file), token)
    if login_file:
        login_file.parent.mkdir(parents=True, exist_ok=True)
        login_file.touch(mode=0o600)
        login_file.write_text(
            f"InfluxDB login for {settings.url} (influx CLI; this build has no web UI)\n"
            f"user: {ADMIN_USER}\npassword: {password}\n"
        )
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


def _ensure_buckets(
    client: InfluxDBClient, org_id: str, names: list[str], shard_seconds: dict[str, int] | None = None
) -> dict[str, tuple[str, bool]]:
    """name -> (bucket id, created now); a bucket whose shard length differs from `shard_seconds`
    gets it (for shards made from then on)."""
    api = client.buckets_api()
    found = {}
    for name in names:
        wanted = (shard_seconds or {}).get(name)
        rules = (
            [BucketRetentionRules(type="expire", every_seconds=0, shard_group_duration_seconds=wanted)]
            if wanted
            else None
        )
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
