//! Process lifetime: no Chromium outlives the service, a dead browser is replaced.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Live (non-zombie) processes whose parent is `pid`.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let mut fields = stat.rsplit(')').next().unwrap().split_whitespace();
        let state = fields.next().unwrap().to_string();
        let ppid: u32 = fields.next().unwrap().parse().unwrap();
        if ppid == pid && state != "Z" {
            let exe = std::fs::read_link(format!("/proc/{child}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push((child, exe));
        }
    }
    out
}

/// Live processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let (state, group) = (fields[0], fields[2].parse::<u32>().unwrap());
        if group == pgid && state != "Z" {
            out.push(pid);
        }
    }
    out
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real Chromium binary the service started (not Debian's wrapper script).
fn service_browser(service: &Service) -> u32 {
    let kids = children(service.child.id());
    let browsers: Vec<_> = kids
        .iter()
        .filter(|(_, exe)| exe.starts_with("/usr/lib/chromium/"))
        .collect();
    assert_eq!(
        browsers.len(),
        1,
        "exactly one warm browser, started directly: {kids:?}"
    );
    browsers[0].0
}

#[test]
fn the_browser_dies_with_the_service_on_sigterm() {
    let service = Service::start(&[]);
    let browser = service_browser(&service);
    assert!(!group_members(browser).is_empty());
    assert!(service.stop().success());
    wait_until(
        "the browser's processes to exit",
        Duration::from_secs(5),
        || group_members(browser).is_empty(),
    );
}

#[test]
fn the_browser_dies_with_the_service_on_sigkill() {
    let mut service = Service::start(&[]);
    let browser = service_browser(&service);
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    wait_until(
        "the browser's processes to exit",
        Duration::from_secs(5),
        || group_members(browser).is_empty(),
    );
}

#[test]
fn a_dead_browser_is_replaced_and_leaves_nothing_behind() {
    let service = Service::start(&[]);
    let first = service_browser(&service);
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    wait_until("the old browser to go", Duration::from_secs(5), || {
        group_members(first).is_empty()
    });

    let mut payload = media_payload(&format!("{}/site", fixture_server()), "Frames");
    payload["frameRange"] = json!([0, 4]);
    let read = post_like_client(&service.url, &payload);
    assert!(
        read.response.is_some(),
        "the render after the crash failed: {:?}",
        read.error
    );
    let second = service_browser(&service);
    assert_ne!(first, second);
    assert!(service.stop().success());
    wait_until("the new browser to exit", Duration::from_secs(5), || {
        group_members(second).is_empty()
    });
}
