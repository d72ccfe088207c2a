//! The results folder: a run that cannot write it fails and names it, and two runs on one
//! folder take turns (the second waits, saying so) instead of mixing their journals.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{GOOD_CASE, Project};

const CONFIG: &str = "[suite]\nsnapshot = false\nresults = \"out\"\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n";

/// A case whose reference takes a while, so that a run lasts long enough to overlap another.
const SLOW_CASE: &str = r#"
prompt = "Write add(a, b)."
entry_point = "add"
timeout_ms = 10000
reference = '''
import time
def add(a, b):
    time.sleep(0.5)
    return a + b
'''
[[tests]]
call = "add(1, 2)"
expected = "3"
[[tests]]
call = "add(2, 2)"
expected = "4"
"#;

fn assert_fails_naming(p: &Project, path: &str) {
    let (out, text) = p.run(&[], &[]);
    assert!(!out.status.success(), "the run passed:\n{text}");
    assert!(
        text.contains(path) && text.contains("failed to"),
        "the error does not name {path}:\n{text}"
    );
}

#[test]
fn an_unwritable_results_folder_fails_the_run_naming_it() {
    let p = Project::new(CONFIG);
    p.write("cases/math/add.toml", GOOD_CASE);
    // A regular file where the folder should be.
    p.write("out", "not a folder");
    assert_fails_naming(&p, &p.path("out").display().to_string());
    std::fs::remove_file(p.path("out")).unwrap();
    // A folder without write permission (root writes anyway, so only an unprivileged user
    // meets it; the regular file above fails for both).
    if unsafe { libc::geteuid() } != 0 {
        std::fs::create_dir(p.path("out")).unwrap();
        std::fs::set_permissions(p.path("out"), std::fs::Permissions::from_mode(0o555)).unwrap();
        assert_fails_naming(&p, &p.path("out").display().to_string());
    }
}

#[test]
fn two_runs_on_one_results_folder_take_turns() {
    let p = Project::new(CONFIG);
    for name in ["a", "b", "c"] {
        p.write(&format!("cases/math/{name}.toml"), SLOW_CASE);
    }
    let a = p
        .command(&[], &["--test-threads", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (b, b_text) = p.run(&[], &["--test-threads", "1"]);
    let a = a.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{b_text}");
    assert!(
        b_text.contains("waiting for another run that writes to")
            && b_text.contains(&p.path("out").display().to_string()),
        "the second run did not say that it waited:\n{b_text}"
    );
    let results = std::fs::read_to_string(p.path("out/results-ref.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 3, "{results}");
    for line in results.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every results line parses");
    }
    assert!(
        !p.path("out/results-ref.partial.jsonl").exists(),
        "a partial journal was left behind"
    );
}
