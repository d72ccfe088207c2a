//! Moving a model's `GroupQueryAttention` nodes onto our kernel: each com.microsoft node whose
//! attributes the kernel implements gets our domain ([`super::op::DOMAIN`]) instead, and the
//! model imports that domain. The rewrite edits `model.onnx`'s protobuf in memory, field by
//! field: every other byte (weights stay in `model.onnx.data`) is kept as it is, so fields
//! this code does not know survive, and the folder on disk, and with it the model's hash, is
//! unchanged.

use super::op::{DOMAIN, NAME};
use crate::engine::onnx::proto::{self, Malformed, Value, Writer};

/// A field of a message: its number, its value, and its bytes (tag included).
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    number: u32,
    value: Value<'a>,
    whole: &'a [u8],
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, Malformed> {
    proto::spans(buf)
        .map(|f| {
            f.map(|(number, value, whole)| Field {
                number,
                value,
                whole,
            })
        })
        .collect()
}

fn bytes<'a>(field: &Field<'a>) -> Option<&'a [u8]> {
    match field.value {
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// The model with its eligible attention nodes moved to our kernel, or `None` when it has none.
pub(crate) fn route_attention(model: &[u8]) -> Result<Option<Vec<u8>>, Malformed> {
    let mut out = Writer(Vec::with_capacity(model.len() + 64));
    let mut moved = 0;
    for field in fields(model)? {
        match (field.number, bytes(&field)) {
            // ModelProto.graph
            (7, Some(graph)) => {
                let (graph, n) = route_graph(graph)?;
                moved += n;
                out.bytes(7, &graph);
            }
            _ => {
                out.raw(field.whole);
            }
        }
    }
    if moved == 0 {
        return Ok(None);
    }
    // ModelProto.opset_import: OperatorSetIdProto { domain, version = 1 }
    out.msg(8, |opset| {
        opset.bytes(1, DOMAIN.as_bytes()).int(2, 1);
    });
    Ok(Some(out.0))
}

/// A GraphProto with its eligible nodes moved, and how many moved.
fn route_graph(graph: &[u8]) -> Result<(Vec<u8>, usize), Malformed> {
    let graph_fields = fields(graph)?;
    let float_inputs = float_inputs(&graph_fields)?;
    let mut out = Writer(Vec::with_capacity(graph.len()));
    let mut moved = 0;
    for field in graph_fields {
        // GraphProto.node
        match (field.number, bytes(&field)) {
            (1, Some(node)) if eligible(node, &float_inputs)? => {
                moved += 1;
                let node_fields = fields(node)?;
                out.msg(1, |rewritten| {
                    for f in node_fields {
                        match f.number {
                            7 => rewritten.bytes(7, DOMAIN.as_bytes()),
                            _ => rewritten.raw(f.whole),
                        };
                    }
                });
            }
            _ => {
                out.raw(field.whole);
            }
        }
    }
    Ok((out.0, moved))
}

/// The names of the graph's float32 inputs (GraphProto.input: ValueInfoProto { name, type:
/// TypeProto { tensor_type: { elem_type } } }).
fn float_inputs<'a>(graph: &[Field<'a>]) -> Result<Vec<&'a [u8]>, Malformed> {
    let mut out = Vec::new();
    for input in graph.iter().filter(|f| f.number == 11).filter_map(bytes) {
        let info = fields(input)?;
        let name = info.iter().find(|f| f.number == 1).and_then(bytes);
        let tensor = info
            .iter()
            .find(|f| f.number == 2)
            .and_then(bytes)
            .map(fields)
            .transpose()?;
        let tensor = tensor
            .and_then(|t| t.iter().find(|f| f.number == 1).and_then(bytes))
            .map(fields)
            .transpose()?;
        let float = tensor.is_some_and(|t| {
            t.iter()
                .any(|f| f.number == 1 && matches!(f.value, Value::Varint(1)))
        });
        if let (Some(name), true) = (name, float) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Whether a NodeProto is a com.microsoft `GroupQueryAttention` our kernel implements: float32
/// (its past key is a float32 graph input), nine inputs at most, three outputs, and no
/// attribute beyond those the kernel reads (softcap and smooth softmax only when off; rotary
/// only with its tables).
fn eligible(node: &[u8], float_inputs: &[&[u8]]) -> Result<bool, Malformed> {
    let fields = fields(node)?;
    let text = |n: u32| {
        fields
            .iter()
            .filter(move |f| f.number == n)
            .filter_map(bytes)
    };
    if text(4).next() != Some(NAME.as_bytes()) || text(7).next() != Some(b"com.microsoft") {
        return Ok(false);
    }
    let inputs: Vec<&[u8]> = text(1).collect();
    if inputs.len() > 9 || text(2).count() != 3 {
        return Ok(false);
    }
    let has = |i: usize| inputs.get(i).is_some_and(|name| !name.is_empty());
    if !inputs
        .get(3)
        .is_some_and(|past| float_inputs.contains(past))
    {
        return Ok(false);
    }
    for attribute in text(5) {
        let attribute = fields_of_attribute(attribute)?;
        let ok = match (attribute.name, attribute.int, attribute.float) {
            (
                b"num_heads" | b"kv_num_heads" | b"local_window_size" | b"rotary_interleaved",
                _,
                _,
            ) => true,
            (b"scale", _, _) => true,
            (b"do_rotary", Some(0) | None, _) => true,
            (b"do_rotary", Some(1), _) => has(7) && has(8),
            (b"softcap", _, Some(f)) => f == 0.0,
            (b"smooth_softmax", Some(0), _) => true,
            _ => false,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(has(0) && has(5) && has(6))
}

/// An AttributeProto's name and its int or float value.
struct Attribute<'a> {
    name: &'a [u8],
    int: Option<i64>,
    float: Option<f32>,
}

fn fields_of_attribute(attribute: &[u8]) -> Result<Attribute<'_>, Malformed> {
    let mut out = Attribute {
        name: b"",
        int: None,
        float: None,
    };
    for f in fields(attribute)? {
        match (f.number, f.value) {
            (1, Value::Bytes(name)) => out.name = name,
            (2, Value::Fixed(bits)) => out.float = Some(f32::from_bits(bits as u32)),
            (3, Value::Varint(v)) => out.int = Some(v as i64),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(number: u32, s: &str) -> Vec<u8> {
        let mut out = Writer::default();
        out.bytes(number, s.as_bytes());
        out.0
    }

    fn attribute_int(name: &str, v: i64) -> Vec<u8> {
        let mut out = Writer::default();
        out.msg(5, |a| {
            a.bytes(1, name.as_bytes()).int(3, v);
        });
        out.0
    }

    fn attribute_float(name: &str, v: f32) -> Vec<u8> {
        let mut out = Writer::default();
        out.msg(5, |a| {
            a.bytes(1, name.as_bytes()).float(2, v);
        });
        out.0
    }

    /// A NodeProto: op type, domain, inputs, three outputs, attributes.
    fn node(op: &str, domain: &str, inputs: &[&str], attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            n.extend(string(1, i));
        }
        for o in ["out", "present.key", "present.value"] {
            n.extend(string(2, o));
        }
        n.extend(string(3, "attn"));
        n.extend(string(4, op));
        n.extend(string(7, domain));
        for a in attributes {
            n.extend_from_slice(a);
        }
        n
    }

    const INPUTS: [&str; 9] = [
        "qkv",
        "",
        "",
        "past.key",
        "past.value",
        "seqlens_k",
        "total",
        "cos",
        "sin",
    ];

    fn model(nodes: &[Vec<u8>]) -> Vec<u8> {
        let mut graph = Writer::default();
        for n in nodes {
            graph.bytes(1, n);
        }
        graph.bytes(2, b"main");
        for (name, elem_type) in [("past.key", 1), ("past16.key", 10)] {
            graph.msg(11, |info| {
                info.bytes(1, name.as_bytes()).msg(2, |ty| {
                    ty.msg(1, |tensor| {
                        tensor.int(1, elem_type);
                    });
                });
            });
        }
        // An unknown field (number 99, varint) must survive.
        graph.int(99, 5);
        let mut m = Writer::default();
        m.int(1, 8).bytes(7, &graph.0);
        m.0
    }

    fn domains(model: &[u8]) -> Vec<String> {
        let graph = fields(model)
            .unwrap()
            .into_iter()
            .find(|f| f.number == 7)
            .unwrap();
        fields(bytes(&graph).unwrap())
            .unwrap()
            .iter()
            .filter(|f| f.number == 1)
            .map(|n| {
                let d = fields(bytes(n).unwrap())
                    .unwrap()
                    .into_iter()
                    .find(|f| f.number == 7)
                    .unwrap();
                String::from_utf8(bytes(&d).unwrap().to_vec()).unwrap()
            })
            .collect()
    }

    #[test]
    fn eligible_nodes_move_to_our_domain_and_every_other_byte_stays() {
        let plain = [
            attribute_int("num_heads", 14),
            attribute_int("kv_num_heads", 2),
            attribute_int("do_rotary", 1),
        ];
        let capped = [
            attribute_int("num_heads", 14),
            attribute_int("kv_num_heads", 2),
            attribute_float("softcap", 30.0),
        ];
        let original = model(&[
            node(NAME, "com.microsoft", &INPUTS, &plain),
            node(NAME, "com.microsoft", &INPUTS, &capped),
            node("MatMulNBits", "com.microsoft", &["x"], &[]),
        ]);
        let routed = route_attention(&original).unwrap().expect("one node moves");
        assert_eq!(domains(&routed), [DOMAIN, "com.microsoft", "com.microsoft"]);
        // The unknown graph field and the IR version are still there; the opset is imported.
        let top = fields(&routed).unwrap();
        assert!(matches!(top[0].value, Value::Varint(8)));
        let graph = fields(bytes(&top[1]).unwrap()).unwrap();
        assert!(
            graph
                .iter()
                .any(|f| f.number == 99 && matches!(f.value, Value::Varint(5)))
        );
        let opset = fields(bytes(&top[2]).unwrap()).unwrap();
        assert_eq!(
            (top[2].number, bytes(&opset[0]).unwrap()),
            (8, DOMAIN.as_bytes())
        );
    }

    #[test]
    fn nodes_the_kernel_does_not_implement_are_left_alone() {
        let base = [
            attribute_int("num_heads", 8),
            attribute_int("kv_num_heads", 8),
        ];
        let unknown = [
            base[0].clone(),
            base[1].clone(),
            attribute_int("qk_output", 1),
        ];
        let rotary_without_tables = [
            base[0].clone(),
            base[1].clone(),
            attribute_int("do_rotary", 1),
        ];
        let smooth = [base[0].clone(), attribute_int("smooth_softmax", 1)];
        for attributes in [&unknown[..], &rotary_without_tables[..], &smooth[..]] {
            let inputs = &INPUTS[..7];
            assert_eq!(
                route_attention(&model(&[node(NAME, "com.microsoft", inputs, attributes)]))
                    .unwrap(),
                None
            );
        }
        assert_eq!(
            route_attention(&model(&[node(NAME, "other.domain", &INPUTS, &base)])).unwrap(),
            None
        );
        assert!(matches!(
            route_attention(&[0x0a, 0x05, 1]),
            Err(Malformed { at: 2, .. })
        ));
    }
}
