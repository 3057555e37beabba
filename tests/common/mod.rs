//! Shared test harness: real processes, real HTTP, real Chromium, real libav.
//!
//! Every test binary compiles all of it and uses a part, hence the `allow`. Each
//! submodule is one concern; everything is re-exported, so tests say `common::name`.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod emulators;
pub mod inproc;
pub mod media;
pub mod servers;
pub mod service;

pub use client::*;
pub use emulators::*;
pub use inproc::*;
pub use media::*;
pub use servers::*;
pub use service::*;

use std::path::PathBuf;
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cloudrun-render"))
}

/// One multi-threaded runtime per test binary, so background servers outlive single tests.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Held by tests that assert a deadline (2 s to stop, 10 s to exit), so sibling tests of the
/// same binary do not share the two CPUs with them while they measure.
pub fn timing_sensitive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
