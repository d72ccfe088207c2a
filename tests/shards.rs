//! Shards end to end through `codegen run --shard K/N` (and `CODEGEN_SHARD`) and `codegen
//! merge`: the repository's suite run as 3 shards and merged gives byte for byte the files,
//! summary and gate verdict of one unsharded run; a failing gate fails the merge as it fails
//! the run; and each kind of shards that do not belong together is refused, naming the shard
//! folder and the field.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{GOOD_CASE, Project, tiny_model};

/// The files a run writes into its results folder, for `models`.
fn run_files(models: &[&str]) -> Vec<String> {
    let mut files = vec!["report.html".to_string()];
    if models.len() >= 2 {
        // The profiles side by side (src/report/models.rs).
        files.push("comparison.md".to_string());
    }
    for m in models {
        for f in [
            "results-{}.jsonl",
            "summary-{}.json",
            "summary-{}.md",
            "junit-{}.xml",
        ] {
            files.push(f.replace("{}", m));
        }
    }
    files
}

fn codegen(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codegen"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("CODEGEN_CONFIG")
        .env_remove("CODEGEN_MODELS")
        // Under cargo-nextest this test's own process-per-test variables must not reach it.
        .env_remove("NEXTEST_EXECUTION_MODE")
        .env_remove("CODEGEN_SHARD")
        .env_remove("INSTA_UPDATE")
        .env("CI", "true")
        .env("CODEGEN_ALLOW_HOST_ROOT", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The gate's lines of a run's or a merge's output (`gate: passed`, `gate failed for ...`).
fn gate_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("gate"))
        .map(str::to_string)
        .collect()
}

