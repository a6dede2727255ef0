//! The store suite on real SQLite files in temporary directories, plus the
//! SQLite-only behaviour: file modes, WAL, corrupt and missing files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[macro_use]
mod suite;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use custos_store::{Store, StoreError, StoreOptions};
use custos_types::ExposeSecret;
use suite::{Ctx, TempDir};

scenarios!(Ctx::sqlite);

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn files_are_private_and_wal() {
    let parent = TempDir::new("modes");
    let data_dir = parent.path().join("data");
    let store = Store::open(&data_dir, StoreOptions::default())
        .await
        .unwrap();
    let ctx_minter = suite::minter();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    store
        .keys()
        .create(&ctx_minter, suite::new_key("k"), &suite::cli("a"), &mut rng)
        .await
        .unwrap();
    let db = data_dir.join("custos.db");
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&data_dir.join("custos.db-wal")), 0o600);
    assert_eq!(mode(&data_dir.join("keys.generation")), 0o600);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(
            &sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    store.close().await;
}

#[tokio::test]
async fn loose_file_modes_are_tightened() {
    let dir = TempDir::new("loose");
    let db = dir.path().join("custos.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::open(dir.path(), StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(mode(&db), 0o600);
    store.close().await;
}

#[tokio::test]
async fn garbage_file_is_not_a_database() {
    let dir = TempDir::new("garbage");
    let db = dir.path().join("custos.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let err = Store::open(dir.path(), StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{} is not a database: ", db.display())),
        "{message}"
    );
    assert!(message.contains("custos.db is not a database"), "{message}");
    // The file is left as it was, for the operator to inspect.
    assert_eq!(std::fs::read(&db).unwrap(), garbage);

    // A valid header over garbage gets past the header check; SQLite's own
    // verdict comes back as a typed error, promptly.
    let mut forged = b"SQLite format 3\0".to_vec();
    forged.extend_from_slice(&garbage);
    std::fs::write(&db, &forged).unwrap();
    let started = std::time::Instant::now();
    let err = Store::open(dir.path(), StoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotADatabase { .. } | StoreError::Corrupt { .. }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&db.display().to_string()),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn missing_database_is_an_error_when_not_creating() {
    let dir = TempDir::new("missing");
    let options = StoreOptions {
        create: false,
        ..StoreOptions::default()
    };
    let err = Store::open(dir.path(), options).await.unwrap_err();
    assert!(matches!(err, StoreError::DatabaseMissing { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "database {} does not exist",
            dir.path().join("custos.db").display()
        )
    );
    assert!(!dir.path().join("custos.db").exists());
}

#[tokio::test]
async fn urls() {
    let dir = TempDir::new("urls");
    let url = format!("sqlite://{}/sub/custos.db", dir.path().display());
    let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
    assert_eq!(store.backend(), custos_store::Backend::Sqlite);
    assert_eq!(
        store.change_marker(),
        Some(dir.path().join("sub/keys.generation").as_path())
    );
    store.close().await;
    for (bad, want) in [
        (
            "sqlite::memory:",
            "unsupported database url: in-memory sqlite is not supported, name a file",
        ),
        (
            "mysql://localhost/x",
            "unsupported database url: scheme \"mysql\" is not sqlite or postgres",
        ),
        (
            "custos.db",
            "unsupported database url: scheme \"\" is not sqlite or postgres",
        ),
    ] {
        let err = Store::connect(bad, StoreOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), want, "{bad}");
    }
}

#[tokio::test]
async fn secret_bytes_are_not_in_the_files() {
    let ctx = Ctx::sqlite().await.unwrap();
    let (rec, first) = ctx.create(suite::new_key("svc")).await;
    let (_, second) = ctx.rotate(rec.id, Duration::ZERO, None).await.unwrap();
    for secret in [&first, &second] {
        let needle = secret.expose_secret().as_bytes();
        for file in ["custos.db", "custos.db-wal", "keys.generation"] {
            let path = ctx.dir.path().join(file);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "secret found in {file}"
            );
        }
    }
    ctx.finish().await;
}
