//! Where a model runs and how its weights are stored, as types: the [`Device`] a user asks for,
//! the [`Provider`] that `auto` resolves to (once, with the reason), the export [`Target`] that
//! follows from it, and the weight [`Precision`].
//!
//! Config files, the command line and the environment all parse into these enums; nothing below
//! the edge compares device names as strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A device or precision name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("failed to parse {what} `{value}`: expected {expected}")]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Where the user asks a model to run. `gpu` is accepted everywhere as another name for `cuda`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when this machine has an NVIDIA driver, else CPU (the choice is reported).
    #[default]
    Auto,
    Cpu,
    #[serde(alias = "gpu")]
    Cuda,
}

impl Device {
    pub const NAMES: &'static str = "auto, cpu or cuda (gpu)";

    pub fn as_str(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }

    /// Resolve `auto` into the provider that runs the model. This is the only place `auto` is
    /// decided; `nvidia_driver` is what the edge found on this machine.
    pub fn resolve(self, nvidia_driver: bool) -> Resolution {
        let (provider, reason) = match self {
            Device::Cpu => (Provider::Cpu, "device = \"cpu\""),
            Device::Cuda => (Provider::Cuda, "device = \"cuda\""),
            Device::Auto if nvidia_driver => (
                Provider::Cuda,
                "device = \"auto\" and this machine has an NVIDIA driver",
            ),
            Device::Auto => (
                Provider::Cpu,
                "device = \"auto\" and this machine has no NVIDIA driver",
            ),
        };
        Resolution {
            provider,
            reason,
            fallback_to_cpu: self == Device::Auto,
        }
    }
}

impl FromStr for Device {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Device, ParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err(ParseError {
                what: "device",
                value: s.to_string(),
                expected: Device::NAMES,
            }),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which GPUs a CUDA profile runs on: one ONNX Runtime session per entry, batches spread across
/// them (data parallelism). Written after the device: `cuda:1`, `cuda:0,1`, `cuda:all`. An index
/// may repeat (`cuda:0,0`: two sessions on one GPU), which runs the multi-device path on a
/// machine with one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Gpus {
    /// GPU 0 alone (plain `cuda`, `gpu` or `auto`).
    #[default]
    First,
    /// These GPU indices, in order (as CUDA numbers the visible devices).
    Ids(Vec<u32>),
    /// Every GPU the driver lists.
    All,
}

impl Gpus {
    /// The indices to open sessions on, given how many GPUs the machine has (`None`: unknown,
    /// so `all` cannot be resolved).
    pub fn resolve(&self, available: Option<usize>) -> Result<Vec<u32>, ParseError> {
        let err = |expected: &'static str| ParseError {
            what: "GPU list",
            value: self.to_string(),
            expected,
        };
        match self {
            Gpus::First => Ok(vec![0]),
            Gpus::Ids(ids) => match available {
                Some(n) if ids.iter().any(|&i| i as usize >= n) => Err(err(
                    "indices of the GPUs this machine has (nvidia-smi -L lists them)",
                )),
                _ => Ok(ids.clone()),
            },
            Gpus::All => match available {
                Some(n) if n > 0 => Ok((0..n as u32).collect()),
                _ => Err(err(
                    "a machine where nvidia-smi lists at least one GPU (`cuda:all`)",
                )),
            },
        }
    }
}

impl fmt::Display for Gpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gpus::First => f.write_str("0"),
            Gpus::All => f.write_str("all"),
            Gpus::Ids(ids) => {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                f.write_str(&ids.join(","))
            }
        }
    }
}

/// A profile's `device` as written: the device and, for CUDA, which GPUs (`cuda:0,1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DeviceSpec {
    pub device: Device,
    pub gpus: Gpus,
}

impl DeviceSpec {
    pub const NAMES: &'static str =
        "auto, cpu, cuda (gpu), or cuda with GPU indices: cuda:1, cuda:0,1, cuda:all";
}

impl FromStr for DeviceSpec {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<DeviceSpec, ParseError> {
        let err = || ParseError {
            what: "device",
            value: s.to_string(),
            expected: DeviceSpec::NAMES,
        };
        let Some((name, list)) = s.split_once(':') else {
            let device = s.parse::<Device>().map_err(|_| err())?;
            return Ok(DeviceSpec {
                device,
                gpus: Gpus::First,
            });
        };
        if name.parse::<Device>().map_err(|_| err())? != Device::Cuda {
            return Err(err());
        }
        let list = list.trim();
        let gpus = if list.eq_ignore_ascii_case("all") {
            Gpus::All
        } else {
            let ids: Result<Vec<u32>, _> = list.split(',').map(|i| i.trim().parse()).collect();
            Gpus::Ids(ids.map_err(|_| err())?)
        };
        Ok(DeviceSpec {
            device: Device::Cuda,
            gpus,
        })
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DeviceSpec, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.gpus {
            Gpus::First => write!(f, "{}", self.device),
            gpus => write!(f, "{}:{gpus}", self.device),
        }
    }
}

