//! The ledger against a real directory: durability, group commit,
//! segments and checkpoints, recovery after a crash, the lock, key
//! rotation, retention, sinks and the read API.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

mod common;

use std::fs;
use std::future::Future as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::*;
use custos_ledger::{DirSink, Durability, Ledger, LedgerError, LedgerReader};
use custos_merkle::{leaf_hash, root, verify_consistency, verify_inclusion};
use custos_note::{Checkpoint, Verifier, open as open_note};

fn verifier(dir: &std::path::Path) -> Verifier {
    LedgerReader::open(dir).verifier_history().unwrap()[0]
        .verifier
        .clone()
}

#[tokio::test]
async fn appends_are_durable_and_checkpointed_at_shutdown() {
    let tmp = TempDir::new("basic");
    let clock = clock();
    let (ledger, report) = open(&tmp.ledger(), options(1), clock.clone());
    assert!(report.created && !report.was_unclean());
    append_n(&ledger, &clock, 0, 10).await;
    let status = ledger.status();
    assert_eq!((status.size, status.healthy), (10, true));
    assert_eq!(ledger.shutdown().await.unwrap(), 10);
    assert!(matches!(
        ledger.append(request(99)),
        Err(LedgerError::ShutDown)
    ));
    assert!(!ledger.status().healthy);
    drop(ledger);

    let files = segment_files(&tmp.ledger());
    assert_eq!(files.len(), 1);
    let text = fs::read_to_string(&files[0]).unwrap();
    assert_eq!(text.lines().count(), 10);
    assert!(text.ends_with('\n'));
    assert_eq!(checkpoint_sizes(&tmp.ledger()), vec![10]);

    // The checkpoint root is the RFC 6962 root of the lines.
    let leaves: Vec<_> = text.lines().map(|l| leaf_hash(l.as_bytes())).collect();
    let note =
        fs::read_to_string(tmp.ledger().join("checkpoints/00000000000000000010.note")).unwrap();
    let opened = open_note(note.as_bytes(), &[verifier(&tmp.ledger())]).unwrap();
    let cp = Checkpoint::parse(opened.body()).unwrap();
    assert_eq!(
        (cp.origin(), cp.size(), *cp.root()),
        (ORIGIN, 10, root(&leaves))
    );

    let (ledger, report) = open(&tmp.ledger(), options(1), clock.clone());
    assert!(!report.created && !report.was_unclean(), "{report:?}");
    assert_eq!(report.tree_size, 10);
    let appended = ledger.append(request(10)).unwrap().await.unwrap();
    assert_eq!(appended.seq, 10);
    ledger.shutdown().await.unwrap();
}

