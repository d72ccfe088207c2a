//! Tests of the side-by-side tables (`super`).

use super::*;
use crate::score::Resources;
use crate::score::footprint::{Profile, TimingStats};

/// The outcome of case `key` for `model`, passed or not.
fn outcome(model: &str, key: &str, passed: bool) -> CaseOutcome {
    let mut o = crate::snapshot::tests::outcome(passed);
    o.model = model.into();
    o.key = format!("cat/{key}");
    o
}

/// Profile `name` of model `qwen` at `precision`, passing the cases in `passes` of a, b, c.
fn summary(
    name: &str,
    precision: &str,
    passes: &[bool; 3],
    outcomes: &mut Vec<CaseOutcome>,
) -> Summary {
    for (key, &p) in ["a", "b", "c"].iter().zip(passes) {
        outcomes.push(outcome(name, key, p));
    }
    let mut s = Summary::of(name, outcomes);
    s.profile = Some(Profile {
        name: name.into(),
        source: "onnx".into(),
        model: Some("qwen".into()),
        device: Some("cpu".into()),
        precision: Some(precision.into()),
        size_on_disk_bytes: Some(3 << 29),
        load_ms: Some(2150.0),
        load_facts: Some("loaded by this run".into()),
    });
    s.timing = Some(TimingStats {
        samples: 3,
        mean_ttft_ms: 420.0,
        decode_tokens_per_s: Some(31.25),
        mean_case_ms: 1800.0,
        p50_case_ms: 1700.0,
        p95_case_ms: 2500.0,
    });
    s.resources = Some(Resources {
        generated_tokens: 300,
        peak_host_bytes: Some(900 << 20),
        peak_device_bytes: None,
    });
    s
}

#[test]
fn one_row_per_profile_and_a_precision_comparison() {
    let mut outcomes = Vec::new();
    let int4 = summary("q-int4", "int4", &[true, false, false], &mut outcomes);
    let native = summary("q-native", "native", &[true, true, true], &mut outcomes);
    let reference = Summary::of("reference", &[outcome("reference", "a", true)]);
    let all = [int4, native, reference];
    let text = text(&all, &outcomes);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "codegen profiles side by side");
    assert!(
        lines[1].starts_with("  profile    size on disk  precision"),
        "{text}"
    );
    let row = lines.iter().find(|l| l.starts_with("  q-int4 ")).unwrap();
    for cell in [
        "1.5 GiB",
        "int4",
        "2.1 s",
        "420 ms",
        "31.2",
        "1.8 s",
        "900.0 MiB",
        "33.3% [6.1, 79.2]",
        "100.0%",
    ] {
        assert!(row.contains(cell), "{cell} not in {row}");
    }
    // The reference profile loads no model and times nothing.
    let row = lines
        .iter()
        .find(|l| l.starts_with("  reference "))
        .unwrap();
    assert!(
        row.contains("n/a") && row.contains("100.0% [20.7, 100.0]"),
        "{row}"
    );
    // Per category: one column per profile.
    assert!(
        text.contains(
            "\n  cat       33.3% [6.1, 79.2]  100.0% [43.9, 100.0]  100.0% [20.7, 100.0]\n"
        ),
        "{text}"
    );
    // int4 passes a only, native all three: 2 discordant cases, both for native;
    // p = 2·P(X <= 0) for Binomial(2, 1/2) = 0.5.
    assert!(
        text.contains("\nprecision: `q-int4` int4 vs `q-native` native (model qwen)\n  McNemar (exact, two-sided) on 3 cases both measured: 0 pass only with `q-int4`, 2 only with `q-native`; p = 0.500\n"),
        "{text}"
    );
    let md = markdown(&all, &outcomes);
    assert!(
        md.contains("| profile | size on disk | precision | load |"),
        "{md}"
    );
    assert!(
        md.contains("| cat | 33.3% [6.1, 79.2] | 100.0% [43.9, 100.0] |"),
        "{md}"
    );
    assert!(
        md.contains("\n#### Precision: `q-int4` int4 vs `q-native` native"),
        "{md}"
    );
    assert!(
        md.contains(
            "| q-native | native | 100.0% [43.9, 100.0] | 100.0% | 1.8 s | 31.2 | 900.0 MiB | n/a |"
        ),
        "{md}"
    );
}

#[test]
fn nothing_for_a_single_profile() {
    let s = Summary::of("m", &[outcome("m", "a", true)]);
    assert_eq!(text(std::slice::from_ref(&s), &[]), "");
    assert_eq!(markdown(&[s], &[]), "");
}

#[test]
fn sizes_and_times_read_naturally() {
    assert_eq!(bytes(3 << 29), "1.5 GiB");
    assert_eq!(bytes(900 << 20), "900.0 MiB");
    assert_eq!(bytes(1500), "1.5 KiB");
    assert_eq!(ms(999.4), "999 ms");
    assert_eq!(ms(2150.0), "2.1 s");
}
