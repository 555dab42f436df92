//! `dynostore-sim`: simulations of a DynoStore network.
//!
//! - [`scale`]: the scale model. The protocol's placement code over
//!   thousands of virtual nodes with a seeded RNG and no network: how evenly
//!   it fills heterogeneous nodes, how much data moves when nodes join or
//!   leave, and how many objects survive years of failures, each beside two
//!   baselines on the same inputs.
//!
//! - [`cluster`]: real `dynostore` node processes on loopback with a seeded
//!   workload and a fault schedule (kill, restart, partition, corruption),
//!   checked end to end: every acknowledged object reads back, and full
//!   redundancy returns after the faults.
//!
//! - [`wan`]: the paper's comparison over emulated sites: DynoStore, a
//!   central store and three-way replication, latency per client site and
//!   reads under node and site failures.
//!
//! Each subcommand of the binary is one module here with an `Args` (clap)
//! and a `run`.

pub mod cluster;
pub mod launch;
pub mod png_plot;
pub mod scale;
pub mod wan;
