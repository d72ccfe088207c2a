//! Runs that never mislead (issue 10): nothing measured is never green, a case that could not be
//! measured is an error (not a measured 0), an interrupted run leaves the last complete results
//! intact, every error names file, line and field, and malformed case files are counted apart
//! from the model's syntax. Each test drives the `codegen` binary on a small generated project.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{GOOD_CASE, Project, shows};

const REFERENCE: &str = "[[models]]\nname = \"ref\"\nsource = \"reference\"\n";

fn config(suite: &str, rest: &str) -> String {
    format!("[suite]\n{suite}\n{rest}")
}

#[test]
fn an_empty_suite_is_a_failure_that_says_why() {
    // No case files, even with min_pass_rate = 1.0: a failure naming the folder.
    let p = Project::new(&config(
        "snapshot = false",
        &format!("[gate]\nmin_pass_rate = 1.0\n{REFERENCE}"),
    ));
    let (out, text) = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(101), "{text}");
    assert!(
        text.contains("error: nothing to measure: no case files under"),
        "{text}"
    );
    assert!(text.contains("cases"), "{text}");
    assert!(!p.path("target/codegen/summary-ref.json").exists());

    // Every profile disabled: a failure naming the profiles.
    let p = Project::new(&config(
        "snapshot = false",
        "[[models]]\nname = \"off\"\nsource = \"reference\"\nenabled = false\n",
    ));
    p.write("cases/math/add.toml", GOOD_CASE);
    let (out, text) = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(101), "{text}");
    assert!(
        text.contains("selects no model profile (configured: off"),
        "{text}"
    );

    // Asked for: an empty suite is allowed.
    let p = Project::new(&config("snapshot = false\nallow_empty = true", REFERENCE));
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("nothing measured"), "{text}");

    // A filter that matches nothing (cargo passes one filter to every test binary): nothing
    // runs, it says so, and the previous results stay as they were.
    let p = Project::new(&config("snapshot = false", REFERENCE));
    p.write("cases/math/add.toml", GOOD_CASE);
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    let summary = fs::read_to_string(p.path("target/codegen/summary-ref.json")).unwrap();
    let (out, text) = p.run(&[], &["no_such_test"]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("the filter matched none of the 1 trials"),
        "{text}"
    );
    assert_eq!(
        fs::read_to_string(p.path("target/codegen/summary-ref.json")).unwrap(),
        summary
    );
}

