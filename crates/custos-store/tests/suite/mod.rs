//! The backend-independent test suite: every scenario runs against a real
//! SQLite file (tests/sqlite.rs) and a fresh PostgreSQL schema
//! (tests/postgres.rs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_auth::scope::{BudgetPeriod, ModelScope, TokenBudget};
use custos_auth::{AccessRequest, KeyId, Scope};
use custos_store::keys::MAX_GRACE;
use custos_store::{
    Actor, ActorKind, Backend, KeyEventKind, KeyMinter, KeyState, KeyUpdate, ListFilter, Lookup,
    NewKey, RotationDue, ScopeUpdate, Store, StoreError, StoreOptions, UsageDelta,
};
use custos_types::{Capability, ExposeSecret, ManualClock, SecretString};
use rand::SeedableRng;
use rand::rngs::StdRng;
use secrecy::SecretSlice;
use sqlx::{AnyPool, Row};

/// 2025-01-01T00:00:00Z.
pub const START: u64 = 1_735_689_600;

pub fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(START)
}

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "custos-store-{label}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's store, with a manual clock, a seeded RNG and a separate raw
/// connection pool for inspection and fault injection.
pub struct Ctx {
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub minter: KeyMinter,
    pub rng: std::sync::Mutex<StdRng>,
    pub raw: AnyPool,
    pub dir: TempDir,
    pub url: String,
    pub options: StoreOptions,
    /// The PostgreSQL schema and the URL of the database it lives in.
    pub pg_schema: Option<(String, String)>,
}

pub fn minter() -> KeyMinter {
    KeyMinter::new(&SecretSlice::from(vec![0x5a; 32])).unwrap()
}

pub fn cli(name: &str) -> Actor {
    Actor::new(ActorKind::Cli, name)
}

pub fn api_actor() -> Actor {
    Actor {
        kind: ActorKind::Api,
        name: "deploy-bot".into(),
        mfa: true,
        ip: Some("192.0.2.7".parse().unwrap()),
        role: Some("key_manager".into()),
    }
}

pub fn new_key(name: &str) -> NewKey {
    let mut labels = BTreeMap::new();
    labels.insert("env".to_owned(), "prod".to_owned());
    NewKey {
        name: name.to_owned(),
        owner: "alice@example.com".into(),
        team: Some("search".into()),
        description: "Used by the ranking service".into(),
        labels,
        scope: Scope {
            models: ModelScope::parse_list("gpt-4o-mini").unwrap(),
            ..Scope::default()
        },
        expires_at: None,
    }
}

impl Ctx {
    pub async fn sqlite() -> Option<Ctx> {
        let dir = TempDir::new("sqlite");
        let clock = Arc::new(ManualClock::new(start()));
        let options = StoreOptions {
            clock: clock.clone(),
            create: true,
            change_marker: None,
        };
        let store = Store::open(dir.path(), options.clone()).await.unwrap();
        let url = format!("sqlite://{}", dir.path().join("custos.db").display());
        sqlx::any::install_default_drivers();
        let raw = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        Some(Ctx::assemble(store, clock, raw, dir, url, options, None))
    }

    pub async fn postgres() -> Option<Ctx> {
        let base = match std::env::var("CUSTOS_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) => {
                let addr = "127.0.0.1:5432".parse().unwrap();
                if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                {
                    eprintln!(
                        "skipping: postgresql is unreachable at 127.0.0.1:5432 ({e}); \
                         set CUSTOS_TEST_POSTGRES_URL to use another server"
                    );
                    return None;
                }
                "postgres://postgres@127.0.0.1:5432/test".to_owned()
            }
        };
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let schema = format!(
            "custos_store_test_{}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000,
            N.fetch_add(1, Ordering::SeqCst)
        );
        sqlx::any::install_default_drivers();
        let admin = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&base)
            .await
            .unwrap_or_else(|e| panic!("postgresql at {base} is reachable but refused us: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let dir = TempDir::new("postgres");
        let clock = Arc::new(ManualClock::new(start()));
        let options = StoreOptions {
            clock: clock.clone(),
            create: true,
            change_marker: Some(dir.path().join("keys.generation")),
        };
        let store = Store::connect(&url, options.clone()).await.unwrap();
        let raw = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        Some(Ctx::assemble(
            store,
            clock,
            raw,
            dir,
            url,
            options,
            Some((schema, base)),
        ))
    }

    fn assemble(
        store: Store,
        clock: Arc<ManualClock>,
        raw: AnyPool,
        dir: TempDir,
        url: String,
        options: StoreOptions,
        pg_schema: Option<(String, String)>,
    ) -> Ctx {
        Ctx {
            store,
            clock,
            minter: minter(),
            rng: std::sync::Mutex::new(StdRng::seed_from_u64(42)),
            raw,
            dir,
            url,
            options,
            pg_schema,
        }
    }

    /// Closes the pools and drops the PostgreSQL schema.
    pub async fn finish(self) {
        self.store.close().await;
        self.raw.close().await;
        if let Some((schema, base)) = &self.pg_schema {
            let admin = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(base)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// A second store on the same database, as another process would open it.
    pub async fn reopen(&self) -> Store {
        match self.backend() {
            Backend::Sqlite => Store::open(self.dir.path(), self.options.clone())
                .await
                .unwrap(),
            Backend::Postgres => Store::connect(&self.url, self.options.clone())
                .await
                .unwrap(),
        }
    }

    pub async fn create(&self, new: NewKey) -> (custos_store::KeyRecord, SecretString) {
        let mut rng = self.rng.lock().unwrap().clone();
        let fut = self
            .store
            .keys()
            .create(&self.minter, new, &cli("alice"), &mut rng);
        // Advance the shared RNG as if it had been used in place.
        *self.rng.lock().unwrap() = rng;
        fut.await.unwrap()
    }

    pub async fn rotate(
        &self,
        id: KeyId,
        grace: Duration,
        rotation_id: Option<&str>,
    ) -> Result<(custos_store::KeyRecord, SecretString), StoreError> {
        let mut rng = self.rng.lock().unwrap().clone();
        let fut =
            self.store
                .keys()
                .rotate(&self.minter, id, grace, rotation_id, &cli("bob"), &mut rng);
        *self.rng.lock().unwrap() = rng;
        fut.await
    }

    pub async fn lookup_code(&self, secret: &SecretString) -> &'static str {
        let snapshot = self.store.keys().load_auth_snapshot().await.unwrap();
        let parsed = custos_auth::key::parse(secret.expose_secret()).unwrap();
        let hash = self.minter.hasher().hash(&parsed);
        snapshot.lookup(&hash, self.clock_now()).code()
    }

    pub fn clock_now(&self) -> SystemTime {
        custos_types::Clock::now(&*self.clock)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.raw)
            .await
            .unwrap()
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.raw)
            .await
            .unwrap();
    }

    /// Makes every insert into `table` fail.
    pub async fn fail_inserts_into(&self, table: &str) {
        match self.backend() {
            Backend::Sqlite => {
                self.exec(&format!(
                    "CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} \
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                ))
                .await;
            }
            Backend::Postgres => {
                self.exec(
                    "CREATE OR REPLACE FUNCTION fail_now() RETURNS trigger LANGUAGE plpgsql \
                     AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
                )
                .await;
                self.exec(&format!(
                    "CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION fail_now()"
                ))
                .await;
            }
        }
    }

    pub async fn stop_failing(&self, table: &str) {
        match self.backend() {
            Backend::Sqlite => self.exec(&format!("DROP TRIGGER fail_{table}")).await,
            Backend::Postgres => {
                self.exec(&format!("DROP TRIGGER fail_{table} ON {table}"))
                    .await;
            }
        }
    }

    /// Every value of every column of every table, as text.
    pub async fn all_stored_text(&self) -> Vec<String> {
        let (tables_sql, columns_sql) = match self.backend() {
            Backend::Sqlite => (
                "SELECT name FROM sqlite_master WHERE type = 'table'",
                "SELECT name FROM pragma_table_info($1)",
            ),
            Backend::Postgres => (
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema = current_schema()",
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
            ),
        };
        let tables: Vec<String> = sqlx::query_scalar(tables_sql)
            .fetch_all(&self.raw)
            .await
            .unwrap();
        assert!(tables.iter().any(|t| t == "key_secrets"), "{tables:?}");
        let mut out = Vec::new();
        for table in tables {
            let columns: Vec<String> = sqlx::query_scalar(columns_sql)
                .bind(&table)
                .fetch_all(&self.raw)
                .await
                .unwrap();
            for column in columns {
                // PostgreSQL casts anything to text. SQLite values are read
                // as bytes: the migrations table holds a binary checksum
                // and a datetime the Any driver cannot decode.
                let select = match self.backend() {
                    Backend::Sqlite => {
                        format!("SELECT CAST(\"{column}\" AS BLOB) FROM \"{table}\"")
                    }
                    Backend::Postgres => {
                        format!("SELECT CAST(\"{column}\" AS TEXT) FROM \"{table}\"")
                    }
                };
                let rows = sqlx::query(sqlx::AssertSqlSafe(select))
                    .fetch_all(&self.raw)
                    .await
                    .unwrap();
                for row in rows {
                    let value = match self.backend() {
                        Backend::Sqlite => row
                            .try_get::<Option<Vec<u8>>, _>(0)
                            .unwrap()
                            .map(|v| String::from_utf8_lossy(&v).into_owned()),
                        Backend::Postgres => row.try_get::<Option<String>, _>(0).unwrap(),
                    };
                    out.extend(value);
                }
            }
        }
        out
    }
}

/// Asserts that no stored value contains the secret or its random part.
pub async fn assert_not_stored(ctx: &Ctx, secret: &SecretString) {
    let s = secret.expose_secret();
    let random = &s[custos_auth::key::PREFIX.len()..custos_auth::key::PREFIX.len() + 32];
    let cells = ctx.all_stored_text().await;
    assert!(cells.len() > 10, "the scan saw too little: {cells:?}");
    for cell in &cells {
        assert!(!cell.contains(s), "secret stored: {cell}");
        // The masked form shows 4 random characters; no 12-character run of
        // the random part may appear anywhere.
        for w in random.as_bytes().windows(12) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!cell.contains(w), "part of the secret stored: {cell}");
        }
    }
}

