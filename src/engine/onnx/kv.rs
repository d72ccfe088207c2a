//! The KV cache of a batch, three ways behind one trait: tensors that grow by concatenation
//! ([`GrowingKv`], any layout), one buffer per layer bound to both past and present
//! ([`SharedKv`], onnxruntime-genai graphs, no copies per step), and shared buffers with every
//! decode input and output at a fixed address ([`FixedKv`], what CUDA graph replay needs).
//! Each runs one step of the model and hands back its logits.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::error::EngineError;
use super::folder::{LOGITS_POSITIONS, Layout};
use super::model::{FixedBuffers, Model};
use super::tensor::memory_info;

/// One step's inputs: `ids` and `positions` are [batch, q], `mask` is [batch, width].
pub(crate) struct StepInputs {
    pub step: usize,
    pub ids: Tensor<i64>,
    pub mask: Tensor<i64>,
    pub positions: Vec<i64>,
    pub shape: [usize; 2],
    /// The logits' vocabulary size (0 before the first step).
    pub vocab: usize,
    /// Leave the logits on the device for the device head.
    pub logits_on_device: bool,
    /// [batch, 1]: the position of each row whose logits the step needs, for graphs that take
    /// `logits_positions` (`None`: the graph returns logits for every position).
    pub logits_positions: Option<Tensor<i64>>,
}

/// A step's logits: a value of its own, or the fixed buffer the step wrote into.
pub(crate) enum Logits<'a> {
    Owned(DynValue),
    Bound(&'a DynValue),
}

impl std::ops::Deref for Logits<'_> {
    type Target = DynValue;
    fn deref(&self) -> &DynValue {
        match self {
            Logits::Owned(v) => v,
            Logits::Bound(v) => v,
        }
    }
}

/// A batch's KV cache.
pub(crate) trait KvCache {
    /// How wide the attention mask of `step` is when `total` positions are valid so far.
    fn mask_width(&self, _step: usize, total: usize) -> usize {
        total
    }

    /// Run the model for one step; returns the logits [batch, q, vocab].
    fn run<'a>(
        &'a mut self,
        model: &mut Model,
        inputs: StepInputs,
    ) -> Result<Logits<'a>, EngineError>;

    /// Whether a row may take a new sequence while the others decode, and finished rows be
    /// dropped ([`KvCache::start_row`], [`KvCache::keep_rows`]).
    fn recycles(&self) -> bool {
        false
    }

    /// Prefill one sequence (`inputs` of batch 1) into row `row`, whose sequence has finished;
    /// returns its logits [1, q, vocab].
    fn start_row<'a>(
        &'a mut self,
        _model: &mut Model,
        _row: usize,
        _inputs: StepInputs,
    ) -> Result<Logits<'a>, EngineError> {
        Err(EngineError::Run(
            "this KV cache cannot start a row alone".into(),
        ))
    }

    /// Keep only rows `keep` (in this order) for the steps to come.
    fn keep_rows(&mut self, _model: &mut Model, _keep: &[usize]) -> Result<(), EngineError> {
        Err(EngineError::Run("this KV cache cannot drop rows".into()))
    }
}

/// Run `binding` with these token ids and attention mask, the logits left in `logits_at`, and
/// return the logits. `sync`: wait until the bound outputs are written (the device head reads
/// them from another session, on its own CUDA stream).
fn run_bound(
    session: &mut Session,
    binding: &mut ort::session::IoBinding,
    logits_at: &ort::memory::MemoryInfo<'static>,
    (ids, mask, positions): (&Tensor<i64>, &Tensor<i64>, Option<&Tensor<i64>>),
    options: Option<&ort::session::RunOptions>,
    sync: bool,
) -> Result<DynValue, EngineError> {
    let run_err = EngineError::run;
    binding
        .bind_output_to_device("logits", logits_at)
        .map_err(run_err)?;
    binding.bind_input("input_ids", ids).map_err(run_err)?;
    binding
        .bind_input("attention_mask", mask)
        .map_err(run_err)?;
    if let Some(positions) = positions {
        binding
            .bind_input(LOGITS_POSITIONS, positions)
            .map_err(run_err)?;
    }
    let mut out = match options {
        Some(options) => session.run_binding_with_options(binding, options),
        None => session.run_binding(binding),
    }
    .map_err(run_err)?;
    if sync {
        binding.synchronize_outputs().map_err(run_err)?;
    }
    out.remove("logits")
        .ok_or_else(|| EngineError::Run("no output `logits`".into()))
}

