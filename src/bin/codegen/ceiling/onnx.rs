//! The weights a decode step of an exported model folder reads: every initializer of
//! `model.onnx` except those only gathered from (the embedding table: a step reads one row of
//! it), with their sizes from the file (external data included), and the matrices' element
//! counts from the MatMulNBits attributes (K x N) or a float MatMul's weight dims.

use std::collections::BTreeMap;
use std::path::Path;

use super::proto::{self, Value};
use super::{CeilingError, MatShape, WeightReads};

/// An initializer's name, element type, dims and stored size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initializer {
    pub name: String,
    pub data_type: i64,
    pub dims: Vec<i64>,
    pub bytes: u64,
}

/// A node's operator, inputs and integer attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    pub op_type: String,
    pub inputs: Vec<String>,
    pub ints: BTreeMap<String, i64>,
}

/// The parts of an ONNX graph this module reads.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub initializers: Vec<Initializer>,
    pub nodes: Vec<Node>,
}

/// Bits per element of an ONNX `TensorProto.DataType`.
fn element_bits(data_type: i64) -> Option<u64> {
    Some(match data_type {
        1 | 6 | 12 => 32,         // float, int32, uint32
        2 | 3 | 9 | 17..=20 => 8, // uint8, int8, bool, float8s
        4 | 5 | 10 | 16 => 16,    // uint16, int16, float16, bfloat16
        7 | 11 | 13 => 64,        // int64, double, uint64
        21 | 22 => 4,             // uint4, int4
        _ => return None,
    })
}

