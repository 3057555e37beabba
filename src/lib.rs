//! cloudrun-render: a render service for Google Cloud Run, wire-compatible with Remotion's
//! `renderMediaOnCloudrun()` / `renderStillOnCloudrun()` clients. See ARCHITECTURE.md.

#![recursion_limit = "256"]

pub mod api;
pub mod audio;
pub mod bench;
pub mod browser;
pub mod cli;
pub mod encode;
pub mod fanout;
pub mod fetch;
pub mod guard;
pub mod libav;
pub mod logging;
pub mod offthread;
pub mod options;
pub mod pcm;
pub mod render;
pub mod site;
pub mod sites;
pub mod storage;
pub mod system;
pub mod timing;
