//! A scriptable fault injector in front of the GCS emulator: an HTTP/1.1 proxy on raw TCP, so
//! it can do what a broken network does (reset a connection halfway through a request or an
//! answer, or hold one and never answer) as well as answer with an error status. Everything
//! it saw is recorded, with the emulator's answers, for the tests to assert on.
//!
//! The emulator builds session URLs from `Host`, which the proxy passes through, so sessions
//! stay behind the proxy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{FakeGcs, runtime};

/// The kinds of exchange an upload has with GCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// `POST …?uploadType=resumable`
    Start,
    /// `PUT` of a chunk to a session.
    Data,
    /// `PUT` with `Content-Range: bytes */N`: how far did the session get?
    Status,
    Delete,
    Other,
}

impl Exchange {
    fn of(method: &str, path: &str, content_range: Option<&str>) -> Exchange {
        match method {
            "POST" if path.contains("uploadType=resumable") => Exchange::Start,
            "PUT" => match content_range {
                Some(r) if r.contains("*/") => Exchange::Status,
                Some(_) => Exchange::Data,
                None => Exchange::Other,
            },
            "DELETE" => Exchange::Delete,
            _ => Exchange::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a GCS-style error body; the emulator never sees the request.
    Status(u16),
    /// Read half of the request body, then reset the connection (RST); nothing is forwarded.
    ResetMidRequest,
    /// Forward the request, then send the head and half the body of the emulator's answer,
    /// and reset the connection.
    ResetMidAnswer,
    /// Read the whole request and never forward or answer it: the connection is held until
    /// the client closes it (recorded as [`Seen::client_gave_up`]).
    Stall,
}

/// Which exchanges of a kind a [`Rule`] hits, counting from 1 in the order they arrive.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Nth(usize),
    Every,
}

#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub exchange: Exchange,
    pub which: Which,
    pub fault: Fault,
}

impl Rule {
    pub fn nth(exchange: Exchange, n: usize, fault: Fault) -> Rule {
        Rule {
            exchange,
            which: Which::Nth(n),
            fault,
        }
    }

    pub fn every(exchange: Exchange, fault: Fault) -> Rule {
        Rule {
            exchange,
            which: Which::Every,
            fault,
        }
    }
}

/// One request the proxy received, and what became of it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub content_range: Option<String>,
    pub exchange: Exchange,
    pub fault: Option<Fault>,
    /// The request's body, if it was read whole and is JSON (a session's metadata).
    pub json: Option<Value>,
    /// The emulator's status and JSON body, when the request was forwarded.
    pub upstream: Option<(u16, Option<Value>)>,
    /// For a stalled exchange: the client closed the connection (it gave up waiting).
    pub client_gave_up: bool,
}

impl Seen {
    /// The object resource the emulator answered a session's PUT with, if it finalized one.
    pub fn finalized(&self) -> Option<&Value> {
        if !matches!(self.exchange, Exchange::Data | Exchange::Status) {
            return None;
        }
        match &self.upstream {
            Some((200 | 201, Some(body))) if body["kind"] == "storage#object" => Some(body),
            _ => None,
        }
    }

    pub fn query(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(&format!("http://x{}", self.path)).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Proxies to `upstream`, applying the first [`Rule`] that matches each request.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// How long a stalled exchange is held if the client never gives up: only a real hang (an
/// exchange without deadline) ever reaches it.
const STALL_LIMIT: Duration = Duration::from_secs(300);

impl FaultProxy {
    pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        let listener = runtime()
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            rules,
            seen: Arc::default(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        });
        let seen = shared.seen.clone();
        runtime().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(shared.clone().serve(stream));
            }
        });
        FaultProxy { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn of(&self, exchange: Exchange) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.exchange == exchange)
            .collect()
    }

    /// `Content-Range` of every data PUT, in order.
    pub fn data_ranges(&self) -> Vec<String> {
        self.of(Exchange::Data)
            .into_iter()
            .map(|s| s.content_range.unwrap())
            .collect()
    }
}

struct Shared {
    upstream: String,
    rules: Vec<Rule>,
    seen: Arc<Mutex<Vec<Seen>>>,
    client: reqwest::Client,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    content_length: usize,
}