// ---------------------------------------------------------------------------
// Scenarios. Each takes a fresh context.
// ---------------------------------------------------------------------------

pub async fn create_get_list(ctx: &Ctx) {
    let (rec, secret) = ctx.create(new_key("ranking")).await;
    assert!(custos_auth::key::parse(secret.expose_secret()).is_ok());
    assert!(rec.id.as_str().starts_with("key_"));
    assert_eq!(rec.name, "ranking");
    assert_eq!(rec.team.as_deref(), Some("search"));
    assert_eq!(rec.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(rec.created_at, start());
    assert_eq!(rec.created_by, cli("alice"));
    assert_eq!(rec.version, 1);
    assert_eq!(rec.masked, custos_auth::key::mask(secret.expose_secret()));
    assert_eq!(rec.state(ctx.clock_now()), KeyState::Active);
    assert_eq!(
        ctx.store.keys().get(&rec.id).await.unwrap(),
        Some(rec.clone())
    );
    let missing = KeyId::parse("key_0000000000000000").unwrap();
    assert_eq!(ctx.store.keys().get(&missing).await.unwrap(), None);

    let mut other = new_key("Billing Export");
    other.owner = "bob@example.com".into();
    other.team = None;
    other.description = "100%_done".into();
    ctx.clock.advance(Duration::from_secs(1));
    let (other, _) = ctx.create(other).await;

    let keys = ctx.store.keys();
    let all = keys.list(&ListFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        [rec.id, other.id]
    );
    let by_owner = keys
        .list(&ListFilter {
            owner: Some("bob@example.com".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_owner, std::slice::from_ref(&other));
    let by_team = keys
        .list(&ListFilter {
            team: Some("search".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_team, std::slice::from_ref(&rec));
    for (needle, want) in [
        ("BILLING", vec![other.id]),
        ("rank", vec![rec.id]),
        ("%_d", vec![other.id]),
        // Key IDs contain `_` too: it matches literally, not as a wildcard.
        ("_", vec![rec.id, other.id]),
        (rec.id.as_str(), vec![rec.id]),
        ("example.com", vec![rec.id, other.id]),
        ("nothing", vec![]),
    ] {
        let found = keys
            .list(&ListFilter {
                search: Some(needle.into()),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            found.iter().map(|r| r.id).collect::<Vec<_>>(),
            want,
            "{needle}"
        );
    }
    let page = keys
        .list(&ListFilter {
            limit: Some(1),
            offset: 1,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page, [other]);
}

pub async fn least_privilege_scope_round_trips(ctx: &Ctx) {
    let mut new = new_key("no-models");
    new.scope = Scope::default();
    let (rec, secret) = ctx.create(new).await;
    assert!(rec.scope.models.is_empty());
    let snapshot = ctx.store.keys().load_auth_snapshot().await.unwrap();
    let hash = ctx
        .minter
        .hasher()
        .hash(&custos_auth::key::parse(secret.expose_secret()).unwrap());
    let Lookup::Valid(entry) = snapshot.lookup(&hash, ctx.clock_now()) else {
        panic!("expected a valid key");
    };
    assert_eq!(entry.key.id, rec.id);
    assert_eq!(entry.issued_at, rec.secret_created_at);
    assert_eq!(entry.not_after, None);
    assert!(entry.key.scope.models.is_empty());
    let denied = entry.key.scope.check(&AccessRequest {
        model: Some("gpt-4o"),
        capability: Capability::Chat,
        stream: false,
        client_ip: None,
    });
    assert!(denied.is_err());
}

pub async fn update_returns_before_and_after(ctx: &Ctx) {
    let (rec, _) = ctx.create(new_key("svc")).await;
    ctx.clock.advance(Duration::from_secs(60));
    let generation = ctx.store.keys().generation().await.unwrap();
    let update = KeyUpdate {
        name: Some("svc-renamed".into()),
        team: Some(None),
        scope: ScopeUpdate {
            models: Some(ModelScope::parse_list("gpt-4o, claude-*").unwrap()),
            rpm: Some(Some(60)),
            budget: Some(Some(TokenBudget {
                tokens: 1_000_000,
                period: BudgetPeriod::Month,
            })),
            ..ScopeUpdate::default()
        },
        expected_version: Some(1),
        ..KeyUpdate::default()
    };
    let updated = ctx
        .store
        .keys()
        .update(&rec.id, &update, &api_actor())
        .await
        .unwrap();
    assert_eq!(updated.before, rec);
    assert_eq!(updated.after.name, "svc-renamed");
    assert_eq!(updated.after.team, None);
    assert_eq!(updated.after.scope.rpm, Some(60));
    assert!(updated.after.scope.models.allows("claude-3-opus"));
    // Untouched scope fields stay.
    assert_eq!(updated.after.scope.capabilities, rec.scope.capabilities);
    assert_eq!(updated.after.version, 2);
    assert_eq!(updated.after.updated_at, start() + Duration::from_secs(60));
    assert_eq!(updated.changed, ["name", "scope", "team"]);
    assert_eq!(ctx.store.keys().generation().await.unwrap(), generation + 1);

    let events = ctx.store.outbox_pending(100).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "key.updated");
    let event = last.key_event().unwrap();
    assert_eq!(event.kind, KeyEventKind::Updated);
    assert_eq!(event.actor, api_actor());
    assert_eq!(event.changes["name"].before, "svc");
    assert_eq!(event.changes["name"].after, "svc-renamed");
    assert_eq!(event.changes["team"].after, serde_json::Value::Null);
    assert_eq!(event.changes["scope"].after["rpm"], 60);
    assert!(!event.changes.contains_key("owner"));

    // A stale version is refused, and nothing changes.
    let err = ctx
        .store
        .keys()
        .update(&rec.id, &update, &api_actor())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionConflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    // A no-op update writes nothing.
    let noop = ctx
        .store
        .keys()
        .update(
            &rec.id,
            &KeyUpdate {
                name: Some("svc-renamed".into()),
                ..KeyUpdate::default()
            },
            &api_actor(),
        )
        .await
        .unwrap();
    assert!(noop.changed.is_empty());
    assert_eq!(noop.before, noop.after);
    assert_eq!(
        ctx.store.outbox_pending(100).await.unwrap().len(),
        events.len()
    );
    assert_eq!(ctx.store.keys().generation().await.unwrap(), generation + 1);
    // Validation names the field.
    let err = ctx
        .store
        .keys()
        .update(
            &rec.id,
            &KeyUpdate {
                name: Some(String::new()),
                ..KeyUpdate::default()
            },
            &api_actor(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "name: is 0 bytes long, expected 1 to 128");
    let missing = KeyId::parse("key_0000000000000000").unwrap();
    let err = ctx
        .store
        .keys()
        .update(&missing, &KeyUpdate::default(), &api_actor())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "key key_0000000000000000 does not exist");
}

pub async fn rotate_with_grace(ctx: &Ctx) {
    let (rec, old) = ctx.create(new_key("svc")).await;
    ctx.clock.advance(Duration::from_secs(10));
    let (after, new) = ctx
        .rotate(rec.id, Duration::from_secs(3600), None)
        .await
        .unwrap();
    assert_eq!(after.id, rec.id);
    assert_ne!(old.expose_secret(), new.expose_secret());
    assert_eq!(after.masked, custos_auth::key::mask(new.expose_secret()));
    assert_eq!(after.secret_created_at, start() + Duration::from_secs(10));
    assert_eq!(after.grace_until, Some(start() + Duration::from_secs(3610)));
    assert_eq!(after.version, 2);
    assert_eq!(ctx.lookup_code(&old).await, "valid");
    assert_eq!(ctx.lookup_code(&new).await, "valid");
    ctx.clock.advance(Duration::from_secs(3599));
    assert_eq!(ctx.lookup_code(&old).await, "valid");
    ctx.clock.advance(Duration::from_secs(1));
    assert_eq!(ctx.lookup_code(&old).await, "key_rotated_out");
    assert_eq!(ctx.lookup_code(&new).await, "valid");
    let now = ctx.store.keys().get(&rec.id).await.unwrap().unwrap();
    assert_eq!(now.grace_until, None);

    let event = ctx
        .store
        .outbox_pending(100)
        .await
        .unwrap()
        .last()
        .unwrap()
        .key_event()
        .unwrap();
    assert_eq!(event.kind, KeyEventKind::Rotated);
    assert_eq!(event.actor, cli("bob"));
    assert_eq!(event.changes["secret"].before, rec.masked.as_str());
    assert_eq!(event.changes["secret"].after, after.masked.as_str());
    assert_eq!(event.changes["grace_ms"].after, 3_600_000);
    assert_not_stored(ctx, &old).await;
    assert_not_stored(ctx, &new).await;
}

pub async fn rotate_with_zero_grace(ctx: &Ctx) {
    let (rec, old) = ctx.create(new_key("svc")).await;
    let (_, new) = ctx.rotate(rec.id, Duration::ZERO, None).await.unwrap();
    assert_eq!(ctx.lookup_code(&old).await, "key_rotated_out");
    assert_eq!(ctx.lookup_code(&new).await, "valid");
}

pub async fn rotate_is_idempotent_per_rotation_id(ctx: &Ctx) {
    let (rec, old) = ctx.create(new_key("svc")).await;
    let rid = "5b0f7f0e-4a53-4a8e-b3a4-9d7a3f3c2e10";
    let generation = ctx.store.keys().generation().await.unwrap();
    let (first_rec, first) = ctx
        .rotate(rec.id, Duration::from_secs(60), Some(rid))
        .await
        .unwrap();
    ctx.clock.advance(Duration::from_secs(5));
    // The retry: a different grace and a different RNG state change nothing.
    let (second_rec, second) = ctx
        .rotate(rec.id, Duration::from_secs(999), Some(rid))
        .await
        .unwrap();
    assert_eq!(first.expose_secret(), second.expose_secret());
    assert_eq!(first_rec, second_rec);
    assert_eq!(ctx.store.keys().generation().await.unwrap(), generation + 1);
    let id = rec.id.as_str();
    assert_eq!(
        ctx.count(&format!(
            "SELECT COUNT(*) FROM key_secrets WHERE key_id = '{id}' AND not_after IS NULL"
        ))
        .await,
        1
    );
    assert_eq!(
        ctx.count(&format!(
            "SELECT COUNT(*) FROM key_secrets WHERE key_id = '{id}'"
        ))
        .await,
        2
    );
    assert_eq!(
        ctx.count("SELECT COUNT(*) FROM outbox WHERE kind = 'key.rotated'")
            .await,
        1
    );
    assert_eq!(ctx.lookup_code(&first).await, "valid");
    assert_eq!(ctx.lookup_code(&old).await, "valid");
    // The raw rotation ID is stored nowhere.
    for cell in ctx.all_stored_text().await {
        assert!(!cell.contains(rid), "rotation id stored: {cell}");
    }
    assert_not_stored(ctx, &first).await;

    // A different rotation ID rotates again; the first one can no longer be
    // replayed.
    let (_, third) = ctx
        .rotate(
            rec.id,
            Duration::from_secs(60),
            Some("c0ffee00-0000-4000-8000-000000000001"),
        )
        .await
        .unwrap();
    assert_ne!(third.expose_secret(), first.expose_secret());
    let err = ctx
        .rotate(rec.id, Duration::from_secs(60), Some(rid))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::RotationSuperseded { .. }),
        "{err}"
    );
    // Retrying the latest rotation still works…
    let third_rid = "c0ffee00-0000-4000-8000-000000000001";
    let (_, again) = ctx
        .rotate(rec.id, Duration::ZERO, Some(third_rid))
        .await
        .unwrap();
    assert_eq!(again.expose_secret(), third.expose_secret());
    // …unless the derived secret no longer matches what was stored (a
    // changed pepper or key format): then it says so instead of handing out
    // a secret that does not work.
    ctx.exec(&format!(
        "UPDATE key_secrets SET hash = '{}' WHERE key_id = '{id}' AND not_after IS NULL",
        "f".repeat(64)
    ))
    .await;
    let err = ctx
        .rotate(rec.id, Duration::ZERO, Some(third_rid))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::RotationNotReproducible { .. }),
        "{err}"
    );

    // Bad rotation IDs are refused before anything is written.
    let err = ctx
        .rotate(rec.id, Duration::ZERO, Some("retry-1"))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("rotation_id: "), "{err}");
}

pub async fn overlapping_rotations_never_extend_grace(ctx: &Ctx) {
    let (rec, first) = ctx.create(new_key("svc")).await;
    let (_, second) = ctx
        .rotate(rec.id, Duration::from_secs(3600), None)
        .await
        .unwrap();
    // A rotation while the first old secret is in grace is allowed…
    ctx.clock.advance(Duration::from_secs(60));
    let (_, third) = ctx
        .rotate(rec.id, Duration::from_secs(600), None)
        .await
        .unwrap();
    assert_eq!(ctx.lookup_code(&first).await, "valid");
    assert_eq!(ctx.lookup_code(&second).await, "valid");
    // …and older graces end no later than the newest one.
    ctx.clock.advance(Duration::from_secs(600));
    assert_eq!(ctx.lookup_code(&first).await, "key_rotated_out");
    assert_eq!(ctx.lookup_code(&second).await, "key_rotated_out");
    assert_eq!(ctx.lookup_code(&third).await, "valid");
    // A leak response: grace 0 kills every older secret at once.
    let (_, fourth) = ctx
        .rotate(rec.id, Duration::from_secs(3600), None)
        .await
        .unwrap();
    let (_, fifth) = ctx.rotate(rec.id, Duration::ZERO, None).await.unwrap();
    assert_eq!(ctx.lookup_code(&third).await, "key_rotated_out");
    assert_eq!(ctx.lookup_code(&fourth).await, "key_rotated_out");
    assert_eq!(ctx.lookup_code(&fifth).await, "valid");
    let err = ctx
        .rotate(rec.id, MAX_GRACE + Duration::from_secs(1), None)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("grace: "), "{err}");
}

