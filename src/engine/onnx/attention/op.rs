//! The kernel as an ONNX Runtime custom operator: `GroupQueryAttention` in our own domain
//! ([`DOMAIN`]), with com.microsoft's inputs, outputs and attributes, so that a node moves
//! over by changing its domain alone ([`super::graph`]).

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::TensorElementType;

use super::kernel::{Attention, Buffers, Rotary, Shape, Source};

/// The operator domain the rewritten nodes name.
pub(crate) const DOMAIN: &str = "ai.codegen-harness";

/// The operator's name, as com.microsoft's.
pub(crate) const NAME: &str = "GroupQueryAttention";

/// Our operators, to register with a session that runs a rewritten graph.
pub(crate) fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(GroupQueryAttention)
}

struct GroupQueryAttention;

/// The node's attributes ([`super::graph`] only moves nodes whose other attributes are off).
#[derive(Debug, Clone, Copy)]
struct Attributes {
    heads: usize,
    kv_heads: usize,
    scale: f32,
    window: Option<usize>,
    rotary: bool,
    interleaved: bool,
}

impl Operator for GroupQueryAttention {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let float = TensorElementType::Float32;
        [
            OperatorInput::required(float),
            OperatorInput::optional(float),
            OperatorInput::optional(float),
            OperatorInput::optional(float),
            OperatorInput::optional(float),
            OperatorInput::required(TensorElementType::Int32),
            OperatorInput::required(TensorElementType::Int32),
            OperatorInput::optional(float),
            OperatorInput::optional(float),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        let float = TensorElementType::Float32;
        [
            OperatorOutput::required(float),
            OperatorOutput::required(float),
            OperatorOutput::required(float),
        ]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<BoxedKernel<'attr>> {
        let count = |name: &str| {
            info.get::<i64>(name)
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    ort::Error::new(format!("GroupQueryAttention needs a positive `{name}`"))
                })
        };
        let attributes = Attributes {
            heads: count("num_heads")?,
            kv_heads: count("kv_num_heads")?,
            scale: info.get::<f32>("scale").unwrap_or(0.0),
            window: info
                .get::<i64>("local_window_size")
                .filter(|w| *w > 0)
                .map(|w| w as usize),
            rotary: info.get::<i64>("do_rotary") == Some(1),
            interleaved: info.get::<i64>("rotary_interleaved") == Some(1),
        };
        if !attributes.heads.is_multiple_of(attributes.kv_heads) {
            return Err(ort::Error::new(
                "GroupQueryAttention: num_heads is not a multiple of kv_num_heads",
            ));
        }
        Ok(Box::new(move |ctx: &ComputeContext| {
            compute(ctx, attributes)
        }))
    }
}

/// A float input's shape and data, or `None` where the node leaves it out.
fn float_input(ctx: &ComputeContext, idx: usize) -> ort::Result<Option<(Vec<usize>, *const f32)>> {
    let Some(value) = ctx.input(idx)? else {
        return Ok(None);
    };
    let (shape, data) = value.try_extract_tensor::<f32>()?;
    Ok(Some((
        shape.iter().map(|d| *d as usize).collect(),
        data.as_ptr(),
    )))
}

/// A float output of `shape`, as a pointer to its data.
fn float_output(ctx: &ComputeContext, idx: usize, shape: Vec<usize>) -> ort::Result<*mut f32> {
    let mut value = ctx
        .output(idx, shape.iter().map(|d| *d as i64).collect::<Vec<_>>())?
        .ok_or_else(|| {
            ort::Error::new(format!("GroupQueryAttention: output {idx} is not wanted"))
        })?;
    let (_, data) = value.try_extract_tensor_mut::<f32>()?;
    Ok(data.as_mut_ptr())
}

/// An input whose shape is not the one the others imply.
fn expect_shape(name: &str, got: &[usize], want: &[usize]) -> ort::Result<()> {
    match got == want {
        true => Ok(()),
        false => Err(ort::Error::new(format!(
            "GroupQueryAttention: {name} has shape {got:?}, not {want:?}"
        ))),
    }
}

fn fail(what: impl std::fmt::Display) -> ort::Error {
    ort::Error::new(format!("GroupQueryAttention: {what}"))
}

/// The new tokens' layout: (batch, seq, head size) and where q, k and v are, from the query
/// (packed or not) and the optional key and value inputs, every shape checked.
fn new_tokens(ctx: &ComputeContext, a: &Attributes) -> ort::Result<([usize; 3], [Source; 3])> {
    let (q_shape, q) = float_input(ctx, 0)?.ok_or_else(|| fail("no query"))?;
    let [batch, seq, width] = q_shape[..] else {
        return Err(fail(format!(
            "query has shape {q_shape:?}, not [batch, seq, hidden]"
        )));
    };
    let key = float_input(ctx, 1)?;
    let value = float_input(ctx, 2)?;
    let packed = key.is_none();
    let heads = if packed {
        a.heads + 2 * a.kv_heads
    } else {
        a.heads
    };
    let head = width / heads;
    if head == 0 || !head.is_multiple_of(8) {
        return Err(fail(format!(
            "head size {head} is not a positive multiple of 8"
        )));
    }
    expect_shape("query", &q_shape, &[batch, seq, heads * head])?;
    let at = |data, stride, offset| Source {
        data,
        stride,
        offset,
    };
    let sources = match (key, value) {
        (None, None) => [
            at(q, width, 0),
            at(q, width, a.heads * head),
            at(q, width, (a.heads + a.kv_heads) * head),
        ],
        (Some((ks, k)), Some((vs, v))) => {
            let kv_width = a.kv_heads * head;
            expect_shape("key", &ks, &[batch, seq, kv_width])?;
            expect_shape("value", &vs, &[batch, seq, kv_width])?;
            [at(q, width, 0), at(k, kv_width, 0), at(v, kv_width, 0)]
        }
        _ => return Err(fail("key and value must both be given or both left out")),
    };
    Ok(([batch, seq, head], sources))
}

