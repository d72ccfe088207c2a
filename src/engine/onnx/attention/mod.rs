//! Our own CPU kernel for grouped-query attention, used in place of ONNX Runtime's: a decode
//! step at a batch of 16 spent a quarter of its time in ONNX Runtime's `GroupQueryAttention`
//! (one packed matrix product per query head, per row), against the key and value reads it
//! needs. [`graph`] moves a model's eligible nodes to our domain in memory, [`op`] registers
//! the operator, [`kernel`] is the computation and `simd` has its AVX2 pieces, the same on
//! every x86-64 CPU that has them.

mod graph;
mod kernel;
mod op;

pub(crate) use super::simd::supported;
pub(crate) use graph::route_attention;
pub(crate) use op::domain;