pub async fn revocation_is_final(ctx: &Ctx) {
    let (rec, old) = ctx.create(new_key("svc")).await;
    let (_, new) = ctx
        .rotate(rec.id, Duration::from_secs(3600), None)
        .await
        .unwrap();
    ctx.clock.advance(Duration::from_secs(5));
    let out = ctx
        .store
        .keys()
        .revoke(&rec.id, &api_actor(), "leaked in a ci log")
        .await
        .unwrap();
    assert!(!out.already_revoked);
    let revocation = out.record.revoked.clone().unwrap();
    assert_eq!(revocation.at, start() + Duration::from_secs(5));
    assert_eq!(revocation.by, api_actor());
    assert_eq!(revocation.reason, "leaked in a ci log");
    assert_eq!(out.record.state(ctx.clock_now()), KeyState::Revoked);
    // Both the current and the in-grace secret stop at once.
    assert_eq!(ctx.lookup_code(&new).await, "key_revoked");
    assert_eq!(ctx.lookup_code(&old).await, "key_revoked");

    let keys = ctx.store.keys();
    let err = keys
        .update(&rec.id, &KeyUpdate::default(), &cli("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::KeyRevoked { .. }), "{err}");
    let err = ctx.rotate(rec.id, Duration::ZERO, None).await.unwrap_err();
    assert_eq!(err.to_string(), format!("key {} is revoked", rec.id));
    let events = ctx.store.outbox_pending(100).await.unwrap().len();
    let again = keys.revoke(&rec.id, &cli("x"), "again").await.unwrap();
    assert!(again.already_revoked);
    assert_eq!(again.record.revoked.unwrap().reason, "leaked in a ci log");
    assert_eq!(ctx.store.outbox_pending(100).await.unwrap().len(), events);
    let event = ctx
        .store
        .outbox_pending(100)
        .await
        .unwrap()
        .last()
        .unwrap()
        .key_event()
        .unwrap();
    assert_eq!(event.kind, KeyEventKind::Revoked);
    assert_eq!(event.reason.as_deref(), Some("leaked in a ci log"));
    let revoked = keys
        .list(&ListFilter {
            state: Some(KeyState::Revoked),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1);
}

pub async fn expiry(ctx: &Ctx) {
    let mut past = new_key("past");
    past.expires_at = Some(start());
    let mut rng = StdRng::seed_from_u64(3);
    let err = ctx
        .store
        .keys()
        .create(&ctx.minter, past, &cli("alice"), &mut rng)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "expires_at: must be in the future");

    let mut soon = new_key("soon");
    soon.expires_at = Some(start() + Duration::from_secs(3600));
    let (rec, secret) = ctx.create(soon).await;
    let (forever, _) = ctx.create(new_key("forever")).await;
    assert_eq!(ctx.lookup_code(&secret).await, "valid");
    ctx.clock.advance(Duration::from_secs(3600));
    assert_eq!(ctx.lookup_code(&secret).await, "key_expired");
    let keys = ctx.store.keys();
    let expired = keys
        .list(&ListFilter {
            state: Some(KeyState::Expired),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(expired.iter().map(|r| r.id).collect::<Vec<_>>(), [rec.id]);
    let active = keys
        .list(&ListFilter {
            state: Some(KeyState::Active),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        active.iter().map(|r| r.id).collect::<Vec<_>>(),
        [forever.id]
    );
    // Extending the expiry brings it back.
    keys.update(
        &rec.id,
        &KeyUpdate {
            expires_at: Some(Some(start() + Duration::from_secs(7200))),
            ..KeyUpdate::default()
        },
        &cli("alice"),
    )
    .await
    .unwrap();
    assert_eq!(ctx.lookup_code(&secret).await, "valid");
}

pub async fn outbox_lifecycle(ctx: &Ctx) {
    let (rec, secret) = ctx.create(new_key("svc")).await;
    let (_, rotated) = ctx.rotate(rec.id, Duration::ZERO, None).await.unwrap();
    ctx.store
        .keys()
        .revoke(&rec.id, &cli("alice"), "done")
        .await
        .unwrap();
    let pending = ctx.store.outbox_pending(100).await.unwrap();
    let kinds: Vec<&str> = pending.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["key.created", "key.rotated", "key.revoked"]);
    assert!(pending.windows(2).all(|w| w[0].id < w[1].id));
    let created = pending[0].key_event().unwrap();
    assert_eq!(created.v, 1);
    assert_eq!(created.key_id, rec.id);
    assert_eq!(created.at_ms, (START * 1000) as i64);
    assert_eq!(created.changes["name"].before, serde_json::Value::Null);
    assert_eq!(created.changes["name"].after, "svc");
    assert_eq!(created.changes["secret"].after, rec.masked.as_str());
    assert_eq!(created.changes["scope"].after["models"][0], "gpt-4o-mini");
    let generations: Vec<i64> = pending
        .iter()
        .map(|e| e.key_event().unwrap().generation)
        .collect();
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "{generations:?}"
    );
    for e in &pending {
        assert!(!e.payload_json.contains(secret.expose_secret()));
        assert!(!e.payload_json.contains(rotated.expose_secret()));
    }
    // Drain in two steps, with a redelivery in between.
    let first = ctx.store.outbox_pending(2).await.unwrap();
    assert_eq!(first.len(), 2);
    ctx.clock.advance(Duration::from_secs(1));
    let ids: Vec<i64> = first.iter().map(|e| e.id).collect();
    assert_eq!(ctx.store.outbox_mark_drained(&ids).await.unwrap(), 2);
    assert_eq!(ctx.store.outbox_mark_drained(&ids).await.unwrap(), 0);
    let rest = ctx.store.outbox_pending(100).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].kind, "key.revoked");
    assert_eq!(
        ctx.store
            .outbox_mark_drained(&[rest[0].id, 9999])
            .await
            .unwrap(),
        1
    );
    assert!(ctx.store.outbox_pending(100).await.unwrap().is_empty());
    assert_eq!(ctx.store.outbox_mark_drained(&[]).await.unwrap(), 0);
    assert_eq!(
        ctx.count("SELECT COUNT(*) FROM outbox WHERE drained_at IS NOT NULL")
            .await,
        3
    );
}

pub async fn admin_events_round_trip(ctx: &Ctx) {
    let at = custos_types::Clock::now(&*ctx.clock);
    let event = custos_store::AdminEvent::new("login.failed", api_actor(), at)
        .target("user", "alice")
        .set("attempts", 3)
        .change("state", "active", "locked")
        .reason("too many failures");
    let id = ctx.store.record_event(&event).await.unwrap();
    let pending = ctx.store.outbox_pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].kind, "login.failed");
    match pending[0].event().unwrap() {
        custos_store::OutboxEvent::Admin(back) => assert_eq!(back, event),
        other => panic!("decoded as {other:?}"),
    }
    // A key event still decodes as one.
    ctx.create(new_key("svc")).await;
    let pending = ctx.store.outbox_pending(10).await.unwrap();
    assert!(matches!(
        pending[1].event().unwrap(),
        custos_store::OutboxEvent::Key(_)
    ));
    // Bad names never reach the outbox, and key.* is reserved.
    for kind in ["key.created", "Login", "", "a b"] {
        let bad = custos_store::AdminEvent::new(kind, cli("a"), at);
        let err = ctx.store.record_event(&bad).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{kind}: {err}");
    }
    let bad = custos_store::AdminEvent::new("user.created", cli("a"), at).target("User!", "x");
    assert!(ctx.store.record_event(&bad).await.is_err());
    assert_eq!(ctx.count("SELECT COUNT(*) FROM outbox").await, 2);
}