/// Read `model.onnx` (not its external data: sizes come from the references).
pub fn read_graph(path: &Path) -> Result<Graph, CeilingError> {
    let bytes = std::fs::read(path).map_err(|e| CeilingError::io(path, e))?;
    parse_model(&bytes).map_err(|e| match e {
        CeilingError::Onnx(m) => CeilingError::Onnx(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parse a serialized `ModelProto`.
pub fn parse_model(bytes: &[u8]) -> Result<Graph, CeilingError> {
    let mut graph = Graph::default();
    for f in proto::fields(bytes) {
        if let (7, Value::Bytes(g)) = f? {
            for gf in proto::fields(g) {
                match gf? {
                    (1, Value::Bytes(n)) => graph.nodes.push(parse_node(n)?),
                    (5, Value::Bytes(t)) => graph.initializers.push(parse_tensor(t)?),
                    _ => {}
                }
            }
        }
    }
    Ok(graph)
}

fn parse_node(buf: &[u8]) -> Result<Node, CeilingError> {
    let mut node = Node::default();
    for f in proto::fields(buf) {
        match f? {
            (1, v) => node.inputs.push(proto::text(v)),
            (4, v) => node.op_type = proto::text(v),
            (5, Value::Bytes(a)) => {
                let (mut name, mut int) = (String::new(), None);
                for af in proto::fields(a) {
                    match af? {
                        (1, v) => name = proto::text(v),
                        (3, Value::Varint(i)) => int = Some(i as i64),
                        _ => {}
                    }
                }
                if let Some(i) = int {
                    node.ints.insert(name, i);
                }
            }
            _ => {}
        }
    }
    Ok(node)
}

fn parse_tensor(buf: &[u8]) -> Result<Initializer, CeilingError> {
    let (mut name, mut data_type, mut dims) = (String::new(), 0i64, Vec::new());
    let (mut raw, mut external) = (None, None);
    for f in proto::fields(buf) {
        match f? {
            (1, v) => dims.extend(proto::ints(v)?),
            (2, Value::Varint(t)) => data_type = t as i64,
            (8, v) => name = proto::text(v),
            (9, Value::Bytes(b)) => raw = Some(b.len() as u64),
            (13, Value::Bytes(e)) => {
                let (mut key, mut value) = (String::new(), String::new());
                for ef in proto::fields(e) {
                    match ef? {
                        (1, v) => key = proto::text(v),
                        (2, v) => value = proto::text(v),
                        _ => {}
                    }
                }
                if key == "length" {
                    external = value.parse::<u64>().ok();
                }
            }
            _ => {}
        }
    }
    let elements: u64 = dims.iter().map(|&d| d.max(0) as u64).product();
    let computed = element_bits(data_type).map(|b| (elements * b).div_ceil(8));
    let bytes = external.or(raw).or(computed).unwrap_or(0);
    Ok(Initializer {
        name,
        data_type,
        dims,
        bytes,
    })
}

/// Gather-family operators: a step reads the rows it gathers, not the table.
fn gathers(op: &str) -> bool {
    matches!(
        op,
        "Gather" | "GatherBlockQuantized" | "GatherND" | "GatherElements"
    )
}

/// What one decode step reads: initializers consumed by anything but a gather (a table that is
/// also a MatMul's weight, as a tied output layer can be, counts), and the matrices' elements.
pub fn decode_reads(graph: &Graph) -> WeightReads {
    let mut only_gathered: BTreeMap<&str, bool> = BTreeMap::new();
    for node in &graph.nodes {
        for input in &node.inputs {
            let g = only_gathered.entry(input.as_str()).or_insert(true);
            *g &= gathers(&node.op_type);
        }
    }
    let mut reads = WeightReads::default();
    for init in &graph.initializers {
        if only_gathered.get(init.name.as_str()) == Some(&true) {
            reads.skipped_bytes += init.bytes;
        } else {
            reads.bytes += init.bytes;
        }
    }
    let dims: BTreeMap<&str, &[i64]> = graph
        .initializers
        .iter()
        .map(|i| (i.name.as_str(), i.dims.as_slice()))
        .collect();
    for node in &graph.nodes {
        let shape = match node.op_type.as_str() {
            "MatMulNBits" => MatShape::nbits(&node.ints),
            "MatMul" | "Gemm" => node
                .inputs
                .get(1)
                .and_then(|w| dims.get(w.as_str()))
                .filter(|d| d.len() == 2)
                .map(|d| MatShape::float(d[0] as u64, d[1] as u64)),
            _ => None,
        };
        if let Some(s) = shape {
            reads.elements += s.elements();
            reads.matrices += 1;
            if reads.largest.is_none_or(|l| s.elements() > l.elements()) {
                reads.largest = Some(s);
            }
        }
    }
    reads
}

/// The distinct MatMulNBits shapes (with block format) and how many nodes have each, most
/// elements in all first: what the compute ceiling times.
pub fn nbits_shapes(graph: &Graph) -> Vec<(MatShape, usize)> {
    let mut count: BTreeMap<MatShape, usize> = BTreeMap::new();
    for node in graph.nodes.iter().filter(|n| n.op_type == "MatMulNBits") {
        if let Some(s) = MatShape::nbits(&node.ints) {
            *count.entry(s).or_default() += 1;
        }
    }
    let mut v: Vec<(MatShape, usize)> = count.into_iter().collect();
    v.sort_by_key(|(s, n)| std::cmp::Reverse(s.elements() * *n as u64));
    v
}

#[cfg(test)]
mod tests {
    use super::super::proto::Writer;
    use super::*;

    fn tensor(w: &mut Writer, name: &str, dims: &[i64], data_type: i64, external: Option<u64>) {
        w.msg(5, |t| {
            for &d in dims {
                t.int(1, d);
            }
            t.int(2, data_type).bytes(8, name.as_bytes());
            match external {
                Some(n) => {
                    t.msg(13, |e| {
                        e.bytes(1, b"length").bytes(2, n.to_string().as_bytes());
                    });
                }
                None => {
                    t.bytes(9, &[0u8; 3]);
                }
            }
        });
    }

    fn node(w: &mut Writer, op: &str, inputs: &[&str], ints: &[(&str, i64)]) {
        w.msg(1, |n| {
            for i in inputs {
                n.bytes(1, i.as_bytes());
            }
            n.bytes(4, op.as_bytes());
            for (k, v) in ints {
                n.msg(5, |a| {
                    a.bytes(1, k.as_bytes()).int(3, *v).int(20, 2);
                });
            }
        });
    }

    /// A graph with a gathered table (100 bytes), a MatMulNBits (1000 + 50 bytes, K 64 x N 32)
    /// and a float MatMul whose weight (3 raw bytes, dims 4 x 8) is also gathered from (tied).
    fn model() -> Vec<u8> {
        let mut m = Writer::default();
        m.int(1, 10).msg(7, |g| {
            tensor(g, "emb", &[10, 10], 2, Some(100));
            tensor(g, "w_q", &[32, 2, 32], 2, Some(1000));
            tensor(g, "w_s", &[64], 1, Some(50));
            tensor(g, "tied", &[4, 8], 1, None);
            node(g, "GatherBlockQuantized", &["emb", "ids"], &[("bits", 8)]);
            node(g, "Gather", &["tied", "ids"], &[]);
            let attrs = [("K", 64), ("N", 32), ("bits", 8), ("block_size", 32)];
            node(g, "MatMulNBits", &["x", "w_q", "w_s"], &attrs);
            node(g, "MatMul", &["y", "tied"], &[]);
        });
        m.0
    }

    #[test]
    fn reads_exclude_only_tables_that_are_only_gathered() {
        let graph = parse_model(&model()).unwrap();
        assert_eq!(graph.initializers.len(), 4);
        assert_eq!(graph.initializers[0].dims, vec![10, 10]);
        assert_eq!(graph.nodes[2].ints["K"], 64);
        let r = decode_reads(&graph);
        assert_eq!(r.bytes, 1000 + 50 + 3);
        assert_eq!(r.skipped_bytes, 100);
        assert_eq!(r.elements, 64 * 32 + 4 * 8);
        assert_eq!(r.matrices, 2);
        let l = r.largest.unwrap();
        assert_eq!((l.k, l.n, l.bits, l.block), (64, 32, Some(8), Some(32)));
        assert_eq!(nbits_shapes(&graph), vec![(l, 1)]);
    }

    #[test]
    fn sizes_fall_back_to_dims_and_type() {
        let mut t = Writer::default();
        t.int(1, 3).int(1, 5).int(2, 10);
        assert_eq!(parse_tensor(&t.0).unwrap().bytes, 30);
        assert!(parse_model(&[0x3a, 0x05, 0x0a]).is_err());
    }
}
