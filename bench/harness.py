"""What the benchmarks in bench/ (sso.py, discovery.py) share.

Output (`say`, `Progress`, the summary table), keys, certificates and SP metadata, timing loops,
the pysaml2 baseline's files, a Renkei home set up the operator's way, `renkei serve` and load
generators in their own process groups (stopped at exit), CPU accounting from /proc, wrk with a
generated Lua script and its BENCH_JSON line, PostgreSQL databases made and dropped for a run,
and `run_bench`: the temp dir, SIGTERM, cleanup and exit status around a benchmark's phases.

Importing this module puts the repository root on sys.path, so the benchmarks, run as scripts
(`.venv/bin/python bench/sso.py`), can import the project's packages.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MD_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"

# About the size of a real SignedInfo: what the crypto floors sign.
SIGNED_INFO = b"<ds:SignedInfo>" + b"x" * 600 + b"</ds:SignedInfo>"

CHILDREN: list[subprocess.Popen] = []  # started process groups, stopped at exit

T = TypeVar("T")


# --- output --------------------------------------------------------------------------------

def say(msg: str = "") -> None:
    """Print a line to stdout at once."""
    print(msg, flush=True)


class Progress:
    """A one-line progress indication on stderr, at most once a second."""

    def __init__(self, label: str, total: int | None = None, seconds: float | None = None,
                 show_rate: bool = True):
        self.label, self.total, self.seconds, self.show_rate = label, total, seconds, show_rate
        self.start = time.perf_counter()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, force: bool = False) -> None:
        """Show `done` (of `total`, with the elapsed time and the rate), unless shown < 1 s ago."""
        now = time.perf_counter()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        elapsed = now - self.start
        parts = [f"  {self.label}"]
        if self.show_rate or self.total:
            parts.append(f": {done}")
        if self.total:
            parts.append(f"/{self.total}")
        if self.seconds:
            parts.append(f" ({min(elapsed, self.seconds):.0f}/{self.seconds:.0f} s)")
        if self.show_rate and done and elapsed > 0:
            parts.append(f", {done / elapsed:,.1f}/s")
        line = "".join(parts)
        if self.tty:
            sys.stderr.write("\r" + line.ljust(70))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        """Clear the line (on a terminal)."""
        if self.tty:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def fmt(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, or "-" for None."""
    return format(value, spec) if value is not None else "-"


def print_table(width: int, columns: list[tuple[str, int]], last: str, baseline: float | None,
                rows: list[tuple[str, float | None, list[tuple[float | None, str]], str, bool]],
                footnotes: list[str]) -> None:
    """The summary table. `columns` are (heading, width): the phase (left-aligned), its rate, the
    ratio to `baseline`, then one per further value (right-aligned); `last` heads the free-form
    last column. A row is (phase, rate, [(value, format spec), ...], note, compare with the
    baseline); a row without a rate shows "-" in every column but the note."""

    def line(cells: list[str], note: str) -> str:
        first, *rest = cells
        aligned = [f"{first:<{columns[0][1]}}"] + [f"{c:>{w}}" for c, (_, w) in zip(rest, columns[1:])]
        return " ".join(aligned) + f"  {note}"

    say()
    say("=" * width)
    say(line([heading for heading, _ in columns], last))
    say("-" * width)
    for name, rate, values, note, compare in rows:
        if rate is None:
            say(line([name] + ["-"] * (len(columns) - 1), note))
            continue
        ratio = f"{rate / baseline:,.1f}x" if baseline and compare else "-"
        say(line([name, format(rate, ",.1f"), ratio, *(fmt(v, spec) for v, spec in values)], note))
    say("=" * width)
    for footnote in footnotes:
        say(footnote)


