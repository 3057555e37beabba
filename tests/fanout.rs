//! Fan-out, phase A: the local cluster (real instances behind a real HAProxy), the chunk
//! endpoint's refusals on the real service, and the coordinator's HTTP chunk client and
//! scheduler against test workers (the real endpoint code with executors the test controls)
//! behind the real HAProxy.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cloudrun_render::api::chunk::{Worker, worker_router};
use cloudrun_render::fanout::auth::{ChunkAuth, IdTokenSource, SIGNATURE_HEADER};
use cloudrun_render::fanout::client::{HttpChunkRunner, Target};
use cloudrun_render::fanout::plan::ChunkSpan;
use cloudrun_render::fanout::progress::{AttemptProgress, ProgressBoard};
use cloudrun_render::fanout::protocol::{CHUNK_PATH, ChunkError, ChunkRequest, names};
use cloudrun_render::fanout::scheduler::{
    ChunkFailure, ChunkRunner, Policy, Report, ScheduleError, run_chunks,
};
use cloudrun_render::fanout::worker::{ChunkExecutor, WorkerFailure};
use cloudrun_render::render::ProgressSender;
use common::cluster::{Cluster, FrontEnd, Haproxy, HaproxyOptions};
use common::{Service, fixture_server, media_payload, runtime};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// The cluster harness

/// What a client that reads the raw socket saw. The real client appends the body bytes of
/// each socket read to a buffer and JSON-parses the whole buffer after each read, so two
/// messages in one read are never understood.
#[derive(Debug, Default)]
struct RawRead {
    status: u16,
    /// The body bytes of each socket read that carried any.
    reads: Vec<String>,
    messages: Vec<Value>,
    leftover: String,
}

/// Decodes `Transfer-Encoding: chunked` as bytes arrive; returns the body pieces in them.
#[derive(Default)]
struct Chunked {
    pending: Vec<u8>,
    remaining: usize,
    crlf: bool,
    done: bool,
}

impl Chunked {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(bytes);
        let mut pieces = Vec::new();
        loop {
            if self.done {
                return pieces;
            }
            if self.remaining > 0 {
                if self.pending.is_empty() {
                    return pieces;
                }
                let n = self.remaining.min(self.pending.len());
                pieces.push(self.pending.drain(..n).collect());
                self.remaining -= n;
                self.crlf = self.remaining == 0;
                continue;
            }
            if self.crlf {
                if self.pending.len() < 2 {
                    return pieces;
                }
                assert_eq!(&self.pending[..2], b"\r\n", "chunk framing");
                self.pending.drain(..2);
                self.crlf = false;
                continue;
            }
            let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") else {
                return pieces;
            };
            let line = String::from_utf8(self.pending.drain(..end + 2).collect()).unwrap();
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .expect("a chunk size");
            if size == 0 {
                self.done = true;
            } else {
                self.remaining = size;
            }
        }
    }
}

