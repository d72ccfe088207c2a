//! The kernels' own compute peak: ONNX Runtime's MatMulNBits (the block format the export
//! uses, accuracy level 4: activations quantized to int8, as the engine runs it) timed alone on
//! one weight matrix at a large M, with the engine's intra-op threads. Its rate in
//! multiply-accumulates per second (M x K x N per run) over a token's weight elements is the
//! decode speed the kernels allow when nothing waits on memory.

use std::borrow::Cow;
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

use super::proto::Writer;
use super::{CeilingError, MatShape};

/// `accuracy_level` of the engine's CPU exports.
pub const ACCURACY_LEVEL: i64 = 4;

/// Bytes read between timed runs so that the weights come from memory, as in decode (whose
/// weights outgrow the last-level cache), not from a cache one matrix fits in.
pub const FLUSH_BYTES: usize = 512 << 20;

/// A serialized ONNX model of one MatMulNBits node: input `A` [M, K] float (M symbolic),
/// output `Y` [M, N]; weight codes, scales and zero points as initializers (so ONNX Runtime
/// prepacks them, as it does the model's).
pub fn matmul_model(shape: MatShape) -> Vec<u8> {
    let (k, n) = (shape.k as i64, shape.n as i64);
    let bits = shape.bits.unwrap_or(8) as i64;
    let block = shape.block.unwrap_or(32) as i64;
    let blocks = (k + block - 1) / block;
    let blob = block * bits / 8;
    let zero_row = (blocks * bits + 7) / 8;
    let codes: Vec<u8> = (0..n * blocks * blob)
        .map(|i| (i * 37 % 251) as u8)
        .collect();
    let scales: Vec<u8> = (0..n * blocks)
        .flat_map(|_| 0.01f32.to_le_bytes())
        .collect();
    let zeros = vec![if bits == 8 { 128u8 } else { 0x88 }; (n * zero_row) as usize];
    let mut m = Writer::default();
    m.int(1, 10);
    m.msg(8, |o| {
        o.bytes(1, b"").int(2, 21);
    });
    m.msg(8, |o| {
        o.bytes(1, b"com.microsoft").int(2, 1);
    });
    m.msg(7, |g| {
        g.msg(1, |node| {
            for i in ["A", "B", "scales", "zero_points"] {
                node.bytes(1, i.as_bytes());
            }
            node.bytes(2, b"Y")
                .bytes(4, b"MatMulNBits")
                .bytes(7, b"com.microsoft");
            for (name, v) in [
                ("K", k),
                ("N", n),
                ("bits", bits),
                ("block_size", block),
                ("accuracy_level", ACCURACY_LEVEL),
            ] {
                node.msg(5, |a| {
                    a.bytes(1, name.as_bytes()).int(3, v).int(20, 2);
                });
            }
        });
        g.bytes(2, b"matmulnbits");
        initializer(g, "B", &[n, blocks, blob], 2, &codes);
        initializer(g, "scales", &[n * blocks], 1, &scales);
        initializer(g, "zero_points", &[n * zero_row], 2, &zeros);
        value_info(g, 11, "A", k);
        value_info(g, 12, "Y", n);
    });
    m.0
}

fn initializer(g: &mut Writer, name: &str, dims: &[i64], data_type: i64, raw: &[u8]) {
    g.msg(5, |t| {
        for &d in dims {
            t.int(1, d);
        }
        t.int(2, data_type).bytes(8, name.as_bytes()).bytes(9, raw);
    });
}

/// A float [M, `cols`] graph input (field 11) or output (12), M symbolic.
fn value_info(g: &mut Writer, field: u32, name: &str, cols: i64) {
    g.msg(field, |v| {
        v.bytes(1, name.as_bytes()).msg(2, |ty| {
            ty.msg(1, |tt| {
                tt.int(1, 1).msg(2, |shape| {
                    shape.msg(1, |d| {
                        d.bytes(2, b"M");
                    });
                    shape.msg(1, |d| {
                        d.int(1, cols);
                    });
                });
            });
        });
    });
}

/// One timed kernel: rows M, caches flushed before each run or not, best seconds per run,
/// and multiply-accumulates per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelRate {
    pub m: usize,
    pub cold: bool,
    pub seconds: f64,
    pub macs_per_s: f64,
}

