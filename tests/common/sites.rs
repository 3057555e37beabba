//! Deployed sites in fake-gcs-server, and the CLI run against it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use super::{FakeGcs, binary, runtime};

/// The CLI as a real process with `STORAGE_EMULATOR_HOST` pointing at `gcs` (and nothing
/// from the test's own environment choosing another storage).
pub fn cli_on(gcs: &FakeGcs, args: &[&str]) -> Output {
    let out = Command::new(binary())
        .args(args)
        .env_remove("CLOUDRUN_RENDER_LOCAL_STORAGE")
        .env("STORAGE_EMULATOR_HOST", &gcs.host)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the CLI");
    eprintln!(
        "$ cloudrun-render {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `sites create` that must succeed; returns the serve URL it printed.
pub fn deploy(gcs: &FakeGcs, bundle: &Path, bucket: &str, extra: &[&str]) -> (String, Output) {
    let mut args = vec![
        "sites",
        "create",
        bundle.to_str().unwrap(),
        "--bucket",
        bucket,
    ];
    args.extend_from_slice(extra);
    let o = cli_on(gcs, &args);
    assert!(o.status.success(), "sites create failed: {}", stderr(&o));
    (stdout(&o).trim().to_string(), o)
}

/// Every object under `prefix` with its generation: a new generation is a new upload.
pub fn generations(gcs: &FakeGcs, bucket: &str, prefix: &str) -> BTreeMap<String, String> {
    gcs.keys(bucket, prefix)
        .into_iter()
        .map(|key| {
            let object = gcs.object(bucket, &key).expect("a listed object");
            let generation = object["generation"].as_str().unwrap().to_string();
            (key, generation)
        })
        .collect()
}

/// GET of a public URL the way Chromium fetches it: status, Content-Type, body.
pub fn fetch_public(url: &str) -> (u16, Option<String>, Vec<u8>) {
    runtime().block_on(async {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        (status, content_type, r.bytes().await.unwrap().to_vec())
    })
}

/// A copy of `from` (recursively) at `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
