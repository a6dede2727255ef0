//! The one error type of this crate, with operational meaning per variant.

use std::path::PathBuf;

use custos_auth::KeyId;

/// Why a store operation failed.
///
/// Messages are lowercase, name the offending field or value, and never
/// contain a secret: secrets are not passed to anything that could fail with
/// them, and database driver errors never echo bound values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The SQLite file exists but is not a database (garbage, truncated, or
    /// another file type). The operator must restore it from a backup; the
    /// store never overwrites it.
    #[error("{} is not a database: {message}", path.display())]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        message: String,
    },
    /// The SQLite file is a database, but a page is damaged. Restore from a
    /// backup.
    #[error("{} is corrupt: {message}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        message: String,
    },
    /// The SQLite file does not exist and the store was opened with
    /// `create: false`, for example by a CLI pointed at the wrong data dir.
    #[error("database {} does not exist", path.display())]
    DatabaseMissing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// A file or directory of the store could not be created, read or
    /// changed.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The URL names a backend that is not supported, or is malformed.
    #[error("unsupported database url: {reason}")]
    UnsupportedUrl {
        /// What is wrong; never contains the password part of the URL.
        reason: String,
    },
    /// The database stayed locked by another writer for longer than the busy
    /// timeout. Transient: retry later (an HTTP layer answers 503).
    #[error("database is busy, retry later")]
    Busy,
    /// Applying or validating the schema migrations failed; the database is
    /// left as it was before the failing migration.
    #[error("cannot migrate the database schema: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Any other database error: connection lost, constraint violated,
    /// disk full.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row could not be decoded, for example a scope written by a
    /// newer version. The row is left untouched.
    #[error("stored {table} row {id} is unreadable: {reason}")]
    CorruptRow {
        /// The table.
        table: &'static str,
        /// The row's primary key (never a secret hash).
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No key has this ID.
    #[error("key {id} does not exist")]
    KeyNotFound {
        /// The ID that was looked for.
        id: KeyId,
    },
    /// The key is revoked, and revocation is final: it cannot be updated or
    /// rotated.
    #[error("key {id} is revoked")]
    KeyRevoked {
        /// The revoked key.
        id: KeyId,
    },
    /// An input field is out of bounds.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in [`crate::keys::NewKey`] and friends.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// An update carried `expected_version` and the key has changed since:
    /// re-read it and try again (an HTTP layer answers 409 or 412).
    #[error("key {id} is at version {actual}, expected {expected}")]
    VersionConflict {
        /// The key.
        id: KeyId,
        /// The version the caller read.
        expected: u64,
        /// The version in the store.
        actual: u64,
    },
    /// A rotation was retried with a rotation ID whose secret has since been
    /// replaced by a later rotation, so it can no longer be handed out.
    #[error("rotation of key {id} was superseded by a later rotation")]
    RotationSuperseded {
        /// The key.
        id: KeyId,
    },
    /// A rotation was retried, but the secret derived for it no longer
    /// matches the stored hash: the pepper or the key format changed since
    /// the first attempt. The first attempt's secret cannot be recovered;
    /// rotate again with a new rotation ID.
    #[error("rotation of key {id} cannot be replayed: the derived secret does not match")]
    RotationNotReproducible {
        /// The key.
        id: KeyId,
    },
    /// No console user has this ID (or user name).
    #[error("user {id} does not exist")]
    UserNotFound {
        /// The ID or user name that was looked for.
        id: String,
    },
    /// A console user with this name exists already.
    #[error("user {name} already exists")]
    UserExists {
        /// The user name.
        name: String,
    },
    /// The invitation or setup link is unknown, used or expired.
    #[error("the link is invalid, used or expired")]
    InviteInvalid,
    /// No admin token has this ID.
    #[error("admin token {id} does not exist")]
    TokenNotFound {
        /// The ID that was looked for.
        id: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}
