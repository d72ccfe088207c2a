//! The CUDA 13 / cuDNN 9 libraries that ONNX Runtime's CUDA execution provider needs, found
//! and preloaded so that no one has to set `LD_LIBRARY_PATH`.
//!
//! Where they come from, in order: a folder the user names (`CODEGEN_CUDA_LIBS`, and nothing
//! else then); else libraries the system already provides (the `ldconfig` cache) and those a
//! Python environment already has (`site-packages/nvidia/*/lib` of the base Python's
//! `sys.path`), library by library; else the pinned wheels
//! ([`crate::provision::CUDA_WHEELS`], hash-checked), their `nvidia/**/lib*.so*` unpacked under
//! `<cache>/cuda/<version-set>/lib` ([`fetch`]).
//!
//! The libraries are then opened with `RTLD_NOW | RTLD_GLOBAL` in dependency order ([`LIBS`])
//! before the provider is registered: the provider's `DT_NEEDED` entries and its (and cuDNN's)
//! `dlopen` by soname then resolve to the already loaded copies. The handles are leaked on
//! purpose: the libraries stay loaded for the life of the process.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::provision::ProvisionError;
use crate::provision::cache::FileError;

mod fetch;
pub use fetch::{version_set, wheel_library};

/// One library of the set, by soname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lib {
    pub soname: &'static str,
    /// Whether the provider cannot run without it (optional ones are loaded when found).
    pub required: bool,
}

const fn lib(soname: &'static str, required: bool) -> Lib {
    Lib { soname, required }
}

/// Every library, in the order they are loaded: each after the libraries it links.
pub const LIBS: &[Lib] = &[
    lib("libcudart.so.13", true),
    lib("libnvrtc.so.13", false),
    lib("libnvJitLink.so.13", false),
    lib("libcublasLt.so.13", true),
    lib("libcublas.so.13", true),
    lib("libcufft.so.12", false),
    lib("libcurand.so.10", true),
    lib("libcudnn_graph.so.9", true),
    lib("libcudnn_engines_precompiled.so.9", true),
    lib("libcudnn_engines_runtime_compiled.so.9", true),
    lib("libcudnn_heuristic.so.9", true),
    lib("libcudnn_ops.so.9", true),
    lib("libcudnn_cnn.so.9", true),
    lib("libcudnn_adv.so.9", true),
    lib("libcudnn.so.9", true),
];

/// Where a library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The folder `CODEGEN_CUDA_LIBS` names.
    Override,
    /// The system's loader cache or standard folders.
    System,
    /// A Python environment's `nvidia` packages.
    Python,
    /// The pinned wheels, unpacked into the cache.
    Downloaded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Override => "CODEGEN_CUDA_LIBS",
            Origin::System => "system",
            Origin::Python => "Python environment",
            Origin::Downloaded => "downloaded wheels",
        })
    }
}

/// A place libraries are looked for: its origin and the soname -> file it provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub origin: Origin,
    /// The folders searched (for messages).
    pub folders: Vec<PathBuf>,
    pub provides: BTreeMap<String, PathBuf>,
}

/// One library found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub soname: &'static str,
    pub path: PathBuf,
    pub origin: Origin,
}

/// What the search decided: the libraries to load, in order, and the required ones missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub found: Vec<Found>,
    pub missing: Vec<&'static str>,
}

/// The libraries that were loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaLibs {
    pub loaded: Vec<Found>,
}

impl fmt::Display for CudaLibs {
    /// `14 CUDA libraries: libcudart.so.13 ... from Python environment (/x/nvidia/cu13/lib), ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for found in &self.loaded {
            let dir = found.path.parent().unwrap_or(Path::new("")).display();
            let key = format!("{} ({dir})", found.origin);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, names)) => names.push(found.soname),
                None => groups.push((key, vec![found.soname])),
            }
        }
        write!(f, "{} CUDA libraries loaded: ", self.loaded.len())?;
        let parts: Vec<String> = groups
            .iter()
            .map(|(k, names)| format!("{} from {k}", names.join(" ")))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// How the search is set up, decided at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaSpec {
    /// `CODEGEN_CUDA_LIBS`: use this folder only.
    pub libs: Option<PathBuf>,
    /// The per-user cache (downloaded wheels and the unpacked set).
    pub cache: PathBuf,
    /// The base Python: its `sys.path` is searched, its pip downloads the wheels.
    pub python: PathBuf,
}