/// Time MatMulNBits on `shape` at each of `rows` (M, and whether caches start cold: `flush`
/// read before each run); one warm-up run, then the best of `reps`.
pub fn time_matmul(
    environment: &ort::environment::Environment,
    shape: MatShape,
    (threads, spin): (usize, bool),
    rows: &[(usize, bool)],
    reps: usize,
    flush: &[u64],
) -> Result<Vec<KernelRate>, CeilingError> {
    let err = |e: ort::Error| CeilingError::Compute(e.to_string());
    let berr =
        |e: ort::Error<ort::session::builder::SessionBuilder>| CeilingError::Compute(e.to_string());
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let mut session = Session::builder(environment)
        .map_err(err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(berr)?
        .with_intra_threads(threads)
        .map_err(berr)?
        .with_intra_op_spinning(spin)
        .map_err(berr)?
        .commit_from_memory(&matmul_model(shape))
        .map_err(err)?;
    let mut out = Vec::new();
    for &(m, cold) in rows {
        let a: Vec<f32> = (0..m * shape.k as usize)
            .map(|i| ((i % 17) as f32 - 8.0) * 0.1)
            .collect();
        let mut best = f64::INFINITY;
        for rep in 0..=reps.max(1) {
            let input =
                Tensor::<f32>::from_array(([m, shape.k as usize], a.clone())).map_err(err)?;
            let feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                vec![("A".into(), input.into_dyn().into())];
            if cold {
                std::hint::black_box(super::sum(flush));
            }
            let t = Instant::now();
            let y = session.run(feed).map_err(err)?;
            let secs = t.elapsed().as_secs_f64();
            drop(y);
            if rep > 0 {
                best = best.min(secs);
            }
        }
        out.push(KernelRate {
            m,
            cold,
            seconds: best,
            macs_per_s: (m as f64 * shape.elements() as f64) / best,
        });
    }
    Ok(out)
}

/// One matrix shape's timings, and how many of the model's matrices have it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeTiming {
    pub shape: MatShape,
    pub count: usize,
    pub rates: Vec<KernelRate>,
}

/// Time each of `shapes` (shape, count) at each of `rows` (see [`time_matmul`]).
pub fn time_shapes(
    environment: &ort::environment::Environment,
    shapes: &[(MatShape, usize)],
    (threads, spin): (usize, bool),
    rows: &[(usize, bool)],
    reps: usize,
) -> Result<Vec<ShapeTiming>, CeilingError> {
    let flush: Vec<u64> = (0..FLUSH_BYTES as u64 / 8).collect();
    shapes
        .iter()
        .map(|&(shape, count)| {
            let rates = time_matmul(environment, shape, (threads, spin), rows, reps, &flush)?;
            Ok(ShapeTiming {
                shape,
                count,
                rates,
            })
        })
        .collect()
}

/// Seconds a token's matmuls take at the `i`-th row count of the timings: each shape's time
/// per row (elements / multiply-accumulates per second) times its count. None without
/// timings.
pub fn seconds_per_token(timings: &[ShapeTiming], i: usize) -> Option<f64> {
    let mut total = 0.0;
    for t in timings {
        let rate = t.rates.get(i)?;
        total += t.count as f64 * t.shape.elements() as f64 / rate.macs_per_s;
    }
    (!timings.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::super::onnx;
    use super::*;

    #[test]
    fn the_model_reads_back_as_one_matmulnbits() {
        let shape = MatShape {
            k: 64,
            n: 8,
            bits: Some(8),
            block: Some(32),
        };
        let g = onnx::parse_model(&matmul_model(shape)).unwrap();
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].op_type, "MatMulNBits");
        assert_eq!(g.nodes[0].ints["accuracy_level"], ACCURACY_LEVEL);
        let sizes: Vec<u64> = g.initializers.iter().map(|i| i.bytes).collect();
        // codes 8 x 2 blocks x 32 bytes; 16 f32 scales; 16 zero points
        assert_eq!(sizes, vec![512, 64, 16]);
        let r = onnx::decode_reads(&g);
        assert_eq!(r.largest, Some(shape));
    }

    #[test]
    fn a_token_takes_each_shape_times_its_count() {
        let shape = |k, n| MatShape {
            k,
            n,
            bits: Some(8),
            block: Some(32),
        };
        let rate = |m, macs_per_s| KernelRate {
            m,
            cold: true,
            seconds: 0.0,
            macs_per_s,
        };
        let timings = vec![
            ShapeTiming {
                shape: shape(1000, 1000),
                count: 2,
                rates: vec![rate(256, 1e9), rate(1, 1e8)],
            },
            ShapeTiming {
                shape: shape(1000, 4000),
                count: 1,
                rates: vec![rate(256, 2e9), rate(1, 1e8)],
            },
        ];
        // 2 x 1e6 / 1e9 + 4e6 / 2e9 = 4 ms at M=256; 2 x 10 ms + 40 ms at M=1
        assert!((seconds_per_token(&timings, 0).unwrap() - 0.004).abs() < 1e-12);
        assert!((seconds_per_token(&timings, 1).unwrap() - 0.06).abs() < 1e-12);
        assert_eq!(seconds_per_token(&timings, 2), None);
        assert_eq!(seconds_per_token(&[], 0), None);
    }
}
