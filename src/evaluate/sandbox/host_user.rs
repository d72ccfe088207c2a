//! Which host uid generated code runs as.
//!
//! A harness running as root starts its workers as `nobody` (uid 65534), so that even a
//! Landlock bypass would meet ordinary permissions (/etc/shadow, /root). That only works when
//! `nobody` can reach the interpreter and its standard library; a Python under a root-only
//! home (`/root/.pyenv`) cannot be. Generated code would then run as host root: the strict
//! level refuses that unless `[sandbox] allow_host_root = true`, and every level says it in
//! the isolation line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::SandboxError;
use super::config::{Level, SandboxConfig};

/// The overflow uid/gid, which the workers of a root harness become.
pub const NOBODY: u32 = 65534;

/// Interpreters that are usually installed under a world-readable prefix, suggested when the
/// configured one is not reachable by [`NOBODY`].
const WORLD_READABLE_CANDIDATES: &[&str] = &["/usr/bin/python3", "/usr/local/bin/python3"];

/// A path `nobody` cannot use, and the permission it lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blocked {
    path: PathBuf,
    /// The permission bits, or `None` when the path cannot be read at all.
    mode: Option<u32>,
    /// What others need: `x` to pass through a directory, `rx` to read or run.
    needs: &'static str,
}

/// Why `nobody` cannot run an interpreter: the paths it cannot reach.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unreachable {
    python: PathBuf,
    blocked: Vec<Blocked>,
}

impl Unreachable {
    /// "uid 65534 cannot reach /x/bin/python3: /x is mode 0700 (others need x)".
    fn reason(&self) -> String {
        let paths: Vec<String> = self
            .blocked
            .iter()
            .map(|b| match b.mode {
                Some(mode) => format!(
                    "{} is mode {:04o} (others need {})",
                    b.path.display(),
                    mode & 0o7777,
                    b.needs
                ),
                None => format!("{} cannot be read", b.path.display()),
            })
            .collect();
        format!(
            "uid {NOBODY} cannot reach {}: {}",
            self.python.display(),
            paths.join(", ")
        )
    }

    /// How to let `nobody` run generated code: another interpreter or `chmod`.
    fn fix(&self) -> String {
        let reachable = WORLD_READABLE_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file() && unreachable_by_nobody(p).is_none());
        let other = match reachable {
            Some(p) => format!(
                "use a Python under a world-readable prefix (`python = \"{}\"` under [sandbox], which uid {NOBODY} can reach)",
                p.display()
            ),
            None => {
                "use a Python under a world-readable prefix (`python = \"...\"` under [sandbox])"
                    .into()
            }
        };
        let dirs: Vec<String> = self
            .blocked
            .iter()
            .map(|b| b.path.display().to_string())
            .collect();
        format!("{other}, or run `chmod o+rx {}`", dirs.join(" "))
    }
}

/// The paths below which `python` and its standard library lie that `nobody` cannot pass
/// (every ancestor directory needs o+x, the interpreter and the library directory o+rx);
/// `None` when it can run the interpreter.
fn unreachable_by_nobody(python: &Path) -> Option<Unreachable> {
    let mut blocked = Vec::new();
    let mut need = |p: &Path, bits: u32, needs: &'static str| {
        let mode = std::fs::metadata(p).ok().map(|m| m.permissions().mode());
        if mode.is_none_or(|m| m & bits != bits) && !blocked.iter().any(|b: &Blocked| b.path == p) {
            blocked.push(Blocked {
                path: p.to_path_buf(),
                mode,
                needs,
            });
        }
    };
    let mut reach = |p: &Path| {
        for dir in p.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
            need(dir, 0o001, "x");
        }
        need(p, 0o005, "rx");
    };
    let real = std::fs::canonicalize(python).unwrap_or_else(|_| python.to_path_buf());
    reach(&real);
    // The standard library lives under the interpreter's prefix (`<prefix>/bin/python3`), or
    // elsewhere for a venv: ask the interpreter.
    let out = Command::new(&real)
        .args([
            "-I",
            "-S",
            "-c",
            "import os; print(os.path.dirname(os.__file__))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            reach(Path::new(String::from_utf8_lossy(&o.stdout).trim()));
        }
        _ => {
            if let Some(prefix) = real.parent().and_then(Path::parent) {
                reach(prefix);
            }
        }
    }
    (!blocked.is_empty()).then_some(Unreachable {
        python: real,
        blocked,
    })
}

/// The host user generated code runs as, decided once before any worker starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostUser {
    /// Become this uid/gid before anything else (the harness runs as root).
    pub(super) drop_to: Option<u32>,
    /// Why generated code runs as host root, when it does.
    pub(super) as_root_because: Option<String>,
    /// The interpreter to run instead of the one found first on `PATH`, and why: the config
    /// named a bare `python3`, the first one is not reachable by `nobody`, and this one is.
    pub(super) python_instead: Option<(PathBuf, String)>,
}

