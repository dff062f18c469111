//! One step of a pipeline driven by commands (a built-in provider's `dmsetup` and `lvm`
//! lines, or a vendor's scripts): a shell command run in the guest with the step's
//! environment and time limit, and the contract every step is held to. A step that
//! fails, outlives its limit, or prints nothing when it must print is a [`StepError`]
//! naming the step, the command, how it ended and the tail of its output.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bw_guest::control::Finished;

use crate::guest::GuestError;
use crate::vm::Vm;

/// Lines of output an error keeps.
const TAIL_LINES: usize = 12;

/// Environment variables of a step (`BW_VOLUME`, `BW_SNAPSHOT`, ...).
pub type Env = BTreeMap<String, String>;

/// Why a step did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("step `{step}` failed ({how}): `{command}`; its output ends:\n{tail}")]
    Failed {
        step: String,
        command: String,
        /// e.g. "exit status 3", "killed by signal 9".
        how: String,
        tail: String,
    },
    #[error("step `{step}` did not finish within its limit of {limit:?} and was killed: `{command}`; its output ends:\n{tail}")]
    Hung {
        step: String,
        command: String,
        limit: Duration,
        tail: String,
    },
    #[error("step `{step}` printed nothing, and it must print {what}: `{command}`")]
    Silent {
        step: String,
        command: String,
        what: &'static str,
    },
    #[error("step `{step}`: talking to the guest")]
    Guest {
        step: String,
        #[source]
        source: GuestError,
    },
}

/// What a step must print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Anything, or nothing.
    Any,
    /// At least one non-empty line, which the caller reads (`what` says what it is).
    Required(&'static str),
}

/// A step to run.
#[derive(Clone, Debug)]
pub struct Step<'a> {
    pub name: &'a str,
    pub script: &'a str,
    pub env: &'a Env,
    pub limit: Duration,
    pub output: Output,
}

/// The last lines of a finished command's stdout and stderr.
pub fn tail(done: &Finished) -> String {
    let both = format!("{}{}", done.stdout, done.stderr);
    let lines: Vec<&str> = both.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        "(nothing)".to_string()
    } else {
        tail
    }
}

/// How a finished step ended, against the contract.
pub fn judge(step: &Step, done: Finished) -> Result<Finished, StepError> {
    if done.timed_out {
        return Err(StepError::Hung {
            step: step.name.to_string(),
            command: step.script.to_string(),
            limit: step.limit,
            tail: tail(&done),
        });
    }
    if !done.success() {
        let how = match (done.exit_code, done.signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended without a status".to_string(),
        };
        return Err(StepError::Failed {
            step: step.name.to_string(),
            command: step.script.to_string(),
            how,
            tail: tail(&done),
        });
    }
    if let Output::Required(what) = step.output {
        if done.stdout.trim().is_empty() {
            return Err(StepError::Silent {
                step: step.name.to_string(),
                command: step.script.to_string(),
                what,
            });
        }
    }
    Ok(done)
}

fn guest_err<'a>(step: &'a Step<'a>) -> impl FnOnce(GuestError) -> StepError + 'a {
    move |source| StepError::Guest {
        step: step.name.to_string(),
        source,
    }
}

/// Runs a step to its end (or its limit).
pub fn run(vm: &mut Vm, step: &Step) -> Result<Finished, StepError> {
    let done = vm
        .guest
        .exec_env(&["/bin/sh", "-c", step.script], step.env, step.limit)
        .map_err(guest_err(step))?;
    judge(step, done)
}

/// Runs a step and returns the last non-empty line it printed (it must print one).
pub fn run_for_line(vm: &mut Vm, step: &Step) -> Result<String, StepError> {
    let done = run(vm, step)?;
    Ok(done
        .stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string())
}

/// A step running in the background.
pub struct Running {
    pub handle: u64,
    pub started: Instant,
    name: String,
    script: String,
    limit: Duration,
    output: Output,
}

impl Running {
    /// Starts a step in the background.
    pub fn spawn(vm: &mut Vm, step: &Step) -> Result<Running, StepError> {
        let handle = vm
            .guest
            .spawn_env(&["/bin/sh", "-c", step.script], step.env)
            .map_err(guest_err(step))?;
        Ok(Running {
            handle,
            started: Instant::now(),
            name: step.name.to_string(),
            script: step.script.to_string(),
            limit: step.limit,
            output: step.output,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `wait`; None while it runs. Past its limit it is killed and judged
    /// as hung.
    pub fn poll(&mut self, vm: &mut Vm, wait: Duration) -> Result<Option<Finished>, StepError> {
        let env = Env::new();
        let step = Step {
            name: &self.name,
            script: &self.script,
            env: &env,
            limit: self.limit,
            output: self.output,
        };
        match vm.guest.wait(self.handle, wait).map_err(guest_err(&step))? {
            Some(done) => judge(&step, done).map(Some),
            None if self.started.elapsed() > self.limit => {
                let _ = vm.guest.kill(self.handle, libc::SIGKILL);
                let done = vm
                    .guest
                    .wait(self.handle, Duration::from_secs(10))
                    .ok()
                    .flatten();
                Err(StepError::Hung {
                    step: self.name.clone(),
                    command: self.script.clone(),
                    limit: self.limit,
                    tail: done.as_ref().map(tail).unwrap_or_else(|| "(none)".into()),
                })
            }
            None => Ok(None),
        }
    }

    /// Kills it (on an error path) and forgets it.
    pub fn kill(self, vm: &mut Vm) {
        let _ = vm.guest.kill(self.handle, libc::SIGKILL);
        let _ = vm.guest.wait(self.handle, Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(code: Option<i32>, timed_out: bool, stdout: &str) -> Finished {
        Finished {
            exit_code: code,
            signal: None,
            timed_out,
            stdout: stdout.into(),
            stderr: "warning: x\n".into(),
            duration_ms: 5,
        }
    }

    #[test]
    fn the_contract_names_the_step_command_ending_and_tail() {
        let env = Env::new();
        let step = Step {
            name: "device",
            script: "/product/bin/dev",
            env: &env,
            limit: Duration::from_secs(3),
            output: Output::Required("the snapshot device's path"),
        };
        let e = judge(&step, finished(Some(3), false, "a\nb\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("step `device`") && e.contains("exit status 3"),
            "{e}"
        );
        assert!(
            e.contains("/product/bin/dev") && e.contains("warning: x"),
            "{e}"
        );
        let e = judge(&step, finished(None, true, ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("within its limit of 3s"), "{e}");
        let e = judge(&step, finished(Some(0), false, "  \n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("printed nothing") && e.contains("snapshot device"),
            "{e}"
        );
        assert!(judge(&step, finished(Some(0), false, "/dev/x\n")).is_ok());
        let any = Step {
            output: Output::Any,
            ..step
        };
        assert!(judge(&any, finished(Some(0), false, "")).is_ok());
    }
}
