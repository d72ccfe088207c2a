//! Tensors and memory the model and the device head both use: the float types of the KV cache
//! and logits, where a value lives, and zeroed buffers. A leaf: it imports nothing of the
//! engine, so the model and the head do not import each other.

use ort::value::{DynValue, Tensor};

/// Element type of the KV cache or logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Float {
    F32,
    F16,
}

/// Where ONNX Runtime should put (or finds) a value: CPU memory, or the memory of CUDA device
/// `device_id`.
pub(crate) fn memory_info(
    device: ort::memory::AllocationDevice,
    device_id: u32,
) -> Result<ort::memory::MemoryInfo<'static>, ort::Error> {
    ort::memory::MemoryInfo::new(
        device,
        device_id as i32,
        ort::memory::AllocatorType::Device,
        ort::memory::MemoryType::Default,
    )
}

/// `count` tensors of `shape` from `alloc`, all zero. Host memory is filled in place; device
/// memory is copied from one host tensor of zeros (made once, not per buffer), unless
/// `zero_device` is off. Device memory comes from ONNX Runtime's arena uninitialised, possibly
/// holding NaNs of earlier tensors; attention kernels may multiply masked positions by zero,
/// and 0 x NaN poisons a row.
pub(crate) fn zeroed_buffers<T>(
    alloc: &ort::memory::Allocator,
    shape: [usize; 4],
    count: usize,
    zero: T,
    on_device: bool,
    zero_device: bool,
) -> Result<Vec<DynValue>, ort::Error>
where
    T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static,
{
    let host_zeros = if on_device && zero_device {
        let n = shape.iter().product::<usize>();
        Some(Tensor::<T>::from_array((shape, vec![zero; n]))?)
    } else {
        None
    };
    (0..count)
        .map(|_| {
            let mut t = Tensor::<T>::new(alloc, shape)?;
            match &host_zeros {
                Some(zeros) => zeros.copy_into(&mut t)?,
                None if !on_device => t.try_extract_tensor_mut::<T>()?.1.fill(zero),
                None => {}
            }
            Ok(t.into_dyn())
        })
        .collect()
}
