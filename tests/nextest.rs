//! cargo-nextest simulated, without nextest installed: list the trials as nextest does
//! (`--list --format terse`), run each in its own process with nextest's environment
//! (`--exact NAME --nocapture`, `NEXTEST_EXECUTION_MODE=process-per-test`, `NEXTEST_RUN_ID`),
//! split over two runs as two `--partition`s would be, then `codegen finish` over both runs'
//! folders. Each test process exits 0 with the gate failing overall (it gates nothing), writes
//! no run files and prints no summary; the finished files, gate lines and exit status equal an
//! ordinary run's byte for byte.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{GOOD_CASE, Project};

const RUN_A: &str = "1f79aa0d-4ec8-4a5c-aa83-5e8dc2f36573";
const RUN_B: &str = "2a80bb1e-5fd9-4b6d-bb94-6f9ed3047684";

/// What an ordinary run writes (with `codegen report` after it), for profiles `ref` and `rep`.
const RUN_FILES: &[&str] = &[
    "report.html",
    "comparison.md",
    "results-ref.jsonl",
    "summary-ref.json",
    "summary-ref.md",
    "junit-ref.xml",
    "results-rep.jsonl",
    "summary-rep.json",
    "summary-rep.md",
    "junit-rep.xml",
];

/// 4 cases, a reference profile and a replay profile whose answers are all wrong, so that
/// the replay's gate (min_pass_rate 0.5) fails: the run fails, no single trial does.
fn project() -> Project {
    let p = Project::new(
        "[suite]\nsnapshot = false\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n[[models]]\nname = \"rep\"\nsource = \"replay\"\npath = \"replay.jsonl\"\n[models.gate]\nmin_pass_rate = 0.5\n",
    );
    let mut replay = String::new();
    for i in 0..4 {
        p.write(&format!("cases/math/c{i}.toml"), GOOD_CASE);
        replay.push_str(&format!(
            "{{\"task_id\": \"math/c{i}\", \"completion\": \"def add(a, b):\\n    return a - b\\n\"}}\n"
        ));
    }
    p.write("replay.jsonl", &replay);
    p
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `codegen ARGS` in the project (not `codegen run`).
fn codegen(p: &Project, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codegen"))
        .current_dir(p.dir.path())
        .args(args)
        .env_remove("CODEGEN_CONFIG")
        .env_remove("CODEGEN_MODELS")
        .env_remove("NEXTEST_EXECUTION_MODE")
        .env_remove("NEXTEST_RUN_ID")
        .env("CI", "true")
        .env("CODEGEN_ALLOW_HOST_ROOT", "1")
        .output()
        .unwrap()
}

fn gate_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("gate"))
        .map(str::to_string)
        .collect()
}

fn read_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    RUN_FILES
        .iter()
        .map(|f| {
            let body = fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            (f.to_string(), body)
        })
        .collect()
}

/// The run files present in `dir` (none may be, after the test processes).
fn run_files_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("nextest-"))
        .collect()
}

#[test]
fn per_test_processes_record_and_finish_gives_the_ordinary_run() {
    let p = project();
    let results = p.path("target/codegen");

    // The ordinary run: summary, files, gate (failing for `rep`).
    let (whole, whole_text) = p.run(&[], &[]);
    assert_eq!(whole.status.code(), Some(101), "{whole_text}");
    assert!(!gate_lines(&whole_text).is_empty(), "{whole_text}");
    assert!(
        codegen(&p, &["report", "--dir", "target/codegen"])
            .status
            .success()
    );
    let whole_files = read_files(&results);
    fs::remove_dir_all(&results).unwrap();

    // nextest's list phase.
    let nextest_env = |run: &'static str| {
        [
            ("NEXTEST", "1"),
            ("NEXTEST_EXECUTION_MODE", "process-per-test"),
            ("NEXTEST_RUN_ID", run),
        ]
    };
    let (listed, list_text) = p.run(&nextest_env(RUN_A), &["--list", "--format", "terse"]);
    assert!(listed.status.success(), "{list_text}");
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), 8, "{list_text}");

    // One process per trial, half of them in each of two runs (two partitions).
    for (i, name) in names.iter().enumerate() {
        let run = if i % 2 == 0 { RUN_A } else { RUN_B };
        let (out, out_text) = p.run(&nextest_env(run), &["--exact", name, "--nocapture"]);
        assert!(out.status.success(), "{name}: {out_text}");
        assert!(gate_lines(&out_text).is_empty(), "{name} gated: {out_text}");
        assert!(!out_text.contains("results:"), "{name}: {out_text}");
        assert_eq!(run_files_in(&results), Vec::<String>::new(), "{name}");
    }

    // One run's folder alone is half the suite; a partition given twice is refused.
    let a = format!("target/codegen/nextest-{RUN_A}");
    let b = format!("target/codegen/nextest-{RUN_B}");
    let twice = codegen(&p, &["finish", "--config", "codegen.toml", &a, &a]);
    assert_eq!(twice.status.code(), Some(1), "{}", text(&twice));
    assert!(
        text(&twice).contains("is also recorded in"),
        "{}",
        text(&twice)
    );

    let finished = codegen(&p, &["finish", "--config", "codegen.toml", &a, &b]);
    let finished_text = text(&finished);
    assert_eq!(
        finished.status.code(),
        whole.status.code(),
        "{finished_text}"
    );
    assert_eq!(gate_lines(&finished_text), gate_lines(&whole_text));
    assert!(
        finished_text.contains("8 of the suite's 8 trials recorded"),
        "{finished_text}"
    );
    assert!(
        codegen(&p, &["report", "--dir", "target/codegen"])
            .status
            .success()
    );
    for (f, body) in whole_files {
        let got = fs::read(results.join(&f)).unwrap_or_else(|e| panic!("finished {f}: {e}"));
        assert!(
            got == body,
            "finished {f} differs from the ordinary run's:\n--- ordinary\n{}\n--- finished\n{}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&got)
        );
    }

    // A case edited after its trial ran is not finished from the old record.
    p.write(
        "cases/math/c0.toml",
        &GOOD_CASE.replace("Write add", "Write  add"),
    );
    let stale = codegen(&p, &["finish", "--config", "codegen.toml", &a, &b]);
    assert!(
        text(&stale).contains("changed since its trial ran"),
        "{}",
        text(&stale)
    );
}
