//! `codegen merge DIR... [--out DIR]`: the shards of a run into the results, summary,
//! Markdown, JUnit and HTML report of one unsharded run, the summary tables, and the gate's
//! verdict (exit status 101 when it fails or a trial failed in a shard, as `codegen run`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use codegen_harness::env::Env;
use codegen_harness::merge;
use codegen_harness::report;
use codegen_harness::report::ending::{self, GateEnd, ProfileEnd};

#[derive(Args)]
pub struct MergeArgs {
    /// Shard folders (each with a manifest.json), or folders holding shard-K-of-N folders.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where to write the merged results (default: the config's `[suite] results`).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: MergeArgs, env: Env) -> anyhow::Result<ExitCode> {
    let out = match args.out {
        Some(out) => out,
        None => crate::results_dir(env)?,
    };
    let dirs = merge::shard_dirs(&args.dirs)?;
    let shards = merge::load(&dirs)?;
    let merged = merge::merge(&shards);
    let written = merged
        .write(&out)
        .with_context(|| format!("failed to merge {} shards", shards.len()))?;
    println!(
        "codegen: merged {} shards of {}",
        shards.len(),
        shards
            .first()
            .map(|s| s.manifest.shard.count())
            .unwrap_or(0)
    );
    for (m, path) in merged.models.iter().zip(&written) {
        let ran: Vec<_> = m.outcomes.iter().collect();
        print!(
            "{}",
            report::conclusion(&m.summary, m.baseline, &ran, &merged.isolation)
        );
        for w in &m.source_warnings {
            println!("  warning: {w}");
        }
        println!("  results: {}", path.display());
        for line in report::gate_lines(&m.verdict) {
            println!("  {line}");
        }
    }
    if merged.models.len() >= 2 {
        let (summaries, outcomes) = merged.side_by_side();
        println!();
        print!("{}", report::models::text(&summaries, &outcomes));
    }
    for (dir, n) in &merged.failed_trials {
        println!(
            "\n{n} trial(s) failed in {} (snapshot mismatches or errors: see that shard's output)",
            dir.display()
        );
    }
    let ends: Vec<ProfileEnd> = merged
        .models
        .iter()
        .zip(&written)
        .map(|(m, path)| ProfileEnd {
            model: m.summary.model.clone(),
            trials: m.summary.trials,
            gate: GateEnd::of(&m.verdict),
            results: Some(path.clone()),
        })
        .collect();
    let report = out.join("report.html");
    print!("{}", ending::lines(&ends, &out, Some(&report)));
    Ok(if merged.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    })
}
