//! Starting and stopping the Chromium process.
//!
//! We start Chromium ourselves instead of through chromiumoxide, for three reasons: Debian's
//! `/usr/bin/chromium*` are wrapper scripts that do not `exec` (killing them orphans the
//! browser), the process must die with us even if we are killed, and a crashed browser must
//! take all its children with it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::options::{ChromiumOptions, GlRenderer};

use super::BrowserError;

/// The environment variable that overrides which Chromium binary we start.
pub const BROWSER_ENV: &str = "CLOUDRUN_RENDER_BROWSER";

const CANDIDATES: &[&str] = &[
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/lib/chromium/chromium",
];

/// Which build we run: they differ in headless flags and in how tabs must be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserKind {
    /// The old-headless shell Remotion ships: less memory, background tabs keep painting.
    HeadlessShell,
    /// Full Chromium in new-headless mode: each tab needs its own window to keep painting.
    Chromium,
}

#[derive(Debug, Clone)]
pub struct Executable {
    pub path: PathBuf,
    pub kind: BrowserKind,
}

impl Executable {
    /// `$CLOUDRUN_RENDER_BROWSER`, else the headless shell, else full Chromium.
    pub fn find() -> Result<Executable, BrowserError> {
        if let Ok(p) = std::env::var(BROWSER_ENV)
            && !p.is_empty()
        {
            let path = PathBuf::from(&p);
            if !path.exists() {
                return Err(BrowserError::Launch(format!(
                    "{BROWSER_ENV}={p} does not exist"
                )));
            }
            return Ok(Executable::at(path));
        }
        CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map(|p| Executable::at(p.to_path_buf()))
            .ok_or_else(|| {
                BrowserError::Launch(format!(
                    "no Chromium found (looked for {}); install chromium-headless-shell or set {BROWSER_ENV}",
                    CANDIDATES.join(", ")
                ))
            })
    }

    fn at(path: PathBuf) -> Executable {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let kind = if name.contains("headless-shell") || name.contains("headless_shell") {
            BrowserKind::HeadlessShell
        } else {
            BrowserKind::Chromium
        };
        Executable { path, kind }
    }
}

/// What a browser is launched with. Renders whose `chromiumOptions` need other launch flags
/// get a browser of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchOptions {
    pub gl: Option<GlRenderer>,
    pub ignore_certificate_errors: bool,
    pub disable_web_security: bool,
    pub user_agent: Option<String>,
}

impl LaunchOptions {
    /// The Cloud Run service's defaults: SwiftShader through ANGLE, so WebGL works without a GPU.
    pub fn service_default() -> Self {
        LaunchOptions {
            gl: default_gl(),
            ignore_certificate_errors: false,
            disable_web_security: false,
            user_agent: None,
        }
    }

    pub fn for_render(chromium: &ChromiumOptions) -> Self {
        LaunchOptions {
            gl: chromium.gl.or(default_gl()),
            ignore_certificate_errors: chromium.ignore_certificate_errors,
            disable_web_security: chromium.disable_web_security,
            // The user agent is applied per tab, so it does not need a browser of its own.
            user_agent: None,
        }
    }
}

/// The GL backend when a render does not ask for one: `$CLOUDRUN_RENDER_GL` (`none` for no GL
/// flag, or a `chromiumOptions.gl` value), else SwiftShader through ANGLE like the original.
pub const GL_ENV: &str = "CLOUDRUN_RENDER_GL";

/// Extra Chromium flags, space-separated, appended to ours.
pub const EXTRA_FLAGS_ENV: &str = "CLOUDRUN_RENDER_CHROMIUM_FLAGS";

/// `1` (or `true`, `on`) keeps Chromium's 60 Hz frame clock.
pub const FRAME_RATE_LIMIT_ENV: &str = "CLOUDRUN_RENDER_FRAME_RATE_LIMIT";

fn frame_rate_limited() -> bool {
    std::env::var(FRAME_RATE_LIMIT_ENV)
        .map(|v| matches!(v.trim(), "1" | "true" | "on"))
        .unwrap_or(false)
}

fn default_gl() -> Option<GlRenderer> {
    match std::env::var(GL_ENV).ok().as_deref() {
        Some("none") => None,
        Some(v) => match v.parse() {
            Ok(gl) => Some(gl),
            Err(e) => {
                tracing::warn!("{GL_ENV}: {e}; using swangle");
                Some(GlRenderer::Swangle)
            }
        },
        None => Some(GlRenderer::Swangle),
    }
}