fn incident(id: &str, model: &str, started_s: u64, status: &str) -> custos_health::Incident {
    let at =
        |s: u64| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(s)).to_string();
    serde_json::from_value(serde_json::json!({
        "id": id, "model": model, "title": format!("{model}: error rate"),
        "severity": "sev2", "severity_pinned": false, "status": status, "declared_by": null,
        "started_at": at(started_s), "updated_at": at(started_s + 60),
        "acknowledged_at": null, "acknowledged_by": null, "assignee": null,
        "resolved_at": if status == "resolved" { serde_json::Value::from(at(started_s + 600)) } else { serde_json::Value::Null },
        "resolved_by": null, "resolution": null, "recovering_since": null,
        "symptoms": [], "peak_error_rate": 0.5, "peak_p95_ms": null, "affected_keys": 3,
        "affected_keys_capped": false, "timeline": [], "timeline_dropped": 0, "postmortem": null
    }))
    .unwrap()
}

pub async fn incidents_round_trip(ctx: &Ctx) {
    use custos_health::{IncidentQuery, IncidentStore, Severity};
    let day = 1_750_000_000;
    let a = incident("INC-20250615-0001", "gpt-4o", day, "resolved");
    let mut b = incident("INC-20250615-0002", "gpt-4o", day + 3600, "open");
    let c = incident("INC-20250616-0001", "claude", day + 86_400, "acknowledged");
    for i in [&a, &b, &c] {
        IncidentStore::save(&ctx.store, i).await.unwrap();
    }
    // Saving again replaces.
    b.severity = Severity::Sev1;
    IncidentStore::save(&ctx.store, &b).await.unwrap();
    assert_eq!(
        IncidentStore::get(&ctx.store, &b.id)
            .await
            .unwrap()
            .unwrap(),
        b
    );
    assert_eq!(
        IncidentStore::get(&ctx.store, "INC-nope").await.unwrap(),
        None
    );
    let ids =
        |v: Vec<custos_health::Incident>| v.into_iter().map(|i| i.id).collect::<Vec<String>>();
    let all = ctx
        .store
        .incidents(&IncidentQuery::default())
        .await
        .unwrap();
    assert_eq!(ids(all), [c.id.as_str(), b.id.as_str(), a.id.as_str()]);
    let q = IncidentQuery {
        model: Some("gpt-4o".into()),
        active_only: true,
        ..IncidentQuery::default()
    };
    assert_eq!(ids(ctx.store.incidents(&q).await.unwrap()), [b.id.as_str()]);
    let q = IncidentQuery {
        since: Some(UNIX_EPOCH + Duration::from_secs(day + 1)),
        until: Some(UNIX_EPOCH + Duration::from_secs(day + 86_400)),
        ..IncidentQuery::default()
    };
    assert_eq!(ids(ctx.store.incidents(&q).await.unwrap()), [b.id.as_str()]);
    let q = IncidentQuery {
        severity: Some(Severity::Sev2),
        limit: Some(1),
        ..IncidentQuery::default()
    };
    assert_eq!(ids(ctx.store.incidents(&q).await.unwrap()), [c.id.as_str()]);
    assert_eq!(
        IncidentStore::max_sequence(&ctx.store, "20250615")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        IncidentStore::max_sequence(&ctx.store, "20250617")
            .await
            .unwrap(),
        0
    );
    // A body that no longer decodes is reported, not skipped.
    ctx.exec("UPDATE incidents SET body_json = '{' WHERE id = 'INC-20250615-0001'")
        .await;
    let err = IncidentStore::get(&ctx.store, &a.id).await.unwrap_err();
    assert!(
        matches!(err, custos_health::StoreError::Corrupt { .. }),
        "{err}"
    );
}