/// Grows by concatenation: the presents of one step are the pasts of the next.
pub(crate) struct GrowingKv {
    past: Vec<DynValue>,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl GrowingKv {
    pub fn new(model: &Model, batch: usize) -> Result<GrowingKv, EngineError> {
        let layers = model.graph.layers;
        let past = (0..2 * layers)
            .map(|_| model.empty_kv(batch))
            .collect::<Result<_, _>>()?;
        Ok(GrowingKv {
            past,
            input_names: (0..layers)
                .flat_map(|i| {
                    [
                        format!("past_key_values.{i}.key"),
                        format!("past_key_values.{i}.value"),
                    ]
                })
                .collect(),
            output_names: (0..layers)
                .flat_map(|i| [format!("present.{i}.key"), format!("present.{i}.value")])
                .collect(),
        })
    }
}

impl KvCache for GrowingKv {
    fn run<'a>(
        &'a mut self,
        model: &mut Model,
        inputs: StepInputs,
    ) -> Result<Logits<'a>, EngineError> {
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("input_ids".into(), inputs.ids.into_dyn().into()),
            ("attention_mask".into(), inputs.mask.into_dyn().into()),
        ];
        if model.graph.layout == Layout::Optimum {
            let positions = Tensor::<i64>::from_array((inputs.shape, inputs.positions))
                .map_err(EngineError::run)?;
            feed.push(("position_ids".into(), positions.into_dyn().into()));
        }
        if let Some(positions) = inputs.logits_positions {
            feed.push((LOGITS_POSITIONS.into(), positions.into_dyn().into()));
        }
        for (name, value) in self.input_names.iter().zip(self.past.drain(..)) {
            feed.push((Cow::Owned(name.clone()), value.into()));
        }
        let mut out = match model.uncaptured.as_ref() {
            Some(options) => model.session.run_with_options(feed, options),
            None => model.session.run(feed),
        }
        .map_err(EngineError::run)?;
        for name in &self.output_names {
            self.past.push(
                out.remove(name)
                    .ok_or_else(|| EngineError::Run(format!("no output `{name}`")))?,
            );
        }
        out.remove("logits")
            .map(Logits::Owned)
            .ok_or_else(|| EngineError::Run("no output `logits`".into()))
    }
}

/// One buffer per layer bound to both `past_key_values.*` and `present.*`: GroupQueryAttention
/// appends in place. Each row of the buffers is a slot holding one sequence from position 0
/// (the genai layout packs every row from 0), so on the host a slot can take a new sequence
/// while the others decode on ([`KvCache::start_row`]), and the rows still decoding can be
/// kept alone ([`KvCache::keep_rows`]): a batch never computes a row that has finished.
pub(crate) struct SharedKv {
    binding: ort::session::IoBinding,
    cpu: ort::memory::MemoryInfo<'static>,
    buffers: Vec<DynValue>,
    rows: usize,
    max_len: usize,
    /// The buffers are host memory this process may copy rows of, and the batch chooses its
    /// tokens on the host.
    on_host: bool,
}

impl SharedKv {
    pub fn new(model: &mut Model, batch: usize, max_len: usize) -> Result<SharedKv, EngineError> {
        let (binding, buffers) = model.shared_kv_binding(batch, max_len)?;
        let cpu = memory_info(ort::memory::AllocationDevice::CPU, 0).map_err(EngineError::run)?;
        Ok(SharedKv {
            binding,
            cpu,
            buffers,
            rows: batch,
            max_len,
            on_host: model.recycles_rows(),
        })
    }

