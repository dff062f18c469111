//! `bw-workload`: the seeded guest workload generator (logic in `bw_guest::workload`).
//! Prints the JSON summary on stdout; SIGTERM/SIGINT stop it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use bw_guest::workload::{self, ArgsError, Config, USAGE};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Sets STOP on SIGTERM and SIGINT. SA_RESTART: a write interrupted by the signal goes on
/// and the loop sees the flag right after.
fn catch_stop_signals() -> std::io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // sigaction struct is zero-initialised and then filled.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os().skip(1)) {
        Ok(config) => config,
        Err(ArgsError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bw-workload: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = catch_stop_signals() {
        eprintln!("bw-workload: cannot catch SIGTERM: {e}");
        return ExitCode::from(2);
    }
    let summary = match workload::run(&config, &STOP) {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("bw-workload: {}", bw_guest::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    match serde_json::to_string(&summary) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("bw-workload: cannot encode the summary: {e}");
            return ExitCode::from(2);
        }
    }
    match summary.failure {
        Some(failure) => {
            eprintln!(
                "bw-workload: {failure} (stopped by {:?})",
                summary.stopped_by
            );
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}