/// A failure to find, fetch or load the CUDA libraries.
#[derive(Debug, Error)]
pub enum CudaError {
    #[error("failed to find {missing} (looked in {looked}); {remedy}")]
    Missing {
        missing: String,
        looked: String,
        remedy: String,
    },
    #[error(
        "failed to fetch the CUDA libraries: {0} (point CODEGEN_CUDA_LIBS at a folder of the CUDA 13 and cuDNN 9 libraries to work offline)"
    )]
    Fetch(#[from] ProvisionError),
    #[error("failed to unpack {path}: {message}")]
    Unpack { path: String, message: String },
    #[error("failed to load {path}: {message}")]
    Load { path: String, message: String },
    #[error(transparent)]
    Io(#[from] FileError),
}

const REMEDY: &str = "set CODEGEN_CUDA_LIBS to a folder holding the CUDA 13 and cuDNN 9 libraries, or pip install nvidia-cuda-runtime nvidia-cublas nvidia-curand nvidia-cudnn-cu13 (CUDA 13 line) into the base Python, or run with --device cpu";

/// Pick each library from the first source that provides it.
pub fn plan(sources: &[Source]) -> Plan {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for lib in LIBS {
        let hit = sources
            .iter()
            .find_map(|s| s.provides.get(lib.soname).map(|p| (s, p)));
        match hit {
            Some((source, path)) => found.push(Found {
                soname: lib.soname,
                path: path.clone(),
                origin: source.origin.clone(),
            }),
            None if lib.required => missing.push(lib.soname),
            None => {}
        }
    }
    Plan { found, missing }
}

/// The sonames of [`LIBS`] that `folders` hold (the first folder wins).
pub fn scan(folders: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let mut provides = BTreeMap::new();
    for folder in folders {
        for lib in LIBS {
            let path = folder.join(lib.soname);
            if path.exists() && !provides.contains_key(lib.soname) {
                provides.insert(lib.soname.to_string(), path);
            }
        }
    }
    provides
}

/// The library folders of the `nvidia` packages under each of `sys_path` (CUDA 13 wheels put
/// theirs in `nvidia/cu13/lib`, cuDNN in `nvidia/cudnn/lib`, older ones in `nvidia/*/lib`).
pub fn python_lib_dirs(sys_path: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for entry in sys_path {
        let Ok(read) = fs::read_dir(entry.join("nvidia")) else {
            continue;
        };
        let mut found: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .map(|e| e.path().join("lib"))
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        // cu13 first: it is the folder of the CUDA 13 wheels.
        found.sort_by_key(|p| !p.ends_with("cu13/lib"));
        for d in found {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// `soname -> path` of the x86-64 libraries in `ldconfig -p`'s output.
pub fn parse_ldconfig(text: &str) -> BTreeMap<String, PathBuf> {
    let mut libs = BTreeMap::new();
    for line in text.lines().skip(1) {
        let Some((left, path)) = line.split_once(" => ") else {
            continue;
        };
        let left = left.trim();
        let Some((name, tags)) = left.split_once(' ') else {
            continue;
        };
        if tags.contains("x86-64") && LIBS.iter().any(|l| l.soname == name) {
            libs.entry(name.to_string())
                .or_insert_with(|| PathBuf::from(path.trim()));
        }
    }
    libs
}

/// The system's libraries: the loader cache, then the usual CUDA folders.
fn system_source() -> Source {
    let folders: Vec<PathBuf> = [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/cuda-13/lib64",
        "/usr/lib/x86_64-linux-gnu",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let mut provides = ["/sbin/ldconfig", "ldconfig"]
        .iter()
        .find_map(|p| Command::new(p).arg("-p").output().ok())
        .filter(|o| o.status.success())
        .map(|o| parse_ldconfig(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    for (name, path) in scan(&folders) {
        provides.entry(name).or_insert(path);
    }
    let mut looked = vec![PathBuf::from("the ldconfig cache")];
    looked.extend(folders);
    Source {
        origin: Origin::System,
        folders: looked,
        provides,
    }
}

/// The `nvidia` packages of the base Python's `sys.path`.
fn python_source(python: &Path) -> Source {
    let code = "import site, sys\nprint('\\n'.join(sys.path + site.getsitepackages() + [site.getusersitepackages()]))";
    let sys_path: Vec<PathBuf> = Command::new(python)
        .args(["-c", code])
        .env_remove("PYTHONHOME")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let folders = python_lib_dirs(&sys_path);
    Source {
        origin: Origin::Python,
        provides: scan(&folders),
        folders: if folders.is_empty() {
            vec![PathBuf::from(format!(
                "{}'s site-packages/nvidia (none found)",
                python.display()
            ))]
        } else {
            folders
        },
    }
}

fn looked(sources: &[Source]) -> String {
    sources
        .iter()
        .flat_map(|s| s.folders.iter().map(|f| f.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Find the libraries (downloading them when `fetch` and nothing local has them all).
pub fn locate(spec: &CudaSpec, fetch: bool) -> Result<Plan, CudaError> {
    if let Some(dir) = &spec.libs {
        let source = Source {
            origin: Origin::Override,
            folders: vec![dir.clone()],
            provides: scan(std::slice::from_ref(dir)),
        };
        let plan = plan(std::slice::from_ref(&source));
        if !plan.missing.is_empty() {
            return Err(CudaError::Missing {
                missing: plan.missing.join(", "),
                looked: format!("{} (CODEGEN_CUDA_LIBS)", dir.display()),
                remedy: "put the CUDA 13 and cuDNN 9 libraries there, or unset CODEGEN_CUDA_LIBS to let the harness search and download them".into(),
            });
        }
        return Ok(plan);
    }
    let local = [system_source(), python_source(&spec.python)];
    let found = plan(&local);
    if found.missing.is_empty() {
        return Ok(found);
    }
    if !fetch {
        return Err(CudaError::Missing {
            missing: found.missing.join(", "),
            looked: looked(&local),
            remedy: REMEDY.into(),
        });
    }
    let dir = fetch::download(spec)?;
    let source = Source {
        origin: Origin::Downloaded,
        provides: scan(std::slice::from_ref(&dir)),
        folders: vec![dir.clone()],
    };
    let plan = plan(std::slice::from_ref(&source));
    if !plan.missing.is_empty() {
        return Err(CudaError::Missing {
            missing: plan.missing.join(", "),
            looked: format!("{}, {}", looked(&local), dir.display()),
            remedy: format!(
                "the pinned wheels lack them: delete {} and retry, or {REMEDY}",
                dir.display()
            ),
        });
    }
    Ok(plan)
}

/// Open every library of `plan` globally, in order, and keep them loaded. A required library
/// that does not load is an error; an optional one is skipped.
pub fn preload(plan: &Plan) -> Result<CudaLibs, CudaError> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    let mut loaded = Vec::new();
    for found in &plan.found {
        let required = LIBS.iter().any(|l| l.soname == found.soname && l.required);
        // SAFETY: these are NVIDIA's libraries, whose initializers have no preconditions.
        match unsafe { Library::open(Some(&found.path), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(handle) => {
                std::mem::forget(handle);
                loaded.push(found.clone());
            }
            Err(e) if required => {
                return Err(CudaError::Load {
                    path: found.path.display().to_string(),
                    message: format!("{e} (found in {}; {REMEDY})", found.origin),
                });
            }
            Err(_) => {}
        }
    }
    Ok(CudaLibs { loaded })
}

/// Find and load the libraries: what [`crate::provision::runtime`] calls before CUDA is used.
pub fn prepare(spec: &CudaSpec) -> Result<CudaLibs, CudaError> {
    preload(&locate(spec, true)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for n in names {
            fs::write(dir.join(n), b"").unwrap();
        }
    }

    fn all_sonames() -> Vec<&'static str> {
        LIBS.iter().map(|l| l.soname).collect()
    }

    fn source(origin: Origin, dir: &Path) -> Source {
        let folders = vec![dir.to_path_buf()];
        Source {
            origin,
            provides: scan(&folders),
            folders,
        }
    }

    #[test]
    fn libraries_load_after_what_they_link() {
        let pos = |s: &str| LIBS.iter().position(|l| l.soname == s).unwrap();
        assert!(pos("libcudart.so.13") < pos("libcublasLt.so.13"));
        assert!(pos("libcublasLt.so.13") < pos("libcublas.so.13"));
        assert!(pos("libnvJitLink.so.13") < pos("libcufft.so.12"));
        for l in LIBS.iter().filter(|l| l.soname.starts_with("libcudnn_")) {
            assert!(pos("libcudnn_graph.so.9") <= pos(l.soname));
            assert!(pos(l.soname) < pos("libcudnn.so.9"));
            assert!(pos("libcublas.so.13") < pos(l.soname));
        }
    }

    #[test]
    fn a_python_env_with_the_cuda13_wheels_provides_everything() {
        let root = tempfile::tempdir().unwrap();
        let site = root.path().join("lib/python3.11/site-packages");
        let (cudnn, cu13): (Vec<&str>, Vec<&str>) =
            all_sonames().into_iter().partition(|s| s.contains("cudnn"));
        touch(&site.join("nvidia/cu13/lib"), &cu13);
        touch(&site.join("nvidia/cudnn/lib"), &cudnn);
        fs::create_dir_all(site.join("nvidia/cudnn/include")).unwrap();
        let dirs = python_lib_dirs(&[root.path().join("nowhere"), site.clone()]);
        assert_eq!(
            dirs,
            vec![site.join("nvidia/cu13/lib"), site.join("nvidia/cudnn/lib")]
        );
        let src = Source {
            origin: Origin::Python,
            provides: scan(&dirs),
            folders: dirs,
        };
        let plan = plan(&[src]);
        assert!(plan.missing.is_empty(), "{:?}", plan.missing);
        assert_eq!(plan.found.len(), LIBS.len());
        assert_eq!(
            plan.found[0].path,
            site.join("nvidia/cu13/lib/libcudart.so.13")
        );
    }

    #[test]
    fn each_library_comes_from_the_first_source_that_has_it() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        let py = root.path().join("py");
        touch(&sys, &["libcudart.so.13", "libcublas.so.13"]);
        touch(&py, &all_sonames());
        let plan = plan(&[source(Origin::System, &sys), source(Origin::Python, &py)]);
        assert!(plan.missing.is_empty());
        let origin = |s: &str| {
            plan.found
                .iter()
                .find(|f| f.soname == s)
                .unwrap()
                .origin
                .clone()
        };
        assert_eq!(origin("libcudart.so.13"), Origin::System);
        assert_eq!(origin("libcudnn.so.9"), Origin::Python);
        let order: Vec<&str> = plan.found.iter().map(|f| f.soname).collect();
        assert_eq!(order, all_sonames());
    }

    #[test]
    fn missing_required_libraries_are_named_and_optional_ones_are_not() {
        let root = tempfile::tempdir().unwrap();
        let names: Vec<&str> = all_sonames()
            .into_iter()
            .filter(|s| !s.starts_with("libcudnn") && !s.starts_with("libnvrtc"))
            .collect();
        touch(root.path(), &names);
        let plan = plan(&[source(Origin::System, root.path())]);
        assert!(plan.missing.contains(&"libcudnn.so.9"));
        assert!(plan.missing.contains(&"libcudnn_graph.so.9"));
        assert!(!plan.missing.contains(&"libnvrtc.so.13"));
        assert!(plan.found.iter().all(|f| f.soname != "libnvrtc.so.13"));
    }

    #[test]
    fn an_override_folder_missing_cudnn_says_what_and_where() {
        let root = tempfile::tempdir().unwrap();
        touch(root.path(), &["libcudart.so.13"]);
        let spec = CudaSpec {
            libs: Some(root.path().to_path_buf()),
            cache: root.path().join("cache"),
            python: "python3".into(),
        };
        let err = locate(&spec, false).unwrap_err().to_string();
        assert!(err.starts_with("failed to find libcublasLt.so.13"), "{err}");
        assert!(err.contains("libcudnn.so.9"), "{err}");
        assert!(err.contains(&root.path().display().to_string()), "{err}");
        assert!(err.contains("CODEGEN_CUDA_LIBS"), "{err}");
        assert!(!root.path().join("cache").exists());
    }

    #[test]
    fn ldconfig_output_gives_the_x86_64_copies() {
        let text = "\
1234 libs found in cache `/etc/ld.so.cache'
\tlibcudart.so.13 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.13
\tlibcudart.so.13 (libc6) => /usr/lib32/libcudart.so.13
\tlibcudnn.so.9 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudnn.so.9
\tlibcudnn.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudnn.so
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
";
        let libs = parse_ldconfig(text);
        assert_eq!(libs.len(), 2);
        assert_eq!(
            libs["libcudart.so.13"],
            PathBuf::from("/usr/local/cuda/lib64/libcudart.so.13")
        );
        assert!(libs.contains_key("libcudnn.so.9"));
    }

    #[test]
    fn the_summary_groups_libraries_by_where_they_came_from() {
        let libs = CudaLibs {
            loaded: vec![
                Found {
                    soname: "libcudart.so.13",
                    path: "/p/cu13/lib/libcudart.so.13".into(),
                    origin: Origin::Python,
                },
                Found {
                    soname: "libcublas.so.13",
                    path: "/p/cu13/lib/libcublas.so.13".into(),
                    origin: Origin::Python,
                },
                Found {
                    soname: "libcudnn.so.9",
                    path: "/usr/lib/libcudnn.so.9".into(),
                    origin: Origin::System,
                },
            ],
        };
        assert_eq!(
            libs.to_string(),
            "3 CUDA libraries loaded: libcudart.so.13 libcublas.so.13 from Python environment (/p/cu13/lib); libcudnn.so.9 from system (/usr/lib)"
        );
    }
}
