//! A local stand-in for Cloud Run (the same as `scripts/cluster`): instances of the service as
//! real processes on ports the kernel chose, fake-gcs-server, and HAProxy in front with the
//! configuration of `scripts/haproxy.cfg.in` (concurrency 1 per instance, a request queue).
//! Every instance's `CLOUDRUN_RENDER_FANOUT_URL` is HAProxy's URL, as on Cloud Run it is the
//! service's own.

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{FakeGcs, binary, repo, runtime};

/// The chunk secret every instance of a test cluster shares.
pub const SECRET: &str = "a local cluster's chunk secret";

#[derive(Debug, Clone)]
pub struct HaproxyOptions {
    /// How long a request waits for an idle instance before HAProxy answers 503.
    pub queue_timeout: Duration,
}

impl Default for HaproxyOptions {
    fn default() -> HaproxyOptions {
        HaproxyOptions {
            queue_timeout: Duration::from_secs(60),
        }
    }
}

/// `scripts/haproxy.cfg.in` with its placeholders filled in.
pub fn haproxy_config(
    bind: &str,
    stats_socket: &Path,
    servers: &[SocketAddr],
    options: &HaproxyOptions,
) -> String {
    let template = std::fs::read_to_string(repo().join("scripts/haproxy.cfg.in")).unwrap();
    let servers: String = servers
        .iter()
        .enumerate()
        .map(|(k, addr)| format!("    server i{k} {addr}\n"))
        .collect();
    template
        .replace("@BIND@", bind)
        .replace("@STATS_SOCKET@", &stats_socket.display().to_string())
        .replace(
            "@QUEUE_TIMEOUT@",
            &format!("{}ms", options.queue_timeout.as_millis()),
        )
        .replace("@SERVERS@\n", &servers)
}

/// HAProxy's listening socket, bound on a free port before anything else starts, so its URL
/// can be given to the instances; HAProxy inherits the socket itself (`bind fd@N`), so no
/// other process can take the port in between.
pub struct FrontEnd {
    listener: TcpListener,
    pub url: String,
}

impl FrontEnd {
    pub fn bind() -> FrontEnd {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        FrontEnd { listener, url }
    }