/// `major.minor` of an interpreter.
fn version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args([
            "-I",
            "-S",
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A world-readable interpreter of the same `major.minor` as `python` that `nobody` can run.
fn reachable_alternative(python: &Path) -> Option<PathBuf> {
    let wanted = version(python)?;
    WORLD_READABLE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            p.is_file()
                && unreachable_by_nobody(p).is_none()
                && version(p).as_ref() == Some(&wanted)
        })
}

/// Decide who runs generated code when the harness runs as `euid`: `nobody` for a root
/// harness whose interpreter it can reach, else the harness's own user. Host root is refused
/// at the strict level unless the config allows it, with why and how to avoid it.
pub(super) fn decide(
    python: &Path,
    config: &SandboxConfig,
    euid: u32,
) -> Result<HostUser, SandboxError> {
    if euid != 0 {
        return Ok(HostUser {
            drop_to: None,
            as_root_because: None,
            python_instead: None,
        });
    }
    let Some(unreachable) = unreachable_by_nobody(python) else {
        return Ok(HostUser {
            drop_to: Some(NOBODY),
            as_root_because: None,
            python_instead: None,
        });
    };
    // The config asked for "python3", not for this file: any python3 of the same version that
    // `nobody` can run makes the drop work.
    if config.python_from_path
        && let Some(other) = reachable_alternative(python)
    {
        let why = format!(
            "{} instead of {} from PATH, which uid {NOBODY} cannot reach",
            other.display(),
            python.display()
        );
        return Ok(HostUser {
            drop_to: Some(NOBODY),
            as_root_because: None,
            python_instead: Some((other, why)),
        });
    }
    if config.level == Level::Strict && !config.allow_host_root {
        return Err(SandboxError::HostRoot {
            reason: unreachable.reason(),
            fix: unreachable.fix(),
        });
    }
    Ok(HostUser {
        drop_to: None,
        python_instead: None,
        as_root_because: Some(format!(
            "{}; to avoid it, {}",
            unreachable.reason(),
            unreachable.fix()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_below_a_private_directory_is_named_with_its_mode() {
        let Some(python) = WORLD_READABLE_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
        else {
            return; // no system Python to copy
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let copy = dir.path().join("python3");
        std::fs::copy(python, &copy).unwrap();
        let why = unreachable_by_nobody(&copy).expect("unreachable");
        let dir_name = std::fs::canonicalize(dir.path()).unwrap();
        assert!(
            why.reason().contains(&format!(
                "{} is mode 0700 (others need x)",
                dir_name.display()
            )),
            "{}",
            why.reason()
        );
        assert!(
            why.fix()
                .contains(&format!("chmod o+rx {}", dir_name.display())),
            "{}",
            why.fix()
        );
    }

    #[test]
    fn only_a_root_harness_at_strict_without_permission_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let python = dir.path().join("python3");
        let strict = SandboxConfig::default();
        assert_eq!(
            decide(&python, &strict, 1000).unwrap(),
            HostUser {
                drop_to: None,
                as_root_because: None,
                python_instead: None,
            }
        );
        let err = decide(&python, &strict, 0).unwrap_err().to_string();
        assert!(err.contains("allow_host_root = true"), "{err}");
        let allowed = SandboxConfig {
            allow_host_root: true,
            ..SandboxConfig::default()
        };
        let basic = SandboxConfig {
            level: Level::Basic,
            ..SandboxConfig::default()
        };
        for config in [allowed, basic] {
            let user = decide(&python, &config, 0).unwrap();
            assert_eq!(user.drop_to, None);
            assert!(
                user.as_root_because
                    .is_some_and(|why| why.contains("cannot reach")),
                "{config:?}"
            );
        }
    }

    #[test]
    fn a_bare_python3_is_replaced_by_one_nobody_can_run() {
        let system = Path::new("/usr/bin/python3");
        if !system.is_file() || unreachable_by_nobody(system).is_some() {
            return; // nothing to stand in on this machine
        }
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let made = Command::new(system)
            .args(["-m", "venv", "--copies", "--without-pip"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let python = venv.join("bin/python3");
        let named = SandboxConfig {
            python_from_path: true,
            ..SandboxConfig::default()
        };
        let user = decide(&python, &named, 0).unwrap();
        assert_eq!(user.drop_to, Some(NOBODY));
        let (other, why) = user.python_instead.unwrap();
        assert_eq!(other, system);
        assert!(why.contains("cannot reach"), "{why}");
        // A python the config named by its path is never swapped: refused at strict.
        assert!(decide(&python, &SandboxConfig::default(), 0).is_err());
    }
}
