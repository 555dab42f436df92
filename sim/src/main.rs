//! `dynostore-sim`: the local cluster harness with fault injection and the
//! scale model of thousands of nodes. Neither exists yet (issue 6); the
//! binary says so instead of pretending.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("dynostore-sim: no simulation is implemented yet (see issue 6)");
    ExitCode::from(2)
}
