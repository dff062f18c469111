//! PID 1 of a Blockwitness guest; see `bw_guest::init`.

fn main() {
    if std::process::id() != 1 {
        eprintln!("bw-init: must run as PID 1 (the initramfs /init)");
        std::process::exit(2);
    }
    bw_guest::init::run()
}
