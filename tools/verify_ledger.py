#!/usr/bin/env python3
"""Independent reference verifier for a Custos audit ledger directory.

Written from docs/audit-log-format.md alone, sharing no code with the Rust
writer or verifier. Needs Python 3.11 and the `cryptography` package (for
Ed25519); SHA-256 comes from hashlib.

    python3 tools/verify_ledger.py LEDGER_DIR [--key VKEY ...] [--trusted-checkpoint FILE]

Exit status: 0 intact, 1 tampered (the first problem is printed), 2 usage.

It checks canonical encoding and the common fields of every record, but not
every per-type field rule of docs/audit-log-format.md section 2; the Rust
verifier does.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
NAME_RE = re.compile(r"^[a-z0-9_.]{1,64}$")
NUM_RE = re.compile(r"^(0|[1-9][0-9]*)$")
TOLERANCE_US = 5_000_000
EM_DASH = "\u2014 "


class Tampered(Exception):
    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")


# --- RFC 6962 -------------------------------------------------------------

def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Tree:
    """Incremental tree: one subtree root per set bit of the size."""

    def __init__(self, size: int = 0, hashes: list[bytes] | None = None):
        self.size = size
        self.hashes = list(hashes or [])

    def append(self, leaf: bytes) -> None:
        acc, n = leaf, self.size
        while n & 1:
            acc = node_hash(self.hashes.pop(), acc)
            n >>= 1
        self.hashes.append(acc)
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return hashlib.sha256(b"").digest()
        acc = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            acc = node_hash(h, acc)
        return acc


# --- notes and keys -------------------------------------------------------

class Key:
    def __init__(self, vkey: str):
        name, key_id, data = vkey.split("+", 2)
        raw = base64.b64decode(data, validate=True)
        if len(raw) != 33 or raw[0] != 1:
            raise ValueError("not an ed25519 key")
        if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != key_id:
            raise ValueError("key id mismatch")
        self.vkey, self.name, self.key_id = vkey, name, bytes.fromhex(key_id)
        self.public = Ed25519PublicKey.from_public_bytes(raw[1:])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.vkey == self.vkey

    def __hash__(self) -> int:
        return hash(self.vkey)

    def signed(self, note: str) -> bool:
        """Whether the note carries a valid signature by this key."""
        split = note.rfind("\n\n")
        if split < 0:
            return False
        body, sigs = note[: split + 1], note[split + 2 :]
        for line in sigs.split("\n"):
            if not line.startswith(EM_DASH):
                continue
            name, _, b64 = line[len(EM_DASH) :].partition(" ")
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:
                continue
            if name != self.name or raw[:4] != self.key_id:
                continue
            try:
                self.public.verify(raw[4:], body.encode())
                return True
            except InvalidSignature:
                return False
        return False


def parse_checkpoint(note: str) -> tuple[str, int, bytes]:
    body = note[: note.rfind("\n\n") + 1]
    lines = body.split("\n")
    if len(lines) != 4 or lines[3] != "" or not NUM_RE.match(lines[1]):
        raise ValueError("malformed checkpoint body")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        raise ValueError("root is not 32 bytes")
    return lines[0], int(lines[1]), root


# --- records --------------------------------------------------------------

def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_float(text):
    raise ValueError(f"float {text}")


def decode(line: bytes) -> dict:
    if len(line) > 65536:
        raise ValueError("record too large")
    obj = json.loads(
        line.decode("utf-8"),
        object_pairs_hook=_no_duplicates,
        parse_float=_no_float,
        parse_constant=_no_float,
    )
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if canonical.encode("utf-8") != line:
        raise ValueError("not in canonical form")
    if "null" in canonical and _has_null(obj):
        raise ValueError("null value")
    if obj.get("v") != 1:
        raise ValueError(f"unsupported version {obj.get('v')!r}")
    if obj.get("type") not in ("inference", "admin", "system"):
        raise ValueError("bad type")
    if not isinstance(obj.get("event"), str) or not NAME_RE.match(obj["event"]):
        raise ValueError("bad event")
    if not isinstance(obj.get("ts"), str) or not TS_RE.match(obj["ts"]):
        raise ValueError("bad ts")
    if type(obj.get("seq")) is not int or obj["seq"] < 0:
        raise ValueError("bad seq")
    return obj


def _has_null(value) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False


def ts_micros(ts: str) -> int:
    from datetime import datetime, timezone

    dt = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


# --- the directory --------------------------------------------------------

def numbered(directory: str, ext: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        stem = name[: -len(ext)] if name.endswith(ext) else None
        if stem is not None and len(stem) == 20 and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def read_frontier(path: str) -> Tree:
    text = open(path, encoding="utf-8").read()
    if not text.endswith("\n"):
        raise ValueError("no final newline")
    lines = text[:-1].split("\n")
    if not NUM_RE.match(lines[0]):
        raise ValueError("bad size")
    size = int(lines[0])
    hashes = [bytes.fromhex(h) for h in lines[1:] if size]
    if len(hashes) != bin(size).count("1") or any(len(h) != 32 for h in hashes):
        raise ValueError("wrong hash count")
    return Tree(size, hashes)


def verify(ledger: str, given: list[Key], trusted_note: str | None) -> list[str]:
    warnings: list[str] = []
    seg_dir = os.path.join(ledger, "segments")
    cp_dir = os.path.join(ledger, "checkpoints")
    note_path = lambda size: os.path.join(cp_dir, f"{size:020d}.note")  # noqa: E731
    frontier_path = lambda size: os.path.join(cp_dir, f"{size:020d}.frontier")  # noqa: E731

    history: list[tuple[int, Key]] = []
    with open(os.path.join(ledger, "keys", "verifiers.txt"), encoding="utf-8") as f:
        for i, line in enumerate(f.read().splitlines()):
            size, _, vkey = line.partition(" ")
            if not NUM_RE.match(size) or (i == 0) != (int(size) == 0):
                raise Tampered("keys/verifiers.txt", f"line {i + 1}: bad size")
            if history and int(size) <= history[-1][0]:
                raise Tampered("keys/verifiers.txt", f"line {i + 1}: sizes must increase")
            history.append((int(size), Key(vkey)))
    if not history:
        raise Tampered("keys/verifiers.txt", "empty")

    segments = numbered(seg_dir, ".jsonl")
    notes = numbered(cp_dir, ".note")
    snapshots = numbered(cp_dir, ".frontier")
    first = segments[0] if segments else 0
    if first == 0:
        tree = Tree()
    else:
        if not os.path.exists(frontier_path(first)):
            raise Tampered(f"checkpoints/{first:020d}.frontier", "missing snapshot at purge point")
        tree = read_frontier(frontier_path(first))
        if tree.size != first:
            raise Tampered(f"checkpoints/{first:020d}.frontier", "wrong size")

    wanted = {s for s in notes + snapshots if s >= first}
    trusted_cp = parse_checkpoint(trusted_note) if trusted_note else None
    if trusted_cp:
        wanted.add(trusted_cp[1])
    roots: dict[int, Tree] = {}
    if tree.size in wanted:
        roots[tree.size] = Tree(tree.size, tree.hashes)

    purge_points: list[int] = []
    rotations: list[tuple[str, str, int]] = []
    prev_ts = 0
    for i, start in enumerate(segments):
        rel = f"segments/{start:020d}.jsonl"
        if start != tree.size:
            raise Tampered(rel, f"log continues at seq {tree.size} but segment starts at {start}")
        data = open(os.path.join(seg_dir, f"{start:020d}.jsonl"), "rb").read()
        last = i + 1 == len(segments)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            if not last:
                raise Tampered(rel, "sealed segment ends in a partial line")
            warnings.append(f"{rel}: ignoring a partial last line")
        for line in data[: end - 1].split(b"\n") if end else []:
            seq = tree.size
            where = f"{rel}: seq {seq}"
            try:
                rec = decode(line)
            except (ValueError, UnicodeDecodeError) as e:
                raise Tampered(where, f"bad record: {e}") from None
            if rec["seq"] != seq:
                raise Tampered(where, f"record has seq {rec['seq']}")
            ts = ts_micros(rec["ts"])
            if ts + TOLERANCE_US < prev_ts:
                raise Tampered(where, "timestamp goes back")
            prev_ts = max(prev_ts, ts)
            details = rec.get("details", {})
            if rec["type"] == "system" and rec["event"] == "retention.purged":
                purge_points.append(details.get("purged_before_seq", 0))
            if rec["type"] == "system" and rec["event"] == "ledger.key_rotated":
                rotations.append((details["old_key"], details["new_key"], seq + 1))
            tree.append(leaf_hash(line))
            if tree.size in wanted:
                roots[tree.size] = Tree(tree.size, tree.hashes)
        if not last and not os.path.exists(note_path(tree.size)):
            raise Tampered(rel, f"no checkpoint at the end of the sealed segment ({tree.size})")
    size = tree.size
    if first > 0 and not any(p >= first for p in purge_points):
        raise Tampered(f"segments/{first:020d}.jsonl", f"records 0..{first} deleted without a retention record")

    accepted = set(given) if given else {history[0][1]}
    grew = True
    while grew:
        grew = False
        for old_v, new_v, first_size in rotations:
            old, new = Key(old_v), Key(new_v)
            if (old in accepted) == (new in accepted) or not os.path.exists(note_path(first_size)):
                continue
            text = open(note_path(first_size), encoding="utf-8").read()
            if old.signed(text) and new.signed(text):
                accepted |= {old, new}
                grew = True

    origin = None
    for cp_size in notes:
        rel = f"checkpoints/{cp_size:020d}.note"
        text = open(note_path(cp_size), encoding="utf-8").read()
        key = [k for first_size, k in history if first_size <= cp_size][-1]
        if key not in accepted:
            raise Tampered(rel, f"signed by untrusted key {key.vkey}")
        if not key.signed(text):
            raise Tampered(rel, "signature does not verify")
        try:
            cp_origin, body_size, root = parse_checkpoint(text)
        except ValueError as e:
            raise Tampered(rel, str(e)) from None
        if body_size != cp_size or (origin is not None and cp_origin != origin):
            raise Tampered(rel, "size or origin differs")
        origin = cp_origin
        if cp_size > size:
            raise Tampered(rel, f"covers {cp_size} records but only {size} are stored (truncated)")
        if cp_size >= first and roots[cp_size].root() != root:
            raise Tampered(rel, "root does not match the records")

    for snap in snapshots:
        rel = f"checkpoints/{snap:020d}.frontier"
        f = read_frontier(frontier_path(snap))
        if f.size != snap:
            raise Tampered(rel, "wrong size")
        if first <= snap <= size and roots[snap].hashes != f.hashes:
            raise Tampered(rel, "does not match the tree")
        if snap < first and snap in notes:
            if parse_checkpoint(open(note_path(snap), encoding="utf-8").read())[2] != f.root():
                raise Tampered(rel, "does not match its signed root")

    if trusted_cp:
        keys = list(accepted)
        if not any(k.signed(trusted_note) for k in keys):
            raise Tampered("trusted checkpoint", "signature does not verify")
        t_origin, t_size, t_root = trusted_cp
        if origin is not None and t_origin != origin:
            raise Tampered("trusted checkpoint", "different origin")
        if t_size > size:
            raise Tampered("trusted checkpoint", f"covers {t_size} records but only {size} are stored (rolled back)")
        if t_size >= first and roots[t_size].root() != t_root:
            raise Tampered("trusted checkpoint", "root differs: the log was rewritten")

    if notes and size > notes[-1]:
        warnings.append(f"records {notes[-1]}..{size} are not covered by a checkpoint yet")
    return warnings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ledger")
    parser.add_argument("--key", action="append", default=[], help="trusted verifier key (vkey)")
    parser.add_argument("--trusted-checkpoint", help="a signed checkpoint kept from earlier")
    args = parser.parse_args()
    try:
        keys = [Key(k) for k in args.key]
    except ValueError as e:
        print(f"bad --key: {e}", file=sys.stderr)
        return 2
    trusted = open(args.trusted_checkpoint, encoding="utf-8").read() if args.trusted_checkpoint else None
    try:
        warnings = verify(args.ledger, keys, trusted)
    except Tampered as e:
        print(f"TAMPERED: {e}")
        return 1
    except (OSError, ValueError, KeyError, IndexError) as e:
        print(f"TAMPERED: {type(e).__name__}: {e}")
        return 1
    for w in warnings:
        print(f"warning: {w}")
    if not keys:
        print("warning: no --key given: trusted the first key in keys/verifiers.txt")
    print("OK: ledger intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
