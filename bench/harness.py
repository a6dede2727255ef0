#!/usr/bin/env python3
"""The Custos load-benchmark harness. Run it through `bench/run`.

One run starts a mock upstream (nginx serving fixed answers), then starts each
target in turn, all pointed at that same upstream, and drives it through the
chosen scenarios back to back, so that ratios between targets come from one
run on one machine state:

  direct          the mock itself, the floor every gateway is measured against
  nginx-proxy     a bare nginx reverse proxy in front of the mock (keep-alive
                  pool, no buffering): the cost of one more HTTP hop on this
                  machine, with no parsing, keys or audit record
  custos-sync     Custos with CUSTOS_LEDGER_DURABILITY=sync
  custos-batched  Custos with CUSTOS_LEDGER_DURABILITY=batched
  litellm         the LiteLLM proxy (PyPI, pinned in install.sh)
  portkey         the Portkey gateway (npm, pinned in install.sh)

Scenarios:

  c1      wrk, 1 connection, closed loop: latency of one request at a time
  c64     wrk, 64 connections, closed loop: throughput
  stream1 loadgen, closed loop, 1 connection, SSE answers: time to the first
          event (TTFT) and to the end of the stream, one stream at a time
  stream  the same with --stream-connections connections (throughput)
  rate    loadgen, open loop at --rate requests/s: latency percentiles measured
          from each request's intended send time (no coordinated omission)

Every answer is checked (status 200 and the expected body marker); anything
else is an error. A target or scenario that cannot run is reported as FAILED
with its reason, never dropped. The result is a Markdown report on stdout and
the raw JSON (plus the report) under bench/out/.

Standard library only, so that it runs on any Python 3.9+.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "fixtures")
ALL_TARGETS = ["direct", "nginx-proxy", "custos-sync", "custos-batched", "litellm", "portkey"]
ALL_SCENARIOS = ["c1", "c64", "stream1", "stream", "rate"]
PEERS = {"litellm", "portkey"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_CACHE = os.environ.get("BENCH_CACHE", os.path.expanduser("~/.cache/custos-bench"))
LITELLM_VERSION = os.environ.get("LITELLM_VERSION", "1.100.5")
PORTKEY_VERSION = os.environ.get("PORTKEY_VERSION", "1.15.2")
JSON_MARKER = '"chat.completion"'
STREAM_MARKERS = ["chat.completion.chunk", "data: [DONE]"]


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Processes: everything started here is in its own session, registered, and
# killed by process group on exit, on failure and on SIGINT/SIGTERM.

_procs: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    _procs.append(p)
    return p


def stop(p: subprocess.Popen, grace: float = 5.0) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Children that outlived their leader (workers of a peer) go too.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(2)
    except subprocess.TimeoutExpired:
        pass
    if p in _procs:
        _procs.remove(p)


def stop_all() -> None:
    for p in list(reversed(_procs)):
        stop(p, grace=3.0)


def _on_signal(signum, _frame):
    log(f"signal {signum}: stopping everything started by this run")
    stop_all()
    sys.exit(130)


# ---------------------------------------------------------------------------
# /proc accounting

def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return s[s.rindex(")") + 2:].split()


def tree(root: int) -> list[int]:
    """The pid and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f:
                children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime + stime of a process tree, in seconds (children that already
    exited and were reaped are included through cutime/cstime)."""
    total = 0
    for pid in tree(root):
        f = _stat_fields(pid)
        if f:
            # fields 14-17 of stat: utime stime cutime cstime (0-based 11..14 after the name)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU of this harness's finished children (wrk, loadgen)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peak_rss_kib(root: int) -> int:
    """Sum of VmHWM over a process tree (an upper bound of the tree's peak)."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------
# Small helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, headers: list[str], timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    for h in headers:
        k, v = h.split(":", 1)
        req.add_header(k.strip(), v.strip())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def read_fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def tail(path: str, n: int = 6) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.rstrip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-600:]


