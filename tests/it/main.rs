//! One integration-test binary: real `dynostore` processes on loopback.

mod admin;
mod dashboard;
mod encryption;
mod federation;
mod frames;
mod gc;
mod harness;
mod limits;
mod membership;
mod objects;
mod ownership;
mod placement;
mod repair;
mod s3;
mod s3_clients;
mod s3_reclaim;
mod safety;
mod shards;
mod sim_cluster;
mod small;
mod tokens;
mod trust;
mod wan;
