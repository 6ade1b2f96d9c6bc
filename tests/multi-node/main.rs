//! Multi-node tests on the in-process network, in paused time.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod durable;
mod lease_gate;
mod ownership;
mod sharding_basics;
mod sharding_lease_split_brain;
mod support;
