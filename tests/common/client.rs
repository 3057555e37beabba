//! A client that reads the service's stream the way `renderMediaOnCloudrun()` does, and the
//! payloads the real client sends.
//!
//! The real client appends every socket read to one buffer and JSON-parses the whole buffer
//! after each read, so two messages in one read are lost for good. An HTTP library would hand
//! us decoded chunks and hide exactly that, so this client speaks HTTP/1.1 on a raw socket and
//! looks at each read. The kernel stamps every read with the time its bytes arrived
//! (`SO_TIMESTAMPNS`), which is when the server wrote them: the spacing it sees does not depend
//! on when this thread got to run.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde_json::Value;

/// The server's promise: messages at least this far apart (`api::stream::MIN_GAP`).
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// How much of [`MIN_GAP`] the server's own scheduling may eat between taking a message from
/// the render and its write to the socket (a few instructions, unless it is preempted there).
/// The exact gap is asserted on the paused clock in `api::stream`'s unit tests.
pub const GAP_SLACK: Duration = Duration::from_millis(20);

/// One socket read that carried body bytes.
#[derive(Debug, Clone)]
pub struct BodyRead {
    /// The body bytes of this read, de-chunked.
    pub text: String,
    /// When the kernel received them (`CLOCK_REALTIME`).
    pub arrived: Duration,
}

/// What the real client saw: every parsed message, in order.
#[derive(Debug, Default)]
pub struct ClientRead {
    pub status: u16,
    pub content_type: Option<String>,
    pub progress: Vec<f64>,
    pub response: Option<Value>,
    pub error: Option<Value>,
    /// Bytes the client could never parse (two messages in one read would leave some).
    pub leftover: String,
    /// How many socket reads carried body bytes.
    pub reads: usize,
    /// Those reads.
    pub body_reads: Vec<BodyRead>,
}

impl ClientRead {
    /// The wire's framing rules, end to end: every read is one whole message, progress lines
    /// end with a newline, a final message (response or error) comes last and without one,
    /// reads are [`MIN_GAP`] apart (less [`GAP_SLACK`]), and nothing is left unparsed. A
    /// stream cut short (the service died) passes if what did arrive kept the rules.
    pub fn assert_framing(&self) {
        self.assert_messages();
        for w in self.body_reads.windows(2) {
            let gap = w[1].arrived.saturating_sub(w[0].arrived);
            assert!(
                gap + GAP_SLACK >= MIN_GAP,
                "{:?} then {:?} only {gap:?} apart",
                w[0].text,
                w[1].text
            );
        }
    }

    /// What the real client itself needs, whatever sits between it and the service: every
    /// read is one whole message, progress lines end with a newline, a final message comes
    /// last and without one, nothing is left unparsed. (The spacing that makes this hold is
    /// the service's, at its own socket: [`ClientRead::assert_framing`].)
    pub fn assert_messages(&self) {
        assert_eq!(self.leftover, "", "the client could not parse: {self:?}");
        for (k, read) in self.body_reads.iter().enumerate() {
            let message: Value = serde_json::from_str(read.text.trim())
                .unwrap_or_else(|_| panic!("read {k} is not one message: {:?}", read.text));
            if message.get("onProgress").is_some() {
                assert!(read.text.ends_with('\n'), "read {k}: {:?}", read.text);
            } else {
                assert_eq!(
                    k + 1,
                    self.body_reads.len(),
                    "read {k}, a final message, is not the last: {self:?}"
                );
                assert!(!read.text.ends_with('\n'), "read {k}: {:?}", read.text);
            }
        }
    }
}

/// POSTs `payload` to `url` and reads the answer as the real client does; asserts the wire's
/// framing ([`ClientRead::assert_framing`]).
pub fn post_like_client(url: &str, payload: &Value) -> ClientRead {
    let read = ClientStream::open(url, payload).finish();
    read.assert_framing();
    read
}

/// [`post_like_client`], retried while the instance answers 429: for a test that waits for
/// the render slot to free (after a client left, say), which it learns no other way.
pub fn post_when_free(url: &str, payload: &Value) -> ClientRead {
    let mut read = None;
    super::wait_until("the render slot to free", || {
        let r = post_like_client(url, payload);
        let busy = r.status == 429;
        read = Some(r);
        !busy
    });
    read.unwrap()
}

/// A request in flight, read one message at a time. Dropping it closes the connection, as a
/// client that gives up does.
pub struct ClientStream {
    socket: TcpStream,
    held_body: Option<Vec<u8>>,
    http: HttpReader,
    read: ClientRead,
    buffer: String,
    ended: bool,
    /// Messages read while waiting for the head, not yet handed out.
    early: Vec<Value>,
}

impl ClientStream {
    pub fn open(url: &str, payload: &Value) -> ClientStream {
        let mut stream = ClientStream::connect(url, payload, "");
        stream.send_body();
        stream
    }

