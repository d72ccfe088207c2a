//! The GitHub Actions example (examples/github-actions/) run locally: the workflow's own
//! `run:` commands, taken from codegen.yml, with 3 shards on a small copy of the repository's
//! suite (reference and mutants profiles over two categories), the artifacts' upload and
//! download done as copies. The merged verdict and the pull-request Markdown must be those of
//! one unsharded run; and the workflow must name the scripts, the matrix, the caches, the
//! artifacts and the permission the steps rely on, so the two cannot drift apart.

use std::fs;
use std::path::Path;
use std::process::Command;

const WORKFLOW: &str = include_str!("../examples/github-actions/codegen.yml");

/// The `run:` commands of the workflow that call the example's scripts, in order.
fn script_steps() -> Vec<String> {
    WORKFLOW
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- run: "))
        .filter(|cmd| cmd.starts_with("sh examples/github-actions/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_workflow_names_what_its_steps_rely_on() {
    let steps = script_steps();
    assert_eq!(
        steps,
        [
            "sh examples/github-actions/shard.sh ${{ matrix.shard }} 3",
            "sh examples/github-actions/merge.sh shards target/codegen",
        ]
    );
    for script in ["shard.sh", "merge.sh"] {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/github-actions")
                .join(script)
                .is_file(),
            "{script}"
        );
    }
    for needed in [
        "shard: [1, 2, 3]",
        "path: ~/.cache/codegen-harness",
        "hashFiles('harness/codegen.toml', 'Cargo.lock')",
        "name: shard-${{ matrix.shard }}-of-3",
        "path: target/codegen/shard-${{ matrix.shard }}-of-3/",
        "pattern: shard-*-of-3",
        "path: shards/",
        "pull-requests: write",
        "path: target/codegen/comment.md",
        "if: always()",
    ] {
        assert!(WORKFLOW.contains(needed), "codegen.yml lacks `{needed}`");
    }
}

fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        copy(&e.path(), &to.join(e.file_name()));
    }
}

/// A project laid out as the repository, with two of its categories.
fn small_suite(dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let categories = ["algorithms", "mathematical"];
    for cat in categories {
        copy_dir(&repo.join("cases").join(cat), &dir.join("cases").join(cat));
        for model in ["reference", "mutants"] {
            for e in fs::read_dir(repo.join("snapshots").join(model)).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{cat}__")) && name.ends_with(".snap") {
                    copy(&e.path(), &dir.join("snapshots").join(model).join(&name));
                }
            }
        }
    }
    let mutants: String = fs::read_to_string(repo.join("harness/samples/mutants.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| categories.iter().any(|c| l.contains(&format!("\"{c}/"))))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(mutants.lines().count(), 6);
    fs::create_dir_all(dir.join("harness/samples")).unwrap();
    fs::write(dir.join("harness/samples/mutants.jsonl"), mutants).unwrap();
    fs::write(
        dir.join("harness/codegen.toml"),
        "[suite]\ncases = \"cases\"\nsnapshots = \"snapshots\"\nresults = \"target/codegen\"\n[gate]\nmin_pass_rate = 1.0\nmax_drop = 0.0\n[[models]]\nname = \"reference\"\nsource = \"reference\"\n[[models]]\nname = \"mutants\"\nsource = \"replay\"\npath = \"harness/samples/mutants.jsonl\"\n[models.gate]\nmin_pass_rate = 0.0\n",
    )
    .unwrap();
    copy_dir(
        &repo.join("examples/github-actions"),
        &dir.join("examples/github-actions"),
    );
}

/// Run a workflow step's command as the runner would (`sh -c`), in `dir`.
fn step(dir: &Path, command: &str) -> (i32, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("CODEGEN", env!("CARGO_BIN_EXE_codegen"))
        .env_remove("CODEGEN_CONFIG")
        .env_remove("CODEGEN_MODELS")
        // Under cargo-nextest this test's own process-per-test variables must not reach it.
        .env_remove("NEXTEST_EXECUTION_MODE")
        .env_remove("CODEGEN_SHARD")
        .env_remove("INSTA_UPDATE")
        .env("CI", "true")
        .env("CODEGEN_ALLOW_HOST_ROOT", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_workflow_steps_run_locally_with_three_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    small_suite(dir);
    // What one unsharded run gives, for comparison.
    let (code, whole) = step(dir, &format!("{:?} run", env!("CARGO_BIN_EXE_codegen")));
    assert_eq!(code, 0, "{whole}");
    fs::rename(dir.join("target/codegen"), dir.join("unsharded")).unwrap();

    let steps = script_steps();
    // The matrix: each shard job runs its step, then uploads its folder (here: a copy into
    // shards/, where download-artifact puts each artifact under its name).
    for k in 1..=3 {
        let (code, text) = step(
            dir,
            &steps[0].replace("${{ matrix.shard }}", &k.to_string()),
        );
        assert_eq!(code, 0, "shard {k}: {text}");
        let name = format!("shard-{k}-of-3");
        copy_dir(
            &dir.join("target/codegen").join(&name),
            &dir.join("shards").join(&name),
        );
    }
    // The merge job starts from a fresh checkout.
    fs::remove_dir_all(dir.join("target")).unwrap();
    let (code, text) = step(dir, &steps[1]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("codegen: merged 3 shards of 3"), "{text}");
    let comment = fs::read_to_string(dir.join("target/codegen/comment.md")).unwrap();
    assert!(
        comment.starts_with("<!-- codegen-harness summary -->\n"),
        "{comment}"
    );
    for model in ["mutants", "reference"] {
        let md = format!("summary-{model}.md");
        let merged = fs::read_to_string(dir.join("target/codegen").join(&md)).unwrap();
        let unsharded = fs::read_to_string(dir.join("unsharded").join(&md)).unwrap();
        assert_eq!(merged, unsharded, "{md}");
        assert!(comment.contains(&merged), "{comment}");
        assert!(merged.contains("\nGate: passed.\n"), "{merged}");
        for f in ["results-{}.jsonl", "summary-{}.json", "junit-{}.xml"] {
            let f = f.replace("{}", model);
            assert_eq!(
                fs::read(dir.join("target/codegen").join(&f)).unwrap(),
                fs::read(dir.join("unsharded").join(&f)).unwrap(),
                "{f}"
            );
        }
    }
    assert!(comment.contains("### codegen: `mutants`") && comment.contains("6 failing cases"));

    // A shard's artifact missing: the merge is refused, and the comment says so.
    fs::remove_dir_all(dir.join("shards/shard-2-of-3")).unwrap();
    fs::remove_dir_all(dir.join("target")).unwrap();
    let (code, text) = step(dir, &steps[1]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("shard 2/3 missing"), "{text}");
    let comment = fs::read_to_string(dir.join("target/codegen/comment.md")).unwrap();
    assert!(
        comment.contains("the shards could not be merged") && comment.contains("status 1"),
        "{comment}"
    );
}