def error_line(path: str) -> str:
    """The first line of a log that looks like an error, trimmed."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if re.search(r"error|exception|traceback", line, re.I):
                    return line.strip()[:200]
    except OSError:
        pass
    return ""


def cmd_output(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)


def fmt_us(v) -> str:
    if v is None:
        return "—"
    v = float(v)
    if abs(v) < 1000:
        return f"{v:.0f} µs"
    if abs(v) < 1_000_000:
        return f"{v / 1000:.2f} ms"
    return f"{v / 1e6:.2f} s"


def fmt_delta(v) -> str:
    if v is None:
        return "—"
    return ("+" if v >= 0 else "−") + fmt_us(abs(v))


# ---------------------------------------------------------------------------
# Machine facts and the disk's fdatasync latency

def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory": mem,
        "loadavg_at_start": os.getloadavg(),
    }


def fdatasync_latency(directory: str, n: int) -> dict:
    """p50/p99 of a 4 KiB append followed by fdatasync, in microseconds: the
    floor of a ledger that syncs every record before answering."""
    path = os.path.join(directory, "fdatasync-probe")
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"x" * 4096
        for _ in range(n):
            t0 = time.perf_counter_ns()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    fs = ""
    rc, out = cmd_output(["df", "-T", directory])
    if rc == 0 and len(out.splitlines()) > 1:
        parts = out.splitlines()[1].split()
        fs = f"{parts[0]} ({parts[1]})"
    return {
        "samples": n,
        "p50_us": samples[len(samples) // 2],
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "filesystem": fs,
        "directory": directory,
    }


# ---------------------------------------------------------------------------
# Targets

class Target:
    """One system under test, started from nothing and reached over HTTP."""

    def __init__(self, name: str):
        self.name = name
        self.url_json = ""
        self.url_stream = ""
        self.headers: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.ready_s: float | None = None  # spawn -> ready line (Custos only)
        self.first_200_s: float | None = None  # spawn -> first good answer
        self.failed: str | None = None
        self.notes: list[str] = []
        self.log_path = ""
        self.version = ""
        self.peak_rss_kib: int | None = None
        self.stream_headers: list[str] | None = None  # when streams need other headers
        self.admin_url = ""  # Custos only: where /metrics is
        self.data_dir = ""

    def wait_first_200(self, t0: float, timeout: float) -> None:
        body = read_fixture("request.json")
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"exited with status {self.proc.returncode}: {tail(self.log_path)}")
            try:
                status, data = post(self.url_json, body, self.headers, timeout=2)
                if status == 200 and JSON_MARKER.encode() in data:
                    self.first_200_s = time.monotonic() - t0
                    return
                last = f"HTTP {status}: {data[:200]!r}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.02)
        raise RuntimeError(f"no 200 within {timeout:.0f}s (last: {last}) {tail(self.log_path)}")

    def check(self) -> None:
        """One verified chat completion before any load. (A target whose
        streaming is broken still runs the other scenarios; its stream
        scenario then fails with the answer it gave.)"""
        status, data = post(self.url_json, read_fixture("request.json"), self.headers, timeout=10)
        if status != 200 or JSON_MARKER.encode() not in data:
            raise RuntimeError(f"chat completion check: HTTP {status}: {data[:300]!r}")

    def probe(self, stream: bool) -> str:
        """What one request answers now, for a failure message."""
        try:
            if stream:
                status, data = post(self.url_stream, read_fixture("request-stream.json"),
                                    self.stream_headers or self.headers, timeout=10)
            else:
                status, data = post(self.url_json, read_fixture("request.json"), self.headers, timeout=10)
        except (OSError, urllib.error.URLError) as e:
            return f"a single request fails: {e}"
        why = f"a single request answers HTTP {status}: {data[:160].decode(errors='replace')}"
        hint = error_line(self.log_path)
        return why + (f"; log: {hint}" if hint else "")


class Run:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="custos-bench-", dir=os.environ.get("BENCH_TMP"))
        os.chmod(self.tmp, 0o700)
        self.nginx: subprocess.Popen | None = None
        self.nginx_port = 0
        self.custos_bin = os.environ.get("CUSTOS_BIN", os.path.join(ROOT, "target", "release", "custos"))
        self.loadgen = os.environ.get("BENCH_LOADGEN", "")
        self.custos_features: dict = {}

    # -- the mock upstream ---------------------------------------------------
    def start_nginx(self) -> None:
        prefix = os.path.join(self.tmp, "nginx")
        os.makedirs(prefix)
        self.nginx_port = free_port()
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            conf = f.read()
        conf = conf.replace("@PREFIX@", prefix).replace("@PORT@", str(self.nginx_port))
        conf = conf.replace("@FIXTURES@", FIXTURES)
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        errlog = open(os.path.join(prefix, "stderr.log"), "w")
        t0 = time.monotonic()
        self.nginx = spawn(["nginx", "-p", prefix, "-c", path], stdout=errlog, stderr=errlog)
        url = f"http://127.0.0.1:{self.nginx_port}/v1/chat/completions"
        deadline = time.monotonic() + 10
        while True:
            try:
                status, _ = post(url, read_fixture("request.json"), [], timeout=1)
                if status == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {tail(os.path.join(prefix, 'error.log'))}"
                                   f" {tail(os.path.join(prefix, 'stderr.log'))}")
            time.sleep(0.02)
        self.nginx_startup_s = time.monotonic() - t0
        log(f"mock upstream: nginx on 127.0.0.1:{self.nginx_port}")

    def upstream(self, stream: bool) -> str:
        return f"http://127.0.0.1:{self.nginx_port}{'/sse' if stream else ''}/v1"

    # -- targets -------------------------------------------------------------
    def start(self, name: str) -> Target:
        t = Target(name)
        try:
            if name == "direct":
                self._direct(t)
            elif name == "nginx-proxy":
                self._nginx_proxy(t)
            elif name.startswith("custos-"):
                self._custos(t, name.split("-", 1)[1])
            elif name == "litellm":
                self._litellm(t)
            elif name == "portkey":
                self._portkey(t)
            else:
                raise RuntimeError(f"unknown target {name}")
            t.check()
        except Exception as e:  # a target that cannot start is reported, not fatal
            t.failed = str(e) or type(e).__name__
            if t.proc is not None:
                stop(t.proc)
        return t

    def _direct(self, t: Target) -> None:
        t.url_json = self.upstream(False) + "/chat/completions"
        t.url_stream = self.upstream(True) + "/chat/completions"
        t.pid = self.nginx.pid
        t.first_200_s = self.nginx_startup_s
        t.log_path = os.path.join(self.tmp, "nginx", "error.log")
        t.version = cmd_output(["nginx", "-v"])[1].replace("nginx version: ", "")

    def _nginx_proxy(self, t: Target) -> None:
        prefix = os.path.join(self.tmp, "nginx-proxy")
        os.makedirs(prefix)
        port = free_port()
        with open(os.path.join(HERE, "nginx-proxy.conf.in")) as f:
            conf = f.read()
        conf = conf.replace("@PREFIX@", prefix).replace("@PORT@", str(port))
        conf = conf.replace("@UPSTREAM@", f"127.0.0.1:{self.nginx_port}")
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        t.log_path = os.path.join(prefix, "error.log")
        errlog = open(os.path.join(prefix, "stderr.log"), "w")
        t0 = time.monotonic()
        t.proc = spawn(["nginx", "-p", prefix, "-c", path], stdout=errlog, stderr=errlog)
        t.pid = t.proc.pid
        base = f"http://127.0.0.1:{port}"
        t.url_json = base + "/v1/chat/completions"
        t.url_stream = base + "/sse/v1/chat/completions"
        t.version = cmd_output(["nginx", "-v"])[1].replace("nginx version: ", "")
        t.notes.append("reference, not a gateway: proxy_pass with a keep-alive pool, "
                       "proxy_buffering off, 1 worker; no key check, no parsing, no record")
        t.wait_first_200(t0, 10)

    def probe_custos(self) -> dict:
        """What the binary can do, asked of the binary itself."""
        if self.custos_features:
            return self.custos_features
        if not os.access(self.custos_bin, os.X_OK):
            raise RuntimeError(f"no Custos binary at {self.custos_bin} (set CUSTOS_BIN or let bench/run build it)")
        rc, default_cfg = cmd_output([self.custos_bin, "config", "default"])
        keys_rc, _ = cmd_output([self.custos_bin, "keys", "--help"])
        audit_rc, _ = cmd_output([self.custos_bin, "audit", "--help"])
        _, version = cmd_output([self.custos_bin, "--version"])
        # The commit is known only when bench/run built the binary from this tree.
        if os.environ.get("BENCH_CUSTOS_BUILT") == "1":
            rc_git, rev = cmd_output(["git", "-C", ROOT, "describe", "--always", "--dirty"])
        else:
            rc_git, rev = 0, os.environ.get("CUSTOS_BIN_REV", "CUSTOS_BIN")
        # Whether the ledger is on is decided per target after startup, from
        # the data dir (see _custos); these are the binary's own hints.
        self.custos_features = {
            "ledger": False,
            "ledger_in_default_config": bool(re.search(r"^\s*\[ledger\]", default_cfg, re.M)),
            "audit_command": audit_rc == 0,
            "keys": keys_rc == 0,
            "version": version.splitlines()[0] if version else "",
            "git": rev if rc_git == 0 else "",
            "bin": self.custos_bin,
        }
        return self.custos_features

    def _custos(self, t: Target, durability: str) -> None:
        feats = self.probe_custos()
        t.version = f"{feats['version']} ({feats['git']})".strip()
        data = os.path.join(self.tmp, f"{t.name}-data")
        cfg = os.path.join(self.tmp, f"{t.name}.toml")
        with open(cfg, "w") as f:
            f.write(
                "# Written by bench/harness.py: two providers on the same mock, one\n"
                "# answering JSON, one answering an SSE stream.\n"
                "[providers.mock_json]\n"
                'kind = "openai"\n'
                f'base_url = "{self.upstream(False)}"\n'
                "max_idle_connections = 256\n\n"
                "[providers.mock_sse]\n"
                'kind = "openai"\n'
                f'base_url = "{self.upstream(True)}"\n'
                "max_idle_connections = 256\n\n"
                "[[models]]\n"
                'name = "bench"\n'
                'targets = [{ provider = "mock_json" }]\n\n'
                "[[models]]\n"
                'name = "bench-stream"\n'
                'targets = [{ provider = "mock_sse", model = "bench" }]\n'
            )
            # Experiments: extra TOML appended to Custos' configuration
            # (for example a [ledger] table); the report notes it.
            extra = os.environ.get("BENCH_CUSTOS_TOML", "")
            if extra:
                f.write("\n" + extra.replace("\\n", "\n") + "\n")
                t.notes.append(f"extra config: {extra}")
        env = dict(os.environ)
        env.pop("RUST_LOG", None)  # RUST_LOG would win over CUSTOS_LOG_LEVEL
        env.update({
            "CUSTOS_LISTEN": "127.0.0.1:0",
            "CUSTOS_ADMIN_LISTEN": "127.0.0.1:0",
            "CUSTOS_LOG_LEVEL": "warn",
            "CUSTOS_LEDGER_DURABILITY": durability,
            "CUSTOS_CONFIG": cfg,
        })
        # Runtime threads: one by default, because on this machine the
        # gateway shares two cores with the mock and the load generator
        # (nginx, as mock and as reference proxy, runs one worker too); "0"
        # means Custos' own default, one per CPU.
        workers = os.environ.get("BENCH_CUSTOS_WORKERS", "1").strip() or "1"
        env.pop("TOKIO_WORKER_THREADS", None)
        env["CUSTOS_WORKER_THREADS"] = workers
        t.notes.append("runtime threads: one per CPU (server.worker_threads = 0)" if workers == "0"
                       else f"runtime threads: {workers} (server.worker_threads)")
        if feats["keys"]:
            os.makedirs(data, mode=0o700, exist_ok=True)
            rc, out = cmd_output_env(
                [self.custos_bin, "keys", "create", "--name", "bench", "--models", "*",
                 "--data-dir", data, "--json"], env)
            secret = None
            m = re.search(r"\{.*\}", out, re.S)
            if rc == 0 and m:
                try:
                    secret = json.loads(m.group(0)).get("secret")
                except ValueError:
                    secret = None
            if not secret:
                raise RuntimeError(f"`custos keys create` failed (exit {rc}): {out[-400:]}")
            t.headers = [f"Authorization: Bearer {secret}"]
            t.notes.append("API key auth on")
        else:
            t.notes.append("no `custos keys` yet: requests carry no API key")
        t.log_path = os.path.join(self.tmp, f"{t.name}.log")
        logf = open(t.log_path, "w")
        ready = threading.Event()
        found: dict = {}
        t0 = time.monotonic()
        t.proc = spawn([self.custos_bin, "serve", "--config", cfg, "--data-dir", data],
                       stdout=subprocess.PIPE, stderr=logf, env=env, text=True, bufsize=1)
        t.pid = t.proc.pid

        def pump():
            # Keep reading stdout after the ready line so the pipe never fills.
            for line in t.proc.stdout:
                logf.write(line)
                logf.flush()
                if not ready.is_set() and line.startswith("custos ready"):
                    found["t"] = time.monotonic()
                    found["line"] = line.strip()
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while not ready.wait(0.02):
            if t.proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with status {t.proc.returncode}" if t.proc.poll() is not None else "no ready line in 60s"
                raise RuntimeError(f"custos serve {why}: {tail(t.log_path)}")
        t.ready_s = found["t"] - t0
        m = re.search(r"gateway=(\S+)", found["line"])
        if not m:
            raise RuntimeError(f"unparseable ready line: {found['line']}")
        base = m.group(1).rstrip("/")
        ma = re.search(r"admin=(\S+)", found["line"])
        t.admin_url = ma.group(1).rstrip("/") if ma else ""
        t.data_dir = data
        t.url_json = base + "/v1/chat/completions"
        t.url_stream = t.url_json
        t.wait_first_200(t0, 30)
        ledger_on = (os.path.isdir(os.path.join(data, "ledger")) or "ledger" in found["line"]
                     or feats["ledger_in_default_config"])
        feats["ledger"] = feats["ledger"] or ledger_on
        if ledger_on:
            t.notes.append(f"ledger on, CUSTOS_LEDGER_DURABILITY={durability}")
        else:
            t.notes.append("ledger not yet enabled: this run is the same binary as the other Custos target")

    def _litellm(self, t: Target) -> None:
        if not self.args.no_install:
            rc, out = cmd_output([os.path.join(HERE, "install.sh"), "litellm"], timeout=1800)
            if rc != 0:
                raise RuntimeError(f"SKIPPED: install failed: {out[-400:]}")
        venv = os.path.join(BENCH_CACHE, f"litellm-{LITELLM_VERSION}")
        exe = os.path.join(venv, "bin", "litellm")
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"SKIPPED: LiteLLM not installed at {venv}")
        _, v = cmd_output([os.path.join(venv, "bin", "python"), "-c",
                           "import importlib.metadata as m; print(m.version('litellm'))"])
        t.version = v.strip().splitlines()[-1] if v.strip() else LITELLM_VERSION
        port = free_port()
        cfg = os.path.join(self.tmp, "litellm.yaml")
        with open(cfg, "w") as f:
            f.write(
                "model_list:\n"
                "  - model_name: bench\n"
                "    litellm_params:\n"
                "      model: openai/bench\n"
                f"      api_base: {self.upstream(False)}\n"
                "      api_key: sk-bench\n"
                "  - model_name: bench-stream\n"
                "    litellm_params:\n"
                "      model: openai/bench\n"
                f"      api_base: {self.upstream(True)}\n"
                "      api_key: sk-bench\n"
                "litellm_settings:\n"
                "  telemetry: false\n"
                "  set_verbose: false\n"
            )
        # Custos runs at log level warn with no access log; LiteLLM gets the same:
        # uvicorn's per-request access line is switched off.
        log_cfg = os.path.join(self.tmp, "litellm-logging.json")
        with open(log_cfg, "w") as f:
            json.dump({
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
                "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                        "stream": "ext://sys.stderr"}},
                "loggers": {
                    "uvicorn": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
                    "uvicorn.error": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
                    "uvicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
                },
            }, f)
        env = dict(os.environ)
        env.update({
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "NO_DOCS": "True",
        })
        t.log_path = os.path.join(self.tmp, "litellm.log")
        logf = open(t.log_path, "w")
        t0 = time.monotonic()
        t.proc = spawn([exe, "--config", cfg, "--host", "127.0.0.1", "--port", str(port),
                        "--num_workers", "1", "--telemetry", "False", "--log_config", log_cfg],
                       stdout=logf, stderr=logf, env=env)
        t.pid = t.proc.pid
        t.url_json = f"http://127.0.0.1:{port}/v1/chat/completions"
        t.url_stream = t.url_json
        t.notes.append("1 uvicorn worker (its default), access log off")
        t.wait_first_200(t0, 180)

    def _portkey(self, t: Target) -> None:
        if not self.args.no_install:
            rc, out = cmd_output([os.path.join(HERE, "install.sh"), "portkey"], timeout=900)
            if rc != 0:
                raise RuntimeError(f"SKIPPED: install failed: {out[-400:]}")
        pkg = os.path.join(BENCH_CACHE, f"portkey-{PORTKEY_VERSION}", "node_modules", "@portkey-ai", "gateway")
        server = os.path.join(pkg, "build", "start-server.js")
        if not os.path.exists(server):
            raise RuntimeError(f"SKIPPED: Portkey gateway not installed at {pkg}")
        with open(os.path.join(pkg, "package.json")) as f:
            t.version = json.load(f).get("version", "")
        node_v = cmd_output(["node", "--version"])[1]
        t.version += f" (node {node_v})"
        port = free_port()
        env = dict(os.environ)
        env["NODE_ENV"] = "production"
        t.log_path = os.path.join(self.tmp, "portkey.log")
        logf = open(t.log_path, "w")
        t0 = time.monotonic()
        t.proc = spawn(["node", server, f"--port={port}", "--headless"], stdout=logf, stderr=logf, env=env)
        t.pid = t.proc.pid
        t.url_json = f"http://127.0.0.1:{port}/v1/chat/completions"
        t.url_stream = t.url_json
        # Portkey routes by headers: the custom host is the mock, the JSON or the
        # SSE one.
        t.headers = ["x-portkey-provider: openai", f"x-portkey-custom-host: {self.upstream(False)}",
                     "Authorization: Bearer sk-bench"]
        t.stream_headers = ["x-portkey-provider: openai", f"x-portkey-custom-host: {self.upstream(True)}",
                            "Authorization: Bearer sk-bench"]
        t.notes.append("one node process (its default)")
        t.wait_first_200(t0, 60)


def ledger_metrics(admin_url: str) -> dict | None:
    """The ledger's own view from Custos' /metrics: records, fsyncs and their
    latency (mean, and the p50 and p99 bucket bounds), records per fsync."""
    if not admin_url:
        return None
    try:
        with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    vals: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        m = re.match(r'(custos_ledger_\w+?)(\{le="([^"]+)"\})?\s+([0-9.eE+-]+)$', line)
        if not m:
            continue
        if m.group(3) is not None and m.group(1) == "custos_ledger_fsync_seconds_bucket":
            le = float("inf") if m.group(3) == "+Inf" else float(m.group(3))
            buckets.append((le, float(m.group(4))))
        else:
            vals[m.group(1)] = float(m.group(4))
    n = vals.get("custos_ledger_fsync_seconds_count")
    if not n:
        return {"records": vals.get("custos_ledger_records")} if "custos_ledger_records" in vals else None
    def quantile_le(q: float) -> float | None:
        le = next((le for le, c in sorted(buckets) if c >= n * q), None)
        return le * 1e6 if le not in (None, float("inf")) else None
    records = vals.get("custos_ledger_records", 0)
    return {
        "records": records,
        "fsyncs": n,
        "fsync_mean_us": vals.get("custos_ledger_fsync_seconds_sum", 0) / n * 1e6,
        "fsync_p50_le_us": quantile_le(0.5),
        "fsync_p99_le_us": quantile_le(0.99),
        "records_per_fsync": records / n,
    }


def cmd_output_env(cmd: list[str], env: dict, timeout: float = 60) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return r.returncode, (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)


# ---------------------------------------------------------------------------
# Scenarios

def stream_headers(t: Target) -> list[str]:
    return t.stream_headers or t.headers


def run_wrk(t: Target, conns: int, duration: float) -> dict:
    env = dict(os.environ)
    env["BENCH_BODY_FILE"] = os.path.join(FIXTURES, "request.json")
    env["BENCH_HEADERS"] = "\n".join(t.headers)
    env["BENCH_EXPECT"] = JSON_MARKER
    secs = max(1, round(duration))
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "10s",
           "-s", os.path.join(HERE, "wrk.lua"), t.url_json]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=secs + 60)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            out = json.loads(line[len("BENCH_JSON "):])
            out["tool"] = f"wrk -t1 -c{conns} -d{secs}s"
            return out
    raise RuntimeError(f"wrk exit {r.returncode}: {(r.stdout + r.stderr)[-400:]}")


def run_loadgen(run: Run, t: Target, extra: list[str], stream: bool, duration: float) -> dict:
    if stream:
        url, body, headers = t.url_stream, "request-stream.json", stream_headers(t)
        expects = STREAM_MARKERS
    else:
        url, body, headers = t.url_json, "request.json", t.headers
        expects = [JSON_MARKER]
    cmd = [run.loadgen, "--url", url, "--body-file", os.path.join(FIXTURES, body),
           "--duration", str(duration), "--timeout", "10", "--drain", "10"]
    for h in headers:
        cmd += ["--header", h]
    for e in expects:
        cmd += ["--expect", e]
    if stream:
        cmd.append("--stream")
    cmd += extra
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 90)
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"loadgen exit {r.returncode}: {(r.stdout + r.stderr)[-400:]}")
    if "fatal" in out:
        raise RuntimeError(f"loadgen: {out['fatal']}")
    out["tool"] = "loadgen " + " ".join(extra) + (" --stream" if stream else "")
    return out


def answered(res: dict) -> int:
    """Requests that got a whole answer, good or bad."""
    k = res.get("error_kinds", {})
    status = k.get("status", 0)
    if isinstance(status, dict):  # loadgen counts per status code
        status = sum(status.values())
    return res.get("ok", 0) + status + k.get("body", 0)


def run_scenario(run: Run, t: Target, scenario: str, duration: float) -> dict:
    a = run.args
    if scenario == "c1":
        return run_wrk(t, 1, duration)
    if scenario == "c64":
        return run_wrk(t, 64, duration)
    if scenario == "stream1":
        return run_loadgen(run, t, ["--mode", "closed", "--connections", "1"], True, duration)
    if scenario == "stream":
        return run_loadgen(run, t, ["--mode", "closed", "--connections", str(a.stream_connections)],
                           True, duration)
    if scenario == "rate":
        return run_loadgen(run, t, ["--mode", "open", "--rate", str(a.rate),
                                    "--connections", str(a.rate_connections)], False, duration)
    raise RuntimeError(f"unknown scenario {scenario}")


def measure(run: Run, t: Target, scenario: str, duration: float, profile: bool) -> dict:
    """Runs one scenario with CPU accounting of the target and of the mock."""
    cpu0 = cpu_seconds(t.pid)
    up0 = cpu_seconds(run.nginx.pid)
    busy0 = machine_busy_seconds()
    gen0 = children_cpu_seconds()
    w0 = time.monotonic()
    perf = None
    if profile:
        perf_data = os.path.join(run.args.out_dir, f"perf-{t.name}-{scenario}.data")
        perf = spawn(["perf", "record", "-F", "999", "-o", perf_data, "-p", str(t.pid),
                      "--", "sleep", str(max(1.0, duration - 0.5))],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        res = run_scenario(run, t, scenario, duration)
    finally:
        if perf is not None:
            try:
                perf.wait(duration + 30)
            except subprocess.TimeoutExpired:
                pass
            stop(perf)
            top = os.path.join(run.args.out_dir, f"perf-{t.name}-{scenario}.txt")
            with open(top, "w") as f:
                _, flat = cmd_output(["perf", "report", "-i", perf_data, "--no-children", "-F",
                                      "overhead,dso,sym", "--stdio"], timeout=300)
                grouped = subprocess.run([sys.executable, os.path.join(HERE, "perf_summary.py")], input=flat,
                                         capture_output=True, text=True).stdout
                f.write(f"# {t.name}, scenario {scenario}: samples grouped by cost (bench/perf_summary.py)\n")
                f.write(grouped + "\n")
                for fields, limit in (("overhead,dso", "0.1"), ("overhead,dso,sym", "0.5")):
                    _, text = cmd_output(["perf", "report", "-i", perf_data, "--no-children", "-F", fields,
                                          "--stdio", "--percent-limit", limit], timeout=300)
                    f.write("\n".join(ln.rstrip() for ln in text.splitlines()
                                       if ln.strip() and not ln.startswith("#")) + "\n\n")
            log(f"{t.name}: perf profile of {scenario}: {top}")
    wall = time.monotonic() - w0
    busy = machine_busy_seconds() - busy0
    gen = children_cpu_seconds() - gen0
    if t.proc is not None and t.proc.poll() is not None:
        raise RuntimeError(f"target exited during the run (status {t.proc.returncode}): {tail(t.log_path)}")
    # Per answered request: requests never sent (open loop past its drain) or
    # cut off by a timeout would make a saturated target look cheap.
    n = max(1, answered(res))
    cpu = cpu_seconds(t.pid) - cpu0
    up = cpu_seconds(run.nginx.pid) - up0
    res["answered"] = answered(res)
    res["target_cpu_s"] = round(cpu, 3)
    res["target_cpu_us_per_req"] = round(cpu * 1e6 / n, 1)
    res["target_cpu_cores"] = round(cpu / wall, 2)
    res["upstream_cpu_us_per_req"] = round(up * 1e6 / n, 1)
    res["loadgen_cpu_cores"] = round(gen / wall, 2)
    # Everything else the machine did meanwhile: other people's builds, mostly.
    ours = cpu + gen + (up if t.pid != run.nginx.pid else 0)
    res["other_cpu_cores"] = round(max(0.0, busy - ours) / wall, 2)
    if res.get("ok", 0) == 0:
        raise RuntimeError(f"no successful answer in {res.get('requests', 0)} requests "
                           f"({json.dumps(res.get('error_kinds'))}"
                           f"{'; ' + res['first_io_error'] if res.get('first_io_error') else ''}); "
                           + t.probe(scenario.startswith("stream")))
    return res


# ---------------------------------------------------------------------------
# Report

def scenario_label(s: str, args) -> str:
    return {
        "c1": "c1 (1 conn)",
        "c64": "c64 (64 conns)",
        "stream1": "stream TTFT (1 conn)",
        "stream1_total": "stream total (1 conn)",
        "stream": f"stream TTFT ({args.stream_connections} conns)",
        "stream_total": f"stream total ({args.stream_connections} conns)",
        "rate": f"rate {args.rate:g}/s (open loop)",
    }[s]


def rows_for(results: dict, args) -> list[tuple[str, str, dict | None, str | None]]:
    """(target, row key, metrics, failure) rows; stream yields two rows."""
    rows = []
    for tname, tres in results["targets"].items():
        for s in args.scenarios:
            r = tres["scenarios"].get(s, {})
            if "failed" in r:
                rows.append((tname, s, None, r["failed"]))
                continue
            if s in ("stream", "stream1"):
                rows.append((tname, s, dict(r, lat=r["ttft_us"]), None))
                rows.append((tname, s + "_total", dict(r, lat=r["latency_us"]), None))
            else:
                rows.append((tname, s, dict(r, lat=r["latency_us"]), None))
    return rows


def report(results: dict, args) -> str:
    L = []
    m = results["machine"]
    L.append(f"# Custos load benchmark — {results['started']}")
    L.append("")
    L.append(f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, {m['memory']} RAM; "
             f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
             + (f", at end {', '.join(f'{x:.2f}' for x in m['loadavg_at_end'])}" if 'loadavg_at_end' in m else ""))
    fd = results.get("fdatasync")
    if fd:
        L.append(f"- fdatasync (4 KiB append + fdatasync, {fd['samples']} samples on {fd['filesystem']}): "
                 f"p50 {fmt_us(fd['p50_us'])}, p99 {fmt_us(fd['p99_us'])} — the floor of a ledger in `sync` mode")
    L.append(f"- {args.duration:g} s per scenario; fixed rate {args.rate:g} req/s over {args.rate_connections} "
             f"connections; stream with {args.stream_connections} connections; mock upstream: nginx "
             f"{results['upstream']['version']} (1 worker)")
    vers = "; ".join(f"{k}: {v['version']}" for k, v in results["targets"].items() if v.get("version"))
    if vers:
        L.append(f"- versions: {vers}")
    L.append("")
    L.append("| target | scenario | RPS | p50 | p90 | p99 | p99.9 | p50 vs direct | p99 vs direct | errors | CPU/req |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    direct = {}
    for tname, key, r, fail in rows_for(results, args):
        if tname == "direct" and r:
            direct[key] = r
    notes: list[str] = []
    for tname, key, r, fail in rows_for(results, args):
        label = scenario_label(key, args)
        if fail:
            word = "SKIPPED" if fail.startswith("SKIPPED") else "FAILED"
            if "target did not start" in fail:
                L.append(f"| {tname} | {label} | {word} | | | | | | | | |")
            else:
                notes.append(f"{tname} {key}: {fail}")
                L.append(f"| {tname} | {label} | {word} [{len(notes)}] | | | | | | | | |")
            continue
        lat = r["lat"]
        d = direct.get(key)
        dp50 = lat["p50"] - d["lat"]["p50"] if d and tname != "direct" else None
        dp99 = lat["p99"] - d["lat"]["p99"] if d and tname != "direct" else None
        rps = f"{r['rps']:,.0f}"
        if key == "rate" and r["rps"] < 0.95 * args.rate:
            rps += " (saturated)"
        err = r["errors"]
        errs = f"{err}" if not err else f"**{err}** ({err / max(1, r['requests']):.2%})"
        L.append(f"| {tname} | {label} | {rps} | {fmt_us(lat['p50'])} | {fmt_us(lat['p90'])} | "
                 f"{fmt_us(lat['p99'])} | {fmt_us(lat['p999'])} | {fmt_delta(dp50)} | {fmt_delta(dp99)} | "
                 f"{errs} | {fmt_us(r['target_cpu_us_per_req'])} |")
    for i, n in enumerate(notes, 1):
        L.append("")
        L.append(f"[{i}] {n}")
    L.append("")
    L.append("| target | startup (spawn → ready line) | startup (spawn → first 200) | peak RSS "
             "| other processes' CPU during its runs | notes |")
    L.append("| --- | ---: | ---: | ---: | ---: | --- |")
    for tname, tres in results["targets"].items():
        if tres.get("failed"):
            status = "SKIPPED" if tres["failed"].startswith("SKIPPED") else "FAILED"
            reason = tres["failed"].removeprefix("SKIPPED: ")[:600].replace("|", "/").replace("\n", " ")
            L.append(f"| {tname} | {status} | | | | {reason} |")
            continue
        rss = tres.get("peak_rss_kib")
        rss_s = f"{rss / 1024:.1f} MiB" if rss else "—"
        other = [x["other_cpu_cores"] for x in tres["scenarios"].values() if "other_cpu_cores" in x]
        other_s = f"{sum(other) / len(other):.2f} cores" if other else "—"
        L.append(f"| {tname} | {fmt_s(tres.get('ready_s'))} | {fmt_s(tres.get('first_200_s'))} | "
                 f"{rss_s} | {other_s} | {'; '.join(tres.get('notes', []))} |")
    ratios = ratio_lines(results, args)
    if ratios:
        L.append("")
        L.append("Ratios (same run):")
        L.append("")
        L.extend(f"- {x}" for x in ratios)
    L.append("")
    L.append("CPU/req is the target's own user+system CPU (its whole process tree, from /proc) "
             "divided by the requests it answered in that scenario; for `direct` it is nginx's. Latencies of c1/c64 "
             "are wrk's (from the actual send); `rate` latencies are from the intended send time. "
             "Errors are non-200 answers, bodies without the expected marker, and socket errors. "
             "\"Other processes' CPU\" is the machine's busy time minus the target, the mock and the "
             "load generator: how much of the 2 cores something else (builds) took meanwhile.")
    return "\n".join(L) + "\n"


def fmt_s(v) -> str:
    return "—" if v is None else (f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s")


def _ok(results, tname, s):
    r = results["targets"].get(tname, {}).get("scenarios", {}).get(s)
    return r if r and "failed" not in r else None


def ratio_lines(results: dict, args) -> list[str]:
    out = []
    names = list(results["targets"])
    custos = [n for n in names if n.startswith("custos-")]
    peers = [n for n in names if n in PEERS]
    c64d = _ok(results, "direct", "c64")
    for n in names:
        if n == "direct":
            continue
        r = _ok(results, n, "c64")
        if r and c64d:
            out.append(f"{n}: c64 throughput {r['rps'] / c64d['rps']:.2f}× direct "
                       f"({r['rps']:,.0f} vs {c64d['rps']:,.0f} RPS)")
    for c in custos:
        for p in peers:
            parts = []
            a, b = _ok(results, c, "c64"), _ok(results, p, "c64")
            if a and b:
                parts.append(f"c64 throughput {a['rps'] / b['rps']:.1f}×")
            a, b = _ok(results, c, "c1"), _ok(results, p, "c1")
            if a and b:
                parts.append(f"c1 p50 {b['latency_us']['p50'] / max(1, a['latency_us']['p50']):.1f}× lower")
            a, b = _ok(results, c, "c64"), _ok(results, p, "c64")
            if a and b and a["target_cpu_us_per_req"] > 0:
                parts.append(f"CPU/req {b['target_cpu_us_per_req'] / a['target_cpu_us_per_req']:.1f}× lower")
            a, b = _ok(results, c, "rate"), _ok(results, p, "rate")
            if a and b:
                parts.append(f"rate p99 {fmt_us(a['latency_us']['p99'])} vs {fmt_us(b['latency_us']['p99'])}")
            if parts:
                out.append(f"{c} vs {p}: " + ", ".join(parts))
            elif results["targets"][p].get("failed"):
                out.append(f"{c} vs {p}: no comparison, {p} did not run")
    # A bare reverse proxy's own overhead is the part of any gateway's that
    # comes from the extra hop alone; what a gateway adds beyond it is its
    # own work (parsing, keys, routing, the audit record).
    hop = "nginx-proxy"
    for s, what, key in (("c1", "c1 p50", "latency_us"), ("stream1", "stream TTFT p50", "ttft_us")):
        d, h = _ok(results, "direct", s), _ok(results, hop, s)
        if not (d and h):
            continue
        hop_us = h[key]["p50"] - d[key]["p50"]
        for c in custos:
            a = _ok(results, c, s)
            if a:
                own = a[key]["p50"] - d[key]["p50"]
                out.append(f"{c}: {what} overhead {fmt_delta(own)}, of which {fmt_delta(hop_us)} is what "
                           f"{hop} alone adds (one more HTTP hop); beyond that {fmt_delta(own - hop_us)}")
    if "custos-sync" in names and "custos-batched" in names:
        a, b = _ok(results, "custos-sync", "c64"), _ok(results, "custos-batched", "c64")
        if a and b:
            out.append(f"custos-sync vs custos-batched: c64 throughput {a['rps'] / b['rps']:.2f}×"
                       + (" (same binary: ledger not yet enabled, so this is run-to-run noise)"
                          if not results.get("custos", {}).get("ledger") else ""))
    return out


# ---------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description="The Custos load benchmark; see docs/benchmarks.md.")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 2 s per scenario, direct and Custos only (unless --targets)")
    p.add_argument("--duration", type=float, help="seconds per scenario (default 20, or 2 with --quick)")
    p.add_argument("--targets", help=f"comma list from {','.join(ALL_TARGETS)} (default all)")
    p.add_argument("--scenarios", help=f"comma list from {','.join(ALL_SCENARIOS)} (default all)")
    p.add_argument("--rate", type=float, default=2000, help="requests/s of the fixed-rate scenario (default 2000)")
    p.add_argument("--rate-connections", type=int, default=64, help="connections of the fixed-rate scenario")
    p.add_argument("--stream-connections", type=int, default=8, help="connections of the stream scenario")
    p.add_argument("--warmup", type=float, help="seconds of unmeasured load before each target (default 2, quick 0.5)")
    p.add_argument("--profile", action="store_true",
                   help="perf record each Custos target during each scenario (needs perf); data under bench/out/")
    p.add_argument("--no-install", action="store_true", help="never run bench/install.sh for peers")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    a = p.parse_args(argv)
    a.duration = a.duration or (2.0 if a.quick else 20.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 2.0)
    default_targets = "direct,custos-sync,custos-batched" if a.quick else ",".join(ALL_TARGETS)
    a.targets = [x.strip() for x in (a.targets or default_targets).split(",") if x.strip()]
    a.scenarios = [x.strip() for x in (a.scenarios or ",".join(ALL_SCENARIOS)).split(",") if x.strip()]
    for x in a.targets:
        if x not in ALL_TARGETS:
            p.error(f"unknown target {x!r}; choose from {','.join(ALL_TARGETS)}")
    for x in a.scenarios:
        if x not in ALL_SCENARIOS:
            p.error(f"unknown scenario {x!r}; choose from {','.join(ALL_SCENARIOS)}")
    return a


def main(argv) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.makedirs(args.out_dir, exist_ok=True)
    run = Run(args)
    if not run.loadgen or not os.access(run.loadgen, os.X_OK):
        log("BENCH_LOADGEN is not set to a built loadgen: use bench/run, which builds it")
        return 2
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict = {
        "started": started,
        "args": {k: v for k, v in vars(args).items()},
        "machine": machine_info(),
        "targets": {},
    }
    status = 0
    try:
        results["fdatasync"] = fdatasync_latency(run.tmp, 50 if args.quick else 300)
        log(f"fdatasync p50 {fmt_us(results['fdatasync']['p50_us'])} on {results['fdatasync']['filesystem']}")
        run.start_nginx()
        results["upstream"] = {"version": cmd_output(["nginx", "-v"])[1].replace("nginx version: nginx/", ""),
                               "port": run.nginx_port}
        for name in args.targets:
            log(f"starting {name}")
            t = run.start(name)
            tres: dict = {"scenarios": {}}
            results["targets"][name] = tres
            if name.startswith("custos-") and run.custos_features:
                results["custos"] = run.custos_features
            if t.failed:
                log(f"{name}: FAILED: {t.failed}")
                tres.update(failed=t.failed, version=t.version, notes=t.notes)
                for s in args.scenarios:
                    tres["scenarios"][s] = {"failed": ("SKIPPED" if t.failed.startswith("SKIPPED") else "FAILED")
                                            + " (target did not start)"}
                if name == "direct" or name.startswith("custos-"):
                    status = 1
                continue
            if args.warmup > 0:
                try:
                    run_loadgen(run, t, ["--mode", "closed", "--connections", "8"], False, args.warmup)
                except Exception as e:  # the check above passed; report, go on
                    t.notes.append(f"warm-up failed: {e}")
            for s in args.scenarios:
                log(f"{name}: {s} for {args.duration:g} s")
                try:
                    prof = args.profile and name.startswith("custos-")
                    r = measure(run, t, s, args.duration, prof)
                    tres["scenarios"][s] = r
                    if (name == "direct" or name.startswith("custos-")) and r["errors"] > 0.01 * r["requests"]:
                        status = 1
                except Exception as e:
                    log(f"{name}: {s}: FAILED: {e}")
                    tres["scenarios"][s] = {"failed": f"FAILED: {e}"}
                    if name == "direct" or name.startswith("custos-"):
                        status = 1
                    if t.proc is not None and t.proc.poll() is not None:
                        break
            if name.startswith("custos-"):
                lm = ledger_metrics(t.admin_url)
                tres["ledger_metrics"] = lm
                if lm and lm.get("fsyncs"):
                    bounds = "".join(f", {q} ≤ {fmt_us(lm[key])}"
                                     for q, key in (("p50", "fsync_p50_le_us"), ("p99", "fsync_p99_le_us"))
                                     if lm.get(key))
                    t.notes.append(f"ledger: {lm['records']:,.0f} records, {lm['fsyncs']:,.0f} fsyncs "
                                   f"({lm['records_per_fsync']:.1f} records/fsync), fsync mean "
                                   f"{fmt_us(lm['fsync_mean_us'])}{bounds}")
                try:
                    fd = fdatasync_latency(t.data_dir, 50)
                    tres["fdatasync_after"] = fd
                    t.notes.append(f"disk probe after its runs: fdatasync p50 {fmt_us(fd['p50_us'])}")
                except OSError:
                    pass
            tres.update(version=t.version, notes=t.notes, ready_s=t.ready_s, first_200_s=t.first_200_s,
                        peak_rss_kib=peak_rss_kib(t.pid) if t.pid else None, log=t.log_path)
            if t.proc is not None:
                stop(t.proc)
        for s in args.scenarios:
            for tres in results["targets"].values():
                tres["scenarios"].setdefault(s, {"failed": "FAILED: did not run (target exited)"})
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(run.tmp, ignore_errors=True)
        else:
            log(f"kept {run.tmp}")
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    md = report(results, args)
    results["exit_status"] = status
    with open(os.path.join(args.out_dir, f"{stamp}.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out_dir, f"{stamp}.md"), "w") as f:
        f.write(md)
    # The charts, from the same figures (after the reports, which a chart
    # bug must never cost).
    import chart
    with open(os.path.join(args.out_dir, f"{stamp}.svg"), "w") as f:
        f.write(chart.render(json.loads(json.dumps(results))))
    print(md)
    log(f"raw results: {os.path.join(args.out_dir, stamp + '.json')} (charts: {stamp}.svg)")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
