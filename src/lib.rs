//! codegen-harness: measure how well language models write code, inside `cargo test`.
//!
//! The library is a one-way pipeline, one module per stage:
//! [`case`] files become [`prompt`]s, a completion source ([`engine`]) answers them,
//! [`extract`] pulls the program out of the reply, [`syntax`] checks it, the [`sandbox`] runs it
//! against the case's tests, [`score`] turns raw outcomes into verdicts and rates, [`snapshot`]
//! renders them for review, [`report`] summarises the run and [`gate`] turns it into a CI verdict.
//! [`harness`] is the thin libtest-mimic glue that `tests/codegen.rs` calls.

pub mod bench;
pub mod cache;
pub mod case;
pub mod config;
pub mod device;
pub mod engine;
pub mod env;
pub mod evaluate;
pub mod extract;
pub mod gate;
pub mod harness;
pub mod import;
pub mod models;
pub mod profile;
pub mod prompt;
pub mod report;
pub mod runtime;
pub mod sandbox;
pub mod score;
pub mod snapshot;
pub mod syntax;
pub mod value;
pub mod verdict;
