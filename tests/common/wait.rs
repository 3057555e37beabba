//! Waiting for things to happen, never for a fixed time.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// How long a wait may last before it counts as a hang: far beyond anything a slow or busy
/// machine needs, so it only ever fires on a real hang.
pub const HANG: Duration = Duration::from_secs(120);

/// Polls `done` until it is true; panics after [`HANG`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

static MACHINE: RwLock<()> = RwLock::new(());

/// Held by a test that asserts a real deadline (Cloud Run's 10 s after SIGTERM): no other
/// test of its binary that takes [`beside_timed_tests`] runs while it measures.
pub fn timing_sensitive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// Held by every other test of a binary that has a [`timing_sensitive`] test.
pub fn beside_timed_tests() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// [`wait_until`] for async conditions, inside a runtime.
pub async fn wait_until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + HANG;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