    /// Sends the request's head and holds its body back until [`ClientStream::send_body`]:
    /// the server has begun the request but cannot act on it yet. The head asks for
    /// `100 Continue`, which [`ClientStream::wait_for_continue`] waits for.
    pub fn open_holding_body(url: &str, payload: &Value) -> ClientStream {
        ClientStream::connect(url, payload, "Expect: 100-continue\r\n")
    }

    fn connect(url: &str, payload: &Value, extra_headers: &str) -> ClientStream {
        let (authority, path) = split_url(url);
        let body = serde_json::to_vec(payload).unwrap();
        let mut socket = TcpStream::connect(authority).expect("connect to the service");
        socket
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        enable_receive_timestamps(&socket);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).unwrap();
        ClientStream {
            socket,
            held_body: Some(body),
            http: HttpReader::default(),
            read: ClientRead::default(),
            buffer: String::new(),
            ended: false,
            early: vec![],
        }
    }

    pub fn send_body(&mut self) {
        let body = self.held_body.take().expect("a body not sent yet");
        self.socket.write_all(&body).unwrap();
    }

    /// Waits for the server's `100 Continue`: it has read the head and waits for the body.
    pub fn wait_for_continue(&mut self) {
        while !self.http.continued {
            assert!(!self.ended, "the stream ended before 100 Continue");
            if let Some(message) = self.read_once() {
                panic!("a message before 100 Continue: {message}");
            }
        }
    }

    /// The response's status, once its head arrived.
    pub fn status(&mut self) -> u16 {
        while self.read.status == 0 && !self.ended {
            // The head and the first message may come in one read.
            if let Some(message) = self.read_once() {
                self.early.push(message);
            }
        }
        assert!(self.read.status != 0, "the service sent no response head");
        self.read.status
    }

    /// The next message the client could parse, or None at the end of the stream.
    pub fn next_message(&mut self) -> Option<Value> {
        if !self.early.is_empty() {
            return Some(self.early.remove(0));
        }
        while !self.ended {
            if let Some(message) = self.read_once() {
                return Some(message);
            }
        }
        None
    }

    /// Reads to the end of the stream.
    pub fn finish(mut self) -> ClientRead {
        while self.next_message().is_some() {}
        self.status();
        self.read.leftover = std::mem::take(&mut self.buffer);
        std::mem::take(&mut self.read)
    }

    /// One socket read; the message it completed, if any.
    fn read_once(&mut self) -> Option<Value> {
        let Some((bytes, arrived)) = receive(&self.socket) else {
            self.ended = true;
            return None;
        };
        let body = self.http.feed(&bytes);
        if self.http.finished() {
            self.ended = true;
        }
        if self.read.status == 0 && self.http.status != 0 {
            self.read.status = self.http.status;
            self.read.content_type = self.http.header("content-type");
        }
        if body.is_empty() {
            return None;
        }
        let text = String::from_utf8(body).expect("UTF-8");
        self.read.reads += 1;
        self.read.body_reads.push(BodyRead {
            text: text.clone(),
            arrived,
        });
        self.buffer.push_str(&text);
        let message = serde_json::from_str::<Value>(self.buffer.trim()).ok()?;
        self.buffer.clear();
        if let Some(p) = message.get("onProgress").and_then(Value::as_f64) {
            self.read.progress.push(p);
        } else if message.get("response").is_some() {
            self.read.response = Some(message["response"].clone());
        } else if message.get("type") == Some(&Value::from("error")) {
            self.read.error = Some(message.clone());
        }
        Some(message)
    }
}

fn split_url(url: &str) -> (&str, &str) {
    let rest = url
        .strip_prefix("http://")
        .expect("an http:// URL on loopback");
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

fn enable_receive_timestamps(socket: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
}

/// One `recvmsg`: the bytes and when the kernel received them; None at the end of the stream.
fn receive(socket: &TcpStream) -> Option<(Vec<u8>, Duration)> {
    let mut data = vec![0u8; 64 * 1024];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            // The service went away mid-stream: for the client that is the end of it.
            std::io::ErrorKind::ConnectionReset => return None,
            _ => panic!("reading the stream: {e}"),
        }
    };
    if n == 0 {
        return None;
    }
    data.truncate(n);
    let mut arrived = None;
    // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                arrived = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // The kernel turns timestamping on for the first socket that asks a moment later, so the
    // first read of a test binary may come without a stamp: then the time of the read it is.
    let arrived = arrived.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    });
    Some((data, arrived))
}

/// Just enough HTTP/1.1 response parsing: the head, then a chunked, sized or close-delimited
/// body, fed one socket read at a time.
#[derive(Default)]
struct HttpReader {
    status: u16,
    headers: Vec<(String, String)>,
    /// Bytes not consumed yet (an unfinished head or chunk-size line).
    pending: Vec<u8>,
    head_done: bool,
    /// An interim `100 Continue` came.
    continued: bool,
    body: BodyState,
}

#[derive(Default)]
enum BodyState {
    #[default]
    Unknown,
    /// Chunked: bytes left in the current chunk, or None when a size line comes next.
    Chunked {
        left: Option<usize>,
        ended: bool,
    },
    Sized(usize),
    UntilClose,
}

