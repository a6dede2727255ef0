#!/usr/bin/env python3
"""Checks manifest.sig of a Custos evidence pack (run inside the pack).

Usage: verify_evidence_sig.py VKEY_FILE  (a vkey, or `<first size> <vkey>` lines; the last key is used)
See docs/evidence-pack.md.
"""
import base64, hashlib, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

vkey = open(sys.argv[1]).read().split()[-1]          # <name>+<hex key ID>+<base64(0x01 || key)>
name, key_id, b64 = vkey.rsplit("+", 2)
pub = base64.b64decode(b64)[1:]
note = open("manifest.sig", "rb").read()
body, sigs = note.split(b"\n\n", 1)
body += b"\n"
for line in sigs.decode().splitlines():
    _dash, signer, sig = line.split(" ")
    raw = base64.b64decode(sig)
    if signer == name and raw[:4] == bytes.fromhex(key_id):
        Ed25519PublicKey.from_public_bytes(pub).verify(raw[4:], body)  # raises if bad
        digest = hashlib.sha256(open("manifest.json", "rb").read()).hexdigest()
        assert body.decode().splitlines()[1] == digest, "signature is for another manifest"
        print("manifest.json signed by", name)
        break
else:
    sys.exit("no signature by this key")