def write_json(path: Path, results: dict) -> None:
    """Write the results as JSON (what does not serialize, as str) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"results written to {path}")


# --- keys, certificates, metadata ----------------------------------------------------------

def rsa_key() -> Any:
    """A new RSA-2048 private key."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> Any:
    """A new EC P-256 private key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def make_cert(key: Any, common_name: str) -> Any:
    """A self-signed certificate for `key` (RSA or EC), valid from a day ago for a year."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def sp_metadata(entity_id: str, acs_url: str, certs: list[tuple[str, Any]], *,
                authn_requests_signed: bool, slo_url: str | None = None) -> bytes:
    """An SP EntityDescriptor with the given (use, certificate) KeyDescriptors, an optional
    HTTP-Redirect SingleLogoutService and one HTTP-POST AssertionConsumerService."""
    from cryptography.hazmat.primitives import serialization

    kds = "".join(
        f'<md:KeyDescriptor use="{use}"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
        f"{base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()}"
        f"</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        for use, cert in certs
    )
    slo = f'<md:SingleLogoutService Binding="{REDIRECT}" Location="{slo_url}"/>' if slo_url else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<md:EntityDescriptor xmlns:md="{MD_NS}" xmlns:ds="{DS_NS}" entityID="{entity_id}">'
        f'<md:SPSSODescriptor protocolSupportEnumeration="{SAMLP_NS}" '
        f'AuthnRequestsSigned="{str(authn_requests_signed).lower()}" WantAssertionsSigned="true">'
        f"{kds}{slo}"
        f'<md:AssertionConsumerService Binding="{POST}" Location="{acs_url}" index="0" isDefault="true"/>'
        f"</md:SPSSODescriptor></md:EntityDescriptor>\n"
    ).encode()


