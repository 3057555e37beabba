//! Fan-out end to end: the real binary as N instances behind the real HAProxy, storing in
//! fake-gcs-server; the client's request goes through HAProxy and so do the coordinator's
//! chunk calls. The scenarios share one 4-instance cluster and run one after the other (what
//! one asserts about idle instances must not see another's render); the one that kills an
//! instance comes last.
//!
//! Frames are held with the fixture's `gates` prop (a frame waits until a test server
//! answers), so every "while a chunk renders" is an event, never a time.

mod common;

use std::time::Instant;

use common::chunks::{render_in_chunks, video_packets};
use common::cluster::{Cluster, HaproxyOptions};
use common::held::HeldFile;
use common::spread::*;
use common::*;
use serde_json::{Value, json};

/// No duplicates for stragglers: on a slow machine a duplicate of a held chunk would take
/// the place of the retry the kill test counts. Duplicates are the scheduler's unit tests'.
/// At most [`MAX_CHUNKS`] chunks a render.
const ENV: &[(&str, &str)] = &[
    ("CLOUDRUN_RENDER_STRAGGLER_FACTOR", "0"),
    ("CLOUDRUN_RENDER_MAX_CHUNKS", "4"),
];
const MAX_CHUNKS: usize = 4;

fn cluster(instances: usize) -> Cluster {
    let cluster = Cluster::start_with(instances, ENV, &HaproxyOptions::default());
    cluster.gcs.create_bucket(BUCKET);
    cluster
}

fn props(value: Value) -> Value {
    json!(value.to_string())
}

fn success(read: &ClientRead) -> &Value {
    read.response
        .as_ref()
        .unwrap_or_else(|| panic!("the render failed: {:?}", read.error))
}

/// Progress lines rise and end at exactly 1.
fn assert_progress_rises_to_one(read: &ClientRead) {
    assert!(read.progress.len() >= 3, "{:?}", read.progress);
    assert!(
        read.progress.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        read.progress
    );
    assert_eq!(read.progress.last(), Some(&1.0));
}

#[test]
fn four_instances_render_like_one_and_fail_like_one() {
    let mut cluster = cluster(4);
    spread_audio_is_the_single_render(&cluster);
    large_props_go_through_the_bucket(&cluster);
    the_maximum_of_chunks_caps_frames_per_chunk(&cluster);
    a_page_error_in_a_chunk_fails_the_render_and_frees_every_instance(&cluster);
    a_worker_killed_mid_chunk_costs_one_retry(&mut cluster);
}

/// The barcode fixture with audio in four chunks over three workers: every frame once and in
/// order, the video packets those of the chunks, the audio the single render's.
fn spread_audio_is_the_single_render(cluster: &Cluster) {
    let spread = post_through_front_end(&cluster.url, &spread_payload("Audio", Some(15), "spread"));
    let response = success(&spread);
    assert_eq!(response["type"], "success");
    assert_eq!(
        (
            &response["chunks"],
            &response["retries"],
            &response["duplicates"]
        ),
        (&json!(4), &json!(0), &json!(0)),
        "{response}"
    );
    assert!(response["instanceSeconds"].as_f64().unwrap() > 0.0);
    assert_progress_rises_to_one(&spread);

    // Three workers took the first three chunks at once (the coordinator's own instance is
    // busy with the client's request), and each chunk was rendered once.
    let coordinator = coordinator_of(cluster, "spread");
    let mut workers = Vec::new();
    for chunk in 0..4 {
        let calls = chunk_calls(cluster, "spread", chunk);
        assert_eq!(calls.len(), 1, "chunk {chunk}: {calls:?}");
        assert_eq!(calls[0].1, 1);
        assert_ne!(calls[0].0, coordinator);
        workers.push(calls[0].0);
    }
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), 3, "chunks on every worker: {workers:?}");
    assert!(
        cluster
            .gcs
            .keys(BUCKET, "renders/spread/chunks/")
            .is_empty(),
        "chunk objects deleted"
    );

    let single = post_through_front_end(&cluster.url, &spread_payload("Audio", None, "single"));
    let response = success(&single);
    assert!(response.get("chunks").is_none(), "60 frames stay whole");
    assert_progress_rises_to_one(&single);

    let dir = tempfile::tempdir().unwrap();
    let spread = download_to(cluster, "renders/spread/out.mp4", dir.path(), "spread.mp4");
    let single = download_to(cluster, "renders/single/out.mp4", dir.path(), "single.mp4");
    assert_frames(&spread, &(0..60).collect::<Vec<_>>());

    // The audio is mixed once from every frame's asset records, as in one instance: the
    // decoded samples are identical, not merely close.
    let (a, b) = (stereo_pcm(&single), stereo_pcm(&spread));
    assert!(a.len() > 48_000 * 2 && a.iter().any(|s| s.abs() > 0.1));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the spread render's audio is the single render's");

    // The packets are the chunks' own, copied: the same ranges rendered through the stage
    // API here (x264 is deterministic for the same frames and settings) give byte-identical
    // packets, in the same order.
    let chunks = render_in_chunks(&media("Audio"), 15);
    let expected: Vec<String> = chunks
        .chunks
        .iter()
        .flat_map(|(path, _)| video_packets(path).into_iter().map(|p| p.hash))
        .collect();
    let joined: Vec<String> = video_packets(&spread).into_iter().map(|p| p.hash).collect();
    assert_eq!(joined.len(), 60);
    assert_eq!(
        joined, expected,
        "the joined packets are the chunks' packets"
    );
}