impl HttpReader {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn finished(&self) -> bool {
        matches!(
            self.body,
            BodyState::Chunked { ended: true, .. } | BodyState::Sized(0)
        )
    }

    /// Takes one read; returns the body bytes it carried.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        while !self.head_done {
            let Some(end) = find(&self.pending, b"\r\n\r\n") else {
                return vec![];
            };
            let head = String::from_utf8(self.pending[..end].to_vec()).expect("an ASCII head");
            self.pending.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap();
            self.status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status line: {status_line}"));
            if self.status == 100 {
                // Interim: the real head follows.
                self.continued = true;
                self.status = 0;
                continue;
            }
            for line in lines {
                let (k, v) = line.split_once(':').expect("a header line");
                self.headers
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
            self.head_done = true;
            self.body = if self
                .header("transfer-encoding")
                .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
            {
                BodyState::Chunked {
                    left: None,
                    ended: false,
                }
            } else if let Some(n) = self.header("content-length") {
                BodyState::Sized(n.parse().expect("a Content-Length"))
            } else {
                BodyState::UntilClose
            };
        }
        let mut out = vec![];
        loop {
            match &mut self.body {
                BodyState::Unknown => unreachable!("the head sets the body's framing"),
                BodyState::UntilClose => {
                    out.append(&mut self.pending);
                    return out;
                }
                BodyState::Sized(left) => {
                    let n = (*left).min(self.pending.len());
                    out.extend(self.pending.drain(..n));
                    *left -= n;
                    return out;
                }
                BodyState::Chunked { ended: true, .. } => {
                    self.pending.clear();
                    return out;
                }
                BodyState::Chunked {
                    left: Some(left),
                    ended: _,
                } => {
                    if *left > 0 {
                        let n = (*left).min(self.pending.len());
                        out.extend(self.pending.drain(..n));
                        *left -= n;
                        if *left > 0 {
                            return out;
                        }
                    }
                    if self.pending.len() < 2 {
                        return out;
                    }
                    assert_eq!(&self.pending[..2], b"\r\n", "a chunk ends with CRLF");
                    self.pending.drain(..2);
                    self.body = BodyState::Chunked {
                        left: None,
                        ended: false,
                    };
                }
                BodyState::Chunked { left: None, .. } => {
                    let Some(end) = find(&self.pending, b"\r\n") else {
                        return out;
                    };
                    let line = String::from_utf8(self.pending[..end].to_vec()).unwrap();
                    let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                        .unwrap_or_else(|_| panic!("a chunk size: {line:?}"));
                    self.pending.drain(..end + 2);
                    self.body = BodyState::Chunked {
                        left: (size > 0).then_some(size),
                        ended: size == 0,
                    };
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A media payload as `renderMediaOnCloudrun()` 4.0.270 builds it.
pub fn media_payload(serve_url: &str, composition: &str) -> Value {
    serde_json::json!({
        "type": "media",
        "serveUrl": serve_url,
        "composition": composition,
        "serializedInputPropsWithCustomSchema": "{}",
        "codec": "h264",
        "audioCodec": null,
        "forceHeight": null,
        "forceWidth": null,
        "jpegQuality": 80,
        "audioBitrate": null,
        "videoBitrate": null,
        "encodingMaxRate": null,
        "encodingBufferSize": null,
        "crf": null,
        "pixelFormat": null,
        "imageFormat": null,
        "scale": 1,
        "proResProfile": null,
        "x264Preset": null,
        "everyNthFrame": 1,
        "numberOfGifLoops": null,
        "frameRange": null,
        "envVariables": {},
        "chromiumOptions": {},
        "muted": false,
        "outputBucket": "test-bucket",
        "logLevel": "info",
        "delayRenderTimeoutInMilliseconds": 30000,
        "concurrency": null,
        "enforceAudioTrack": false,
        "preferLossless": false,
        "offthreadVideoCacheSizeInBytes": null,
        "offthreadVideoThreads": null,
        "colorSpace": null,
        "clientVersion": "4.0.270",
        "downloadBehavior": {"type": "play-in-browser"},
        "metadata": null,
    })
}

/// A still payload as `renderStillOnCloudrun()` 4.0.270 builds it (a PNG of frame 0).
pub fn still_payload(serve_url: &str, composition: &str) -> Value {
    serde_json::json!({
        "type": "still",
        "serveUrl": serve_url,
        "composition": composition,
        "serializedInputPropsWithCustomSchema": "{}",
        "forceHeight": null,
        "forceWidth": null,
        "jpegQuality": 80,
        "imageFormat": "png",
        "scale": 1,
        "privacy": "public",
        "envVariables": {},
        "chromiumOptions": {},
        "outputBucket": "test-bucket",
        "outName": null,
        "frame": 0,
        "delayRenderTimeoutInMilliseconds": 30000,
        "logLevel": "info",
        "offthreadVideoCacheSizeInBytes": null,
        "offthreadVideoThreads": null,
        "clientVersion": "4.0.270",
        "downloadBehavior": {"type": "play-in-browser"},
    })
}