/// Run `config` under `root` unsharded, as 3 shards, and merge them; assert the merged files
/// are the unsharded ones byte for byte, with the same gate lines and exit status. No field is
/// left out of the comparison: these profiles measure no wall-clock time (generation timings
/// come only from a model), so any difference is a difference.
fn assert_sharded_equals_unsharded(root: &Path, config: &Path, results: &Path, models: &[&str]) {
    let config = config.to_str().unwrap();
    let (whole, whole_text) = codegen(root, &["run", "--config", config], &[]);
    assert!(whole_text.contains("gate"), "{whole_text}");
    let whole_files: Vec<(String, Vec<u8>)> = {
        codegen(root, &["report", "--dir", results.to_str().unwrap()], &[]);
        run_files(models)
            .into_iter()
            .map(|f| {
                let body = fs::read(results.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
                (f, body)
            })
            .collect()
    };
    let mut sizes = Vec::new();
    for k in 1..=3 {
        // One shard through the environment, the others through the flag.
        let shard = format!("{k}/3");
        let (out, text) = if k == 2 {
            codegen(
                root,
                &["run", "--config", config],
                &[("CODEGEN_SHARD", &shard)],
            )
        } else {
            codegen(root, &["run", "--config", config, "--shard", &shard], &[])
        };
        // A shard fails only when a trial does (a snapshot mismatch): it gates nothing.
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!("shard {shard}: ")) && text.contains("not gated"),
            "{text}"
        );
        assert!(
            gate_lines(&text).is_empty(),
            "a shard gates nothing: {text}"
        );
        let dir = results.join(format!("shard-{k}-of-3"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        sizes.push(manifest["ran"].as_array().unwrap().len());
    }
    assert!(
        sizes.iter().all(|&n| n > 0),
        "every shard ran cases: {sizes:?}"
    );
    let merged = results.join("merged");
    let (out, text) = codegen(
        root,
        &[
            "merge",
            results.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), whole.status.code(), "{text}");
    assert_eq!(gate_lines(&text), gate_lines(&whole_text), "{text}");
    assert!(!gate_lines(&text).is_empty(), "{text}");
    for (f, body) in whole_files {
        let got = fs::read(merged.join(&f)).unwrap_or_else(|e| panic!("merged {f}: {e}"));
        assert!(
            got == body,
            "merged {f} differs from the unsharded run's:\n--- unsharded\n{}\n--- merged\n{}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn the_suite_as_three_shards_merges_into_the_unsharded_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("out");
    let config = tmp.path().join("codegen.toml");
    // The repository's suite and snapshots, its reference and mutants profiles, results here.
    fs::write(
        &config,
        format!(
            "[suite]\ncases = \"cases\"\nexclude = [\"humaneval\", \"humaneval-complete\"]\nsnapshots = \"snapshots\"\nresults = {:?}\n[gate]\nmin_pass_rate = 1.0\nmax_drop = 0.0\n[[models]]\nname = \"reference\"\nsource = \"reference\"\n[[models]]\nname = \"mutants\"\nsource = \"replay\"\npath = \"harness/samples/mutants.jsonl\"\n[models.gate]\nmin_pass_rate = 0.0\n",
            results.to_str().unwrap()
        ),
    )
    .unwrap();
    assert_sharded_equals_unsharded(root, &config, &results, &["reference", "mutants"]);
}

/// A wrong answer for each case of [`small_project`] (`a - b` for `a + b`).
fn replay_all_wrong(body: &str) -> String {
    (0..9)
        .map(|i| {
            format!("{{\"task_id\": \"math/c{i}\", \"completion\": \"def add(a, b):\\n    return {body}\\n\"}}\n")
        })
        .collect()
}

/// A small project: 9 cases, a reference and a replay profile, a gate the replay fails.
fn small_project() -> Project {
    let p = Project::new(
        "[suite]\nsnapshot = false\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n[[models]]\nname = \"rep\"\nsource = \"replay\"\npath = \"replay.jsonl\"\n[models.gate]\nmin_pass_rate = 0.5\n",
    );
    for i in 0..9 {
        p.write(&format!("cases/math/c{i}.toml"), GOOD_CASE);
    }
    p.write("replay.jsonl", &replay_all_wrong("a - b"));
    p
}

#[test]
fn a_failing_gate_fails_the_merge_as_it_fails_the_run() {
    let p = small_project();
    assert_sharded_equals_unsharded(
        p.dir.path(),
        &p.path("codegen.toml"),
        &p.path("target/codegen"),
        &["ref", "rep"],
    );
    let (_, text) = codegen(p.dir.path(), &["merge", "target/codegen"], &[]);
    assert!(
        text.contains(
            "gate failed for model `rep`: overall pass rate 0.0% is below min_pass_rate 50.0%"
        ),
        "{text}"
    );
}

/// Run shard `k` of 3 of project `p` into `target/codegen/shard-k-of-3`, then move that folder
/// to `into` (so several variants of a shard can sit side by side).
fn shard(p: &Project, k: u32, extra: &[&str], into: &str) -> PathBuf {
    let shard = format!("{k}/3");
    let mut args = vec!["run", "--config", "codegen.toml", "--shard", &shard];
    args.extend(extra);
    let (out, text) = codegen(p.dir.path(), &args, &[]);
    assert!(out.status.success(), "{text}");
    let to = p.path(into);
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::rename(p.path(&format!("target/codegen/shard-{k}-of-3")), &to).unwrap();
    to
}

fn merge_refused(p: &Project, dirs: &[&Path], expected: &str) {
    let mut args = vec!["merge".to_string()];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap().to_string()));
    args.extend(["--out".into(), p.path("merged").to_str().unwrap().into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, text) = codegen(p.dir.path(), &args, &[]);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("failed to merge") && text.contains(expected),
        "expected `{expected}` in:\n{text}"
    );
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn shards_that_do_not_belong_together_are_refused_saying_why() {
    let p = small_project();
    let s1 = shard(&p, 1, &[], "s/1");
    let s2 = shard(&p, 2, &[], "s/2");
    let s3 = shard(&p, 3, &[], "s/3");
    let d = |path: &Path| path.display().to_string();
    // The good set merges.
    let (out, text) = codegen(
        p.dir.path(),
        &["merge", &d(&s1), &d(&s2), &d(&s3), "--out", "merged"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(101),
        "the replay fails its gate: {text}"
    );
    assert!(text.contains("codegen: merged 3 shards of 3"), "{text}");

    // Different models.
    let models = shard(&p, 2, &["--models", "ref"], "models/2");
    merge_refused(
        &p,
        &[&s1, &models, &s3],
        &format!("{} ran models [ref], {} ran [ref, rep]", d(&models), d(&s1)),
    );
    // Different model files: the replay file changed between shards.
    p.write("replay.jsonl", &replay_all_wrong("a * b"));
    let sha = |p: &Project| codegen_harness::cache::sha256_file(&p.path("replay.jsonl")).unwrap();
    let (changed, _) = (sha(&p), shard(&p, 2, &[], "files/2"));
    let files = p.path("files/2");
    p.write("replay.jsonl", &replay_all_wrong("a - b"));
    merge_refused(
        &p,
        &[&s1, &files, &s3],
        &format!(
            "model `rep` ran from different files: sha256 {changed} in {}, {} in {}",
            d(&files),
            sha(&p),
            d(&s1)
        ),
    );
    // Different settings.
    let config = fs::read_to_string(p.path("codegen.toml")).unwrap();
    p.write(
        "codegen.toml",
        &format!("[sandbox]\nmemory_mb = 512\n{config}"),
    );
    let settings = shard(&p, 2, &[], "settings/2");
    p.write("codegen.toml", &config);
    merge_refused(
        &p,
        &[&s1, &settings, &s3],
        &format!(
            "{} and {} ran different settings: `sandbox.memory_mb` is 512 in {}, 1024 in {}",
            d(&settings),
            d(&s1),
            d(&settings),
            d(&s1)
        ),
    );
    // A different case set: a case added between shards.
    p.write("cases/math/extra.toml", GOOD_CASE);
    let cases = shard(&p, 2, &[], "cases/2");
    fs::remove_file(p.path("cases/math/extra.toml")).unwrap();
    merge_refused(
        &p,
        &[&s1, &cases, &s3],
        &format!(
            "{} and {} ran different case sets: only in {}: `math/extra`",
            d(&cases),
            d(&s1),
            d(&cases)
        ),
    );
    // Another harness version.
    let version = p.path("version/2");
    copy_dir(&s2, &version);
    edit_manifest(&version, |m| m["harness_version"] = "9.9.9".into());
    merge_refused(
        &p,
        &[&s1, &version, &s3],
        &format!("{} ran harness version 9.9.9, {} ran ", d(&version), d(&s1)),
    );
    // A gap: a shard missing, or one run with a filter.
    merge_refused(&p, &[&s1, &s3], "shard 2/3 missing");
    let ran: Vec<String> =
        serde_json::from_slice::<serde_json::Value>(&fs::read(s2.join("manifest.json")).unwrap())
            .unwrap()["ran"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
    let only = ran[0].rsplit('/').next().unwrap().to_string();
    let filter = format!("math::{only}");
    let filtered = shard(&p, 2, &["--", &filter], "filtered/2");
    assert!(ran.len() > 1, "shard 2 runs several cases: {ran:?}");
    merge_refused(&p, &[&s1, &filtered, &s3], "shards leave a gap: ");
    // An overlap: a case of shard 2 claimed by shard 1 too, and a shard given twice.
    let overlap = p.path("overlap/1");
    copy_dir(&s1, &overlap);
    edit_manifest(&overlap, |m| {
        m["ran"].as_array_mut().unwrap().push(ran[0].clone().into())
    });
    merge_refused(
        &p,
        &[&overlap, &s2, &s3],
        &format!("shards overlap: cases ran twice: `{}`", ran[0]),
    );
    merge_refused(&p, &[&s1, &s2, &s2, &s3], "shard 2/3 is given 2 times");
    // Not a shard at all.
    merge_refused(
        &p,
        &[&p.path("cases")],
        "holds no manifest.json and no shard-K-of-N folder",
    );
}

#[test]
fn a_bad_shard_is_an_error_that_says_what_is_wrong() {
    let p = small_project();
    let (out, text) = codegen(
        p.dir.path(),
        &["run", "--config", "codegen.toml", "--shard", "4/3"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text.contains("shard 4/3: K must be between 1 and N"),
        "{text}"
    );
    let (out, text) = codegen(
        p.dir.path(),
        &["run", "--config", "codegen.toml"],
        &[("CODEGEN_SHARD", "2of3")],
    );
    assert!(!out.status.success());
    assert!(
        text.contains("CODEGEN_SHARD=\"2of3\"") && text.contains("expected K/N"),
        "{text}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_model_answered_from_a_warm_cache_merges_byte_for_byte() {
    // An ONNX profile: once its generations are cached, neither the unsharded run nor a shard
    // loads the model, so no load time (which differs from process to process) reaches the
    // files, and the merged run equals the unsharded one byte for byte.
    let p = Project::new(&format!(
        "[suite]\nsnapshot = false\n[generation]\nmax_new_tokens = 6\n[[models]]\nname = \"tiny\"\nsource = \"onnx\"\nmodel = {:?}\ndevice = \"cpu\"\n[models.gate]\nmin_pass_rate = 0.0\n",
        tiny_model().to_str().unwrap()
    ));
    for i in 0..6 {
        p.write(
            &format!("cases/math/c{i}.toml"),
            &GOOD_CASE.replace("add", &format!("add{i}")),
        );
    }
    // Fill the generation cache (a cold cache loads the model and generates).
    let (out, text) = codegen(p.dir.path(), &["run", "--config", "codegen.toml"], &[]);
    assert!(out.status.success(), "{text}");
    assert_sharded_equals_unsharded(
        p.dir.path(),
        &p.path("codegen.toml"),
        &p.path("target/codegen"),
        &["tiny"],
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(p.path("target/codegen/summary-tiny.json")).unwrap())
            .unwrap();
    let profile = &summary["summary"]["profile"];
    assert_eq!(
        profile["load_facts"], "not loaded: every completion came from the generation cache",
        "{profile}"
    );
    assert!(profile["load_ms"].is_null(), "{profile}");
    assert!(
        profile["size_on_disk_bytes"].as_u64().unwrap() > 0,
        "{profile}"
    );
}
