//! Shared test harness: real processes, real HTTP, real Chromium, real libav.
//!
//! Each submodule is one concern; everything is re-exported, so tests say `common::name`.
//! Every test binary compiles all of it and uses a part, hence the `allow`s: unused helpers,
//! and re-exports a binary does not use.
#![allow(dead_code)]

pub mod chunks;
pub mod client;
pub mod cluster;
pub mod crash;
pub mod emulators;
pub mod faults;
pub mod held;
pub mod inproc;
pub mod media;
pub mod procs;
pub mod servers;
pub mod service;
pub mod sites;
pub mod spread;
pub mod wait;

#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use emulators::*;
#[allow(unused_imports)]
pub use inproc::*;
#[allow(unused_imports)]
pub use media::*;
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use servers::*;
#[allow(unused_imports)]
pub use service::*;
#[allow(unused_imports)]
pub use wait::*;

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