    /// Bytes of one row of one buffer.
    fn row_bytes(&self) -> usize {
        let total: usize = self.buffers.first().map_or(0, byte_len);
        total / self.rows.max(1)
    }

    /// Copy row `from` of `src`'s buffers into row `to` of ours (same layers, same length).
    fn copy_row(&mut self, to: usize, src: &mut SharedKv, from: usize) -> Result<(), EngineError> {
        let n = self.row_bytes();
        if n != src.row_bytes() || self.buffers.len() != src.buffers.len() {
            return Err(EngineError::Run(
                "a KV slot was copied between caches of different shapes".into(),
            ));
        }
        for (dst, src) in self.buffers.iter_mut().zip(src.buffers.iter_mut()) {
            let (dst, src) = (host_bytes(dst)?, host_bytes(src)?);
            dst[to * n..(to + 1) * n].copy_from_slice(&src[from * n..(from + 1) * n]);
        }
        Ok(())
    }
}

/// The bytes of a host tensor.
fn host_bytes(value: &mut DynValue) -> Result<&mut [u8], EngineError> {
    let len = byte_len(value);
    let tensor = value
        .view_mut()
        .downcast::<ort::value::DynTensorValueType>()
        .map_err(EngineError::run)?;
    // The data is writable (ONNX Runtime hands it out through `GetTensorMutableData`); the
    // view only lacks `DerefMut`.
    let ptr = tensor.data_ptr().cast::<u8>().cast_mut();
    // SAFETY: a host tensor's data is `len` bytes at `ptr`, alive as long as `value`, which the
    // returned slice borrows mutably.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Bytes of a tensor's data.
fn byte_len(value: &DynValue) -> usize {
    match value.dtype() {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            let elements: i64 = shape.iter().product();
            elements.max(0) as usize * ty.byte_size(1).unwrap_or(0)
        }
        _ => 0,
    }
}

impl KvCache for SharedKv {
    fn run<'a>(
        &'a mut self,
        model: &mut Model,
        inputs: StepInputs,
    ) -> Result<Logits<'a>, EngineError> {
        // Rebound each step: its shape changes between prefill and decode.
        let at = match (&model.head, inputs.logits_on_device) {
            (Some(head), true) => &head.logits_memory,
            _ => &self.cpu,
        };
        run_bound(
            &mut model.session,
            &mut self.binding,
            at,
            (&inputs.ids, &inputs.mask, inputs.logits_positions.as_ref()),
            model.uncaptured.as_ref(),
            inputs.logits_on_device,
        )
        .map(Logits::Owned)
    }

    fn recycles(&self) -> bool {
        self.on_host
    }

    fn start_row<'a>(
        &'a mut self,
        model: &mut Model,
        row: usize,
        inputs: StepInputs,
    ) -> Result<Logits<'a>, EngineError> {
        // The prefill runs alone on a one-row cache (zeroed, as long as ours), then takes the
        // row's place: the other rows' caches are not touched.
        let mut alone = SharedKv::new(model, 1, self.max_len)?;
        let logits = match alone.run(model, inputs)? {
            Logits::Owned(v) => v,
            Logits::Bound(_) => unreachable!("a shared cache's logits are its own"),
        };
        self.copy_row(row, &mut alone, 0)?;
        Ok(Logits::Owned(logits))
    }

    fn keep_rows(&mut self, model: &mut Model, keep: &[usize]) -> Result<(), EngineError> {
        let mut kept = SharedKv::new(model, keep.len(), self.max_len)?;
        for (to, &from) in keep.iter().enumerate() {
            kept.copy_row(to, self, from)?;
        }
        *self = kept;
        Ok(())
    }
}

