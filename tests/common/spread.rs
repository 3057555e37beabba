//! Renders spread over a local cluster (`cluster`): payloads that ask for chunks, which
//! instance took which chunk call (from its log), and whether an instance's render slot is
//! free (asked of its own chunk endpoint).

use std::path::Path;
use std::time::{Duration, SystemTime};

use cloudrun_render::fanout::auth::{ChunkAuth, SIGNATURE_HEADER};
use cloudrun_render::fanout::plan::ChunkSpan;
use cloudrun_render::fanout::protocol::{CHUNK_PATH, ChunkRequest};
use serde_json::{Value, json};

use super::cluster::{Cluster, Instance, SECRET};
use super::{ClientRead, ClientStream, binary, fixture_server, media_payload, runtime};

/// The output bucket of the cluster tests.
pub const BUCKET: &str = "test-bucket";

/// A media payload of `composition` as the real client sends it, plus our `framesPerChunk`
/// (when given) and a fixed render id, so the test knows its keys.
pub fn spread_payload(composition: &str, frames_per_chunk: Option<u64>, render_id: &str) -> Value {
    let mut payload = media_payload(&format!("{}/site/", fixture_server()), composition);
    payload["outputBucket"] = json!(BUCKET);
    payload["renderIdOverride"] = json!(render_id);
    if let Some(n) = frames_per_chunk {
        payload["framesPerChunk"] = json!(n);
    }
    payload
}

/// POSTs `payload` through a cluster's front end (`url`) and reads the answer as the real client
/// does, asserting what that client needs of every socket read
/// ([`ClientRead::assert_messages`]). Not the spacing: HAProxy forwards each message at once
/// (`option http-no-delay`), but when it runs late for one and on time for the next, two
/// messages the service spaced arrive closer together, and they are still two reads.
pub fn post_through_front_end(url: &str, payload: &Value) -> ClientRead {
    let read = ClientStream::open(url, payload).finish();
    read.assert_messages();
    read
}

/// Every JSON log line of `instance` whose message is `message`.
pub fn log_events(instance: &Instance, message: &str) -> Vec<Value> {
    instance
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// The instances (by index) whose log says they took a call of `chunk` of `render_id`, with
/// the attempt of each call.
pub fn chunk_calls(cluster: &Cluster, render_id: &str, chunk: usize) -> Vec<(usize, u64)> {
    let mut calls = Vec::new();
    for (k, instance) in cluster.instances.iter().enumerate() {
        for e in log_events(instance, "chunk call taken") {
            if e["render_id"] == render_id && e["chunk"] == chunk {
                calls.push((k, e["attempt"].as_u64().expect("an attempt")));
            }
        }
    }
    calls
}

/// The instance that coordinates `render_id`: the one that spread it.
pub fn coordinator_of(cluster: &Cluster, render_id: &str) -> usize {
    let found: Vec<usize> = (0..cluster.instances.len())
        .filter(|&k| {
            log_events(&cluster.instances[k], "spreading the render over instances")
                .iter()
                .any(|e| e["render_id"] == render_id)
        })
        .collect();
    assert_eq!(found.len(), 1, "one coordinator of {render_id}");
    found[0]
}

/// Whether `instance`'s render slot is free, as its own admission says: a signed chunk call
/// with no job is refused with 429 by a busy instance, and taken (and failed at once, for
/// its missing job) by a free one.
pub fn slot_is_free(instance: &Instance) -> bool {
    let version = cloudrun_render::fanout::version::of_file(&binary()).unwrap();
    let body = serde_json::to_vec(&ChunkRequest {
        version,
        render_id: "probe".into(),
        chunk: ChunkSpan {
            index: 0,
            start: 0,
            end: 1,
        },
        attempt: 1,
        job: Value::Null,
    })
    .unwrap();
    let signature = ChunkAuth::new(SECRET)
        .unwrap()
        .sign(&body, SystemTime::now());
    runtime().block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}{CHUNK_PATH}", instance.url))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("the instance answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            429 => false,
            200 => {
                assert!(text.contains("InvalidChunkRequest"), "{text}");
                true
            }
            other => panic!("the probe got {other}: {text}"),
        }
    })
}

/// Downloads `bucket/key` from the cluster's storage to `dir/name`.
pub fn download_to(cluster: &Cluster, key: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, cluster.gcs.download(BUCKET, key)).unwrap();
    path
}
