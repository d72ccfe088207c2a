//! The `codegen` command line: import case suites, and (later) fetch models and run benchmarks.

fn main() -> anyhow::Result<()> {
    Ok(())
}
