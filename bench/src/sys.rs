//! Process measurements from /proc (Linux): resident memory and CPU time, plus latency stats.

/// Resident set size of this process in bytes (VmRSS), 0 if /proc is unavailable.
pub fn rss_bytes() -> u64 {
    rss_of(std::process::id()).unwrap_or(0)
}

/// Resident set size (VmRSS) of process `pid` in bytes; None once it is gone.
pub fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// User + system CPU seconds a process has used so far (None once it is gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// CPU seconds of this process, all threads.
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// CPU seconds the calling thread has used (CLOCK_THREAD_CPUTIME_ID): on a shared machine this,
/// unlike wall time, does not grow while the thread waits for a core.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Percentile (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50/p99/p99.9/mean/max of latencies given in microseconds.
pub fn latency_summary(mut us: Vec<f64>) -> serde_json::Value {
    us.sort_by(f64::total_cmp);
    let mean = if us.is_empty() { f64::NAN } else { us.iter().sum::<f64>() / us.len() as f64 };
    serde_json::json!({
        "samples": us.len(),
        "p50_us": percentile(&us, 50.0),
        "p99_us": percentile(&us, 99.0),
        "p999_us": percentile(&us, 99.9),
        "mean_us": mean,
        "max_us": us.last().copied().unwrap_or(f64::NAN),
    })
}
