//! The Custos state store: scoped API keys, their usage counters and the
//! audit outbox, on an embedded SQLite file or on PostgreSQL.
//!
//! * [`Store::open`] opens `<data_dir>/custos.db` (SQLite, WAL, foreign keys,
//!   busy timeout, file mode 0600); [`Store::connect`] takes a `sqlite://` or
//!   `postgres://` URL. The same queries run on both: times are integer
//!   milliseconds, parameters are `$n`, and the only dialect difference (the
//!   outbox ID column) lives in the two migration sets under `migrations/`.
//! * [`keys::Keys`] is the key lifecycle: create, list, get, update, rotate,
//!   revoke, plus the batched `last_used` and usage writes and the
//!   [`snapshot::AuthSnapshot`] the gateway authenticates from.
//! * Every lifecycle change writes a [`outbox::KeyEvent`] into the outbox in
//!   the same transaction; the ledger drains it (see [`outbox`] for the
//!   at-least-once contract).
//! * Every key-changing commit bumps a generation counter and then rewrites
//!   the `keys.generation` marker file, which a [`ChangeWatcher`] notices with
//!   one non-blocking read of an inotify queue, or one `stat()` where inotify
//!   is unavailable (see [`watch`] for the race analysis).
//! * [`users`], [`sessions`] and [`tokens`] hold the admin console's
//!   state: users with their password hash, sealed TOTP seed and hashed
//!   recovery codes, sessions by ID hash, admin API tokens by hash. Every
//!   change writes an [`AdminEvent`] in its transaction.
//! * Secrets never reach the database: only HMAC hashes are stored, and
//!   rotation secrets are re-derived rather than kept (see [`minter`]).
//!
//! **Architecture invariant:** this crate knows nothing about HTTP; it
//! returns typed errors and takes time from an injected [`Clock`] and
//! randomness from the caller.

pub mod actor;
pub mod availability;
mod db;
pub mod error;
pub mod keys;
pub mod minter;
pub mod outbox;
pub mod sessions;
pub mod snapshot;
mod time;
pub mod tokens;
pub mod users;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use custos_types::{Clock, SystemClock};
use sqlx::AnyPool;

pub use actor::{Actor, ActorKind};
pub use availability::{CommandOutcome, IncidentCommand};
pub use error::StoreError;
pub use keys::{
    KeyRecord, KeyState, KeyUpdate, Keys, ListFilter, NewKey, PeriodUsage, Revocation,
    RevokeOutcome, RotationDue, ScopeUpdate, Updated, UsageDelta,
};
pub use minter::KeyMinter;
pub use outbox::{AdminEvent, EventTarget, KeyEvent, KeyEventKind, OutboxEntry, OutboxEvent};
pub use sessions::{SessionRecord, SessionStage, Sessions};
pub use snapshot::{AuthEntry, AuthKey, AuthSnapshot, Lookup};
pub use tokens::{NewToken, TokenRecord, Tokens};
pub use users::{
    Credentials, FailureOutcome, InviteRecord, NewInvite, Role, UserRecord, UserState, Users,
};
pub use watch::ChangeWatcher;

/// The SQLite database's file name inside the data directory.
pub const DB_FILE: &str = "custos.db";

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// How to open a store.
#[derive(Clone)]
pub struct StoreOptions {
    /// Where time comes from. Tests pass a `ManualClock`.
    pub clock: Arc<dyn Clock>,
    /// Whether a missing SQLite file (and data directory) is created. The
    /// server sets this; the CLI should not, so that a wrong `--data-dir`
    /// fails with [`StoreError::DatabaseMissing`] instead of an empty store.
    pub create: bool,
    /// The change marker file. `None` means `keys.generation` next to the
    /// SQLite file, and no marker for PostgreSQL.
    pub change_marker: Option<PathBuf>,
}

