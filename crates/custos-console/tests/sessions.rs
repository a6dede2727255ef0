//! The console router served on 127.0.0.1:0 over a real SQLite store, with
//! a manual clock: session idle and absolute timeouts, the short life of a
//! half-finished sign-in, TOTP steps over time (once each, ±1 step), and
//! sign-out. (The binary's own tests in `crates/custos/tests/console.rs`
//! cover the rest against the real process.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_config::{ConsoleConfig, KeysConfig};
use custos_console::crypto::{TOTP_STEP, totp_code};
use custos_console::{ConsoleOptions, ConsoleState, ServerKeys};
use custos_store::{Actor, ActorKind, KeyMinter, Role, Store, StoreOptions};
use custos_types::ManualClock;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

const PASSWORD: &str = "tidy-orbit-lantern-4812";

struct Harness {
    base: String,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> (Harness, Arc<Store>) {
    start_with(None).await
}

/// `public_url`: the console's advertised base URL (`https://…` turns on
/// `Secure` cookies), else the listener's own.
async fn start_with(public_url: Option<&str>) -> (Harness, Arc<Store>) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("custos-console-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A step boundary, so "the same step" is unambiguous.
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let store = Arc::new(
        Store::open(
            &dir,
            StoreOptions {
                clock: clock.clone(),
                create: true,
                change_marker: None,
            },
        )
        .await
        .unwrap(),
    );
    let pepper = secrecy::SecretSlice::from(vec![7u8; 32]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = ConsoleConfig {
        session_idle_timeout: Duration::from_secs(600),
        session_absolute_timeout: Duration::from_secs(3600),
        ..ConsoleConfig::default()
    };
    let state = ConsoleState::new(ConsoleOptions {
        store: store.clone(),
        minter: Arc::new(KeyMinter::new(&pepper).unwrap()),
        server_keys: ServerKeys::from_pepper(&[7u8; 32]),
        keys_policy: KeysConfig {
            max_age: Duration::from_secs(90 * 86_400),
            rotation_warning: Duration::from_secs(14 * 86_400),
            last_used_flush: Duration::from_secs(10),
        },
        config,
        ledger_dir: dir.join("ledger"),
        clock: clock.clone(),
        base_url: public_url.map_or_else(|| base.clone(), str::to_owned),
    });
    let app = custos_console::router(state);
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (
        Harness {
            base,
            clock,
            _dir: TempDir(dir),
        },
        store,
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn cookie(resp: &reqwest::Response) -> String {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find_map(|c| c.strip_prefix("custos_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn base32_decode(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut n, mut out) = (0u64, 0, Vec::new());
    for c in s.bytes() {
        bits = (bits << 5) | alphabet.iter().position(|a| *a == c).unwrap() as u64;
        n += 5;
        if n >= 8 {
            out.push((bits >> (n - 8)) as u8);
            n -= 8;
        }
    }
    out
}

impl Harness {
    fn secs(&self) -> u64 {
        custos_types::Clock::now(&*self.clock)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    async fn get(&self, path: &str, session: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.base))
            .header(COOKIE, format!("custos_session={session}"))
            .send()
            .await
            .unwrap()
    }

    /// Creates `alice` through an invitation and enrols her; returns the
    /// full session and the seed.
    async fn sign_up(&self, store: &Store) -> (String, Vec<u8>) {
        let inv = custos_console::issue_invite(
            store,
            &self.base,
            Duration::from_secs(3600),
            Some("alice"),
            Role::Admin,
            false,
            &Actor::new(ActorKind::Cli, "root"),
        )
        .await
        .unwrap();
        let token = inv.link.split("token=").nth(1).unwrap().to_owned();
        let r = client()
            .post(format!("{}/console/setup", self.base))
            .form(&[
                ("token", token.as_str()),
                ("username", ""),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let pending = cookie(&r);
        let html = self
            .get("/console/enrol", &pending)
            .await
            .text()
            .await
            .unwrap();
        let secret = html
            .split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let seed = base32_decode(secret);
        let r = client()
            .post(format!("{}/console/enrol", self.base))
            .header(COOKIE, format!("custos_session={pending}"))
            .form(&[
                ("csrf", hidden(&html, "csrf")),
                ("code", totp_code(&seed, self.secs()).unwrap()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        (cookie(&r), seed)
    }

    /// Password then TOTP at the clock's time; the new session or the status.
    async fn sign_in(&self, seed: &[u8], at: u64) -> Result<String, u16> {
        let r = client()
            .post(format!("{}/console/login", self.base))
            .form(&[("username", "alice"), ("password", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let pending = cookie(&r);
        let html = self
            .get("/console/mfa", &pending)
            .await
            .text()
            .await
            .unwrap();
        let r = client()
            .post(format!("{}/console/mfa", self.base))
            .header(COOKIE, format!("custos_session={pending}"))
            .form(&[
                ("csrf", hidden(&html, "csrf")),
                ("code", totp_code(seed, at).unwrap()),
            ])
            .send()
            .await
            .unwrap();
        if r.status() == 303 {
            Ok(cookie(&r))
        } else {
            Err(r.status().as_u16())
        }
    }
}

#[tokio::test]
async fn idle_and_absolute_timeouts() {
    let (h, store) = start().await;
    let (session, seed) = h.sign_up(&store).await;
    assert_eq!(h.get("/console/", &session).await.status(), 200);
    // Requests keep it alive within the idle timeout (10 min)...
    for _ in 0..5 {
        h.clock.advance(Duration::from_secs(540));
        assert_eq!(h.get("/console/keys", &session).await.status(), 200);
    }
    // ...but not past the absolute timeout (1 h after sign-in).
    h.clock.advance(Duration::from_secs(540 * 2));
    let r = h.get("/console/keys", &session).await;
    assert_eq!(r.status(), 303, "absolute timeout");
    assert_eq!(r.headers()[LOCATION], "/console/login");
    // Idle: a fresh session, then 10 min of silence.
    h.clock.advance(Duration::from_secs(TOTP_STEP));
    let s2 = h.sign_in(&seed, h.secs()).await.unwrap();
    assert_eq!(h.get("/console/", &s2).await.status(), 200);
    h.clock.advance(Duration::from_secs(601));
    assert_eq!(h.get("/console/", &s2).await.status(), 303, "idle timeout");
    // Expired sessions are gone from the store, not just refused.
    assert_eq!(
        store
            .sessions()
            .purge(custos_types::Clock::now(&*h.clock))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn pending_sign_in_expires_and_totp_steps_are_single_use() {
    let (h, store) = start().await;
    let (_, seed) = h.sign_up(&store).await;
    // The enrolment step was used: the same step's code is refused...
    assert_eq!(h.sign_in(&seed, h.secs()).await, Err(401));
    // ...the next step's is accepted (within ±1 step)...
    let next = h.secs() + TOTP_STEP;
    let s = h.sign_in(&seed, next).await.unwrap();
    assert_eq!(h.get("/console/", &s).await.status(), 200);
    // ...once.
    assert_eq!(h.sign_in(&seed, next).await, Err(401));
    // Two steps ahead is outside the window.
    assert_eq!(h.sign_in(&seed, h.secs() + 2 * TOTP_STEP).await, Err(401));
    // A half-finished sign-in lasts 10 minutes.
    h.clock.advance(Duration::from_secs(5 * TOTP_STEP));
    let r = client()
        .post(format!("{}/console/login", h.base))
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let pending = cookie(&r);
    assert_eq!(h.get("/console/mfa", &pending).await.status(), 200);
    h.clock.advance(Duration::from_secs(601));
    assert_eq!(h.get("/console/mfa", &pending).await.status(), 303);
    // A pending session never opens the console.
    assert_eq!(h.get("/console/keys", &pending).await.status(), 303);
}

#[tokio::test]
async fn sign_out_and_session_rotation() {
    let (h, store) = start().await;
    let (session, seed) = h.sign_up(&store).await;
    h.clock.advance(Duration::from_secs(TOTP_STEP));
    let second = h.sign_in(&seed, h.secs()).await.unwrap();
    assert_ne!(session, second);
    let html = h
        .get("/console/account", &second)
        .await
        .text()
        .await
        .unwrap();
    let csrf = hidden(&html, "csrf");
    // The CSRF token belongs to its session.
    let r = client()
        .post(format!("{}/console/logout", h.base))
        .header(COOKIE, format!("custos_session={session}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(format!("{}/console/logout", h.base))
        .header(COOKIE, format!("custos_session={second}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.get("/console/", &second).await.status(), 303);
    // The first session is still alive: sign-out ends one session.
    assert_eq!(h.get("/console/", &session).await.status(), 200);
    // Garbage cookies are just "not signed in".
    for junk in ["", "x", &"A".repeat(500), "%00%ff"] {
        assert_eq!(h.get("/console/", junk).await.status(), 303, "{junk:?}");
    }
}

#[tokio::test]
async fn failures_from_one_address_are_throttled() {
    let (h, store) = start().await;
    let (_, seed) = h.sign_up(&store).await;
    let login = |user: &'static str, password: &'static str| {
        client()
            .post(format!("{}/console/login", h.base))
            .form(&[("username", user), ("password", password)])
            .send()
    };
    // Spraying unknown user names is not stopped by any account lockout,
    // so the address is: after 20 failures it must wait 15 minutes.
    for i in 0..20 {
        let user = ["bob", "carol", "dave", "erin"][i % 4];
        assert_eq!(login(user, "Winter2024!!!").await.unwrap().status(), 401);
    }
    let r = login("alice", PASSWORD).await.unwrap();
    assert_eq!(r.status(), 429, "even the right password waits");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("too many failed attempts from this address")
    );
    h.clock.advance(Duration::from_secs(15 * 60 + TOTP_STEP));
    assert!(h.sign_in(&seed, h.secs()).await.is_ok());
}

#[tokio::test]
async fn cookies_are_secure_and_host_prefixed_under_tls() {
    let (h, store) = start_with(Some("https://custos-admin.example.com")).await;
    let inv = custos_console::issue_invite(
        &store,
        "https://custos-admin.example.com",
        Duration::from_secs(60),
        Some("alice"),
        Role::Viewer,
        false,
        &Actor::new(ActorKind::Cli, "root"),
    )
    .await
    .unwrap();
    assert!(
        inv.link
            .starts_with("https://custos-admin.example.com/console/setup?token=")
    );
    let token = inv.link.split("token=").nth(1).unwrap().to_owned();
    let r = client()
        .post(format!("{}/console/setup", h.base))
        .form(&[
            ("token", token.as_str()),
            ("username", ""),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-custos_session="), "{set}");
    for attr in ["; Path=/", "; HttpOnly", "; SameSite=Strict", "; Secure"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
}

#[tokio::test]
async fn bad_form_and_method_input_gets_clear_errors() {
    let (h, store) = start().await;
    let (session, _) = h.sign_up(&store).await;
    let html = h
        .get("/console/keys/new", &session)
        .await
        .text()
        .await
        .unwrap();
    let csrf = hidden(&html, "csrf");
    let post = |ctype: &'static str, body: Vec<u8>| {
        client()
            .post(format!("{}/console/keys", h.base))
            .header(COOKIE, format!("custos_session={session}"))
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let form = |extra: &str| format!("csrf={csrf}&name=svc{extra}").into_bytes();
    // Wrong media type, oversized and undecodable bodies: an error page.
    assert_eq!(
        post("application/json", form("&models=mock-chat"))
            .await
            .unwrap()
            .status(),
        415
    );
    let mut huge = form("&models=");
    huge.extend(std::iter::repeat_n(b'a', 100 * 1024));
    assert_eq!(
        post("application/x-www-form-urlencoded", huge)
            .await
            .unwrap()
            .status(),
        413
    );
    // Bad values re-render the form with the reason.
    for (extra, want) in [
        ("&models=mock-chat&rpm=lots", "rpm: must be a whole number"),
        ("&models=mock-chat&expires_in=soon", "expires_in"),
        ("&models=mock-chat&cidrs=300.1.1.1/8", "cidrs"),
        ("&models=mock-chat&capabilities=teleport", "capabilities"),
        ("&models=%ff%fe", "models"),
    ] {
        let r = post("application/x-www-form-urlencoded", form(extra))
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{extra}: {text}");
        assert!(text.contains(want), "{extra}: {want} not in the page");
    }
    // A known route with the wrong method: a JSON 405.
    let r = client()
        .delete(format!("{}/admin/v1/keys", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
}