/// Props too large to send with every chunk call travel through the bucket.
fn large_props_go_through_the_bucket(cluster: &Cluster) {
    let mut payload = spread_payload("Frames", Some(10), "large-props");
    payload["frameRange"] = json!([0, 19]);
    // 5 MiB of props: the job (payload and resolved props) is twice that.
    payload["serializedInputPropsWithCustomSchema"] =
        props(json!({"padding": "x".repeat(5 << 20)}));
    let read = post_through_front_end(&cluster.url, &payload);
    assert_eq!(success(&read)["chunks"], 2);
    let coordinator = coordinator_of(cluster, "large-props");
    let stored = log_events(
        &cluster.instances[coordinator],
        "the chunk job is large: the calls carry its key",
    );
    assert!(
        stored.iter().any(|e| e["render_id"] == "large-props"),
        "the job went to the bucket"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = download_to(cluster, "renders/large-props/out.mp4", dir.path(), "o.mp4");
    assert_frames(&out, &(0..20).collect::<Vec<_>>());
    assert!(
        cluster
            .gcs
            .keys(BUCKET, "renders/large-props/chunks/")
            .is_empty(),
        "the job and the chunks are deleted"
    );
}

/// `framesPerChunk` 4 over 20 frames asks for 5 chunks; `CLOUDRUN_RENDER_MAX_CHUNKS` makes
/// them 4 of 5 frames each.
fn the_maximum_of_chunks_caps_frames_per_chunk(cluster: &Cluster) {
    let mut payload = spread_payload("Frames", Some(4), "capped");
    payload["frameRange"] = json!([0, 19]);
    let read = post_through_front_end(&cluster.url, &payload);
    assert_eq!(success(&read)["chunks"], MAX_CHUNKS, "{:?}", read.response);
    assert_progress_rises_to_one(&read);
    for chunk in 0..MAX_CHUNKS {
        assert_eq!(
            chunk_calls(cluster, "capped", chunk).len(),
            1,
            "chunk {chunk}"
        );
    }
    assert!(chunk_calls(cluster, "capped", MAX_CHUNKS).is_empty());
    let coordinator = coordinator_of(cluster, "capped");
    let spreading = log_events(
        &cluster.instances[coordinator],
        "spreading the render over instances",
    );
    let this = spreading
        .iter()
        .find(|e| e["render_id"] == "capped")
        .unwrap();
    assert_eq!(this["why"], "RequestedButCapped", "{this}");
    let dir = tempfile::tempdir().unwrap();
    let out = download_to(cluster, "renders/capped/out.mp4", dir.path(), "o.mp4");
    assert_frames(&out, &(0..20).collect::<Vec<_>>());
}

/// Chunk 1 throws at frame 15 once chunk 0 is stored; chunk 2 is held at frame 25 the whole
/// time. The render fails with the page's error, the held worker is cancelled and every
/// instance is free again within 5 s, nothing is at the output key, `error.txt` is, and the
/// chunk object chunk 0 stored is gone.
fn a_page_error_in_a_chunk_fails_the_render_and_frees_every_instance(cluster: &Cluster) {
    let throw_gate = HeldFile::start("throw", b"go".to_vec());
    let held = HeldFile::start("held", b"never".to_vec());
    let mut payload = spread_payload("Throws", Some(10), "page-error");
    payload["serializedInputPropsWithCustomSchema"] = props(json!({
        "throwAt": 15,
        "gates": {"15": throw_gate.url, "25": held.url},
    }));
    payload["delayRenderTimeoutInMilliseconds"] = json!(120_000);
    let client = {
        let (url, payload) = (cluster.url.clone(), payload.clone());
        std::thread::spawn(move || post_through_front_end(&url, &payload))
    };
    throw_gate.wait_requested();
    held.wait_requested();
    wait_until("chunk 0 to be stored", || {
        cluster
            .gcs
            .keys(BUCKET, "renders/page-error/chunks/")
            .iter()
            .any(|k| k.ends_with("00000.1.video.chunk"))
    });
    throw_gate.release();
    let read = client.join().unwrap();
    let failed_at = Instant::now();

    let error = read.error.as_ref().expect("the render fails");
    assert_eq!(error["name"], "TypeError", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("fixture exploded at frame 15"),
        "{error}"
    );
    assert!(
        error["stack"].as_str().unwrap().contains("TypeError"),
        "{error}"
    );
    assert!(read.progress.windows(2).all(|w| w[0] < w[1]));
    assert!(
        cluster
            .gcs
            .object(BUCKET, "renders/page-error/out.mp4")
            .is_none()
    );
    let txt: Value =
        serde_json::from_slice(&cluster.gcs.download(BUCKET, "renders/page-error/error.txt"))
            .unwrap();
    assert!(
        txt["message"]
            .as_str()
            .unwrap()
            .contains("fixture exploded")
    );
    assert!(
        cluster
            .gcs
            .keys(BUCKET, "renders/page-error/chunks/")
            .is_empty(),
        "the chunk objects are deleted before the answer"
    );

    // The upper bound is the behaviour here; nothing else of this binary runs meanwhile.
    let _alone = timing_sensitive();
    wait_until("every instance's slot to be free", || {
        cluster.instances.iter().all(slot_is_free)
    });
    let took = failed_at.elapsed();
    assert!(
        took.as_secs_f64() <= 5.0,
        "the instances were busy for {took:?} after the error"
    );
    let held_worker = chunk_calls(cluster, "page-error", 2);
    assert_eq!(held_worker.len(), 1);
    let cancelled = log_events(
        &cluster.instances[held_worker[0].0],
        "chunk failed: The render was cancelled",
    );
    assert!(
        cancelled.iter().any(|e| e["render_id"] == "page-error"),
        "the held chunk was cancelled on its worker"
    );
}

/// A worker is killed with SIGKILL while its chunk is held at a frame: the chunk is rendered
/// again on another instance (attempt 2) and the render succeeds, every frame once.
fn a_worker_killed_mid_chunk_costs_one_retry(cluster: &mut Cluster) {
    let gate = HeldFile::start("kill", b"go".to_vec());
    let mut payload = spread_payload("Frames", Some(10), "killed");
    payload["frameRange"] = json!([0, 29]);
    payload["serializedInputPropsWithCustomSchema"] = props(json!({"gates": {"15": gate.url}}));
    payload["delayRenderTimeoutInMilliseconds"] = json!(120_000);
    // The client's progress, as it reads it, so that the kill comes once the stream counts
    // the held chunk's frames: losing them must not take the number back.
    let (seen_tx, seen) = std::sync::mpsc::channel::<f64>();
    let client = {
        let (url, payload) = (cluster.url.clone(), payload.clone());
        std::thread::spawn(move || {
            let mut stream = ClientStream::open(&url, &payload);
            while let Some(message) = stream.next_message() {
                if let Some(p) = message["onProgress"].as_f64() {
                    let _ = seen_tx.send(p);
                }
            }
            let read = stream.finish();
            read.assert_messages();
            read
        })
    };
    gate.wait_requested();
    let mut victim = None;
    wait_until("the held chunk's worker to be known", || {
        victim = chunk_calls(cluster, "killed", 1).first().map(|c| c.0);
        victim.is_some()
    });
    let victim = victim.unwrap();
    // Chunks 0 and 2 done are 0.95 × 20/30 = 0.63; above 0.65 the held chunk's frames count.
    let mut highest = 0.0;
    wait_until("the held chunk's frames in the client's progress", || {
        highest = seen.try_iter().fold(highest, f64::max);
        highest > 0.65
    });
    cluster.lose(victim);
    gate.release();
    let read = client.join().unwrap();
    let response = success(&read);
    assert_eq!(
        (&response["chunks"], &response["retries"]),
        (&json!(3), &json!(1)),
        "{response}\n{}",
        vanished_lines(cluster, "killed")
    );
    assert_progress_rises_to_one(&read);
    let calls = chunk_calls(cluster, "killed", 1);
    let seen = || {
        format!(
            "victim i{victim}: {calls:?}\n{}",
            vanished_lines(cluster, "killed")
        )
    };
    assert_eq!(calls.len(), 2, "{}", seen());
    assert!(calls.contains(&(victim, 1)), "{}", seen());
    assert!(
        calls.iter().any(|&(k, a)| k != victim && a == 2),
        "{}",
        seen()
    );
    let coordinator = coordinator_of(cluster, "killed");
    let of_this_render = |e: &Value| e["render_id"] == "killed";
    let retried: Vec<Value> = cluster.instances[coordinator]
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            of_this_render(e)
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("the worker vanished"))
        })
        .collect();
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(
        (&retried[0]["chunk"], &retried[0]["attempt"]),
        (&json!(1), &json!(1))
    );
    let joined: Vec<Value> = log_events(&cluster.instances[coordinator], "spread render joined")
        .into_iter()
        .filter(of_this_render)
        .collect();
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["retries"], 1);
    let dir = tempfile::tempdir().unwrap();
    let out = download_to(cluster, "renders/killed/out.mp4", dir.path(), "o.mp4");
    assert_frames(&out, &(0..30).collect::<Vec<_>>());
}

/// What the instances logged of `render_id`'s vanished attempts and chunk calls, for a
/// failure's message.
fn vanished_lines(cluster: &Cluster, render_id: &str) -> String {
    let mut lines = String::new();
    for (k, instance) in cluster.instances.iter().enumerate() {
        for line in instance.log_text().lines() {
            if line.contains(render_id)
                && (line.contains("vanished") || line.contains("chunk call taken"))
            {
                lines.push_str(&format!("i{k}: {line}\n"));
            }
        }
    }
    lines
}
