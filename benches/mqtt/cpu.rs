//! CPU sampling from `/proc`: the clock ticks of the broker, the responder and this process, and
//! the machine's busy and total ticks, read before and after a measured window.

use std::fs;

/// CPU time (utime + stime, in clock ticks of 1/100 s) of the processes of interest, and the
/// machine's busy and total ticks.
pub struct CpuSample {
    pub broker: Option<u64>,
    pub responder: Option<u64>,
    pub bench: Option<u64>,
    pub machine: Option<(u64, u64)>,
}

impl CpuSample {
    /// Sums over `broker` and over `responder`.
    pub fn take(broker: &[u32], responder: &[u32]) -> CpuSample {
        let sum = |pids: &[u32]| {
            pids.iter()
                .map(|p| proc_ticks(&format!("/proc/{p}/stat")))
                .sum::<Option<u64>>()
        };
        CpuSample {
            broker: sum(broker),
            responder: sum(responder),
            bench: proc_ticks("/proc/self/stat"),
            machine: machine_ticks(),
        }
    }
}

pub fn proc_ticks(path: &str) -> Option<u64> {
    let stat = fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ") ".
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}
