//! A replay file is read row by row: a malformed row fails only its own task (with file:line),
//! a row nobody can claim is named by the trials left without rows and by the summary, and a
//! row whose task matches no case is reported, never silently ignored.

mod common;

use common::{GOOD_CASE, Project, shows};

#[test]
fn a_bad_replay_row_fails_only_its_task_and_strays_are_reported() {
    let p = Project::new(
        "[suite]\nsnapshot = false\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    );
    for name in ["add", "plus", "times", "minus"] {
        p.write(
            &format!("cases/math/{name}.toml"),
            &GOOD_CASE.replace("add", name),
        );
    }
    let rows = [
        r#"{"task_id": "math/add", "completion": "def add(a, b):\n    return a + b\n"}"#,
        r#"{"task_id": "math/plus", "completion": "def plus(a, b):\n    return a + b\n"}"#,
        r#"{"task_id": "math/times", "completion": "def times(a, b):\n    return a + b\n}"#,
        r#"{oops"#,
        r#"{"task_id": "math/nope", "completion": "def nope(): pass\n"}"#,
    ];
    p.write("samples.jsonl", &(rows.join("\n") + "\n"));

    let (out, text) = p.run(&[], &[]);
    assert!(!out.status.success(), "{text}");
    // The valid rows 1-2 still run.
    assert!(shows(&text, "replay::math::add", "ok"), "{text}");
    assert!(shows(&text, "replay::math::plus", "ok"), "{text}");
    // Row 3 is cut short but names its task: that task alone fails, with file:line.
    assert!(shows(&text, "replay::math::times", "FAILED"), "{text}");
    assert!(
        text.contains("samples.jsonl:3: failed to parse the replay row for task `math/times`"),
        "{text}"
    );
    // Row 4 names no task: the task without rows says so, and so does the summary.
    assert!(shows(&text, "replay::math::minus", "FAILED"), "{text}");
    assert!(
        text.contains("no completion for task `math/minus`")
            && text.contains("unreadable rows without a task_id (line 4;"),
        "{text}"
    );
    assert!(
        text.contains("warning: ") && text.contains("samples.jsonl:4: failed to parse replay row"),
        "{text}"
    );
    // Row 5's task matches no case: reported with file:line, in the output and the results.
    let stray = "samples.jsonl:5: task_id `math/nope` matches no case; its rows were not used";
    assert!(text.contains(stray), "{text}");
    let summary = std::fs::read_to_string(p.path("target/codegen/summary-replay.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let warnings = summary["source_warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 2, "{summary}");
    assert!(warnings[1].as_str().unwrap().ends_with(stray), "{summary}");
}

#[test]
fn rows_of_a_case_file_that_does_not_parse_point_at_the_file() {
    let p = Project::new(
        "[suite]\nsnapshot = false\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    );
    p.write("cases/math/add.toml", GOOD_CASE);
    p.write("cases/math/broken.toml", "prompt = \"unterminated\n");
    let rows = [
        r#"{"task_id": "math/add", "completion": "def add(a, b):\n    return a + b\n"}"#,
        r#"{"task_id": "math/broken", "completion": "def broken(): pass\n"}"#,
        r#"{"task_id": "math/broken", "completion": "def broken(): return 1\n"}"#,
    ];
    p.write("samples.jsonl", &(rows.join("\n") + "\n"));
    let (out, text) = p.run(&[], &[]);
    assert!(!out.status.success(), "{text}");
    assert!(shows(&text, "replay::math::broken", "FAILED"), "{text}");
    assert!(
        !text.contains("matches no case"),
        "the rows of a case file that does not parse were called strays:\n{text}"
    );
    let broken = p.path("cases/math/broken.toml");
    assert!(
        text.contains(&format!(
            "samples.jsonl:2: task_id `math/broken` is for case file {}, which failed to load",
            broken.display()
        )),
        "{text}"
    );
}
