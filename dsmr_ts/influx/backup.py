"""Backups of the store with influxd's own backup (its HTTP API), and their restore.

A backup is a folder `dsmr-ts-backup-<UTC time>`:
  manifest.json   what it holds: dsmr-ts's and influxd's versions, each bucket's metadata as influxd
                  gave it (shard groups and shards), each shard's file with its size and SHA-256,
                  the tasks setup made (their Flux) and the descriptions of the tokens it made
  shards/<id>.tar.gz   influxd's snapshot of each shard of the readings and statistics buckets
                  (taken with the write cache, so every write acknowledged before is in it)
  dsmr-ts.yaml    the config without its secrets (API key, tokens, passwords, keys)
influxd's metadata snapshot (users, tokens: the admin token among them) is not kept: a restore
makes the buckets again from their metadata, and setup makes tasks and tokens anew.

It is written as `<name>.partial` and renamed when complete and synced, so a folder without that
suffix is a whole backup; a failed one leaves nothing that looks like one.

Restore (into a store without readings): the buckets are made from their metadata
(POST /api/v2/restore/bucketMetadata, which maps old shard ids to new ones) and each shard is
loaded (POST /api/v2/restore/shards/<new id>); setup then makes the tasks and tokens.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsmr_ts import __version__
from dsmr_ts.influx.client import InfluxClient, StoreUnavailable, _message

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "dsmr-ts-backup-"
PARTIAL = ".partial"
CHUNK = 1 << 20


class BackupError(Exception):
    """A backup or restore that cannot go on; str() says why in one line."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    seconds: float