/// The ONNX Runtime execution provider a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }

    /// The export target whose graph this provider runs best (GroupQueryAttention runs fp16 on
    /// CUDA and fp32 on CPU).
    pub fn target(self) -> Target {
        match self {
            Provider::Cpu => Target::Cpu,
            Provider::Cuda => Target::Cuda,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `auto` (or an explicit device) resolved: the provider, why, and whether a provider that
/// fails to load may fall back to CPU (only when the user asked for `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub provider: Provider,
    pub reason: &'static str,
    pub fallback_to_cpu: bool,
}

impl fmt::Display for Resolution {
    /// `cuda (device = "auto" and this machine has an NVIDIA driver)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.provider, self.reason)
    }
}

/// What an exported graph is built for: decides the activation dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// float32 activations and KV cache (CPU execution provider).
    #[default]
    Cpu,
    /// float16 activations and KV cache (CUDA execution provider; GQA on CUDA is fp16/bf16 only).
    #[serde(alias = "gpu")]
    Cuda,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Target {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Target::Cpu),
            "cuda" | "gpu" => Ok(Target::Cuda),
            _ => Err(ParseError {
                what: "target",
                value: s.to_string(),
                expected: "cpu or cuda (gpu)",
            }),
        }
    }
}

/// Weight precision of the linear layers when the harness exports a model. `native` (the
/// default) keeps each GGUF tensor's own block quantization exactly (MatMulNBits with its block
/// size, scales and zero points); int4/int8 re-quantize (block 32, symmetric); fp16/fp32
/// dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Native,
    Int4,
    Int8,
    Fp16,
    Fp32,
}

impl Precision {
    pub const NAMES: &'static str = "native, int4, int8, fp16 or fp32";

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Native => "native",
            Precision::Int4 => "int4",
            Precision::Int8 => "int8",
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" | "gguf" => Ok(Precision::Native),
            "int4" | "q4" => Ok(Precision::Int4),
            "int8" | "q8" => Ok(Precision::Int8),
            "fp16" | "float16" => Ok(Precision::Fp16),
            "fp32" | "float32" => Ok(Precision::Fp32),
            _ => Err(ParseError {
                what: "precision",
                value: s.to_string(),
                expected: Precision::NAMES,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_the_same_from_text_and_toml() {
        for (text, device) in [
            ("auto", Device::Auto),
            ("CPU", Device::Cpu),
            ("cuda", Device::Cuda),
            ("gpu", Device::Cuda),
        ] {
            assert_eq!(text.parse::<Device>().unwrap(), device);
            let lower = text.to_ascii_lowercase();
            let parsed: Device = toml::Value::String(lower).try_into().unwrap();
            assert_eq!(parsed, device);
        }
        let err = "tpu".parse::<Device>().unwrap_err().to_string();
        assert_eq!(
            err,
            "failed to parse device `tpu`: expected auto, cpu or cuda (gpu)"
        );
    }

    #[test]
    fn auto_resolves_once_with_a_reason() {
        let r = Device::Auto.resolve(true);
        assert_eq!(r.provider, Provider::Cuda);
        assert!(r.fallback_to_cpu);
        assert!(r.reason.contains("NVIDIA driver"));
        let r = Device::Auto.resolve(false);
        assert_eq!(r.provider, Provider::Cpu);
        let r = Device::Cuda.resolve(false);
        assert_eq!(r.provider, Provider::Cuda);
        assert!(!r.fallback_to_cpu);
        assert_eq!(Device::Cpu.resolve(true).provider, Provider::Cpu);
        assert_eq!(Provider::Cuda.target(), Target::Cuda);
    }

    #[test]
    fn gpu_lists_parse_and_resolve() {
        let spec = |s: &str| s.parse::<DeviceSpec>();
        assert_eq!(spec("cuda").unwrap().gpus, Gpus::First);
        assert_eq!(spec("cpu").unwrap().device, Device::Cpu);
        assert_eq!(spec("cuda:0,1").unwrap().gpus, Gpus::Ids(vec![0, 1]));
        assert_eq!(spec("gpu: 1").unwrap().gpus, Gpus::Ids(vec![1]));
        assert_eq!(spec("CUDA:all").unwrap().gpus, Gpus::All);
        assert_eq!(spec("cuda:0,1").unwrap().to_string(), "cuda:0,1");
        for bad in ["cpu:0", "auto:1", "cuda:", "cuda:a", "cuda:0,,1", "tpu:0"] {
            let e = spec(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{bad}`")) && e.contains("cuda:0,1"),
                "{e}"
            );
        }
        let parsed: DeviceSpec = toml::Value::String("cuda:0,0".into()).try_into().unwrap();
        assert_eq!(parsed.gpus.resolve(Some(1)).unwrap(), vec![0, 0]);
        assert_eq!(Gpus::All.resolve(Some(2)).unwrap(), vec![0, 1]);
        assert!(Gpus::All.resolve(None).is_err());
        let e = Gpus::Ids(vec![0, 2])
            .resolve(Some(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`0,2`"), "{e}");
        assert_eq!(Gpus::First.resolve(None).unwrap(), vec![0]);
    }

    #[test]
    fn precision_parses() {
        assert_eq!("FP16".parse::<Precision>().unwrap(), Precision::Fp16);
        assert_eq!("q8".parse::<Precision>().unwrap(), Precision::Int8);
        assert!("int3".parse::<Precision>().is_err());
    }
}
