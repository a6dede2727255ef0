"""The independent Python verifier (tools/verify_ledger.py), written from
docs/audit-log-format.md alone, checks a ledger the real binary wrote, and
rejects it once a single byte is changed."""

import os
import shutil
import subprocess
import sys

import openai

from conftest import BIN, create_key, start_custos, stop_custos

VERIFIER = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "verify_ledger.py")


def run_verifier(ledger_dir, *args):
    return subprocess.run(
        [sys.executable, VERIFIER, ledger_dir, *args], capture_output=True, text=True
    )


def test_python_verifier_accepts_the_binarys_ledger_and_catches_tampering(tmp_path):
    custos = start_custos()
    try:
        key = create_key(custos, "--name", "py-verifier", "--models", "mock-*")["secret"]
        client = openai.OpenAI(base_url=custos.base_url, api_key=key, max_retries=0)
        for i in range(5):
            client.chat.completions.create(
                model="mock-chat",
                messages=[{"role": "user", "content": f"hello {i}"}],
                extra_headers={"X-Request-Id": f"py-verify-{i}"},
            )
        list(
            client.chat.completions.create(
                model="mock-chat", messages=[{"role": "user", "content": "stream"}], stream=True
            )
        )
        pubkey = subprocess.run(
            [BIN, "audit", "pubkey", "--data-dir", custos.data_dir],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # Stop the server first, so the copy is complete and checkpointed.
        custos.proc.terminate()
        custos.proc.wait(timeout=20)
        ledger = tmp_path / "ledger"
        shutil.copytree(os.path.join(custos.data_dir, "ledger"), ledger)
    finally:
        stop_custos(custos)

    ok = run_verifier(str(ledger), "--key", pubkey)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    segment = sorted((ledger / "segments").iterdir())[0]
    data = segment.read_bytes()
    target = data.index(b'"py-verify-2"')
    tampered = data[:target] + b'"py-verify-X"' + data[target + len(b'"py-verify-2"'):]
    segment.write_bytes(tampered)
    bad = run_verifier(str(ledger), "--key", pubkey)
    # The edited record is still canonical JSON, so what breaks is the tree:
    # the signed checkpoint no longer matches the records.
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "TAMPERED" in bad.stdout, bad.stdout + bad.stderr
