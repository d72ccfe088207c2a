//! The pieces every HTML page of the report is made of: escaping, element ids, the head and
//! the end of a page, and a case's block with its verdicts and token-probability heatmap.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::results;

/// Text escaped for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The element id of a case block: `prefix` names the model (and run), the key is encoded so
/// that distinct keys give distinct ids.
pub fn case_id(prefix: &str, key: &str) -> String {
    let mut s = format!("case-{prefix}-");
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            s.push(c);
        } else {
            let _ = write!(s, "_{:x}_", c as u32);
        }
    }
    s
}

/// Probability buckets of the heatmap: (upper bound, CSS class, colour). Tokens at 0.95 or
/// above are left plain, which keeps a HumanEval report of several models small.
const BUCKETS: [(f64, &str, &str); 5] = [
    (0.05, "c0", "hsl(0,80%,72%)"),
    (0.2, "c1", "hsl(20,85%,72%)"),
    (0.5, "c2", "hsl(42,90%,70%)"),
    (0.8, "c3", "hsl(62,85%,72%)"),
    (0.95, "c4", "hsl(95,60%,82%)"),
];

fn bucket(p: f64) -> Option<&'static str> {
    BUCKETS.iter().find(|b| p < b.0).map(|b| b.1)
}

/// The legend of the heatmap's colours.
pub(crate) fn heat_legend() -> String {
    let mut s = String::from("<p class=\"note heat\">token probability: ");
    let mut low = 0.0;
    for (high, class, _) in BUCKETS {
        let _ = write!(s, "<i class=\"{class}\">{low}&ndash;{high}</i> ");
        low = high;
    }
    s.push_str("<i>&ge; 0.95 (plain)</i>; hover a coloured token for its probability and the two likeliest alternatives</p>");
    s
}

/// Shown instead of a piece in the tooltips: whitespace made visible.
fn visible(piece: &str) -> String {
    piece.escape_debug().to_string()
}

/// What the model wrote, one `<i>` per uncertain token: its bucket's class, and a tooltip
/// with its probability and the two likeliest alternatives of 1% or more.
fn heatmap(tokens: &Json) -> Option<String> {
    let pieces = tokens["pieces"].as_array()?;
    let logprobs = tokens["logprobs"].as_array()?;
    let top = tokens["top"].as_array();
    let ids = tokens["ids"].as_array();
    let mut s = String::from("<pre class=\"heat\">");
    for (i, (piece, lp)) in pieces.iter().zip(logprobs).enumerate() {
        let text = esc(piece.as_str().unwrap_or(""));
        let p = lp.as_f64().unwrap_or(0.0).exp();
        let Some(class) = bucket(p) else {
            s.push_str(&text);
            continue;
        };
        let mut title = format!("{:.0}%", p * 100.0);
        let chosen = ids.and_then(|ids| ids.get(i));
        let alts = top.and_then(|t| t.get(i)).and_then(Json::as_array);
        for a in alts
            .into_iter()
            .flatten()
            .filter(|a| a.get(0) != chosen || chosen.is_none())
            .filter_map(|a| Some((a.get(1)?.as_str()?, a.get(2)?.as_f64()?.exp())))
            .filter(|(alt, ap)| *ap >= 0.005 && Some(*alt) != piece.as_str())
            .take(2)
        {
            let _ = write!(title, "\n`{}` {:.0}%", visible(a.0), a.1 * 100.0);
        }
        let _ = write!(s, "<i class={class} title=\"{}\">{text}</i>", esc(&title));
    }
    s.push_str("</pre>");
    Some(s)
}

