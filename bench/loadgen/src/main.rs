//! Load generator for the Custos benchmark harness (`bench/run`).
//!
//! It exists for the two scenarios Debian's `wrk` cannot measure honestly:
//!
//! - `--mode open` sends requests on a fixed schedule (`--rate` per second) and
//!   measures each latency from the request's *intended* send time. A server
//!   that stalls is therefore charged for every request that queued behind the
//!   stall, which is what a closed-loop tool hides (coordinated omission).
//!   `--connections` keep-alive connections serve the schedule; a request that
//!   finds them all busy waits, and the wait counts.
//! - `--stream` records the time to the first SSE event (`data:` bytes) as
//!   well as the time to the end of the stream.
//!
//! `--mode closed` is the wrk model (each connection sends, waits, repeats) and
//! is used for the streaming scenario. The result is one JSON object on stdout.
//! Every answer is checked: status 200 and each `--expect` string present in the
//! body, otherwise it is an error and its latency is not in the percentiles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

const USAGE: &str = "usage: loadgen --url http://HOST:PORT/PATH --body-file F [--header 'K: V']...
               [--mode closed|open] [--connections N] [--duration SECS] [--rate RPS]
               [--stream] [--expect STR]... [--timeout SECS] [--drain SECS]";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Closed,
    Open,
}

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    mode: Mode,
    connections: usize,
    duration: Duration,
    rate: f64,
    stream: bool,
    expect: Vec<Vec<u8>>,
    timeout: Duration,
    drain: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut body_file = None;
    let mut headers = Vec::new();
    let mut mode = Mode::Closed;
    let mut connections = 1usize;
    let mut duration = 10.0f64;
    let mut rate = 0.0f64;
    let mut stream = false;
    let mut expect = Vec::new();
    let mut timeout = 30.0f64;
    let mut drain = 10.0f64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| s.parse::<f64>().map_err(|e| format!("bad number {s:?}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--body-file" => body_file = Some(value()?),
            "--header" => {
                let h = value()?;
                let (k, v) = h.split_once(':').ok_or_else(|| format!("bad header {h:?}"))?;
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            "--mode" => {
                mode = match value()?.as_str() {
                    "closed" => Mode::Closed,
                    "open" => Mode::Open,
                    m => return Err(format!("unknown mode {m:?}")),
                }
            }
            "--connections" => connections = num(value()?)? as usize,
            "--duration" => duration = num(value()?)?,
            "--rate" => rate = num(value()?)?,
            "--stream" => stream = true,
            "--expect" => expect.push(value()?.into_bytes()),
            "--timeout" => timeout = num(value()?)?,
            "--drain" => drain = num(value()?)?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            f => return Err(format!("unknown flag {f:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported: {url}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .replace("localhost", "127.0.0.1")
        .parse::<SocketAddr>()
        .map_err(|e| format!("the URL needs IP:PORT ({host}): {e}"))?;
    let body = match body_file {
        Some(f) => std::fs::read(&f).map_err(|e| format!("reading {f}: {e}"))?,
        None => return Err(format!("--body-file is required\n{USAGE}")),
    };
    if connections == 0 || duration <= 0.0 {
        return Err("--connections and --duration must be positive".to_owned());
    }
    if mode == Mode::Open && rate <= 0.0 {
        return Err("--mode open needs --rate".to_owned());
    }
    Ok(Args {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
        headers,
        body: Bytes::from(body),
        mode,
        connections,
        duration: Duration::from_secs_f64(duration),
        rate,
        stream,
        expect,
        timeout: Duration::from_secs_f64(timeout),
        drain: Duration::from_secs_f64(drain),
    })
}

/// What happened to one request.
enum Outcome {
    Ok { latency: Duration, ttft: Option<Duration> },
    Status(u16),
    Body,
    Io(String),
    Timeout,
    /// Open mode only: still queued when the drain period ended; never sent.
    Unsent,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ttft_us: Vec<u64>,
    /// Open mode: how late each request was actually sent (queueing for a free
    /// connection, or the generator falling behind).
    send_lag_us: Vec<u64>,
    status: std::collections::BTreeMap<u16, u64>,
    body: u64,
    io: u64,
    timeout: u64,
    unsent: u64,
    first_io_error: Option<String>,
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Ok { latency, ttft } => {
                self.latencies_us.push(latency.as_micros() as u64);
                if let Some(t) = ttft {
                    self.ttft_us.push(t.as_micros() as u64);
                }
            }
            Outcome::Status(s) => *self.status.entry(s).or_default() += 1,
            Outcome::Body => self.body += 1,
            Outcome::Io(e) => {
                self.io += 1;
                self.first_io_error.get_or_insert(e);
            }
            Outcome::Timeout => self.timeout += 1,
            Outcome::Unsent => self.unsent += 1,
        }
    }

    fn merge(&mut self, o: Tally) {
        self.latencies_us.extend(o.latencies_us);
        self.ttft_us.extend(o.ttft_us);
        self.send_lag_us.extend(o.send_lag_us);
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        self.body += o.body;
        self.io += o.io;
        self.timeout += o.timeout;
        self.unsent += o.unsent;
        if self.first_io_error.is_none() {
            self.first_io_error = o.first_io_error;
        }
    }

    fn errors(&self) -> u64 {
        self.status.values().sum::<u64>() + self.body + self.io + self.timeout + self.unsent
    }
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(a: &Args) -> Result<Sender, String> {
    let tcp = TcpStream::connect(a.addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends one request on `conn` (connecting first if needed) and reads the whole
/// answer. Latency and TTFT are measured from `origin`: the actual send time in
/// closed mode, the intended send time in open mode.
async fn one(a: &Args, conn: &mut Option<Sender>, origin: Instant, limit: Duration) -> Outcome {
    let exchange = async {
        if conn.is_none() {
            *conn = Some(connect(a).await.map_err(Outcome::Io)?);
        }
        let Some(sender) = conn.as_mut() else {
            return Err(Outcome::Io("no connection".to_owned()));
        };
        sender.ready().await.map_err(|e| Outcome::Io(format!("ready: {e}")))?;
        let mut req = Request::post(a.path.as_str())
            .header(header::HOST, a.host.as_str())
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in &a.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(a.body.clone()))
            .map_err(|e| Outcome::Io(format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Outcome::Io(format!("send: {e}")))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut buf = Vec::with_capacity(8192);
        let mut ttft = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Outcome::Io(format!("body: {e}")))?;
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
                if a.stream && ttft.is_none() && contains(&buf, b"data:") {
                    ttft = Some(origin.elapsed());
                }
            }
        }
        let latency = origin.elapsed();
        if status != 200 {
            return Err(Outcome::Status(status));
        }
        if !a.expect.iter().all(|e| contains(&buf, e)) {
            return Err(Outcome::Body);
        }
        Ok(Outcome::Ok { latency, ttft: if a.stream { ttft } else { None } })
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(o)) => o,
        Ok(Err(o)) => {
            // A failed exchange may leave the connection mid-response: start afresh.
            if !matches!(o, Outcome::Status(_) | Outcome::Body) {
                *conn = None;
            }
            o
        }
        Err(_) => {
            *conn = None;
            Outcome::Timeout
        }
    }
}

async fn preconnect(a: &Args) -> Result<Vec<Option<Sender>>, String> {
    let mut conns = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        conns.push(Some(connect(a).await?));
    }
    Ok(conns)
}

