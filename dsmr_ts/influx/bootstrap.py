"""Bring an InfluxDB 2 to the state dsmr-ts needs: onboarded, both buckets, the statistics tasks.

Idempotent: running it again on a set-up server changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from influxdb_client import InfluxDBClient
from influxdb_client.domain.onboarding_request import OnboardingRequest
from influxdb_client.rest import ApiException
from influxdb_client.service.setup_service import SetupService
from urllib3.exceptions import HTTPError

from dsmr_ts.config import Config, save_setting
from dsmr_ts.influx.tasks import ensure_tasks

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


def bootstrap(config: Config, *, ui_login_file: Path | None = None) -> BootstrapResult:
    """Onboard (first time only), create missing buckets, create or update the tasks; persist a new token."""
    settings = config.influxdb
    onboarded = False
    try:
        with InfluxDBClient(url=settings.url, token=settings.token or "-", timeout=30_000) as client:
            if SetupService(client.api_client).get_setup().allowed:
                token = _onboard(client, config, ui_login_file)
                onboarded = True
            elif not settings.token:
                raise BootstrapError(
                    f"InfluxDB at {settings.url} is already set up but influxdb.token is empty"
                    f"{_in_file(config)}: put a token of org {settings.org!r} there"
                )
            else:
                token = settings.token
        with InfluxDBClient(url=settings.url, token=token, org=settings.org, timeout=30_000) as client:
            org_id = _org_id(client, settings.org, settings.url)
            created = _ensure_buckets(client, org_id, [settings.bucket, settings.stats_bucket])
            tasks = ensure_tasks(client, config, org_id)
    except ApiException as exc:
        if exc.status in (401, 403):
            raise BootstrapError(f"InfluxDB at {settings.url} refused influxdb.token{_in_file(config)}") from None
        raise BootstrapError(f"InfluxDB at {settings.url} answered {exc.status}: {exc.reason}") from None
    except (HTTPError, OSError) as exc:
        raise BootstrapError(f"InfluxDB at {settings.url} is unreachable: {exc.__class__.__name__}") from None
    return BootstrapResult(token=token, org_id=org_id, onboarded=onboarded, created_buckets=created, tasks=tasks)


def _in_file(config: Config) -> str:
    return f" in {config.path}" if config.path else ""


def _onboard(client: InfluxDBClient, config: Config, ui_login_file: Path | None) -> str:
    settings = config.influxdb
    token = secrets.token_urlsafe(48)
    password = secrets.token_urlsafe(18)
    SetupService(client.api_client).post_setup(
        OnboardingRequest(username=ADMIN_USER, password=password, org=settings.org, bucket=settings.bucket, token=token)
    )
    # influxd keeps tokens hashed: this is the only moment we see it, so it goes to the config now.
    settings.token = token
    if config.path:
        save_setting(config.path, "influxdb", "token", token)
    if ui_login_file:
        ui_login_file.parent.mkdir(parents=True, exist_ok=True)
        ui_login_file.touch(mode=0o600)
        ui_login_file.write_text(f"InfluxDB UI login for {settings.url}\nuser: {ADMIN_USER}\npassword: {password}\n")
    log.info("onboarded InfluxDB at %s: org %s, bucket %s", settings.url, settings.org, settings.bucket)
    return token


def _org_id(client: InfluxDBClient, org: str, url: str) -> str:
    orgs = client.organizations_api().find_organizations(org=org)
    if not orgs:
        raise BootstrapError(f"InfluxDB at {url} has no organization {org!r} (influxdb.org)")
    return orgs[0].id


def _ensure_buckets(client: InfluxDBClient, org_id: str, names: list[str]) -> list[str]:
    api = client.buckets_api()
    created = []
    for name in names:
        if api.find_bucket_by_name(name) is None:
            api.create_bucket(bucket_name=name, org=org_id)  # no retention rule: keep forever
            created.append(name)
            log.info("created bucket %s", name)
    return created
