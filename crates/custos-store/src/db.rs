//! Opening the database: file creation and permissions for SQLite, pool
//! settings, migrations, and the mapping of driver errors.

use std::borrow::Cow;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, SqlSafeStr};

use crate::error::StoreError;
use crate::{Backend, Store, StoreOptions};

/// How long a SQLite writer waits for another process's lock.
const BUSY_TIMEOUT_MS: u32 = 5_000;

fn migrator(backend: Backend) -> Migrator {
    let files: [(i64, &str, &str); 3] = match backend {
        Backend::Sqlite => [
            (
                1,
                "keys",
                include_str!("../migrations/sqlite/0001_keys.sql"),
            ),
            (
                2,
                "availability",
                include_str!("../migrations/sqlite/0002_availability.sql"),
            ),
            (
                3,
                "console",
                include_str!("../migrations/sqlite/0003_console.sql"),
            ),
        ],
        Backend::Postgres => [
            (
                1,
                "keys",
                include_str!("../migrations/postgres/0001_keys.sql"),
            ),
            (
                2,
                "availability",
                include_str!("../migrations/postgres/0002_availability.sql"),
            ),
            (
                3,
                "console",
                include_str!("../migrations/postgres/0003_console.sql"),
            ),
        ],
    };
    Migrator::with_migrations(
        files
            .into_iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The file path of a `sqlite:` URL. In-memory databases are refused: the
/// store's guarantees (WAL, the change marker, file mode) are about files.
pub(crate) fn sqlite_path(url: &str) -> Result<PathBuf, StoreError> {
    let opts = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::UnsupportedUrl {
        reason: e.to_string(),
    })?;
    let path = opts.get_filename();
    if path.as_os_str().is_empty() || path.to_string_lossy().starts_with("file:sqlx-in-memory") {
        return Err(StoreError::UnsupportedUrl {
            reason: "in-memory sqlite is not supported, name a file".into(),
        });
    }
    Ok(path.to_path_buf())
}

/// Creates the database file with mode 0600 if it is missing (and allowed),
/// and tightens the mode of an existing file that others could read.
fn prepare_sqlite_file(path: &Path, create: bool) -> Result<(), StoreError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if meta.is_file() && mode & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700))
                    .map_err(|e| StoreError::io(path, e))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if !create {
                return Err(StoreError::DatabaseMissing { path: path.into() });
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| StoreError::io(dir, e))?;
            }
            // An empty file is a valid, empty SQLite database. SQLite gives
            // the -wal and -shm files the same mode as this one.
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => Ok(()),
                // Another process created it first.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(StoreError::io(path, e)),
            }
        }
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses a non-empty file that does not start with the SQLite header, with
/// a clear message, before SQLite is asked to open it. (An empty file is a
/// new, empty database.)
fn check_sqlite_header(path: &Path) -> Result<(), StoreError> {
    let mut header = [0u8; 16];
    let mut file = fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(StoreError::io(path, e)),
        }
    }
    if read == 0 || header == *SQLITE_HEADER {
        return Ok(());
    }
    Err(StoreError::NotADatabase {
        path: path.into(),
        message: "the file does not start with the sqlite 3 header".into(),
    })
}

pub(crate) async fn open_sqlite(
    path: &Path,
    marker: PathBuf,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    sqlx::any::install_default_drivers();
    prepare_sqlite_file(path, options.create)?;
    let url = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .to_url_lossy();
    let any = AnyConnectOptions::from_url(&url).map_err(|e| StoreError::UnsupportedUrl {
        reason: e.to_string(),
    })?;
    check_sqlite_header(path)?;
    let map = |e| map_err(Backend::Sqlite, Some(path), e);
    // One direct connection first: the pool retries failed connections
    // until its timeout and then reports only the timeout, while a direct
    // connection reports SQLite's own error. WAL is a property of the file,
    // so setting it once is enough; reading it back also makes SQLite read
    // the header, which is where a damaged file shows.
    let mut first = any.connect().await.map_err(map)?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
        .fetch_one(&mut first)
        .await
        .map_err(map)?;
    first.close().await.map_err(map)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotADatabase {
            path: path.into(),
            message: format!("journal mode is {mode:?}, wal could not be enabled"),
        });
    }
    let pool = AnyPoolOptions::new()
        // One writer at a time anyway; a few readers for the admin API.
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // Per-connection settings. sqlx sets foreign keys and a busy
                // timeout by default; they are repeated so that this crate,
                // not a dependency's default, states them. FULL makes every
                // commit (and so every outbox event) durable on power loss.
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"
                )))
                .await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                Ok(())
            })
        })
        .connect_with(any)
        .await
        .map_err(map)?;
    migrate(&pool, Backend::Sqlite, Some(path)).await?;
    finish(
        pool,
        Backend::Sqlite,
        Some(path.into()),
        Some(marker),
        options,
    )
    .await
}

pub(crate) async fn connect_postgres(
    url: &str,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    sqlx::any::install_default_drivers();
    let any = AnyConnectOptions::from_str(url).map_err(|e| StoreError::UnsupportedUrl {
        reason: e.to_string(),
    })?;
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(any)
        .await
        .map_err(|e| map_err(Backend::Postgres, None, e))?;
    migrate(&pool, Backend::Postgres, None).await?;
    let marker = options.change_marker.clone();
    finish(pool, Backend::Postgres, None, marker, options).await
}

async fn migrate(pool: &AnyPool, backend: Backend, path: Option<&Path>) -> Result<(), StoreError> {
    migrator(backend).run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(inner) => map_err(backend, path, inner),
        other => StoreError::Migrate(other),
    })
}

async fn finish(
    pool: AnyPool,
    backend: Backend,
    db_path: Option<PathBuf>,
    marker: Option<PathBuf>,
    options: StoreOptions,
) -> Result<Store, StoreError> {
    let store = Store {
        pool,
        backend,
        clock: options.clock,
        db_path,
        marker,
        signal_failures: AtomicU64::new(0),
    };
    // Rewrite the marker on open: creates it, and heals a signal lost to a
    // writer that crashed between its commit and its marker write.
    let generation = store.keys().generation().await?;
    store.signal(generation);
    Ok(store)
}

/// SQLite primary result codes that have their own [`StoreError`] variant.
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_NOTADB: i64 = 26;

pub(crate) fn map_err(backend: Backend, path: Option<&Path>, e: sqlx::Error) -> StoreError {
    if backend == Backend::Sqlite
        && let sqlx::Error::Database(db) = &e
        && let Some(code) = db.code().and_then(|c| c.parse::<i64>().ok())
    {
        let path = path.map_or_else(|| PathBuf::from(crate::DB_FILE), Path::to_path_buf);
        // Extended codes keep the primary code in the low byte.
        match code & 0xff {
            SQLITE_NOTADB => {
                return StoreError::NotADatabase {
                    path,
                    message: db.message().to_owned(),
                };
            }
            SQLITE_CORRUPT => {
                return StoreError::Corrupt {
                    path,
                    message: db.message().to_owned(),
                };
            }
            SQLITE_BUSY | SQLITE_LOCKED => return StoreError::Busy,
            _ => {}
        }
    }
    StoreError::Database(e)
}
