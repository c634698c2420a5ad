"""Build influxd from the released InfluxDB 2 Go module, once per machine.

InfluxDB 2 is not packaged in the registries we can reach, so we build it the way Go
builds a tool from a dependency: the module in ./build/ requires
github.com/influxdata/influxdb/v2 at a pinned release and lists influxd and InfluxData's
pkg-config wrapper as tools. The wrapper compiles the Rust flux engine (libflux) with cargo
when cgo asks for it. The binary is cached in ~/.cache/dsmr-ts/influxd-<version>/.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

# Newest v2 release whose whole module graph the Go module proxy serves here
# (v2.10.0 needs flux v0.201.0 and pkg-config v0.3.1, which it refuses). Keep in step with build/go.mod.
INFLUXDB_VERSION = "v2.9.1"
BUILD_MODULE = Path(__file__).resolve().parent / "build"
INFLUXD_PACKAGE = "github.com/influxdata/influxdb/v2/cmd/influxd"
PKG_CONFIG_PACKAGE = "github.com/influxdata/pkg-config"


class BuildError(Exception):
    """influxd could not be built; str() says which step failed and the tail of its output."""


def cache_dir(version: str = INFLUXDB_VERSION) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "dsmr-ts" / f"influxd-{version}"


def cached_influxd(version: str = INFLUXDB_VERSION) -> Path | None:
    """The influxd to use without building: $DSMR_TS_INFLUXD (for the pinned version), or the
    cached build."""
    override = os.environ.get("DSMR_TS_INFLUXD")
    if override and version == INFLUXDB_VERSION:
        return Path(override)
    binary = cache_dir(version) / "influxd"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def ensure_influxd(
    progress: TextIO | None = sys.stderr, version: str = INFLUXDB_VERSION, module: Path = BUILD_MODULE
) -> Path:
    """Return the path of influxd, building it first if it is not cached. Another release (the
    upgrade test's previous one) is built from a module of its own that pins it."""
    found = cached_influxd(version)
    if found:
        return found
    target = cache_dir(version)
    target.mkdir(parents=True, exist_ok=True)
    # One build per machine even when several processes ask at once.
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = cached_influxd(version)
        if found:
            return found
        return _build(target, _Progress(progress), version, module)


# cargo's RUSTC_WRAPPER for the build: lints never fail it. libflux denies warnings, and a rustc
# newer than a release's libflux finds new ones; RUSTFLAGS cannot reach the host build of its
# build script's flux-core (cargo --target keeps RUSTFLAGS off host artifacts).
RUSTC_CAP_LINTS = """#!/bin/sh
case " $* " in
  *" --cap-lints "*) exec "$@" ;;
  *) exec "$@" --cap-lints warn ;;
esac
"""


def _build(target: Path, progress: _Progress, version: str = INFLUXDB_VERSION, module: Path = BUILD_MODULE) -> Path:
    for tool in ("go", "cargo"):
        if not shutil.which(tool):
            raise BuildError(f"`{tool}` is not on PATH; influxd is built with Go and Rust (cargo)")
    env = dict(os.environ)
    env.update(
        GOFLAGS="-mod=readonly -buildvcs=false",
        CGO_ENABLED="1",
        # rustc newer than libflux's warns where libflux has #![deny(warnings)].
        RUSTFLAGS=(env.get("RUSTFLAGS", "") + " --cap-lints=warn").strip(),
    )
    wrapper = target / "rustc-cap-lints"
    wrapper.write_text(RUSTC_CAP_LINTS)
    wrapper.chmod(0o755)
    env.setdefault("RUSTC_WRAPPER", str(wrapper))
    env.setdefault("GOTOOLCHAIN", "auto")
    toolchain = _rustup_default_toolchain()
    if toolchain and "RUSTUP_TOOLCHAIN" not in env:
        # libflux pins an old Rust in rust-toolchain.toml that rustup cannot fetch offline.
        env["RUSTUP_TOOLCHAIN"] = toolchain
    started = time.monotonic()
    progress.say(f"building influxd {version} into {target} (once per machine; takes several minutes)")

    pkg_config = target / "pkg-config"
    progress.say("step 1/3: building InfluxData's pkg-config wrapper")
    _run(["go", "build", "-o", str(pkg_config), PKG_CONFIG_PACKAGE], env, progress, "pkg-config wrapper", module)
    env["PKG_CONFIG"] = str(pkg_config)

    progress.say("step 2/3: listing influxd's Go packages")
    listing = _run(["go", "list", "-deps", INFLUXD_PACKAGE], env, progress, "go list", module, quiet=True)
    total = len(listing.split())

    progress.say(f"step 3/3: compiling {total} Go packages and the Rust flux engine (libflux)")
    partial = target / "influxd.partial"
    _run(
        [
            "go",
            "build",
            "-v",
            "-ldflags",
            f"-X main.version={version.lstrip('v')}",
            "-o",
            str(partial),
            INFLUXD_PACKAGE,
        ],
        env,
        progress,
        "influxd",
        module,
        count_total=total,
    )
    partial.rename(target / "influxd")
    progress.say(f"influxd built in {time.monotonic() - started:.0f} s: {target / 'influxd'}")
    return target / "influxd"


def _rustup_default_toolchain() -> str | None:
    if not shutil.which("rustup"):
        return None  # a distribution cargo ignores rust-toolchain.toml
    result = subprocess.run(["rustup", "default"], capture_output=True, text=True)
    words = result.stdout.split()
    return words[0] if result.returncode == 0 and words else None


def _run(
    cmd: list[str],
    env: dict[str, str],
    progress: _Progress,
    what: str,
    module: Path = BUILD_MODULE,
    *,
    quiet: bool = False,
    count_total: int = 0,
) -> str:
    """Run a build step in the build module; stream stderr into progress; keep a tail for errors."""
    proc = subprocess.Popen(
        cmd, cwd=module, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    tail: list[str] = []
    done = 0
    assert proc.stderr is not None and proc.stdout is not None
    # stdout is drained by a thread so neither pipe can fill up and stall the build.
    out_chunks: list[str] = []
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: out_chunks.append(stdout.read()), daemon=True)
    reader.start()
    with progress.heartbeat():
        for line in proc.stderr:
            tail = (tail + [line.rstrip()])[-40:]
            if count_total and re.match(r"^[\w.\-]+(/[\w.\-~]+)*$", line.strip()):
                done += 1
                progress.packages(done, count_total, line.strip())
            elif not quiet and not count_total:
                progress.detail(line.rstrip())
    reader.join()
    out = "".join(out_chunks)
    if proc.wait() != 0:
        raise BuildError(f"building {what} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    progress.end_line()
    return out


class _Progress:
    """Progress for a person at a terminal (one updating line) or in a CI log (a line per 5 %)."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self.started = time.monotonic()
        self.last_step = -1
        self.open_line = False

    @contextlib.contextmanager
    def heartbeat(self, every: float = 60.0):
        """In a log, say we are alive during long silent stretches (cargo building libflux)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every):
                if self.stream and not self.tty:
                    print(f"[{self._elapsed()}] still building ...", file=self.stream, flush=True)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def say(self, text: str) -> None:
        if self.stream:
            self.end_line()
            print(f"[{self._elapsed()}] {text}", file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        if self.stream and text and self.tty:
            self._line(text[:100])

    def packages(self, done: int, total: int, name: str) -> None:
        if not self.stream:
            return
        pct = min(100, done * 100 // max(total, 1))
        if self.tty:
            self._line(f"{pct:3d}% {done}/{total} {name[:70]}")
        elif pct // 5 != self.last_step:
            self.last_step = pct // 5
            print(f"[{self._elapsed()}] {pct:3d}% ({done}/{total} packages)", file=self.stream, flush=True)

    def _line(self, text: str) -> None:
        assert self.stream is not None
        self.stream.write(f"\r\033[K[{self._elapsed()}] {text}")
        self.stream.flush()
        self.open_line = True

    def end_line(self) -> None:
        if self.stream and self.open_line:
            self.stream.write("\n")
            self.open_line = False