/// A sample's failure in words: its class (with the class's details, such as an exception
/// type), the first failing test and the generated line that raised, where known.
pub(crate) fn failure_line(failure: &Json) -> Option<String> {
    let class = match &failure["class"] {
        Json::String(c) => c.clone(),
        Json::Object(o) => o
            .values()
            .filter_map(|v| match v {
                Json::String(s) => Some(s.clone()),
                Json::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => return None,
    };
    let mut s = class;
    if let Some(test) = failure["test"].as_str() {
        let _ = write!(s, "; first failing test: {test}");
    }
    if let Some(line) = failure["source"].as_str() {
        let _ = write!(s, "; at: {}", line.trim());
    }
    Some(s)
}

/// One case's block: verdict, tests, and what the model wrote (heatmap, else the code).
pub(crate) fn case_block(c: &Json, id_prefix: &str) -> String {
    let key = c["key"].as_str().unwrap_or("?");
    let samples = c["samples"].as_array().cloned().unwrap_or_default();
    let passed = results::case_passed(c) == Some(true);
    let mut s = format!(
        "<details class=\"case\" id=\"{}\"><summary class=\"{}\">{} {}</summary>",
        case_id(id_prefix, key),
        if passed { "pass" } else { "fail" },
        if passed { "&#10003;" } else { "&#10007;" },
        esc(key)
    );
    if let Some(e) = c["error"].as_str() {
        let _ = write!(s, "<pre class=\"err\">{}</pre>", esc(e));
    }
    for (i, sample) in samples.iter().enumerate() {
        let _ = write!(s, "<h4>sample {}</h4>", i + 1);
        if let Some(failure) = failure_line(&sample["failure"]) {
            let _ = write!(s, "<p class=\"fail\">failure: {}</p>", esc(&failure));
        }
        s.push_str("<ul>");
        for t in sample["tests"].as_array().into_iter().flatten() {
            let verdict = t["verdict"].as_str().unwrap_or("?");
            // In words, as the snapshots say it (`wrong answer: got 3, expected 2`).
            let words = serde_json::from_value::<crate::evaluate::verdict::TestResult>(t.clone())
                .map(|r| r.verdict.describe())
                .unwrap_or_else(|_| verdict.replace('_', " "));
            let _ = write!(
                s,
                "<li class=\"{}\"><code>{}</code> &rarr; {}</li>",
                if verdict == "passed" { "pass" } else { "fail" },
                esc(t["label"].as_str().unwrap_or("")),
                esc(&words)
            );
        }
        s.push_str("</ul>");
        if let Some(h) = sample.get("tokens").and_then(heatmap) {
            s.push_str(&h);
        } else if let Some(code) = sample["extraction"]["code"].as_str() {
            let _ = write!(s, "<pre>{}</pre>", esc(code));
        }
    }
    s.push_str("</details>");
    s
}

/// The page's head (styles) and the top of its body.
pub(crate) fn page_start(title: &str) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
th.model-name{{max-width:14em;overflow-wrap:anywhere}}\
.pass{{color:#2a7d2a}}.fail{{color:#b22}}.note{{color:#555;font-size:90%}}pre{{background:#f6f6f6;padding:6px;overflow:auto}}\
.heat i{{font-style:normal;border-radius:2px}}",
        esc(title)
    );
    for (_, class, colour) in BUCKETS {
        let _ = write!(s, ".heat i.{class}{{background:{colour}}}");
    }
    s.push_str(
        "summary{cursor:pointer;font-family:monospace}.rocs{display:flex;flex-wrap:wrap;gap:16px}\
.pair{border-top:1px solid #ddd;margin-top:1em}.cases a{margin-right:.6em;font-family:monospace}\
</style></head><body>",
    );
    let _ = write!(s, "<h1>{}</h1>", esc(title));
    s
}

/// The end of the page: open a case block when a link points at it, and note the load time.
pub(crate) const PAGE_END: &str = "<script>function openHash(){var e=document.getElementById(decodeURIComponent(location.hash.slice(1)));if(e&&e.tagName=='DETAILS'){e.open=true;e.scrollIntoView()}}\
addEventListener('hashchange',openHash);openHash();\
addEventListener('load',function(){document.body.setAttribute('data-load-ms',performance.now().toFixed(1))})</script></body></html>\n";