pub async fn incident_commands_are_applied_once_in_order(ctx: &Ctx) {
    use custos_store::CommandOutcome;
    let actor = api_actor();
    let first = ctx
        .store
        .submit_incident_command("INC-1", "acknowledge", &actor, &serde_json::json!({}))
        .await
        .unwrap();
    let second = ctx
        .store
        .submit_incident_command(
            "INC-1",
            "note",
            &cli("bob"),
            &serde_json::json!({"text": "hi"}),
        )
        .await
        .unwrap();
    let pending = ctx.store.pending_incident_commands(10).await.unwrap();
    assert_eq!(
        pending.iter().map(|c| c.id).collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(pending[0].actor, actor);
    assert_eq!(pending[1].args["text"], "hi");
    assert_eq!(
        ctx.store.incident_command_outcome(first).await.unwrap(),
        None
    );
    let applied = CommandOutcome::Applied(serde_json::json!({"id": "INC-1"}));
    assert!(
        ctx.store
            .finish_incident_command(first, &applied)
            .await
            .unwrap()
    );
    // The first outcome stays.
    let refused = CommandOutcome::Refused("already acknowledged".into());
    assert!(
        !ctx.store
            .finish_incident_command(first, &refused)
            .await
            .unwrap()
    );
    assert!(
        ctx.store
            .finish_incident_command(second, &refused)
            .await
            .unwrap()
    );
    assert_eq!(
        ctx.store.incident_command_outcome(first).await.unwrap(),
        Some(applied)
    );
    assert_eq!(
        ctx.store.incident_command_outcome(second).await.unwrap(),
        Some(refused)
    );
    assert!(
        ctx.store
            .pending_incident_commands(10)
            .await
            .unwrap()
            .is_empty()
    );
    // Finished commands go a day after they finished; pending ones stay.
    let third = ctx
        .store
        .submit_incident_command("INC-1", "resolve", &actor, &serde_json::json!({}))
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    ctx.clock.advance(day);
    assert_eq!(ctx.store.purge_incident_commands(day).await.unwrap(), 0);
    ctx.clock.advance(Duration::from_secs(1));
    assert_eq!(ctx.store.purge_incident_commands(day).await.unwrap(), 2);
    assert_eq!(
        ctx.store.incident_command_outcome(first).await.unwrap(),
        None
    );
    let pending = ctx.store.pending_incident_commands(10).await.unwrap();
    assert_eq!(pending.iter().map(|c| c.id).collect::<Vec<_>>(), [third]);
    assert_eq!(ctx.store.purge_incident_commands(day).await.unwrap(), 0);
    assert_eq!(ctx.count("SELECT COUNT(*) FROM incident_commands").await, 1);
}

pub async fn minute_aggregates_round_trip(ctx: &Ctx) {
    let now = custos_types::Clock::now(&*ctx.clock);
    let minute = |back: u64| {
        let t = now - Duration::from_secs(back * 60);
        let s = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        UNIX_EPOCH + Duration::from_secs(s - s % 60)
    };
    let agg = |model: &str, back: u64, requests: u64| custos_health::MinuteAggregate {
        minute: minute(back),
        model: model.into(),
        requests,
        successes: requests - 1,
        errors: 1,
        client_errors: 0,
        shed: 0,
        latency_p50_ms: Some(12.5),
        latency_p95_ms: Some(40.25),
        latency_p99_ms: None,
        latency_max_ms: Some(99.0),
        prompt_tokens: 100 * requests,
        completion_tokens: 7,
    };
    let rows = vec![
        agg("a", 3, 10),
        agg("a", 2, 20),
        agg("b", 2, 5),
        agg("a", 60 * 24 * 40, 1),
    ];
    ctx.store.save_minutes(&rows).await.unwrap();
    // Written twice (a retried flush): replaced, not doubled.
    ctx.store.save_minutes(&rows[1..2]).await.unwrap();
    ctx.store.save_minutes(&[]).await.unwrap();
    let got = ctx.store.minutes(None, minute(10), now).await.unwrap();
    assert_eq!(got, rows[..3].to_vec());
    let got = ctx.store.minutes(Some("b"), minute(10), now).await.unwrap();
    assert_eq!(got, rows[2..3].to_vec());
    assert_eq!(
        ctx.store
            .purge_minutes(Duration::from_secs(30 * 86_400))
            .await
            .unwrap(),
        1
    );
    assert_eq!(ctx.count("SELECT COUNT(*) FROM minute_aggregates").await, 3);
}

pub async fn outbox_rolls_back_with_the_change(ctx: &Ctx) {
    let generation = ctx.store.keys().generation().await.unwrap();
    // The create writes its key row and its event, then fails on the
    // secret row: all of it must roll back.
    ctx.fail_inserts_into("key_secrets").await;
    let mut rng = StdRng::seed_from_u64(9);
    let err = ctx
        .store
        .keys()
        .create(&ctx.minter, new_key("doomed"), &cli("alice"), &mut rng)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(ctx.count("SELECT COUNT(*) FROM keys").await, 0);
    assert_eq!(ctx.count("SELECT COUNT(*) FROM outbox").await, 0);
    assert_eq!(ctx.store.keys().generation().await.unwrap(), generation);
    ctx.stop_failing("key_secrets").await;

    // The revoke changes the key row and then fails writing the event: the
    // key must stay unrevoked.
    let (rec, secret) = ctx.create(new_key("svc")).await;
    ctx.fail_inserts_into("outbox").await;
    let err = ctx
        .store
        .keys()
        .revoke(&rec.id, &cli("alice"), "nope")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    ctx.stop_failing("outbox").await;
    let after = ctx.store.keys().get(&rec.id).await.unwrap().unwrap();
    assert_eq!(after, rec);
    assert_eq!(ctx.lookup_code(&secret).await, "valid");
    assert_eq!(ctx.count("SELECT COUNT(*) FROM outbox").await, 1);
}

pub async fn touch_last_used_in_batches(ctx: &Ctx) {
    let (a, _) = ctx.create(new_key("a")).await;
    let (b, _) = ctx.create(new_key("b")).await;
    let (c, _) = ctx.create(new_key("c")).await;
    let t = |s: u64| start() + Duration::from_secs(s);
    let unknown = KeyId::parse("key_0000000000000000").unwrap();
    let keys = ctx.store.keys();
    let changed = keys
        .touch_last_used(&[(a.id, t(10)), (b.id, t(20)), (a.id, t(30)), (unknown, t(5))])
        .await
        .unwrap();
    assert_eq!(changed, 2);
    assert_eq!(
        keys.get(&a.id).await.unwrap().unwrap().last_used_at,
        Some(t(30))
    );
    assert_eq!(
        keys.get(&b.id).await.unwrap().unwrap().last_used_at,
        Some(t(20))
    );
    assert_eq!(keys.get(&c.id).await.unwrap().unwrap().last_used_at, None);
    // Never backwards.
    let changed = keys
        .touch_last_used(&[(a.id, t(15)), (b.id, t(25))])
        .await
        .unwrap();
    assert_eq!(changed, 1);
    assert_eq!(
        keys.get(&a.id).await.unwrap().unwrap().last_used_at,
        Some(t(30))
    );
    assert_eq!(
        keys.get(&b.id).await.unwrap().unwrap().last_used_at,
        Some(t(25))
    );
    assert_eq!(keys.touch_last_used(&[]).await.unwrap(), 0);
    // A large batch spans several statements in one transaction.
    let mut big = Vec::new();
    for i in 0..1200u64 {
        big.push((if i % 2 == 0 { a.id } else { c.id }, t(100 + i)));
    }
    assert_eq!(keys.touch_last_used(&big).await.unwrap(), 2);
    assert_eq!(
        keys.get(&c.id).await.unwrap().unwrap().last_used_at,
        Some(t(1299))
    );
    // No lifecycle event, and no generation bump: last use is not an
    // authentication input.
    assert_eq!(ctx.count("SELECT COUNT(*) FROM outbox").await, 3);
}

pub async fn usage_counters(ctx: &Ctx) {
    let (a, _) = ctx.create(new_key("a")).await;
    let (b, _) = ctx.create(new_key("b")).await;
    let day = Duration::from_secs(86_400);
    // START is 2025-01-01; move to 2025-02-10T12:00Z.
    let feb10 = start() + day * 40 + Duration::from_secs(12 * 3600);
    ctx.clock.set(feb10);
    let keys = ctx.store.keys();
    let unknown = KeyId::parse("key_0000000000000000").unwrap();
    keys.add_usage(&[
        UsageDelta {
            key_id: a.id,
            at: feb10,
            tokens: 100,
        },
        UsageDelta {
            key_id: a.id,
            at: feb10 - Duration::from_secs(3600),
            tokens: 50,
        },
        UsageDelta {
            key_id: a.id,
            at: feb10 - day * 3,
            tokens: 7,
        },
        UsageDelta {
            key_id: a.id,
            at: feb10 - day * 20,
            tokens: 1000,
        },
        UsageDelta {
            key_id: b.id,
            at: feb10,
            tokens: 1,
        },
        UsageDelta {
            key_id: unknown,
            at: feb10,
            tokens: 5,
        },
    ])
    .await
    .unwrap();
    keys.add_usage(&[UsageDelta {
        key_id: a.id,
        at: feb10,
        tokens: 2,
    }])
    .await
    .unwrap();
    let today = keys
        .usage_in_period(&a.id, BudgetPeriod::Day)
        .await
        .unwrap();
    assert_eq!(today.tokens, 152);
    assert_eq!(today.start, start() + day * 40);
    let month = keys
        .usage_in_period(&a.id, BudgetPeriod::Month)
        .await
        .unwrap();
    assert_eq!(month.tokens, 159);
    assert_eq!(month.start, start() + day * 31);
    assert_eq!(
        keys.usage_in_period(&b.id, BudgetPeriod::Month)
            .await
            .unwrap()
            .tokens,
        1
    );
    assert_eq!(
        keys.usage_in_period(&unknown, BudgetPeriod::Day)
            .await
            .unwrap()
            .tokens,
        0
    );
    assert_eq!(ctx.count("SELECT COUNT(*) FROM usage_counters").await, 4);
}

pub async fn due_for_rotation(ctx: &Ctx) {
    let day = Duration::from_secs(86_400);
    let (old, _) = ctx.create(new_key("old")).await;
    ctx.clock.advance(day * 50);
    let (young, _) = ctx.create(new_key("young")).await;
    let (revoked, _) = ctx.create(new_key("revoked")).await;
    ctx.clock.advance(day * 30);
    ctx.store
        .keys()
        .revoke(&revoked.id, &cli("alice"), "")
        .await
        .unwrap();
    // Policy: 90 days, flag 14 days ahead. `old` is 80 days old, `young` 30.
    let due = |within: u32| ListFilter {
        due_for_rotation: Some(RotationDue {
            max_age: day * 90,
            within: day * within,
        }),
        ..ListFilter::default()
    };
    let keys = ctx.store.keys();
    let ids = |v: Vec<custos_store::KeyRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(keys.list(&due(14)).await.unwrap()), [old.id]);
    assert_eq!(ids(keys.list(&due(5)).await.unwrap()), Vec::<KeyId>::new());
    assert_eq!(ids(keys.list(&due(61)).await.unwrap()), [old.id, young.id]);
    // Rotating resets the age.
    ctx.rotate(old.id, Duration::ZERO, None).await.unwrap();
    assert_eq!(ids(keys.list(&due(14)).await.unwrap()), Vec::<KeyId>::new());
}