#[test]
fn a_filtered_run_keeps_the_full_runs_files() {
    let p = Project::new(&config(
        "snapshot = false",
        "[[models]]\nname = \"ref\"\nsource = \"reference\"\n",
    ));
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write("cases/math/plus.toml", &GOOD_CASE.replace("add", "plus"));
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    let summary = fs::read_to_string(p.path("target/codegen/summary-ref.json")).unwrap();
    let (out, text) = p.run(&[], &["plus"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("a filtered run: results go to "), "{text}");
    assert_eq!(
        fs::read_to_string(p.path("target/codegen/summary-ref.json")).unwrap(),
        summary,
        "the full run's summary was replaced"
    );
    let filtered = fs::read_to_string(p.path("target/codegen/filtered/summary-ref.json")).unwrap();
    assert!(filtered.contains("\"cases\": 1,"), "{filtered}");
}

#[test]
fn unmeasured_cases_are_errors_and_fail_the_gate() {
    // The replay file answers one case of two: the other is not a measured 0.
    let p = Project::new(&config(
        "snapshot = false",
        "[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    ));
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write("cases/math/plus.toml", &GOOD_CASE.replace("add", "plus"));
    p.write(
        "samples.jsonl",
        "{\"task_id\": \"math/add\", \"completion\": \"def add(a, b):\\n    return a - b\\n\"}\n",
    );
    let (out, text) = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(101), "{text}");
    assert!(text.contains("not measured: 1 case(s)"), "{text}");
    assert!(text.contains("not measured: math/plus: "), "{text}");
    assert!(
        text.contains("gate failed for model `replay`: 1 of 2 cases could not be measured"),
        "{text}"
    );
    assert!(!text.contains("gate: passed"), "{text}");
    // The run ends with its verdict: per profile (trials, gate, results) and overall.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: Vec<&str> = stdout.trim_end().lines().rev().take(3).collect();
    assert!(last[2] == "codegen verdict:", "{stdout}");
    assert!(
        last[1].starts_with(
            "  replay: trials 1 passed, 1 failed (1 not measured); gate FAILED: gate failed for model `replay`: 1 of 2 cases could not be measured"
        ),
        "{stdout}"
    );
    assert!(
        last[0]
            .starts_with("  overall: FAILED (1 trial(s) failed; gate failed for replay); results "),
        "{stdout}"
    );
    // The measured case is a wrong answer: a measured result, so its trial is ok.
    assert!(shows(&text, "replay::math::add", "ok"), "{text}");
    assert!(shows(&text, "replay::math::plus", "FAILED"), "{text}");
    let summary: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(p.path("target/codegen/summary-replay.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["summary"]["overall"]["cases"], 1);
    assert_eq!(summary["summary"]["overall"]["errors"], 1);
    // JUnit and Markdown keep the distinction too.
    let junit = fs::read_to_string(p.path("target/codegen/junit-replay.xml")).unwrap();
    // JUnit's failures are the trials' failures: the wrong answer's trial passed (a measured
    // result), so it is no failure, and its model verdict is a property.
    assert!(junit.contains("failures=\"0\" errors=\"1\""), "{junit}");
    assert!(junit.contains("<error message="), "{junit}");
    assert!(
        junit.contains(
            "name=\"math/add\"><properties><property name=\"model_verdict\" value=\"failed: "
        ),
        "{junit}"
    );
    let markdown = fs::read_to_string(p.path("target/codegen/summary-replay.md")).unwrap();
    assert!(
        markdown.contains("**Not measured: 1 case(s)**"),
        "{markdown}"
    );
    assert!(
        markdown.contains("`math/plus` (not measured)"),
        "{markdown}"
    );

    // allow_errors gates on the measured cases only; the exit status is the gate's verdict.
    let allowed = Project::new(&config(
        "snapshot = false",
        "[gate]\nallow_errors = true\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    ));
    for f in [
        "cases/math/add.toml",
        "cases/math/plus.toml",
        "samples.jsonl",
    ] {
        allowed.write(f, &fs::read_to_string(p.path(f)).unwrap());
    }
    let (out, text) = allowed.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("gate: passed"), "{text}");
}

#[test]
fn a_measurement_run_exits_with_the_gates_verdict() {
    // snapshot = false and a wrong answer, no thresholds: measured, so the run passes.
    let p = Project::new(&config(
        "snapshot = false",
        "[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    ));
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write(
        "samples.jsonl",
        "{\"task_id\": \"math/add\", \"completion\": \"def add(a, b):\\n    return None\\n\"}\n",
    );
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("gate: passed"), "{text}");
    assert!(
        text.contains("overall        1       0       0.0%"),
        "{text}"
    );
}

/// A case whose reference waits until `gate` exists, so a run can be held in the middle for as
/// long as the test needs: no race against the machine's load.
fn gated_case(name: &str, gate: &Path) -> String {
    GOOD_CASE
        .replace(
            "def add(a, b):\n    return a + b",
            &format!(
                "import os, time\ndef {name}(a, b):\n    while not os.path.exists({gate:?}):\n        time.sleep(0.02)\n    return a + b"
            ),
        )
        .replace("add", name)
}

#[test]
fn an_interrupted_run_keeps_the_last_complete_results_and_a_rerun_matches() {
    // The gate file lives where the sandboxed reference can see it: level "none" reads the host,
    // and the folder is world-readable because a root harness runs generated code as `nobody`.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("python3");
    let p = Project::new(&config(
        "snapshot = false",
        &format!(
            "[sandbox]\nlevel = \"none\"\npython = \"{python}\"\nallow_host_root = true\n{REFERENCE}"
        ),
    ));
    let gate_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(gate_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let gate = gate_dir.path().join("open");
    // a1 never waits, so the interrupted run journals it; a2..a4 hold the run until the gate opens.
    p.write("cases/math/a1.toml", &GOOD_CASE.replace("add", "a1"));
    for name in ["a2", "a3", "a4"] {
        p.write(&format!("cases/math/{name}.toml"), &gated_case(name, &gate));
    }
    fs::write(&gate, "").unwrap();
    let files = [
        "results-ref.jsonl",
        "summary-ref.json",
        "summary-ref.md",
        "junit-ref.xml",
    ];
    let read_all = || -> Vec<String> {
        files
            .iter()
            .map(|f| fs::read_to_string(p.path(&format!("target/codegen/{f}"))).unwrap())
            .collect()
    };
    let (out, text) = p.run(&[], &["--test-threads", "1"]);
    assert!(out.status.success(), "{text}");
    let complete = read_all();
    fs::remove_file(&gate).unwrap();

    // Interrupt a second run once it has journaled a case.
    let mut child = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .current_dir(p.dir.path())
        .args([
            "run",
            "--config",
            "codegen.toml",
            "--",
            "--test-threads",
            "1",
        ])
        .env_remove("CODEGEN_CONFIG")
        .env_remove("CODEGEN_MODELS")
        // Under cargo-nextest this test's own process-per-test variables must not reach it.
        .env_remove("NEXTEST_EXECUTION_MODE")
        .env("CI", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = p.path("target/codegen/results-ref.partial.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&partial).is_ok_and(|t| t.lines().count() >= 1) {
        assert!(Instant::now() < deadline, "the run journaled nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let _ = child.wait();
    assert!(partial.exists());
    fs::write(&gate, "").unwrap();
    assert_eq!(
        read_all(),
        complete,
        "the last complete run's files changed"
    );

    // The report says the folder holds an unfinished run.
    let out = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .current_dir(p.dir.path())
        .args(["report"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("did not complete"), "{stderr}");
    let html = fs::read_to_string(p.path("target/codegen/report.html")).unwrap();
    assert!(html.contains("Unfinished run"));

    // A rerun ends with the same files as the uninterrupted run, and no partial journal.
    let (out, text) = p.run(&[], &["--test-threads", "1"]);
    assert!(out.status.success(), "{text}");
    assert_eq!(read_all(), complete);
    assert!(!partial.exists());
}

#[test]
fn every_error_names_file_line_and_field() {
    let p = Project::new(&config("snapshot = false", REFERENCE));
    p.write("cases/math/good.toml", GOOD_CASE);
    // A newline inside a "..." string on line 2: reported on line 2, not the next key.
    p.write(
        "cases/math/newline.toml",
        &GOOD_CASE.replace("\"Write add(a, b).\"", "\"Write add(a,\nb).\""),
    );
    // An expected value that fails to evaluate: its own line (13), not the [[tests]] header.
    p.write(
        "cases/math/expected.toml",
        &GOOD_CASE.replace("\"'ab'\"", "\"undefined_name\""),
    );
    // Not UTF-8: the byte offset and line.
    let mut bytes = GOOD_CASE
        .replace("Write add", "Write \u{1}add")
        .into_bytes();
    let at = bytes.iter().position(|&b| b == 1).unwrap();
    bytes[at] = 0xff;
    fs::write(p.path("cases/math/latin1.toml"), bytes).unwrap();
    let (_, text) = p.run(&[], &[]);
    assert!(
        text.contains("newline.toml:2:10: field `prompt`: this string is not closed on its line"),
        "{text}"
    );
    assert!(
        text.contains("expected.toml:13: field `tests[1].expected`: failed to evaluate"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "latin1.toml:2:17: not UTF-8 text (byte offset {at})"
        )),
        "{text}"
    );

    // A gate threshold out of range names the line and the key.
    let p = Project::new(&format!(
        "[suite]\nsnapshot = false\n\n{REFERENCE}[models.gate]\nmin_pass_rate = 1.5\n"
    ));
    let (out, text) = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(101), "{text}");
    assert!(
        text.contains("codegen.toml:8:17: gate thresholds are rates between 0.0 and 1.0, got 1.5 (in `min_pass_rate = 1.5`)"),
        "{text}"
    );

    // A missing cases folder is called a folder.
    let p = Project::new(&config("snapshot = false\ncases = \"nowhere\"", REFERENCE));
    let (_, text) = p.run(&[], &[]);
    assert!(text.contains("failed to read cases folder"), "{text}");
}

#[test]
fn malformed_case_files_do_not_lower_syntax_validity() {
    let p = Project::new(&config(
        "snapshot = false",
        &format!("[gate]\nallow_errors = true\n{REFERENCE}"),
    ));
    p.write("cases/math/good.toml", GOOD_CASE);
    p.write("cases/math/other.toml", &GOOD_CASE.replace("add", "plus"));
    p.write(
        "cases/math/broken.toml",
        &GOOD_CASE.replace("entry_point", "entrypoint"),
    );
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("overall        2       2     100.0%   [34.2, 100.0]        100.0%"),
        "{text}"
    );
    assert!(text.contains("not measured: 1 case(s)"), "{text}");
}
