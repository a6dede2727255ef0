//! Capacity limits under tokio's paused clock: queue timeouts, full queues,
//! guards released on drop, waiters that disconnect, and the bounded
//! per-key map.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

mod common;

use std::collections::BTreeMap;

use common::secs;
use custos_health::{CapacityError, CapacityLimiter, CapacitySettings, LimitKind, LimitSpec};
use tokio::time::Instant;

fn spec(max_concurrent: u32, queue_size: u32) -> LimitSpec {
    LimitSpec {
        max_concurrent,
        queue_size,
    }
}

fn limiter(global: LimitSpec, per_key: Option<LimitSpec>) -> CapacityLimiter {
    CapacityLimiter::new(CapacitySettings {
        global,
        per_key,
        queue_timeout: secs(5),
        retry_after: secs(1),
        ..CapacitySettings::default()
    })
}

/// Lets spawned tasks run until `cond` holds (the runtime is single-threaded
/// and its clock paused, so this is deterministic).
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

#[tokio::test(start_paused = true)]
async fn excess_requests_are_refused_at_once_or_after_the_queue_timeout() {
    let lim = limiter(spec(2, 2), None);
    let a = lim.acquire("m", None).await.unwrap();
    let _b = lim.acquire("m", None).await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let lim = lim.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = lim.acquire("m", None).await;
                (r.map(drop), started.elapsed())
            })
        })
        .collect();
    until(|| lim.stats().global.waiting == 2).await;

    // The queue is full: refused without waiting, with a retry suggestion
    // that grows with the queue (1 s × (1 + 2 waiting / 2 slots)).
    let started = Instant::now();
    let err = lim.acquire("m", None).await.unwrap_err();
    assert_eq!(started.elapsed(), secs(0));
    assert_eq!(
        err,
        CapacityError::QueueFull {
            limit: LimitKind::Global,
            max: 2,
            queue: 2,
            retry_after: secs(2)
        }
    );
    assert!(!err.is_caller_limit());

    // Nobody releases: both waiters give up after exactly the timeout.
    for w in waiters {
        let (result, waited) = w.await.unwrap();
        assert_eq!(waited, secs(5));
        let err = result.unwrap_err();
        assert!(
            matches!(err, CapacityError::Timeout { limit: LimitKind::Global, waited, .. } if waited == secs(5)),
            "{err:?}"
        );
        assert_eq!(err.reason(), "timeout");
    }
    let stats = lim.stats();
    assert_eq!((stats.global.in_flight, stats.global.waiting), (2, 0));
    assert_eq!(stats.rejected, [3, 0, 0, 0]);
    assert_eq!(stats.timeouts, 2);

    // Releasing a guard frees its slot.
    drop(a);
    assert_eq!(lim.stats().global.in_flight, 1);
    let _c = lim.acquire("m", None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_released_slot_goes_to_the_first_waiter() {
    let lim = limiter(spec(1, 4), None);
    let held = lim.acquire("m", None).await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let lim = lim.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let guard = lim.acquire("m", None).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(secs(1)).await;
                drop(guard);
            })
        })
        .collect();
    until(|| lim.stats().global.waiting == 3).await;
    tokio::time::sleep(secs(1)).await;
    drop(held);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn under_load_every_request_ends_within_the_timeout() {
    let lim = limiter(spec(4, 10), Some(spec(2, 2)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let lim = lim.clone();
            tokio::spawn(async move {
                let key = format!("key-{}", i % 6);
                match lim.acquire("m", Some(&key)).await {
                    Ok(guard) => {
                        tokio::time::sleep(secs(1)).await;
                        drop(guard);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            })
        })
        .collect();
    let mut served = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => served += 1,
            Err(_) => refused += 1,
        }
    }
    assert_eq!(served + refused, 60);
    assert!(served >= 4, "{served}");
    assert!(refused > 0);
    // The longest possible life of a request: 5 s waiting plus 1 s served.
    assert!(started.elapsed() <= secs(6), "{:?}", started.elapsed());
    let stats = lim.stats();
    assert_eq!((stats.global.in_flight, stats.global.waiting), (0, 0));
    assert_eq!(stats.tracked_keys, 0);
}

