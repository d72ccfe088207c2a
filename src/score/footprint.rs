//! What a model profile is and what generating with it took, for comparing profiles side by
//! side: the profile's facts (source, model, device, precision, size on disk, load time) and
//! generation timing over its samples and cases (time to first token, decode rate, time per
//! case). Pure: the harness hands in what the source measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ModelProfile, SourceConfig};
use crate::evaluate::CaseOutcome;
use crate::outcome::LoadFacts;
use crate::score::stats;

/// A model profile as run: where its completions came from and what loading it cost. Fields
/// that do not apply (a reference or replay profile loads no model) are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// `reference`, `replay` or `onnx`.
    pub source: String,
    /// The model the profile names (an ONNX profile's `model`).
    pub model: Option<String>,
    /// The device it ran on (the provider the engine reports, else the configured device).
    pub device: Option<String>,
    pub precision: Option<String>,
    /// Total size of the model folder's files.
    pub size_on_disk_bytes: Option<u64>,
    /// Wall time to load the model into the engine, in milliseconds.
    pub load_ms: Option<f64>,
    /// Where the load facts come from: `loaded by this run`, or why there are none
    /// (`not loaded: every completion came from the generation cache`). An ONNX profile only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_facts: Option<String>,
}

impl Profile {
    /// The facts of `profile`, with what its opened source described (`describe`) and
    /// measured while loading (`load`), when it opened.
    pub fn of(
        profile: &ModelProfile,
        describe: &BTreeMap<String, String>,
        load: Option<LoadFacts>,
    ) -> Profile {
        let (source, model, device, precision) = match &profile.source {
            SourceConfig::Reference => ("reference", None, None, None),
            SourceConfig::Replay { .. } => ("replay", None, None, None),
            SourceConfig::Onnx {
                model,
                device,
                precision,
                ..
            } => (
                "onnx",
                Some(model.clone()),
                // The sessions (`cuda:0,cuda:1`) when the profile spreads over several GPUs.
                Some(
                    describe
                        .get("sessions")
                        .or_else(|| describe.get("device"))
                        .cloned()
                        .unwrap_or_else(|| device.to_string()),
                ),
                Some(precision.to_string()),
            ),
        };
        let onnx = source == "onnx";
        // A model answered from the generation cache was not loaded: its folder's size is
        // still known (the lazy source reads it), its load time is not.
        let described_size = || {
            describe
                .get("size_on_disk_bytes")
                .and_then(|b| b.parse().ok())
        };
        Profile {
            name: profile.name.clone(),
            source: source.to_string(),
            model,
            device,
            precision,
            size_on_disk_bytes: load.map_or_else(described_size, |l| l.size_on_disk_bytes),
            load_ms: load.map(|l| l.load_ms),
            load_facts: match (onnx, load, describe.get("loaded")) {
                (false, _, _) => None,
                (true, Some(_), _) => Some("loaded by this run".into()),
                (true, None, Some(why)) => Some(format!("not loaded: {why}")),
                (true, None, None) => None,
            },
        }
    }
}

/// Generation timing over the samples a source timed (a model; not replayed answers).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimingStats {
    /// Samples with a timing.
    pub samples: usize,
    /// Mean time to first token over those samples.
    pub mean_ttft_ms: f64,
    /// Decode rate per sequence: tokens after the first over the time spent decoding them,
    /// summed over samples (so long sequences weigh more). `None` when nothing was decoded.
    pub decode_tokens_per_s: Option<f64>,
    /// Time per case: the generation time (`total_ms`) of the case's samples, summed; its mean,
    /// median and 95th percentile (nearest rank) over the cases with timed samples.
    pub mean_case_ms: f64,
    pub p50_case_ms: f64,
    pub p95_case_ms: f64,
}

