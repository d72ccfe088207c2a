//! The project's suite: every case x every configured model, then the summary and the gate.
//! See `harness/codegen.toml`, and docs/configuration.md for the environment variables.

fn main() -> std::process::ExitCode {
    codegen_harness::harness::main(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
}
