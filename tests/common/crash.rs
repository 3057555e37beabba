//! Killing browsers in the middle of a render, and looking for what is left of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudrun_render::browser::Browser;
use cloudrun_render::render::RenderProgress;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::procs::group_members;
use super::runtime;

pub fn sigkill(pid: u32) {
    // SAFETY: a plain syscall.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Asserts that every process of the browsers `groups` ends. Killed processes take a moment
/// to go; the bound only catches processes that stay.
pub fn assert_groups_end(groups: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<(u32, Vec<u32>)> = groups
            .iter()
            .map(|g| (*g, group_members(*g)))
            .filter(|(_, m)| !m.is_empty())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium processes left behind (group: members): {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs the browser of `browser` once `progress` shows `after` frames rendered and, with
/// `every_restart`, every browser `browser` starts after that, as soon as it has started.
/// Ends when `done` fires; returns the PIDs it killed.
pub fn kill_browser_mid_render(
    browser: Arc<Browser>,
    mut progress: watch::Receiver<RenderProgress>,
    after: u64,
    every_restart: bool,
    done: CancellationToken,
) -> std::thread::JoinHandle<Vec<u32>> {
    std::thread::spawn(move || {
        runtime().block_on(async {
            let mut killed = vec![];
            tokio::select! {
                r = progress.wait_for(|p| p.rendered >= after) => {
                    if r.is_err() {
                        return killed;
                    }
                }
                _ = done.cancelled() => return killed,
            }
            let mut started = browser.started();
            loop {
                let pid = *started.borrow_and_update();
                if let Some(pid) = pid.filter(|p| !killed.contains(p)) {
                    sigkill(pid);
                    killed.push(pid);
                    if !every_restart {
                        return killed;
                    }
                }
                tokio::select! {
                    r = started.changed() => {
                        if r.is_err() {
                            return killed;
                        }
                    }
                    _ = done.cancelled() => return killed,
                }
            }
        })
    })
}

/// The same for a service, which reports through its log: once it logged a line whose
/// message is `after`, SIGKILLs its browser and every browser it logs as started after that,
/// until `done` is set. Returns the PIDs it killed.
pub fn kill_service_browsers(
    logs: Arc<Mutex<String>>,
    after: &'static str,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u32>> {
    std::thread::spawn(move || {
        let mut killed = vec![];
        while !done.load(Ordering::SeqCst) {
            let text = logs.lock().unwrap().clone();
            let armed = log_lines(&text).any(|l| l["message"] == after);
            if armed {
                for pid in browsers_started(&text) {
                    if !killed.contains(&pid) {
                        sigkill(pid);
                        killed.push(pid);
                    }
                }
            }
            // The log has no event to wait on: look again shortly.
            std::thread::sleep(Duration::from_millis(20));
        }
        killed
    })
}

fn log_lines(log: &str) -> impl Iterator<Item = Value> + '_ {
    log.lines().filter_map(|l| serde_json::from_str(l).ok())
}

/// The PIDs of the browsers a service logged as started, in order.
pub fn browsers_started(log: &str) -> Vec<u32> {
    log_lines(log)
        .filter(|l| l["message"] == "browser started")
        .filter_map(|l| l["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// A script in `dir` that starts the real browser (under the same file name, so it is taken
/// for the same kind), after starting a child in the browser's process group that would
/// outlive the browser unless that whole group is killed.
pub fn browser_with_a_stray_child(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let real = cloudrun_render::browser::Executable::find().expect("a Chromium");
    let script = dir.join(real.path.file_name().unwrap());
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 600 &\nexec {} \"$@\"\n",
            real.path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}