impl TimingStats {
    /// Over the timed samples of `outcomes`; `None` when no sample was timed.
    pub fn of<'a>(outcomes: impl Iterator<Item = &'a CaseOutcome>) -> Option<TimingStats> {
        let mut case_ms = Vec::new();
        let (mut samples, mut ttft) = (0, 0.0);
        let (mut decoded, mut decode_s) = (0.0, 0.0);
        for o in outcomes {
            let timed: Vec<_> = o.samples.iter().filter_map(|s| s.timing.as_ref()).collect();
            if timed.is_empty() {
                continue;
            }
            case_ms.push(timed.iter().map(|t| t.total_ms).sum::<f64>());
            for t in timed {
                samples += 1;
                ttft += t.time_to_first_token_ms;
                if t.decode_tokens_per_s > 0.0 && t.generated_tokens > 1 {
                    let n = (t.generated_tokens - 1) as f64;
                    decoded += n;
                    decode_s += n / t.decode_tokens_per_s;
                }
            }
        }
        if samples == 0 {
            return None;
        }
        Some(TimingStats {
            samples,
            mean_ttft_ms: ttft / samples as f64,
            decode_tokens_per_s: (decode_s > 0.0).then(|| decoded / decode_s),
            mean_case_ms: case_ms.iter().sum::<f64>() / case_ms.len() as f64,
            p50_case_ms: stats::percentile(&case_ms, 0.5)?,
            p95_case_ms: stats::percentile(&case_ms, 0.95)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, Precision};
    use crate::engine::Timing;

    fn timed(ms: &[(f64, usize, f64)]) -> CaseOutcome {
        let mut o = crate::snapshot::tests::outcome(true);
        let sample = o.samples[0].clone();
        o.samples = ms
            .iter()
            .map(|&(total_ms, generated_tokens, rate)| {
                let mut s = sample.clone();
                s.timing = Some(Timing {
                    prompt_tokens: 10,
                    generated_tokens,
                    time_to_first_token_ms: total_ms / 10.0,
                    decode_tokens_per_s: rate,
                    total_ms,
                    peak_host_bytes: None,
                    peak_device_bytes: None,
                    draft_tokens: 0,
                    accepted_draft_tokens: 0,
                });
                s
            })
            .collect();
        o
    }

    #[test]
    fn timing_over_samples_and_cases() {
        // Case times: 100 + 300 = 400, 200, 1000 (ms).
        let outcomes = [
            timed(&[(100.0, 11, 10.0), (300.0, 21, 20.0)]),
            timed(&[(200.0, 1, 0.0)]),
            timed(&[(1000.0, 41, 40.0)]),
            crate::snapshot::tests::outcome(true),
        ];
        let t = TimingStats::of(outcomes.iter()).unwrap();
        assert_eq!(t.samples, 4);
        assert!((t.mean_ttft_ms - 160.0 / 4.0).abs() < 1e-9, "{t:?}");
        // Decoded 10 + 20 + 40 tokens in 1 + 1 + 1 s; the one-token sample decoded nothing.
        assert!(
            (t.decode_tokens_per_s.unwrap() - 70.0 / 3.0).abs() < 1e-9,
            "{t:?}"
        );
        assert!((t.mean_case_ms - 1600.0 / 3.0).abs() < 1e-9, "{t:?}");
        assert_eq!((t.p50_case_ms, t.p95_case_ms), (400.0, 1000.0));
        assert!(TimingStats::of([crate::snapshot::tests::outcome(true)].iter()).is_none());
    }

    #[test]
    fn profile_facts_by_source() {
        let onnx = ModelProfile {
            name: "q".into(),
            source: SourceConfig::Onnx {
                model: "qwen".into(),
                device: Device::Auto,
                gpus: Default::default(),
                precision: Precision::Int4,
            },
            enabled: true,
            gate: None,
            generation: None,
            prompt: Default::default(),
        };
        let load = LoadFacts {
            load_ms: 1234.5,
            size_on_disk_bytes: Some(99),
        };
        let describe = [("device".to_string(), "cuda".to_string())].into();
        let p = Profile::of(&onnx, &describe, Some(load));
        assert_eq!(p.source, "onnx");
        assert_eq!(p.model.as_deref(), Some("qwen"));
        assert_eq!(p.device.as_deref(), Some("cuda"));
        assert_eq!(p.precision.as_deref(), Some("int4"));
        assert_eq!((p.size_on_disk_bytes, p.load_ms), (Some(99), Some(1234.5)));
        assert_eq!(p.load_facts.as_deref(), Some("loaded by this run"));
        // Answered from the cache: the folder's size, no load time, and why.
        let describe = [
            (
                "loaded".to_string(),
                "every completion came from the generation cache".to_string(),
            ),
            ("size_on_disk_bytes".to_string(), "99".to_string()),
        ]
        .into();
        let p = Profile::of(&onnx, &describe, None);
        assert_eq!((p.size_on_disk_bytes, p.load_ms), (Some(99), None));
        assert_eq!(
            p.load_facts.as_deref(),
            Some("not loaded: every completion came from the generation cache")
        );
        // Not opened yet: the configured device.
        let p = Profile::of(&onnx, &BTreeMap::new(), None);
        assert_eq!((p.device.as_deref(), p.load_ms), (Some("auto"), None));
        let reference = ModelProfile {
            source: SourceConfig::Reference,
            ..onnx
        };
        let p = Profile::of(&reference, &BTreeMap::new(), None);
        assert_eq!(
            (p.source.as_str(), p.model, p.device),
            ("reference", None, None)
        );
    }
}
