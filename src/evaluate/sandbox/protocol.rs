//! Reading a worker's reports: its JSON outcome events become [`RawOutcome`] and
//! [`LoadOutcome`] values (anything malformed is a crash of the child, never a pass).

use std::time::Duration;

use serde_json::Value as Json;

use super::{LoadOutcome, Raised, RawOutcome};
use crate::evaluate::value::Value;

fn parse_raised(ev: &Json) -> Raised {
    let s = |k: &str| ev.get(k).and_then(Json::as_str).map(str::to_string);
    Raised {
        exc_type: s("type").unwrap_or_else(|| "?".into()),
        mro: ev
            .get("mro")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        message: s("message").unwrap_or_default(),
        line: ev.get("line").and_then(Json::as_u64).map(|l| l as usize),
        location: s("where"),
        source: s("source"),
    }
}

fn secs(ev: &Json) -> Duration {
    Duration::from_secs_f64(ev["seconds"].as_f64().unwrap_or(0.0).max(0.0))
}

/// One outcome as the worker reports it.
pub(super) fn parse_outcome(ev: &Json) -> RawOutcome {
    match ev.get("kind").and_then(Json::as_str) {
        None if ev.is_null() => RawOutcome::NotRun,
        Some("returned") => match ev.get("value").map(Value::from_json) {
            Some(Ok(v)) => RawOutcome::Returned(v),
            Some(Err(e)) => RawOutcome::Crashed(format!("the child sent a malformed value: {e}")),
            None => RawOutcome::Crashed("the child sent no value".into()),
        },
        Some("unsupported") => RawOutcome::Unsupported(
            ev.get("what")
                .and_then(Json::as_str)
                .unwrap_or("?")
                .to_string(),
        ),
        Some("raised") => RawOutcome::Raised(parse_raised(ev)),
        Some("passed") => RawOutcome::CheckPassed,
        Some("timeout") => RawOutcome::TimedOut(secs(ev)),
        Some("memory") => RawOutcome::MemoryLimit,
        Some("output_limit") => RawOutcome::OutputLimit(ev["bytes"].as_u64().unwrap_or(0)),
        Some("blocked") => RawOutcome::Blocked {
            operation: ev["operation"].as_str().unwrap_or("?").to_string(),
        },
        Some("signal") => RawOutcome::KilledBySignal(ev["signal"].as_i64().unwrap_or(0) as i32),
        Some("crashed") => RawOutcome::Crashed(ev["reason"].as_str().unwrap_or("?").to_string()),
        Some("tampered") => RawOutcome::Tampered(ev["what"].as_str().unwrap_or("?").to_string()),
        other => RawOutcome::Crashed(format!("the child sent an unknown outcome {other:?}")),
    }
}

pub(super) fn parse_load(ev: &Json) -> LoadOutcome {
    if ev["kind"] == "ok" {
        return LoadOutcome::Loaded;
    }
    match parse_outcome(ev) {
        RawOutcome::Raised(r) => LoadOutcome::Raised(r),
        RawOutcome::TimedOut(d) => LoadOutcome::TimedOut(d),
        RawOutcome::MemoryLimit => LoadOutcome::MemoryLimit,
        RawOutcome::OutputLimit(n) => LoadOutcome::OutputLimit(n),
        RawOutcome::Blocked { operation } => LoadOutcome::Blocked { operation },
        RawOutcome::KilledBySignal(s) => LoadOutcome::KilledBySignal(s),
        RawOutcome::Crashed(why) => LoadOutcome::Crashed(why),
        RawOutcome::Tampered(what) => LoadOutcome::Tampered(what),
        other => LoadOutcome::Crashed(format!("unexpected load outcome {other:?}")),
    }
}
