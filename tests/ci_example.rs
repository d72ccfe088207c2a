//! The GitHub Actions example (examples/github-actions/) run locally: the workflow's own
//! `run:` commands, taken from codegen.yml, with 3 shards on a small copy of the repository's
//! suite (reference and mutants profiles over two categories), the artifacts' upload and
//! download done as copies. The merged verdict and the pull-request Markdown must be those of
//! one unsharded run, and a failing shard must still merge and leave its comment. Statically:
//! every job's commands, the cache keys (per shard, on the case files and the accepted
//! snapshots), the artifact and merge conditions, and the permissions of codegen.yml and
//! comment.yml (the comment posted on `workflow_run`, running none of the PR's code).

use std::fs;
use std::path::Path;
use std::process::Command;

const WORKFLOW: &str = include_str!("../examples/github-actions/codegen.yml");
const COMMENT: &str = include_str!("../examples/github-actions/comment.yml");

/// The jobs of a workflow: each job's id and its text (the lines under it).
fn jobs(workflow: &str) -> Vec<(String, String)> {
    let mut jobs: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in workflow.lines() {
        if line == "jobs:" {
            inside = true;
        } else if line.trim_start().starts_with('#') {
            continue;
        } else if inside && line.starts_with("  ") && !line.starts_with("   ") {
            let id = line.trim().trim_end_matches(':').to_string();
            jobs.push((id, String::new()));
        } else if let Some((_, text)) = jobs.last_mut().filter(|_| inside) {
            text.push_str(line);
            text.push('\n');
        }
    }
    jobs
}

fn job(workflow: &str, id: &str) -> String {
    jobs(workflow)
        .into_iter()
        .find(|(j, _)| j == id)
        .unwrap_or_else(|| panic!("no job `{id}`"))
        .1
}

/// A job's steps, each as its text (from its `- ` line to the next step).
fn steps(job: &str) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    for line in job.lines() {
        if line.starts_with("      - ") {
            steps.push(String::new());
        }
        if let Some(step) = steps.last_mut() {
            step.push_str(line.trim());
            step.push('\n');
        }
    }
    steps
}

/// The `run:` commands of a job, in order.
fn runs(job: &str) -> Vec<String> {
    job.lines()
        .map(str::trim)
        .filter_map(|l| {
            l.strip_prefix("- run: ")
                .or_else(|| l.strip_prefix("run: "))
        })
        .map(str::to_string)
        .collect()
}

/// The `run:` commands of the workflow that call the example's scripts, in order.
fn script_steps() -> Vec<String> {
    jobs(WORKFLOW)
        .iter()
        .flat_map(|(_, text)| runs(text))
        .filter(|cmd| cmd.starts_with("sh examples/github-actions/"))
        .collect()
}

/// The one step of `job` that contains `what`.
fn step_with(job: &str, what: &str) -> String {
    let found: Vec<String> = steps(job)
        .into_iter()
        .filter(|s| s.contains(what))
        .collect();
    assert_eq!(found.len(), 1, "steps with `{what}`: {found:?}");
    found[0].clone()
}

/// Where in `job` the step containing `what` is.
fn position(job: &str, what: &str) -> usize {
    steps(job)
        .iter()
        .position(|s| s.contains(what))
        .unwrap_or_else(|| panic!("no step with `{what}`"))
}

