//! Running a suite: the libtest-mimic [`harness`] that `tests/codegen.rs` calls, its
//! cargo-nextest mode ([`nextest`]), one [`shard`] of N and [`merge`] of the shards, a
//! configured [`profile`] turned into a completion source, the run's [`timeline`], and the
//! environment ([`env`], read once at the entry points).

pub mod env;
pub mod harness;
pub mod merge;
pub mod nextest;
pub mod profile;
pub mod shard;
pub mod timeline;
