"""`dsmr-ts` command line: run, serve, setup, influxd path/run."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, TextIO
from urllib.parse import urlsplit

from dsmr_ts.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from dsmr_ts.influx.store import Store

log = logging.getLogger("dsmr_ts")

CHUNK_DAYS = 7  # regenerate works a week at a time: big enough to be fast, small enough to show progress


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # influxdb-client logs every retry and HTTP detail at INFO; operators want our lines.
    logging.getLogger("influxdb_client").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every job run at INFO
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"dsmr-ts: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"dsmr-ts: {exc}", file=sys.stderr)
        return 1


class CliError(Exception):
    """A failure to report in one line (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsmr-ts", description="DSMR-reader compatible API over InfluxDB 2")
    parser.add_argument("--config", help="YAML config (default: $DSMR_TS_CONFIG or ./dsmr-ts.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="everything on this machine: influxd, setup, API, reader (Ctrl-C stops all)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="the API under gunicorn")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("setup", help="onboard InfluxDB, create buckets (idempotent)")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("reader", help="read the meter (reader.port; a simulated meter when null)")
    p.set_defaults(func=cmd_reader)

    p = sub.add_parser("simulate", help="an emulated DSMR 5 meter sending telegrams")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="POST to this v1 URL, e.g. http://127.0.0.1:7777/api/v1/datalogger/dsmrreading")
    target.add_argument("--serial", metavar="PATH", help="write to a serial device, pty or pyserial URL")
    p.add_argument("--key", help="API key for --url (default: api.key of the config)")
    p.add_argument("--rate", type=float, default=1.0, help="telegrams per second (default 1)")
    p.add_argument("--count", type=int, help="stop after this many telegrams")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("regenerate", help="recompute hour and day statistics (idempotent; safe while running)")
    p.add_argument("--since", type=_date_arg, help="first local day (default: the first reading)")
    p.add_argument("--until", type=_date_arg, help="last local day (default: today)")
    p.set_defaults(func=cmd_regenerate)

    p = sub.add_parser("import", help="bring in history from another server")
    import_sub = p.add_subparsers(dest="import_source", required=True, metavar="SOURCE")
    q = import_sub.add_parser("dsmr-reader", help="readings (and older day statistics) from a running DSMR-reader")
    q.add_argument("--url", required=True, help="the DSMR-reader base URL, e.g. http://dsmr-host")
    q.add_argument("--key", required=True, help="its API key")
    q.add_argument("--since", type=_date_arg, help="only readings from this local day on (default: resume or all)")
    q.add_argument("--meter", help="store them as this meter (default: the meter this dsmr-ts knows)")
    q.add_argument("--source-meter", help="read this meter of a dsmr-ts source (DSMR-reader has one meter)")
    q.set_defaults(func=cmd_import_dsmr_reader)
    q = import_sub.add_parser("csv", help="DSMR-reader's CSV export of day or hour statistics")
    q.add_argument("file")
    q.add_argument("--meter", help="store them as this meter (default: the meter this dsmr-ts knows)")
    q.set_defaults(func=cmd_import_csv)

    p = sub.add_parser("export", help="readings or statistics as CSV")
    p.add_argument("what", choices=["readings", "day", "hour"])
    p.add_argument("--since", type=_date_arg, help="first local day (default: the first reading)")
    p.add_argument("--until", type=_date_arg, help="last local day (default: today)")
    p.add_argument("--meter", help="default: the meter this dsmr-ts knows")
    p.add_argument("--output", default="-", help="file to write (default: standard output)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("influxd", help="the InfluxDB server dsmr-ts builds and manages")
    influxd_sub = p.add_subparsers(dest="influxd_command", required=True, metavar="ACTION")
    influxd_sub.add_parser("path", help="build influxd if it is not cached, then print its path").set_defaults(
        func=cmd_influxd_path
    )
    influxd_sub.add_parser("run", help="run the managed influxd in the foreground").set_defaults(
        func=cmd_influxd_run
    )
    return parser


# --- commands ------------------------------------------------------------------------------


def cmd_influxd_path(args: argparse.Namespace) -> int:
    from dsmr_ts.influx.build import BuildError, ensure_influxd

    try:
        print(ensure_influxd())
    except BuildError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_influxd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    influxd = _start_managed_influxd(config)
    stop = _stop_event()
    try:
        while not stop.wait(1.0):
            if influxd.process.poll() is not None:
                raise CliError(f"influxd exited with status {influxd.process.returncode}:\n{influxd.log_tail()}")
    finally:
        influxd.stop()
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.influxdb.managed:
        influxd = _start_managed_influxd(config)
        try:
            _bootstrap(config)
        finally:
            influxd.stop()
    else:
        _bootstrap(config)
    return 0


def cmd_reader(args: argparse.Namespace) -> int:
    from dsmr_ts.reader.service import run_reader

    config = _config(args)
    if not config.reader.enabled:
        raise CliError("reader.enabled is false in the config: there is no reader to run")
    run_reader(config)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Telegrams from MeterSimulator. Faster than one a second, timestamps still step one second
    (ending now with --count), so every telegram is a distinct reading."""
    import urllib.error
    import urllib.parse
    import urllib.request

    import serial

    from dsmr_ts.reader.simulator import MeterSimulator

    if args.rate <= 0:
        raise CliError("--rate must be above 0")
    key = args.key
    if args.url and not key:
        key = _config(args).api.key
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start = now - dt.timedelta(seconds=(args.count or 1) - 1) if args.rate > 1 and args.count else now
    device = serial.serial_for_url(args.serial, baudrate=115200, timeout=1) if args.serial else None
    stop = _stop_event()
    sent = failed = 0
    try:
        for index, telegram in enumerate(MeterSimulator().telegrams(start, dt.timedelta(seconds=1), args.count)):
            if stop.is_set():
                break
            if args.rate <= 1 and index:
                # Real time: each telegram carries the second it is sent in.
                if stop.wait(1.0 / args.rate):
                    break
            if device is not None:
                device.write(telegram.encode("latin-1"))
                sent += 1
                continue
            request = urllib.request.Request(
                args.url, data=urllib.parse.urlencode({"telegram": telegram}).encode(),
                headers={"X-AUTHKEY": key}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                sent += 1
            except (urllib.error.URLError, OSError) as exc:
                failed += 1
                if failed == 1:
                    print(f"dsmr-ts simulate: POST failed: {getattr(exc, 'code', '')} {exc}", file=sys.stderr)
            if args.rate > 1:
                stop.wait(1.0 / args.rate)
    finally:
        if device is not None:
            device.close()
    print(f"sent {sent} telegrams" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    """Recompute statistics in chunks of whole local weeks, with the same Flux as the tasks."""
    from dsmr_ts.influx.readings import floor_hour
    from dsmr_ts.influx.tasks import local_midnight
    from dsmr_ts.progress import ProgressBar

    config = _config(args)
    tz = config.tz
    with _store_session(config, "regenerate stopped") as store:
        span = store.reading_time_range()
        if span is None:
            print("no readings stored yet: nothing to regenerate")
            return 0
        start = _local_midnight_of(args.since, config) if args.since else local_midnight(span[0], tz)
        current_hour = floor_hour(dt.datetime.now(dt.timezone.utc)) + dt.timedelta(hours=1)
        stop = min(_local_midnight_of(args.until, config, 1) if args.until else current_hour, current_hour)
        if stop <= start:
            raise CliError("--since is after --until: nothing to do")
        chunks = []
        chunk_start = start
        while chunk_start < stop:
            chunk_stop = min(local_midnight(chunk_start, tz, CHUNK_DAYS), stop)
            chunks.append((chunk_start, chunk_stop))
            chunk_start = chunk_stop
        chunk_days = [max(1, round((b - a) / dt.timedelta(days=1))) for a, b in chunks]
        log.info("regenerating statistics from %s to %s (%d chunks of up to %d days)",
                 start.astimezone(tz).date(), (stop - dt.timedelta(seconds=1)).astimezone(tz).date(),
                 len(chunks), CHUNK_DAYS)
        bar = ProgressBar(sum(chunk_days), "days")
        began = time.monotonic()
        for (chunk_start, chunk_stop), length in zip(chunks, chunk_days):
            store.recompute_statistics(chunk_start, chunk_stop)
            bar.advance(length)
        log.info("statistics regenerated in %.1f s", time.monotonic() - began)
    return 0


def cmd_import_dsmr_reader(args: argparse.Namespace) -> int:
    from dsmr_ts.migrate import Source, SourceError, import_readings

    config = _config(args)
    stopped = "import stopped (run it again to continue)"
    with _store_session(config, stopped) as store:
        since = _local_midnight_of(args.since, config) if args.since else None
        meter = args.meter or store.default_meter()
        try:
            count = import_readings(store, Source(args.url, args.key, args.source_meter), meter, config.timezone,
                                    since, progress=sys.stderr)
        except SourceError as exc:
            raise CliError(f"{stopped}: {exc}") from None
        print(f"imported {count} readings as meter {meter}")
    return 0


def cmd_import_csv(args: argparse.Namespace) -> int:
    from dsmr_ts.migrate import CsvError, import_statistics_csv

    config = _config(args)
    with _store_session(config, "import stopped") as store:
        meter = args.meter or store.default_meter()
        try:
            kind, rows = import_statistics_csv(store, args.file, meter, config.timezone)
        except (CsvError, OSError) as exc:
            raise CliError(f"import stopped: {exc}") from None
        print(f"imported {rows} {kind} statistics as meter {meter}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dsmr_ts.migrate import export_readings, export_statistics

    config = _config(args)
    with _store_session(config, "export stopped") as store, _output(args.output) as out:
        meter = args.meter or store.default_meter()
        span = store.reading_time_range()
        start = _local_midnight_of(args.since, config) if args.since else (span[0] if span else None)
        stop = (_local_midnight_of(args.until, config, 1) if args.until
                else dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        if start is None:
            rows = 0
        elif args.what == "readings":
            rows = export_readings(store, meter, start, stop, out)
        else:
            rows = export_statistics(store, args.what, meter, start, stop, out)
        print(f"exported {rows} rows", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _store_session(config: Config, stopped: str) -> Iterator[Store]:
    """A Store for a long command, with the managed influxd started first (when managed) and
    stopped after; a store failure ends the command with one line starting with `stopped`."""
    from dsmr_ts.influx.store import Store, StoreUnavailable

    influxd = _start_managed_influxd(config) if config.influxdb.managed else None
    store = Store(config.influxdb, timeout_ms=600_000, timezone=config.timezone)
    try:
        yield store
    except StoreUnavailable as exc:
        raise CliError(f"{stopped}: {exc}") from None
    finally:
        store.close()
        if influxd:
            influxd.stop()


@contextlib.contextmanager
def _output(path: str) -> Iterator[TextIO]:
    """Standard output for '-', else the file (closed afterwards)."""
    if path == "-":
        yield sys.stdout
        return
    with open(path, "w", newline="") as out:
        yield out


def _local_midnight_of(day: dt.date, config: Config, days: int = 0) -> dt.datetime:
    from dsmr_ts.influx.tasks import local_midnight

    return local_midnight(dt.datetime(day.year, day.month, day.day, 12, tzinfo=config.tz), config.tz, days)


def _date_arg(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2024-01-31, got {value!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    os.execvpe(sys.executable, _gunicorn_command(), _child_env(config))


def cmd_run(args: argparse.Namespace) -> int:
    """Supervise influxd (when managed) and the API; stop all of them on Ctrl-C or SIGTERM."""
    config = _config(args)
    stop = _stop_event()
    influxd = _start_managed_influxd(config) if config.influxdb.managed else None
    children: dict[str, subprocess.Popen] = {}
    try:
        _bootstrap(config)
        children["api"] = subprocess.Popen(_gunicorn_command(), env=_child_env(config), start_new_session=True)
        if config.reader.enabled:
            children["reader"] = subprocess.Popen(
                [sys.executable, "-m", "dsmr_ts.cli", "reader"], env=_child_env(config), start_new_session=True
            )
        _print_welcome(config)
        failed = None
        while not stop.wait(0.5) and not failed:
            for name, child in children.items():
                if child.poll() is not None:
                    failed = f"{name} exited with status {child.returncode}"
            if influxd and influxd.process.poll() is not None:
                failed = f"influxd exited with status {influxd.process.returncode}:\n{influxd.log_tail()}"
        if failed:
            raise CliError(failed + "; stopping everything")
        log.info("stopping")
    finally:
        for name, child in children.items():
            _stop_child(name, child)
        if influxd:
            influxd.stop()
    return 0


# --- helpers -------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)  # None: $DSMR_TS_CONFIG, else ./dsmr-ts.yaml


def _stop_event() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so the main loop can stop children in order."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _start_managed_influxd(config: Config):
    from dsmr_ts.influx.build import BuildError, ensure_influxd
    from dsmr_ts.influx.server import InfluxdError, ManagedInfluxd

    url = urlsplit(config.influxdb.url)
    if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise CliError(
            f"influxdb.managed is true, so influxdb.url must be a local http:// address, not {config.influxdb.url}"
        )
    try:
        binary = ensure_influxd()
        return ManagedInfluxd(
            binary, config.resolve_path(config.influxdb.data_dir), host=url.hostname, port=url.port or 8086
        ).start()
    except (BuildError, InfluxdError) as exc:
        raise CliError(str(exc)) from None


def _bootstrap(config: Config) -> None:
    from dsmr_ts.influx.bootstrap import BootstrapError, bootstrap

    try:
        result = bootstrap(config, ui_login_file=_ui_login_file(config))
    except BootstrapError as exc:
        raise CliError(str(exc)) from None
    state = "onboarded" if result.onboarded else "already set up"
    log.info("InfluxDB %s at %s (org %s)", state, config.influxdb.url, config.influxdb.org)


def _ui_login_file(config: Config) -> Path:
    return config.resolve_path(config.influxdb.data_dir) / "ui-login.txt"


def _gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "python:dsmr_ts.gunicorn_conf", "dsmr_ts.app:create_app()"]


def _child_env(config: Config) -> dict[str, str]:
    env = dict(os.environ)
    env["DSMR_TS_CONFIG"] = str(config.path)
    return env


def _stop_child(name: str, child: subprocess.Popen, timeout: float = 30.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", name, timeout)
            child.kill()
            child.wait()


def _meter_description(config: Config) -> str:
    if not config.reader.enabled:
        return "no reader (reader.enabled: false)"
    if config.reader.port is None:
        return "a simulated DSMR 5 meter, a telegram a second (set reader.port for your meter)"
    return f"{config.reader.port} (DSMR {config.reader.dsmr_version})"


def _print_welcome(config: Config) -> None:
    bind = config.server.bind
    api_url = f"http://{bind}" if not bind.startswith("unix:") else bind
    state = "ENABLED" if config.api.enabled else "disabled (set api.enabled: true in the config to use it)"
    lines = [
        "",
        "dsmr-ts is running. Ctrl-C stops everything.",
        f"  API:         {api_url}/api/v2/datalogger/dsmrreading  ({state})",
        f"  health:      {api_url}/health",
        f"  config:      {config.path}  (API key: api.key in this file)",
        f"  meter:       {_meter_description(config)}",
        f"  InfluxDB:    {config.influxdb.url}  (for Grafana or the influx CLI; this build has no web UI)",
    ]
    if config.influxdb.managed:
        lines.append(f"  its login:   {_ui_login_file(config)}  (admin token: influxdb.admin_token in the config)")
    print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
