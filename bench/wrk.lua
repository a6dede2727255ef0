-- wrk script for bench/: POSTs the body in $BENCH_BODY_FILE with the headers in
-- $BENCH_HEADERS ("K: V" lines), checks every answer (status 200 and a body
-- containing $BENCH_EXPECT), and prints one JSON line prefixed "BENCH_JSON ".
--
-- Percentiles come from wrk's own histogram, which (like every closed-loop
-- tool) measures from the actual send: use the fixed-rate scenario for latency
-- under a known load.

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.body = read_file(os.getenv("BENCH_BODY_FILE"))
wrk.headers["Content-Type"] = "application/json"
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local k, v = line:match("^%s*([^:]+):%s*(.-)%s*$")
  if k then wrk.headers[k] = v end
end

local expect = os.getenv("BENCH_EXPECT") or '"chat.completion"'
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  bad_status = 0
  bad_body = 0
  first_bad_status = 0
end

function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
    if first_bad_status == 0 then first_bad_status = status end
  elseif body == nil or not string.find(body, expect, 1, true) then
    bad_body = bad_body + 1
  else
    ok = ok + 1
  end
end

function done(summary, latency, requests)
  local t_ok, t_status, t_body, first = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    t_ok = t_ok + t:get("ok")
    t_status = t_status + t:get("bad_status")
    t_body = t_body + t:get("bad_body")
    if first == 0 then first = t:get("first_bad_status") end
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCH_JSON {"duration_s":%.3f,"requests":%d,"ok":%d,"errors":%d,' ..
    '"error_kinds":{"status":%d,"first_status":%d,"body":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"rps":%.1f,"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    secs, summary.requests, t_ok,
    t_status + t_body + e.connect + e.read + e.write + e.timeout,
    t_status, first, t_body, e.connect, e.read, e.write, e.timeout,
    t_ok / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
