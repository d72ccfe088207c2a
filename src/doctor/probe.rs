//! The checks that need ONNX Runtime: open `model.onnx` and read its inputs and outputs
//! (judged by [`checks::graph`]), then generate a few greedy tokens through the engine itself
//! (`onnx::open_with` and `CompletionSource::complete`, as the suite does) on each provider,
//! twice, to see that it runs, that its logits are finite and that two runs agree.

use crate::machine;
use std::time::Instant;

use super::checks;
use super::snapshot::Snapshot;
use super::{DoctorOptions, ModelReport, Status, Verdict, check};
use crate::case::{Case, PromptMode};
use crate::device::Provider;
use crate::engine::onnx::folder::{GraphSpec, Layout};
use crate::engine::onnx::tensor::Float;
use crate::engine::onnx::{self, OnnxOptions, model, session};
use crate::engine::{Completion, CompletionSource, GenerationSettings, Request};
use crate::prompt::Prompt;
use crate::provision::runtime;

/// What the generation check asks in chat mode, and continues in completion mode.
const CHAT_PROMPT: &str =
    "Write a Python function `fib(n)` that returns the n-th Fibonacci number.";
const COMPLETE_PREFIX: &str = "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";

/// Run the ONNX Runtime checks, appending their verdicts and figures to `report`.
pub(super) fn run(snap: &Snapshot, options: &DoctorOptions, report: &mut ModelReport) {
    let graph = open_graph(snap, options, report);
    let blocking = [
        check::ONNX_LOAD,
        check::GRAPH,
        check::TOKENIZER,
        check::SPECIAL_TOKENS,
    ]
    .into_iter()
    .find(|c| !report.passed(c));
    for &provider in &options.providers {
        let names = [
            check::generate(provider),
            check::logits(provider),
            check::repeatable(provider),
        ];
        let Some(spec) = graph.as_ref().filter(|_| blocking.is_none()) else {
            for name in names {
                report.push(Verdict::skip(name, blocking.unwrap_or(check::GRAPH)));
            }
            continue;
        };
        // ONNX Runtime's GroupQueryAttention runs float16 only on CUDA: a CPU export (float32)
        // of the genai layout cannot run there, which says nothing about the model.
        if provider == Provider::Cuda && spec.layout == Layout::Genai && spec.kv_type == Float::F32
        {
            let [generate, logits, repeatable] = names;
            report.push(Verdict::warn(
                generate,
                "not run: this folder is a CPU export (float32 GroupQueryAttention, which CUDA does not run)",
                "`codegen doctor --device cuda NAME` checks the CUDA export (float16) of a default model or GGUF",
            ));
            report.push(Verdict::skip(logits, "generate:cuda"));
            report.push(Verdict::skip(repeatable, "generate:cuda"));
            continue;
        }
        generate(snap, options, provider, report);
    }
}

/// `onnx-load` and `graph`; the graph's contract when both passed.
fn open_graph(
    snap: &Snapshot,
    options: &DoctorOptions,
    report: &mut ModelReport,
) -> Option<GraphSpec> {
    if snap.size("model.onnx").is_none() {
        report.push(Verdict::skip(check::ONNX_LOAD, "files (model.onnx)"));
        report.push(Verdict::skip(check::GRAPH, check::ONNX_LOAD));
        return None;
    }
    let rt = match runtime::init(&options.runtime) {
        Ok(rt) => rt,
        Err(e) => {
            report.push(Verdict::fail(
                check::ONNX_LOAD,
                e.to_string(),
                format!(
                    "set ORT_DYLIB_PATH to a libonnxruntime.so {}, or let the harness fetch it (needs pip and the network once)",
                    runtime::ORT_VERSION
                ),
            ));
            report.push(Verdict::skip(check::GRAPH, check::ONNX_LOAD));
            return None;
        }
    };
    let spec = session::SessionSpec {
        provider: Provider::Cpu,
        cpu_fallback: false,
        threads: options.threads,
        graph: false,
        deterministic: true,
        spin: false,
        device_id: 0,
        own_attention: true,
    };
    let started = Instant::now();
    let opened = match session::open(&rt, &snap.dir, spec) {
        Ok(opened) => opened,
        Err(e) => {
            let remedy = if snap.size("model.onnx.data").is_some() {
                "model.onnx or model.onnx.data is damaged (an interrupted download or export, a truncated copy): export again or copy both files anew"
            } else {
                "model.onnx is not an ONNX model ONNX Runtime can load (damaged, or an operator this ONNX Runtime lacks): export again"
            };
            report.push(Verdict::fail(check::ONNX_LOAD, e.to_string(), remedy));
            report.push(Verdict::skip(check::GRAPH, check::ONNX_LOAD));
            return None;
        }
    };
    // Under CUDA, where its libraries came from (or why they are unusable).
    let cuda = match &rt.cuda {
        Some(Ok(libs)) => format!("; {libs}"),
        Some(Err(why)) => format!("; CUDA unusable: {why}"),
        None => String::new(),
    };
    report.push(Verdict::ok(
        check::ONNX_LOAD,
        format!(
            "loaded on CPU in {} ms (ONNX Runtime {}){cuda}",
            started.elapsed().as_millis(),
            runtime::ORT_VERSION
        ),
    ));
    let inputs: Vec<_> = opened
        .session
        .inputs()
        .iter()
        .map(|o| model::graph_value(o.name(), o.dtype()))
        .collect();
    let outputs: Vec<_> = opened
        .session
        .outputs()
        .iter()
        .map(|o| model::graph_value(o.name(), o.dtype()))
        .collect();
    drop(opened);
    let (verdict, spec) = checks::graph(snap, &inputs, &outputs);
    let ok = verdict.status != Status::Fail;
    report.push(verdict);
    spec.filter(|_| ok)
}