#[test]
fn every_job_runs_the_commands_it_should() {
    let ids: Vec<String> = jobs(WORKFLOW).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["build", "shard", "merge"]);
    assert_eq!(
        runs(&job(WORKFLOW, "build")),
        ["cargo build --release --locked"]
    );
    assert_eq!(
        runs(&job(WORKFLOW, "shard")),
        [
            "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
            "chmod +x target/release/codegen",
            "sh examples/github-actions/shard.sh ${{ matrix.shard }} 3",
        ]
    );
    assert_eq!(
        runs(&job(WORKFLOW, "merge")),
        [
            "chmod +x target/release/codegen",
            "sh examples/github-actions/merge.sh shards target/codegen",
            "mkdir -p comment && cp target/codegen/comment.md comment/ && echo \"$PR_NUMBER\" > comment/pr-number",
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
    // The strict sandbox needs unprivileged user namespaces, which ubuntu-24.04's AppArmor
    // denies: allowed before the shard runs.
    let shard = job(WORKFLOW, "shard");
    assert!(position(&shard, "apparmor_restrict") < position(&shard, "shard.sh"));
    assert!(position(&shard, "name: codegen-binary") < position(&shard, "shard.sh"));
    assert!(shard.contains("shard: [1, 2, 3]") && shard.contains("fail-fast: false"));
}

#[test]
fn the_caches_are_keyed_on_what_decides_reuse() {
    let shard = job(WORKFLOW, "shard");
    let key_of = |step: &str| -> String {
        step.lines()
            .find_map(|l| l.strip_prefix("key: "))
            .unwrap_or_else(|| panic!("no key in {step}"))
            .to_string()
    };
    // Model folders and ONNX Runtime: shared, without the generation cache.
    let models = step_with(&shard, "codegen-models-");
    assert!(
        models.contains("!~/.cache/codegen-harness/generations"),
        "{models}"
    );
    assert!(key_of(&models).contains("hashFiles('harness/codegen.toml', 'Cargo.lock')"));
    // Generations: per shard, keyed on the config, the harness, the case files and the accepted
    // snapshots; restored before the shard runs and saved after it, even when it failed.
    let restore = step_with(&shard, "actions/cache/restore@");
    let save = step_with(&shard, "actions/cache/save@");
    let key = key_of(&restore);
    assert_eq!(key, key_of(&save));
    for part in [
        "${{ matrix.shard }}",
        "'harness/codegen.toml'",
        "'Cargo.lock'",
        "'cases/**'",
        "'snapshots/**'",
    ] {
        assert!(
            key.contains(part),
            "the generation cache key lacks {part}: {key}"
        );
    }
    assert!(restore.contains("restore-keys: |\ncodegen-generations-${{ runner.os }}-shard-${{ matrix.shard }}-of-3-\n"), "{restore}");
    assert!(save.contains("if: always()"), "{save}");
    assert!(position(&shard, "actions/cache/restore@") < position(&shard, "shard.sh"));
    assert!(position(&shard, "shard.sh") < position(&shard, "actions/cache/save@"));
    for path in [
        "~/.cache/codegen-harness/generations",
        "~/.cache/codegen-harness/prompt-ids",
    ] {
        assert!(restore.contains(path) && save.contains(path), "{path}");
    }
}

#[test]
fn a_failing_shard_still_merges_and_comments() {
    // The binary comes from its own job, whatever a shard does.
    let build = job(WORKFLOW, "build");
    let binary = step_with(&build, "name: codegen-binary");
    assert!(!binary.contains("if:"), "{binary}");
    assert!(!WORKFLOW.contains("matrix.shard == 1"));
    // Each shard uploads its folder even when it failed.
    let shard = job(WORKFLOW, "shard");
    let upload = step_with(&shard, "name: shard-${{ matrix.shard }}-of-3");
    assert!(upload.contains("if: always()"), "{upload}");
    assert!(upload.contains("path: target/codegen/shard-${{ matrix.shard }}-of-3/"));
    // The merge runs after every shard, failed or not, once the binary exists.
    let merge = job(WORKFLOW, "merge");
    assert!(merge.contains("    needs: [build, shard]\n"), "{merge}");
    assert!(
        merge.contains("    if: always() && needs.build.result == 'success'\n"),
        "{merge}"
    );
    assert!(merge.contains("pattern: shard-*-of-3") && merge.contains("path: shards/"));
    for what in [
        "cp target/codegen/comment.md",
        "name: codegen-comment",
        "name: codegen-results",
    ] {
        assert!(step_with(&merge, what).contains("if: always()"), "{what}");
    }
    // comment.yml posts what the merge left, for the run that just completed.
    let comment = job(COMMENT, "comment");
    let download = step_with(&comment, "name: codegen-comment");
    assert!(
        download.contains("run-id: ${{ github.event.workflow_run.id }}"),
        "{download}"
    );
    assert!(
        step_with(&comment, "sticky-pull-request-comment").contains("path: comment/comment.md")
    );
}

#[test]
fn the_permissions_are_the_least_each_job_needs() {
    // The workflow that runs the pull request's code can read only.
    assert!(WORKFLOW.contains("\npermissions:\n  contents: read\n"));
    assert!(
        !WORKFLOW.contains("write"),
        "codegen.yml asks for a write permission"
    );
    // The comment comes from a workflow_run in the base repository, which runs none of the
    // pull request's code: no checkout, no pull_request_target anywhere.
    for w in [WORKFLOW, COMMENT] {
        let code: String = w
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(!code.contains("pull_request_target"));
    }
    assert!(
        COMMENT
            .contains("on:\n  workflow_run:\n    workflows: [codegen]\n    types: [completed]\n")
    );
    assert!(!COMMENT.contains("actions/checkout"));
    assert!(COMMENT.contains("\npermissions:\n  contents: read\n"));
    let comment = job(COMMENT, "comment");
    assert!(
        comment.contains("    permissions:\n      actions: read\n      pull-requests: write\n"),
        "{comment}"
    );
    // Nothing from the triggering run is expanded into a command.
    for cmd in runs(&comment) {
        assert!(!cmd.contains("${{"), "{cmd}");
    }
}

#[test]
fn the_comment_workflow_posts_only_to_a_number() {
    let cmd = runs(&job(COMMENT, "comment")).remove(0);
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("comment")).unwrap();
    let output = tmp.path().join("github-output");
    let run = |number: &str| {
        fs::write(tmp.path().join("comment/pr-number"), number).unwrap();
        let _ = fs::remove_file(&output);
        Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(tmp.path())
            .env("GITHUB_OUTPUT", &output)
            .output()
            .unwrap()
    };
    assert!(run("42\n").status.success());
    assert_eq!(fs::read_to_string(&output).unwrap(), "number=42\n");
    for bad in ["", "42; rm -rf /", "1\n2"] {
        assert!(!run(bad).status.success(), "{bad:?}");
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
    // What comment.yml gets: the Markdown and the pull request's number.
    let handoff = runs(&job(WORKFLOW, "merge")).remove(2);
    let (code, text) = step(dir, &format!("PR_NUMBER=7 && {handoff}"));
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        fs::read_to_string(dir.join("comment/pr-number")).unwrap(),
        "7\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("comment/comment.md")).unwrap(),
        comment
    );

    // A shard fails (an outcome differs from its snapshot): it still hands its folder over
    // (its upload runs always), and the merge fails the run and still writes the comment.
    let snap = dir.join("snapshots/reference/algorithms__edit_distance.snap");
    let accepted = fs::read_to_string(&snap).unwrap();
    fs::write(
        &snap,
        accepted.replace("(1/1 samples passed)\n", "(1/1 samples passed)\n\n"),
    )
    .unwrap();
    fs::remove_dir_all(dir.join("shards")).unwrap();
    let mut failed = 0;
    for k in 1..=3 {
        let (code, text) = step(
            dir,
            &steps[0].replace("${{ matrix.shard }}", &k.to_string()),
        );
        failed += usize::from(code != 0);
        let name = format!("shard-{k}-of-3");
        copy_dir(
            &dir.join("target/codegen").join(&name),
            &dir.join("shards").join(&name),
        );
        assert!(text.contains("codegen verdict:"), "{text}");
    }
    assert_eq!(failed, 1);
    fs::remove_dir_all(dir.join("target")).unwrap();
    let (code, text) = step(dir, &steps[1]);
    assert_eq!(code, 101, "{text}");
    assert!(
        text.contains("overall: FAILED (1 trial(s) failed)"),
        "{text}"
    );
    let comment = fs::read_to_string(dir.join("target/codegen/comment.md")).unwrap();
    assert!(
        comment.contains("Trials (outcome against the accepted snapshots): 5 passed, 1 failed (1 snapshot mismatch)."),
        "{comment}"
    );
    fs::write(&snap, accepted).unwrap();
    let junit = fs::read_to_string(dir.join("target/codegen/junit-reference.xml")).unwrap();
    assert!(junit.contains("failures=\"1\" errors=\"0\""), "{junit}");

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
