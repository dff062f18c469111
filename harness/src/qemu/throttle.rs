//! `--slow N`: QEMU throttled to 1/N of the wall clock by a stop/continue duty cycle.
//!
//! A thread of the harness lets QEMU run for `period / N`, then stops it (SIGSTOP) for
//! the rest of the period, then continues it (SIGCONT), over and over. Only the QEMU
//! process is slowed: the harness's proxy, target, witness collectors and recorders run
//! at full speed, as they would beside a slow customer machine. The duty cycle needs no
//! root, no cgroup delegation and no particular cgroup version, so it works the same on
//! any Debian 12 host (a cgroup CPU quota would cap CPU time instead, which slows a
//! guest by a different factor depending on how busy the host already is). The guest's
//! clock keeps following the host's while QEMU is stopped, so a guest sees a slow
//! machine, not a frozen clock.
//!
//! What it measured (how long QEMU could run, how much CPU it used) is kept, so a
//! report says how slow the run really was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One duty cycle: short enough that a stopped QEMU never starves a guest timer or a
/// QMP request for long, long enough that the signals themselves cost nothing.
pub const PERIOD: Duration = Duration::from_millis(100);

/// What the throttle measured so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThrottleStats {
    /// The factor asked for.
    pub factor: u32,
    /// Wall time QEMU was let run, and was held stopped.
    pub running: Duration,
    pub stopped: Duration,
    /// QEMU's CPU time (user + system) over the same span, when /proc could tell.
    pub cpu: Option<Duration>,
}

impl ThrottleStats {
    /// The share of wall time QEMU could run: 1/factor when the duty held.
    pub fn duty(&self) -> f64 {
        let total = (self.running + self.stopped).as_secs_f64();
        if total > 0.0 {
            self.running.as_secs_f64() / total
        } else {
            1.0
        }
    }

    /// QEMU's CPU seconds per wall second over the throttled span.
    pub fn cpu_per_second(&self) -> Option<f64> {
        let total = (self.running + self.stopped).as_secs_f64();
        self.cpu
            .filter(|_| total > 0.0)
            .map(|c| c.as_secs_f64() / total)
    }
}

/// A running duty cycle on one process; stopping it (or dropping it) continues the
/// process for good.
pub struct Throttle {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ThrottleStats>>,
    thread: Option<JoinHandle<()>>,
}

/// user + system CPU time of a process, from /proc/PID/stat.
fn cpu_time(pid: i32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
}

/// A process handle that cannot be confused with a later process of the same pid: once
/// QEMU has exited and been reaped, signals through it fail instead of stopping whatever
/// process the kernel gave that pid next.
struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    /// Opens `pid`, which must be the caller's child and not yet reaped.
    fn open(pid: i32) -> Option<PidFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a non-negative result is a descriptor we now own.
        (fd >= 0).then(|| PidFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    fn signal(&self, sig: i32) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }
}

impl Throttle {
    /// Starts throttling `pid` to 1/`factor` of the wall clock. `pid` must be the
    /// caller's child, not yet reaped (it is pinned at once). A factor of 1 or less, or
    /// a process that cannot be pinned, is no throttle at all: see [`Throttle::active`].
    pub fn start(pid: i32, factor: u32) -> Throttle {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ThrottleStats {
            factor,
            ..ThrottleStats::default()
        }));
        let pinned = (factor > 1).then(|| PidFd::open(pid)).flatten();
        let thread = pinned.and_then(|fd| {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("bw-throttle".into())
                .spawn(move || duty_cycle(&fd, pid, factor, &stop, &stats))
                .ok()
        });
        Throttle {
            stop,
            stats,
            thread,
        }
    }

    /// Whether a duty cycle is running (false for a factor of 1, or when the process
    /// could not be pinned).
    pub fn active(&self) -> bool {
        self.thread.is_some()
    }

    pub fn stats(&self) -> ThrottleStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the duty cycle and leaves the process running.
    pub fn finish(&mut self) -> ThrottleStats {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.finish();
    }
}

fn duty_cycle(fd: &PidFd, pid: i32, factor: u32, stop: &AtomicBool, stats: &Mutex<ThrottleStats>) {
    let run_for = PERIOD / factor;
    let cpu_start = cpu_time(pid);
    let mut running = Duration::ZERO;
    let mut stopped = Duration::ZERO;
    // Wall time is measured, not assumed: a loaded host wakes this thread late.
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        std::thread::sleep(run_for);
        running += t.elapsed();
        if stop.load(Ordering::SeqCst) || !fd.signal(libc::SIGSTOP) {
            break;
        }
        let t = Instant::now();
        std::thread::sleep(PERIOD - run_for);
        // Continued before anything else: a stop must never outlive the cycle.
        let continued = fd.signal(libc::SIGCONT);
        stopped += t.elapsed();
        let cpu = match (cpu_start, cpu_time(pid)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        *stats.lock().unwrap_or_else(|p| p.into_inner()) = ThrottleStats {
            factor,
            running,
            stopped,
            cpu,
        };
        if !continued {
            break;
        }
    }
    // Whatever happened, the process is left running (a no-op once it has gone).
    fd.signal(libc::SIGCONT);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_throttled_busy_process_gets_about_its_share() {
        // A busy loop in a child: its CPU time follows the duty cycle.
        let mut child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut throttle = Throttle::start(pid, 4);
        std::thread::sleep(Duration::from_millis(1500));
        let stats = throttle.finish();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(stats.factor, 4);
        // The duty is the measured share of wall time it could run: near 1/4 on an
        // idle host, and never near 1 (which would mean no throttle at all).
        let duty = stats.duty();
        assert!(duty > 0.1 && duty < 0.5, "duty {duty:.2}: {stats:?}");
        let cpu = stats.cpu_per_second().expect("/proc tells the CPU time");
        assert!(
            cpu < 0.6,
            "a process stopped 3/4 of the time used {cpu:.2} CPU/s"
        );
    }

    #[test]
    fn a_factor_of_one_does_nothing_and_a_reaped_process_is_never_signalled() {
        let mut none = Throttle::start(std::process::id() as i32, 1);
        assert!(!none.active());
        assert_eq!(none.finish().running, Duration::ZERO);
        // Pinned while alive, then exits and is reaped: the cycle ends by itself, and
        // its signals can no longer reach whatever process reuses the pid.
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let mut t = Throttle::start(child.id() as i32, 2);
        assert!(t.active());
        // Let it run out: continue it and wait for it (stops do not stop the clock).
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "sleep 0.2 never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let t0 = Instant::now();
        while !t.thread.as_ref().is_some_and(|t| t.is_finished()) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the cycle outlived the process"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t.finish();
    }
}