/// The writer finishes leaf hashes that callers started on the part of the
/// record before `seq` (issue #8); the result must be the hash of the
/// stored line, for records of every size.
#[tokio::test]
async fn ticket_leaf_hashes_are_those_of_the_stored_lines() {
    let tmp = TempDir::new("leaf-prefix");
    let clock = clock();
    let (ledger, _) = open(&tmp.ledger(), options(1), clock.clone());
    let mut appended = Vec::new();
    for i in 0..40 {
        appended.push(ledger.append(request(i)).unwrap().await.unwrap());
    }
    ledger.shutdown().await.unwrap();
    drop(ledger);
    let files = segment_files(&tmp.ledger());
    let text = fs::read_to_string(&files[0]).unwrap();
    for (line, a) in text.lines().zip(&appended) {
        assert_eq!(a.leaf_hash, leaf_hash(line.as_bytes()), "seq {}", a.seq);
    }
    assert_eq!(text.lines().count(), appended.len());
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let tmp = TempDir::new("lock");
    let (ledger, _) = open(&tmp.ledger(), options(1), clock());
    let err = Ledger::open(&tmp.ledger(), options(1), clock()).unwrap_err();
    assert!(matches!(err, LedgerError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked by another writer"));
    ledger.shutdown().await.unwrap();
    drop(ledger);
    let (again, _) = open(&tmp.ledger(), options(1), clock());
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_appends_get_distinct_contiguous_seqs() {
    let tmp = TempDir::new("concurrent");
    let (ledger, _) = open(&tmp.ledger(), options(1), clock());
    let ledger = std::sync::Arc::new(ledger);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let tickets: Vec<_> = (0..250)
                .map(|i| ledger.append(request(t * 1000 + i)).unwrap())
                .collect();
            let mut seqs = Vec::new();
            for ticket in tickets {
                seqs.push(ticket.await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..2000).collect::<Vec<_>>());
    let stats = ledger.stats().snapshot();
    assert_eq!(stats.appended, 2000);
    // A current-thread runtime: appenders never block it on an fsync; the
    // writer thread syncs what they wrote, many records at a time.
    assert!(
        stats.fsyncs < stats.appended / 2,
        "group commit batched nothing: {stats:?}"
    );
    ledger.shutdown().await.unwrap();
    // 1000-record checkpoints land on group boundaries at or after 1000.
    let sizes = checkpoint_sizes(&tmp.ledger());
    assert_eq!(*sizes.last().unwrap(), 2000);
}

#[tokio::test]
async fn invalid_records_are_refused_before_queueing() {
    let tmp = TempDir::new("invalid");
    let (ledger, _) = open(&tmp.ledger(), options(1), clock());
    let err = ledger.append(system("Not A Name")).unwrap_err();
    assert!(matches!(err, LedgerError::InvalidRecord(_)), "{err}");
    assert_eq!(ledger.status().size, 0);
    ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn segments_seal_at_size_with_a_checkpoint_at_each_boundary() {
    let tmp = TempDir::new("seal");
    let clock = clock();
    let mut o = options(1);
    o.segment_max_bytes = 2048;
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    append_n(&ledger, &clock, 0, 40).await;
    ledger.shutdown().await.unwrap();
    let files = segment_files(&tmp.ledger());
    assert!(files.len() >= 4, "{files:?}");
    let sizes = checkpoint_sizes(&tmp.ledger());
    let mut first = 0u64;
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!("{first:020}.jsonl"));
        let len = fs::metadata(file).unwrap().len();
        assert!(len <= 2048, "{name} is {len} bytes");
        first += fs::read_to_string(file).unwrap().lines().count() as u64;
        assert!(
            sizes.contains(&first),
            "no checkpoint at boundary {first}: {sizes:?}"
        );
        assert!(
            tmp.ledger()
                .join(format!("checkpoints/{first:020}.frontier"))
                .exists()
        );
    }
    assert_eq!(first, 40);
}

#[tokio::test]
async fn segments_seal_at_age_by_record_time() {
    let tmp = TempDir::new("age");
    let clock = clock();
    let mut o = options(1);
    o.segment_max_age = Duration::from_secs(3600);
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    append_n(&ledger, &clock, 0, 3).await;
    clock.advance(Duration::from_secs(3600));
    append_n(&ledger, &clock, 3, 2).await;
    ledger.shutdown().await.unwrap();
    let files = segment_files(&tmp.ledger());
    assert_eq!(files.len(), 2);
    assert!(files[1].ends_with("00000000000000000003.jsonl"));
    assert!(checkpoint_sizes(&tmp.ledger()).contains(&3));
}

#[tokio::test]
async fn torn_tail_is_cut_and_unsigned_records_are_rehashed() {
    let tmp = TempDir::new("torn");
    let clock = clock();
    let (ledger, _) = open(&tmp.ledger(), options(1), clock.clone());
    append_n(&ledger, &clock, 0, 5).await;
    ledger.checkpoint().await.unwrap();
    append_n(&ledger, &clock, 5, 3).await;
    ledger.shutdown().await.unwrap();
    drop(ledger);
    // Simulate a kill -9: the final checkpoint never happened, and half a
    // record was written.
    for ext in ["note", "frontier"] {
        fs::remove_file(tmp.ledger().join(format!("checkpoints/{:020}.{ext}", 8))).unwrap();
    }
    let seg = &segment_files(&tmp.ledger())[0];
    fs::OpenOptions::new()
        .append(true)
        .open(seg)
        .unwrap()
        .write_all(b"{\"event\":\"req")
        .unwrap();

    let (ledger, report) = open(&tmp.ledger(), options(1), clock.clone());
    assert!(report.was_unclean());
    assert_eq!(
        (
            report.tree_size,
            report.checkpoint_size,
            report.unsigned_records,
            report.truncated_bytes
        ),
        (8, 5, 3, 13)
    );
    assert_eq!(report.records_rehashed, 8);
    let record = report.to_record().unwrap();
    assert_eq!(record.event, "ledger.recovered");
    let seq = ledger
        .append(custos_record::RecordBody::System(record))
        .unwrap()
        .await
        .unwrap()
        .seq;
    assert_eq!(seq, 8);
    ledger.shutdown().await.unwrap();
    assert!(fs::read_to_string(seg).unwrap().ends_with("\"v\":1}\n"));
}

#[tokio::test]
async fn records_that_do_not_reproduce_the_checkpoint_refuse_to_open() {
    let tmp = TempDir::new("corrupt");
    let clock = clock();
    let (ledger, _) = open(&tmp.ledger(), options(1), clock.clone());
    append_n(&ledger, &clock, 0, 6).await;
    ledger.shutdown().await.unwrap();
    drop(ledger);
    let seg = segment_files(&tmp.ledger())[0].clone();
    let text = fs::read_to_string(&seg).unwrap();
    fs::write(
        &seg,
        text.replace("\"latency_us\":1003", "\"latency_us\":1004"),
    )
    .unwrap();
    let err = Ledger::open(&tmp.ledger(), options(1), clock.clone()).unwrap_err();
    let LedgerError::Corrupt { file, seq, reason } = &err else {
        panic!("{err}")
    };
    assert_eq!((file, *seq), (&seg, Some(6)), "{err}");
    assert!(reason.contains("do not reproduce"), "{reason}");

    // Records removed from under a checkpoint are caught too.
    let lines: Vec<&str> = text.lines().take(4).collect();
    fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let err = Ledger::open(&tmp.ledger(), options(1), clock).unwrap_err();
    assert!(
        err.to_string().contains("covers 6 records but only 4"),
        "{err}"
    );
}

#[tokio::test]
async fn a_readable_signing_key_refuses_to_start() {
    let tmp = TempDir::new("perm");
    let (ledger, _) = open(&tmp.ledger(), options(1), clock());
    ledger.shutdown().await.unwrap();
    drop(ledger);
    let key = tmp.ledger().join("keys/signing.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let err = Ledger::open(&tmp.ledger(), options(1), clock()).unwrap_err();
    assert!(
        matches!(err, LedgerError::KeyPermissions { mode: 0o640, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn key_rotation_keeps_old_checkpoints_verifiable() {
    let tmp = TempDir::new("rotate");
    let clock = clock();
    let (ledger, _) = open(&tmp.ledger(), options(1), clock.clone());
    append_n(&ledger, &clock, 0, 4).await;
    let old = verifier(&tmp.ledger());
    let rotation = ledger.rotate_signing_key().await.unwrap();
    assert_eq!((rotation.record_seq, rotation.first_size), (4, 5));
    append_n(&ledger, &clock, 5, 2).await;
    ledger.shutdown().await.unwrap();
    drop(ledger);

    let history = LedgerReader::open(&tmp.ledger())
        .verifier_history()
        .unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!((history[0].first_size, history[1].first_size), (0, 5));
    let new = history[1].verifier.clone();
    assert_eq!(new.to_vkey(), rotation.vkey);
    let reader = LedgerReader::open(&tmp.ledger());
    let note = |size| reader.checkpoint(size).unwrap().unwrap();
    assert!(open_note(note(4).as_bytes(), std::slice::from_ref(&old)).is_ok());
    assert!(open_note(note(4).as_bytes(), std::slice::from_ref(&new)).is_err());
    let both = open_note(note(5).as_bytes(), &[old.clone(), new.clone()]).unwrap();
    assert_eq!(both.verified().len(), 2);
    assert!(open_note(note(7).as_bytes(), std::slice::from_ref(&new)).is_ok());
    assert!(open_note(note(7).as_bytes(), &[old]).is_err());
    let rec = reader.record(4).unwrap();
    let text = String::from_utf8(rec.bytes).unwrap();
    assert!(text.contains("\"event\":\"ledger.key_rotated\""), "{text}");
    assert!(!tmp.ledger().join("keys/signing.key.new").exists());

    let (ledger, report) = open(&tmp.ledger(), options(1), clock);
    assert!(!report.was_unclean());
    ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn purge_removes_only_old_sealed_segments_and_records_itself() {
    let tmp = TempDir::new("purge");
    let clock = clock();
    let mut o = options(1);
    o.segment_max_age = Duration::from_secs(3600);
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    for day in 0..3u64 {
        append_n(&ledger, &clock, day * 10, 10).await;
        clock.advance(Duration::from_secs(3600));
    }
    assert_eq!(segment_files(&tmp.ledger()).len(), 3);
    // Cut off after the first segment's newest record, before the second's.
    let cutoff = start() + Duration::from_secs(3600);
    let report = ledger.purge_before(cutoff).await.unwrap();
    assert_eq!((report.segments_removed, report.purged_before_seq), (1, 10));
    assert_eq!(report.record_seq, Some(30));
    // Nothing else is old enough, and the open segment is never purged.
    let again = ledger.purge_before(cutoff).await.unwrap();
    assert_eq!(again.segments_removed, 0);
    ledger.shutdown().await.unwrap();
    drop(ledger);

    let files = segment_files(&tmp.ledger());
    assert!(
        files[0].ends_with("00000000000000000010.jsonl"),
        "{files:?}"
    );
    let reader = LedgerReader::open(&tmp.ledger());
    let purged = reader.record(30).unwrap();
    assert!(
        String::from_utf8(purged.bytes)
            .unwrap()
            .contains("\"purged_before_seq\":10")
    );
    assert!(matches!(
        reader.record(3),
        Err(LedgerError::OutOfRange { .. })
    ));
    let (ledger, _) = open(&tmp.ledger(), options(1), clock);
    ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn reader_finds_requests_and_builds_proofs_and_receipts() {
    let tmp = TempDir::new("reader");
    let clock = clock();
    let sink_dir = tmp.0.join("witness");
    let mut o = options(1);
    o.sinks.push(Box::new(DirSink::new(&sink_dir)));
    o.durability = Durability::Batched {
        max_delay: Duration::from_millis(5),
    };
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    append_n(&ledger, &clock, 0, 7).await;
    assert_eq!(ledger.checkpoint().await.unwrap(), 7);
    append_n(&ledger, &clock, 7, 6).await;
    ledger.shutdown().await.unwrap();
    drop(ledger);

    let reader = LedgerReader::open(&tmp.ledger());
    let all: Vec<_> = reader.records().unwrap().map(Result::unwrap).collect();
    assert_eq!(all.len(), 13);
    let found = reader.find_by_request_id("req-11").unwrap();
    assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![11]);
    assert!(
        reader
            .find_by_request_id("req-1")
            .unwrap()
            .iter()
            .all(|r| r.seq == 1)
    );

    let (size, note) = reader.latest_checkpoint().unwrap().unwrap();
    assert_eq!(size, 13);
    let cp = Checkpoint::parse(
        open_note(note.as_bytes(), &[verifier(&tmp.ledger())])
            .unwrap()
            .body(),
    )
    .unwrap();
    let proof = reader.inclusion_proof(11, 13).unwrap();
    verify_inclusion(&leaf_hash(&all[11].bytes), 11, 13, &proof, cp.root()).unwrap();
    let old = Checkpoint::parse(
        open_note(
            reader.checkpoint(7).unwrap().unwrap().as_bytes(),
            &[verifier(&tmp.ledger())],
        )
        .unwrap()
        .body(),
    )
    .unwrap();
    let proof = reader.consistency_proof(7, 13).unwrap();
    verify_consistency(7, 13, old.root(), cp.root(), &proof).unwrap();
    let receipt = reader.receipt(2, None).unwrap();
    assert_eq!(
        (receipt.seq, receipt.checkpoint.as_str()),
        (2, note.as_str())
    );
    assert!(reader.receipt(13, None).is_err());

    // The sink has a copy of every checkpoint.
    let mut copies: Vec<_> = fs::read_dir(&sink_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        vec!["00000000000000000007.note", "00000000000000000013.note"]
    );
    assert_eq!(
        fs::read_to_string(sink_dir.join("00000000000000000013.note")).unwrap(),
        note
    );
}

/// Holds the first fsync (whoever runs it) until `release` is sent;
/// `entered` receives once it is held. The list names the thread that ran
/// each fsync, in order.
fn hold_first_fsync(
    o: &mut custos_ledger::LedgerOptions,
) -> (
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let ran_on = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ran_on.clone();
    o.on_fsync = Some(std::sync::Arc::new(move |_| {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        let first = {
            let mut seen = seen.lock().unwrap();
            seen.push(name);
            seen.len() == 1
        };
        if first {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv();
        }
    }));
    (entered_rx, release_tx, ran_on)
}

/// Appends record 0 on a plain thread, which leads the fsync that
/// [`hold_first_fsync`] holds; returns once it is held.
async fn lead_held_fsync(
    ledger: &std::sync::Arc<Ledger>,
    entered: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<Result<custos_ledger::Appended, LedgerError>> {
    let leader = {
        let ledger = ledger.clone();
        std::thread::Builder::new()
            .name("custos-ledger-test-leader".into())
            .spawn(move || ledger.append(request(0)).unwrap().wait())
            .unwrap()
    };
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    leader
}

/// Sync mode: `queue_capacity` records may wait for an fdatasync; the next
/// append fails at once, without being written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_fails_fast_with_backpressure() {
    let tmp = TempDir::new("backpressure");
    let mut o = options(1);
    o.queue_capacity = 5;
    let (entered, release, _) = hold_first_fsync(&mut o);
    let (ledger, _) = open(&tmp.ledger(), o, clock());
    let ledger = std::sync::Arc::new(ledger);
    // The first append leads its own fsync, which is held: nothing else
    // becomes durable meanwhile.
    let leader = lead_held_fsync(&ledger, entered).await;
    let queued: Vec<_> = (1..=4)
        .map(|i| ledger.append(request(i)).unwrap())
        .collect();
    // The leader's record waits too, until its fsync returns.
    assert_eq!(ledger.status().queue_depth, 5);
    let err = ledger.append(request(5)).unwrap_err();
    assert!(
        matches!(err, LedgerError::Backpressure { capacity: 5 }),
        "{err}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(ledger.stats().snapshot().rejected, 1);
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap().unwrap().seq, 0);
    for (i, ticket) in queued.into_iter().enumerate() {
        assert_eq!(ticket.await.unwrap().seq, i as u64 + 1);
    }
    assert_eq!(ledger.status().queue_depth, 0);
    // The refused record was never written.
    assert_eq!(ledger.checkpoint().await.unwrap(), 5);
    ledger.shutdown().await.unwrap();
}

/// Sync mode, nothing in flight: the appender runs the fdatasync itself, so
/// its ticket is resolved when `append` returns, with no hand-off to the
/// writer thread and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_sync_append_leads_its_own_fsync() {
    let tmp = TempDir::new("sync-lead");
    let fsyncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut o = options(1);
    let seen = fsyncs.clone();
    o.on_fsync = Some(std::sync::Arc::new(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let (ledger, _) = open(&tmp.ledger(), o, clock());
    for i in 0..20u64 {
        let mut ticket = ledger.append(request(i)).unwrap();
        assert_eq!(
            fsyncs.load(std::sync::atomic::Ordering::SeqCst),
            i + 1,
            "append {i} returned before an fsync covered it"
        );
        // Resolved already: one poll, with a waker nobody will call.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut ticket).poll(&mut cx) {
            std::task::Poll::Ready(appended) => assert_eq!(appended.unwrap().seq, i),
            std::task::Poll::Pending => panic!("append {i}: its ticket is not resolved"),
        }
    }
    ledger.shutdown().await.unwrap();
}
/// Sync mode under load: records appended while an fdatasync runs are
/// staged; as soon as it ends, the writer thread writes all of them with
/// one `write` and syncs them with one fdatasync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_appends_during_an_fsync_form_the_next_group() {
    let tmp = TempDir::new("sync-group");
    let clock = clock();
    let mut o = options(1);
    let (entered, release, fsyncs) = hold_first_fsync(&mut o);
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    let ledger = std::sync::Arc::new(ledger);
    let leader = lead_held_fsync(&ledger, entered).await;
    // Staged, not durable: none of these may resolve while the first
    // fsync is held, and none may write or start an fsync of its own.
    let mut tickets: Vec<_> = (1..=50)
        .map(|i| ledger.append(request(i)).unwrap())
        .collect();
    let text = fs::read_to_string(&segment_files(&tmp.ledger())[0]).unwrap();
    assert_eq!(text.lines().count(), 1, "a follower wrote its own record");
    assert_eq!(ledger.stats().snapshot().groups, 1);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for (i, ticket) in tickets.iter_mut().enumerate() {
        assert!(
            std::pin::Pin::new(ticket).poll(&mut cx).is_pending(),
            "record {} resolved before an fsync covered it",
            i + 1
        );
    }
    // The leader's record still waits too, until its fsync returns.
    assert_eq!(ledger.status().queue_depth, 51);
    assert_eq!(fsyncs.lock().unwrap().len(), 1);
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap().unwrap().seq, 0);
    for (i, ticket) in tickets.into_iter().enumerate() {
        let appended = tokio::time::timeout(Duration::from_secs(10), ticket)
            .await
            .expect("a waiting record was never synced")
            .unwrap();
        assert_eq!(appended.seq, i as u64 + 1);
    }
    // The leader's fsync, and one write and one fsync for the fifty.
    assert_eq!(fsyncs.lock().unwrap().len(), 2);
    assert_eq!(ledger.stats().snapshot().groups, 2);
    let text = fs::read_to_string(&segment_files(&tmp.ledger())[0]).unwrap();
    assert_eq!(text.lines().count(), 51);
    assert_eq!(ledger.status().queue_depth, 0);
    assert_eq!(ledger.shutdown().await.unwrap(), 51);
    drop(ledger);
    let (ledger, report) = open(&tmp.ledger(), options(1), clock);
    assert!(!report.was_unclean(), "{report:?}");
    assert_eq!(report.tree_size, 51);
    ledger.shutdown().await.unwrap();
}

/// Sync mode: once appends overlap (the last fdatasync covered more than
/// one record), the writer thread runs the next fsync instead of the
/// appender; once a group is a single record again, the appender leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sync_appends_leave_the_fsync_to_the_writer_thread() {
    let tmp = TempDir::new("sync-handoff");
    let mut o = options(1);
    let (entered, release, ran_on) = hold_first_fsync(&mut o);
    let (ledger, _) = open(&tmp.ledger(), o, clock());
    let ledger = std::sync::Arc::new(ledger);
    let leader = lead_held_fsync(&ledger, entered).await;
    let group: Vec<_> = (1..=5)
        .map(|i| ledger.append(request(i)).unwrap())
        .collect();
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap().unwrap().seq, 0);
    for ticket in group {
        ticket.await.unwrap();
    }
    // The leader ran the first fsync on its own thread, the writer thread
    // the group of five.
    assert_eq!(
        *ran_on.lock().unwrap(),
        vec!["custos-ledger-test-leader", "custos-ledger"]
    );
    // The last group was five records: the next appender does not lead,
    // although nothing is in flight.
    let appender = |seq: u64| {
        let ledger = ledger.clone();
        std::thread::Builder::new()
            .name("custos-ledger-test-appender".into())
            .spawn(move || ledger.append(request(seq)).unwrap().wait().unwrap())
            .unwrap()
            .join()
            .unwrap()
    };
    assert_eq!(appender(6).seq, 6);
    assert_eq!(ran_on.lock().unwrap()[2], "custos-ledger");
    // That group was one record: the next appender leads again.
    assert_eq!(appender(7).seq, 7);
    assert_eq!(ran_on.lock().unwrap()[3], "custos-ledger-test-appender");
    assert_eq!(ran_on.lock().unwrap().len(), 4);
    assert_eq!(ledger.shutdown().await.unwrap(), 8);
}

#[tokio::test]
async fn an_io_error_stops_the_writer_and_fails_closed() {
    let tmp = TempDir::new("ioerror");
    let clock = clock();
    let mut o = options(1);
    o.segment_max_bytes = 1024;
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    append_n(&ledger, &clock, 0, 1).await;
    // The next segment cannot be created, so sealing the first one fails.
    let mut blocked = 0;
    for n in 1..20u64 {
        let path = tmp.ledger().join(format!("segments/{n:020}.jsonl"));
        std::os::unix::fs::symlink("/nonexistent/custos", &path).unwrap();
        blocked = n;
    }
    let failure = first_failure(&ledger, 1..blocked)
        .await
        .expect("sealing into an existing path must fail");
    // The record that hit the failure, and any queued with it, are refused
    // with the IO error itself or with the writer's unavailability.
    assert!(
        matches!(
            failure,
            LedgerError::Io { op: "create", .. } | LedgerError::Unavailable { .. }
        ) && failure.to_string().contains("File exists"),
        "{failure}"
    );
    let status = ledger.status();
    assert!(!status.healthy);
    assert!(status.last_error.unwrap().contains("create"));
    let err = ledger.append(request(99)).unwrap_err();
    assert!(matches!(err, LedgerError::Unavailable { .. }), "{err}");
    assert!(err.retry_after().is_some());
    assert!(ledger.checkpoint().await.is_err());
}

/// Appends requests `seqs` until one is refused, at once or by its ticket.
async fn first_failure(ledger: &Ledger, seqs: std::ops::Range<u64>) -> Option<LedgerError> {
    for i in seqs {
        match ledger.append(request(i)) {
            Ok(ticket) => {
                if let Err(e) = ticket.await {
                    return Some(e);
                }
            }
            Err(e) => return Some(e),
        }
    }
    None
}

fn batched(max_delay: Duration) -> custos_ledger::LedgerOptions {
    let mut o = options(1);
    o.durability = Durability::Batched { max_delay };
    o
}

/// Batched mode: the appending thread writes its own record, so its ticket
/// is resolved when `append` returns and the line is already in the file;
/// the writer thread fsyncs within `max_delay`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_appends_are_written_by_their_callers() {
    let tmp = TempDir::new("batched-here");
    let clock = clock();
    let fsyncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut o = batched(Duration::from_millis(20));
    let seen = fsyncs.clone();
    o.on_fsync = Some(std::sync::Arc::new(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    let ledger = std::sync::Arc::new(ledger);
    let ticket = ledger.append(request(0)).unwrap();
    // Written before `append` returned: the file has the line already.
    let text = fs::read_to_string(&segment_files(&tmp.ledger())[0]).unwrap();
    assert!(text.contains("\"req-0\""), "{text}");
    assert_eq!(ticket.wait().unwrap().seq, 0);
    // The writer thread syncs the window without any further append.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fsyncs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no fsync of the batched window"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Many appending threads at once, with checkpoints interleaved.
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..250 {
                let ticket = ledger.append(request(1 + t * 1000 + i)).unwrap();
                seqs.push(ticket.await.unwrap().seq);
                if i % 100 == 99 {
                    ledger.checkpoint().await.unwrap();
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..2001).collect::<Vec<_>>());
    let stats = ledger.stats().snapshot();
    assert_eq!(stats.appended, 2001);
    assert!(
        stats.fsyncs < stats.appended / 2,
        "batched mode synced nearly every record: {stats:?}"
    );
    assert_eq!(ledger.shutdown().await.unwrap(), 2001);
    drop(ledger);
    // Reopening checks that the records reproduce the signed checkpoints.
    let (ledger, report) = open(&tmp.ledger(), options(1), clock);
    assert!(!report.was_unclean(), "{report:?}");
    assert_eq!(report.tree_size, 2001);
    let text: String = segment_files(&tmp.ledger())
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .collect();
    let leaves: Vec<_> = text.lines().map(|l| leaf_hash(l.as_bytes())).collect();
    assert_eq!(leaves.len(), 2001);
    let (size, note) = LedgerReader::open(&tmp.ledger())
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    let cp = Checkpoint::parse(
        open_note(note.as_bytes(), &[verifier(&tmp.ledger())])
            .unwrap()
            .body(),
    )
    .unwrap();
    assert_eq!((size, *cp.root()), (2001, root(&leaves)));
    ledger.shutdown().await.unwrap();
}

/// The batched fsync runs on the writer thread without the writer's lock:
/// appends go on while the disk is slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_appends_do_not_wait_for_a_slow_fsync() {
    let tmp = TempDir::new("batched-slow-fsync");
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let mut o = batched(Duration::from_millis(1));
    // Hold the writer thread inside its first fsync.
    let first = std::sync::atomic::AtomicBool::new(true);
    o.on_fsync = Some(std::sync::Arc::new(move |_| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv();
        }
    }));
    let (ledger, _) = open(&tmp.ledger(), o, clock());
    ledger.append(request(0)).unwrap().await.unwrap();
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    // The writer thread is stuck in its fsync; appends still complete.
    for i in 1..=50 {
        let appended =
            tokio::time::timeout(Duration::from_secs(5), ledger.append(request(i)).unwrap())
                .await
                .expect("a batched append waited for the writer thread's fsync")
                .unwrap();
        assert_eq!(appended.seq, i);
    }
    release_tx.send(()).unwrap();
    assert_eq!(ledger.checkpoint().await.unwrap(), 51);
    ledger.shutdown().await.unwrap();
}

/// Sealing and a failing seal behave the same when appends are written by
/// their callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_appends_seal_segments_and_fail_closed() {
    let tmp = TempDir::new("batched-seal");
    let clock = clock();
    let mut o = batched(Duration::from_millis(5));
    o.segment_max_bytes = 2048;
    let (ledger, _) = open(&tmp.ledger(), o, clock.clone());
    append_n(&ledger, &clock, 0, 40).await;
    let files = segment_files(&tmp.ledger());
    assert!(files.len() >= 4, "{files:?}");
    // The next segments cannot be created: sealing fails and the ledger
    // refuses everything after.
    let mut first_free = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        first_free = first_free.max(name[..20].parse::<u64>().unwrap());
    }
    for n in first_free + 1..first_free + 40 {
        let path = tmp.ledger().join(format!("segments/{n:020}.jsonl"));
        std::os::unix::fs::symlink("/nonexistent/custos", &path).unwrap();
    }
    let failure = first_failure(&ledger, 40..100)
        .await
        .expect("sealing into an existing path must fail");
    assert!(failure.to_string().contains("File exists"), "{failure}");
    assert!(!ledger.status().healthy);
    let err = ledger.append(request(999)).unwrap_err();
    assert!(matches!(err, LedgerError::Unavailable { .. }), "{err}");
}
