//! cloudrun-render: a render service for Google Cloud Run, wire-compatible with Remotion's
//! `renderMediaOnCloudrun()` / `renderStillOnCloudrun()` clients. See ARCHITECTURE.md.

pub mod api;
pub mod browser;
pub mod cli;
pub mod encode;
pub mod options;
pub mod render;
pub mod site;
pub mod storage;
pub mod system;
