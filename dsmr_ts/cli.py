"""`dsmr-ts` command line: run, serve, setup, reader, simulate, regenerate, import, export, influxd."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TextIO
from urllib.parse import urlsplit

from dsmr_ts import __version__
from dsmr_ts.config import Config, ConfigError, load_config
from dsmr_ts.supervisor import Process, stop_event

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
    except OSError as exc:  # a folder or file the system refused after the config checks passed
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dsmr-ts: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


class CliError(Exception):
    """A failure to report in one line (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsmr-ts", description="DSMR-reader compatible API over InfluxDB 2")
    from dsmr_ts.influx.build import INFLUXDB_VERSION

    parser.add_argument(
        "--version", action="version", version=f"dsmr-ts {__version__} (InfluxDB {INFLUXDB_VERSION.lstrip('v')})"
    )
    _common_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "run", "everything on this machine: influxd, setup, API, reader (Ctrl-C stops all)")
    p.set_defaults(func=cmd_run)

    p = _command(sub, "serve", "the API under gunicorn")
    p.set_defaults(func=cmd_serve)

    p = _command(sub, "setup", "onboard InfluxDB, create buckets, tokens and tasks (idempotent)")
    p.set_defaults(func=cmd_setup)

    p = _command(sub, "reader", "read the meter (reader.port; simulated when null) and keep the statistics")
    p.set_defaults(func=cmd_reader)

    p = _command(sub, "simulate", "an emulated DSMR 5 meter sending telegrams")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="POST to this v1 URL, e.g. http://127.0.0.1:7777/api/v1/datalogger/dsmrreading")
    target.add_argument("--serial", metavar="PATH", help="write to a serial device, pty or pyserial URL")
    p.add_argument("--key", help="API key for --url (default: api.key of the config)")
    p.add_argument("--rate", type=float, default=1.0, help="telegrams per second (default 1)")
    p.add_argument("--count", type=int, help="stop after this many telegrams")
    p.set_defaults(func=cmd_simulate)

    p = _command(sub, "regenerate", "recompute hour and day statistics (idempotent; safe while running)")
    p.add_argument("--since", type=_date_arg, help="first local day (default: the first reading)")
    p.add_argument("--until", type=_date_arg, help="last local day (default: today)")
    p.add_argument(
        "--analyze",
        action="store_true",
        help="recompute without writing and print every stored value that differs (complete days only;"
        " exit status 1 when some do)",
    )
    p.add_argument("--meter", help="with --analyze: only this meter (a configured name: all of its ids)")
    p.set_defaults(func=cmd_regenerate)

    p = _command(sub, "import", "bring in history from another server or a CSV file")
    import_sub = p.add_subparsers(dest="import_source", required=True, metavar="SOURCE")
    q = _command(import_sub, "dsmr-reader", "readings (and older day statistics) from a running DSMR-reader")
    origin = q.add_mutually_exclusive_group()
    origin.add_argument("--url", help="the DSMR-reader base URL, e.g. http://dsmr-host (its API)")
    origin.add_argument(
        "--database",
        metavar="URL",
        help="its database, read directly (fast): postgresql://user@host/dsmrreader, mysql://...,"
        " sqlite:///path (or DSMR_READER_DATABASE; a password there stays out of the process list)",
    )
    q.add_argument("--key-file", help="a file holding its API key (or set DSMR_READER_KEY)")
    q.add_argument("--key", help="its API key (visible in the process list: prefer --key-file or DSMR_READER_KEY)")
    q.add_argument("--since", type=_date_arg, help="only readings from this local day on (default: resume or all)")
    q.add_argument("--meter", help="store them as this meter (default: the meter this dsmr-ts knows)")
    q.add_argument("--source-meter", help="read this meter of a dsmr-ts source (DSMR-reader has one meter)")
    q.set_defaults(func=cmd_import_dsmr_reader)
    q = _command(import_sub, "csv", "DSMR-reader's CSV export of day or hour statistics")
    q.add_argument("file")
    q.add_argument("--meter", help="store them as this meter (default: the meter this dsmr-ts knows)")
    q.set_defaults(func=cmd_import_csv)

    p = _command(sub, "prices", "day-ahead market prices for a dynamic contract")
    prices_sub = p.add_subparsers(dest="prices_command", required=True, metavar="ACTION")
    q = _command(prices_sub, "import", "import prices: ENTSO-E XML, EnergyZero JSON or CSV start,price (EUR/kWh)")
    q.add_argument("file", help="the file ('-': standard input); its format is recognised from its content")
    q.add_argument("--area", help="the market area they are for (default: the file's, else the contract's)")
    q.set_defaults(func=cmd_prices_import)
    q = _command(prices_sub, "fetch", "fetch prices once from price_fetch.url (as run does every day)")
    q.set_defaults(func=cmd_prices_fetch)

    p = _command(sub, "export", "readings or statistics as CSV")
    p.add_argument("what", choices=["readings", "day", "hour"])
    p.add_argument("--since", type=_date_arg, help="first local day (default: the first reading)")
    p.add_argument("--until", type=_date_arg, help="last local day (default: today)")
    p.add_argument("--meter", help="default: the meter this dsmr-ts knows")
    p.add_argument("--output", default="-", help="file to write (default: standard output)")
    p.set_defaults(func=cmd_export)

    p = _command(sub, "backup", "back up the readings and statistics (influxd's own backup), also while run serves")
    p.add_argument("--to", metavar="DIR", help="the folder to put it in (default: backup.dir)")
    p.add_argument(
        "--daily",
        action="store_true",
        help="as the daily job (a systemd timer's): into backup.dir, keep the newest backup.keep, run backup.command,"
        " and record the outcome for monitoring and /metrics",
    )
    p.set_defaults(func=cmd_backup)

    p = _command(sub, "restore", "restore a backup into the configured store (while no run uses it)")
    p.add_argument("path", help="a backup folder (dsmr-ts-backup-<time>) made by dsmr-ts backup")
    p.add_argument("--replace", action="store_true", help="replace a store that already holds readings")
    p.set_defaults(func=cmd_restore)

    p = _command(sub, "influxd", "the InfluxDB server dsmr-ts builds and manages")
    influxd_sub = p.add_subparsers(dest="influxd_command", required=True, metavar="ACTION")
    _command(influxd_sub, "path", "build influxd if it is not cached, then print its path").set_defaults(
        func=cmd_influxd_path
    )
    _command(influxd_sub, "run", "run the managed influxd in the foreground (for a service manager)").set_defaults(
        func=cmd_influxd_run
    )
    return parser


