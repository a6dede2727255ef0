#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a repeatable
# figure on a noisy machine, where wall-clock benchmarks are not.
#
#   bench/callgrind-request.sh [--durability sync|batched] [--requests N]
#                              [--stream] [--bin PATH] [--out DIR]
#
# Starts the bench mock (nginx, bench/nginx.conf.in), creates an API key,
# runs `custos serve` under `valgrind --tool=callgrind` with the ledger on,
# sends 200 warm-up requests over one keep-alive connection, zeroes the
# counters, sends N more (default 2000), dumps, and prints the instructions
# per request over every thread of the process (tokio workers, the ledger
# writer, the checkpointer). The dump is left in DIR for callgrind_annotate.
#
# Valgrind runs the threads one at a time and has no SHA extensions, so
# hashing shows at its software cost; read the figures as relative, not as
# time.
#
# With --switches, the server runs natively instead (no valgrind) and the
# script prints, per thread and in total, the voluntary and involuntary
# context switches and the CPU time per request (from /proc/PID/task/*),
# over the same N sequential requests: what a request costs in thread
# hand-offs, which instruction counts do not show. With --switches,
# CUSTOS_TRACE_WRAPPER runs the server under another tool, for example
#   CUSTOS_TRACE_WRAPPER="perf record -e cpu-clock -g -o /tmp/perf.data"
#   CUSTOS_TRACE_WRAPPER="strace -f -ff -o /tmp/st/t"
# (the per-thread table then describes the wrapper, not the server).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
durability=sync
requests=2000
stream=0
switches=0
bin="${CARGO_TARGET_DIR:-$root/target}/release/custos"
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --durability) durability="$2"; shift 2 ;;
        --requests) requests="$2"; shift 2 ;;
        --stream) stream=1; shift ;;
        --bin) bin="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --switches) switches=1; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$switches" = 1 ] || command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }
command -v nginx >/dev/null || "$here/install.sh" base

tmp="$(mktemp -d /tmp/custos-callgrind-XXXXXX)"
chmod 700 "$tmp"
out="${out:-$tmp/out}"
mkdir -p "$out"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$tmp/nginx"
sed -e "s|@PREFIX@|$tmp/nginx|g" -e "s|@PORT@|$port|g" -e "s|@FIXTURES@|$here/fixtures|g" \
    "$here/nginx.conf.in" > "$tmp/nginx/nginx.conf"
nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" 2>"$tmp/nginx/stderr.log" &
pids+=($!)

cat > "$tmp/custos.toml" <<EOF
[providers.mock_json]
kind = "openai"
base_url = "http://127.0.0.1:$port/v1"
max_idle_connections = 256

[providers.mock_sse]
kind = "openai"
base_url = "http://127.0.0.1:$port/sse/v1"
max_idle_connections = 256

[[models]]
name = "bench"
targets = [{ provider = "mock_json" }]

[[models]]
name = "bench-stream"
targets = [{ provider = "mock_sse", model = "bench" }]
EOF
export CUSTOS_LISTEN=127.0.0.1:0 CUSTOS_ADMIN_LISTEN=127.0.0.1:0 CUSTOS_LOG_LEVEL=warn
export CUSTOS_LEDGER_DURABILITY="$durability" CUSTOS_CONFIG="$tmp/custos.toml"
unset RUST_LOG
mkdir -m 700 "$tmp/data"
secret="$("$bin" keys create --name bench --models '*' --data-dir "$tmp/data" --json \
    | python3 -c 'import json,sys,re; print(json.loads(re.search(r"\{.*\}", sys.stdin.read(), re.S).group(0))["secret"])')"

# callgrind_control finds the process through files in its working dir.
cd "$out"
runner=(valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$out/callgrind.out.%p")
[ "$switches" = 1 ] && runner=(${CUSTOS_TRACE_WRAPPER:-env})
"${runner[@]}" "$bin" serve --config "$tmp/custos.toml" --data-dir "$tmp/data" \
    > "$tmp/serve.out" 2> "$tmp/serve.err" &
vg=$!
pids+=($vg)
for _ in $(seq 600); do
    grep -q '^custos ready' "$tmp/serve.out" 2>/dev/null && break
    kill -0 "$vg" 2>/dev/null || { cat "$tmp/serve.err" >&2; exit 1; }
    sleep 0.1
done
gateway="$(sed -n 's/.*gateway=\([^ ]*\).*/\1/p' "$tmp/serve.out" | head -1)"
[ -n "$gateway" ] || { echo "no ready line" >&2; cat "$tmp/serve.err" >&2; exit 1; }

fixture=request.json
[ "$stream" = 1 ] && fixture=request-stream.json
drive() {
    python3 - "$gateway" "$secret" "$here/fixtures/$fixture" "$1" <<'PY'
import http.client, sys, urllib.parse
base, secret, fixture, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
body = open(fixture, "rb").read()
u = urllib.parse.urlsplit(base)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
for _ in range(n):
    conn.request("POST", "/v1/chat/completions", body, headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}: {data[:300]!r}")
PY
}
threads() {
    python3 - "$1" <<'PY'
import json, os, sys
pid, out = sys.argv[1], {}
for t in os.listdir(f"/proc/{pid}/task"):
    try:
        status = open(f"/proc/{pid}/task/{t}/status").read()
        name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        stat = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    field = lambda k: int(status.split(k + ":")[1].split()[0])
    out[t] = [name, field("voluntary_ctxt_switches"), field("nonvoluntary_ctxt_switches"),
              int(stat[11]) + int(stat[12])]
print(json.dumps(out))
PY
}
drive 200
if [ "$switches" = 1 ]; then
    threads "$vg" > "$tmp/before.json"
    drive "$requests"
    threads "$vg" > "$tmp/after.json"
    python3 - "$tmp/before.json" "$tmp/after.json" "$requests" "$(getconf CLK_TCK)" "$durability" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
n, hz = int(sys.argv[3]), int(sys.argv[4])
print(f"durability={sys.argv[5]} requests={n} (sequential, one connection)")
print(f"{'thread':24} {'voluntary/req':>14} {'involuntary/req':>16} {'cpu us/req':>11}")
tot = [0, 0, 0]
for t, (name, v, nv, cpu) in sorted(b.items(), key=lambda kv: kv[1][0]):
    _, v0, nv0, cpu0 = a.get(t, [name, 0, 0, 0])
    d = (v - v0, nv - nv0, cpu - cpu0)
    if any(d):
        print(f"{name + ' ' + t:24} {d[0] / n:14.2f} {d[1] / n:16.2f} {d[2] * 1e6 / hz / n:11.0f}")
    tot = [x + y for x, y in zip(tot, d)]
print(f"{'total':24} {tot[0] / n:14.2f} {tot[1] / n:16.2f} {tot[2] * 1e6 / hz / n:11.0f}")
PY
    exit 0
fi
callgrind_control -z "$vg" >/dev/null
drive "$requests"
callgrind_control -d "$vg" >/dev/null
kill -INT "$vg"
wait "$vg" 2>/dev/null || true
dump="$(ls -t "$out"/callgrind.out.*.1 2>/dev/null | head -1)"
[ -n "$dump" ] || { echo "no callgrind dump in $out" >&2; exit 1; }
total="$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dump" | head -1)"
if [ -z "$total" ]; then
    total="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump" | head -1)"
fi
echo "durability=$durability stream=$stream requests=$requests"
echo "instructions total=$total per_request=$((total / requests))"
echo "dump: $dump"
echo "annotate: callgrind_annotate --inclusive=no $dump | head -60"