def backups(folder: Path) -> list[Path]:
    """The whole backups in a folder, oldest first (partial ones are not backups)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(PARTIAL)
    )


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_size(count: int) -> str:
    """A byte count as people read it: 812 B, 11.5 MB, 2.3 GB (units of 1024)."""
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class Backups:
    """Backup and restore through influxd's HTTP API, with the all-access (admin) token."""

    def __init__(self, client: InfluxClient, admin_token: str):
        self.client = client
        self.settings = client.settings
        self.headers = {"Authorization": f"Token {admin_token}"}

    # --- backup -------------------------------------------------------------------------------

    def backup(
        self, folder: Path, config_text: str, progress: Callable[[int, int], None] | None = None
    ) -> BackupResult:
        """A backup of the two buckets into a new folder under `folder`; progress(done, total)
        counts shards. BackupError when influxd refuses or the disk cannot take it."""
        began = time.monotonic()
        now = dt.datetime.now(dt.timezone.utc)
        final = folder / f"{PREFIX}{now:%Y%m%dT%H%M%SZ}"
        for number in range(2, 100):  # two backups in one second (a test, or a hand and a timer)
            if not final.exists():
                break
            final = folder / f"{PREFIX}{now:%Y%m%dT%H%M%SZ}-{number}"
        partial = final.with_name(final.name + PARTIAL)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "shards").mkdir(parents=True)
        partial.chmod(0o700)  # a household's readings: for its owner only
        try:
            buckets = self._bucket_metadata()
            shards = [
                (bucket["bucketName"], shard["id"])
                for bucket in buckets
                for policy in bucket.get("retentionPolicies", [])
                for group in policy.get("shardGroups", [])
                for shard in group.get("shards", [])
            ]
            files = []
            for index, (bucket, shard) in enumerate(shards):
                files.append({"bucket": bucket, "id": shard, **self._save_shard(shard, partial / "shards")})
                if progress:
                    progress(index + 1, len(shards))
            manifest = {
                "format": FORMAT,
                "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "dsmr_ts": __version__,
                "influxd": self.influxd_version(),
                "org": self.settings.org,
                "buckets": buckets,
                "shards": files,
                "tasks": self._tasks(),
                "tokens": self._token_descriptions(),
            }
            (partial / "dsmr-ts.yaml").write_text(config_text, encoding="utf-8")
            _write_synced(partial / "manifest.json", json.dumps(manifest, indent=1).encode())
            os.rename(partial, final)
            _sync_dir(folder)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise BackupError(f"cannot write the backup in {folder}: {exc.strerror or exc}") from None
        except (BackupError, StoreUnavailable):
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return BackupResult(final, folder_bytes(final), time.monotonic() - began)

    def _bucket_metadata(self) -> list[dict[str, Any]]:
        """The two buckets' metadata from influxd's metadata snapshot (the rest of it is not kept)."""
        with self.client.exchange("GET", "/api/v2/backup/metadata", headers=self.headers) as response:
            body = response.read()
            if response.status != 200:
                raise BackupError(f"influxd refused the backup (HTTP {response.status}): {_message(body)}")
            content_type = response.getheader("Content-Type", "")
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        if "buckets" not in parts:
            raise BackupError("influxd's metadata snapshot has no bucket metadata")
        payload = parts["buckets"].get_payload(decode=True)
        buckets = json.loads(payload if isinstance(payload, bytes) else str(payload))
        wanted = {self.settings.bucket, self.settings.stats_bucket}
        found = [bucket for bucket in buckets if bucket.get("bucketName") in wanted]
        if {bucket["bucketName"] for bucket in found} != wanted:
            raise BackupError(f"influxd has no bucket {' or '.join(sorted(wanted))}: run `dsmr-ts setup` first")
        return found

    def _save_shard(self, shard: int, folder: Path) -> dict[str, Any]:
        path = folder / f"{shard}.tar.gz"
        digest = hashlib.sha256()
        size = 0
        headers = {**self.headers, "Accept-Encoding": "gzip"}
        with self.client.exchange("GET", f"/api/v2/backup/shards/{shard}", headers=headers) as response:
            if response.status != 200:
                raise BackupError(
                    f"influxd refused shard {shard} (HTTP {response.status}): {_message(response.read())}"
                )
            with open(path, "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        return {"file": f"shards/{path.name}", "bytes": size, "sha256": digest.hexdigest()}

    def influxd_version(self) -> str:
        status, body = self.client.request("GET", "/health")
        return str(json.loads(body).get("version", "unknown")) if status == 200 else "unknown"

    def _tasks(self) -> list[dict[str, str]]:
        status, body = self.client.request(
            "GET", f"/api/v2/tasks?org={self.settings.org}&limit=100", headers=self.headers
        )
        return (
            [{"name": t["name"], "flux": t["flux"]} for t in json.loads(body).get("tasks", [])] if status == 200 else []
        )

    def _token_descriptions(self) -> list[str]:
        status, body = self.client.request("GET", "/api/v2/authorizations", headers=self.headers)
        found = json.loads(body).get("authorizations", []) if status == 200 else []
        return sorted(a.get("description") or "" for a in found if (a.get("description") or "").startswith("dsmr-ts "))

    # --- restore --------------------------------------------------------------------------------

    def holds_readings(self) -> bool:
        """Does the readings bucket exist and hold a reading?"""
        if self._bucket_id(self.settings.bucket) is None:
            return False
        (series,) = self.client.influxql(['SELECT * FROM "reading" LIMIT 1'])
        return any(found.values for found in series)

    def restore(self, backup: Path, org_id: str, progress: Callable[[int, int], None] | None = None) -> int:
        """The backup's buckets into this influxd, replacing existing ones (influxd restores only into
        a new bucket; whether a store's readings may go is the caller's call: holds_readings);
        returns the shards loaded. BackupError when the backup is not whole or influxd refuses."""
        manifest = read_manifest(backup)
        for file in manifest["shards"]:
            path = backup / file["file"]
            if not path.is_file() or path.stat().st_size != file["bytes"]:
                raise BackupError(f"{backup}: {file['file']} is missing or not whole")
        for bucket in manifest["buckets"]:
            existing = self._bucket_id(bucket["bucketName"])
            if existing is not None:
                status, body = self.client.request("DELETE", f"/api/v2/buckets/{existing}", headers=self.headers)
                if status != 204:
                    raise BackupError(f"influxd refused to delete {bucket['bucketName']}: {_message(body)}")
        done, total = 0, len(manifest["shards"])
        for bucket in manifest["buckets"]:
            body = json.dumps({**bucket, "organizationID": org_id, "organizationName": self.settings.org}).encode()
            status, answer = self.client.request("POST", "/api/v2/restore/bucketMetadata", body,
                                                 {**self.headers, "Content-Type": "application/json"})  # fmt: skip
            if status not in (200, 201):
                raise BackupError(f"influxd refused bucket {bucket['bucketName']} (HTTP {status}): {_message(answer)}")
            mapping = {int(m["oldId"]): int(m["newId"]) for m in json.loads(answer).get("shardMappings", [])}
            for file in (f for f in manifest["shards"] if f["bucket"] == bucket["bucketName"]):
                self._load_shard(backup / file["file"], mapping[int(file["id"])])
                done += 1
                if progress:
                    progress(done, total)
        return done

    def _load_shard(self, path: Path, shard: int) -> None:
        headers = {**self.headers, "Content-Type": "application/octet-stream", "Content-Encoding": "gzip",
                   "Content-Length": str(path.stat().st_size)}  # fmt: skip
        with (
            open(path, "rb") as body,
            self.client.exchange("POST", f"/api/v2/restore/shards/{shard}", body=body, headers=headers) as response,
        ):
            answer = response.read()
            if response.status not in (200, 204):
                raise BackupError(f"influxd refused shard {shard} (HTTP {response.status}): {_message(answer)}")

    def _bucket_id(self, name: str) -> str | None:
        status, body = self.client.request(
            "GET", f"/api/v2/buckets?name={name}&org={self.settings.org}", headers=self.headers
        )
        found = json.loads(body).get("buckets", []) if status == 200 else []
        return next((b["id"] for b in found if b.get("name") == name), None)


def read_manifest(backup: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((backup / "manifest.json").read_text())
    except (OSError, ValueError):
        raise BackupError(f"{backup} is not a dsmr-ts backup (no readable manifest.json)") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{backup}: backup format {manifest.get('format')} is not one this dsmr-ts reads")
    return manifest


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