/// The past key and value (null without them) and their capacity, shapes checked.
fn past(
    ctx: &ComputeContext,
    a: &Attributes,
    [batch, _, head]: [usize; 3],
) -> ort::Result<(*const f32, *const f32, usize)> {
    match (float_input(ctx, 3)?, float_input(ctx, 4)?) {
        (Some((ks, k)), Some((vs, v))) => {
            let capacity = ks.get(2).copied().unwrap_or(0);
            expect_shape("past_key", &ks, &[batch, a.kv_heads, capacity, head])?;
            expect_shape("past_value", &vs, &[batch, a.kv_heads, capacity, head])?;
            Ok((k, v, capacity))
        }
        (None, None) => Ok((std::ptr::null(), std::ptr::null(), 0)),
        _ => Err(fail(
            "past_key and past_value must both be given or both left out",
        )),
    }
}

/// The rotary tables (null without rotary), the embedding, and the tables' rows.
fn rotary(
    ctx: &ComputeContext,
    a: &Attributes,
    head: usize,
) -> ort::Result<(*const f32, *const f32, Option<Rotary>, usize)> {
    let (Some((c, cos)), Some((s, sin)), true) =
        (float_input(ctx, 7)?, float_input(ctx, 8)?, a.rotary)
    else {
        return match a.rotary {
            true => Err(fail("do_rotary without cos_cache and sin_cache")),
            false => Ok((std::ptr::null(), std::ptr::null(), None, 0)),
        };
    };
    let half = c.get(1).copied().unwrap_or(0);
    if c.len() != 2 || half == 0 || 2 * half > head {
        return Err(fail(format!(
            "cos_cache has shape {c:?}, not [positions, at most {}]",
            head / 2
        )));
    }
    expect_shape("sin_cache", &s, &c)?;
    let embedding = Rotary {
        dim: 2 * half,
        interleaved: a.interleaved,
    };
    Ok((cos, sin, Some(embedding), c[0]))
}

fn compute(ctx: &ComputeContext, a: Attributes) -> ort::Result<()> {
    let ([batch, seq, head], [q, k, v]) = new_tokens(ctx, &a)?;
    let (past_key, past_value, past_capacity) = past(ctx, &a, [batch, seq, head])?;
    let seqlens = ctx.input(5)?.ok_or_else(|| fail("no seqlens_k"))?;
    let (_, seqlens_k) = seqlens.try_extract_tensor::<i32>()?;
    if seqlens_k.len() != batch {
        return Err(fail(format!(
            "seqlens_k has {} rows for a batch of {batch}",
            seqlens_k.len()
        )));
    }
    let total = ctx
        .input(6)?
        .ok_or_else(|| fail("no total_sequence_length"))?;
    let total = *total
        .try_extract_tensor::<i32>()?
        .1
        .first()
        .ok_or_else(|| fail("empty total_sequence_length"))?;
    let total = total.max(0) as usize;
    let (cos, sin, rotary, rotary_positions) = rotary(ctx, &a, head)?;
    let present_capacity = total.max(past_capacity);
    let shape = Shape {
        batch,
        seq,
        heads: a.heads,
        kv_heads: a.kv_heads,
        head,
        past_capacity,
        present_capacity,
        first_prompt: seq == total,
        scale: if a.scale == 0.0 {
            1.0 / (head as f32).sqrt()
        } else {
            a.scale
        },
        window: a.window,
        rotary,
    };
    let cache_shape = vec![batch, a.kv_heads, present_capacity, head];
    let buffers = Buffers {
        q,
        k,
        v,
        past_key,
        past_value,
        output: float_output(ctx, 0, vec![batch, seq, a.heads * head])?,
        present_key: float_output(ctx, 1, cache_shape.clone())?,
        present_value: float_output(ctx, 2, cache_shape)?,
        cos,
        sin,
    };
    let attention = Attention {
        shape,
        buffers,
        seqlens_k,
        rotary_positions,
    };
    attention.check().map_err(fail)?;
    // SAFETY: the shapes were checked against the buffers above; ONNX Runtime keeps inputs and
    // outputs alive for the call; each item writes only its own row and head.
    ctx.par_for(attention.cache_items(), 0, |i| unsafe {
        attention.write_cache(i)
    })?;
    ctx.par_for(attention.attend_items(), 0, |i| unsafe {
        attention.attend(i)
    })?;
    Ok(())
}
