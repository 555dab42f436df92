//! `dynostore-sim`: the command line of the simulations.
//!
//! One subcommand per module of the library: `cluster` (real nodes with
//! faults) and `scale` (the scale model).
//! A new subcommand is a sibling module with `Args` and `run`, plus one
//! variant of [`Command`] and one arm in `main`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use dynostore_sim::{cluster, scale, wan};

#[derive(Debug, Parser)]
#[command(
    name = "dynostore-sim",
    version,
    about = "Simulations of a DynoStore network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Real `dynostore` nodes on loopback: a seeded workload, a fault
    /// schedule (kill, restart, partition, corruption) and end-to-end
    /// checks. With no flags, the default scenario (a few minutes).
    Cluster(cluster::Args),
    /// The protocol's placement over thousands of virtual nodes (no
    /// network): fill spread, data moved on join and leave, durability,
    /// each beside two baselines. Deterministic for a seed.
    Scale(scale::Args),
    /// The paper's comparison over four emulated sites (5-60 ms apart):
    /// DynoStore, a central S3 store and three-way replication; latency
    /// per client site, then reads while nodes and a site fail.
    Wan(wan::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Cluster(args) => cluster::run(args),
        Command::Scale(args) => {
            if let Err(msg) = args.validate() {
                Cli::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, msg)
                    .exit();
            }
            scale::run(args)
        }
        Command::Wan(args) => wan::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynostore-sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
