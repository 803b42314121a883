//! `cellkeep`: choose the mode before anything else exists — the hidden cell-helper mode
//! (a fresh single-threaded process; no runtime, no logging setup) or the CLI.
#![deny(unsafe_code)]

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == cellkeep::HELPER_ARG) {
        cellkeep::sandbox::helper::main();
    }
    std::process::exit(cellkeep::cli::main());
}
