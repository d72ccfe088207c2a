//! End-to-end tests of the harness through `codegen run`, on small generated projects:
//! malformed case files, snapshot review, the gate, and `--list` staying cheap.

mod common;

use std::fs;

use common::{GOOD_CASE, Project, shows};

const NO_SNAPSHOT: &str =
    "[suite]\nsnapshot = false\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n";

#[test]
fn malformed_cases_fail_alone_with_file_line_and_field() {
    let p = Project::new(NO_SNAPSHOT);
    p.write("cases/math/good.toml", GOOD_CASE);
    let bad: &[(&str, String, &str)] = &[
        (
            "unknown_field",
            GOOD_CASE.replace("entry_point", "entrypoint"),
            "unknown_field.toml:3:1: field `entrypoint`",
        ),
        (
            "missing_field",
            GOOD_CASE.replace("entry_point = \"add\"", ""),
            "missing_field.toml:1:1: field `entry_point`",
        ),
        (
            "bad_call",
            GOOD_CASE.replace("add(1, 2)", "add(1, 2"),
            "bad_call.toml:9:8: field `tests[0].call`: not a valid Python expression",
        ),
        (
            "bad_expected",
            GOOD_CASE.replace("\"3\"", "\"3 +\""),
            "bad_expected.toml:10:12: field `tests[0].expected`",
        ),
        (
            "wrong_type",
            GOOD_CASE.replace("\"Write add(a, b).\"", "42"),
            "wrong_type.toml:2:10: field `prompt`",
        ),
        (
            "no_expectation",
            GOOD_CASE.replace("expected = \"3\"\n", ""),
            "no_expectation.toml:8:1: field `tests[0]`: missing field `expected` (or `raises`)",
        ),
        (
            "toml_syntax",
            GOOD_CASE.replace("entry_point = \"add\"", "entry_point = \"add"),
            "toml_syntax.toml:3:",
        ),
        (
            "both_expectations",
            GOOD_CASE.replace(
                "expected = \"3\"",
                "expected = \"3\"\nraises = \"ValueError\"",
            ),
            "both_expectations.toml:10:12: field `tests[0]`: give either `expected` or `raises`, not both",
        ),
        (
            "bad_raises",
            GOOD_CASE.replace("expected = \"3\"", "raises = \"not an exception\""),
            "field `tests[0].raises`",
        ),
        (
            "expected_fails",
            GOOD_CASE.replace("\"'ab'\"", "\"undefined_name\""),
            "expected_fails.toml:13: field `tests[1].expected`: failed to evaluate expected value `undefined_name`: NameError",
        ),
    ];
    for (name, text, _) in bad {
        p.write(&format!("cases/math/{name}.toml"), text);
    }
    // A duplicate id: a second file claiming `good`.
    p.write(
        "cases/math/zz_duplicate.toml",
        &format!("id = \"good\"\n{GOOD_CASE}"),
    );

    let (out, text) = p.run(&[], &[]);
    assert!(!out.status.success());
    for (_, _, expected) in bad {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(
        text.contains("zz_duplicate.toml:1:1: field `id`: duplicate case id `math/good`"),
        "{text}"
    );
    assert!(shows(&text, "ref::math::good", "ok"), "{text}");
    assert!(shows(&text, "ref::math::zz_duplicate", "FAILED"), "{text}");
    assert!(
        text.contains(&format!("1 passed; {} failed", bad.len() + 1)),
        "{text}"
    );
}

#[test]
fn changed_completion_fails_with_a_diff_until_accepted() {
    let p = Project::new(
        "[suite]\nsnapshot = true\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    );
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write("cases/math/other.toml", &GOOD_CASE.replace("add", "plus"));
    let right = "{\"task_id\": \"math/add\", \"completion\": \"def add(a, b):\\n    return a + b\\n\"}\n{\"task_id\": \"math/other\", \"completion\": \"def plus(a, b):\\n    return a + b\\n\"}\n";
    p.write("samples.jsonl", right);

    // First run on CI: no accepted snapshots yet, nothing is written, both fail.
    let (out, text) = p.run(&[], &[]);
    assert!(!out.status.success());
    assert!(text.contains("no accepted snapshot yet"), "{text}");
    assert!(!p.path("snapshots/replay/math__add.snap.new").exists());

    // Accept everything, then the suite passes.
    let (out, text) = p.run(&[("INSTA_UPDATE", "always")], &[]);
    assert!(out.status.success(), "{text}");
    assert!(p.path("snapshots/replay/math__add.snap").exists());
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");

    // Change one completion: exactly that trial fails, with a diff of the outcome.
    p.write(
        "samples.jsonl",
        &right.replacen("return a + b", "return a - b", 1),
    );
    let (out, text) = p.run(&[], &[]);
    assert!(!out.status.success());
    assert!(shows(&text, "replay::math::add", "FAILED"), "{text}");
    assert!(shows(&text, "replay::math::other", "ok"), "{text}");
    assert!(text.contains("1 passed; 1 failed"), "{text}");
    assert!(
        text.contains("wrong answer: got -1, expected 3"),
        "diff should show the new outcome:\n{text}"
    );
    assert!(text.contains("return a - b"), "{text}");

    // Accepting the new outcome makes it pass again (an accepted known failure).
    let (out, _) = p.run(&[("INSTA_UPDATE", "always")], &[]);
    assert!(out.status.success());
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("accepted baseline: 50.0% over 2 cases"),
        "{text}"
    );
}

/// With `significance`, a drop past `max_drop` on too few discordant cases passes the gate,
/// which says so: the harness pairs the accepted verdicts with the new ones.
#[test]
fn insignificant_drop_passes_the_gate_with_the_mcnemar_line() {
    let p = Project::new(
        "[suite]\nsnapshot = true\n[gate]\nmax_drop = 0.0\nsignificance = 0.05\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    );
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write("cases/math/other.toml", &GOOD_CASE.replace("add", "plus"));
    let right = "{\"task_id\": \"math/add\", \"completion\": \"def add(a, b):\\n    return a + b\\n\"}\n{\"task_id\": \"math/other\", \"completion\": \"def plus(a, b):\\n    return a + b\\n\"}\n";
    p.write("samples.jsonl", right);
    let (out, text) = p.run(&[("INSTA_UPDATE", "always")], &[]);
    assert!(out.status.success(), "{text}");
    p.write(
        "samples.jsonl",
        &right.replacen("return a + b", "return a - b", 1),
    );
    // The changed trial fails against its snapshot; the gate itself passes, and says why.
    let (_, text) = p.run(&[], &[]);
    assert!(
        text.contains("gate: passed (drop of 50.0 points > max_drop 0.0, but not significant: McNemar p = 1.000 on 1 lost vs 0 gained discordant cases, significance 0.05)"),
        "{text}"
    );
    assert!(!text.contains("gate failed"), "{text}");
}

#[test]
fn gate_above_measured_rate_fails_with_threshold() {
    let p = Project::new(
        "[suite]\nsnapshot = false\n[gate]\nmin_pass_rate = 0.75\n[gate.categories]\nmath = 0.9\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    );
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write("cases/math/other.toml", &GOOD_CASE.replace("add", "plus"));
    p.write(
        "samples.jsonl",
        "{\"task_id\": \"math/add\", \"completion\": \"def add(a, b):\\n    return a + b\\n\"}\n{\"task_id\": \"math/other\", \"completion\": \"def plus(a, b):\\n    return None\\n\"}\n",
    );
    let (out, text) = p.run(&[], &[]);
    assert_eq!(out.status.code(), Some(101), "{text}");
    assert!(
        text.contains("gate failed for model `replay`: overall pass rate 50.0% is below min_pass_rate 75.0% (short by 25.0 points)"),
        "{text}"
    );
    assert!(
        text.contains("category `math` pass rate 50.0% is below its minimum 90.0%"),
        "{text}"
    );

    // The gate alone fails a run whose trials all pass (snapshots accept the known failure).
    let p2 = Project::new(
        "[suite]\nsnapshot = true\n[gate]\nmin_pass_rate = 0.75\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    );
    for f in [
        "cases/math/add.toml",
        "cases/math/other.toml",
        "samples.jsonl",
    ] {
        p2.write(f, &fs::read_to_string(p.path(f)).unwrap());
    }
    let (_, _) = p2.run(&[("INSTA_UPDATE", "always")], &[]);
    let (out, text) = p2.run(&[], &[]);
    assert!(text.contains("2 passed; 0 failed"), "{text}");
    assert_eq!(out.status.code(), Some(101), "{text}");
    assert!(text.contains("below min_pass_rate 75.0%"), "{text}");
}

#[test]
fn list_and_filters_load_no_model_and_run_no_python() {
    let p = Project::new(
        "[sandbox]\npython = \"/nonexistent/python3\"\n[[models]]\nname = \"engine\"\nsource = \"onnx\"\nmodel = \"/nonexistent/model\"\n",
    );
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write("cases/text/upper.toml", &GOOD_CASE.replace("add", "upper"));
    let (out, text) = p.run(&[], &["--list"]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("engine::math::add: test"), "{text}");
    assert!(text.contains("engine::text::upper: test"), "{text}");

    let ok = Project::new(NO_SNAPSHOT);
    ok.write("cases/math/add.toml", GOOD_CASE);
    ok.write("cases/text/upper.toml", &GOOD_CASE.replace("add", "upper"));
    let (out, text) = ok.run(&[], &["text::"]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out"),
        "{text}"
    );
    let (_, text) = ok.run(&[], &["--exact", "ref::math::add"]);
    assert!(
        text.contains("1 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out"),
        "{text}"
    );
    let (_, text) = ok.run(&[], &["--skip", "math"]);
    assert!(shows(&text, "ref::text::upper", "ok"), "{text}");
    assert!(!text.contains("ref::math::add ..."), "{text}");
}

#[test]
fn a_reference_raising_what_its_test_expects_calibrates_the_timeout() {
    // A looping answer then costs the calibrated timeout, not the ceiling.
    let p = Project::new(
        "[suite]\nsnapshot = false\n[sandbox]\ntimeout_floor_ms = 1000\ntimeout_ceiling_ms = 20000\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n[[models]]\nname = \"loop\"\nsource = \"replay\"\npath = \"loop.jsonl\"\n[models.gate]\nmin_pass_rate = 0.0\n",
    );
    p.write(
        "cases/math/inverse.toml",
        r#"
prompt = "Write inverse(x)."
entry_point = "inverse"
reference = '''
def inverse(x):
    return 1 / x
'''
[[tests]]
call = "inverse(2)"
expected = "0.5"
[[tests]]
call = "inverse(0)"
raises = "ArithmeticError"
"#,
    );
    p.write(
        "loop.jsonl",
        "{\"task_id\": \"math/inverse\", \"completion\": \"def inverse(x):\\n    while True:\\n        pass\\n\"}\n",
    );
    let (out, text) = p.run(&[], &[]);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("failed to calibrate"),
        "the reference raising the expected exception failed calibration:\n{text}"
    );
    let results = fs::read_to_string(p.path("target/codegen/results-loop.jsonl")).unwrap();
    assert!(
        results.contains("\"after_ms\":1000"),
        "the loop did not time out at the floor:\n{results}"
    );
}