impl Default for StoreOptions {
    /// The system clock, create if missing, the default marker.
    fn default() -> Self {
        StoreOptions {
            clock: Arc::new(SystemClock),
            create: true,
            change_marker: None,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("create", &self.create)
            .field("change_marker", &self.change_marker)
            .finish_non_exhaustive()
    }
}

/// A handle on the store: a connection pool plus the clock and the change
/// marker. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    clock: Arc<dyn Clock>,
    /// The SQLite file, for error messages; `None` for PostgreSQL.
    db_path: Option<PathBuf>,
    marker: Option<PathBuf>,
    signal_failures: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("db_path", &self.db_path)
            .field("marker", &self.marker)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or with `options.create`, creates) `<data_dir>/custos.db` and
    /// applies pending migrations. The change marker defaults to
    /// `<data_dir>/keys.generation`.
    pub async fn open(data_dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let marker = options
            .change_marker
            .clone()
            .unwrap_or_else(|| data_dir.join(watch::MARKER_FILE));
        db::open_sqlite(&data_dir.join(DB_FILE), marker, options).await
    }

    /// Connects to `sqlite://PATH` or `postgres://…` and applies pending
    /// migrations. For PostgreSQL, pass `?options=-c%20search_path%3DNAME`
    /// in the URL to use a schema other than `public`.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        match scheme {
            "sqlite" => {
                let path = db::sqlite_path(url)?;
                let marker = options.change_marker.clone().unwrap_or_else(|| {
                    path.parent()
                        .unwrap_or(Path::new("."))
                        .join(watch::MARKER_FILE)
                });
                db::open_sqlite(&path, marker, options).await
            }
            "postgres" | "postgresql" => db::connect_postgres(url, options).await,
            _ => Err(StoreError::UnsupportedUrl {
                reason: format!("scheme {scheme:?} is not sqlite or postgres"),
            }),
        }
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The key lifecycle operations.
    pub fn keys(&self) -> Keys<'_> {
        Keys::new(self)
    }

    /// Console users, invitations, credentials and lockout.
    pub fn users(&self) -> Users<'_> {
        Users::new(self)
    }

    /// Console sessions.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(self)
    }

    /// Admin API tokens.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens::new(self)
    }

    /// The store clock's current time.
    pub fn now(&self) -> std::time::SystemTime {
        self.clock.now()
    }

    /// The change marker file, if this store writes one.
    pub fn change_marker(&self) -> Option<&Path> {
        self.marker.as_deref()
    }

    /// A watcher on this store's change marker, if it has one. Create it
    /// before loading the first snapshot.
    pub fn change_watcher(&self) -> Option<ChangeWatcher> {
        self.marker.as_ref().map(ChangeWatcher::new)
    }

    /// How many marker writes failed after a commit since this store was
    /// opened. Such a change is still picked up by polling
    /// [`Keys::generation`]; export this as a metric.
    pub fn signal_failures(&self) -> u64 {
        self.signal_failures.load(Ordering::Relaxed)
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes the change marker after a commit that reached `generation`.
    fn signal(&self, generation: i64) {
        if let Some(marker) = &self.marker
            && watch::write_marker(marker, generation).is_err()
        {
            self.signal_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Maps a driver error to a [`StoreError`], recognising SQLite's
    /// "not a database", corruption and busy codes.
    fn db_err(&self, e: sqlx::Error) -> StoreError {
        db::map_err(self.backend, self.db_path.as_deref(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Type-checked, never run: the server holds the store in an `Arc` and
    /// awaits its futures in handlers on a multi-threaded runtime, so the
    /// store must be `Send + Sync` and every future `Send`.
    #[allow(dead_code, reason = "a compile-time check")]
    fn store_and_futures_are_send(store: &Store, id: &custos_auth::KeyId, actor: &Actor) {
        fn is_send<T: Send>(_: T) {}
        fn is_sync<T: Send + Sync>() {}
        is_sync::<Store>();
        is_sync::<ChangeWatcher>();
        is_sync::<KeyMinter>();
        let keys = store.keys();
        let filter = ListFilter::default();
        let update = KeyUpdate::default();
        is_send(keys.list(&filter));
        is_send(keys.get(id));
        is_send(keys.update(id, &update, actor));
        is_send(keys.revoke(id, actor, ""));
        is_send(keys.touch_last_used(&[]));
        is_send(keys.add_usage(&[]));
        is_send(keys.usage_in_period(id, custos_auth::scope::BudgetPeriod::Day));
        is_send(keys.generation());
        is_send(keys.load_auth_snapshot());
        is_send(store.outbox_pending(1));
        is_send(store.outbox_mark_drained(&[]));
        is_send(store.close());
    }
}
