//! What `cargo insta review` shows of a pending snapshot: its header names the case file (as
//! the source and the input file) and the profile, keeps nothing that changes from build to
//! build (no harness source line), and says whether the case file changed since the snapshot
//! was accepted or the model's output did with the case unchanged. Contents are the outcome
//! text alone, as before.

mod common;

use std::fs;

use common::{GOOD_CASE, Project};

/// The header of a snapshot file (between its `---` lines).
fn header(path: &std::path::Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rest = text.strip_prefix("---\n").unwrap();
    rest.split_once("\n---\n").unwrap().0.to_string()
}

#[test]
fn pending_snapshots_name_the_case_file_the_profile_and_what_changed() {
    let p = Project::new(
        "[suite]\nsnapshot = true\n[[models]]\nname = \"replay\"\nsource = \"replay\"\npath = \"samples.jsonl\"\n",
    );
    p.write("cases/math/add.toml", GOOD_CASE);
    let right =
        "{\"task_id\": \"math/add\", \"completion\": \"def add(a, b):\\n    return a + b\\n\"}\n";
    p.write("samples.jsonl", right);
    let not_ci = [("CI", ""), ("INSTA_UPDATE", "new")];

    // A new case: pending, with the case file as its source and the profile.
    let (out, text) = p.run(&not_ci, &[]);
    assert!(!out.status.success(), "{text}");
    let pending = p.path("snapshots/replay/math__add.snap.new");
    let h = header(&pending);
    assert!(h.starts_with("source: cases/math/add.toml\n"), "{h}");
    assert!(!h.contains("src/"), "{h}");
    assert!(
        h.contains("description: replay outcome of math/add\n"),
        "{h}"
    );
    assert!(
        h.contains("  profile: replay\n  case_file: cases/math/add.toml\n"),
        "{h}"
    );
    assert!(
        h.contains("  change: \"a new case: no snapshot was accepted before\"\n"),
        "{h}"
    );
    assert!(h.contains("\ninput_file: cases/math/add.toml"), "{h}");

    // Accepted: the file keeps the case file's hash (and why it was accepted).
    fs::remove_file(&pending).unwrap();
    let (out, text) = p.run(&[("INSTA_UPDATE", "always")], &[]);
    assert!(out.status.success(), "{text}");
    let accepted = p.path("snapshots/replay/math__add.snap");
    let h = header(&accepted);
    assert!(h.contains("  case_sha256: "), "{h}");
    assert!(!h.contains("src/"), "{h}");

    // The model's output changes, the case file does not.
    p.write("samples.jsonl", &right.replace("a + b", "a - b"));
    let (out, text) = p.run(&not_ci, &[]);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "(the model's output changed: the case file is the one of the last accepted snapshot)"
        ),
        "{text}"
    );
    let h = header(&pending);
    assert!(h.contains("  change: \"the model's output changed: the case file is the one of the last accepted snapshot\"\n"), "{h}");

    // The case file changes (its tests), the model's output does not.
    p.write("samples.jsonl", right);
    p.write(
        "cases/math/add.toml",
        &GOOD_CASE
            .replace("add(1, 2)", "add(2, 2)")
            .replace("\"3\"", "\"4\""),
    );
    let (out, text) = p.run(&not_ci, &[]);
    assert!(!out.status.success(), "{text}");
    let h = header(&pending);
    assert!(
        h.contains("  change: the case file changed since the last accepted snapshot\n"),
        "{h}"
    );
}
