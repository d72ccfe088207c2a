//! llama.cpp's tools' output: `llama-bench -o json` (an array of tests) and
//! `llama-batched-bench` (`--output-format jsonl` lines, or its Markdown table). Log lines
//! around the results are skipped.

use serde_json::Value;

use super::LlamaError;

/// One `llama-bench` test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchTest {
    pub n_prompt: u64,
    pub n_gen: u64,
    pub n_depth: u64,
    pub n_threads: u64,
    /// Mean tokens per second over the repetitions.
    pub avg_ts: f64,
    pub samples_ts: Vec<f64>,
    pub build_commit: String,
    pub build_number: u64,
    pub cpu_info: String,
    pub model_type: String,
    pub model_size: u64,
}

fn parse_error(what: &str, detail: impl std::fmt::Display) -> LlamaError {
    LlamaError::Parse(format!("{what}: {detail}"))
}

/// The tests of `llama-bench -o json` output (or `-o jsonl`), whatever surrounds them.
pub fn bench_json(text: &str) -> Result<Vec<BenchTest>, LlamaError> {
    let objects: Vec<Value> = match (text.find('['), text.rfind(']')) {
        (Some(a), Some(b)) if a < b => serde_json::from_str::<Vec<Value>>(&text[a..=b])
            .map_err(|e| parse_error("llama-bench JSON", e))?,
        _ => text
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .map(serde_json::from_str::<Value>)
            .collect::<Result<_, _>>()
            .map_err(|e| parse_error("llama-bench JSON lines", e))?,
    };
    if objects.is_empty() {
        return Err(parse_error("llama-bench output", "no test results in it"));
    }
    Ok(objects.iter().map(bench_test).collect())
}

fn bench_test(v: &Value) -> BenchTest {
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    BenchTest {
        n_prompt: u("n_prompt"),
        n_gen: u("n_gen"),
        n_depth: u("n_depth"),
        n_threads: u("n_threads"),
        avg_ts: v["avg_ts"].as_f64().unwrap_or(0.0),
        samples_ts: v["samples_ts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
        build_commit: s("build_commit"),
        build_number: u("build_number"),
        cpu_info: s("cpu_info"),
        model_type: s("model_type"),
        model_size: u("model_size"),
    }
}

/// One `llama-batched-bench` row: `pl` sequences of `pp` prompt tokens, `tg` generated each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchedRow {
    pub pp: u64,
    pub tg: u64,
    pub pl: u64,
    /// Prompt processing seconds, and prompt tokens per second.
    pub t_pp: f64,
    pub speed_pp: f64,
    /// Generation seconds, and generated tokens per second during generation.
    pub t_tg: f64,
    pub speed_tg: f64,
    /// Total seconds.
    pub t: f64,
}

impl BatchedRow {
    /// Generated tokens over the whole run's time, prompts included (as our suite figure).
    pub fn generated_tok_s(&self) -> f64 {
        (self.pl * self.tg) as f64 / self.t.max(1e-9)
    }
}

/// The rows of `llama-batched-bench` output: JSONL lines where there are any, else the
/// Markdown table's rows.
pub fn batched(text: &str) -> Result<Vec<BatchedRow>, LlamaError> {
    let mut rows = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('{') && line.contains("\"speed_tg\"") {
            let v: Value =
                serde_json::from_str(line).map_err(|e| parse_error("batched-bench JSONL", e))?;
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            rows.push(BatchedRow {
                pp: f("pp") as u64,
                tg: f("tg") as u64,
                pl: f("pl") as u64,
                t_pp: f("t_pp"),
                speed_pp: f("speed_pp"),
                t_tg: f("t_tg"),
                speed_tg: f("speed_tg"),
                t: f("t"),
            });
        }
    }
    if rows.is_empty() {
        rows = text.lines().filter_map(markdown_row).collect();
    }
    if rows.is_empty() {
        return Err(parse_error(
            "llama-batched-bench output",
            "no result rows in it",
        ));
    }
    Ok(rows)
}

/// `| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |` with numbers.
fn markdown_row(line: &str) -> Option<BatchedRow> {
    let cells: Vec<f64> = line
        .trim()
        .strip_prefix('|')?
        .strip_suffix('|')?
        .split('|')
        .map(|c| c.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    (cells.len() == 10).then(|| BatchedRow {
        pp: cells[0] as u64,
        tg: cells[1] as u64,
        pl: cells[2] as u64,
        t_pp: cells[4],
        speed_pp: cells[5],
        t_tg: cells[6],
        speed_tg: cells[7],
        t: cells[8],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: &str = include_str!("fixtures/llama-bench.json");
    const BATCHED_JSONL: &str = include_str!("fixtures/batched-bench.jsonl");
    const BATCHED_MD: &str = include_str!("fixtures/batched-bench.md");

    #[test]
    fn llama_bench_json_gives_each_test() {
        let tests = bench_json(BENCH).unwrap();
        assert_eq!(tests.len(), 2, "{tests:?}");
        let tg = tests.iter().find(|t| t.n_gen > 0).unwrap();
        assert_eq!(tg.n_prompt, 0);
        assert!(tg.n_depth > 0);
        assert_eq!(tg.n_threads, 2);
        assert!(tg.avg_ts > 1.0);
        assert!(!tg.samples_ts.is_empty());
        let pp = tests.iter().find(|t| t.n_prompt > 0).unwrap();
        assert_eq!(pp.n_gen, 0);
        assert!(pp.avg_ts > tg.avg_ts);
        // surrounding log lines and the JSONL form
        assert_eq!(
            bench_json(&format!("load ...\n{BENCH}\nbye\n")).unwrap(),
            tests
        );
        assert!(bench_json("error: failed to load model\n").is_err());
    }

    #[test]
    fn batched_bench_rows_from_jsonl_or_markdown() {
        let rows = batched(BATCHED_JSONL).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.pp, r.tg, r.pl), (16, 4, 2));
        assert!(r.speed_tg > 0.5 && r.t > r.t_tg);
        let md = batched(BATCHED_MD).unwrap();
        assert_eq!(md.len(), 2);
        assert_eq!((md[1].pp, md[1].tg, md[1].pl), (8, 2, 2));
        assert_eq!(md[1].speed_tg, 2.04);
        assert!((md[1].generated_tok_s() - 4.0 / 4.198).abs() < 1e-9);
        assert!(batched("|  PP | TG |\n|---|---|\n").is_err());
    }
}
