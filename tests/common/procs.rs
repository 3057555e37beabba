//! Processes, as /proc lists them: what the service and Chromium leave running.

/// A live (not zombie) process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    /// Where `/proc/PID/exe` points ("" when we may not read it).
    pub exe: String,
    /// Arguments joined by spaces.
    pub cmdline: String,
}

/// Every live process.
pub fn processes() -> Vec<Proc> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Gone between the listing and the read: not live.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The name may hold spaces and parentheses; the fields after its last ')' do not.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        if fields[0] == "Z" {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid: fields[1].parse().unwrap(),
            pgid: fields[2].parse().unwrap(),
            exe,
            cmdline,
        });
    }
    out
}

/// Live processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<Proc> {
    processes().into_iter().filter(|p| p.ppid == pid).collect()
}

/// Live processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.pgid == pgid)
        .map(|p| p.pid)
        .collect()
}

/// Renderer processes of a browser (with --no-zygote they are its direct children).
pub fn renderer_processes(browser_pid: u32) -> Vec<u32> {
    children(browser_pid)
        .into_iter()
        .filter(|p| p.cmdline.contains("--type=renderer"))
        .map(|p| p.pid)
        .collect()
}

/// Whether process `pid` itself holds a socket listening on TCP `port` (IPv4 or IPv6).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["tcp", "tcp6"].iter().any(|table| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        text.lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            local_port == Some(port) && f[3] == "0A" && inodes.iter().any(|i| i == f[9])
        })
    })
}
