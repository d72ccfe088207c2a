//! Token choice on the model's device: a tiny ONNX graph (the "head") that takes the model's
//! logits where they are (GPU memory under CUDA), picks one position per row, and returns only
//! the top-k log-probabilities and token ids.
//!
//! Why: at batch 1 on a GPU a decode step of a 0.5B model takes about 2 ms, and copying
//! 151,936 logits to the host and running log-sum-exp and top-k over them there added about
//! 1 ms more. With the head, k numbers per row cross the bus. It serves greedy decoding (the
//! chosen token is the top-1); sampling needs the whole distribution and keeps the host path.
//!
//! The graphs are written by `harness/python/make_heads.py` and embedded; `tests/engine.rs`
//! checks that they are what the script writes and that the head agrees with the host path.

use ort::ep::ExecutionProvider;
use ort::memory::{AllocationDevice, MemoryInfo};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor};

use super::error::EngineError;
use super::tensor::{Float, memory_info};
use crate::device::Provider;

/// The head for fp32 logits.
pub const HEAD_F32: &[u8] = include_bytes!("heads/last_token_top_f32.onnx");
/// The head for fp16 logits.
pub const HEAD_F16: &[u8] = include_bytes!("heads/last_token_top_f16.onnx");

/// A loaded head, on the same execution provider as the model.
pub(crate) struct DeviceHead {
    session: Session,
    /// The binding of the last call, kept while `index` and `k` stay the same (every decode
    /// step after the first): only the logits are bound again.
    bound: Option<(ort::session::IoBinding, Vec<i64>, usize)>,
    cpu: MemoryInfo<'static>,
    /// Where the model should leave its logits for this head.
    pub(crate) logits_memory: MemoryInfo<'static>,
}

impl std::fmt::Debug for DeviceHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHead").finish_non_exhaustive()
    }
}

fn memory(device: AllocationDevice, device_id: u32) -> Result<MemoryInfo<'static>, EngineError> {
    memory_info(device, device_id)
        .map_err(|e| EngineError::Session(format!("token head memory: {e}")))
}

impl DeviceHead {
    /// Load the head for `logits` of this element type on `provider` (CUDA device `device_id`).
    pub(crate) fn load(
        environment: &ort::environment::Environment,
        provider: Provider,
        device_id: u32,
        logits: Float,
    ) -> Result<DeviceHead, EngineError> {
        let err = |e: ort::Error| EngineError::Session(format!("token head: {e}"));
        let builder_err = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            EngineError::Session(format!("token head: {e}"))
        };
        let mut builder = Session::builder(environment)
            .map_err(err)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(builder_err)?
            .with_intra_threads(1)
            .map_err(builder_err)?;
        let device = match provider {
            Provider::Cuda => {
                ort::ep::CUDA::default()
                    .with_device_id(device_id as i32)
                    .register(&mut builder)
                    .map_err(|e| EngineError::Cuda(format!("token head: {e}")))?;
                AllocationDevice::CUDA
            }
            Provider::Cpu => AllocationDevice::CPU,
        };
        let bytes = match logits {
            Float::F32 => HEAD_F32,
            Float::F16 => HEAD_F16,
        };
        let session = builder.commit_from_memory(bytes).map_err(err)?;
        Ok(DeviceHead {
            session,
            bound: None,
            cpu: memory(AllocationDevice::CPU, 0)?,
            logits_memory: memory(device, device_id)?,
        })
    }

    /// For each row `r`, the `k` most likely tokens at position `index[r]` of `logits`
    /// [batch, seq, vocab], as (token id, log-probability), most likely first, ties to the
    /// lower id. `seq` is the logits' second dimension.
    pub(crate) fn top(
        &mut self,
        logits: &DynValue,
        index: &[i64],
        seq: usize,
        k: usize,
    ) -> Result<Vec<Vec<(usize, f32)>>, EngineError> {
        let err = |e: ort::Error| EngineError::Run(format!("token head: {e}"));
        let b = index.len();
        // Rows of the flattened [batch * seq, vocab] logits.
        let index: Vec<i64> = index
            .iter()
            .enumerate()
            .map(|(r, &at)| (r * seq) as i64 + at)
            .collect();
        let index = index.as_slice();
        let reuse = self
            .bound
            .as_ref()
            .is_some_and(|(_, i, kk)| i.as_slice() == index && *kk == k);
        if !reuse {
            let t_index = Tensor::<i64>::from_array(([b], index.to_vec())).map_err(err)?;
            let t_k = Tensor::<i64>::from_array(([1], vec![k as i64])).map_err(err)?;
            let mut binding = self.session.create_binding().map_err(err)?;
            binding.bind_input("index", &t_index).map_err(err)?;
            binding.bind_input("k", &t_k).map_err(err)?;
            binding
                .bind_output_to_device("top_logprobs", &self.cpu)
                .map_err(err)?;
            binding
                .bind_output_to_device("top_ids", &self.cpu)
                .map_err(err)?;
            self.bound = Some((binding, index.to_vec(), k));
        }
        let (binding, _, _) = self.bound.as_mut().expect("bound above");
        binding.bind_input("logits", logits).map_err(err)?;
        let out = self.session.run_binding(binding).map_err(err)?;
        let (_, logprobs) = out["top_logprobs"]
            .try_extract_tensor::<f32>()
            .map_err(err)?;
        let (_, ids) = out["top_ids"].try_extract_tensor::<i64>().map_err(err)?;
        if logprobs.len() != b * k || ids.len() != b * k {
            return Err(EngineError::Run(format!(
                "token head: expected {b}x{k} results, got {}",
                logprobs.len()
            )));
        }
        Ok((0..b)
            .map(|r| {
                (0..k)
                    .map(|j| (ids[r * k + j] as usize, logprobs[r * k + j]))
                    .collect()
            })
            .collect())
    }
}
