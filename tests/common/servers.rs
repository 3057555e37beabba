//! HTTP servers the tests put in front of the code under test: the fixture sites over HTTP and
//! HTTPS, and any axum app on a loopback port.

use std::path::Path;
use std::sync::OnceLock;

use super::{repo, runtime};

/// Serves `fixtures/` over HTTP on loopback (the service only accepts http(s) serve URLs).
/// Returns the base URL, e.g. `http://127.0.0.1:PORT`; sites are at `<base>/site/`. Also
/// `/status/{code}/index.html`, `/redirect?to=URL` (307) and `/generated/` (see
/// [`generated_dir`]).
pub fn fixture_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/status/{code}/index.html",
                axum::routing::get(
                    |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                        (
                            axum::http::StatusCode::from_u16(code).unwrap(),
                            "<html><body>status page</body></html>",
                        )
                    },
                ),
            )
            .route(
                "/redirect",
                axum::routing::get(
                    |axum::extract::Query(q): axum::extract::Query<
                        std::collections::HashMap<String, String>,
                    >| async move { axum::response::Redirect::temporary(&q["to"]) },
                ),
            )
            .nest_service(
                "/generated",
                tower_http::services::ServeDir::new(generated_dir()),
            )
            .fallback_service(tower_http::services::ServeDir::new(repo().join("fixtures")));
        rt.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        format!("http://{addr}")
    })
}

/// Media files tests generate, served by the fixture server under `/generated/`.
pub fn generated_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// Serves `app` on a free loopback port for the rest of the test binary; returns
/// `http://127.0.0.1:PORT`.
pub fn serve_on_loopback(app: axum::Router) -> String {
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Serves `fixtures/` over HTTPS with a fresh self-signed certificate (openssl and Python's
/// own HTTPS server: real TLS, a certificate no browser trusts). Returns the base URL, e.g.
/// `https://127.0.0.1:PORT`. The server lives as long as the test process.
pub fn https_fixture_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl could not make a certificate");
        const SERVER: &str = r#"
import functools, http.server, os, ssl, sys, threading
def exit_with_the_parent():
    sys.stdin.read()  # EOF: the test process is gone
    os._exit(0)
threading.Thread(target=exit_with_the_parent, daemon=True).start()
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Quiet, directory=sys.argv[1]))
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(SERVER)
            .arg(repo().join("fixtures"))
            .arg(&cert)
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().expect("the HTTPS server's port");
        // Leaked on purpose: the server serves every test of this binary, and its stdin
        // stays open until this process exits, which is when the server exits too.
        std::mem::forget(child);
        format!("https://127.0.0.1:{port}")
    })
}

/// A port that was free a moment ago. Nothing holds it: whoever binds it next may lose it to
/// another process, so only use it where a lost race shows up as a retry (see
/// `FakeGcs::start`), and prefer port 0 or [`ClosedPort`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port that refuses connections for as long as this lives: bound, never
/// listening, so no other process can take it.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        ClosedPort {
            _socket: socket,
            port,
        }
    }
}