def pysaml2_files(tmp: Path, name: str, key: Any, cert: Any) -> dict[str, Any]:
    """Quiet pysaml2's warnings, find the xmlsec1 binary and write `key` and `cert` as PEM into
    tmp/pysaml2; the config entries for pysaml2's default backend (xmlsec1 as a subprocess)."""
    from cryptography.hazmat.primitives import serialization

    warnings.filterwarnings("ignore", module="saml2")
    warnings.filterwarnings("ignore", message=".*CFB.*")
    xmlsec = shutil.which("xmlsec1")
    if not xmlsec:
        raise SystemExit("the xmlsec1 binary is not installed (apt-get install xmlsec1)")
    d = tmp / "pysaml2"
    d.mkdir()
    (d / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {
        "xmlsec_binary": xmlsec,  # no crypto_backend: the default, xmlsec1 as a subprocess
        "key_file": str(d / f"{name}.key"),
        "cert_file": str(d / f"{name}.crt"),
        "delete_tmpfiles": True,
    }


# --- timing --------------------------------------------------------------------------------

def cpu_with_children() -> float:
    """CPU seconds of this process and its waited-for children (pysaml2's xmlsec1 runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_baseline(label: str, fn: Callable[[int], object], count: int, backend: str) -> dict:
    """fn(1) .. fn(count) of the pysaml2 baseline: ops, seconds, rate, its crypto `backend` and
    CPU ms per op (xmlsec1 children included)."""
    progress = Progress(label, total=count)
    cpu_start = cpu_with_children()
    start = time.perf_counter()
    for i in range(1, count + 1):
        fn(i)
        progress.update(i)
    elapsed = time.perf_counter() - start
    cpu = cpu_with_children() - cpu_start
    progress.finish()
    return {"ops": count, "seconds": elapsed, "rate": count / elapsed, "backend": backend,
            "cpu_ms_per_op": cpu / count * 1000}


def time_box(label: str, fn: Callable[[int], object], seconds: float, limit: int | None = None) -> dict:
    """fn(0), fn(1), ... for `seconds` (or `limit` calls): ops, seconds, rate, CPU ms per op."""
    progress = Progress(label, seconds=seconds)
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    done = 0
    while True:
        fn(done)
        done += 1
        now = time.perf_counter()
        if now >= deadline or (limit is not None and done >= limit):
            break
        progress.update(done)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    progress.finish()
    return {"ops": done, "seconds": elapsed, "rate": done / elapsed, "cpu_ms_per_op": cpu / done * 1000}


def per_call_seconds(fn: Callable[[], object], count: int) -> float:
    """CPU seconds of this process per call of fn, over `count` calls after one untimed call (CPU,
    not wall-clock: on a shared machine the wall clock also counts other processes' turns, and
    the floors are compared with the server's CPU per operation)."""
    fn()
    start = time.process_time()
    for _ in range(count):
        fn()
    return (time.process_time() - start) / count


def idp_rsa_sign_seconds(count: int) -> float:
    """Seconds per RSA-2048 signature of SIGNED_INFO with the IdP's own key (current settings),
    or with a generated RSA-2048 key when the IdP's key is ECDSA."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from idp.service import signing_key
    from kernel.xml._dsig import RSA_SHA256, _sign_octets

    key = signing_key().private_key
    if not isinstance(key, rsa.RSAPrivateKey):
        key = rsa_key()
    return per_call_seconds(lambda: _sign_octets(key, RSA_SHA256, SIGNED_INFO), count)


def cprofile(fn: Callable[[int], object], count: int, clock: str = "wall") -> Any:
    """A cProfile.Profile of fn(0) .. fn(count - 1), timed by the wall clock (the database's
    round trips included) or by this thread's CPU clock (`clock="cpu"`: waits and the work of
    other threads, such as the history's batch writer, left out)."""
    import cProfile

    prof = cProfile.Profile(time.thread_time) if clock == "cpu" else cProfile.Profile()
    prof.enable()
    for i in range(count):
        fn(i)
    prof.disable()
    return prof


# --- the hub -------------------------------------------------------------------------------

# listening sockets bound here, by port, until a server started by start_server takes one over
# (binding, closing and re-binding a "free" port races with every other process on the host)
RESERVED: dict[int, socket.socket] = {}


def reserve_port() -> int:
    """A TCP port on 127.0.0.1 the kernel chose, held bound until start_server hands it over."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    RESERVED[port] = sock
    return port


@dataclass
class HubBase:
    """A Renkei home and database, and the port its server is to listen on."""

    env: dict[str, str]
    db_url: str
    port: int

    @property
    def base_url(self) -> str:
        return self.env["RENKEI_BASE_URL"]


def set_up_home(home: Path, db_url: str,
                cli_steps: list[tuple[list[str], str | None]]) -> tuple[dict[str, str], int]:
    """Point RENKEI_* (also in os.environ) at `home`, `db_url` and a free port, then run each
    (`renkei` arguments, stdin) through click's CliRunner; (the environment, the port)."""
    from click.testing import CliRunner

    from kernel.settings import reset_settings
    from renkei.cli import main

    port = reserve_port()
    env = {
        "RENKEI_HOME": str(home),
        "RENKEI_DATABASE_URL": db_url,
        "RENKEI_BASE_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)
    reset_settings()
    runner = CliRunner()
    for args, stdin in cli_steps:
        result = runner.invoke(main, args, input=stdin)
        if result.exit_code != 0:
            raise SystemExit(f"renkei {' '.join(args)} failed:\n{result.output}")
    return env, port


# --- processes -----------------------------------------------------------------------------

def start_group(cmd: list[str], stdout: IO[bytes] | int, *, env: dict[str, str] | None = None,
                cwd: str | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group (stdin /dev/null, stderr to stdout), stopped at exit."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    CHILDREN.append(proc)
    return proc


def kill_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process group this benchmark started (the server and its workers, wrk, a client)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers left behind by a supervisor that died first
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def stop_children() -> None:
    """Stop every process group started here, the last first."""
    for proc in reversed(CHILDREN):
        kill_group(proc)


def group_members(pgid: int) -> list[tuple[int, str, float]]:
    """(pid, cmdline, user+system CPU seconds) of the live processes in a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5, pgrp
            members.append((int(entry), cmdline, process_cpu_seconds(entry, fields, tick)))
    return members


def process_cpu_seconds(pid: str, stat_fields: list[str], tick: int) -> float:
    """utime+stime of /proc/<pid>/stat: clock ticks, but monotonic and counting threads that
    have exited (a worker's threadpool threads come and go)."""
    return (int(stat_fields[11]) + int(stat_fields[12])) / tick


def single_thread_cpu_seconds(pid: str, stat_fields: list[str], tick: int) -> float:
    """CPU seconds of a one-thread process (a PostgreSQL backend): /proc/<pid>/schedstat in
    nanoseconds where the kernel has it — clock ticks (10 ms) are too coarse for the many short
    slices of a backend — else utime+stime."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return process_cpu_seconds(pid, stat_fields, tick)


def group_cpu_seconds(pgid: int) -> float:
    """user+system CPU seconds of the live processes in a process group (from /proc)."""
    return sum(cpu for _pid, _cmd, cpu in group_members(pgid))


def start_server(hub: HubBase, workers: int, log_path: Path, counts_dir: Path | None = None, *,
                 nagle: bool = False) -> subprocess.Popen:
    """The hub app under uvicorn with N workers (what `renkei serve` runs), in its own process
    group, once /healthz answers. Served through bench/counted_app.py, which writes each
    worker's database counters into `counts_dir` (read them with `server_counts`).

    Unless `nagle`, its connections send without delay (TCP_NODELAY), as `renkei serve --port`
    does: uvicorn reads an inherited socket (--fd) as AF_UNIX, so asyncio never sets the option
    on its connections, and a response written in two parts would then wait for the client's
    delayed ACK (40 ms on Linux) on a keep-alive connection. Linux copies the option from the
    listening socket to every accepted one."""
    import httpx

    env = dict(os.environ)
    env.update(hub.env)
    if counts_dir is not None:
        env["RENKEI_BENCH_COUNTS"] = str(counts_dir)
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    sock = RESERVED.pop(hub.port, None)
    if sock is None:  # a second server on the same hub: the first one has let the port go
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", hub.port))
    if not nagle:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # uvicorn serves the socket bound in set_up_home (its file descriptor, inherited), so the
    # port cannot change hands between choosing it and serving on it
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.counted_app:create_app", "--factory", "--fd", str(sock.fileno()),
         "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
        env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, pass_fds=(sock.fileno(),),
    )
    CHILDREN.append(proc)
    sock.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"renkei serve exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{hub.base_url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise SystemExit("renkei serve did not answer /healthz within 60 s")
    time.sleep(1.0)  # /healthz may be answered by one worker before the other is up
    return proc


def server_counts(counts_dir: Path) -> dict[str, int]:
    """The database counters of every worker that wrote into `counts_dir`, summed (and
    `per_worker_connections`: each worker's peak of open connections). Waits 1.1 s first: each
    worker rewrites its file every 0.5 s."""
    time.sleep(1.1)
    total = {"statements": 0, "commits": 0, "writing_commits": 0, "rollbacks": 0, "checkouts": 0, "pings": 0,
             "connects": 0}
    peaks = []
    for path in counts_dir.glob("*.json"):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        peaks.append(counts.pop("peak_connections", 0))
        counts.pop("connections", None)
        gc_stats = counts.pop("gc", None)
        if gc_stats:  # collections and pause time add up; the longest pause is the workers' longest
            total["gc_pause_ms_max"] = max(total.get("gc_pause_ms_max", 0.0), gc_stats.pop("pause_ms_max"))
            for name, value in gc_stats.items():
                total[f"gc_{name}"] = total.get(f"gc_{name}", 0) + value
        for name, value in counts.items():
            total[name] = total.get(name, 0) + value
    total["per_worker_connections"] = sorted(peaks)  # type: ignore[assignment]
    return total


def idle_cpu(server: subprocess.Popen, seconds: float) -> float:
    """Cores the server keeps busy with no request in flight (background threads), over `seconds`."""
    before = group_cpu_seconds(server.pid)
    started = time.perf_counter()
    time.sleep(seconds)  # the measurement interval itself, not a wait for a condition
    return (group_cpu_seconds(server.pid) - before) / (time.perf_counter() - started)


def server_sql_mix(counts_dir: Path) -> dict[str, int]:
    """How often each statement head (verb and table) ran in the server's workers, summed."""
    total: dict[str, int] = {}
    for path in counts_dir.glob("*.sqlmix"):
        try:
            for head, n in json.loads(path.read_text()).items():
                total[head] = total.get(head, 0) + n
        except (OSError, ValueError):
            continue
    return total


def sql_mix_lines(before: dict[str, int], after: dict[str, int], ops: int, top: int = 14) -> list[str]:
    """The statements per operation between two `server_sql_mix` readings, most frequent first."""
    delta = {h: n - before.get(h, 0) for h, n in after.items() if n - before.get(h, 0) > 0}
    return [f"{n / max(ops, 1):6.2f}  {h}" for h, n in sorted(delta.items(), key=lambda kv: -kv[1])[:top]]


def counts_per_op(before: dict[str, int], after: dict[str, int], ops: int, postgres: bool) -> dict[str, float]:
    """Per operation: statements, commits (and of them `writing_commits`, those of transactions
    that wrote a row), rollbacks and round trips (statements + commits +
    rollbacks + liveness pings of idle connections; psycopg's implicit BEGIN rides with the first
    statement of a transaction only on SQLite, so on PostgreSQL one BEGIN per transaction is
    added too), and each worker's peak of open database connections."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "per_worker_connections"}
    n = max(ops, 1)
    trips = d["statements"] + d["commits"] + d["rollbacks"] + d.get("pings", 0)
    if postgres:
        trips += d["commits"] + d["rollbacks"]  # BEGIN of each transaction
    return {"statements": d["statements"] / n, "commits": d["commits"] / n,
            "writing_commits": d.get("writing_commits", 0) / n, "rollbacks": d["rollbacks"] / n,
            "checkouts": d["checkouts"] / n, "pings": d.get("pings", 0) / n, "round_trips": trips / n,
            "connects": d.get("connects", 0) / n,
            "connections": after.get("per_worker_connections", [])}


def commit_target_line(what: str, label: str, db: dict[str, float]) -> str:
    """The issue's "at most one commit each" (item 3), judged on the commits of transactions
    that wrote (the durable ones, a WAL flush each); every COMMIT is shown beside it (a
    read-only transaction's is a round trip, nothing more)."""
    writing = db["writing_commits"]
    return (f"at most one commit per {what} ({label}): {writing:.2f} commits of transactions that wrote "
            f"({db['commits']:.2f} COMMITs in all, {db['round_trips']:.1f} round trips): "
            + ("met" if writing <= 1 else "NOT met"))


def postgres_backend_cpu(database: str) -> float:
    """user+system CPU seconds of the live PostgreSQL backends serving `database` (from /proc;
    their process title names the database). Background writers are not included."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not cmdline.startswith("postgres: ") or f" {database} " not in cmdline:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += single_thread_cpu_seconds(entry, fields, tick)
    return total


def py_spy_record(server: subprocess.Popen, seconds: float, out: Path, fmt: str = "speedscope") -> subprocess.Popen | None:
    """Start py-spy on one of the server's worker processes (not the supervisor), if installed:
    `fmt` is speedscope, flamegraph (SVG) or raw (collapsed stacks)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(exe):
        return None
    workers = [pid for pid, cmd, _cpu in group_members(server.pid)
               if pid != server.pid and "resource_tracker" not in cmd and "multiprocessing" in cmd]
    workers = workers or [server.pid]
    return start_group([exe, "record", "--pid", str(min(workers)), "--duration", str(int(seconds)),
                        "--rate", "200", "--nonblocking", "--format", fmt, "--output", str(out)],
                       subprocess.DEVNULL)


class FlameRecording:
    """py-spy on one worker of a server: an SVG flame graph (`<stem>.svg`) and the collapsed
    stacks (`<stem>.txt`, for bench/breakdown.py), recorded side by side over the same run."""

    def __init__(self, server: subprocess.Popen, seconds: float, stem: Path):
        self.paths = [stem.with_suffix(".svg"), stem.with_suffix(".txt")]
        self.procs = [p for p in (py_spy_record(server, seconds, self.paths[0], "flamegraph"),
                                  py_spy_record(server, seconds, self.paths[1], "raw")) if p is not None]

    def wait(self, timeout: float = 60) -> None:
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)


def run_watched(cmd: list[str], out_path: Path, label: str, seconds: float,
                env: dict[str, str] | None = None) -> tuple[int, float]:
    """Run a load generator in its own process group with a progress line, its output into
    `out_path`; (return code, its CPU seconds)."""
    with open(out_path, "wb") as out:
        before = os.times()
        proc = start_group(cmd, out, env=env)
        progress = Progress(label, seconds=seconds, show_rate=False)
        started = time.perf_counter()
        while proc.poll() is None:
            time.sleep(0.25)
            progress.update(int(time.perf_counter() - started))
            if time.perf_counter() - started > seconds + 120:
                kill_group(proc)
                raise SystemExit(f"{label}: still running {seconds + 120:.0f} s after its end")
        progress.finish()
        after = os.times()
    return proc.returncode, (after.children_user + after.children_system
                             - before.children_user - before.children_system)


# --- wrk -----------------------------------------------------------------------------------

_WRK_HEAD = r"""
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local items = {}
local pos = 0
bad = 0
wrapped = 0
sent = 0
loaded = 0

-- this thread's share of the file: every n-th line, starting at line `tid`
local function load_items(file, nthreads)
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == tid then items[#items + 1] = line end
    n = n + 1
  end
  loaded = #items
end

-- the next item, each sent once (a wrap-around is counted)
local function next_item()
  pos = pos + 1
  if pos > #items then
    pos = 1
    wrapped = wrapped + 1
  end
  sent = sent + 1
  return items[pos]
end
"""

_WRK_DONE = r"""
function done(summary, latency, requests)
  local b, w, s, l = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    b = b + t:get("bad")
    w = w + t:get("wrapped")
    s = s + t:get("sent")
    l = l + t:get("loaded")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "err_connect": %d, ' ..
    '"err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"bad": %d, "wrapped": %d, "sent": %d, "loaded": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, b, w, s, l))
end
"""


def wrk_script(comment: str, body: str) -> str:
    """A wrk Lua script: `comment` (Lua comment lines), the shared part (each thread loads its
    share of a file with `load_items(file, nthreads)` and takes each line once with
    `next_item()`; globals `bad`, `wrapped`, `sent`, `loaded`), then `body` (init, request,
    response); `done` prints one BENCH_JSON line with the summary and those counters."""
    return "\n" + comment.strip("\n") + "\n" + _WRK_HEAD.lstrip("\n") + body + _WRK_DONE


def wrk_binary() -> str:
    """The wrk executable, or SystemExit."""
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    return wrk


def wrk_command(wrk: str, script: Path, base_url: str, script_args: list[str], *, threads: int,
                connections: int, seconds: int, latency: bool = True) -> list[str]:
    """wrk with a generated script (10 s timeout), its own arguments after `--`."""
    return [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", *(["--latency"] if latency else []),
            "--timeout", "10s", "-s", str(script), base_url, "--", *script_args]


def bench_json(output: str) -> dict | None:
    """The JSON of the BENCH_JSON line in `output`, or None."""
    match = re.search(r"^BENCH_JSON (.*)$", output, re.MULTILINE)
    return json.loads(match.group(1)) if match else None


def wrk_figures(returncode: int, output: str) -> dict:
    """Rate, latency, error and script counters of a wrk run with a generated script, or
    SystemExit if wrk failed or printed no result."""
    if returncode != 0:
        raise SystemExit(f"wrk failed ({returncode}):\n{output}")
    r = bench_json(output)
    if r is None:
        raise SystemExit(f"wrk printed no result:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    seconds = r["duration_us"] / 1e6
    return {
        "rate": r["requests"] / seconds,
        "ops": r["requests"],
        "seconds": seconds,
        "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"],
        "bad": r["bad"], "wrapped": r["wrapped"], "sent": r["sent"],
    }


def web_stack_floor(wrk: str, base_url: str, server: subprocess.Popen, *, threads: int,
                    connections: int, seconds: int) -> dict:
    """A short wrk run on GET /healthz of the same server: what uvicorn+FastAPI cost per request
    without SAML, JWT, database or crypto (calibration)."""
    cpu_before = group_cpu_seconds(server.pid)
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"{base_url}/healthz"],
        check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=seconds + 30,
    ).stdout
    cpu = group_cpu_seconds(server.pid) - cpu_before
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rate or not total or re.search(r"Non-2xx", out):
        return {"rate": None, "output": out}
    return {"rate": float(rate.group(1)), "cpu_ms_per_op": cpu / int(total.group(1)) * 1000}


def round_trip_costs(db_url: str, count: int = 1000) -> dict[str, float]:
    """Client-side CPU ms of one database round trip on `db_url` (PostgreSQL): raw psycopg, a
    SQLAlchemy Core statement, and a whole short transaction the way the hub opens one
    (`kernel.db.make_engine`: pool checkout, BEGIN, one statement, COMMIT). What each round trip
    the hot path saves is worth, measured in the same run."""
    import psycopg
    from sqlalchemy import text

    def cpu_ms(fn: Callable[[], object]) -> float:
        fn()
        start = time.process_time()
        for _ in range(count):
            fn()
        return (time.process_time() - start) / count * 1000

    raw = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    try:
        raw_ms = cpu_ms(lambda: raw.execute("SELECT 1").fetchone())
    finally:
        raw.close()
    from kernel.db import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            core_ms = cpu_ms(lambda: conn.execute(text("SELECT 1")).scalar())

        def transaction() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1")).scalar()
                conn.commit()

        txn_ms = cpu_ms(transaction)
    finally:
        engine.dispose()
    return {"raw_ms": raw_ms, "core_ms": core_ms, "transaction_ms": txn_ms}


# --- PostgreSQL ----------------------------------------------------------------------------

def _psycopg(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def fresh_postgres_database(admin_url: str, name: str) -> str:
    """(Re)create database `name` on the server of `admin_url`; its URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base, _, _ = admin_url.partition("?")[0].rpartition("/")
    return f"{base}/{name}"


def drop_postgres_database(admin_url: str, name: str) -> None:
    """Drop database `name` on the server of `admin_url`, if it is there."""
    from sqlalchemy import create_engine, text

    engine = create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def postgres_settings(admin_url: str) -> str:
    """The server's version and the settings that move the figures, as one line."""
    from sqlalchemy import create_engine, text

    engine = create_engine(_psycopg(admin_url))
    with engine.connect() as conn:
        values = [f"{n}={conn.execute(text(f'SHOW {n}')).scalar_one()}"
                  for n in ("server_version", "synchronous_commit", "fsync", "max_connections")]
    engine.dispose()
    return ", ".join(values)


# --- command line -------------------------------------------------------------------------

def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of the benchmark's docstring (and whose
    --help shows the whole docstring's layout)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_arguments(parser: argparse.ArgumentParser, *, baseline_help: str, inproc_help: str,
                      connections: int, connections_help: str) -> None:
    """--baseline-count, --inproc-seconds (None unless given: the benchmark picks the default),
    --workers (renkei serve), --threads and --connections (wrk)."""
    parser.add_argument("--baseline-count", type=int, default=None, help=baseline_help)
    parser.add_argument("--inproc-seconds", type=float, default=None, help=inproc_help)
    parser.add_argument("--workers", type=int, default=2, help="renkei serve --workers (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=connections, help=connections_help)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--json and --keep."""
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")


# --- one run -------------------------------------------------------------------------------

@dataclass
class Bench:
    """One benchmark run: its temp dir, its results (for --json), the databases it created."""

    tmp: Path
    results: dict
    databases: list[tuple[str, str]] = field(default_factory=list)  # (admin URL, name)

    def postgres_database(self, admin_url: str, name: str) -> str:
        """A fresh database, dropped at the end of the run; its URL."""
        url = fresh_postgres_database(admin_url, name)
        self.databases.append((admin_url, name))
        return url


def run_bench(title: str, tmp_prefix: str, args: argparse.Namespace,
              body: Callable[[Bench], int]) -> int:
    """Make the temp dir, say what machine this is, return body(bench). Whatever happens, stop
    the process groups, drop the databases and remove the temp dir (unless args.keep);
    Ctrl-C and SIGTERM end the run with 130."""
    bench = Bench(tmp=Path(tempfile.mkdtemp(prefix=tmp_prefix)),
                  results={"machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
                           "args": {k: str(v) for k, v in vars(args).items()}})

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        load = os.getloadavg()[0]
        say(f"{title}: {os.cpu_count()} CPUs, load average {load:.2f}"
            + ("  (the machine is busy: figures will be low and noisy)" if load > 0.7 else ""))
        say(f"temp dir {bench.tmp}")
        return body(bench)
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        stop_children()
        for admin_url, name in bench.databases:
            try:
                from kernel.db import dispose_engines

                dispose_engines()
                drop_postgres_database(admin_url, name)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
                say(f"could not drop PostgreSQL database {name}: {exc}")
        if args.keep:
            say(f"kept {bench.tmp}")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)


def finish(bench: Bench, args: argparse.Namespace, failure: str | None) -> int:
    """Write the results if --json asks for them; then say `failure` and return 1, or return 0."""
    if args.json:
        write_json(args.json, bench.results)
    if failure:
        say(failure)
        return 1
    return 0


def run_checked(label: str, fn: Callable[[], T], failed: list[tuple[str, str]]) -> T | None:
    """fn(); if a check fails in it (SystemExit with a message), say so, note (label, message)
    in `failed` and return None, so that the other phases still run."""
    try:
        return fn()
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        say(f"    {label}: FAILED: {exc.code}")
        failed.append((label, exc.code))
        return None


# --- the ASGI app called directly (no socket, no server) -------------------------------------

def asgi_scope(path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    """An HTTP GET scope for `path`, as a server would pass it to the app."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
            "root_path": "", "headers": headers or [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {}}


async def asgi_call(app, scope: dict) -> tuple[int, bytes]:
    """Call the ASGI app once with an empty request body: its status and its whole body."""
    status, body = 0, []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(body)