/// POSTs `payload` over a plain socket and reads it as the real client does. `on_message`
/// sees each parsed message as it arrives.
fn post_raw(url: &str, payload: &Value, mut on_message: impl FnMut(&Value)) -> RawRead {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let body = serde_json::to_vec(payload).unwrap();
    write!(
        socket,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    socket.write_all(&body).unwrap();
    let mut read = RawRead::default();
    let mut head = Vec::new();
    let mut chunked: Option<Chunked> = None;
    let mut buffer = String::new();
    let mut bytes = [0u8; 65536];
    loop {
        let n = socket.read(&mut bytes).expect("read");
        if n == 0 {
            break;
        }
        let body_part: Vec<u8> = match chunked.as_mut() {
            Some(_) => bytes[..n].to_vec(),
            None => {
                head.extend_from_slice(&bytes[..n]);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                read.status = text[9..12].parse().unwrap();
                assert!(
                    text.contains("transfer-encoding: chunked"),
                    "a streamed response: {text}"
                );
                chunked = Some(Chunked::default());
                head[end + 4..].to_vec()
            }
        };
        let piece: Vec<u8> = chunked.as_mut().unwrap().feed(&body_part).concat();
        if piece.is_empty() {
            continue;
        }
        let piece = String::from_utf8(piece).unwrap();
        buffer.push_str(&piece);
        read.reads.push(piece);
        if let Ok(message) = serde_json::from_str::<Value>(buffer.trim()) {
            buffer.clear();
            on_message(&message);
            read.messages.push(message);
        }
    }
    read.leftover = buffer;
    read
}

#[test]
fn the_cluster_streams_one_message_per_read_and_queues_a_second_request() {
    // The check is what the real client depends on: messages 100 ms apart arrive in separate
    // reads. Sibling renders of this binary would compete with the reader for the CPUs.
    let _alone = common::timing_sensitive();
    // One instance: the second request can only succeed if HAProxy queues it, since the
    // instance itself refuses a second render with 429.
    let cluster = Cluster::start(1);
    cluster.gcs.create_bucket("test-bucket");
    let mut payload = media_payload(&format!("{}/site/", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 29]);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let first = {
        let (url, payload) = (cluster.url.clone(), payload.clone());
        std::thread::spawn(move || {
            post_raw(&url, &payload, |m| {
                if m.get("onProgress").is_some() {
                    let _ = started_tx.send(());
                }
            })
        })
    };
    started_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the first render streams progress");
    // The first render is running now; this one waits in HAProxy's queue.
    let second = post_raw(&cluster.url, &payload, |_| {});
    let first = first.join().unwrap();
    for (which, read) in [("first", &first), ("second", &second)] {
        assert_eq!(read.status, 200, "{which}");
        assert_eq!(
            read.leftover, "",
            "{which}: the client could not parse {read:?}"
        );
        assert_eq!(
            read.reads.len(),
            read.messages.len(),
            "{which}: one message per socket read: {:?}",
            read.reads
        );
        let progress: Vec<f64> = read
            .messages
            .iter()
            .filter_map(|m| m["onProgress"].as_f64())
            .collect();
        assert!(progress.len() >= 2, "{which}: {progress:?}");
        assert!(
            progress.windows(2).all(|w| w[0] < w[1]),
            "{which}: {progress:?}"
        );
        let last = read.messages.last().unwrap();
        assert_eq!(last["response"]["type"], "success", "{which}: {last}");
        assert!(
            cluster
                .gcs
                .object(
                    "test-bucket",
                    &format!(
                        "renders/{}/out.mp4",
                        last["response"]["renderId"].as_str().unwrap()
                    )
                )
                .is_some(),
            "{which}: the output is in the bucket"
        );
    }
}

#[test]
fn the_cluster_script_renders_a_fixture_through_haproxy() {
    let _alone = common::timing_sensitive();
    let out = std::process::Command::new(common::repo().join("scripts/cluster"))
        .args(["2", "--port", "0", "--smoke", "--binary"])
        .arg(common::binary())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run scripts/cluster");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/cluster failed:\n{stderr}");
    assert!(stderr.contains("2 instances ("), "{stderr}");
    assert!(stderr.contains("cluster: smoke: ok"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// The chunk endpoint of the real service

const SECRET: &str = "the service's own chunk secret";

fn chunk_body(version: &str) -> Vec<u8> {
    serde_json::to_vec(&ChunkRequest {
        version: version.into(),
        render_id: "abcdef".into(),
        chunk: ChunkSpan {
            index: 0,
            start: 0,
            end: 10,
        },
        attempt: 1,
        job: Value::Null,
    })
    .unwrap()
}

/// POSTs `body` to the chunk endpoint; returns the status and the whole body as JSON values.
fn call_chunk(base: &str, body: &[u8], signature: Option<String>) -> (u16, Vec<Value>) {
    runtime().block_on(async {
        let mut request = reqwest::Client::new()
            .post(format!("{base}{CHUNK_PATH}"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            request = request.header(SIGNATURE_HEADER, s);
        }
        let response = request
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let values = serde_json::Deserializer::from_slice(&bytes)
            .into_iter::<Value>()
            .map(|v| v.expect("JSON messages"))
            .collect();
        (status, values)
    })
}

fn binary_version() -> String {
    cloudrun_render::fanout::version::of_file(&common::binary()).unwrap()
}

#[test]
fn the_chunk_endpoint_refuses_unsigned_forged_and_old_calls() {
    let service = Service::start(&[("CLOUDRUN_RENDER_CHUNK_SECRET", SECRET)]);
    let auth = ChunkAuth::new(SECRET).unwrap();
    let body = chunk_body(&binary_version());
    let now = SystemTime::now();

    // A payload client's request, as it would send it, to the chunk path.
    let payload = serde_json::to_vec(&media_payload("http://example.com/", "Frames")).unwrap();
    let (status, said) = call_chunk(&service.url, &payload, None);
    assert_eq!((status, said[0]["name"].as_str()), (401, Some(names::AUTH)));

    let forged = ChunkAuth::new("somebody else's secret").unwrap();
    let (status, said) = call_chunk(&service.url, &body, Some(forged.sign(&body, now)));
    assert_eq!(status, 401);
    assert!(
        said[0]["message"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );

    // A call recorded and replayed later than the signature's lifetime.
    let old = auth.sign(&body, now - Duration::from_secs(301));
    let (status, said) = call_chunk(&service.url, &body, Some(old));
    assert_eq!(status, 401);
    assert!(
        said[0]["message"].as_str().unwrap().contains("replay"),
        "{said:?}"
    );

    // The same call, fresh: taken, and refused by the worker only for its empty job.
    let (status, said) = call_chunk(&service.url, &body, Some(auth.sign(&body, now)));
    assert_eq!(status, 200);
    let last = said.last().unwrap();
    assert_eq!(last["name"], names::INVALID, "{said:?}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("not a chunk job"),
        "{said:?}"
    );
    assert_eq!(last["retryable"], false);
}

#[test]
fn a_worker_of_another_build_refuses() {
    let service = Service::start(&[("CLOUDRUN_RENDER_CHUNK_SECRET", SECRET)]);
    let auth = ChunkAuth::new(SECRET).unwrap();
    let other = chunk_body("0123456789abcdef");
    let (status, said) = call_chunk(
        &service.url,
        &other,
        Some(auth.sign(&other, SystemTime::now())),
    );
    assert_eq!(status, 409);
    assert_eq!(said[0]["name"], names::VERSION_MISMATCH);
    let message = said[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&binary_version()) && message.contains("0123456789abcdef"),
        "{message}"
    );
}

#[test]
fn without_a_secret_the_chunk_endpoint_is_off() {
    let service = Service::start(&[]);
    let body = chunk_body(&binary_version());
    let anyone = ChunkAuth::new("any secret will do here").unwrap();
    let (status, said) = call_chunk(
        &service.url,
        &body,
        Some(anyone.sign(&body, SystemTime::now())),
    );
    assert_eq!(
        (status, said[0]["name"].as_str()),
        (403, Some(names::DISABLED))
    );
}

// ---------------------------------------------------------------------------------------
// The HTTP chunk client and the scheduler against test workers behind HAProxy

const BUILD: &str = "test-build";
const CLUSTER_SECRET: &str = "the test cluster's secret";

type ExecutorFn = dyn Fn(
        ChunkRequest<Value>,
        ProgressSender,
        CancellationToken,
    ) -> BoxFuture<'static, Result<Value, WorkerFailure>>
    + Send
    + Sync;

struct FnExecutor(Box<ExecutorFn>);

impl ChunkExecutor for FnExecutor {
    fn run(
        &self,
        request: ChunkRequest<Value>,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<Value, WorkerFailure>> {
        (self.0)(request, progress, cancel)
    }
}

/// Reports every frame, then answers which worker did which attempt.
fn frames_executor(worker: usize) -> Arc<dyn ChunkExecutor> {
    Arc::new(FnExecutor(Box::new(move |request, progress, _cancel| {
        Box::pin(async move {
            let frames = request.chunk.end - request.chunk.start;
            progress.send_modify(|p| p.total = frames);
            for k in 1..=frames {
                progress.send_modify(|p| {
                    p.rendered = k;
                    p.encoded = k;
                });
                tokio::task::yield_now().await;
            }
            Ok(json!({"worker": worker, "chunk": request.chunk.index, "attempt": request.attempt}))
        })
    })))
}

/// What the test controls around the real endpoint: scripted statuses for the next calls and
/// a record of every call's headers.
struct Control {
    faults: Mutex<VecDeque<u16>>,
    seen: Mutex<Vec<HeaderMap>>,
}

async fn control_layer(
    State(control): State<Arc<Control>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == CHUNK_PATH {
        control.seen.lock().unwrap().push(request.headers().clone());
        if let Some(status) = control.faults.lock().unwrap().pop_front() {
            return (StatusCode::from_u16(status).unwrap(), "scripted fault").into_response();
        }
    }
    next.run(request).await
}

/// The real chunk endpoint with an executor the test controls, on its own runtime, so that
/// killing it closes every socket at once (its listener, running and idle connections), as
/// when an instance dies.
struct TestWorker {
    addr: SocketAddr,
    admission: Arc<Semaphore>,
    control: Arc<Control>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl TestWorker {
    fn start(secret: &str, version: &str, executor: Arc<dyn ChunkExecutor>) -> TestWorker {
        let admission = Arc::new(Semaphore::new(1));
        let control = Arc::new(Control {
            faults: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
        });
        let worker = Arc::new(Worker {
            auth: Some(ChunkAuth::new(secret).unwrap()),
            version: Some(version.into()),
            admission: admission.clone(),
            shutdown: CancellationToken::new(),
            executor,
        });
        let app = worker_router(worker)
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                control.clone(),
                control_layer,
            ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestWorker {
            addr,
            admission,
            control,
            runtime: Mutex::new(Some(runtime)),
        }
    }

    fn calls(&self) -> usize {
        self.control.seen.lock().unwrap().len()
    }

    /// Every task and socket of the worker goes at once.
    fn kill(&self) {
        if let Some(runtime) = self.runtime.lock().unwrap().take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` workers of this build and secret behind HAProxy; worker k runs `executor(k)`.
fn cluster_of(
    n: usize,
    executor: impl Fn(usize) -> Arc<dyn ChunkExecutor>,
) -> (Vec<TestWorker>, Haproxy) {
    let workers: Vec<TestWorker> = (0..n)
        .map(|k| TestWorker::start(CLUSTER_SECRET, BUILD, executor(k)))
        .collect();
    let front = front_end(
        &workers.iter().collect::<Vec<_>>(),
        &HaproxyOptions::default(),
    );
    (workers, front)
}

fn front_end(workers: &[&TestWorker], options: &HaproxyOptions) -> Haproxy {
    let addrs: Vec<SocketAddr> = workers.iter().map(|w| w.addr).collect();
    FrontEnd::bind().start(&addrs, options)
}

#[derive(Debug)]
struct FixedToken(&'static str);

#[async_trait::async_trait]
impl IdTokenSource for FixedToken {
    async fn id_token(&self) -> Result<Option<String>, String> {
        Ok(Some(self.0.to_string()))
    }
}

/// Wraps the HTTP runner and records what each attempt came to.
struct Recording<R> {
    inner: R,
    log: Arc<Mutex<Vec<(usize, u32, String)>>>,
}

#[async_trait::async_trait]
impl<R: ChunkRunner> ChunkRunner for Recording<R> {
    type Output = R::Output;
    async fn run(
        &self,
        chunk: ChunkSpan,
        attempt: u32,
        progress: AttemptProgress,
    ) -> Result<R::Output, ChunkFailure> {
        let result = self.inner.run(chunk, attempt, progress).await;
        let what = match &result {
            Ok(_) => "ok".to_string(),
            Err(ChunkFailure::Vanished(m)) => format!("vanished: {m}"),
            Err(ChunkFailure::NoCapacity { message, .. }) => format!("no capacity: {message}"),
            Err(ChunkFailure::Fatal(e)) => format!("fatal: {}", e.name),
        };
        self.log.lock().unwrap().push((chunk.index, attempt, what));
        result
    }
}

fn spans(sizes: &[u64]) -> Vec<ChunkSpan> {
    cloudrun_render::fanout::plan::contiguous(sizes.iter().copied())
}

struct Run {
    result: Result<Report<Value>, ScheduleError>,
    log: Vec<(usize, u32, String)>,
    board: ProgressBoard,
}

fn target(front: &Haproxy, secret: &str) -> Target {
    Target {
        base_url: front.url.parse().unwrap(),
        auth: ChunkAuth::new(secret).unwrap(),
        version: BUILD.into(),
        idle_timeout: Duration::from_secs(120),
    }
}

fn runner(front: &Haproxy, secret: &str) -> HttpChunkRunner<Value, Value> {
    HttpChunkRunner::new(
        target(front, secret),
        Arc::new(FixedToken("an-id-token")),
        "render1".into(),
        json!({"phase": "A"}),
    )
}

fn fast_policy() -> Policy {
    Policy {
        backoff_start: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..Policy::default()
    }
}

/// Runs `chunks` through `front` as a coordinator would; `during` runs alongside, with the
/// attempt log, until the render ends.
fn coordinate(front: &Haproxy, secret: &str, chunks: &[ChunkSpan], policy: Policy) -> Run {
    let log = Arc::new(Mutex::new(Vec::new()));
    let recording = Recording {
        inner: runner(front, secret),
        log: log.clone(),
    };
    let (board, _rx) = ProgressBoard::new(chunks);
    let result = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(120),
            run_chunks(
                &recording,
                chunks,
                &board,
                &policy,
                &CancellationToken::new(),
            ),
        )
        .await
        .expect("the render ended")
    });
    let log = log.lock().unwrap().clone();
    Run { result, log, board }
}

#[test]
fn chunks_run_on_separate_workers_signed_versioned_and_with_an_id_token() {
    let (workers, front) = cluster_of(3, frames_executor);
    let chunks = spans(&[30, 30, 31]);
    let run = coordinate(&front, CLUSTER_SECRET, &chunks, Policy::default());
    let report = run.result.expect("the render succeeds");
    let mut by_worker: Vec<u64> = report
        .chunks
        .iter()
        .map(|f| {
            assert_eq!(f.output["chunk"], f.span.index);
            assert_eq!(f.output["attempt"], 1);
            f.output["worker"].as_u64().unwrap()
        })
        .collect();
    by_worker.sort();
    assert_eq!(by_worker, [0, 1, 2], "concurrency 1: one chunk per worker");
    assert_eq!(report.retries, 0);
    let published = run.board.published();
    assert_eq!((published.rendered, published.encoded), (91, 91));
    assert_eq!(published.fraction, 0.95, "all chunks, no join yet");
    for w in &workers {
        for headers in w.control.seen.lock().unwrap().iter() {
            assert_eq!(headers["authorization"], "Bearer an-id-token");
            assert!(
                headers[SIGNATURE_HEADER]
                    .to_str()
                    .unwrap()
                    .starts_with("t=")
            );
        }
    }
}

#[test]
fn a_worker_killed_mid_chunk_is_retried_on_another() {
    let (in_chunk_tx, in_chunk_rx) = std::sync::mpsc::channel::<()>();
    let in_chunk_tx = Mutex::new(in_chunk_tx);
    // Worker 0 (HAProxy's first choice) reports a frame and then hangs until it is killed.
    let doomed = TestWorker::start(
        CLUSTER_SECRET,
        BUILD,
        Arc::new(FnExecutor(Box::new(move |_request, progress, cancel| {
            let started = in_chunk_tx.lock().unwrap().clone();
            Box::pin(async move {
                progress.send_modify(|p| p.rendered = 1);
                let _ = started.send(());
                cancel.cancelled().await;
                Err(WorkerFailure {
                    error: ChunkError::new("CancelledError", "cancelled"),
                    retryable: true,
                })
            })
        }))),
    );
    let healthy = TestWorker::start(CLUSTER_SECRET, BUILD, frames_executor(1));
    let front = front_end(&[&doomed, &healthy], &HaproxyOptions::default());
    let run = std::thread::scope(|scope| {
        scope.spawn(move || {
            if in_chunk_rx.recv_timeout(Duration::from_secs(60)).is_ok() {
                doomed.kill();
            }
        });
        coordinate(&front, CLUSTER_SECRET, &spans(&[20]), fast_policy())
    });
    let report = run.result.expect("the render succeeds");
    assert_eq!(report.retries, 1, "{:?}", run.log);
    assert_eq!(report.chunks[0].attempt, 2);
    assert_eq!(report.chunks[0].output["worker"], 1);
    assert_eq!(run.log.len(), 2);
    assert!(run.log[0].2.starts_with("vanished"), "{:?}", run.log);
}

#[test]
fn a_5xx_and_a_stream_without_a_result_are_retried() {
    // The first call fails with 500; the second takes the chunk and its worker dies without
    // a final message (the executor panics); the third succeeds.
    let executor = {
        let frames = frames_executor(0);
        Arc::new(FnExecutor(Box::new(move |request, progress, cancel| {
            if request.attempt == 2 {
                Box::pin(async { panic!("the test's executor dies without a result") })
            } else {
                frames.run(request, progress, cancel)
            }
        })))
    };
    let worker = TestWorker::start(CLUSTER_SECRET, BUILD, executor);
    worker.control.faults.lock().unwrap().push_back(500);
    let front = front_end(&[&worker], &HaproxyOptions::default());
    let run = coordinate(&front, CLUSTER_SECRET, &spans(&[10]), fast_policy());
    let report = run.result.expect("the render succeeds");
    assert_eq!(report.retries, 2, "{:?}", run.log);
    assert_eq!(report.chunks[0].attempt, 3);
    assert!(
        run.log[0].2.contains("vanished") && run.log[0].2.contains("500"),
        "{:?}",
        run.log
    );
    assert!(run.log[1].2.contains("without a result"), "{:?}", run.log);
}

#[test]
fn a_silent_worker_counts_as_vanished() {
    // A worker that takes the chunk and then says nothing: the coordinator gives up on it
    // after the idle timeout (a bound on a hang) and retries.
    let worker = TestWorker::start(
        CLUSTER_SECRET,
        BUILD,
        Arc::new(FnExecutor(Box::new(|_request, _progress, cancel| {
            Box::pin(async move {
                cancel.cancelled().await;
                Err(WorkerFailure {
                    error: ChunkError::new("CancelledError", "cancelled"),
                    retryable: true,
                })
            })
        }))),
    );
    let front = front_end(&[&worker], &HaproxyOptions::default());
    let mut target = target(&front, CLUSTER_SECRET);
    target.idle_timeout = Duration::from_millis(500);
    let runner: HttpChunkRunner<Value, Value> =
        HttpChunkRunner::new(target, Arc::new(FixedToken("t")), "r".into(), Value::Null);
    let chunks = spans(&[10]);
    let (board, _rx) = ProgressBoard::new(&chunks);
    let policy = Policy {
        retries: 1,
        ..fast_policy()
    };
    let result = runtime().block_on(run_chunks(
        &runner,
        &chunks,
        &board,
        &policy,
        &CancellationToken::new(),
    ));
    match result {
        Err(ScheduleError::Lost { attempts, last, .. }) => {
            assert_eq!(attempts, 2);
            assert!(last.contains("said nothing"), "{last}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_busy_worker_is_waited_for_without_spending_a_retry() {
    let worker = TestWorker::start(CLUSTER_SECRET, BUILD, frames_executor(0));
    // Another render holds the instance: its own admission answers 429.
    let held = runtime()
        .block_on(worker.admission.clone().acquire_owned())
        .unwrap();
    let front = front_end(&[&worker], &HaproxyOptions::default());
    let release = std::thread::spawn({
        let control = worker.control.clone();
        move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while control.seen.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(held);
        }
    });
    let policy = Policy {
        retries: 0,
        ..fast_policy()
    };
    let run = coordinate(&front, CLUSTER_SECRET, &spans(&[10]), policy);
    release.join().unwrap();
    let report = run.result.expect("the render succeeds");
    assert_eq!(report.retries, 0);
    assert!(report.capacity_retries >= 2, "{:?}", run.log);
    assert!(
        run.log[0].2.contains("no capacity") && run.log[0].2.contains(names::BUSY),
        "{:?}",
        run.log
    );
    assert!(worker.calls() >= 3);
}

#[test]
fn a_full_queue_is_no_capacity() {
    // One worker, held by the first chunk call until the other has been turned away by
    // HAProxy's queue.
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let frames = frames_executor(0);
    let arrivals = std::sync::atomic::AtomicUsize::new(0);
    let worker = TestWorker::start(
        CLUSTER_SECRET,
        BUILD,
        Arc::new(FnExecutor(Box::new(move |request, progress, cancel| {
            let mut go = go_rx.clone();
            let first = arrivals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let run = frames.run(request, progress, cancel);
            Box::pin(async move {
                if first {
                    let _ = go.wait_for(|g| *g).await;
                }
                run.await
            })
        }))),
    );
    let options = HaproxyOptions {
        queue_timeout: Duration::from_millis(300),
    };
    let front = front_end(&[&worker], &options);
    let log = Arc::new(Mutex::new(Vec::new()));
    let watcher = std::thread::spawn({
        let log = log.clone();
        move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !log
                .lock()
                .unwrap()
                .iter()
                .any(|(_, _, w): &(usize, u32, String)| w.contains("503"))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            go_tx.send_replace(true);
        }
    });
    let recording = Recording {
        inner: runner(&front, CLUSTER_SECRET),
        log: log.clone(),
    };
    let chunks = spans(&[5, 5]);
    let (board, _rx) = ProgressBoard::new(&chunks);
    let policy = Policy {
        retries: 0,
        ..fast_policy()
    };
    let result = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(120),
            run_chunks(
                &recording,
                &chunks,
                &board,
                &policy,
                &CancellationToken::new(),
            ),
        )
        .await
        .expect("the render ended")
    });
    watcher.join().unwrap();
    let report = result.expect("the render succeeds");
    assert_eq!(report.retries, 0);
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .any(|(_, _, w)| w.contains("no capacity") && w.contains("503")),
        "{log:?}"
    );
}

/// Reports a frame, then fails with a page error if `fails`, else waits to be cancelled and
/// says so on `cancelled`. Counts the chunks it started in `started`.
fn failing_or_waiting(
    fails: impl Fn(&ChunkRequest<Value>) -> bool + Send + Sync + 'static,
    cancelled: std::sync::mpsc::Sender<()>,
    started: Arc<std::sync::atomic::AtomicUsize>,
) -> Arc<dyn ChunkExecutor> {
    let cancelled = Mutex::new(cancelled);
    Arc::new(FnExecutor(Box::new(move |request, progress, cancel| {
        let cancelled = cancelled.lock().unwrap().clone();
        started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let fails = fails(&request);
        Box::pin(async move {
            progress.send_modify(|p| p.rendered = 1);
            if fails {
                return Err(WorkerFailure {
                    error: ChunkError {
                        name: "Error".into(),
                        message: "Cannot read properties of undefined (reading 'x')".into(),
                        stack: "TypeError: Cannot read properties of undefined (reading 'x')\n    at Comp (bundle.js:10:5)".into(),
                    },
                    retryable: false,
                });
            }
            cancel.cancelled().await;
            let _ = cancelled.send(());
            Err(WorkerFailure {
                error: ChunkError::new("CancelledError", "cancelled"),
                retryable: true,
            })
        })
    })))
}

#[test]
fn a_deterministic_error_fails_at_once_and_cancels_the_other_workers() {
    let (cancelled_tx, cancelled_rx) = std::sync::mpsc::channel();
    let executor = failing_or_waiting(|r| r.chunk.index == 1, cancelled_tx, Default::default());
    let (_workers, front) = cluster_of(2, |_| executor.clone());
    let run = coordinate(&front, CLUSTER_SECRET, &spans(&[10, 10]), Policy::default());
    match run.result {
        Err(ScheduleError::Failed { span, error, .. }) => {
            assert_eq!(span.index, 1);
            assert!(error.message.contains("reading 'x'"));
            assert!(error.stack.contains("at Comp (bundle.js:10:5)"));
        }
        other => panic!("{other:?}"),
    }
    cancelled_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the other worker's chunk is cancelled within 5 s");
}

#[test]
fn a_render_that_ends_cancels_its_running_and_queued_chunk_calls() {
    // Three chunks, two workers: two calls run (and wait), the third waits in HAProxy's queue
    // when the render ends (here: its client left).
    let (cancelled_tx, cancelled_rx) = std::sync::mpsc::channel();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let executor = failing_or_waiting(|_| false, cancelled_tx, started.clone());
    let (workers, front) = cluster_of(2, |_| executor.clone());
    let runner = runner(&front, CLUSTER_SECRET);
    let chunks = spans(&[10, 10, 10]);
    let cancel = CancellationToken::new();
    let render = runtime().spawn({
        let cancel = cancel.clone();
        async move {
            let (board, _rx) = ProgressBoard::new(&chunks);
            run_chunks(&runner, &chunks, &board, &Policy::default(), &cancel).await
        }
    });
    let settle = |what: &str, done: &dyn Fn(&[common::cluster::ProxyStat]) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let stats = front.stats();
            if done(&stats) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {stats:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    settle("one call queued, two running", &|stats| {
        stats.iter().any(|s| s.name == "BACKEND" && s.queued == 1)
            && workers.iter().all(|w| w.calls() == 1)
    });
    cancel.cancel();
    let result = runtime().block_on(render).unwrap();
    assert_eq!(result.unwrap_err(), ScheduleError::Cancelled);
    for _ in 0..2 {
        cancelled_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("each running chunk is cancelled within 5 s");
    }
    // The queued call is dropped, or, if HAProxy handed it to an instance freed by the others
    // before it saw its client leave, refused or cancelled there (option abortonclose):
    // either way HAProxy ends up holding nothing and no worker keeps a chunk.
    settle("HAProxy empties", &|stats| {
        stats.iter().all(|s| s.queued == 0 && s.current == 0)
    });
    let started = started.load(std::sync::atomic::Ordering::SeqCst);
    assert!(started == 2 || started == 3, "{started} chunks started");
    for _ in 2..started {
        cancelled_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the queued call was cancelled on its worker");
    }
}

#[test]
fn another_build_or_another_secret_fails_the_render_without_retries() {
    for (secret, version, name) in [
        (CLUSTER_SECRET, "another-build", names::VERSION_MISMATCH),
        ("not the cluster's secret", BUILD, names::AUTH),
    ] {
        let worker = TestWorker::start(secret, version, frames_executor(0));
        let front = front_end(&[&worker], &HaproxyOptions::default());
        let run = coordinate(&front, CLUSTER_SECRET, &spans(&[10, 10]), Policy::default());
        match run.result {
            Err(ScheduleError::Failed { error, .. }) => assert_eq!(error.name, name),
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            run.log
                .iter()
                .all(|(_, a, w)| *a == 1 && w == &format!("fatal: {name}")),
            "{name}: {:?}",
            run.log
        );
    }
}