/// Software raster's tiles: 1024 px squares instead of Chromium's 256. A 1080p frame is then
/// 4 tiles instead of 40, and a composition's frame usually repaints the whole view, so the
/// per-tile cost (setup, and effects such as blurs re-rastered around each tile's edges) is
/// paid 10x less often: renders of the `Bench` composition run 4-7 % faster. Frames differ
/// from 256-px tiles by a level here and there, far below JPEG's noise (BENCHMARKS.md).
const SOFTWARE_TILES: [&str; 2] = ["--default-tile-width=1024", "--default-tile-height=1024"];

fn gl_flags(gl: Option<GlRenderer>) -> Vec<String> {
    let software = matches!(gl, Some(GlRenderer::Swangle | GlRenderer::Swiftshader));
    let flags: &[&str] = match gl {
        None => &[],
        // WebGL through SwiftShader, but pages composited by Skia's software compositor:
        // compositing through SwiftShader made a 1080p capture ~5x slower (BENCHMARKS.md).
        Some(GlRenderer::Swangle) => &[
            "--use-gl=angle",
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            "--disable-gpu-compositing",
        ],
        Some(GlRenderer::Angle) => &["--use-gl=angle"],
        Some(GlRenderer::AngleEgl) => &["--use-gl=angle", "--use-angle=gl-egl"],
        Some(GlRenderer::Vulkan) => &[
            "--use-angle=vulkan",
            "--use-vulkan=native",
            "--disable-vulkan-fallback-to-gl-for-testing",
            "--disable-vulkan-surface",
            "--ignore-gpu-blocklist",
            "--enable-gpu",
        ],
        Some(GlRenderer::Egl) => &["--use-gl=egl"],
        Some(GlRenderer::Swiftshader) => &["--use-gl=swiftshader", "--disable-gpu-compositing"],
    };
    let tiles: &[&str] = if software { &SOFTWARE_TILES } else { &[] };
    flags.iter().chain(tiles).map(|s| s.to_string()).collect()
}

