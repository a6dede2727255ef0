"""Starts the real `custos` binary on port 0 for the SDK tests."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

BIN = os.environ.get("CUSTOS_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "custos"))


class Custos:
    """A running `custos serve` with its listen addresses."""

    def __init__(self, proc, gateway, admin, data_dir):
        self.proc = proc
        self.gateway = gateway
        self.admin = admin
        self.data_dir = data_dir

    @property
    def base_url(self):
        return f"{self.gateway}/v1"


def start_custos(args=(), env=None):
    data_dir = tempfile.mkdtemp(prefix="custos-py-")
    full_env = dict(os.environ)
    full_env.update({"CUSTOS_LISTEN": "127.0.0.1:0", "CUSTOS_ADMIN_LISTEN": "127.0.0.1:0"})
    full_env.update(env or {})
    proc = subprocess.Popen(
        [BIN, "serve", "--data-dir", data_dir, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("custos ready") or not line:
            break
    match = re.search(r"gateway=(\S+) admin=(\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"custos did not become ready: {line!r}")
    return Custos(proc, match.group(1), match.group(2), data_dir)


def create_key(custos, *args):
    """Creates a key with the CLI and returns its JSON (with `secret`)."""
    out = subprocess.run(
        [BIN, "keys", "create", "--data-dir", custos.data_dir, "--json", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def cli(custos, *args):
    """Runs a `custos keys …` command on the server's data directory."""
    out = subprocess.run(
        [BIN, "keys", *args, "--data-dir", custos.data_dir, "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def stop_custos(custos):
    custos.proc.terminate()
    try:
        custos.proc.wait(timeout=20)
    finally:
        if custos.proc.poll() is None:
            custos.proc.kill()
        shutil.rmtree(custos.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def custos():
    c = start_custos()
    yield c
    stop_custos(c)


@pytest.fixture(scope="module")
def api_key(custos):
    """A key for the mock models, created with the CLI."""
    return create_key(custos, "--name", "sdk-tests", "--models", "mock-*")["secret"]
