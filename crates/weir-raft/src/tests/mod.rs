//! Unit tests: one or a few `Raft` instances driven by hand (or by the tiny zero-latency
//! cluster harness in `harness`), each test named after what it proves.

mod cluster;
mod election;
mod harness;
mod hostile;
mod membership;
mod replication;
