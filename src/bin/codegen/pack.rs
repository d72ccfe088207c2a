//! `codegen pack` and `codegen unpack`: the command-line side of [`codegen_harness::pack`].
//! Pack gathers this binary, the config and what it names, the GGUFs of its default models and
//! the wheels (exporter, GPU runtime) into parts; unpack verifies, places and runs on the device.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::Args;
use codegen_harness::config::{Config, ModelProfile};
use codegen_harness::env::Env;
use codegen_harness::models;
use codegen_harness::pack::{self, Entry, Manifest, Place};
use codegen_harness::provision::{self, EXPORTER_VENV, Provisioner};

#[derive(Args)]
pub struct PackArgs {
    /// Config file to bundle (relative paths in it resolve against the current directory).
    #[arg(long)]
    config: PathBuf,
    /// Folder to write the parts and unpack.sh into (make it git-ignored).
    #[arg(long)]
    out: PathBuf,
    /// Largest part, in bytes with an optional K, M or G suffix.
    #[arg(long, default_value = "60M")]
    part_size: String,
    /// Python versions (of the GPU machine) to bundle the exporter's wheels for.
    #[arg(long = "python-version", default_values = ["3.11", "3.12", "3.13"])]
    python_versions: Vec<String>,
    /// What of the GPU runtime to bundle for cuda/auto profiles: `all` (onnxruntime-gpu and the
    /// CUDA 13 / cuDNN 9 wheels, ~1.5 GB), `onnxruntime` (onnxruntime-gpu only, for GPU machines
    /// that have CUDA 13 and cuDNN 9 installed, as `codegen doctor` there shows) or `none`.
    #[arg(long, value_enum, default_value = "all")]
    gpu_runtime: GpuRuntime,
    /// Model profiles to bundle, comma-separated (default: the enabled ones).
    #[arg(long)]
    models: Option<String>,
    /// Folder on the device the printed commands copy the parts into.
    #[arg(long, default_value = "/tmp/codegen-bundle")]
    stage: String,
}

/// How much of the GPU runtime a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuRuntime {
    All,
    Onnxruntime,
    None,
}

#[derive(Args)]
pub struct UnpackArgs {
    /// The extracted bundle (the folder holding manifest.json).
    bundle: PathBuf,
    /// Cache to place GGUFs and wheels in (default: CODEGEN_CACHE, else the per-user cache).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Run the suite afterwards (otherwise the command is printed).
    #[arg(long)]
    run: bool,
}

/// Copy the running binary into `dir`, stripped when `strip` works.
fn stage_binary(dir: &Path) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to find the running codegen binary")?;
    let dest = dir.join("codegen");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&dest)
        .arg(&exe)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(&exe, &dest).with_context(|| format!("failed to copy {}", exe.display()))?;
    }
    Ok(dest)
}

/// The GGUF of default model `name`, fetched into the cache.
fn default_model_entry(provisioner: &Provisioner, name: &str) -> anyhow::Result<Entry> {
    let model = models::DEFAULT_MODELS
        .iter()
        .find(|m| m.name == name)
        .with_context(|| format!("failed to pack model {name:?}: it is not a file or folder under the project root, nor a default model"))?;
    let gguf = models::fetch_gguf(provisioner, model)
        .with_context(|| format!("failed to fetch the GGUF of {name}"))?;
    Ok(Entry {
        source: gguf,
        path: format!("gguf/{name}.gguf"),
        place: Place::Gguf {
            model: name.to_string(),
        },
    })
}

/// The ONNX Runtime wheels the profiles' devices need (`--gpu-runtime` says which for GPUs).
fn runtime_entries(
    args: &PackArgs,
    provisioner: &Provisioner,
    profiles: &[&ModelProfile],
    entries: &mut Vec<Entry>,
) -> anyhow::Result<()> {
    let devices: Vec<_> = profiles
        .iter()
        .filter_map(|p| match &p.source {
            codegen_harness::config::SourceConfig::Onnx { device, .. } => Some(*device),
            _ => None,
        })
        .collect();
    use codegen_harness::device::Device;
    let mut wheels = Vec::new();
    if devices.iter().any(|d| *d != Device::Cuda) {
        wheels.push(provision::ONNXRUNTIME);
    }
    if devices.iter().any(|d| *d != Device::Cpu) {
        match args.gpu_runtime {
            GpuRuntime::All => wheels.extend(provision::gpu_runtime_wheels()),
            GpuRuntime::Onnxruntime => wheels.push(provision::ONNXRUNTIME_GPU),
            GpuRuntime::None => {}
        }
    }
    for wheel in wheels {
        let path = provisioner.wheel(&wheel)?;
        entries.push(Entry {
            source: path,
            path: format!("wheels/{}/{}", wheel.package, wheel.file),
            place: Place::Wheel {
                package: wheel.package.to_string(),
            },
        });
    }
    Ok(())
}

