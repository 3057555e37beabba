//! What the machine (or the Cloud Run container) gives us.

/// Overrides the detected CPU count (tests, or operators who know better).
pub const CPUS_ENV: &str = "CLOUDRUN_RENDER_CPUS";

/// Resolves when the process is asked to stop: SIGTERM (Cloud Run, `kill`) or Ctrl-C.
pub async fn termination_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// How much lower than the rest of the process the encoder threads run (a nice increment,
/// 0 to 19; 0 turns it off).
pub const ENCODER_NICE_ENV: &str = "CLOUDRUN_RENDER_ENCODER_NICE";

/// Capture is a latency chain through Chromium (script, raster, composite, JPEG) that one tab
/// runs on about one CPU; x264 soaks up every CPU it is given. At equal priority the encoder
/// slows every link of that chain; below it, it fills the gaps instead (BENCHMARKS.md).
const DEFAULT_ENCODER_NICE: i32 = 10;

/// Lowers the calling thread's priority by the encoder's nice increment. Threads it starts
/// afterwards (x264's workers) inherit it: on Linux the nice value is per thread. Best effort.
pub fn deprioritize_encoder_thread() {
    let nice = std::env::var(ENCODER_NICE_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(DEFAULT_ENCODER_NICE);
    if let Err(error) = lower_current_thread_priority(nice) {
        tracing::debug!(%error, "could not lower the encoder's priority");
    }
}

/// Adds `increment` (clamped to 0..=19) to the calling thread's nice value.
fn lower_current_thread_priority(increment: i32) -> std::io::Result<()> {
    let increment = increment.clamp(0, 19);
    if increment == 0 {
        return Ok(());
    }
    // SAFETY: plain syscalls about the calling thread; no memory is shared with the kernel.
    let result = unsafe {
        let tid = libc::gettid() as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (current + increment).min(19))
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CPUs available to this process: the affinity mask and the cgroup CPU quota both count,
/// so a 2-vCPU Cloud Run instance on a 64-core host says 2.
pub fn cpu_count() -> usize {
    let affinity = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    effective_cpus(
        std::env::var(CPUS_ENV).ok().as_deref(),
        affinity,
        cgroup_cpu_quota(),
    )
}

/// The override if it is a positive number, else the smaller of the affinity mask's CPUs and
/// the quota's.
fn effective_cpus(override_: Option<&str>, affinity: usize, quota: Option<usize>) -> usize {
    if let Some(n) = override_
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    match quota {
        Some(q) => affinity.min(q.max(1)),
        None => affinity,
    }
}

/// `ceil(quota / period)` from cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`.
fn cgroup_cpu_quota() -> Option<usize> {
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        return parse_cpu_max(&s);
    }
    let quota: i64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let period: i64 = std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (quota > 0 && period > 0).then(|| (quota as f64 / period as f64).ceil() as usize)
}

fn parse_cpu_max(s: &str) -> Option<usize> {
    let mut parts = s.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    Some((quota / period).ceil() as usize)
}

/// Bytes of memory we may still use: the smaller of the cgroup's headroom and MemAvailable.
pub fn available_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX);
    let cgroup = (|| {
        let max: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(max.saturating_sub(current))
    })()
    .unwrap_or(u64::MAX);
    meminfo.min(cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_nice() -> i32 {
        // SAFETY: a read-only syscall about the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn lowered_priority_is_per_thread_and_inherited() {
        let (before, lowered, inherited) = std::thread::spawn(|| {
            let before = thread_nice();
            lower_current_thread_priority(5).unwrap();
            let lowered = thread_nice();
            // x264 starts its workers after the encoder opens: they must inherit the value.
            let inherited = std::thread::spawn(thread_nice).join().unwrap();
            (before, lowered, inherited)
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 5).min(19));
        assert_eq!(inherited, lowered);
        // The test's own thread was not touched.
        assert_eq!(thread_nice(), before);
        lower_current_thread_priority(0).unwrap();
        assert_eq!(thread_nice(), before);
    }

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("100000 100000"), Some(1));
    }

    #[test]
    fn the_cpu_count_is_the_tightest_limit_unless_overridden() {
        assert_eq!(effective_cpus(None, 64, Some(2)), 2, "Cloud Run's quota");
        assert_eq!(effective_cpus(None, 2, Some(8)), 2, "the affinity mask");
        assert_eq!(effective_cpus(None, 4, None), 4);
        assert_eq!(effective_cpus(None, 4, Some(0)), 1, "a quota below one CPU");
        assert_eq!(effective_cpus(Some("3"), 64, Some(2)), 3, "the override");
        assert_eq!(effective_cpus(Some("0"), 4, None), 4, "0 is no override");
        assert_eq!(effective_cpus(Some("many"), 4, Some(2)), 2);
    }
}
