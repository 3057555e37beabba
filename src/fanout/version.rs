//! The build's version, carried by every chunk call: a worker of another build refuses, so a
//! deploy during a render never joins chunks of two different encoders.
//!
//! It is a hash of the running executable, so every build differs without a build script or a
//! version bump, and every instance of one image agrees.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use sha2::Digest;

static CURRENT: OnceLock<String> = OnceLock::new();

/// The first 16 hex digits of the SHA-256 of the file.
pub fn of_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(&hasher.finalize()[..8]))
}

/// This process's version, computed on first use (blocking: reads the executable). If the
/// executable cannot be read, a random value: this instance then matches no other, which
/// refuses chunk calls rather than risking a mix.
pub fn current() -> &'static str {
    CURRENT.get_or_init(
        || match std::env::current_exe().and_then(|exe| of_file(&exe)) {
            Ok(v) => v,
            Err(e) => {
                let v = format!("unreadable-{:016x}", rand::random::<u64>());
                tracing::warn!("cannot hash the executable ({e}); build version {v}");
                v
            }
        },
    )
}

/// Computes the version on a background thread at startup, so neither the first chunk call
/// nor a cold start waits for it.
pub fn compute_in_background() {
    if CURRENT.get().is_none() {
        std::thread::spawn(|| tracing::info!(version = current(), "build version"));
    }
}

/// [`current`] without blocking the async runtime.
pub async fn current_async() -> &'static str {
    match CURRENT.get() {
        Some(v) => v,
        None => tokio::task::spawn_blocking(current)
            .await
            .expect("hashing does not panic"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_follows_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"build one").unwrap();
        std::fs::write(&b, b"build two").unwrap();
        let va = of_file(&a).unwrap();
        assert_eq!(va.len(), 16);
        assert_eq!(va, of_file(&a).unwrap());
        assert_ne!(va, of_file(&b).unwrap());
        assert_eq!(current(), current());
    }
}
