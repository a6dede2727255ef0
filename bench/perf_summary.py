#!/usr/bin/env python3
"""Groups a flat `perf report` (overhead, dso, symbol) into the costs a
gateway has: allocation, copies, kernel networking, scheduling, the HTTP
server and client, JSON, the runtime, Custos' own code.

Usage: perf report -i perf.data --no-children -F overhead,dso,sym --stdio \
           | bench/perf_summary.py
The first matching rule wins, so the order below matters.
"""

import collections
import re
import sys

RULES = [
    ("allocation (glibc malloc/free)", r"malloc|_int_free|cfree|unlink_chunk|malloc_consolidate|realloc|tcache"),
    ("memcpy/memmove/memset", r"memmove|memcpy|memset"),
    ("kernel: getrandom", r"\[k\] .*(crng|chacha|getrandom|blake2)"),
    ("kernel: TCP over loopback and syscalls",
     r"\[k\] .*(tcp|ip_|skb|sock|net_|napi|softirq|syscall|sys_|vfs_|readv|writev|recv|send|entry_SYSCALL"
     r"|loopback|inet|copy_|fdget|fput|_copy_to_iter|_copy_from_iter|do_iter|xmit|dev_)"),
    ("kernel: scheduler, epoll, futex, wake-ups",
     r"\[k\] .*(spin_unlock|spin_lock|schedule|switch|futex|epoll|wake|ep_|enqueue|dequeue|update_|select_task"
     r"|pick_|idle|hrtimer|rcu|irq|try_to_wake|ttwu|native_|cpuacct|psi_|tsc)"),
    ("kernel: other", r"\[k\]"),
    ("clock_gettime (vdso)", r"vdso|clock_gettime"),
    ("reqwest / hyper-util client and pool", r"reqwest|hyper_util::client|hyper_rustls|tower_http|ConnectorService|pool::"),
    ("url parsing and IDNA", r"url::|idna::"),
    ("hyper HTTP/1 codec and dispatch", r"hyper::"),
    ("serde_json and body field extraction", r"serde_json|serde_core|custos_providers::body|memchr"),
    ("tokio runtime, I/O driver and timers", r"tokio::"),
    ("axum / tower routing", r"axum::|tower::"),
    ("tracing", r"tracing"),
    ("metrics (prometheus-client)", r"prometheus"),
    ("custos crates", r"custos_"),
    ("http types, headers, bytes", r"http::|bytes::|HeaderMap|header"),
    ("uuid", r"uuid"),
    ("sha2 / hmac (key hashing)", r"sha2|hmac|Sha256|compress256"),
    ("Rust std/core/alloc", r"core::|alloc::|std::|hashbrown"),
]


def main() -> None:
    buckets: collections.Counter = collections.Counter()
    total = 0.0
    for line in sys.stdin:
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(.*)", line)
        if not m:
            continue
        pct = float(m.group(1))
        text = m.group(2) + " " + m.group(3)
        total += pct
        for name, rx in RULES:
            if re.search(rx, text):
                buckets[name] += pct
                break
        else:
            buckets[f"other ({m.group(2)})"] += pct
    for name, pct in buckets.most_common():
        print(f"{pct:6.1f}%  {name}")
    print(f"{total:6.1f}%  total of the samples listed")


if __name__ == "__main__":
    main()