#[tokio::test(start_paused = true)]
async fn guards_release_on_drop_and_disconnected_waiters_leave_the_queue() {
    let lim = limiter(spec(1, 1), Some(spec(1, 1)));
    let guard = lim.acquire("m", Some("k1")).await.unwrap();
    assert_eq!(lim.stats().tracked_keys, 1);
    // A second request of the same key waits on its key limit, then its
    // client goes away: the waiting task is dropped.
    let waiter = {
        let lim = lim.clone();
        tokio::spawn(async move { lim.acquire("m", Some("k1")).await.map(drop) })
    };
    until(|| lim.stats().key_waiting == 1).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    drop(guard);
    let stats = lim.stats();
    assert_eq!((stats.global.in_flight, stats.global.waiting), (0, 0));
    assert_eq!(
        (stats.tracked_keys, stats.key_in_flight, stats.key_waiting),
        (0, 0, 0)
    );
    // Everything is free again.
    let _g = lim.acquire("m", Some("k1")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn per_key_limits_refuse_the_key_and_not_others() {
    let lim = limiter(spec(10, 10), Some(spec(1, 0)));
    let _k1 = lim.acquire("m", Some("k1")).await.unwrap();
    let err = lim.acquire("m", Some("k1")).await.unwrap_err();
    assert_eq!(err.limit(), LimitKind::Key);
    assert!(err.is_caller_limit());
    assert_eq!(err.retry_after(), secs(1));
    let _k2 = lim.acquire("m", Some("k2")).await.unwrap();
    // Unauthenticated callers have no key limit.
    let _anon = lim.acquire("m", None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_key_waiting_on_its_own_limit_holds_no_global_slot() {
    let lim = limiter(spec(2, 0), Some(spec(1, 1)));
    let _first = lim.acquire("m", Some("greedy")).await.unwrap();
    let waiter = {
        let lim = lim.clone();
        tokio::spawn(async move { lim.acquire("m", Some("greedy")).await.map(drop) })
    };
    until(|| lim.stats().key_waiting == 1).await;
    // The other global slot is still free for someone else.
    let _other = lim.acquire("m", Some("polite")).await.unwrap();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.limit(), LimitKind::Key);
}

#[tokio::test(start_paused = true)]
async fn per_model_limits() {
    let lim = CapacityLimiter::new(CapacitySettings {
        models: BTreeMap::from([("small".to_owned(), spec(1, 0))]),
        per_key: None,
        ..CapacitySettings::default()
    });
    let _a = lim.acquire("small", None).await.unwrap();
    let err = lim.acquire("small", None).await.unwrap_err();
    assert_eq!(err.limit(), LimitKind::Model);
    assert!(
        err.to_string().contains("model concurrency limit of 1"),
        "{err}"
    );
    // Other models only have the global limit.
    let _b = lim.acquire("large", None).await.unwrap();
    let _c = lim.acquire("large", None).await.unwrap();
    assert_eq!(lim.stats().models.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_per_key_map_stays_bounded() {
    let lim = CapacityLimiter::new(CapacitySettings {
        per_key: Some(spec(1, 0)),
        max_tracked_keys: 3,
        ..CapacitySettings::default()
    });
    // Thousands of keys one after the other leave nothing behind.
    for i in 0..5000 {
        let g = lim.acquire("m", Some(&format!("key-{i}"))).await.unwrap();
        drop(g);
    }
    assert_eq!(lim.stats().tracked_keys, 0);
    // At most three keys in flight at once; a fourth is refused.
    let held: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|k| lim.clone().acquire_now(k))
        .collect();
    let held: Vec<_> = futures_join(held).await;
    assert_eq!(lim.stats().tracked_keys, 3);
    let err = lim.acquire("m", Some("d")).await.unwrap_err();
    assert_eq!(
        err,
        CapacityError::TooManyKeys {
            max: 3,
            retry_after: secs(1)
        }
    );
    assert_eq!(err.limit(), LimitKind::TrackedKeys);
    // A key already tracked still gets its own answer.
    assert_eq!(
        lim.acquire("m", Some("a")).await.unwrap_err().limit(),
        LimitKind::Key
    );
    drop(held);
    assert_eq!(lim.stats().tracked_keys, 0);
    let _d = lim.acquire("m", Some("d")).await.unwrap();
}

trait AcquireNow {
    fn acquire_now(
        self,
        key: &'static str,
    ) -> tokio::task::JoinHandle<custos_health::CapacityGuard>;
}

impl AcquireNow for CapacityLimiter {
    fn acquire_now(
        self,
        key: &'static str,
    ) -> tokio::task::JoinHandle<custos_health::CapacityGuard> {
        tokio::spawn(async move { self.acquire("m", Some(key)).await.unwrap() })
    }
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
