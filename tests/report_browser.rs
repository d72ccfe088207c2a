//! The HTML report in a real browser: a report of a generated results folder (several models,
//! long names, token heatmaps, failures) is opened with Debian's headless `chromium`, and the
//! DOM it renders must hold the model table, the ROC plots, the pairwise view and the token
//! view; legend entries, as the browser lays them out, must not overlap; and the page must make
//! no network request (checked in Chromium's net log, with a proxy that refuses everything,
//! against a control page that does make one). The load time the page records is checked
//! against a generous bound as a sanity check only; this is not a timing test.
//!
//! Needs `chromium` on PATH (`apt-get install -y chromium`; `.ci/run` installs it); without
//! it the test fails and says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

const LONG_A: &str = "qwen2.5-coder-0.5b-instruct-cuda-int4-with-a-rather-long-profile-name";
const LONG_B: &str = "Mistral-7B-Instruct-v0.3-Q4_K_M-on-the-CPU-greedy";

fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "failed to find `chromium` on PATH: the report's browser test needs Debian's headless \
                 Chromium; install it with `apt-get update && apt-get install -y chromium` (as root; \
                 .ci/run does this on CI)"
            )
        })
}

/// A case whose one sample passed or failed, with tokens when `tokens` is given.
fn case(key: &str, passed: bool, tokens: Option<(&[&str], &[f64])>) -> Json {
    let mut sample = json!({
        "passed": passed,
        "tests": [{"label": "f(1)", "verdict": if passed { "passed" } else { "wrong_answer" }, "got": "1", "expected": "2"}],
        "extraction": {"code": "def f(x):\n    return x\n"},
        "failure": if passed { Json::Null } else { json!({"class": "wrong_answer"}) },
    });
    if let Some((pieces, probs)) = tokens {
        let logprobs: Vec<f64> = probs.iter().map(|p| p.ln()).collect();
        let top: Vec<Json> = pieces
            .iter()
            .zip(probs)
            .enumerate()
            .map(|(i, (piece, p))| {
                json!([
                    [i, piece, p.ln()],
                    [900, " alt", ((1.0 - p) * 0.8).max(1e-6).ln()]
                ])
            })
            .collect();
        let n = probs.len() as f64;
        sample["tokens"] = json!({"ids": (0..pieces.len()).collect::<Vec<_>>(), "pieces": pieces, "logprobs": logprobs, "top": top});
        sample["confidence"] = json!({
            "tokens": pieces.len(),
            "mean_nll": -logprobs.iter().sum::<f64>() / n,
            "sum_nll": -logprobs.iter().sum::<f64>(),
            "min_prob": probs.iter().copied().fold(1.0, f64::min),
            "mean_prob": probs.iter().sum::<f64>() / n,
        });
        sample["timing"] =
            json!({"total_ms": 120.0, "time_to_first_token_ms": 15.0, "decode_tokens_per_s": 80.0});
    }
    json!({"key": key, "category": key.split('/').next(), "samples": [sample], "error": null})
}

/// A results folder of four models: the reference, two long-named models with tokens whose
/// failures differ, and a short-named one.
fn fixture(dir: &Path) {
    let keys = [
        "algorithms/a",
        "algorithms/b",
        "strings/c",
        "strings/d",
        "strings/e",
        "strings/f",
    ];
    let pieces: &[&str] = &[
        "def",
        " f",
        "(x",
        "):\n",
        "    return",
        " x",
        " +",
        " 1",
        "\n",
    ];
    let verdicts: [(&str, [bool; 6]); 4] = [
        ("reference", [true; 6]),
        (LONG_A, [true, false, true, false, false, true]),
        (LONG_B, [false, true, true, true, false, false]),
        ("m", [true, true, false, true, true, true]),
    ];
    for (mi, (name, passes)) in verdicts.iter().enumerate() {
        let cases: Vec<String> = keys
            .iter()
            .zip(passes)
            .enumerate()
            .map(|(ci, (key, &passed))| {
                let probs: Vec<f64> = (0..pieces.len())
                    .map(|t| {
                        let sure = 0.99 - 0.05 * ((t + ci + mi) % 3) as f64;
                        if passed || t != 4 {
                            sure
                        } else {
                            0.03 + 0.1 * ci as f64
                        }
                    })
                    .collect();
                let tokens = (*name != "reference").then_some((pieces, probs.as_slice()));
                case(key, passed, tokens).to_string()
            })
            .collect();
        fs::write(dir.join(format!("results-{name}.jsonl")), cases.join("\n")).unwrap();
        let passed = passes.iter().filter(|p| **p).count();
        let totals = |n: usize, p: usize| json!({"cases": n, "errors": 0, "passed": p, "pass_rate": p as f64 / n as f64, "syntax_valid_rate": 1.0, "pass_at_k": {"1": p as f64 / n as f64}});
        let cat_a = passes[..2].iter().filter(|p| **p).count();
        let summary = json!({"summary": {"model": name, "overall": totals(6, passed),
            "categories": {"algorithms": totals(2, cat_a), "strings": totals(4, passed - cat_a)}}, "gate_failures": []});
        fs::write(
            dir.join(format!("summary-{name}.json")),
            summary.to_string(),
        )
        .unwrap();
    }
}

/// Run chromium headless with `args` on `page`, killed after two minutes; its stdout.
fn run_chromium(page: &Path, profile: &Path, args: &[String]) -> String {
    let out = profile.with_extension("out");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start chromium");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "chromium exited with {status} on {}",
                page.display()
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::read_to_string(&out).unwrap()
}

/// The URLs of the requests the page (not the browser itself) started, from a net log: the
/// browser's own requests (updates, accounts) have no origin as initiator.
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = fs::read_to_string(netlog).unwrap();
    // A log cut off at exit lacks its closing brackets.
    let log: Json = serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", text.trim_end().trim_end_matches(','))))
        .expect("net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == start_job && e["params"]["initiator"] != "not an origin")
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect()
}

