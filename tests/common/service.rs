//! The `serve` subcommand as a real process, and a client that reads its stream the way the
//! real client does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{FakeGcs, binary, free_port, runtime};

/// The `serve` subcommand running as a real process. Killed (and its Chromium with it) on drop.
pub struct Service {
    pub child: Child,
    pub url: String,
    pub storage: tempfile::TempDir,
    /// The service's TMPDIR: work files, downloaded media and Chromium profiles land here.
    pub tmp: tempfile::TempDir,
    /// Everything the service printed to stderr so far (it is echoed to ours too).
    pub logs: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Service {
    pub fn start(extra_env: &[(&str, &str)]) -> Service {
        Service::start_with(extra_env, true)
    }

    /// Storing in the GCS emulator `gcs` instead of a local directory.
    pub fn start_gcs(gcs: &FakeGcs, extra_env: &[(&str, &str)]) -> Service {
        let mut env = vec![("STORAGE_EMULATOR_HOST", gcs.host.as_str())];
        env.extend_from_slice(extra_env);
        Service::start_with(&env, false)
    }

    /// With `local_storage` false, the service gets no `CLOUDRUN_RENDER_LOCAL_STORAGE` and uses
    /// GCS as configured by `extra_env`.
    pub fn start_with(extra_env: &[(&str, &str)], local_storage: bool) -> Service {
        let storage = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .env_remove("CLOUDRUN_RENDER_LOCAL_STORAGE")
            .env_remove("STORAGE_EMULATOR_HOST")
            .env("RUST_LOG", "info")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if local_storage {
            cmd.env("CLOUDRUN_RENDER_LOCAL_STORAGE", storage.path());
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the service");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        let service = Service {
            child,
            url,
            storage,
            tmp,
            logs,
        };
        service.wait_healthy();
        service
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr: SocketAddr = self.url.trim_start_matches("http://").parse().unwrap();
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let ok = runtime().block_on(async {
                    reqwest::get(format!("{}/healthz", self.url))
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false)
                });
                if ok {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the service did not become healthy");
    }

    pub fn object(&self, bucket: &str, key: &str) -> PathBuf {
        self.storage.path().join(bucket).join(key)
    }

    /// Names in the service's TMPDIR that start with `prefix`.
    pub fn temp_entries(&self, prefix: &str) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
