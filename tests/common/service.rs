//! The `serve` subcommand as a real process.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::{FakeGcs, binary, runtime, wait_until};

/// The `serve` subcommand running as a real process. Killed (and its Chromium with it) on drop.
pub struct Service {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub storage: tempfile::TempDir,
    /// The service's TMPDIR: work files, downloaded media and Chromium profiles land here.
    pub tmp: tempfile::TempDir,
    /// Everything the service printed to stderr so far (it is echoed to ours too).
    pub logs: Arc<Mutex<String>>,
}

/// The environment every child process of the tests starts from, and nothing else: a
/// `CLOUDRUN_RENDER_*` variable in the shell that runs the tests must not change what they
/// test.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
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
        let mut cmd = Command::new(binary());
        // Port 0: the system picks a free port and the service says which.
        clean_env(&mut cmd)
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .env("TMPDIR", tmp.path())
            .env("HOME", tmp.path())
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
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let (listening_tx, listening) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                if let Some(url) = listening_url(&line) {
                    let _ = listening_tx.send(url);
                }
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        // The line comes once the browser is up; the bound is for a service that hangs.
        let url = match listening.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the service never said where it listens: {}",
                    logs.lock().unwrap()
                );
            }
        };
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        let service = Service {
            child,
            url,
            port,
            storage,
            tmp,
            logs,
        };
        let health = runtime()
            .block_on(reqwest::get(format!("{}/healthz", service.url)))
            .expect("the service answers");
        assert!(health.status().is_success(), "{health:?}");
        service
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

    /// The service's JSON log lines whose message is `message`.
    pub fn log_lines(&self, message: &str) -> Vec<serde_json::Value> {
        self.log_lines_starting(message)
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// The service's JSON log lines whose message starts with `prefix`.
    pub fn log_lines_starting(&self, prefix: &str) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .collect()
    }

    /// Waits until the service logged `message`.
    pub fn wait_for_log(&self, message: &str) {
        self.wait_for_log_where(message, |_| true);
    }

    /// Waits until the service logged `message` in a line that passes `also`, and returns that
    /// line. The log reaches us through a pipe and a thread, a moment after the service wrote
    /// it, but in order: once a line is here, so is every line the service wrote before it.
    pub fn wait_for_log_where(
        &self,
        message: &str,
        also: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = None;
        wait_until(&format!("the log line {message:?}"), || {
            found = self.log_lines(message).into_iter().find(|l| also(l));
            found.is_some()
        });
        found.unwrap()
    }

    /// Waits until the service logged a line whose message starts with `prefix`, and returns
    /// the first such line.
    pub fn wait_for_log_starting(&self, prefix: &str) -> serde_json::Value {
        let mut found = None;
        wait_until(&format!("a log line starting {prefix:?}"), || {
            found = self.log_lines_starting(prefix).into_iter().next();
            found.is_some()
        });
        found.unwrap()
    }

    /// The "render timings" line of render `render_id` (a media render logs it last, once
    /// its output is complete): everything the render logged before is here too.
    pub fn wait_for_render_end(&self, render_id: &str) -> serde_json::Value {
        self.wait_for_log_where("render timings", |l| l["render_id"] == render_id)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate();
        self.wait_exit()
    }

    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit (after [`Service::terminate`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut status = None;
        wait_until("the service to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `http://127.0.0.1:PORT` from the service's "listening on …" line.
fn listening_url(line: &str) -> Option<String> {
    let at = line.find("listening on http://")? + "listening on ".len();
    let url: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || ":/.".contains(*c))
        .collect();
    Some(url)
}
