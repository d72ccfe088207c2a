//! The ONNX Runtime engine against tiny models built by harness/python/make_tiny_models.py
//! (numpy + onnx in a venv under the cache dir; ONNX Runtime fetched by the runtime discovery).
//! Greedy output must equal the script's numpy reference decode, which recomputes the whole
//! sequence each step without a KV cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use codegen_harness::cache::DirLock;
use codegen_harness::case::{self, Case};
use codegen_harness::device::Provider;
use codegen_harness::engine::onnx::{self, AttentionKernel, OnnxOptions, OnnxSource};
use codegen_harness::engine::{
    AcceptedOutput, BatchSize, Completion, CompletionSource, FinishReason, FollowAccepted,
    Followed, GenerationSettings, Request, TokenTrace,
};
use codegen_harness::env::Env;
use codegen_harness::prompt::{Prompt, PromptProtocol, SystemMessage};
use codegen_harness::provision::{Provisioner, TINY_MODELS_VENV};
use codegen_harness::runtime::RuntimeSpec;
use sha2::{Digest, Sha256};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/harness/python/make_tiny_models.py"
);

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env::from_process().expect("a valid environment"))
}

fn python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        Provisioner::from_env(env())
            .venv(&TINY_MODELS_VENV, &|msg| eprintln!("{msg}"))
            .expect("the tiny-models venv")
            .python
    })
}

fn models() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = std::fs::read(SCRIPT).unwrap();
        let tag: String = Sha256::digest(&script)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = env().cache.join("test-models").join(format!("tiny-{tag}"));
        let _lock = DirLock::acquire(&dir).unwrap();
        if !dir.join("genai-fp16").join("model.onnx").exists() {
            run(Command::new(python()).arg(SCRIPT).arg("build").arg(&dir));
        }
        dir
    })
}

fn reference(model: &Path, ids: &[u32], max_new: usize) -> Vec<u32> {
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let out = run(Command::new(python())
        .arg(SCRIPT)
        .arg("reference")
        .arg(model)
        .arg("--ids")
        .arg(ids.join(","))
        .arg("--max-new")
        .arg(max_new.to_string()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn complete_case(name: &str, prefix: &str, max_new: usize, stop: &[&str]) -> Case {
    let stop: Vec<String> = stop.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        "mode = \"complete\"\nprefix = {prefix:?}\nentry_point = \"f\"\nmax_new_tokens = {max_new}\nstop = [{}]\n[[tests]]\ncall = \"f()\"\nexpected = \"1\"\n",
        stop.join(", ")
    );
    case::parse(
        Path::new("cases"),
        &PathBuf::from(format!("cases/tiny/{name}.toml")),
        &text,
    )
    .unwrap()
}

fn chat_case(name: &str, prompt: &str, max_new: usize) -> Case {
    let text = format!(
        "prompt = {prompt:?}\nentry_point = \"f\"\nmax_new_tokens = {max_new}\n[[tests]]\ncall = \"f()\"\nexpected = \"1\"\n"
    );
    case::parse(
        Path::new("cases"),
        &PathBuf::from(format!("cases/tiny/{name}.toml")),
        &text,
    )
    .unwrap()
}

/// CPU, one thread, no cache, no progress bar: what most tests here open a folder with.
fn options_for(provider: Provider, settings: GenerationSettings) -> OnnxOptions {
    OnnxOptions::new(
        RuntimeSpec::from_env(provider, env()),
        env().cache.clone(),
        settings,
    )
}

fn test_options(settings: GenerationSettings) -> OnnxOptions {
    let mut opts = options_for(Provider::Cpu, settings);
    opts.no_cache = true;
    opts.progress = false;
    opts.threads = 1;
    opts
}

fn source(folder: &str, settings: GenerationSettings) -> OnnxSource {
    onnx::open_with(&models().join(folder), test_options(settings)).unwrap()
}

fn ask(src: &OnnxSource, case: &Case, samples: usize) -> Vec<Completion> {
    let prompt = Prompt::for_case(case);
    src.complete(&Request::new(case, &prompt, samples, None))
        .unwrap()
}

/// Generate `samples` completions of every case through the scheduler (one `prepare`, then
/// batches), case after case.
fn batched(src: &OnnxSource, cases: &[Case], samples: usize) -> Vec<Completion> {
    let prompts: Vec<Prompt> = cases.iter().map(Prompt::for_case).collect();
    let requests: Vec<Request<'_>> = cases
        .iter()
        .zip(&prompts)
        .map(|(case, prompt)| Request::new(case, prompt, samples, None))
        .collect();
    src.prepare(&requests).unwrap();
    requests
        .iter()
        .flat_map(|r| src.complete(r).unwrap())
        .collect()
}

/// [`batched`], keeping each completion's token trace.
fn batched_traces(src: &OnnxSource, cases: &[Case]) -> Vec<TokenTrace> {
    batched(src, cases, 1)
        .into_iter()
        .map(|c| c.tokens.unwrap())
        .collect()
}

/// Two runs over the same cases chose the same tokens with the same log-probabilities.
fn assert_traces_agree(a: &[TokenTrace], b: &[TokenTrace], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.ids, y.ids, "{what}");
        for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
            assert!((p - q).abs() < 1e-3, "{what}: logprob {p} vs {q}");
        }
    }
}