def _command(sub: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with its one-line summary, taking the common options too."""
    parser = sub.add_parser(name, help=summary, description=summary)
    _common_options(parser, default=argparse.SUPPRESS)
    return parser


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """--config and -v, before the command or after it: a subcommand's copy has no default of its
    own (SUPPRESS), so it never overwrites a value given before the command."""
    parser.add_argument("--config", default=default, help="YAML config (default: $DSMR_TS_CONFIG or ./dsmr-ts.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")


# --- commands ------------------------------------------------------------------------------


def cmd_influxd_path(args: argparse.Namespace) -> int:
    from dsmr_ts.influx.build import BuildError, ensure_influxd

    try:
        print(ensure_influxd())
    except BuildError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_influxd_run(args: argparse.Namespace) -> int:
    """influxd in the foreground for a service manager; when one already runs for the data dir,
    follow that one instead of starting a second (and end when it ends)."""
    from dsmr_ts.influx.server import RunningInfluxd

    config = _config(args)
    if not config.influxdb.managed:
        raise CliError("influxdb.managed is false in the config: there is no managed influxd to run")
    influxd = _influxd_for(config)
    stop = stop_event()
    try:
        while not stop.wait(1.0):
            if isinstance(influxd, RunningInfluxd):
                if not influxd.alive():
                    log.info("the influxd this command followed (pid %d) has stopped", influxd.pid)
                    return 0
            elif influxd.process.poll() is not None:
                raise CliError(f"influxd exited with status {influxd.process.returncode}:\n{influxd.log_tail()}")
    finally:
        influxd.stop()
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    config = _config(args)
    influxd = _influxd_for(config)
    try:
        _bootstrap(config)
    finally:
        if influxd:
            influxd.stop()
    return 0


def cmd_reader(args: argparse.Namespace) -> int:
    from dsmr_ts.reader.service import run_reader

    config = _config(args)
    run_reader(config)  # with reader.enabled false: the housekeeping jobs only
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
    stop = stop_event()
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
                args.url,
                data=urllib.parse.urlencode({"telegram": telegram}).encode(),
                headers={"X-AUTHKEY": key},
                method="POST",
            )
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
    from dsmr_ts.datetimes import floor_hour, local_midnight
    from dsmr_ts.progress import ProgressBar

    config = _config(args)
    tz = config.tz
    with _store_session(config, "regenerate stopped") as store:
        span = store.readings.time_range()
        if span is None:
            print("no readings stored yet: nothing to regenerate")
            return 0
        start = _local_midnight_of(args.since, config) if args.since else local_midnight(span[0], tz)
        current_hour = floor_hour(dt.datetime.now(dt.timezone.utc)) + dt.timedelta(hours=1)
        stop = min(_local_midnight_of(args.until, config, 1) if args.until else current_hour, current_hour)
        if args.analyze:  # complete days: today's rows are still being made
            stop = min(stop, local_midnight(dt.datetime.now(dt.timezone.utc), tz))
        if stop <= start:
            raise CliError("--since is after --until: nothing to do")
        if args.analyze:
            return _analyze(store, start, stop, args.meter, tz)
        days = max(1, round((stop - start) / dt.timedelta(days=1)))
        log.info(
            "regenerating statistics from %s to %s, %d days at a time",
            start.astimezone(tz).date(),
            (stop - dt.timedelta(seconds=1)).astimezone(tz).date(),
            CHUNK_DAYS,
        )
        bar = ProgressBar(days, "days")
        began = time.monotonic()
        store.compute.regenerate(start, stop, CHUNK_DAYS, progress=bar.advance)
        log.info("statistics regenerated in %.1f s", time.monotonic() - began)
    return 0


def _analyze(store: Store, start: dt.datetime, stop: dt.datetime, meter: str | None, tz: dt.tzinfo) -> int:
    """regenerate --analyze: each difference on a line of its own (standard output), a summary."""
    from dsmr_ts.formats import datetime_string, decimal_string
    from dsmr_ts.progress import ProgressBar

    days = max(1, round((stop - start) / dt.timedelta(days=1)))
    log.info(
        "analyzing the statistics from %s to %s",
        start.astimezone(tz).date(),
        (stop - dt.timedelta(seconds=1)).astimezone(tz).date(),
    )
    bar = ProgressBar(days, "days")
    found = 0
    for difference in store.compute.analyze(start, stop, meter, CHUNK_DAYS, progress=bar.advance):
        found += 1
        old = "missing" if difference.stored is None else decimal_string(difference.stored, 3)
        print(
            f"{difference.measurement} {datetime_string(difference.time)} {difference.meter}"
            f" {difference.field}: stored {old}, recomputed {decimal_string(difference.computed, 3)}",
            flush=True,
        )
    print(
        f"{found} stored value(s) differ from their recomputation"
        if found
        else "the statistics are as the readings make them"
    )
    return 1 if found else 0


def cmd_import_dsmr_reader(args: argparse.Namespace) -> int:
    from dsmr_ts.migrate import Source, SourceError, import_readings

    config = _config(args)
    stopped = "import stopped (run it again to continue)"
    database = args.database or (os.environ.get("DSMR_READER_DATABASE") if not args.url else None)
    if not database and not args.url:
        raise CliError("say where to import from: --url (DSMR-reader's API) or --database (its database)")
    with _store_session(config, stopped) as store:
        since = _local_midnight_of(args.since, config) if args.since else None
        meter = args.meter or store.meters.default()
        if database:
            from dsmr_ts.import_database import DatabaseError, import_database

            try:
                count = import_database(store, database, meter, config.timezone, since, progress=sys.stderr)
            except DatabaseError as exc:
                raise CliError(f"{stopped}: {exc}") from None
        else:
            try:
                count = import_readings(
                    store,
                    Source(args.url, _source_key(args), args.source_meter),
                    meter,
                    config.timezone,
                    since,
                    progress=sys.stderr,
                )
            except SourceError as exc:
                raise CliError(f"{stopped}: {exc}") from None
        print(f"imported {count} readings as meter {meter}")
    return 0


def _source_key(args: argparse.Namespace) -> str:
    """The source's API key: from --key-file, $DSMR_READER_KEY, or (with a warning) --key."""
    from dsmr_ts.config import read_secret_file

    if args.key_file:
        key = read_secret_file(Path(args.key_file), "the source's API key")
        if not key:
            raise CliError(f"{args.key_file} is empty or missing")
        return key
    if os.environ.get("DSMR_READER_KEY"):
        return os.environ["DSMR_READER_KEY"]
    if args.key:
        log.warning("--key shows the key in the process list; prefer --key-file or DSMR_READER_KEY")
        return args.key
    raise CliError("give the source's API key with --key-file FILE or DSMR_READER_KEY")


def cmd_import_csv(args: argparse.Namespace) -> int:
    from dsmr_ts.migrate import CsvError, import_statistics_csv

    config = _config(args)
    with _store_session(config, "import stopped") as store:
        meter = args.meter or store.meters.default()
        try:
            kind, rows = import_statistics_csv(store, args.file, meter, config.timezone)
        except (CsvError, OSError) as exc:
            raise CliError(f"import stopped: {exc}") from None
        print(f"imported {rows} {kind} statistics as meter {meter}")
    return 0


def cmd_prices_import(args: argparse.Namespace) -> int:
    from dsmr_ts.price_formats import PriceFormatError, check_price, parse_prices

    config = _config(args)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        named, prices = parse_prices(data, config.tz)
        for number, price in enumerate(prices, 1):
            check_price(price, f"price {number}")
    except (PriceFormatError, UnicodeDecodeError) as exc:
        raise CliError(f"import stopped: {args.file}: {exc}") from None
    except OSError as exc:
        raise CliError(f"import stopped: {args.file}: {exc.strerror}") from None
    contracts = [period.dynamic.area for period in config.prices if period.dynamic]
    area = args.area or named or (contracts[-1] if contracts else None)
    if not area:
        raise CliError("import stopped: the file does not say its market area; give --area (e.g. --area NL)")
    started = time.monotonic()
    with _store_session(config, "import stopped") as store:
        stored = store.prices.store(area, prices)
    first, last = prices[0].start.astimezone(config.tz), prices[-1].stop.astimezone(config.tz)
    print(
        f"{area}: {stored.stored} prices stored, {stored.unchanged} unchanged ({first:%Y-%m-%d %H:%M} to"
        f" {last:%Y-%m-%d %H:%M}, {time.monotonic() - started:.1f} s)"
        + (
            f"; the costs of {stored.hours_marked} hours are recomputed by run's repair job"
            if stored.hours_marked
            else ""
        )
    )
    return 0


def cmd_prices_fetch(args: argparse.Namespace) -> int:
    from dsmr_ts.price_fetch import PriceFetch, PriceFetchError

    config = _config(args)
    if not config.price_fetch.url:
        raise CliError("fetch stopped: price_fetch.url is not set (see the example config)")
    with _store_session(config, "fetch stopped") as store:
        try:
            area, stored = PriceFetch(config, store).fetch()
        except PriceFetchError as exc:
            raise CliError(f"fetch stopped: {exc}") from None
    print(f"{area}: {stored.stored} prices stored, {stored.unchanged} unchanged")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dsmr_ts.datetimes import local_midnight
    from dsmr_ts.migrate import export_readings, export_statistics

    config = _config(args)
    with _store_session(config, "export stopped") as store, _output(args.output) as out:
        meter = args.meter or store.meters.default()
        span = store.readings.time_range()
        # From the local day of the first reading (its day and hour rows start before the reading).
        first = local_midnight(span[0], config.tz) if span else None
        start = _local_midnight_of(args.since, config) if args.since else first
        stop = (
            _local_midnight_of(args.until, config, 1)
            if args.until
            else dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        )
        if start is None:
            rows = 0
        elif args.what == "readings":
            rows = export_readings(store, meter, start, stop, out)
        else:
            rows = export_statistics(store, args.what, meter, start, stop, config.tz, out)
        print(f"exported {rows} rows", file=sys.stderr)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from dsmr_ts.config import without_secrets
    from dsmr_ts.influx.backup import BackupError, Backups, human_size
    from dsmr_ts.influx.bootstrap import admin_token
    from dsmr_ts.influx.client import InfluxClient, StoreUnavailable

    config = _config(args)
    if args.daily and args.to:
        raise CliError("backup: --daily writes into backup.dir; give --to without --daily")
    folder = Path(args.to) if args.to else config.resolve_path(config.backup.dir)
    influxd = _influxd_for(config)  # the one `run` serves with, else started for this backup
    client = InfluxClient(config.influxdb)
    try:
        if args.daily:
            from dsmr_ts.daily_backup import DailyBackup

            return 0 if DailyBackup(config, lambda: admin_token(config)).run() else 1
        config_text = without_secrets(config.path) if config.path else ""
        result = Backups(client, _admin_token(config)).backup(folder, config_text, _progress("shards"))
    except (BackupError, StoreUnavailable) as exc:
        raise CliError(f"backup failed: {exc}") from None
    finally:
        client.close()
        if influxd:
            influxd.stop()
    print(f"backup {result.path}: {human_size(result.bytes)} in {result.seconds:.1f} s")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from dsmr_ts.influx.backup import BackupError, Backups, read_manifest
    from dsmr_ts.influx.client import InfluxClient, StoreUnavailable

    config = _config(args)
    backup = Path(args.path)
    try:
        read_manifest(backup)  # before anything starts: is it a backup at all?
    except BackupError as exc:
        raise CliError(f"restore: {exc}") from None
    with _run_lock(config):  # no `run` may write while the buckets are replaced
        influxd = _influxd_for(config)
        client = InfluxClient(config.influxdb)
        try:
            org_id = _bootstrap(config)
            backups = Backups(client, _admin_token(config))
            if backups.holds_readings() and not args.replace:
                raise CliError(f"restore: {config.influxdb.url} already holds readings; give --replace to replace them")
            began = time.monotonic()
            shards = backups.restore(backup, org_id, progress=_progress("shards"))
            _bootstrap(config)  # the restored buckets have new ids: new scoped tokens, the tasks checked
        except (BackupError, StoreUnavailable) as exc:
            raise CliError(f"restore failed: {exc}") from None
        finally:
            client.close()
            if influxd:
                influxd.stop()
    print(f"restored {backup} ({shards} shards) in {time.monotonic() - began:.1f} s")
    return 0


def _admin_token(config: Config) -> str:
    from dsmr_ts.influx.bootstrap import admin_token

    token = admin_token(config)
    if not token:
        raise CliError(f"no InfluxDB admin token in {config.influxdb.admin_token_file}: run dsmr-ts setup first")
    return token


def _progress(unit: str):
    """A progress(done, total) callback drawing a ProgressBar, made once the total is known."""
    from dsmr_ts.progress import ProgressBar

    bars: list[ProgressBar] = []

    def advance(done: int, total: int) -> None:
        if not bars:
            bars.append(ProgressBar(total, unit))
        bars[0].advance()

    return advance


@contextlib.contextmanager
def _store_session(config: Config, stopped: str) -> Iterator[Store]:
    """A Store for a long command: the managed influxd (the running one, or started for this
    command and stopped after it), set up first when it needs it (a fresh data dir, or a token
    influxd does not know); a store failure ends the command with one line starting with `stopped`."""
    from dsmr_ts.influx.store import Store, StoreUnavailable

    influxd = _influxd_for(config)
    try:
        _ensure_setup(config)
        store = Store.for_config(config, timeout_ms=600_000)
        try:
            yield store
        except StoreUnavailable as exc:
            raise CliError(f"{stopped}: {exc}") from None
        finally:
            store.close()
    finally:
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
    from dsmr_ts.datetimes import day_start

    return day_start(day, config.tz, days)


def _date_arg(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2024-01-31, got {value!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    os.execvpe(sys.executable, _gunicorn_command(), _child_env(config))


def cmd_run(args: argparse.Namespace) -> int:
    """influxd (when managed), setup, the API and the reader, supervised (dsmr_ts.supervisor)."""
    from dsmr_ts.supervisor import Child, Command, Supervisor, SupervisorError

    config = _config(args)
    with _run_lock(config):
        _check_ports(config)
        stop = stop_event()
        children = []
        if config.influxdb.managed:
            children.append(Child("influxd", _influxd_service(config)))
        api = Command(_gunicorn_command(), _child_env(config))
        children.append(Child("api", api))
        # The reader process also keeps the statistics (repair, count index), meter or not.
        children.append(Child("reader", Command(_dsmr_ts_command("reader"), _child_env(config))))
        after_start: dict[str, Callable[[], object]] = {"api": lambda: _wait_for_api(config, stop, api)}
        if config.influxdb.managed:
            after_start["influxd"] = lambda: _bootstrap(config)
        supervisor = Supervisor(children, stop, after_start)
        if config.influxdb.managed:
            from dsmr_ts.disk_watch import DiskWatch
            from dsmr_ts.spool_dir import StoreFullMarker

            marker = StoreFullMarker(config.resolve_path(config.reader.spool_dir))
            watch = DiskWatch(
                config.resolve_path(config.influxdb.data_dir), marker, lambda why: supervisor.restart("influxd", why)
            )
            supervisor.watchdogs.append(watch.check)
        daily = None
        try:
            if not config.influxdb.managed:
                _bootstrap(config)
            supervisor.start_all()
            if not stop.is_set():
                _print_welcome(config)
            daily = _schedule_daily_jobs(config)
            supervisor.watch()
        except SupervisorError as exc:
            raise CliError(str(exc)) from None
        finally:
            log.info("stopping")
            if daily:
                daily.shutdown(wait=False)
            supervisor.stop_all()
    return 0


def _schedule_daily_jobs(config: Config):
    """The daily jobs of `run`, in a scheduler thread: the backup (config `backup`; run holds the
    admin token the backup API needs, the API and reader never load it) and the price fetch
    (config `price_fetch`, hourly from its time until tomorrow's prices are in). None: neither is on."""
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    from dsmr_ts.daily_backup import DailyBackup
    from dsmr_ts.influx.bootstrap import admin_token
    from dsmr_ts.influx.store import Store
    from dsmr_ts.price_fetch import PriceFetch

    if not config.backup.enabled and not config.price_fetch.enabled:
        return None
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
    if config.backup.enabled:
        hour, minute = config.backup.time.split(":")
        job = DailyBackup(config, lambda: admin_token(config))
        trigger = CronTrigger(hour=int(hour), minute=int(minute), timezone=config.tz)
        scheduler.add_job(job.run, trigger, id="daily backup")
        log.info("daily backup at %s (%s) into %s, keeping %d", config.backup.time, config.timezone, job.folder,
                 config.backup.keep)  # fmt: skip
    if config.price_fetch.enabled:
        hour, minute = config.price_fetch.time.split(":")
        fetch = PriceFetch(config, Store.for_config(config))
        scheduler.add_job(fetch.run, CronTrigger(hour=f"{int(hour)}-23", minute=int(minute), timezone=config.tz),
                          id="price fetch")  # fmt: skip
        log.info("price fetch every day from %s (%s), hourly until tomorrow's prices are in", config.price_fetch.time,
                 config.timezone)  # fmt: skip
    scheduler.start()
    return scheduler


# --- helpers -------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)  # None: $DSMR_TS_CONFIG, else ./dsmr-ts.yaml


def _influxd_for(config: Config):
    """The managed influxd for this config, running (ours or another command's), or None when the
    config points at an external InfluxDB."""
    from dsmr_ts.influx.server import InfluxdError

    if not config.influxdb.managed:
        return None
    service = _influxd_service(config)
    try:
        service.start()
    except InfluxdError as exc:
        raise CliError(str(exc)) from None
    return service.current


def _influxd_service(config: Config):
    from dsmr_ts.influx.build import BuildError, ensure_influxd
    from dsmr_ts.influx.server import InfluxdService

    url = urlsplit(config.influxdb.url)  # a local http:// URL when managed (checked by load_config)
    try:
        binary = ensure_influxd()
    except BuildError as exc:
        raise CliError(str(exc)) from None
    return InfluxdService(
        binary, config.resolve_path(config.influxdb.data_dir), url.hostname or "127.0.0.1", url.port or 8086
    )


@contextlib.contextmanager
def _run_lock(config: Config) -> Iterator[None]:
    """One `dsmr-ts run` per data dir: a second one stops at once, naming the first."""
    import fcntl

    state = _state_dir(config)
    state.mkdir(parents=True, exist_ok=True)
    path = state / "run.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CliError(f"dsmr-ts run is already running for {state} (pid {holder}); stop that one first") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _state_dir(config: Config) -> Path:
    """Where `run` keeps its lock: the managed influxd's data dir, else the folder of the config."""
    if config.influxdb.managed:
        return config.resolve_path(config.influxdb.data_dir)
    return config.path.parent if config.path else Path.cwd()


def _check_ports(config: Config) -> None:
    """Before anything starts: the API's port and (when we would start it) influxd's are free."""
    from dsmr_ts.influx.server import influxd_running, port_is_free

    bind = config.server.bind
    if not bind.startswith("unix:"):
        host, port = bind.rsplit(":", 1)
        if not port_is_free(host or "0.0.0.0", int(port)):
            raise CliError(f"server.bind {bind}: the port is in use (is dsmr-ts or another server running?)")
    data_dir = config.resolve_path(config.influxdb.data_dir)
    if config.influxdb.managed and not influxd_running(data_dir):
        url = urlsplit(config.influxdb.url)
        if not port_is_free(url.hostname or "127.0.0.1", url.port or 8086):
            raise CliError(f"influxdb.url {config.influxdb.url}: the port is in use; set influxdb.url to a free port")


def _wait_for_api(config: Config, stop: threading.Event, api: Process, timeout: float = 120.0) -> None:
    """Until the API answers (so the welcome text never promises what does not work yet); an API
    that exits meanwhile stops `run` at once with its last error line."""
    import urllib.error
    import urllib.request

    from dsmr_ts.supervisor import describe_status

    bind = config.server.bind
    if bind.startswith("unix:"):
        return
    url = f"http://{_local_address(bind)}/health"
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        status = api.exit_status()
        if status is not None:
            raise CliError(f"the API (gunicorn) {describe_status(status)} while starting: {api.describe_exit()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (a 503 means InfluxDB is not healthy, which /health then says)
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise CliError(f"the API did not answer at {url} within {timeout:.0f} s")
        stop.wait(0.2)


def _local_address(bind: str) -> str:
    host, port = bind.rsplit(":", 1)
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


def _bootstrap(config: Config) -> str:
    """Setup (idempotent); the org's id."""
    from dsmr_ts.influx.bootstrap import BootstrapError, bootstrap

    try:
        result = bootstrap(config, login_file=_login_file(config))
    except BootstrapError as exc:
        raise CliError(str(exc)) from None
    state = "onboarded" if result.onboarded else "already set up"
    log.info("InfluxDB %s at %s (org %s)", state, config.influxdb.url, config.influxdb.org)
    return result.org_id


def _ensure_setup(config: Config) -> None:
    """Setup first when the store needs it: a managed influxd always (idempotent: a fresh data dir
    gets onboarded, a token it does not know is replaced); an external one when its token is refused."""
    from dsmr_ts.influx.bootstrap import token_works

    if config.influxdb.managed or not token_works(config.influxdb):
        _bootstrap(config)


def _login_file(config: Config) -> Path:
    """The managed influxd's user and password (for the influx CLI; this build has no web UI)."""
    return config.resolve_path(config.influxdb.data_dir) / "influxdb-login.txt"


def _gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "python:dsmr_ts.gunicorn_conf", "dsmr_ts.app:create_app()"]


def _dsmr_ts_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsmr_ts.cli", *args]


def _child_env(config: Config) -> dict[str, str]:
    """The environment of run's children: the config, and never the admin token (setup, which
    run does itself, is the only user of it)."""
    env = {k: v for k, v in os.environ.items() if k != "DSMR_TS_INFLUXDB_ADMIN_TOKEN"}
    env["DSMR_TS_CONFIG"] = str(config.path)
    return env


def _meter_description(config: Config) -> str:
    if not config.reader.enabled:
        return "no reader (reader.enabled: false)"
    if config.reader.port is None:
        return (
            "a simulated DSMR 5 meter, a telegram a second (set reader.port for your meter, or"
            " reader.enabled: false when a remote datalogger posts to the API)"
        )
    return f"{config.reader.port} (DSMR {config.reader.dsmr_version})"


def _print_welcome(config: Config) -> None:
    bind = config.server.bind
    api_url = f"http://{bind}" if not bind.startswith("unix:") else bind
    state = "ENABLED" if config.api.enabled else "disabled (set api.enabled: true in the config to use it)"
    lines = [
        "",
        "dsmr-ts is running. Ctrl-C stops everything.",
        f"  API:         {api_url}/api/v2/datalogger/dsmrreading  ({state})",
        f"  energy page: {api_url}/" + ("" if config.web.enabled else "  (off: web.enabled is false)"),
        f"  health:      {api_url}/health",
        f"  config:      {config.path}  (API key: api.key in this file)",
        f"  meter:       {_meter_description(config)}",
        f"  InfluxDB:    {config.influxdb.url}  (for Grafana or the influx CLI; this build has no web UI)",
    ]
    if config.influxdb.managed:
        lines.append(f"  its login:   {_login_file(config)}  (user and password for the influx CLI)")
    print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