/// Greedy decode steps on buffers that stay put: the KV buffers, the token ids [batch, 1], an
/// attention mask as wide as the KV buffers [batch, len] (ones over each row's valid positions,
/// zeros after) and the logits [batch, 1, vocab], bound once. That is what CUDA graph capture
/// needs: every decode step then has the same shapes and addresses, so ONNX Runtime records the
/// step's few hundred kernel launches once and replays them with one. At batch 1 those launches,
/// not the GPU, bound the decode speed of a small model. Graphs built by onnxruntime-genai's
/// model builder take a mask wider than the valid length (GroupQueryAttention reads each row's
/// length from the mask's sum); onnxruntime-genai decodes its own CUDA graphs the same way.
///
/// Each batch captures its own graph and never replays another's: a graph replays the
/// addresses it was recorded with, and this batch's buffers are freed when it ends.
pub(crate) struct FixedKv {
    binding: ort::session::IoBinding,
    _kv: Vec<DynValue>,
    ids: Tensor<i64>,
    mask: Tensor<i64>,
    /// [batch, 1] on the device, for graphs that take `logits_positions`: every decode step
    /// wants the logits of its one position.
    positions: Option<Tensor<i64>>,
    /// Made at the first decode step, when the vocabulary size is known.
    logits: Option<DynValue>,
    /// Width of the mask: the KV buffers' length.
    len: usize,
    /// Run options naming this batch's graph under CUDA; `None`: fixed buffers, no graph.
    graph: Option<ort::session::RunOptions>,
}

impl FixedKv {
    pub fn new(buffers: FixedBuffers) -> FixedKv {
        let FixedBuffers {
            binding,
            kv,
            ids,
            mask,
            positions,
            len,
            graph,
        } = buffers;
        FixedKv {
            binding,
            _kv: kv,
            ids,
            mask,
            positions,
            logits: None,
            len,
            graph,
        }
    }
}

impl KvCache for FixedKv {
    fn mask_width(&self, step: usize, total: usize) -> usize {
        if step > 0 { self.len } else { total }
    }

    fn run<'a>(
        &'a mut self,
        model: &mut Model,
        inputs: StepInputs,
    ) -> Result<Logits<'a>, EngineError> {
        let head = model
            .head
            .as_ref()
            .ok_or_else(|| EngineError::Generate("fixed decode needs the device head".into()))?;
        if inputs.step == 0 {
            // The prefill has its own shapes: run as usual, not captured.
            return run_bound(
                &mut model.session,
                &mut self.binding,
                &head.logits_memory,
                (&inputs.ids, &inputs.mask, inputs.logits_positions.as_ref()),
                model.uncaptured.as_ref(),
                true,
            )
            .map(Logits::Owned);
        }
        let run_err = EngineError::run;
        if self.logits.is_none() {
            // First decode step: bind the fixed inputs and outputs once.
            let mut logits = model.fixed_logits(inputs.shape[0], inputs.vocab)?;
            self.binding
                .bind_input("input_ids", &self.ids)
                .map_err(run_err)?;
            self.binding
                .bind_input("attention_mask", &self.mask)
                .map_err(run_err)?;
            self.binding
                .bind_output("logits", &mut logits)
                .map_err(run_err)?;
            if let (Some(fixed), Some(step)) = (&mut self.positions, &inputs.logits_positions) {
                // The same for every decode step (position 0 of one new token): copied once.
                step.copy_into(&mut *fixed).map_err(run_err)?;
                self.binding
                    .bind_input(LOGITS_POSITIONS, &*fixed)
                    .map_err(run_err)?;
            }
            self.logits = Some(logits);
        }
        inputs.ids.copy_into(&mut self.ids).map_err(run_err)?;
        inputs.mask.copy_into(&mut self.mask).map_err(run_err)?;
        let out = match &self.graph {
            Some(options) => model
                .session
                .run_binding_with_options(&self.binding, options),
            None => model.session.run_binding(&self.binding),
        }
        .map_err(run_err)?;
        drop(out);
        self.binding.synchronize_outputs().map_err(run_err)?;
        self.logits
            .as_ref()
            .map(Logits::Bound)
            .ok_or_else(|| EngineError::Run("no logits buffer".into()))
    }
}