const PREFIXES: &[&str] = &[
    "def add(a, b):\n    return",
    "x",
    "for i in range(10):\n    print(i)\n# then the rest of the program goes here, with a longer prompt",
    "héllo wörld ✓",
];

fn greedy_matches_reference(folder: &str) {
    let src = source(folder, GenerationSettings::default());
    let cases: Vec<Case> = PREFIXES
        .iter()
        .enumerate()
        .map(|(i, p)| complete_case(&format!("c{i}"), p, 24, &[]))
        .collect();
    let prompts: Vec<Prompt> = cases.iter().map(Prompt::for_case).collect();
    // Batched (the scheduler, batch_size auto: 8 on a CPU, right padding) ...
    for (got, prompt) in batched(&src, &cases, 1).iter().zip(&prompts) {
        let ids = src.prompt_ids(prompt).unwrap();
        let tokens = got.tokens.as_ref().unwrap();
        let expected = reference(&models().join(folder), &ids, 24);
        assert_eq!(tokens.ids, expected, "{folder}: prompt {prompt:?}");
        assert_eq!(tokens.logprobs.len(), tokens.ids.len());
        assert_eq!(tokens.top[0].len(), 5);
        assert!(tokens.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
        // the chosen greedy token is the most likely alternative
        assert_eq!(tokens.top[0][0].0, tokens.ids[0]);
        let timing = got.timing.as_ref().unwrap();
        assert_eq!(timing.prompt_tokens, ids.len());
        assert!(timing.peak_host_bytes.unwrap() > 0);
    }
    assert_eq!(src.generated_sequences(), PREFIXES.len() as u64);
    // ... and one at a time give the same.
    let single = source(folder, GenerationSettings::default());
    let got = ask(&single, &cases[2], 1).remove(0);
    let ids = single.prompt_ids(&prompts[2]).unwrap();
    assert_eq!(
        got.tokens.unwrap().ids,
        reference(&models().join(folder), &ids, 24)
    );
}

#[test]
fn greedy_matches_reference_optimum_layout() {
    greedy_matches_reference("optimum");
}

#[test]
fn greedy_matches_reference_genai_layout() {
    greedy_matches_reference("genai");
}

#[test]
fn several_sessions_share_the_batches_and_agree_with_one() {
    let settings = GenerationSettings {
        batch_size: BatchSize::Rows(4),
        ..GenerationSettings::default()
    };
    let cases: Vec<Case> = (0..6)
        .map(|i| complete_case(&format!("s{i}"), PREFIXES[i % PREFIXES.len()], 12 + i, &[]))
        .collect();
    let mut outs = Vec::new();
    for sessions in [1usize, 2] {
        let mut opts = test_options(settings.clone());
        opts.device_ids = vec![0; sessions];
        let src = onnx::open_with(&models().join("genai"), opts).unwrap();
        let got: Vec<Vec<u32>> = batched_traces(&src, &cases)
            .into_iter()
            .map(|t| t.ids)
            .collect();
        let usage = src.devices();
        assert_eq!(usage.len(), sessions);
        // Six sequences at four per batch over two sessions: one round of three each.
        let per: Vec<usize> = usage.iter().map(|u| u.sequences).collect();
        match sessions {
            1 => assert_eq!(per, vec![6]),
            _ => assert_eq!(per, vec![3, 3], "{usage:?}"),
        }
        let tokens: u64 = usage.iter().map(|u| u.generated_tokens).sum();
        assert_eq!(tokens as usize, got.iter().map(Vec::len).sum::<usize>());
        outs.push(got);
    }
    // Results come back in case order whichever session generated them.
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn shared_and_growing_kv_cache_agree() {
    let settings = GenerationSettings {
        batch_size: BatchSize::Rows(4),
        ..GenerationSettings::default()
    };
    let cases: Vec<Case> = PREFIXES
        .iter()
        .enumerate()
        .map(|(i, p)| complete_case(&format!("kv{i}"), p, 16, &[]))
        .collect();
    let mut outs = Vec::new();
    for shared in [true, false] {
        let mut opts = test_options(settings.clone());
        opts.shared_kv = shared;
        let src = onnx::open_with(&models().join("genai"), opts).unwrap();
        assert_eq!(src.describe()["shared_kv"], shared.to_string());
        let got: Vec<Vec<u32>> = batched_traces(&src, &cases)
            .into_iter()
            .map(|t| t.ids)
            .collect();
        outs.push(got);
    }
    assert_eq!(outs[0], outs[1]);
}

/// Eight sequences of different lengths through two rows: each row takes the next sequence
/// when its own ends (prefilled alone into that row's cache while the other decodes on), and the
/// last one decodes alone. Every output is still the reference decode's, and the rows ran as
/// one batch.
#[test]
fn rows_take_the_next_sequence_as_theirs_end_and_agree_with_the_reference() {
    let settings = GenerationSettings {
        batch_size: BatchSize::Rows(2),
        ..GenerationSettings::default()
    };
    let cases: Vec<Case> = (0..8)
        .map(|i| {
            let prefix = PREFIXES[i % PREFIXES.len()];
            complete_case(
                &format!("r{i}"),
                prefix,
                [3, 17, 1, 9, 24, 2, 11, 6][i],
                &[],
            )
        })
        .collect();
    let src = source("genai", settings);
    let got = batched_traces(&src, &cases);
    for (case, trace) in cases.iter().zip(&got) {
        let ids = src.prompt_ids(&Prompt::for_case(case)).unwrap();
        let expected = reference(&models().join("genai"), &ids, case.max_new_tokens.unwrap());
        assert_eq!(trace.ids, expected, "{}", case.id);
    }
    let usage = src.devices();
    assert_eq!((usage[0].batches, usage[0].sequences), (1, 8), "{usage:?}");
}

/// Draft tokens looked up by any earlier token (so nearly every step drafts, and most drafts
/// miss), through one row and through three (which draft once one row is left), and with
/// drafting off: every output is still the reference decode's, the chosen tokens'
/// log-probabilities (read from the several-token verification steps) agree with plain
/// decoding's, and the results count the drafts.
#[test]
fn draft_tokens_never_change_greedy_output() {
    let cases: Vec<Case> = (0..3)
        .map(|i| complete_case(&format!("d{i}"), PREFIXES[i], [40, 24, 31][i], &[]))
        .collect();
    let mut traces = Vec::new();
    for (rows, drafts) in [(1, true), (3, true), (1, false)] {
        let mut opts = test_options(GenerationSettings {
            batch_size: BatchSize::Rows(rows),
            ..GenerationSettings::default()
        });
        opts.draft_min_ngram = 1;
        opts.drafts = drafts;
        let src = onnx::open_with(&models().join("genai"), opts).unwrap();
        let got = batched(&src, &cases, 1);
        let mut drafted = (0, 0);
        for (case, completion) in cases.iter().zip(&got) {
            let ids = src.prompt_ids(&Prompt::for_case(case)).unwrap();
            let expected = reference(&models().join("genai"), &ids, case.max_new_tokens.unwrap());
            let tokens = completion.tokens.as_ref().unwrap();
            assert_eq!(tokens.ids, expected, "{} rows {rows}", case.id);
            let timing = completion.timing.as_ref().unwrap();
            assert!(timing.accepted_draft_tokens <= timing.draft_tokens);
            drafted.0 += timing.draft_tokens;
            drafted.1 += timing.accepted_draft_tokens;
        }
        match drafts {
            true => assert!(drafted.0 > 0, "rows {rows}: nothing was drafted"),
            false => assert_eq!(drafted, (0, 0)),
        }
        eprintln!(
            "rows {rows}: {} draft tokens, {} kept",
            drafted.0, drafted.1
        );
        traces.push(
            got.into_iter()
                .map(|c| c.tokens.unwrap())
                .collect::<Vec<_>>(),
        );
    }
    assert_traces_agree(&traces[0], &traces[2], "drafts against plain decoding");
    assert_traces_agree(&traces[1], &traces[2], "three rows against plain decoding");
}

/// Whether this CPU runs the harness's attention kernel.
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[test]
fn our_attention_kernel_agrees_with_onnx_runtimes_and_the_reference() {
    // Rows of different lengths (prompts of 1 to 30 tokens), batched prefill with padding, a
    // lone row, and rows recycled as others end: every attention path the CPU engine takes.
    let cases: Vec<Case> = (0..4)
        .map(|i| complete_case(&format!("a{i}"), PREFIXES[i], [40, 12, 31, 20][i], &[]))
        .collect();
    let mut traces = Vec::new();
    for (kernel, rows) in [
        (AttentionKernel::OnnxRuntime, 2),
        (AttentionKernel::Own, 2),
        (AttentionKernel::Own, 4),
        (AttentionKernel::Own, 1),
    ] {
        let mut opts = test_options(GenerationSettings {
            batch_size: BatchSize::Rows(rows),
            ..GenerationSettings::default()
        });
        opts.attention = kernel;
        let src = onnx::open_with(&models().join("genai"), opts).unwrap();
        let ours = kernel == AttentionKernel::Own && has_avx2_fma();
        let named = if ours {
            "codegen (attention/)"
        } else {
            "onnxruntime"
        };
        assert_eq!(src.describe()["attention"], named, "{kernel:?}");
        let got = batched(&src, &cases, 1);
        for (case, completion) in cases.iter().zip(&got) {
            let ids = src.prompt_ids(&Prompt::for_case(case)).unwrap();
            let expected = reference(&models().join("genai"), &ids, case.max_new_tokens.unwrap());
            let tokens = completion.tokens.as_ref().unwrap();
            assert_eq!(tokens.ids, expected, "{} {kernel:?} rows {rows}", case.id);
        }
        traces.push(
            got.into_iter()
                .map(|c| c.tokens.unwrap())
                .collect::<Vec<_>>(),
        );
    }
    for (i, what) in [(1, "2 rows"), (2, "4 rows"), (3, "1 row")] {
        assert_traces_agree(
            &traces[0],
            &traces[i],
            &format!("our kernel at {what} against ONNX Runtime's"),
        );
    }
}

#[test]
fn fp16_kv_cache_runs_and_agrees_at_first() {
    let src = source("genai-fp16", GenerationSettings::default());
    let case = complete_case("f16", PREFIXES[0], 16, &[]);
    let got = ask(&src, &case, 1).remove(0);
    let ids = src.prompt_ids(&Prompt::for_case(&case)).unwrap();
    let expected = reference(&models().join("genai-fp16"), &ids, 16);
    let tokens = got.tokens.unwrap();
    assert_eq!(tokens.ids.len(), 16);
    assert_eq!(tokens.ids[..4], expected[..4]);
}

#[test]
fn sampling_is_seeded_and_samples_differ() {
    let settings = GenerationSettings {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        seed: 42,
        ..GenerationSettings::default()
    };
    let case = complete_case("s", PREFIXES[0], 20, &[]);
    let a = ask(&source("genai", settings.clone()), &case, 3);
    let b = ask(&source("optimum", settings.clone()), &case, 3);
    let texts = |v: &[Completion]| v.iter().map(|c| c.text.clone()).collect::<Vec<_>>();
    // Same seed, same samples (and both layouts compute the same model).
    assert_eq!(texts(&a), texts(&b));
    // Distinct samples across indices.
    assert_ne!(a[0].text, a[1].text);
    assert_ne!(a[1].text, a[2].text);
    // Another seed, other samples.
    let c = ask(
        &source(
            "genai",
            GenerationSettings {
                seed: 43,
                ..settings
            },
        ),
        &case,
        3,
    );
    assert_ne!(texts(&a), texts(&c));
}

#[test]
fn stop_strings_cut_exactly_and_eos_stops() {
    let full_case = complete_case("full", PREFIXES[0], 24, &[]);
    let src = source("genai", GenerationSettings::default());
    let full = ask(&src, &full_case, 1).remove(0);
    assert_eq!(full.finish_reason, Some(FinishReason::MaxNewTokens));
    // A stop string taken from the middle of the greedy text.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 12, "greedy text too short: {:?}", full.text);
    let stop: String = chars[8..11].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let case = complete_case("stop", PREFIXES[0], 24, &[&stop]);
    let got = ask(&src, &case, 1).remove(0);
    assert_eq!(got.text, full.text[..cut], "stop {stop:?}");
    assert_eq!(got.finish_reason, Some(FinishReason::Stop(stop.clone())));
    // Results and the generation cache keep the words they always had.
    assert_eq!(
        serde_json::to_value(&got.finish_reason).unwrap(),
        serde_json::Value::String(format!("stop string {stop:?}"))
    );

    // EOS from generation_config.json (a list): make the 6th greedy token an EOS id.
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(models().join("genai")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
    }
    let ids = full.tokens.as_ref().unwrap().ids.clone();
    let eos_tok = ids[5];
    let first = ids.iter().position(|&t| t == eos_tok).unwrap();
    std::fs::write(
        tmp.path().join("generation_config.json"),
        format!("{{\"eos_token_id\": [{eos_tok}, 9999]}}"),
    )
    .unwrap();
    let mut opts = options_for(Provider::Cpu, GenerationSettings::default());
    opts.no_cache = true;
    opts.threads = 1;
    let eos_src = onnx::open_with(tmp.path(), opts).unwrap();
    let got = ask(&eos_src, &full_case, 1).remove(0);
    assert_eq!(got.finish_reason, Some(FinishReason::Eos));
    assert_eq!(got.tokens.unwrap().ids, ids[..=first]);
}

#[test]
fn chat_prompts_use_the_template() {
    let src = source("optimum", GenerationSettings::default());
    let case = chat_case("chat", "Write f.", 8);
    let ids = src.prompt_ids(&Prompt::for_case(&case)).unwrap();
    // <|im_start|> is a single special token (256 bytes + 12 merges, then <|endoftext|>, <|im_start|>).
    assert_eq!(ids[0], 269);
    let got = ask(&src, &case, 1).remove(0);
    assert_eq!(got.tokens.unwrap().ids.len(), 8);
}

#[test]
fn a_prefill_starts_the_reply_and_the_completion() {
    let src = source("optimum", GenerationSettings::default());
    let case = chat_case("chat", "Write f.", 4);
    let protocol = PromptProtocol {
        system: SystemMessage::None,
        prefill: Some("```python\n".into()),
        mode: None,
    };
    let prompt = Prompt::for_case_with(&case, &protocol);
    let plain = src.prompt_ids(&Prompt::for_case(&case)).unwrap();
    let ids = src.prompt_ids(&prompt).unwrap();
    // No system message, but the prefill's tokens end the prompt.
    assert_ne!(ids, plain);
    let tail = src
        .prompt_ids(&Prompt::Complete {
            prefix: "```python\n".into(),
        })
        .unwrap();
    assert!(ids.ends_with(&tail[tail.len() - 2..]), "{ids:?} {tail:?}");
    let got = src
        .complete(&Request::new(&case, &prompt, 1, None))
        .unwrap()
        .remove(0);
    assert!(got.text.starts_with("```python\n"), "{:?}", got.text);
    assert_eq!(got.tokens.unwrap().ids.len(), 4);
}

#[test]
fn cache_hit_avoids_regeneration() {
    let dir = tempfile::tempdir().unwrap();
    let settings = GenerationSettings {
        temperature: 0.8,
        seed: 7,
        ..GenerationSettings::default()
    };
    let open = || {
        let mut opts = options_for(Provider::Cpu, settings.clone());
        opts.threads = 1;
        opts.progress = false;
        opts.cache = dir.path().to_path_buf();
        onnx::open_with(&models().join("genai"), opts).unwrap()
    };
    let case = complete_case("cached", PREFIXES[1], 12, &[]);
    let first = open();
    let a = ask(&first, &case, 2);
    assert_eq!(first.generated_sequences(), 2);
    assert_ne!(a[0].text, a[1].text, "cached samples must stay distinct");
    let second = open();
    let b = ask(&second, &case, 2);
    assert_eq!(
        second.generated_sequences(),
        0,
        "second run must hit the cache"
    );
    let strip = |v: &[Completion]| {
        v.iter()
            .map(|c| (c.text.clone(), c.tokens.as_ref().map(|t| t.ids.clone())))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    // A third sample is new work; the first two still come from the cache.
    let c = ask(&second, &case, 3);
    assert_eq!(second.generated_sequences(), 1);
    assert_eq!(strip(&c[..2]), strip(&a));
}

#[test]
fn broken_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = onnx::open_with(
        tmp.path(),
        options_for(Provider::Cpu, GenerationSettings::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("missing model.onnx, tokenizer.json, tokenizer_config.json"),
        "{err}"
    );
    // A graph without a KV cache: rename the inputs by writing a model whose inputs differ.
    for f in std::fs::read_dir(models().join("genai")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
    }
    std::fs::write(tmp.path().join("model.onnx"), b"not a model").unwrap();
    let err = onnx::open_with(
        tmp.path(),
        options_for(Provider::Cpu, GenerationSettings::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.onnx"), "{err}");
    std::fs::copy(
        models().join("genai").join("model.onnx"),
        tmp.path().join("model.onnx"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("tokenizer.json"), b"{}").unwrap();
    let err = onnx::open_with(
        tmp.path(),
        options_for(Provider::Cpu, GenerationSettings::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn cuda_request_without_gpu_says_why() {
    if Path::new("/proc/driver/nvidia/version").exists() {
        return;
    }
    // Loading a CPU-only runtime and asking for CUDA must fail with advice, not fall back.
    let _ = models();
    let err = onnx::open_with(
        &models().join("genai"),
        options_for(Provider::Cuda, GenerationSettings::default()),
    );
    if let Err(e) = err {
        let msg = e.to_string();
        assert!(msg.contains("CUDA") || msg.contains("cuda"), "{msg}");
    } else {
        panic!("asking for CUDA without a GPU must be an error");
    }
}

#[test]
fn same_settings_give_identical_bytes_with_all_cores() {
    let settings = GenerationSettings {
        temperature: 0.7,
        top_p: 0.9,
        seed: 3,
        batch_size: BatchSize::Rows(3),
        ..GenerationSettings::default()
    };
    let cases: Vec<Case> = PREFIXES
        .iter()
        .enumerate()
        .map(|(i, p)| complete_case(&format!("det{i}"), p, 20, &[]))
        .collect();
    let run = || {
        let mut opts = options_for(Provider::Cpu, settings.clone());
        opts.no_cache = true;
        opts.progress = false;
        opts.threads = 0;
        let src = onnx::open_with(&models().join("genai"), opts).unwrap();
        batched(&src, &cases, 2)
            .into_iter()
            .map(|c| (c.text, c.tokens.unwrap().logprobs))
            .collect::<Vec<_>>()
    };
    let a = run();
    let b = run();
    assert_eq!(a.len(), PREFIXES.len() * 2);
    for ((ta, la), (tb, lb)) in a.iter().zip(&b) {
        assert_eq!(ta.as_bytes(), tb.as_bytes());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(la), bits(lb));
    }
}

/// The head that chooses greedy tokens on the device (on by default under CUDA) gives the same
/// tokens, log-probabilities and alternatives as the host path. Forced on here, on CPU, with
/// fp32 and fp16 logits, batched prompts of different lengths.
#[test]
fn device_head_agrees_with_the_host_path() {
    for folder in ["genai", "genai-fp16"] {
        let cases: Vec<Case> = PREFIXES
            .iter()
            .enumerate()
            .map(|(i, p)| complete_case(&format!("head{i}"), p, 12, &[]))
            .collect();
        let mut outs = Vec::new();
        for head in [false, true] {
            let mut opts = test_options(GenerationSettings::default());
            opts.device_head = Some(head);
            let src = onnx::open_with(&models().join(folder), opts).unwrap();
            assert_eq!(src.describe()["device_head"], head.to_string());
            outs.push(batched_traces(&src, &cases));
        }
        assert_traces_agree(&outs[0], &outs[1], folder);
        for (host, head) in outs[0].iter().zip(&outs[1]) {
            for (ta, tb) in host.top.iter().zip(&head.top) {
                let ids_a: Vec<u32> = ta.iter().map(|t| t.0).collect();
                let ids_b: Vec<u32> = tb.iter().map(|t| t.0).collect();
                assert_eq!(ids_a, ids_b, "{folder}");
            }
        }
    }
}

/// A wide greedy batch on the device head (16+ rows) records each step's tokens on another
/// thread while the next step runs, and hands each row back as soon as it finishes. Rows that
/// stop at different steps (max_new_tokens from 2 to 21, a stop string on some) get the same
/// tokens and texts as the host path, which records each step before the next.
#[test]
fn a_wide_pipelined_batch_agrees_with_the_host_path() {
    let cases: Vec<Case> = (0..20)
        .map(|i| {
            let stop: &[&str] = if i % 3 == 0 { &["\n"] } else { &[] };
            complete_case(
                &format!("wide{i}"),
                PREFIXES[i % PREFIXES.len()],
                2 + i,
                stop,
            )
        })
        .collect();
    let mut outs = Vec::new();
    for head in [false, true] {
        let mut opts = test_options(GenerationSettings {
            batch_size: BatchSize::Rows(32),
            ..GenerationSettings::default()
        });
        opts.device_head = Some(head);
        opts.cuda_graph = Some(head);
        let src = onnx::open_with(&models().join("genai"), opts).unwrap();
        outs.push(batched(&src, &cases, 1));
    }
    let traces = |c: &[Completion]| -> Vec<TokenTrace> {
        c.iter().map(|c| c.tokens.clone().unwrap()).collect()
    };
    assert_traces_agree(&traces(&outs[0]), &traces(&outs[1]), "wide batch");
    for ((host, head), case) in outs[0].iter().zip(&outs[1]).zip(&cases) {
        assert_eq!(host.text, head.text, "{}", case.key);
        assert_eq!(host.finish_reason, head.finish_reason, "{}", case.key);
        let n = head.tokens.as_ref().unwrap().ids.len();
        assert!(
            n <= case.max_new_tokens.unwrap(),
            "{}: {n} tokens",
            case.key
        );
    }
}

/// Greedy batches decode on fixed buffers under CUDA (so that a CUDA graph can be replayed),
/// with an attention mask as wide as the KV buffers. Forced on here, on CPU (the same buffers,
/// no graph), it gives the same tokens and log-probabilities as the growing mask, with batched
/// prompts of different lengths, fp32 and fp16 caches.
#[test]
fn fixed_width_decode_agrees_with_the_growing_mask() {
    for folder in ["genai", "genai-fp16"] {
        let cases: Vec<Case> = PREFIXES
            .iter()
            .enumerate()
            .map(|(i, p)| complete_case(&format!("fixed{i}"), p, 12, &[]))
            .collect();
        let mut outs = Vec::new();
        for fixed in [false, true] {
            let mut opts = test_options(GenerationSettings::default());
            opts.device_head = Some(true);
            opts.cuda_graph = Some(fixed);
            let src = onnx::open_with(&models().join(folder), opts).unwrap();
            assert_eq!(src.describe()["cuda_graph"], fixed.to_string());
            outs.push(batched_traces(&src, &cases));
        }
        // One case per batch, with the session created again after every batch (as it is every
        // 64 batches under CUDA, to free captured graphs): still the same tokens.
        let mut opts = test_options(GenerationSettings::default());
        opts.device_head = Some(true);
        opts.cuda_graph = Some(true);
        opts.settings.batch_size = BatchSize::Rows(1);
        opts.graphs_per_session = Some(1);
        let src = onnx::open_with(&models().join(folder), opts).unwrap();
        outs.push(batched_traces(&src, &cases));
        for (one_at_a_time, batched) in outs[2].iter().zip(&outs[1]) {
            assert_eq!(
                one_at_a_time.ids, batched.ids,
                "{folder}: one case per batch"
            );
        }
        assert_eq!(outs[0].len(), cases.len());
        assert!(
            outs[0].iter().all(|t| t.ids.len() > 1),
            "{folder}: nothing was decoded"
        );
        assert_traces_agree(&outs[0], &outs[1], folder);
    }
}

/// The embedded heads are what harness/python/make_heads.py writes.
#[test]
fn embedded_heads_match_the_script() {
    let out = tempfile::tempdir().unwrap();
    run(Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/harness/python/make_heads.py"
        ))
        .arg(out.path()));
    assert_eq!(
        std::fs::read(out.path().join("last_token_top_f32.onnx")).unwrap(),
        onnx::HEAD_F32
    );
    assert_eq!(
        std::fs::read(out.path().join("last_token_top_f16.onnx")).unwrap(),
        onnx::HEAD_F16
    );
}

#[test]
fn an_oversized_prompt_fails_alone_and_its_batch_mate_generates() {
    // The tiny models were trained for 1024 positions; one character is about one token.
    let huge = complete_case("huge", &"x = 1\n".repeat(400), 8, &[]);
    let fine = complete_case("fine", PREFIXES[0], 8, &[]);
    let settings = GenerationSettings {
        batch_size: BatchSize::Rows(2),
        ..GenerationSettings::default()
    };
    let src = source("genai", settings);
    assert_eq!(src.describe()["context_length"], "1024");
    let cases = [huge, fine];
    let prompts: Vec<Prompt> = cases.iter().map(Prompt::for_case).collect();
    let requests: Vec<Request<'_>> = cases
        .iter()
        .zip(&prompts)
        .map(|(case, prompt)| Request::new(case, prompt, 1, None))
        .collect();
    src.prepare(&requests).unwrap();
    let err = src.complete(&requests[0]).unwrap_err().to_string();
    let tokens = src.prompt_ids(&prompts[0]).unwrap().len();
    assert!(
        err.contains(&format!(
            "the prompt is {tokens} tokens and max_new_tokens is 8, {} in all, more than the model's context length of 1024 tokens",
            tokens + 8
        )),
        "{err}"
    );
    assert!(
        err.contains("tiny/huge"),
        "the failing case is named: {err}"
    );
    let ok = src.complete(&requests[1]).unwrap();
    assert_eq!(ok[0].tokens.as_ref().unwrap().ids.len(), 8);
}

#[test]
fn a_batch_is_cut_to_the_memory_budget_before_it_is_allocated() {
    // A budget of 1 MiB: the longest of these sequences needs 640 KiB (96 positions of f32 KV
    // cache, its prefill's activations and logits), so three padded to it do not fit and the
    // batch is cut; the tokens are the same.
    let cases: Vec<Case> = PREFIXES
        .iter()
        .enumerate()
        .map(|(i, p)| complete_case(&format!("b{i}"), p, 6, &[]))
        .collect();
    let settings = GenerationSettings {
        batch_size: BatchSize::Rows(4),
        ..GenerationSettings::default()
    };
    let wide = batched_traces(&source("genai", settings.clone()), &cases);
    let mut opts = test_options(settings);
    // genai fixture: 2 layers x 2 KV heads x 16 dims x 2 (keys, values) x 4 bytes per position.
    opts.memory_budget_bytes = Some(1 << 20);
    let narrow = onnx::open_with(&models().join("genai"), opts).unwrap();
    assert_traces_agree(
        &wide,
        &batched_traces(&narrow, &cases),
        "budget-cut batches",
    );
    // A budget too small for any sequence fails each case with the figures.
    let mut opts = test_options(GenerationSettings::default());
    opts.memory_budget_bytes = Some(1024);
    let none = onnx::open_with(&models().join("genai"), opts).unwrap();
    let err = batched_err(&none, &cases[0]);
    assert!(
        err.contains("KiB of memory (KV cache of") && err.contains("budget of 1 KiB"),
        "{err}"
    );
}

fn batched_err(src: &OnnxSource, case: &Case) -> String {
    let prompt = Prompt::for_case(case);
    src.complete(&Request::new(case, &prompt, 1, None))
        .unwrap_err()
        .to_string()
}

/// The completions' texts and token ids, what must not change between two ways of answering.
fn texts_and_ids(v: &[Completion]) -> Vec<(String, Option<Vec<u32>>)> {
    v.iter()
        .map(|c| (c.text.clone(), c.tokens.as_ref().map(|t| t.ids.clone())))
        .collect()
}

#[test]
fn a_lazy_source_answers_from_the_cache_without_loading_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        let mut opts = options_for(Provider::Cpu, GenerationSettings::default());
        opts.threads = 1;
        opts.progress = false;
        opts.cache = dir.path().to_path_buf();
        opts
    };
    let folder = models().join("genai");
    let cached = complete_case("lazy-cached", PREFIXES[0], 6, &[]);
    let missed = complete_case("lazy-missed", PREFIXES[2], 6, &[]);
    let eager = onnx::open_with(&folder, options()).unwrap();
    let first = ask(&eager, &cached, 1);
    assert_eq!(eager.generated_sequences(), 1);

    let lazy = onnx::open_lazy(&folder, options()).unwrap();
    let prompt = Prompt::for_case(&cached);
    let request = Request::new(&cached, &prompt, 1, None);
    lazy.prepare(std::slice::from_ref(&request)).unwrap();
    let again = lazy.complete(&request).unwrap();
    assert!(!lazy.loaded(), "a cached request must not load the model");
    assert_eq!(texts_and_ids(&again), texts_and_ids(&first));
    assert_eq!(lazy.load_facts(), None);
    assert_eq!(
        lazy.describe()["model_sha256"],
        eager.describe()["model_sha256"]
    );

    // A miss loads the model once and answers as an eager engine does.
    let prompt = Prompt::for_case(&missed);
    let request = Request::new(&missed, &prompt, 1, None);
    let generated = lazy.complete(&request).unwrap();
    assert!(lazy.loaded());
    assert_eq!(lazy.generated_sequences(), 1);
    assert!(lazy.load_facts().is_some());
    let mut fresh = options();
    fresh.no_cache = true;
    let reference = onnx::open_with(&folder, fresh).unwrap();
    assert_eq!(
        texts_and_ids(&generated),
        texts_and_ids(&ask(&reference, &missed, 1))
    );
}

/// One completion of `case`, checked against `accepted` when given.
fn ask_following(src: &OnnxSource, case: &Case, accepted: Option<&AcceptedOutput>) -> Completion {
    let prompt = Prompt::for_case(case);
    src.complete(&Request::new(case, &prompt, 1, accepted))
        .unwrap()
        .remove(0)
}

/// A source whose greedy generations follow accepted outputs within `tolerance`; `device`:
/// the device head and fixed decode buffers, the code the CUDA path decodes with, forced on CPU.
fn following_source(folder: &str, tolerance: f32, device: bool) -> OnnxSource {
    let settings = GenerationSettings {
        follow_accepted: FollowAccepted {
            enabled: true,
            tolerance,
        },
        ..GenerationSettings::default()
    };
    let mut opts = test_options(settings);
    opts.device_head = Some(device);
    opts.cuda_graph = Some(device);
    onnx::open_with(&models().join(folder), opts).unwrap()
}

#[test]
fn accepted_outputs_are_kept_through_near_ties_and_left_beyond_the_tolerance() {
    for (folder, device) in [("genai", false), ("optimum", false), ("genai", true)] {
        let what = format!("{folder}, device path {device}");
        let exact = following_source(folder, 0.0, device);
        let case = complete_case("follow", PREFIXES[2], 20, &[]);
        let free = ask_following(&exact, &case, None);
        assert_eq!(free.followed, None, "{what}");
        let key = free
            .accept_key
            .clone()
            .expect("greedy completions carry their key");
        let trace = free.tokens.clone().unwrap();
        assert_eq!(trace.ids.len(), 20, "{what}");

        // Its own output, accepted: kept whole, with this machine's probabilities.
        let own = AcceptedOutput {
            key: key.clone(),
            samples: vec![trace.ids.clone()],
        };
        let kept = ask_following(&exact, &case, Some(&own));
        assert_eq!(
            kept.followed,
            Some(Followed::Kept { tolerance: 0.0 }),
            "{what}"
        );
        assert_eq!(kept.text, free.text, "{what}");
        assert_traces_agree(
            &[kept.tokens.clone().unwrap()],
            std::slice::from_ref(&trace),
            &what,
        );
        assert!(kept.tokens.unwrap().kept.is_empty(), "{what}");

        // An accepted output whose sixth token is this machine's second choice.
        let (top, second) = (&trace.top[5][0], &trace.top[5][1]);
        let gap = top.2 - second.2;
        assert!(gap > 0.0, "{what}: a tie in the tiny model");
        let mut other = trace.ids.clone();
        other[5] = second.0;
        let accepted = AcceptedOutput {
            key: key.clone(),
            samples: vec![other.clone()],
        };
        // At tolerance 0 it is left at that step, and decoding freely from there is greedy's
        // own continuation: the free output, token for token.
        let left = ask_following(
            &following_source(folder, 0.0, device),
            &case,
            Some(&accepted),
        );
        let again = ask_following(&following_source(folder, 0.0, device), &case, None);
        assert_eq!(
            again.tokens.as_ref().unwrap().ids,
            trace.ids,
            "{what}: a fresh source"
        );
        match left.followed {
            Some(Followed::Left {
                step: 5, gap: g, ..
            }) => {
                assert!((g - gap).abs() < 1e-3, "{what}: gap {g} vs {gap}")
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(left.tokens.as_ref().unwrap().ids, trace.ids, "{what}");
        assert_eq!(left.text, free.text, "{what}");

        // Within a tolerance just above that gap, step 5 keeps the accepted token and says by
        // how much this machine preferred its own; later accepted tokens are kept or left by
        // the same rule (the device head measures only the gaps of its alternatives).
        let tolerance = gap + 1e-3;
        let near = ask_following(
            &following_source(folder, tolerance, device),
            &case,
            Some(&accepted),
        );
        let near_trace = near.tokens.unwrap();
        assert_eq!(near_trace.ids[..6], other[..6], "{what}");
        assert_eq!(near_trace.kept.first().map(|k| k.step), Some(5), "{what}");
        assert!((near_trace.kept[0].gap - gap).abs() < 1e-3, "{what}");
        assert!(near_trace.kept.iter().all(|k| k.gap <= tolerance), "{what}");
        match near.followed {
            Some(Followed::Kept { .. }) => assert_eq!(near_trace.ids, other, "{what}"),
            Some(Followed::Left { step, gap, .. }) => {
                assert!(
                    step > 5 && gap > tolerance,
                    "{what}: left at {step} by {gap}"
                );
                assert_eq!(near_trace.ids[..step], other[..step], "{what}");
            }
            None => panic!("{what}: not checked"),
        }
        let loose = following_source(folder, 1e6, device);

        // Accepted under another key (another model, prompt or settings): never followed.
        let stranger = AcceptedOutput {
            key: "model 000000000000, prompt 000000000000 (1 tokens), settings 000000000000".into(),
            samples: vec![other.clone()],
        };
        let free_again = ask_following(&loose, &case, Some(&stranger));
        assert_eq!(free_again.followed, None, "{what}");
        assert_eq!(free_again.tokens.unwrap().ids, trace.ids, "{what}");
    }
}