/// The case the generation check asks: chat when the template renders, else completion.
fn probe_case(chat: bool, max_new_tokens: usize) -> Case {
    let (mode, prompt, prefix) = match chat {
        true => (PromptMode::Chat, CHAT_PROMPT.to_string(), None),
        false => (
            PromptMode::Complete,
            String::new(),
            Some(COMPLETE_PREFIX.to_string()),
        ),
    };
    Case {
        key: "doctor/probe".into(),
        id: "probe".into(),
        category: "doctor".into(),
        path: "doctor/probe.toml".into(),
        mode,
        prompt,
        prefix,
        entry_point: "fib".into(),
        reference: None,
        setup: None,
        check: Some("def check(candidate):\n    pass\n".into()),
        tests: Vec::new(),
        tags: Vec::new(),
        timeout_ms: None,
        max_new_tokens: Some(max_new_tokens),
        stop: Vec::new(),
        stop_at_answer: None,
    }
}

/// Open the folder with the engine and generate once: the completion and the load time.
fn generate_once(
    snap: &Snapshot,
    options: &DoctorOptions,
    provider: Provider,
    case: &Case,
) -> Result<(Completion, f64), String> {
    let settings = GenerationSettings {
        max_new_tokens: options.max_new_tokens,
        top_logprobs: 1,
        batch_size: crate::engine::BatchSize::Rows(1),
        ..GenerationSettings::default()
    };
    let mut o = OnnxOptions::new(
        options.runtime.clone(),
        options.provisioner.cache.clone(),
        settings,
    );
    o.provider = provider;
    o.no_cache = true;
    o.progress = false;
    o.threads = options.threads;
    let started = Instant::now();
    let source = onnx::open_with(&snap.dir, o).map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let prompt = Prompt::for_case(case);
    let mut out = source
        .complete(&Request::new(case, &prompt, 1, None))
        .map_err(|e| e.to_string())?;
    let completion = out.pop().ok_or("the engine returned no completion")?;
    Ok((completion, load_ms))
}

fn generate(
    snap: &Snapshot,
    options: &DoctorOptions,
    provider: Provider,
    report: &mut ModelReport,
) {
    // Chat when the template renders (a warning can still mean it renders), else completion.
    let chat = report.passed(check::CHAT_TEMPLATE)
        && snap
            .tokenizer_config
            .ready()
            .is_some_and(|c| c.get("chat_template").is_some());
    let case = probe_case(chat, options.max_new_tokens);
    let first_provider = report.load_ms.is_none();
    machine::reset_peak_host();
    let first = generate_once(snap, options, provider, &case);
    let peak = machine::peak_host_bytes();
    let (completion, load_ms) = match first {
        Ok(done) => done,
        Err(e) => {
            let remedy = match provider {
                Provider::Cuda => {
                    "the message says what CUDA lacks; `--device cpu` checks the rest"
                }
                Provider::Cpu => {
                    "the engine could not run the model: `codegen bench engine --model DIR --device cpu --skip-genai` runs it alone with the full message"
                }
            };
            report.push(Verdict::fail(check::generate(provider), e, remedy));
            report.push(Verdict::skip(
                check::logits(provider),
                &check::generate(provider),
            ));
            report.push(Verdict::skip(
                check::repeatable(provider),
                &check::generate(provider),
            ));
            return;
        }
    };
    let trace = completion.tokens.clone().unwrap_or_default();
    let timing = completion.timing.clone().unwrap_or_default();
    let ms_per_token = (timing.decode_tokens_per_s > 0.0).then(|| 1e3 / timing.decode_tokens_per_s);
    if first_provider {
        report.load_ms = Some(load_ms);
        report.ms_per_token = ms_per_token;
        // VmHWM after the run covers the load too, which the engine's own figure does not.
        report.peak_host_bytes = peak.or(timing.peak_host_bytes);
    }
    let preview: String = completion.text.chars().take(48).collect();
    report.push(Verdict::ok(
        check::generate(provider),
        format!(
            "{} {} tokens, loaded in {load_ms:.0} ms, {}: {preview:?}",
            if chat { "chat:" } else { "completion:" },
            trace.ids.len(),
            ms_per_token.map_or_else(|| "one step".into(), |ms| format!("{ms:.1} ms/token")),
        ),
    ));
    report.push(logits_verdict(provider, &trace.logprobs));
    let verdict = match generate_once(snap, options, provider, &case) {
        Err(e) => Verdict::fail(
            check::repeatable(provider),
            format!("the second load failed: {e}"),
            "the model loads once but not twice: check free memory and the files' permissions",
        ),
        Ok((again, _)) => {
            let again = again.tokens.unwrap_or_default().ids;
            repeat_verdict(provider, &trace.ids, &again)
        }
    };
    report.push(verdict);
}

