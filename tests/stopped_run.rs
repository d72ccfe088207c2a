//! Stopping a run stops everything it started: when the process that started `codegen run` is
//! killed (as SIGINT to `cargo test` ends cargo), the harness notices and exits, and when the
//! harness itself is killed, no sandbox worker and no generated code outlives it.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Project;

/// A case whose reference solution is still running when the test stops the harness.
const SLEEPING_CASE: &str = r#"
prompt = "Write wait()."
entry_point = "wait"
timeout_ms = 60000
reference = '''
import time
def wait():
    time.sleep(60)
    return 1
'''
[[tests]]
call = "wait()"
expected = "1"
"#;

/// A process as /proc shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Process {
    ppid: u32,
    /// Clock ticks after boot when it started: tells it from a later process with its pid.
    start: u64,
    state: char,
}

fn process(pid: u32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields follow the last `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some(Process {
        state: fields[0].chars().next()?,
        ppid: fields[1].parse().ok()?,
        start: fields[19].parse().ok()?,
    })
}

fn all_processes() -> HashMap<u32, Process> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, process(pid)?)))
        .collect()
}

/// Every descendant of `root` with its depth below it (children are at depth 1).
fn descendants(root: u32) -> Vec<(u32, Process, usize)> {
    let table = all_processes();
    let mut found = Vec::new();
    let mut frontier = vec![(root, 0)];
    while let Some((parent, depth)) = frontier.pop() {
        for (&pid, &p) in &table {
            if p.ppid == parent {
                found.push((pid, p, depth + 1));
                frontier.push((pid, depth + 1));
            }
        }
    }
    found
}

/// Is this very process (not a later one with its pid) still running (a zombie is not)?
fn alive(pid: u32, was: Process) -> bool {
    process(pid).is_some_and(|now| now.start == was.start && !matches!(now.state, 'Z' | 'X'))
}

/// Kills what a failed test leaves behind.
struct Leftovers(Vec<(u32, Process)>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for &(pid, p) in &self.0 {
            if alive(pid, p) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn project(level: &str) -> Project {
    // A Python that `nobody` can reach, where there is one, so that a root harness drops to it
    // and the drop's effect on the parent-death signal is covered too.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("python3");
    let p = Project::new(&format!(
        "[suite]\nsnapshot = false\n[sandbox]\nlevel = \"{level}\"\npython = \"{python}\"\nworkers = 2\nallow_host_root = true\n[[models]]\nname = \"ref\"\nsource = \"reference\"\n"
    ));
    p.write("cases/math/wait.toml", SLEEPING_CASE);
    p.write("cases/math/wait_too.toml", SLEEPING_CASE);
    p
}

/// The harness's output goes to files in the project, read once it is gone.
fn to_files(cmd: &mut Command, p: &Project) {
    cmd.stdin(Stdio::null())
        .stdout(File::create(p.path("stdout.txt")).unwrap())
        .stderr(File::create(p.path("stderr.txt")).unwrap());
}

fn output(p: &Project) -> String {
    let read = |f: &str| std::fs::read_to_string(p.path(f)).unwrap_or_default();
    format!("{}{}", read("stdout.txt"), read("stderr.txt"))
}

/// Wait until `harness` runs generated code: a process `depth` levels below it (the worker's
/// child; at the strict level the worker is itself below the process that holds its pid
/// namespace). Returns everything below the harness then, and the harness.
fn wait_for_code_in_flight(harness: u32, depth: usize, p: &Project) -> Vec<(u32, Process)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let below = descendants(harness);
        if below.iter().any(|&(_, _, d)| d >= depth) {
            // Give the other worker its job too.
            std::thread::sleep(Duration::from_millis(1000));
            let mut tree: Vec<(u32, Process)> = descendants(harness)
                .into_iter()
                .map(|(pid, p, _)| (pid, p))
                .collect();
            tree.push((harness, process(harness).expect("the harness runs")));
            return tree;
        }
        assert!(
            Instant::now() < deadline,
            "no generated code ran below the harness:\n{}",
            output(p)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Assert that every process of `tree` is gone within a few seconds.
fn assert_all_gone(tree: &[(u32, Process)], p: &Project) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = tree
            .iter()
            .filter(|&&(pid, was)| alive(pid, was))
            .map(|&(pid, _)| pid)
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running 5 s later: {left:?} of {tree:?}\n{}",
            output(p)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn code_depth(level: &str) -> usize {
    if level == "strict" { 3 } else { 2 }
}

#[test]
fn killing_the_process_that_started_the_harness_stops_it_and_its_workers() {
    for level in ["strict", "basic"] {
        let p = project(level);
        // `sh` stands for cargo: it starts the harness and waits for it.
        let harness_cmd = p.command(&[("CODEGEN_SANDBOX_LEVEL", "")], &[]);
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("\"$0\" \"$@\" & wait")
            .arg(harness_cmd.get_program())
            .args(harness_cmd.get_args())
            .current_dir(p.dir.path());
        for (key, value) in harness_cmd.get_envs() {
            match value {
                Some(v) => sh.env(key, v),
                None => sh.env_remove(key),
            };
        }
        to_files(&mut sh, &p);
        let mut sh: Child = sh.spawn().unwrap();
        let sh_pid = sh.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let harness = loop {
            if let Some(&(pid, _, _)) = descendants(sh_pid).iter().find(|&&(_, _, d)| d == 1) {
                break pid;
            }
            assert!(Instant::now() < deadline, "sh did not start the harness");
            std::thread::sleep(Duration::from_millis(20));
        };
        let tree = wait_for_code_in_flight(harness, code_depth(level), &p);
        let _cleanup = Leftovers(tree.clone());

        sh.kill().unwrap();
        sh.wait().unwrap();
        assert_all_gone(&tree, &p);
        let text = output(&p);
        assert!(
            text.contains(&format!(
                "codegen: the parent process (sh, pid {sh_pid}) is gone; stopping"
            )),
            "{level}:\n{text}"
        );
    }
}

#[test]
fn killing_the_harness_leaves_no_worker_running() {
    for level in ["strict", "basic"] {
        let p = project(level);
        let mut cmd = p.command(&[("CODEGEN_SANDBOX_LEVEL", "")], &[]);
        to_files(&mut cmd, &p);
        let mut harness = cmd.spawn().unwrap();
        let tree = wait_for_code_in_flight(harness.id(), code_depth(level), &p);
        let _cleanup = Leftovers(tree.clone());

        harness.kill().unwrap();
        harness.wait().unwrap();
        assert_all_gone(&tree, &p);
    }
}
