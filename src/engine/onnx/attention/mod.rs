//! Our own CPU kernel for grouped-query attention, used in place of ONNX Runtime's: a decode
//! step at a batch of 16 spent a quarter of its time in ONNX Runtime's `GroupQueryAttention`
//! (one packed matrix product per query head, per row), against the key and value reads it
//! needs. [`graph`] moves a model's eligible nodes to our domain in memory, [`op`] registers
//! the operator, [`kernel`] is the computation and `simd` has its AVX2 pieces, the same on
//! every x86-64 CPU that has them.

mod graph;
mod kernel;
mod op;

use std::path::Path;

pub(crate) use op::domain;

/// The graph of `model` (a `model.onnx`) with its eligible attention nodes on our kernel, when
/// this CPU runs the kernel and the graph has such nodes. A file that cannot be read or parsed
/// here gives `None` and is loaded as it is, so that ONNX Runtime's own error names what is
/// wrong with it; so does a folder whose path is not UTF-8 (the graph is loaded from memory,
/// and ONNX Runtime takes the folder of its weights as text).
pub(crate) fn own_graph(model: &Path) -> Option<Vec<u8>> {
    if !super::simd::supported() || model.parent()?.to_str().is_none() {
        return None;
    }
    let bytes = std::fs::read(model).ok()?;
    graph::route_attention(&bytes).ok().flatten()
}
