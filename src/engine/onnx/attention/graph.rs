//! Moving a model's `GroupQueryAttention` nodes onto our kernel: each com.microsoft node whose
//! attributes the kernel implements gets our domain ([`super::op::DOMAIN`]) instead, and the
//! model imports that domain. The rewrite edits `model.onnx`'s protobuf in memory, field by
//! field: every other byte (weights stay in `model.onnx.data`) is kept as it is, so fields
//! this code does not know survive, and the folder on disk, and with it the model's hash, is
//! unchanged.

use super::op::{DOMAIN, NAME};

/// A protobuf field: its number, and its value.
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    number: u64,
    value: Value<'a>,
    /// The field's bytes, tag included.
    whole: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// `model.onnx` is not the protobuf it should be (the model then loads as it is, and ONNX
/// Runtime says what is wrong with it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("failed to read the model's protobuf at byte {at}")]
pub(crate) struct Malformed {
    at: usize,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or(Malformed { at: *pos })?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed { at: *pos })
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, Malformed> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = varint(buf, &mut pos)?;
        let take = |pos: &mut usize, n: usize| {
            let end = pos
                .checked_add(n)
                .filter(|e| *e <= buf.len())
                .ok_or(Malformed { at: *pos })?;
            let bytes = &buf[*pos..end];
            *pos = end;
            Ok::<_, Malformed>(bytes)
        };
        let value = match tag & 7 {
            0 => Value::Varint(varint(buf, &mut pos)?),
            1 => take(&mut pos, 8).map(|_| Value::Fixed64)?,
            2 => {
                let n = varint(buf, &mut pos)? as usize;
                Value::Bytes(take(&mut pos, n)?)
            }
            5 => {
                let b = take(&mut pos, 4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => return Err(Malformed { at: start }),
        };
        out.push(Field {
            number: tag >> 3,
            value,
            whole: &buf[start..pos],
        });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn bytes<'a>(field: &Field<'a>) -> Option<&'a [u8]> {
    match field.value {
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// The model with its eligible attention nodes moved to our kernel, or `None` when it has none.
pub(crate) fn route_attention(model: &[u8]) -> Result<Option<Vec<u8>>, Malformed> {
    let mut out = Vec::with_capacity(model.len() + 64);
    let mut moved = 0;
    for field in fields(model)? {
        match (field.number, bytes(&field)) {
            // ModelProto.graph
            (7, Some(graph)) => {
                let (graph, n) = route_graph(graph)?;
                moved += n;
                put_bytes(&mut out, 7, &graph);
            }
            _ => out.extend_from_slice(field.whole),
        }
    }
    if moved == 0 {
        return Ok(None);
    }
    // ModelProto.opset_import: OperatorSetIdProto { domain, version = 1 }
    let mut opset = Vec::new();
    put_bytes(&mut opset, 1, DOMAIN.as_bytes());
    put_varint(&mut opset, 2 << 3);
    put_varint(&mut opset, 1);
    put_bytes(&mut out, 8, &opset);
    Ok(Some(out))
}

/// A GraphProto with its eligible nodes moved, and how many moved.
fn route_graph(graph: &[u8]) -> Result<(Vec<u8>, usize), Malformed> {
    let graph_fields = fields(graph)?;
    let float_inputs = float_inputs(&graph_fields)?;
    let mut out = Vec::with_capacity(graph.len());
    let mut moved = 0;
    for field in graph_fields {
        // GraphProto.node
        match (field.number, bytes(&field)) {
            (1, Some(node)) if eligible(node, &float_inputs)? => {
                moved += 1;
                let mut rewritten = Vec::with_capacity(node.len() + 8);
                for f in fields(node)? {
                    if f.number == 7 {
                        put_bytes(&mut rewritten, 7, DOMAIN.as_bytes());
                    } else {
                        rewritten.extend_from_slice(f.whole);
                    }
                }
                put_bytes(&mut out, 1, &rewritten);
            }
            _ => out.extend_from_slice(field.whole),
        }
    }
    Ok((out, moved))
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
    let text = |n: u64| {
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
            (2, Value::Fixed32(bits)) => out.float = Some(f32::from_bits(bits)),
            (3, Value::Varint(v)) => out.int = Some(v as i64),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(number: u64, s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, number, s.as_bytes());
        out
    }

    fn attribute_int(name: &str, v: i64) -> Vec<u8> {
        let mut a = string(1, name);
        put_varint(&mut a, 3 << 3);
        put_varint(&mut a, v as u64);
        let mut out = Vec::new();
        put_bytes(&mut out, 5, &a);
        out
    }

    fn attribute_float(name: &str, v: f32) -> Vec<u8> {
        let mut a = string(1, name);
        put_varint(&mut a, 2 << 3 | 5);
        a.extend_from_slice(&v.to_le_bytes());
        let mut out = Vec::new();
        put_bytes(&mut out, 5, &a);
        out
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
        let mut graph = Vec::new();
        for n in nodes {
            put_bytes(&mut graph, 1, n);
        }
        graph.extend(string(2, "main"));
        for (name, elem_type) in [("past.key", 1), ("past16.key", 10)] {
            let mut tensor = Vec::new();
            put_varint(&mut tensor, 1 << 3);
            put_varint(&mut tensor, elem_type);
            let mut ty = Vec::new();
            put_bytes(&mut ty, 1, &tensor);
            let mut info = string(1, name);
            put_bytes(&mut info, 2, &ty);
            put_bytes(&mut graph, 11, &info);
        }
        // An unknown field (number 99, varint) must survive.
        put_varint(&mut graph, 99 << 3);
        put_varint(&mut graph, 5);
        let mut m = Vec::new();
        put_varint(&mut m, 1 << 3);
        put_varint(&mut m, 8);
        put_bytes(&mut m, 7, &graph);
        m
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
        assert_eq!(route_attention(&[0x0a, 0x05, 1]), Err(Malformed { at: 2 }));
    }
}
