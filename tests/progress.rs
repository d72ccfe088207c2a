//! What a run that generates says while it does: a line when generation starts and one when it
//! ends (sequences, tokens, tokens per second), whether stderr is a pipe or a terminal (a
//! pseudo-terminal through `script`), and never on a line that libtest's output shares.

mod common;

use std::process::Command;

use common::{GOOD_CASE, Project, tiny_model};

fn project() -> Project {
    let p = Project::new(&format!(
        "[suite]\nsnapshot = false\n[generation]\nmax_new_tokens = 6\n[[models]]\nname = \"tiny\"\nsource = \"onnx\"\nmodel = {:?}\ndevice = \"cpu\"\n[models.gate]\nmin_pass_rate = 0.0\n",
        tiny_model().to_str().unwrap()
    ));
    for i in 0..3 {
        p.write(
            &format!("cases/math/c{i}.toml"),
            &GOOD_CASE.replace("add", &format!("add{i}")),
        );
    }
    p
}

/// No line holds both a progress message and libtest's output.
fn assert_lines_apart(text: &str) {
    for line in text.split(['\n', '\r']) {
        let ours = line.contains("codegen: generat");
        let libtest = line.contains("test ") && line.contains(" ... ");
        assert!(!(ours && libtest), "a shared line: {line:?}\n{text}");
        if ours {
            assert!(
                line.trim_start().starts_with("codegen: generat"),
                "{line:?}"
            );
        }
    }
}

#[test]
fn generation_says_it_starts_and_ends_off_a_terminal() {
    let p = project();
    // One sequence generates too: no silent run.
    let (out, text) = p.run(&[("CODEGEN_NO_CACHE", "1")], &["c1"]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("codegen: generating 1 sequence (up to 6 tokens)\n"),
        "{text}"
    );
    assert!(text.contains("codegen: generated 1 sequence, "), "{text}");
    let (out, text) = p.run(&[("CODEGEN_NO_CACHE", "1")], &[]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("codegen: generating 3 sequences (up to 18 tokens)\n"),
        "{text}"
    );
    assert!(text.contains(" tok/s)\n"), "{text}");
    assert_lines_apart(&text);
}

#[test]
fn generation_says_it_starts_and_ends_on_a_terminal() {
    let p = project();
    let cmd = p.command(&[("CODEGEN_NO_CACHE", "1")], &["--test-threads", "1"]);
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    // `script` runs the command on a pseudo-terminal (stdout and stderr both).
    let mut script = Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .current_dir(p.dir.path());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let out = script.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("codegen: generating 3 sequences (up to 18 tokens)"),
        "{text}"
    );
    assert!(text.contains("codegen: generated 3 sequences, "), "{text}");
    assert_lines_apart(&text);
}