/// The exporter's wheels for each `--python-version`, downloaded under `staging` (each file
/// once).
fn wheelhouse_entries(
    args: &PackArgs,
    provisioner: &Provisioner,
    staging: &Path,
    entries: &mut Vec<Entry>,
) -> anyhow::Result<()> {
    for version in &args.python_versions {
        eprintln!("codegen: downloading the exporter's wheels for Python {version}");
        let dir = staging.join(format!("py{version}"));
        for whl in provisioner.download_for_python(&EXPORTER_VENV, version, &dir)? {
            let name = whl.file_name().unwrap_or_default().to_string_lossy();
            let path = format!("wheelhouse/{name}");
            if !entries.iter().any(|e| e.path == path) {
                entries.push(Entry {
                    source: whl.clone(),
                    path,
                    place: Place::Wheelhouse,
                });
            }
        }
    }
    Ok(())
}

pub fn pack(args: PackArgs, env: &Env, provisioner: &Provisioner) -> anyhow::Result<()> {
    let part_size = pack::parse_size(&args.part_size)?;
    let root = std::env::current_dir().context("failed to read the current directory")?;
    let config_path = if args.config.is_absolute() {
        args.config.clone()
    } else {
        root.join(&args.config)
    };
    let config = Config::load(&config_path, &root)?;
    let selection: Option<Vec<String>> = args
        .models
        .as_deref()
        .map(|m| m.split(',').map(|s| s.trim().to_string()).collect())
        .or_else(|| env.models.clone());
    let profiles = config.selected_models(selection.as_deref())?;
    let plan = pack::project_entries(&config, &profiles)?;

    let staging = args.out.join(".staging");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("failed to remove {}", staging.display()))?;
    }
    fs::create_dir_all(&staging)
        .with_context(|| format!("failed to create {}", staging.display()))?;
    let mut entries = vec![Entry {
        source: stage_binary(&staging)?,
        path: "codegen".into(),
        place: Place::Bundle,
    }];
    entries.extend(plan.entries.iter().cloned());
    for name in &plan.default_models {
        entries.push(default_model_entry(provisioner, name)?);
    }
    if plan.onnx {
        runtime_entries(&args, provisioner, &profiles, &mut entries)?;
        wheelhouse_entries(&args, provisioner, &staging, &mut entries)?;
    }

    let manifest = Manifest::build(&plan.config, &entries)?;
    let parts = pack::write_parts(&args.out, &manifest, &entries, part_size)?;
    let script = args.out.join(pack::UNPACK_SCRIPT);
    fs::write(&script, pack::unpack_script(parts.len()))
        .with_context(|| format!("failed to write {}", script.display()))?;
    let _ = fs::remove_dir_all(&staging);

    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    eprintln!(
        "codegen: packed {} files ({}) into {} part(s) of at most {} under {}",
        manifest.files.len(),
        models::human_bytes(total),
        parts.len(),
        models::human_bytes(part_size),
        args.out.display()
    );
    eprintln!("codegen: send each line below as one command, in order (each carries one part):");
    let shown = |p: &Path| {
        p.strip_prefix(&root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let part_names: Vec<String> = parts.iter().map(|p| shown(p)).collect();
    for line in pack::send_commands(&part_names, &shown(&script), &args.stage) {
        println!("{line}");
    }
    Ok(())
}

pub fn unpack(args: UnpackArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let bundle = fs::canonicalize(&args.bundle)
        .with_context(|| format!("failed to read {}", args.bundle.display()))?;
    let cache = args.cache.unwrap_or_else(|| env.cache.clone());
    let manifest = Manifest::read(&bundle)?;
    pack::verify(&bundle, &manifest, &cache)?;
    let moved = pack::place(&bundle, &manifest, &cache)?;
    eprintln!(
        "codegen: verified {} files; placed {moved} into {}",
        manifest.files.len(),
        cache.display()
    );
    if !args.run {
        println!("{}", pack::run_command(&bundle, &manifest, &cache));
        return Ok(ExitCode::SUCCESS);
    }
    let exe = bundle.join("codegen");
    if !exe.is_file() {
        bail!("failed to run the suite: {} is missing", exe.display());
    }
    let mut cmd = Command::new(&exe);
    cmd.current_dir(&bundle)
        .args(["run", "--config", &manifest.config])
        .env("CODEGEN_CACHE", &cache);
    if manifest.has_wheelhouse() {
        cmd.env("CODEGEN_WHEELHOUSE", pack::wheelhouse(&cache));
    }
    eprintln!("codegen: {}", pack::run_command(&bundle, &manifest, &cache));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {}", exe.display()))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}