    /// Starts HAProxy in front of `servers`; returns once it forwards `/healthz`.
    pub fn start(self, servers: &[SocketAddr], options: &HaproxyOptions) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let fd = self.listener.as_raw_fd();
        let config = dir.path().join("haproxy.cfg");
        let stats = dir.path().join("stats.sock");
        std::fs::write(
            &config,
            haproxy_config(&format!("fd@{fd}"), &stats, servers, options),
        )
        .unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Only HAProxy inherits the socket: the flag is cleared in the child, after the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("start haproxy (apt-get install haproxy)");
        drop(self.listener);
        let haproxy = Haproxy {
            child,
            url: self.url,
            stats,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = runtime().block_on(async {
                reqwest::Client::new()
                    .get(format!("{}/healthz", haproxy.url))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            });
            if up {
                return haproxy;
            }
            assert!(Instant::now() < deadline, "HAProxy forwards nothing");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// HAProxy as a real process; killed on drop.
pub struct Haproxy {
    child: Child,
    pub url: String,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

/// One row of HAProxy's `show stat`.
#[derive(Debug, Clone)]
pub struct ProxyStat {
    /// `BACKEND`, `FRONTEND` or a server's name (`i0`, `i1`, …).
    pub name: String,
    /// Requests waiting in the queue.
    pub queued: u64,
    /// Sessions open now, and since the start.
    pub current: u64,
    pub total: u64,
}

impl Haproxy {
    /// One command on the stats socket, and its answer.
    fn command(&self, command: &str) -> String {
        use std::io::{Read, Write};
        let mut socket =
            std::os::unix::net::UnixStream::connect(&self.stats).expect("HAProxy's stats socket");
        socket.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut text = String::new();
        socket.read_to_string(&mut text).unwrap();
        text
    }

    /// Routes nothing more to server `name` (`i0`, `i1`, …); its open sessions go on.
    pub fn take_out(&self, name: &str) {
        let answer = self.command(&format!("set server instances/{name} state maint"));
        assert!(answer.trim().is_empty(), "HAProxy said: {answer}");
    }

    /// The `instances` backend and its servers, from the stats socket.
    pub fn stats(&self) -> Vec<ProxyStat> {
        let text = self.command("show stat");
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .expect("a header")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (px, sv, qcur, scur, stot) = (
            column("pxname"),
            column("svname"),
            column("qcur"),
            column("scur"),
            column("stot"),
        );
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > stot && f[px] == "instances")
            .map(|f| ProxyStat {
                name: f[sv].to_string(),
                queued: f[qcur].parse().unwrap_or(0),
                current: f[scur].parse().unwrap_or(0),
                total: f[stot].parse().unwrap_or(0),
            })
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One instance of the service on a port the kernel chose (`--port 0`), read back from its
/// "listening on" log line. Killed (and its Chromium with it) on drop.
pub struct Instance {
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
    /// Its TMPDIR.
    pub tmp: tempfile::TempDir,
    logs: Arc<Mutex<String>>,
    listening: Option<mpsc::Receiver<SocketAddr>>,
}

impl Instance {
    /// Starts the process; [`Instance::wait_listening`] waits for its port.
    pub fn spawn(env: &[(String, String)]) -> Instance {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .env_remove("CLOUDRUN_RENDER_LOCAL_STORAGE")
            .env_remove("STORAGE_EMULATOR_HOST")
            .env_remove("PORT")
            .env("RUST_LOG", "info")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the service");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        let (tx, listening) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                if let Some(addr) = listening_address(&line) {
                    let _ = tx.send(addr);
                }
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Instance {
            child,
            url: String::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            tmp,
            logs,
            listening: Some(listening),
        }
    }

    pub fn wait_listening(&mut self) {
        let rx = self.listening.take().expect("waited once");
        // A bound on a hang only: the instance starts Chromium first.
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => {
                self.addr = addr;
                self.url = format!("http://{addr}");
            }
            Err(_) => panic!(
                "the instance never said where it listens:\n{}",
                self.log_text()
            ),
        }
    }

    /// SIGKILL, as when Cloud Run loses an instance.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address in the service's `listening on http://ADDR` log line (JSON or text).
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// N instances behind HAProxy, storing in one fake-gcs-server.
pub struct Cluster {
    pub instances: Vec<Instance>,
    pub haproxy: Haproxy,
    pub gcs: FakeGcs,
    /// Where clients (and the instances' chunk calls) go: HAProxy.
    pub url: String,
}

impl Cluster {
    pub fn start(instances: usize) -> Cluster {
        Cluster::start_with(instances, &[], &HaproxyOptions::default())
    }

    /// `env` goes to every instance on top of the cluster's own.
    pub fn start_with(instances: usize, env: &[(&str, &str)], options: &HaproxyOptions) -> Cluster {
        let gcs = FakeGcs::start();
        let front = FrontEnd::bind();
        let mut all_env: Vec<(String, String)> = vec![
            ("STORAGE_EMULATOR_HOST".into(), gcs.host.clone()),
            ("CLOUDRUN_RENDER_FANOUT_URL".into(), front.url.clone()),
            ("CLOUDRUN_RENDER_CHUNK_SECRET".into(), SECRET.into()),
        ];
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        // Started together: each spends most of its start in Chromium.
        let mut started: Vec<Instance> =
            (0..instances).map(|_| Instance::spawn(&all_env)).collect();
        for i in &mut started {
            i.wait_listening();
        }
        let addrs: Vec<SocketAddr> = started.iter().map(|i| i.addr).collect();
        let url = front.url.clone();
        let haproxy = front.start(&addrs, options);
        Cluster {
            instances: started,
            haproxy,
            gcs,
            url,
        }
    }

    pub fn logs(&self) -> String {
        self.instances.iter().map(Instance::log_text).collect()
    }

    /// Loses instance `k` as Cloud Run loses one: its front end routes nothing more to it
    /// (HAProxy alone would learn that only from a failed connection, and in the meantime
    /// could answer a request with 502), then SIGKILL.
    pub fn lose(&mut self, k: usize) {
        self.haproxy.take_out(&format!("i{k}"));
        self.instances[k].kill();
    }
}
