"""End to end in a real browser: first admin from the setup link printed by
a fresh server, TOTP enrolment with a code computed from the otpauth URI
(independently of the server's code), a key created and its secret shown
once, the key revoked, sign-out; then the ledger holds the events with
mfa=true. Screenshots go to $CUSTOS_SCREENSHOT_DIR (default: a temp dir)."""

import base64
import glob
import hashlib
import hmac
import json
import os
import re
import struct
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from custos_process import start_custos, stop_custos

CHROMIUM = os.environ.get("CUSTOS_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("CUSTOS_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="custos-shots-")
PASSWORD = "tidy-orbit-lantern-4812"


def totp(secret_b32, at=None, step=30):
    """RFC 6238 (SHA-1, 6 digits), written here from the RFC."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    counter = int((at if at is not None else time.time()) // step)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def chat(gateway, secret):
    req = urllib.request.Request(
        f"{gateway}/v1/chat/completions",
        data=json.dumps({"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def read_setup_link(proc):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+/console/setup\?token=\S+)", line)
        if m:
            return m.group(1)
        if not line:
            break
    raise AssertionError("no setup link on stdout")


def ledger_records(data_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "ledger", "segments", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out


@pytest.fixture()
def custos():
    c = start_custos()
    yield c
    stop_custos(c)


def test_first_login_enrol_create_revoke_logout(custos):
    from playwright.sync_api import sync_playwright

    link = read_setup_link(custos.proc)
    assert link.startswith(custos.admin + "/console/setup?token=")
    shots = []

    def shot(page, name):
        path = os.path.join(SHOTS, f"{len(shots):02d}-{name}.png")
        page.screenshot(path=path, full_page=True)
        shots.append(path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        console_errors = []
        # Re-rendered forms after a refused code answer 401 on purpose.
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" and "status of 401" not in m.text else None)
        page.on("dialog", lambda d: d.accept())

        # 1. The setup link: choose a name and password.
        page.goto(link)
        shot(page, "setup")
        page.fill("#username", "alice")
        page.fill("#password", PASSWORD)
        page.fill("#confirm", PASSWORD)
        page.click("button[type=submit]")

        # 2. Enrolment: QR code and otpauth URI; confirm with a computed code.
        page.wait_for_selector("#otpauth-uri")
        shot(page, "enrol")
        uri = page.inner_text("#otpauth-uri")
        assert uri.startswith("otpauth://totp/Custos:alice?")
        secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
        assert page.inner_text("#totp-secret").strip() == secret
        assert page.locator("svg").count() >= 1
        # A wrong code is refused and the page stays.
        page.fill("#code", "000000" if totp(secret) != "000000" else "111111")
        page.click("button[type=submit]")
        assert "not valid" in page.inner_text(".flash.error")
        page.fill("#code", totp(secret))
        page.click("button[type=submit]")

        # 3. Ten recovery codes, shown once.
        page.wait_for_selector("#recovery-codes")
        codes = page.locator("#recovery-codes .code").all_inner_texts()
        assert len(codes) == 10 and len(set(codes)) == 10
        shot(page, "recovery-codes")
        cookies = {c["name"]: c for c in page.context.cookies()}
        session = cookies["custos_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        page.click("#continue")
        page.wait_for_selector("text=Dashboard")
        shot(page, "dashboard")

        # 4. A key, with its secret shown once.
        page.goto(custos.admin + "/console/keys/new")
        page.fill("#name", "ranking-service")
        page.fill("#models", "mock-chat")
        page.fill("#description", "Created by the browser test")
        shot(page, "new-key")
        page.click("#create-key")
        page.wait_for_selector("#key-secret")
        key_secret = page.inner_text("#key-secret").strip()
        assert key_secret.startswith("cst_live_")
        shot(page, "key-secret")
        assert chat(custos.gateway, key_secret) == 200

        # The detail page never shows it again.
        page.click("text=Go to the key")
        page.wait_for_selector("#history")
        assert key_secret not in page.content()
        assert "key.created" in page.inner_text("#history")
        shot(page, "key-detail")

        # 5. Revoke, with confirmation.
        page.fill("#reason", "browser test")
        page.check("#confirm-revoke")
        page.click("#revoke-key")
        page.wait_for_selector("text=revoked")
        assert "key.revoked" in page.inner_text("#history")
        shot(page, "key-revoked")
        assert chat(custos.gateway, key_secret) == 401

        # 6. The key list and the audit browser.
        page.goto(custos.admin + "/console/keys")
        shot(page, "keys")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            page.goto(custos.admin + "/console/audit?q=key.revoked")
            if page.locator("#audit-table tbody tr").count() > 0:
                break
            time.sleep(0.5)
        assert page.locator("#audit-table tbody tr").count() > 0
        page.goto(custos.admin + "/console/audit")
        shot(page, "audit")
        page.click("#verify-now")
        page.wait_for_selector("#verify-result")
        assert "intact" in page.inner_text("#verify-result")
        shot(page, "verify")
        page.goto(custos.admin + "/console/users")
        shot(page, "users")
        page.goto(custos.admin + "/console/account")
        shot(page, "account")

        # 7. Sign out: the session is gone server-side.
        page.click("text=Sign out")
        page.wait_for_selector("text=You are signed out")
        page.context.add_cookies([{"name": "custos_session", "value": session["value"], "url": custos.admin}])
        page.goto(custos.admin + "/console/keys")
        assert page.url.endswith("/console/login")
        assert console_errors == [], console_errors
        browser.close()

    # 8. The ledger holds the actions, attributed, with mfa=true, and no secret.
    deadline = time.monotonic() + 20
    wanted = {"key.created", "key.revoked", "user.mfa_enrolled", "login.succeeded", "session.logout", "user.created"}
    while time.monotonic() < deadline:
        records = ledger_records(custos.data_dir)
        events = {r.get("event") for r in records if r.get("type") == "admin"}
        if wanted <= events:
            break
        time.sleep(0.5)
    assert wanted <= events, events
    for r in records:
        if r.get("event") in ("key.created", "key.revoked"):
            assert r["actor"]["user"] == "alice"
            assert r["actor"]["mfa"] is True
            assert r["actor"]["via"] == "console"
    text = "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(custos.data_dir, "ledger", "segments", "*.jsonl")))
    assert key_secret not in text and PASSWORD not in text and secret not in text
    for c in codes:
        assert c not in text
    print("screenshots:", SHOTS)
