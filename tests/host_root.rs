//! A root harness whose Python `nobody` cannot reach (here: a venv inside a 0700 directory)
//! cannot drop to an unprivileged uid. The strict level refuses to run generated code as host
//! root, saying which path and how to fix or allow it; when allowed (or at the basic level)
//! the run goes on and the isolation line says plainly that the code ran as host root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{GOOD_CASE, Project};

/// A venv whose interpreter is a copy under a directory only root can enter.
fn python_under_private_dir(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let venv = dir.join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv", "--copies", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success(), "python3 -m venv failed");
    let python = venv.join("bin/python3");
    let runs = Command::new(&python).args(["-c", "pass"]).status().unwrap();
    assert!(runs.success(), "the venv does not run for root");
    python
}

fn project(python: &Path, sandbox: &str) -> Project {
    let p = Project::new(&format!(
        "[suite]\nsnapshot = false\n[sandbox]\npython = \"{}\"\n{sandbox}\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n",
        python.display()
    ));
    p.write("cases/math/add.toml", GOOD_CASE);
    p
}

#[test]
fn host_root_is_refused_at_strict_and_stated_when_allowed() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the harness drops privileges only when it runs as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let private = std::fs::canonicalize(dir.path()).unwrap();
    let python = python_under_private_dir(&private);
    // The config alone decides.
    let level = [
        ("CODEGEN_SANDBOX_LEVEL", ""),
        ("CODEGEN_ALLOW_HOST_ROOT", ""),
    ];

    let (out, text) = project(&python, "level = \"strict\"").run(&level, &[]);
    assert!(!out.status.success(), "{text}");
    for expected in [
        "failed to run generated code as an unprivileged user".to_string(),
        format!("uid 65534 cannot reach {}", python.display()),
        format!("{} is mode 0700 (others need x)", private.display()),
        "use a Python under a world-readable prefix".into(),
        format!("chmod o+rx {}", private.display()),
        "set `allow_host_root = true` under [sandbox]".into(),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
    }

    let plain = "generated code ran as host root (uid 0)";
    for sandbox in [
        "level = \"strict\"\nallow_host_root = true",
        "level = \"basic\"",
    ] {
        let p = project(&python, sandbox);
        let (out, text) = p.run(&level, &[]);
        assert!(out.status.success(), "{sandbox}:\n{text}");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("sandbox:"))
            .unwrap_or_else(|| panic!("no isolation line in:\n{text}"));
        assert!(line.contains(plain), "{line}");
        let summary = std::fs::read_to_string(p.path("target/codegen/summary-ref.json")).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
        let isolation = summary["isolation"].as_str().unwrap();
        assert!(isolation.contains(plain), "{isolation}");
        assert!(isolation.contains("uid 65534 cannot reach"), "{isolation}");
    }
}