pub async fn snapshot_skips_unreadable_keys(ctx: &Ctx) {
    let (bad, bad_secret) = ctx.create(new_key("bad")).await;
    let (good, good_secret) = ctx.create(new_key("good")).await;
    ctx.exec(&format!(
        "UPDATE keys SET scope_json = '{{\"models\": 5}}' WHERE id = '{}'",
        bad.id
    ))
    .await;
    let snapshot = ctx.store.keys().load_auth_snapshot().await.unwrap();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot.unreadable.len(), 1);
    assert_eq!(snapshot.unreadable[0].0, bad.id);
    assert!(snapshot.unreadable[0].1.starts_with("scope: "));
    assert_eq!(ctx.lookup_code(&bad_secret).await, "unknown_key");
    assert_eq!(ctx.lookup_code(&good_secret).await, "valid");
    assert_eq!(
        snapshot.generation,
        ctx.store.keys().generation().await.unwrap()
    );
    // Reading the damaged key itself is a typed error, not a panic.
    let err = ctx.store.keys().get(&bad.id).await.unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "stored keys row {} is unreadable: scope: ",
            bad.id
        )),
        "{err}"
    );
    let _ = good;
}

pub async fn change_marker_signals_other_processes(ctx: &Ctx) {
    let watcher = ctx.store.change_watcher().unwrap();
    assert!(!watcher.changed());
    let (rec, secret) = ctx.create(new_key("svc")).await;
    assert!(watcher.changed());
    assert!(!watcher.changed());
    let marker = std::fs::read_to_string(watcher.path()).unwrap();
    let generation = ctx.store.keys().generation().await.unwrap();
    assert_eq!(marker.lines().next().unwrap(), generation.to_string());

    // Another process (the CLI) revokes the key through its own store.
    let cli_store = ctx.reopen().await;
    // Opening rewrites the marker: an extra reload, never a missed one.
    let _ = watcher.changed();
    cli_store
        .keys()
        .revoke(&rec.id, &cli("ops"), "rotated out of band")
        .await
        .unwrap();
    cli_store.close().await;
    assert!(watcher.changed());
    assert_eq!(ctx.lookup_code(&secret).await, "key_revoked");
    assert!(!watcher.changed());
    // Reads and usage writes do not signal.
    ctx.store.keys().list(&ListFilter::default()).await.unwrap();
    ctx.store
        .keys()
        .touch_last_used(&[(rec.id, ctx.clock_now())])
        .await
        .unwrap();
    assert!(!watcher.changed());
    // A failed reload can ask to be told again.
    watcher.invalidate();
    assert!(watcher.changed());
    assert!(!watcher.changed());
    // Many quick changes: every one is seen.
    for i in 0..20 {
        ctx.store
            .keys()
            .update(
                &ctx.create(new_key(&format!("k{i}"))).await.0.id,
                &KeyUpdate {
                    description: Some(format!("change {i}")),
                    ..KeyUpdate::default()
                },
                &cli("ops"),
            )
            .await
            .unwrap();
        assert!(watcher.changed(), "change {i}");
    }
    assert_eq!(ctx.store.signal_failures(), 0);
}

pub async fn secrets_are_never_stored(ctx: &Ctx) {
    let (rec, first) = ctx.create(new_key("svc")).await;
    let (_, second) = ctx
        .rotate(
            rec.id,
            Duration::from_secs(60),
            Some("9c8b7a6f-0000-4000-8000-00000000abcd"),
        )
        .await
        .unwrap();
    let (_, third) = ctx.rotate(rec.id, Duration::ZERO, None).await.unwrap();
    ctx.store
        .keys()
        .revoke(&rec.id, &cli("alice"), "test")
        .await
        .unwrap();
    for s in [&first, &second, &third] {
        assert_not_stored(ctx, s).await;
    }
    // What is stored is the peppered hash.
    let hash = ctx
        .minter
        .hasher()
        .hash(&custos_auth::key::parse(third.expose_secret()).unwrap())
        .to_hex();
    assert_eq!(
        ctx.count(&format!(
            "SELECT COUNT(*) FROM key_secrets WHERE hash = '{hash}'"
        ))
        .await,
        1
    );
    // The scan does read the secret table: the hash is among what it saw.
    assert!(ctx.all_stored_text().await.iter().any(|c| c == &hash));
    // And errors or debug output never carry it.
    assert!(!format!("{rec:?}").contains(third.expose_secret()));
}

pub async fn concurrent_retries_make_one_secret(ctx: &Ctx) {
    let (rec, _) = ctx.create(new_key("svc")).await;
    // Two processes retry the same rotation at the same time.
    let other = ctx.reopen().await;
    let rid = "0d9c2f4e-1111-4222-8333-944455556666";
    let mut rng_a = StdRng::seed_from_u64(100);
    let mut rng_b = StdRng::seed_from_u64(200);
    let a = ctx.store.keys().rotate(
        &ctx.minter,
        rec.id,
        Duration::from_secs(60),
        Some(rid),
        &cli("a"),
        &mut rng_a,
    );
    let b = other.keys().rotate(
        &ctx.minter,
        rec.id,
        Duration::from_secs(60),
        Some(rid),
        &cli("b"),
        &mut rng_b,
    );
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.1.expose_secret(), b.1.expose_secret());
    assert_eq!(a.0.masked, b.0.masked);
    let id = rec.id.as_str();
    assert_eq!(
        ctx.count(&format!(
            "SELECT COUNT(*) FROM key_secrets WHERE key_id = '{id}'"
        ))
        .await,
        2
    );
    assert_eq!(
        ctx.count("SELECT COUNT(*) FROM outbox WHERE kind = 'key.rotated'")
            .await,
        1
    );
    // Concurrent changes to different keys from both processes all land.
    let (k1, _) = ctx.create(new_key("k1")).await;
    let (k2, _) = ctx.create(new_key("k2")).await;
    let before = ctx.store.keys().generation().await.unwrap();
    let u = |d: &str| KeyUpdate {
        description: Some(d.to_owned()),
        ..KeyUpdate::default()
    };
    let (u1, u2, u3) = (u("one"), u("two"), u("three"));
    let keys_a = ctx.store.keys();
    let keys_b = other.keys();
    let (actor_a, actor_b) = (cli("a"), cli("b"));
    let (r1, r2, r3) = tokio::join!(
        keys_a.update(&k1.id, &u1, &actor_a),
        keys_b.update(&k2.id, &u2, &actor_b),
        keys_b.update(&k1.id, &u3, &actor_b),
    );
    r1.unwrap();
    r2.unwrap();
    r3.unwrap();
    assert_eq!(ctx.store.keys().generation().await.unwrap(), before + 3);
    assert_eq!(
        ctx.count("SELECT COUNT(*) FROM outbox WHERE kind = 'key.updated'")
            .await,
        3
    );
    other.close().await;
}

pub async fn validation_errors(ctx: &Ctx) {
    let mut rng = StdRng::seed_from_u64(5);
    let keys = ctx.store.keys();
    let mut bad = new_key("x");
    bad.labels.insert("has space".into(), "v".into());
    let err = keys
        .create(&ctx.minter, bad, &cli("alice"), &mut rng)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("labels: key \"has space\""),
        "{err}"
    );
    let err = keys
        .create(&ctx.minter, new_key("x"), &cli(""), &mut rng)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "actor.name: is 0 bytes long, expected 1 to 256"
    );
    let missing = KeyId::parse("key_0000000000000000").unwrap();
    let err = ctx.rotate(missing, Duration::ZERO, None).await.unwrap_err();
    assert!(matches!(err, StoreError::KeyNotFound { .. }), "{err}");
    let err = keys.revoke(&missing, &cli("a"), "").await.unwrap_err();
    assert!(matches!(err, StoreError::KeyNotFound { .. }), "{err}");
    assert_eq!(ctx.count("SELECT COUNT(*) FROM keys").await, 0);
    assert_eq!(ctx.count("SELECT COUNT(*) FROM outbox").await, 0);
}

// ---- console users, sessions and tokens ----

fn kinds_in_outbox(pending: &[custos_store::OutboxEntry]) -> Vec<String> {
    pending.iter().map(|e| e.kind.clone()).collect()
}