/// The launch flags: Remotion's list, in its order, plus what this sandbox needs.
pub fn flags(kind: BrowserKind, options: &LaunchOptions, user_data_dir: &Path) -> Vec<String> {
    let cpus = crate::system::cpu_count();
    let video_threads = ((cpus as f64 * 2.0 / 3.0).round() as usize).max(1);
    let mut f: Vec<String> = [
        "--allow-pre-commit-input",
        "--disable-background-networking",
        "--enable-features=NetworkService,NetworkServiceInProcess,CanvasDrawElement",
        // Background tabs must keep running timers and requestAnimationFrame: readiness
        // polling depends on them.
        "--disable-background-timer-throttling",
        "--disable-backgrounding-occluded-windows",
        "--disable-breakpad",
        "--disable-client-side-phishing-detection",
        "--disable-component-extensions-with-background-pages",
        "--disable-default-apps",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--proxy-server=direct://",
        "--proxy-bypass-list=*",
        "--force-gpu-mem-available-mb=4096",
        "--disable-hang-monitor",
        "--disable-extensions",
        "--allow-chrome-scheme-url",
        "--disable-ipc-flooding-protection",
        "--disable-popup-blocking",
        "--disable-prompt-on-repost",
        "--disable-renderer-backgrounding",
        "--disable-sync",
        // Stable pixels: the same colours, no scrollbars, no hinting differences.
        "--force-color-profile=srgb",
        "--metrics-recording-only",
        "--mute-audio",
        "--no-first-run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    f.push(format!("--video-threads={video_threads}"));
    f.extend(
        [
            "--enable-automation",
            "--password-store=basic",
            "--use-mock-keychain",
            "--enable-blink-features=IdleDetection",
            "--export-tagged-pdf",
            "--intensive-wake-up-throttling-policy=0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    f.push(
        match kind {
            BrowserKind::HeadlessShell => "--headless=old",
            BrowserKind::Chromium => "--headless=new",
        }
        .to_string(),
    );
    f.push("--no-sandbox".into());
    f.push("--disable-setuid-sandbox".into());
    f.extend(gl_flags(options.gl));
    f.extend(
        [
            "--disable-background-media-suspend",
            // Lets an https page load OffthreadVideo frames from our loopback /proxy.
            "--allow-running-insecure-content",
            "--disable-component-update",
            "--disable-domain-reliability",
            "--disable-features=AudioServiceOutOfProcess,IsolateOrigins,site-per-process,Translate,BackForwardCache,AvoidUnnecessaryBeforeUnloadCheckSync,IntensiveWakeUpThrottling,LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults",
            "--disable-print-preview",
            "--disable-site-isolation-trials",
            "--disk-cache-size=268435456",
            "--hide-scrollbars",
            "--no-default-browser-check",
            "--no-pings",
            "--font-render-hinting=none",
            // Renderers become direct children of the browser, in its process group.
            "--no-zygote",
            "--ignore-gpu-blocklist",
            "--enable-unsafe-webgpu",
            // Without these, Chromium keeps dialling Google's hosts, which a closed network refuses.
            "--disable-quic",
            "--disable-gpu-shader-disk-cache",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    if options.ignore_certificate_errors {
        f.push("--ignore-certificate-errors".into());
    }
    if options.disable_web_security {
        f.push("--disable-web-security".into());
    }
    if let Some(ua) = &options.user_agent {
        f.push(format!("--user-agent={ua}"));
    }
    // Chromium paces compositor frames to a 60 Hz clock, and a screenshot waits for the next
    // tick or two: ~40 ms per frame whatever the page. Unpaced, a light composition renders
    // ~2x faster (BENCHMARKS.md). A page that animates on its own then spins as fast as it
    // can, so operators who render such pages can put the clock back.
    if !frame_rate_limited() {
        f.push("--disable-frame-rate-limit".into());
    }
    // Operators can tune Chromium (raster threads, GL backends) without a rebuild.
    if let Ok(extra) = std::env::var(EXTRA_FLAGS_ENV) {
        f.extend(extra.split_whitespace().map(str::to_string));
    }
    f.push(crate::guard::PageGuard::resolver_rules());
    f.push("--remote-debugging-port=0".into());
    f.push(format!("--user-data-dir={}", user_data_dir.display()));
    f.push("about:blank".into());
    f
}

/// A running Chromium. Dropping it kills the browser and every process it started.
pub struct ChromiumProcess {
    /// `None` once reaped. Only a holder of the lock reaps, and only after signalling the
    /// process group: while the browser is unreaped, its PID (the group's ID) cannot be
    /// reused, so the signal never reaches a stranger.
    child: Arc<Mutex<Option<Child>>>,
    pgid: i32,
    pub websocket_url: String,
    _user_data_dir: tempfile::TempDir,
}

impl std::fmt::Debug for ChromiumProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChromiumProcess")
            .field("pgid", &self.pgid)
            .finish()
    }
}

impl ChromiumProcess {
    /// Starts Chromium and waits (up to `timeout`) for its DevTools websocket address.
    /// `on_exit` is called, from a thread of its own, as soon as the browser process ends,
    /// with what ended it; by then its group (renderers, GPU process) has been killed too.
    pub fn spawn(
        exe: &Executable,
        options: &LaunchOptions,
        timeout: Duration,
        on_exit: impl FnOnce(String) + Send + 'static,
    ) -> Result<ChromiumProcess, BrowserError> {
        let user_data_dir = tempfile::Builder::new()
            .prefix("cloudrun-render-chromium-")
            .tempdir()
            .map_err(|e| BrowserError::Launch(format!("cannot create a profile directory: {e}")))?;
        let mut cmd = Command::new(&exe.path);
        cmd.args(flags(exe.kind, options, user_data_dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (setpgid, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Own process group, so one killpg reaches the renderers and the GPU process.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with the thread that forked us; that thread lives as long as we do.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = spawn_on_launcher_thread(cmd)
            .map_err(|e| BrowserError::Launch(format!("{}: {e}", exe.path.display())))?;
        let pgid = child.id() as i32;
        let stderr = child.stderr.take().expect("stderr is piped");

        let (tx, rx) = std_mpsc::channel::<Result<String, String>>();
        std::thread::Builder::new()
            .name("chromium-stderr".into())
            .spawn(move || {
                let mut tx = Some(tx);
                let mut recent = Vec::<String>::new();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(sender) = &tx {
                        if let Some(url) = line
                            .split_once("DevTools listening on ")
                            .map(|(_, u)| u.trim().to_string())
                        {
                            let _ = sender.send(Ok(url));
                            tx = None;
                            continue;
                        }
                        recent.push(line.clone());
                        if recent.len() > 20 {
                            recent.remove(0);
                        }
                    }
                    // Keep draining: a full pipe would block Chromium.
                    tracing::trace!(target: "chromium", "{line}");
                }
                if let Some(sender) = tx {
                    let _ = sender.send(Err(recent.join("\n")));
                }
            })
            .map_err(|e| BrowserError::Launch(e.to_string()))?;

        let mut process = ChromiumProcess {
            child: Arc::new(Mutex::new(Some(child))),
            pgid,
            websocket_url: String::new(),
            _user_data_dir: user_data_dir,
        };
        watch_exit(process.child.clone(), pgid, on_exit)
            .map_err(|e| BrowserError::Launch(e.to_string()))?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(url)) => {
                process.websocket_url = url;
                Ok(process)
            }
            Ok(Err(stderr)) => Err(BrowserError::Launch(format!(
                "Chromium exited before it was ready. Its last output:\n{stderr}"
            ))),
            Err(_) => Err(BrowserError::Launch(format!(
                "Chromium did not report a DevTools address within {}s",
                timeout.as_secs()
            ))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pgid as u32
    }

    fn kill(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            kill_group(self.pgid);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: plain syscall on a process group we created, whose leader is not reaped yet.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// Waits, on a thread of its own, for the browser process to end, then kills what is left of
/// its group, reaps it and reports what ended it. Ends when the browser does, at the latest
/// when its `ChromiumProcess` is dropped.
fn watch_exit(
    child: Arc<Mutex<Option<Child>>>,
    pid: i32,
    on_exit: impl FnOnce(String) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("chromium-exit".into())
        .spawn(move || {
            // WNOWAIT: wait for the exit without reaping, so the PID stays ours (see `child`).
            loop {
                // SAFETY: waitid fills the zeroed siginfo_t we own.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let r = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if r == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
            let mut slot = child.lock().unwrap_or_else(|e| e.into_inner());
            let cause = match slot.take() {
                Some(mut child) => {
                    kill_group(pid);
                    let cause = match child.wait() {
                        Ok(status) => format!("its process ended: {status}"),
                        Err(e) => format!("its process ended: {e}"),
                    };
                    tracing::warn!(pid, "the browser died: {cause}");
                    cause
                }
                None => "it was stopped".to_string(),
            };
            drop(slot);
            on_exit(cause);
        })
        .map(drop)
}

impl Drop for ChromiumProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and tokio's
/// blocking threads come and go. So every Chromium is forked by one thread that never ends.
fn spawn_on_launcher_thread(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, std_mpsc::Sender<std::io::Result<Child>>);
    static LAUNCHER: OnceLock<Mutex<std_mpsc::Sender<Request>>> = OnceLock::new();
    let sender = LAUNCHER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("chromium-launcher".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the launcher thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = std_mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("launcher thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("launcher thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_options() {
        let dir = Path::new("/tmp/profile");
        let base = flags(
            BrowserKind::HeadlessShell,
            &LaunchOptions::service_default(),
            dir,
        );
        for f in [
            "--headless=old",
            "--no-zygote",
            "--use-gl=angle",
            "--use-angle=swiftshader",
            "--disable-gpu-compositing",
            "--default-tile-width=1024",
            "--default-tile-height=1024",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-frame-rate-limit",
            "--remote-debugging-port=0",
            "--user-data-dir=/tmp/profile",
        ] {
            assert!(base.iter().any(|a| a == f), "missing {f}");
        }
        assert!(!base.iter().any(|a| a == "--ignore-certificate-errors"));
        let custom = LaunchOptions {
            gl: Some(GlRenderer::Vulkan),
            ignore_certificate_errors: true,
            disable_web_security: true,
            user_agent: Some("UA x".into()),
        };
        let f = flags(BrowserKind::Chromium, &custom, dir);
        for want in [
            "--headless=new",
            "--use-angle=vulkan",
            "--ignore-certificate-errors",
            "--disable-web-security",
            "--user-agent=UA x",
        ] {
            assert!(f.iter().any(|a| a == want), "missing {want}");
        }
        assert!(!f.iter().any(|a| a == "--use-angle=swiftshader"));
        assert!(
            !f.iter().any(|a| a == "--disable-gpu-compositing"),
            "a real GPU composites"
        );
        assert!(
            !f.iter().any(|a| a.starts_with("--default-tile-")),
            "GPU raster picks its own tiles"
        );
    }
}
