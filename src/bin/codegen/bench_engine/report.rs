//! The printed report of `codegen bench engine`: what was measured and how, the table of ours
//! against onnxruntime-genai (and llama.cpp where it ran), and the rounds behind the medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{BenchError, BenchOptions, Figures, Rounds, Suite, VsLlama};
use crate::bench_genai::{self, GENAI_VERSION, GenaiSuite};
use crate::bench_vs_llama::{self as vs, Side};

/// Everything the printed report reads.
pub(super) struct Report<'a> {
    pub(super) opts: &'a BenchOptions,
    pub(super) info: &'a BTreeMap<String, String>,
    pub(super) ids: &'a [Vec<u32>],
    pub(super) k: usize,
    pub(super) load_s: f64,
    pub(super) ours: &'a Figures,
    pub(super) genai: &'a Result<(Figures, GenaiSuite), BenchError>,
    pub(super) rounds: &'a Rounds,
    pub(super) suite: &'a Suite,
    pub(super) vs: Option<&'a VsLlama>,
}

impl Report<'_> {
    /// What was measured, how, and the memory it took.
    pub(super) fn header(&self, s: &mut String) {
        let (opts, info, ids) = (self.opts, self.info, self.ids);
        let _ = writeln!(
            s,
            "engine benchmark: {} (layout {}, kv {}), device {}, {} intra-op threads, tokens chosen on {}{}, {} top alternatives per token (ours)",
            opts.model.display(),
            info.get("layout").map(String::as_str).unwrap_or("?"),
            info.get("kv_type").map(String::as_str).unwrap_or("?"),
            info.get("device").map(String::as_str).unwrap_or("?"),
            info.get("threads").map(String::as_str).unwrap_or("?"),
            if info.get("device_head").is_some_and(|v| v == "true") {
                "the device"
            } else {
                "the host"
            },
            if info.get("cuda_graph").is_some_and(|v| v == "true") {
                ", decode steps replayed as CUDA graphs"
            } else {
                ""
            },
            opts.top_logprobs,
        );
        let _ = writeln!(
            s,
            "{} prompts from {} (mean {:.0} tokens), greedy, max {} new tokens; model load {:.1} s; peak host memory {:.0} MiB",
            ids.len(),
            opts.cases_dir.as_ref().map_or_else(
                || "the built-in coding prompts".to_string(),
                |d| d.display().to_string()
            ),
            ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len() as f64,
            opts.max_new_tokens,
            self.load_s,
            self.suite.peak as f64 / (1024.0 * 1024.0)
        );
        if let Some(d) = self.suite.device_peak {
            let _ = writeln!(
                s,
                "GPU memory held by the process: {:.0} MiB",
                d as f64 / (1024.0 * 1024.0)
            );
        }
    }

    /// Ours beside onnxruntime-genai's, figure by figure.
    pub(super) fn table(&self, s: &mut String) {
        let (ours, n, k) = (self.ours, self.ids.len(), self.k);
        let _ = writeln!(
            s,
            "{:<34} {:>16} {:>26}",
            "",
            "codegen (ort)",
            format!("onnxruntime-genai {GENAI_VERSION}")
        );
        let g = self.genai.as_ref().ok().map(|(f, _)| f);
        let col = |f: &dyn Fn(&Figures) -> String| g.map(f).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<34} {:>16.1} {:>26}",
            format!("decode tok/s, batch 1 ({k} prompts)"),
            ours.batch1_decode_tok_s,
            col(&|f| format!("{:.1}", f.batch1_decode_tok_s))
        );
        if let Some((tok_s, drafted, kept)) = ours.batch1_drafting {
            let _ = writeln!(
                s,
                "{:<34} {:>16} {:>26}",
                "  with prompt-lookup drafts",
                format!("{tok_s:.1} ({kept}/{drafted} kept)"),
                "-"
            );
        }
        let _ = writeln!(
            s,
            "{:<34} {:>16.0} {:>26}",
            "time to first token ms, batch 1",
            ours.batch1_ttft_ms,
            col(&|f| format!("{:.0}", f.batch1_ttft_ms))
        );
        let _ = writeln!(
            s,
            "{:<34} {:>16} {:>26}",
            "suite cases/min",
            format!("{:.1} (batch {})", ours.cases_per_min(n), ours.suite_batch),
            col(&|f| format!("{:.1} (batch {})", f.cases_per_min(n), f.suite_batch))
        );
        let _ = writeln!(
            s,
            "{:<34} {:>16.1} {:>26}",
            "suite generated tok/s",
            ours.suite_tok_s(),
            col(&|f| format!("{:.1}", f.suite_tok_s()))
        );
        let _ = writeln!(
            s,
            "{:<34} {:>16} {:>26}",
            "suite wall time s",
            format!("{:.1}", ours.suite_seconds),
            col(&|f| format!("{:.1}", f.suite_seconds))
        );
    }

    /// Ours beside llama.cpp with the ceilings (CPU runs), and each round's figures.
    pub(super) fn vs_llama(&self, s: &mut String) {
        let Some(v) = self.vs else {
            return;
        };
        let r = self.rounds;
        let ours = Side {
            decode_tok_s: self.ours.batch1_decode_tok_s,
            prefill_tok_s: vs::median(r.ours_prefill.iter().copied()),
            batch_tok_s: if r.ours_batch.is_empty() {
                self.ours.suite_tok_s()
            } else {
                vs::median(r.ours_batch.iter().copied())
            },
        };
        let table = vs::Table {
            llama: v.llama.as_ref().ok(),
            ours,
            theirs: (!r.llama.is_empty()).then(|| vs::llama_side(&r.llama)),
            rounds: r.ours.len(),
            workloads: &v.workloads,
            ceilings: &v.ceilings,
            llama_build: r.llama.first().map(|x| x.build.as_str()),
        };
        table.header(s);
        table.rows(s);
        for why in [v.llama.as_ref().err(), r.llama_err.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(s, "{why}");
        }
        let one = |v: &mut dyn Iterator<Item = f64>| -> Vec<f64> {
            v.map(|x| (x * 10.0).round() / 10.0).collect()
        };
        let _ = writeln!(
            s,
            "per round: ours prefill {:?}, batch {:?}; llama.cpp decode {:?}, prefill {:?}, batch {:?}",
            one(&mut r.ours_prefill.iter().copied()),
            one(&mut r.ours_batch.iter().copied()),
            one(&mut r.llama.iter().map(|x| x.decode_tok_s)),
            one(&mut r.llama.iter().map(|x| x.prefill_tok_s)),
            one(&mut r.llama.iter().map(|x| x.batch.generated_tok_s())),
        );
    }

    /// onnxruntime-genai's suite table (or why there is none), each round, the first text.
    pub(super) fn tail(&self, s: &mut String) {
        match self.genai {
            Ok(pair @ (f, _)) => {
                s.push_str(&bench_genai::suite_table(
                    self.ours,
                    self.suite.device_peak,
                    pair,
                ));
                let same = self
                    .ours
                    .outputs
                    .iter()
                    .zip(&f.outputs)
                    .filter(|(a, b)| a == b)
                    .count();
                let _ = writeln!(
                    s,
                    "greedy token sequences identical to onnxruntime-genai: {same}/{}",
                    self.ids.len()
                );
            }
            Err(e) => {
                let _ = writeln!(s, "onnxruntime-genai: {e}");
            }
        }
        let tok_s = |v: &[(f64, f64)]| {
            v.iter()
                .map(|r| (r.0 * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        };
        let _ = writeln!(
            s,
            "batch-1 decode tok/s per round: ours {:?}, onnxruntime-genai {:?}",
            tok_s(&self.rounds.ours),
            tok_s(&self.rounds.genai)
        );
        let _ = writeln!(s, "first completion (ours):\n{}", self.suite.first_text);
    }
}
