//! `dynostore-sim`: simulations of a DynoStore network.
//!
//! - [`scale`]: the scale model. The protocol's placement code over
//!   thousands of virtual nodes with a seeded RNG and no network: how evenly
//!   it fills heterogeneous nodes, how much data moves when nodes join or
//!   leave, and how many objects survive years of failures, each beside two
//!   baselines on the same inputs.
//!
//! Each subcommand of the binary is one module here with an `Args` (clap)
//! and a `run`; the cluster harness (real node processes with fault
//! injection, issue 6) is meant to sit beside `scale` as `cluster`.

pub mod scale;
