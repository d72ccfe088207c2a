//! The weights a llama.cpp decode step reads from a GGUF file: every tensor but the token
//! embedding table (a step gathers one row of it), unless the file has no `output.weight`, in
//! which case the output layer is the table itself and it is read whole.

use codegen_harness::doctor::gguf::{GgufHeader, TensorInfo};

use super::{CeilingError, MatShape, WeightReads};

const TOKEN_EMBD: &str = "token_embd.weight";
const OUTPUT: &str = "output.weight";

/// (elements per block, bytes per block) of a `ggml_type` (ggml's type traits).
pub fn block_size(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),     // F32
        1 => (1, 2),     // F16
        2 => (32, 18),   // Q4_0
        3 => (32, 20),   // Q4_1
        6 => (32, 22),   // Q5_0
        7 => (32, 24),   // Q5_1
        8 => (32, 34),   // Q8_0
        9 => (32, 36),   // Q8_1
        10 => (256, 84), // Q2_K
        11 => (256, 110),
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 | 28 => (1, 8),
        29 => (256, 56), // IQ1_M
        30 => (1, 2),    // BF16
        34 => (256, 54), // TQ1_0
        35 => (256, 66), // TQ2_0
        39 => (32, 17),  // MXFP4
        _ => return None,
    })
}

/// A tensor's size in the file.
pub fn tensor_bytes(t: &TensorInfo) -> Result<u64, CeilingError> {
    let (per, bytes) = block_size(t.ggml_type).ok_or_else(|| {
        CeilingError::Gguf(format!(
            "{}: ggml type {} has no known block size",
            t.name, t.ggml_type
        ))
    })?;
    let elements: u64 = t.dims.iter().product();
    Ok(elements.div_ceil(per) * bytes)
}

/// What one decode step reads (see the module documentation), and the matrices' elements.
pub fn decode_reads(header: &GgufHeader) -> Result<WeightReads, CeilingError> {
    let tied = !header.tensors.iter().any(|t| t.name == OUTPUT);
    let mut reads = WeightReads {
        tied_output: tied,
        ..WeightReads::default()
    };
    for t in &header.tensors {
        let bytes = tensor_bytes(t)?;
        if t.name == TOKEN_EMBD && !tied {
            reads.skipped_bytes += bytes;
            continue;
        }
        reads.bytes += bytes;
        if t.dims.len() >= 2 {
            // ggml's dims: ne[0] is the input (K) dimension, ne[1] the output (N).
            let s = MatShape::float(t.dims[0], t.dims[1]);
            reads.elements += s.elements();
            reads.matrices += 1;
            if reads.largest.is_none_or(|l| s.elements() > l.elements()) {
                reads.largest = Some(s);
            }
        }
    }
    Ok(reads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dims: &[u64], ggml_type: u32) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            offset: 0,
        }
    }

    fn header(tensors: Vec<TensorInfo>) -> GgufHeader {
        GgufHeader {
            version: 3,
            metadata: Default::default(),
            tensors,
        }
    }

    #[test]
    fn the_table_is_skipped_unless_the_output_is_tied_to_it() {
        let embd = t(TOKEN_EMBD, &[64, 1000], 8); // Q8_0: 64000 / 32 * 34
        let w = t("blk.0.ffn_down.weight", &[256, 64], 14); // Q6_K: 16384 / 256 * 210
        let norm = t("blk.0.attn_norm.weight", &[64], 0);
        let out = t(OUTPUT, &[64, 1000], 6); // Q5_0: 64000 / 32 * 22
        let r = decode_reads(&header(vec![embd.clone(), w.clone(), norm.clone(), out])).unwrap();
        assert!(!r.tied_output);
        assert_eq!(r.skipped_bytes, 68_000);
        assert_eq!(r.bytes, 13_440 + 256 + 44_000);
        assert_eq!(r.elements, 16_384 + 64_000);
        assert_eq!(r.largest.unwrap().n, 1000);
        let tied = decode_reads(&header(vec![embd, w, norm])).unwrap();
        assert!(tied.tied_output);
        assert_eq!(tied.skipped_bytes, 0);
        assert_eq!(tied.bytes, 68_000 + 13_440 + 256);
    }

    #[test]
    fn an_unknown_type_is_an_error() {
        assert!(tensor_bytes(&t("x", &[32], 99)).is_err());
        assert_eq!(tensor_bytes(&t("x", &[256, 2], 12)).unwrap(), 288);
    }
}