async fn run_closed(a: Arc<Args>) -> Result<(Tally, Duration), String> {
    let conns = preconnect(&a).await?;
    let start = Instant::now();
    let deadline = start + a.duration;
    let mut workers = Vec::new();
    for mut conn in conns {
        let a = Arc::clone(&a);
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let origin = Instant::now();
                t.add(one(&a, &mut conn, origin, a.timeout).await);
            }
            t
        }));
    }
    let mut total = Tally::default();
    for w in workers {
        total.merge(w.await.map_err(|e| format!("worker: {e}"))?);
    }
    Ok((total, start.elapsed()))
}

async fn run_open(a: Arc<Args>) -> Result<(Tally, Duration), String> {
    let conns = preconnect(&a).await?;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + a.duration;
    let give_up = end + a.drain;
    let mut workers = Vec::new();
    for mut conn in conns {
        let a = Arc::clone(&a);
        let rx = Arc::clone(&rx);
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some(intended) = next else { break };
                let now = Instant::now();
                if now >= give_up {
                    t.add(Outcome::Unsent);
                    continue;
                }
                t.send_lag_us.push(now.saturating_duration_since(intended).as_micros() as u64);
                let limit = a.timeout.min(give_up - now);
                t.add(one(&a, &mut conn, intended, limit).await);
            }
            t
        }));
    }
    // The schedule runs on its own OS thread: `std::thread::sleep` wakes within
    // tens of microseconds, where tokio's timer wheel rounds up to the next
    // millisecond and would charge up to 1 ms of the generator's own lateness
    // to the server.
    let n = (a.rate * a.duration.as_secs_f64()).round() as u64;
    let rate = a.rate;
    let dispatcher = std::thread::spawn(move || {
        for i in 0..n {
            let intended = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if intended > now + Duration::from_micros(20) {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                break;
            }
        }
    });
    let mut total = Tally::default();
    for w in workers {
        total.merge(w.await.map_err(|e| format!("worker: {e}"))?);
    }
    dispatcher.join().map_err(|_| "the dispatcher thread panicked".to_owned())?;
    Ok((total, a.duration))
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn dist_json(v: &mut [u64]) -> String {
    v.sort_unstable();
    let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<u64>() as f64 / v.len() as f64 };
    format!(
        "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{:.1}}}",
        pct(v, 50.0),
        pct(v, 90.0),
        pct(v, 99.0),
        pct(v, 99.9),
        v.last().copied().unwrap_or(0),
        mean
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    // One thread: the generator takes at most one core of the two, and a single
    // event loop keeps the schedule free of cross-thread handoffs.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            std::process::exit(1);
        }
    };
    let mode = args.mode;
    let result = rt.block_on(async {
        match mode {
            Mode::Closed => run_closed(Arc::clone(&args)).await,
            Mode::Open => run_open(Arc::clone(&args)).await,
        }
    });
    let (mut t, elapsed) = match result {
        Ok(r) => r,
        Err(e) => {
            println!("{{\"fatal\":{}}}", json_str(&e));
            std::process::exit(1);
        }
    };
    let ok = t.latencies_us.len() as u64;
    let errors = t.errors();
    let status: Vec<String> = t.status.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let mut fields = vec![
        format!("\"mode\":\"{}\"", if mode == Mode::Open { "open" } else { "closed" }),
        format!("\"connections\":{}", args.connections),
        format!("\"duration_s\":{:.3}", elapsed.as_secs_f64()),
        format!("\"requests\":{}", ok + errors),
        format!("\"ok\":{ok}"),
        format!("\"errors\":{errors}"),
        format!(
            "\"error_kinds\":{{\"status\":{{{}}},\"body\":{},\"io\":{},\"timeout\":{},\"unsent\":{}}}",
            status.join(","),
            t.body,
            t.io,
            t.timeout,
            t.unsent
        ),
        format!("\"rps\":{:.1}", ok as f64 / elapsed.as_secs_f64()),
        format!("\"latency_us\":{}", dist_json(&mut t.latencies_us)),
    ];
    if let Some(e) = &t.first_io_error {
        fields.push(format!("\"first_io_error\":{}", json_str(e)));
    }
    if mode == Mode::Open {
        fields.push(format!("\"target_rate\":{}", args.rate));
        fields.push(format!("\"send_lag_us\":{}", dist_json(&mut t.send_lag_us)));
    }
    if args.stream {
        fields.push(format!("\"ttft_us\":{}", dist_json(&mut t.ttft_us)));
    }
    println!("{{{}}}", fields.join(","));
}