fn attr(dom: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("{name}=\""))? + name.len() + 2;
    Some(dom[at..].split('"').next()?.to_string())
}

/// Appended to a copy of the report: after load, count legend entries that overlap another of
/// the same chart, or stick out of their chart, as the browser lays them out.
const LEGEND_PROBE: &str = "<script>addEventListener('load',function(){var n=0,bad=0,out=0;\
document.querySelectorAll('svg').forEach(function(svg){var s=svg.getBoundingClientRect();\
var r=[].map.call(svg.querySelectorAll('g.legend-entry'),function(g){return g.getBoundingClientRect()});n+=r.length;\
r.forEach(function(a,i){if(a.right>s.right+0.5)out++;r.slice(i+1).forEach(function(b){\
if(a.left<b.right&&b.left<a.right&&a.top<b.bottom&&b.top<a.bottom)bad++})})});\
document.body.setAttribute('data-legend-entries',n);document.body.setAttribute('data-legend-overlaps',bad);\
document.body.setAttribute('data-legend-outside',out)})</script>";

#[test]
fn report_renders_in_chromium_without_network() {
    chromium();
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    fs::create_dir(&results).unwrap();
    fixture(&results);
    let page = tmp.path().join("report.html");
    codegen_harness::report::html::write(&results, &page).unwrap();
    let html = fs::read_to_string(&page).unwrap();
    // Self-contained: nothing fetched by markup or styles (links are in-page anchors).
    for bad in [
        "src=",
        "<link",
        "url(",
        "@import",
        "href=\"http",
        "href=\"file",
    ] {
        assert!(!html.contains(bad), "the report has `{bad}`");
    }

    // The report, with a proxy that refuses every connection and a net log.
    let netlog = tmp.path().join("report.netlog.json");
    let dom = run_chromium(
        &page,
        &tmp.path().join("p1"),
        &[
            "--proxy-server=127.0.0.1:9".into(),
            format!("--log-net-log={}", netlog.display()),
            "--dump-dom".into(),
        ],
    );
    let requests = page_requests(&netlog);
    assert!(
        requests.is_empty(),
        "the report made requests: {requests:?}"
    );
    // The DOM after rendering: the model table with every model, three ROC plots (the
    // reference has no tokens), the pairwise view linking to case blocks, the token view.
    assert!(dom.contains("<table id=\"models\""), "model table");
    for name in ["reference", LONG_A, LONG_B, "m"] {
        assert!(
            dom.contains(&format!("<th class=\"model-name\">{name}</th>")),
            "{name}"
        );
    }
    assert_eq!(dom.matches("<svg class=\"roc\"").count(), 3, "ROC plots");
    assert!(
        dom.matches("class=\"roc-curve\"").count() >= 3 * 4,
        "a curve per score"
    );
    assert!(dom.contains("id=\"pairwise\""), "pairwise view");
    assert_eq!(
        dom.matches("<div class=\"pair\">").count(),
        6,
        "every pair of four models"
    );
    assert!(dom.contains("exact two-sided binomial test on the discordant pairs"));
    let link = dom
        .split("<a href=\"#")
        .nth(1)
        .expect("a case link")
        .split('"')
        .next()
        .unwrap();
    assert!(
        dom.contains(&format!("id=\"{link}\"")),
        "link #{link} has its case block"
    );
    assert_eq!(
        dom.matches("<pre class=\"heat\">").count(),
        3 * 6,
        "token view"
    );
    assert!(dom.contains("<i class=\"c"), "uncertain tokens coloured");
    // Sanity check only, not a timing test: a 4-model page loads well within 30 s.
    let load_ms: f64 = attr(&dom, "data-load-ms")
        .expect("load time written")
        .parse()
        .unwrap();
    assert!(
        load_ms > 0.0 && load_ms < 30_000.0,
        "load took {load_ms} ms"
    );

    // The control: a page that fetches an image shows up as a request, so the check above
    // can fail.
    let control = tmp.path().join("control.html");
    fs::write(
        &control,
        "<html><body><img src=\"http://example.invalid/x.png\"></body></html>",
    )
    .unwrap();
    let control_log = tmp.path().join("control.netlog.json");
    run_chromium(
        &control,
        &tmp.path().join("p2"),
        &[
            "--proxy-server=127.0.0.1:9".into(),
            format!("--log-net-log={}", control_log.display()),
            "--dump-dom".into(),
        ],
    );
    assert_eq!(
        page_requests(&control_log),
        ["http://example.invalid/x.png"]
    );

    // Legends as laid out by the browser: the category chart's four models and each ROC plot's
    // scores, none overlapping another or sticking out of its chart.
    let probe = tmp.path().join("probe.html");
    fs::write(
        &probe,
        html.replace("</body>", &format!("{LEGEND_PROBE}</body>")),
    )
    .unwrap();
    let dom = run_chromium(&probe, &tmp.path().join("p3"), &["--dump-dom".into()]);
    assert_eq!(
        attr(&dom, "data-legend-entries").as_deref(),
        Some("16"),
        "4 models + 3 plots x 4 scores"
    );
    assert_eq!(attr(&dom, "data-legend-overlaps").as_deref(), Some("0"));
    assert_eq!(attr(&dom, "data-legend-outside").as_deref(), Some("0"));

    // A screenshot for people to look at (target/tmp/report-browser.png).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-browser.png");
    let _ = fs::remove_file(&shot);
    run_chromium(
        &page,
        &tmp.path().join("p4"),
        &[
            "--window-size=1300,2000".into(),
            format!("--screenshot={}", shot.display()),
        ],
    );
    let png = fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