async fn invite_and_redeem(
    ctx: &Ctx,
    name: &str,
    role: custos_store::Role,
) -> custos_store::UserRecord {
    use custos_store::NewInvite;
    let invite = NewInvite {
        id: format!("inv_{name}"),
        token_hash: format!("hash-{name}"),
        username: Some(name.to_owned()),
        role,
        reset: false,
        expires_at: ctx.clock_now() + Duration::from_secs(3600),
    };
    ctx.store
        .users()
        .create_invite(&invite, &cli("root"))
        .await
        .unwrap();
    ctx.store
        .users()
        .redeem_invite(
            &format!("hash-{name}"),
            &format!("usr_{name}"),
            "ignored",
            "$argon2id$fake",
            None,
        )
        .await
        .unwrap()
}

pub async fn console_invites_and_users(ctx: &Ctx) {
    use custos_store::{NewInvite, Role, UserState};
    let users = ctx.store.users();
    assert_eq!(users.count().await.unwrap(), 0);
    // The first admin's setup link: the redeemer picks the name.
    let setup = NewInvite {
        id: "inv_setup".into(),
        token_hash: "h-setup".into(),
        username: None,
        role: Role::Admin,
        reset: false,
        expires_at: ctx.clock_now() + Duration::from_secs(60),
    };
    users.create_invite(&setup, &cli("root")).await.unwrap();
    let found = users.invite("h-setup").await.unwrap().unwrap();
    assert_eq!(found.role, Role::Admin);
    assert!(found.username.is_none());
    // Bad names are refused before anything is used up.
    let err = users
        .redeem_invite("h-setup", "usr_1", "Bad Name", "$argon2id$x", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "username",
                ..
            }
        ),
        "{err}"
    );
    let admin = users
        .redeem_invite("h-setup", "usr_1", "alice", "$argon2id$x", None)
        .await
        .unwrap();
    assert_eq!(
        (admin.username.as_str(), admin.role),
        ("alice", Role::Admin)
    );
    assert_eq!(admin.state, UserState::Active);
    assert!(admin.mfa_enrolled_at.is_none());
    // A link works once.
    let again = users
        .redeem_invite("h-setup", "usr_2", "mallory", "$argon2id$x", None)
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::InviteInvalid), "{again}");
    assert!(users.invite("h-setup").await.unwrap().is_none());
    // Expired links do not work.
    let late = NewInvite {
        id: "inv_late".into(),
        token_hash: "h-late".into(),
        username: Some("bob".into()),
        role: Role::Viewer,
        reset: false,
        expires_at: ctx.clock_now() + Duration::from_secs(60),
    };
    users.create_invite(&late, &cli("root")).await.unwrap();
    ctx.clock.advance(Duration::from_secs(61));
    let err = users
        .redeem_invite("h-late", "usr_3", "", "$argon2id$x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InviteInvalid), "{err}");
    // Inviting an existing name fails; resetting a missing one fails.
    let dup = NewInvite {
        id: "inv_dup".into(),
        token_hash: "h-dup".into(),
        username: Some("alice".into()),
        ..setup.clone()
    };
    assert!(matches!(
        users.create_invite(&dup, &cli("root")).await.unwrap_err(),
        StoreError::UserExists { .. }
    ));
    let reset_missing = NewInvite {
        id: "inv_rm".into(),
        token_hash: "h-rm".into(),
        username: Some("nobody".into()),
        reset: true,
        ..setup.clone()
    };
    assert!(matches!(
        users
            .create_invite(&reset_missing, &cli("root"))
            .await
            .unwrap_err(),
        StoreError::UserNotFound { .. }
    ));
    assert_eq!(users.list().await.unwrap().len(), 1);
    assert_eq!(
        users.by_username("alice").await.unwrap().unwrap().id,
        "usr_1"
    );
    let creds = users.credentials("usr_1").await.unwrap();
    assert_eq!(creds.password_hash, "$argon2id$x");
    assert!(!format!("{creds:?}").contains("argon2id"));
    let kinds = kinds_in_outbox(&ctx.store.outbox_pending(100).await.unwrap());
    assert_eq!(
        kinds,
        ["user.setup_link_issued", "user.created", "user.invited"],
    );
}

pub async fn console_totp_enrolment_and_replay(ctx: &Ctx) {
    let user = invite_and_redeem(ctx, "carol", custos_store::Role::KeyManager).await;
    let users = ctx.store.users();
    let actor = cli("carol");
    // No step is accepted before enrolment.
    assert!(!users.accept_totp_step(&user.id, 5).await.unwrap());
    users
        .set_pending_totp(&user.id, "sealed-seed")
        .await
        .unwrap();
    let codes: Vec<String> = (0..10).map(|i| format!("code-hash-{i}")).collect();
    users
        .confirm_totp(&user.id, 100, &codes, &actor)
        .await
        .unwrap();
    let creds = users.credentials(&user.id).await.unwrap();
    assert_eq!(creds.totp_sealed.as_deref(), Some("sealed-seed"));
    assert!(creds.totp_pending_sealed.is_none());
    assert_eq!(creds.totp_last_step, Some(100));
    // Enrolled: no new pending seed, no second confirmation.
    assert!(users.set_pending_totp(&user.id, "other").await.is_err());
    assert!(
        users
            .confirm_totp(&user.id, 101, &codes, &actor)
            .await
            .is_err()
    );
    // A step is accepted once, and never an earlier one.
    assert!(!users.accept_totp_step(&user.id, 100).await.unwrap());
    assert!(users.accept_totp_step(&user.id, 101).await.unwrap());
    assert!(!users.accept_totp_step(&user.id, 101).await.unwrap());
    assert!(!users.accept_totp_step(&user.id, 99).await.unwrap());
    // Recovery codes are single-use.
    assert_eq!(users.recovery_codes_left(&user.id).await.unwrap(), 10);
    assert!(
        users
            .use_recovery_code(&user.id, "code-hash-3", &actor)
            .await
            .unwrap()
    );
    assert!(
        !users
            .use_recovery_code(&user.id, "code-hash-3", &actor)
            .await
            .unwrap()
    );
    assert!(
        !users
            .use_recovery_code(&user.id, "nope", &actor)
            .await
            .unwrap()
    );
    assert_eq!(users.recovery_codes_left(&user.id).await.unwrap(), 9);
    users
        .replace_recovery_codes(&user.id, &["fresh".to_owned()], &actor)
        .await
        .unwrap();
    assert!(
        !users
            .use_recovery_code(&user.id, "code-hash-4", &actor)
            .await
            .unwrap()
    );
    assert_eq!(users.recovery_codes_left(&user.id).await.unwrap(), 1);
    // Resetting MFA clears the seed, the codes and the sessions.
    ctx.store
        .sessions()
        .create(
            "sess-1",
            &user.id,
            custos_store::SessionStage::Full,
            ctx.clock_now() + Duration::from_secs(60),
            None,
        )
        .await
        .unwrap();
    let after = users
        .reset_mfa(&user.id, &cli("root"), "lost phone")
        .await
        .unwrap();
    assert!(after.mfa_enrolled_at.is_none());
    let creds = users.credentials(&user.id).await.unwrap();
    assert!(creds.totp_sealed.is_none() && creds.totp_last_step.is_none());
    assert_eq!(users.recovery_codes_left(&user.id).await.unwrap(), 0);
    assert!(ctx.store.sessions().get("sess-1").await.unwrap().is_none());
    let kinds = kinds_in_outbox(&ctx.store.outbox_pending(100).await.unwrap());
    for want in [
        "user.mfa_enrolled",
        "mfa.recovery_code_used",
        "user.recovery_codes_regenerated",
        "user.mfa_reset",
    ] {
        assert!(
            kinds.iter().any(|k| k == want),
            "{want} missing from {kinds:?}"
        );
    }
    // Nothing secret-looking reached the events.
    for entry in ctx.store.outbox_pending(100).await.unwrap() {
        for needle in ["sealed-seed", "code-hash", "argon2id", "fresh"] {
            assert!(
                !entry.payload_json.contains(needle),
                "{needle} in {}",
                entry.payload_json
            );
        }
    }
}

pub async fn console_lockout(ctx: &Ctx) {
    let user = invite_and_redeem(ctx, "dave", custos_store::Role::Viewer).await;
    let users = ctx.store.users();
    let lockout = Duration::from_secs(900);
    for i in 1..5 {
        let out = users
            .record_failure(&user.id, "password", 5, lockout, &cli("dave"))
            .await
            .unwrap();
        assert_eq!(out.attempts, i);
        assert!(out.locked_until.is_none());
    }
    let out = users
        .record_failure(&user.id, "totp", 5, lockout, &cli("dave"))
        .await
        .unwrap();
    assert_eq!(out.locked_until, Some(ctx.clock_now() + lockout));
    let rec = users.get(&user.id).await.unwrap().unwrap();
    assert!(rec.is_locked(ctx.clock_now()));
    assert!(!rec.is_locked(ctx.clock_now() + lockout));
    let rec = users.unlock(&user.id, &cli("root")).await.unwrap();
    assert!(!rec.is_locked(ctx.clock_now()));
    assert_eq!(rec.failed_attempts, 0);
    users
        .record_failure(&user.id, "password", 5, lockout, &cli("dave"))
        .await
        .unwrap();
    users
        .record_login(&user.id, "totp", &cli("dave"))
        .await
        .unwrap();
    let rec = users.get(&user.id).await.unwrap().unwrap();
    assert_eq!(rec.failed_attempts, 0);
    assert_eq!(rec.last_login_at, Some(ctx.clock_now()));
    let kinds = kinds_in_outbox(&ctx.store.outbox_pending(100).await.unwrap());
    assert_eq!(kinds.iter().filter(|k| *k == "login.failed").count(), 6);
    assert_eq!(kinds.iter().filter(|k| *k == "user.locked").count(), 1);
    assert!(kinds.iter().any(|k| k == "user.unlocked"));
    assert!(kinds.iter().any(|k| k == "login.succeeded"));
    assert!(matches!(
        users
            .record_failure("usr_none", "password", 5, lockout, &cli("x"))
            .await
            .unwrap_err(),
        StoreError::UserNotFound { .. }
    ));
}

