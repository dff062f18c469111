//! `bwsnap-exec`: the guest end of the bwsnap model test (logic in
//! `bw_guest::bwsnap_exec`). Started by the host test through the control channel's
//! spawn; speaks on the virtio-serial port named by `--port`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match bw_guest::bwsnap_exec::server::main_with(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bwsnap-exec: {}", bw_guest::error_chain(&e));
            ExitCode::from(2)
        }
    }
}