/// The chosen token's log-probability is finite exactly when that step's logits hold no NaN
/// and no +Inf (log-sum-exp over them is NaN otherwise; see `engine::onnx::sampling::pick`).
pub(super) fn logits_verdict(provider: Provider, logprobs: &[f32]) -> Verdict {
    let name = check::logits(provider);
    match logprobs.iter().position(|lp| !lp.is_finite()) {
        Some(step) => Verdict::fail(
            name,
            format!(
                "step {step}'s logits hold NaN or +Inf (log-probability {})",
                logprobs[step]
            ),
            "the weights hold NaN/Inf or the graph overflows (fp16 activations): export again, at fp32 or int8, or from another GGUF",
        ),
        None => Verdict::ok(name, format!("{} steps, all logits finite", logprobs.len())),
    }
}

/// Two greedy runs on fresh loads must agree on CPU (deterministic kernels); CUDA kernels are
/// not bit-reproducible, so a difference there is a warning.
pub(super) fn repeat_verdict(provider: Provider, first: &[u32], second: &[u32]) -> Verdict {
    let name = check::repeatable(provider);
    match first.iter().zip(second).position(|(a, b)| a != b) {
        None if first.len() == second.len() => {
            Verdict::ok(name, format!("two loads, same {} tokens", first.len()))
        }
        at => {
            let at = at.unwrap_or(first.len().min(second.len()));
            let detail = format!(
                "two greedy runs differ from token {at} ({} and {} tokens)",
                first.len(),
                second.len()
            );
            match provider {
                Provider::Cpu => Verdict::fail(
                    name,
                    detail,
                    "greedy decoding on CPU must repeat: the graph uses a non-deterministic or uninitialised input; report it with the folder",
                ),
                Provider::Cuda => Verdict::warn(
                    name,
                    detail,
                    "CUDA kernels are not bit-reproducible: near-ties may flip; compare on CPU",
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_case_is_what_its_case_file_would_say() {
        for chat in [true, false] {
            let body = if chat {
                format!("prompt = {}\n", toml::Value::String(CHAT_PROMPT.into()))
            } else {
                format!(
                    "mode = \"complete\"\nprefix = {}\n",
                    toml::Value::String(COMPLETE_PREFIX.into())
                )
            };
            let text = format!(
                "{body}entry_point = \"fib\"\nmax_new_tokens = 7\ncheck = \"def check(candidate):\\n    pass\\n\"\n"
            );
            let path = std::path::PathBuf::from("doctor/probe.toml");
            let parsed = crate::case::parse(std::path::Path::new("doctor"), &path, &text).unwrap();
            assert_eq!(probe_case(chat, 7), parsed);
        }
    }

    #[test]
    fn non_finite_logprobs_and_diverging_runs_are_named() {
        assert_eq!(
            logits_verdict(Provider::Cpu, &[-0.1, -2.0]).status,
            Status::Ok
        );
        let nan = logits_verdict(Provider::Cpu, &[-0.1, f32::NAN]);
        assert_eq!(nan.status, Status::Fail);
        assert!(nan.detail.starts_with("step 1's logits"), "{}", nan.detail);
        assert_eq!(
            repeat_verdict(Provider::Cpu, &[1, 2], &[1, 2]).status,
            Status::Ok
        );
        let cpu = repeat_verdict(Provider::Cpu, &[1, 2, 3], &[1, 5, 3]);
        assert_eq!(cpu.status, Status::Fail);
        assert!(cpu.detail.contains("from token 1"), "{}", cpu.detail);
        assert_eq!(
            repeat_verdict(Provider::Cuda, &[1], &[1, 2]).status,
            Status::Warn
        );
        assert!(probe_case(true, 4).prompt.contains("fib"));
    }
}
