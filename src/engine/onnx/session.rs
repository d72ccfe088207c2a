//! Opening an ONNX Runtime session for a model folder: the execution provider (CUDA, or CPU
//! when the user asked for `auto` and CUDA cannot load), intra-op threads, deterministic
//! kernels, and CUDA graph capture. ONNX Runtime reports failures as text; the provider the
//! session was opened for decides their variant ([`EngineError::Cuda`] or `Session`), and no
//! code reads the text to decide anything.

use std::path::Path;

use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use super::attention;
use super::error::EngineError;
use crate::device::Provider;
use crate::provision::runtime::{self, Runtime};

/// How to open a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionSpec {
    pub provider: Provider,
    /// A CUDA provider that fails to register falls back to CPU (the user asked for `auto`).
    pub cpu_fallback: bool,
    /// Intra-op threads (0: one per core on CPU, one under CUDA).
    pub threads: usize,
    /// Ask CUDA for graph capture.
    pub graph: bool,
    pub deterministic: bool,
    pub spin: bool,
    /// The CUDA device the session runs on (ignored on CPU).
    pub device_id: u32,
    /// On CPU, run attention on our own kernel ([`super::attention`]) where the CPU has it.
    pub own_attention: bool,
}

/// An open session and what it runs on.
pub(crate) struct Opened {
    pub session: Session,
    pub provider: Provider,
    pub threads: usize,
    /// Whether decode steps can be captured into CUDA graphs.
    pub graph_capture: bool,
    /// Whether attention runs on our kernel.
    pub own_attention: bool,
}

/// Create the session for `dir`.
pub(crate) fn open(rt: &Runtime, dir: &Path, spec: SessionSpec) -> Result<Opened, EngineError> {
    let setup = |e: ort::Error| EngineError::Session(e.to_string());
    let builder_err =
        |e: ort::Error<ort::session::builder::SessionBuilder>| EngineError::Session(e.to_string());
    let mut builder = Session::builder(&rt.environment)
        .map_err(setup)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(builder_err)?
        .with_inter_threads(1)
        .map_err(builder_err)?
        .with_deterministic_compute(spec.deterministic)
        .map_err(builder_err)?;
    let mut provider = Provider::Cpu;
    if spec.provider == Provider::Cuda
        && let Some(why) = rt.cuda_unavailable()
    {
        if !spec.cpu_fallback {
            return Err(EngineError::Cuda(why.to_string()));
        }
        eprintln!("codegen: CUDA is not usable ({why}); running on CPU");
    } else if spec.provider == Provider::Cuda {
        let cuda = ort::ep::CUDA::default()
            .with_device_id(spec.device_id as i32)
            .with_cuda_graph(spec.graph);
        match cuda.register(&mut builder) {
            Ok(()) => provider = Provider::Cuda,
            Err(e) if !spec.cpu_fallback => {
                return Err(EngineError::Cuda(runtime::explain_cuda_failure(
                    &e.to_string(),
                )));
            }
            Err(e) => eprintln!(
                "codegen: CUDA execution provider did not load ({}); running on CPU",
                runtime::explain_cuda_failure(&e.to_string())
            ),
        }
    }
    // CPU: one intra-op thread per core (fixed, for reproducible results). CUDA: the graph
    // runs on the GPU, and a spinning pool of CPU threads only gets in the way.
    let threads = match (spec.threads, provider) {
        (0, Provider::Cuda) => 1,
        (0, Provider::Cpu) => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        (n, _) => n,
    };
    // Spinning pool threads gain ~15% on an idle machine but halve decode speed on a busy one
    // (sandboxes run beside the engine), so they are off unless asked for.
    builder = builder
        .with_intra_threads(threads)
        .map_err(builder_err)?
        .with_intra_op_spinning(spec.spin)
        .map_err(builder_err)?;
    let graph_capture = spec.graph && provider == Provider::Cuda;
    let model = dir.join("model.onnx");
    let load = |e: ort::Error| load_error(dir, provider, graph_capture, &e.to_string());
    // The rewritten graph is loaded from memory and finds its weights by the folder's path, as
    // text (`own_graph` refuses a folder whose path is not UTF-8).
    let folder = dir
        .to_str()
        .filter(|_| spec.own_attention && provider == Provider::Cpu);
    let own_graph = folder.and_then(|folder| Some((folder, attention::own_graph(&model)?)));
    let own_attention = own_graph.is_some();
    let session = match own_graph {
        Some((folder, graph)) => builder
            .with_operators(attention::domain().map_err(setup)?)
            .map_err(builder_err)?
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                folder,
            )
            .map_err(builder_err)?
            .commit_from_memory(&graph)
            .map_err(load)?,
        None => builder.commit_from_file(&model).map_err(load)?,
    };
    Ok(Opened {
        session,
        provider,
        threads,
        graph_capture,
        own_attention,
    })
}

/// A failure to load `model.onnx`, as an error of the provider it was loaded for. With graph
/// capture asked for, the provider itself loaded (it registered), so no driver or library
/// advice is added: the caller tries again without capture when capture was only wanted.
fn load_error(dir: &Path, provider: Provider, graph: bool, message: &str) -> EngineError {
    if graph {
        return EngineError::Session(format!(
            "failed to load {}/model.onnx with CUDA graph capture (CODEGEN_CUDA_GRAPH=0 loads it without): {message}",
            dir.display()
        ));
    }
    match provider {
        Provider::Cuda => EngineError::Cuda(format!(
            "failed to load {}/model.onnx: {}",
            dir.display(),
            runtime::explain_cuda_failure(message)
        )),
        Provider::Cpu => EngineError::Session(format!(
            "failed to load {}/model.onnx: {message}",
            dir.display()
        )),
    }
}

/// Run options that name CUDA graph `id` (-1: run without capturing).
pub(crate) fn graph_run_options(id: i64) -> Result<ort::session::RunOptions, EngineError> {
    let mut options = ort::session::RunOptions::new().map_err(EngineError::run)?;
    options
        .set("gpu_graph_id", id.to_string())
        .map_err(EngineError::run)?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_failures_name_the_file_and_the_provider() {
        let dir = Path::new("/m");
        assert!(matches!(
            load_error(dir, Provider::Cuda, false, "libcudnn.so.9: cannot open"),
            EngineError::Cuda(m) if m.contains("/m/model.onnx") && m.contains("cuDNN")
        ));
        let cpu = load_error(dir, Provider::Cpu, false, "bad proto");
        assert_eq!(
            cpu.to_string(),
            "failed to create the ONNX Runtime session: failed to load /m/model.onnx: bad proto"
        );
        // Capture asked for: the provider loaded, so no driver advice.
        let capture = load_error(
            dir,
            Provider::Cuda,
            true,
            "cannot use the graph capture feature",
        );
        assert!(
            matches!(&capture, EngineError::Session(m) if m.contains("with CUDA graph capture") && !m.contains("driver")),
            "{capture}"
        );
    }
}