pub async fn console_roles_states_and_last_admin(ctx: &Ctx) {
    use custos_store::{Role, UserState};
    let admin = invite_and_redeem(ctx, "erin", Role::Admin).await;
    let other = invite_and_redeem(ctx, "frank", Role::Viewer).await;
    let users = ctx.store.users();
    // The only admin can be neither demoted nor disabled.
    let err = users
        .set_role(&admin.id, Role::Viewer, &cli("root"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { field: "role", .. }),
        "{err}"
    );
    assert!(
        users
            .set_state(&admin.id, UserState::Disabled, &cli("root"))
            .await
            .is_err()
    );
    let promoted = users
        .set_role(&other.id, Role::Admin, &cli("root"))
        .await
        .unwrap();
    assert_eq!(promoted.role, Role::Admin);
    let demoted = users
        .set_role(&admin.id, Role::Auditor, &cli("root"))
        .await
        .unwrap();
    assert_eq!(demoted.role, Role::Auditor);
    ctx.store
        .sessions()
        .create(
            "s-frank",
            &other.id,
            custos_store::SessionStage::Full,
            ctx.clock_now() + Duration::from_secs(60),
            None,
        )
        .await
        .unwrap();
    let disabled = users
        .set_state(&admin.id, UserState::Disabled, &cli("root"))
        .await
        .unwrap();
    assert_eq!(disabled.state, UserState::Disabled);
    assert!(
        users
            .set_state(&other.id, UserState::Disabled, &cli("root"))
            .await
            .is_err()
    );
    let enabled = users
        .set_state(&admin.id, UserState::Active, &cli("root"))
        .await
        .unwrap();
    assert_eq!(enabled.state, UserState::Active);
    // A password change ends the user's other sessions.
    ctx.store
        .sessions()
        .create(
            "s-frank-2",
            &other.id,
            custos_store::SessionStage::Full,
            ctx.clock_now() + Duration::from_secs(60),
            None,
        )
        .await
        .unwrap();
    users
        .set_password(&other.id, "$argon2id$new", Some("s-frank-2"), &cli("frank"))
        .await
        .unwrap();
    assert!(ctx.store.sessions().get("s-frank").await.unwrap().is_none());
    assert!(
        ctx.store
            .sessions()
            .get("s-frank-2")
            .await
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        users
            .set_role("usr_nope", Role::Viewer, &cli("root"))
            .await
            .unwrap_err(),
        StoreError::UserNotFound { .. }
    ));
    // A password reset link for an existing user.
    let reset = custos_store::NewInvite {
        id: "inv_reset".into(),
        token_hash: "h-reset".into(),
        username: Some("frank".into()),
        role: Role::Viewer,
        reset: true,
        expires_at: ctx.clock_now() + Duration::from_secs(60),
    };
    users.create_invite(&reset, &cli("root")).await.unwrap();
    let after = users
        .redeem_invite("h-reset", "unused", "", "$argon2id$reset", None)
        .await
        .unwrap();
    assert_eq!(
        (after.id.as_str(), after.role),
        (other.id.as_str(), Role::Admin)
    );
    assert_eq!(
        users.credentials(&other.id).await.unwrap().password_hash,
        "$argon2id$reset"
    );
    assert_eq!(
        ctx.store
            .sessions()
            .count_for_user(&other.id)
            .await
            .unwrap(),
        0
    );
}

pub async fn console_sessions_and_tokens(ctx: &Ctx) {
    use custos_store::{NewToken, Role, SessionStage};
    let user = invite_and_redeem(ctx, "gina", Role::KeyManager).await;
    let sessions = ctx.store.sessions();
    let t0 = ctx.clock_now();
    sessions
        .create(
            "s1",
            &user.id,
            SessionStage::Mfa,
            t0 + Duration::from_secs(600),
            None,
        )
        .await
        .unwrap();
    let s = sessions.get("s1").await.unwrap().unwrap();
    assert_eq!(
        (s.stage, s.created_at, s.last_seen_at),
        (SessionStage::Mfa, t0, t0)
    );
    ctx.clock.advance(Duration::from_secs(5));
    sessions.touch("s1").await.unwrap();
    assert_eq!(
        sessions.get("s1").await.unwrap().unwrap().last_seen_at,
        t0 + Duration::from_secs(5)
    );
    sessions
        .create(
            "s2",
            &user.id,
            SessionStage::Full,
            t0 + Duration::from_secs(10),
            None,
        )
        .await
        .unwrap();
    ctx.clock.advance(Duration::from_secs(10));
    // s2 is past its absolute end; s1 is idle since t0+5.
    assert_eq!(sessions.purge(t0).await.unwrap(), 1);
    assert!(sessions.get("s2").await.unwrap().is_none());
    assert!(sessions.delete("s1").await.unwrap());
    assert!(!sessions.delete("s1").await.unwrap());

    let tokens = ctx.store.tokens();
    let now = ctx.clock_now();
    let new = NewToken {
        id: "tok_1".into(),
        token_hash: "th-1".into(),
        name: "deploy".into(),
        role: Role::KeyManager,
        user_id: user.id.clone(),
        expires_at: now + Duration::from_secs(3600),
    };
    let rec = tokens.create(&new, &cli("gina")).await.unwrap();
    assert_eq!(
        (rec.username.as_str(), rec.role),
        ("gina", Role::KeyManager)
    );
    assert!(rec.is_usable(now));
    assert!(!rec.is_usable(now + Duration::from_secs(3600)));
    assert_eq!(tokens.by_hash("th-1").await.unwrap().unwrap().id, "tok_1");
    assert!(tokens.by_hash("th-2").await.unwrap().is_none());
    assert_eq!(tokens.list(Some(&user.id)).await.unwrap().len(), 1);
    assert_eq!(tokens.list(Some("usr_other")).await.unwrap().len(), 0);
    tokens.touch("tok_1").await.unwrap();
    assert!(tokens.revoke("tok_1", &cli("gina")).await.unwrap());
    assert!(!tokens.revoke("tok_1", &cli("gina")).await.unwrap());
    assert!(!tokens.get("tok_1").await.unwrap().unwrap().is_usable(now));
    assert!(matches!(
        tokens.revoke("tok_x", &cli("g")).await.unwrap_err(),
        StoreError::TokenNotFound { .. }
    ));
    let bad = NewToken {
        id: "tok_2".into(),
        token_hash: "th-2".into(),
        expires_at: now,
        ..new.clone()
    };
    assert!(tokens.create(&bad, &cli("gina")).await.is_err());
    let bad = NewToken {
        id: "tok_3".into(),
        token_hash: "th-3".into(),
        name: " ".into(),
        ..new
    };
    assert!(tokens.create(&bad, &cli("gina")).await.is_err());
    let kinds = kinds_in_outbox(&ctx.store.outbox_pending(100).await.unwrap());
    assert_eq!(
        kinds.iter().filter(|k| *k == "admin_token.created").count(),
        1
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "admin_token.revoked").count(),
        1
    );
}

/// Instantiates every scenario as a `#[tokio::test]` using `$make` to build
/// the context; `$make` returns `None` to skip.
macro_rules! scenarios {
    ($make:path) => {
        scenarios!(
            $make;
            create_get_list,
            least_privilege_scope_round_trips,
            update_returns_before_and_after,
            rotate_with_grace,
            rotate_with_zero_grace,
            rotate_is_idempotent_per_rotation_id,
            overlapping_rotations_never_extend_grace,
            revocation_is_final,
            expiry,
            outbox_lifecycle,
            admin_events_round_trip,
            incidents_round_trip,
            incident_commands_are_applied_once_in_order,
            minute_aggregates_round_trip,
            outbox_rolls_back_with_the_change,
            touch_last_used_in_batches,
            usage_counters,
            due_for_rotation,
            snapshot_skips_unreadable_keys,
            change_marker_signals_other_processes,
            secrets_are_never_stored,
            concurrent_retries_make_one_secret,
            validation_errors,
            console_invites_and_users,
            console_totp_enrolment_and_replay,
            console_lockout,
            console_roles_states_and_last_admin,
            console_sessions_and_tokens,
        );
    };
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(ctx) = $make().await else { return };
                suite::$name(&ctx).await;
                ctx.finish().await;
            }
        )*
    };
}
