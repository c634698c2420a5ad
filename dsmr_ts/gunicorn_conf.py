"""gunicorn settings for the dsmr-ts API: the one place they live.

Used by `dsmr-ts serve`, `dsmr-ts run`, the Dockerfile and the docs:
    gunicorn -c python:dsmr_ts.gunicorn_conf 'dsmr_ts.app:create_app()'
bind and workers come from the dsmr-ts config ($DSMR_TS_CONFIG or ./dsmr-ts.yaml).
"""

import glob
import os
import shutil
import tempfile

from dsmr_ts.config import load_config

_config = load_config()

bind = _config.server.bind
workers = _config.server.workers
# gevent, chosen by measurement (benchmarks/README.md): with sync workers a process answers one
# request at a time, so the group commit cannot group anything; gthread pays for thread switches
# and the GIL more than for the work.
worker_class = "gevent"
worker_connections = 1000
# Behind nginx, which buffers slow clients; a request that takes longer than this is stuck.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that a slow leak can never grow without bound.
max_requests = 100_000
max_requests_jitter = 10_000
# Request line and header limits: well above any real client, far below abuse.
limit_request_line = 8190
limit_request_fields = 100
forwarded_allow_ips = "127.0.0.1,::1"
accesslog = "-" if _config.server.access_log else None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
errorlog = "-"
loglevel = "info"
proc_name = "dsmr-ts-api"

# The control socket lives with this install's data (server.control_socket), so that two instances
# on one machine never share gunicorn's default ~/.gunicorn/gunicorn.ctl. A Unix socket path has a
# length limit; past it the control socket is off (said once in the log).
_control_socket = _config.resolve_path(_config.server.control_socket)
_CONTROL_SOCKET_MAX = 100
if len(str(_control_socket)) <= _CONTROL_SOCKET_MAX:
    _control_socket.parent.mkdir(parents=True, exist_ok=True)
    control_socket = str(_control_socket)
else:
    control_socket_disable = True


def on_starting(server):
    if len(str(_control_socket)) > _CONTROL_SOCKET_MAX:
        server.log.warning(
            "control socket off: %s is longer than %d characters (server.control_socket)",
            _control_socket,
            _CONTROL_SOCKET_MAX,
        )


# Prometheus multiprocess mode: one fresh directory per gunicorn master, set before the workers
# import dsmr_ts.metrics (see dsmr_ts/metrics.py). Named with the master's pid: a master that was
# killed (SIGKILL skips on_exit) leaves its directory, and the next one removes it.
_METRICS_PREFIX = "dsmr-ts-metrics-"


def _remove_dead_masters_metrics(parent: str) -> None:
    for path in glob.glob(os.path.join(parent, _METRICS_PREFIX + "*")):
        pid = os.path.basename(path)[len(_METRICS_PREFIX) :].split("-")[0]
        if not pid.isdigit() or os.stat(path).st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _remove_dead_masters_metrics(tempfile.gettempdir())
    _metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")


def child_exit(server, worker):  # a worker's live gauges go away with it
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir:  # only the directory made above, never one given from outside
        shutil.rmtree(_metrics_dir, ignore_errors=True)