impl Shared {
    /// One client connection: requests one after the other (keep-alive) until it closes or a
    /// fault ends it.
    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let mut buf = Vec::new();
        while let Some(request) = read_head(&mut stream, &mut buf).await {
            let range = request
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-range"))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            let exchange = Exchange::of(&request.method, &request.path, range.as_deref());
            let (index, fault) = {
                let mut seen = self.seen.lock().unwrap();
                let n = seen.iter().filter(|s| s.exchange == exchange).count() + 1;
                let fault = self
                    .rules
                    .iter()
                    .find(|r| {
                        r.exchange == exchange
                            && match r.which {
                                Which::Nth(k) => k == n,
                                Which::Every => true,
                            }
                    })
                    .map(|r| r.fault);
                seen.push(Seen {
                    method: request.method.clone(),
                    path: request.path.clone(),
                    content_range: range,
                    exchange,
                    fault,
                    json: None,
                    upstream: None,
                    client_gave_up: false,
                });
                (seen.len() - 1, fault)
            };
            if fault == Some(Fault::ResetMidRequest) {
                let half = request.content_length / 2;
                let _ = read_body(&mut stream, &mut buf, half).await;
                let _ = stream.set_zero_linger();
                return;
            }
            let Ok(body) = read_body(&mut stream, &mut buf, request.content_length).await else {
                return;
            };
            if body.len() < 64 * 1024 {
                self.seen.lock().unwrap()[index].json = serde_json::from_slice(&body).ok();
            }
            match fault {
                Some(Fault::Status(status)) => {
                    let body = serde_json::json!({"error": {
                        "code": status, "message": "injected by the test proxy", "errors": [],
                    }})
                    .to_string();
                    let head = [("content-type".to_string(), b"application/json".to_vec())];
                    if write_answer(&mut stream, status, &head, body.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Fault::Stall) => {
                    let gave_up = tokio::time::timeout(STALL_LIMIT, async {
                        let mut scratch = [0u8; 4096];
                        loop {
                            match stream.read(&mut scratch).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                    })
                    .await
                    .is_ok();
                    self.seen.lock().unwrap()[index].client_gave_up = gave_up;
                    return;
                }
                None | Some(Fault::ResetMidAnswer) => {
                    let Some((status, headers, answer)) = self.forward(&request, body).await else {
                        return;
                    };
                    let json = serde_json::from_slice(&answer).ok();
                    self.seen.lock().unwrap()[index].upstream = Some((status, json));
                    if fault == Some(Fault::ResetMidAnswer) {
                        let cut = &answer[..answer.len() / 2];
                        let _ = write_head(&mut stream, status, &headers, answer.len()).await;
                        let _ = stream.write_all(cut).await;
                        let _ = stream.flush().await;
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    if write_answer(&mut stream, status, &headers, &answer)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Fault::ResetMidRequest) => unreachable!(),
            }
        }
    }

    async fn forward(
        &self,
        request: &Request,
        body: Vec<u8>,
    ) -> Option<(u16, Vec<(String, Vec<u8>)>, Vec<u8>)> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
        let mut upstream = self
            .client
            .request(method, format!("{}{}", self.upstream, request.path))
            .body(body);
        for (k, v) in &request.headers {
            if !is_framing(k) {
                upstream = upstream.header(k.as_str(), v.as_slice());
            }
        }
        let answer = upstream.send().await.ok()?;
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .filter(|(k, _)| !is_framing(k.as_str()))
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let body = answer.bytes().await.ok()?.to_vec();
        Some((status, headers, body))
    }
}

/// Headers the proxy sets itself on each side.
fn is_framing(name: &str) -> bool {
    ["content-length", "transfer-encoding", "connection"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// The next request's head, leaving what follows it in `buf`; None when the client closed.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = parsed.parse(buf).expect("an HTTP/1.1 request") {
            let headers: Vec<(String, Vec<u8>)> = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            assert!(
                !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding")),
                "the proxy only takes bodies with a Content-Length"
            );
            let content_length = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| std::str::from_utf8(v).unwrap().trim().parse().unwrap())
                .unwrap_or(0);
            let request = Request {
                method: parsed.method.unwrap().to_string(),
                path: parsed.path.unwrap().to_string(),
                headers,
                content_length,
            };
            buf.drain(..len);
            return Some(request);
        }
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `len` bytes of body: what `buf` holds first, then from the socket.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    while buf.len() < len {
        let mut chunk = vec![0u8; (len - buf.len()).min(1 << 20)];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf.drain(..len).collect())
}

async fn write_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, Vec<u8>)],
    content_length: usize,
) -> std::io::Result<()> {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for (k, v) in headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {content_length}\r\n\r\n").as_bytes());
    stream.write_all(&head).await
}

async fn write_answer(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> std::io::Result<()> {
    write_head(stream, status, headers, body.len()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

impl FakeGcs {
    /// Every object generation in `bucket` (`versions=true`), as the emulator lists them.
    pub fn generations(&self, bucket: &str) -> Vec<Value> {
        self.list(bucket, &[("versions", "true")])
    }
}
