//! CPU time and memory of this process and of the local broker and
//! ClickHouse, read from `/proc` through the `procfs` crate.
//!
//! The servers are found by the pid files `deploy/local/up.sh` leaves in
//! `$XOFLOW_SCRATCH` (default `target/xoflow-local`); a figure that cannot
//! be read counts as zero rather than failing the run.

use procfs::process::Process;

/// CPU seconds (user + system) of a process so far; `None` if it is gone.
pub(super) fn cpu_seconds(process: &Process) -> Option<f64> {
    let stat = process.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// CPU seconds (user + system) of the calling thread so far, read from
/// `/proc/thread-self`: what a thread of its own costs, apart from the rest
/// of the process.
pub(super) fn thread_cpu_seconds() -> Option<f64> {
    // `/proc/<pid>/task/<tid>`: a thread's directory has a process's `stat`.
    let own = std::fs::canonicalize("/proc/thread-self").ok()?;
    Process::new_with_root(own)
        .ok()
        .as_ref()
        .and_then(cpu_seconds)
}

/// This process, for [`cpu_seconds`].
pub(super) fn myself() -> Option<Process> {
    Process::myself().ok()
}

/// The local broker's and ClickHouse's processes, in that order, each when
/// its pid file says where it is.
pub(super) fn servers() -> [Option<Process>; 2] {
    let scratch = std::env::var("XOFLOW_SCRATCH").unwrap_or_else(|_| "target/xoflow-local".into());
    ["broker", "clickhouse"].map(|s| {
        let pid = std::fs::read_to_string(format!("{scratch}/{s}.pid")).ok()?;
        Process::new(pid.trim().parse().ok()?).ok()
    })
}

/// Peak resident memory of this process (`VmHWM`) in MiB.
pub(super) fn peak_rss_mib() -> f64 {
    status_kib(|s| s.vmhwm) / 1024.0
}

/// Resident memory of this process now (`VmRSS`, not the high-water mark)
/// in MiB.
pub(super) fn rss_mib() -> f64 {
    status_kib(|s| s.vmrss) / 1024.0
}

fn status_kib(field: impl Fn(&procfs::process::Status) -> Option<u64>) -> f64 {
    Process::myself()
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| field(&s))
        .map_or(0.0, |kib| kib as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = myself().expect("/proc/self");
        assert!(cpu_seconds(&me).is_some_and(|s| s >= 0.0));
        let (now, peak) = (rss_mib(), peak_rss_mib());
        assert!(now > 0.0 && peak >= now, "rss {now} MiB, peak {peak} MiB");
    }

    #[test]
    fn a_thread_is_charged_its_own_cpu_and_not_another_threads() {
        let me = myself().expect("/proc/self");
        let (mine0, all0) = (
            thread_cpu_seconds().expect("/proc/thread-self"),
            cpu_seconds(&me).expect("/proc/self"),
        );
        // Another thread works until it has been charged 0.3 s of its own:
        // the kernel rounds a thread's and the process's user and system
        // times down apart, so the process's total may read a tick or two
        // under the thread's; the assertions below keep that margin.
        let busy = std::thread::spawn(|| {
            let start = std::time::Instant::now();
            let first = thread_cpu_seconds().expect("/proc/thread-self");
            let mut spins = 0u64;
            while thread_cpu_seconds().expect("/proc/thread-self") - first < 0.3 {
                spins = spins.wrapping_add(std::hint::black_box(1));
                assert!(
                    start.elapsed().as_secs() < 60,
                    "no CPU charged to the thread"
                );
            }
            spins
        });
        busy.join().expect("the busy thread");
        let mine = thread_cpu_seconds().expect("/proc/thread-self") - mine0;
        let all = cpu_seconds(&me).expect("/proc/self") - all0;
        assert!(all >= 0.25, "the process was charged {all} s");
        assert!(
            mine < all - 0.1,
            "this waiting thread was charged {mine} s of {all} s"
        );
    }
}
