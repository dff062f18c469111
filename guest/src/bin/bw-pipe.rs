//! `bw-pipe`: the harness's reader, copier and instant announcer for pipelines that are
//! not its own (logic in `bw_guest::pipe`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match bw_guest::pipe::main_with(&args) {
        Ok(bw_guest::pipe::Done::Ok) => ExitCode::SUCCESS,
        Ok(bw_guest::pipe::Done::Aborted(reason)) => {
            eprintln!("bw-pipe: the harness aborted the instant: {reason}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("bw-pipe: {}", bw_guest::error_chain(&e));
            ExitCode::from(2)
        }
    }
}
