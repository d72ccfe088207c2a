//! Paired comparisons of per-case verdicts, as pure functions: two models of one results folder
//! on the cases both measured, and one model across two runs (before and after a change):
//! which cases pass on one side and fail on the other, and the exact McNemar test on those
//! discordant cases ([`crate::score::stats::mcnemar_paired`]). A case passes when it was measured and
//! every one of its samples passed; a case that was not measured (an error) counts as absent.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::score::stats::{McNemar, mcnemar_paired};

/// Each measured case's key and whether it passed.
pub type Verdicts = BTreeMap<String, bool>;

/// How the McNemar p-value was computed, for the page and the text.
pub const MCNEMAR_METHOD: &str =
    "McNemar test: exact two-sided binomial test on the discordant pairs";

/// Two sets of verdicts paired on their shared cases.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Cases both measured.
    pub shared: usize,
    /// Passes on the first, fails on the second.
    pub first_only: Vec<String>,
    /// Fails on the first, passes on the second.
    pub second_only: Vec<String>,
    pub both_passed: usize,
    pub both_failed: usize,
    /// `b` = `first_only.len()`, `c` = `second_only.len()`.
    pub mcnemar: McNemar,
    /// Cases only the first measured.
    pub missing_in_second: Vec<String>,
    /// Cases only the second measured.
    pub missing_in_first: Vec<String>,
}

impl Paired {
    /// Pass rate of the first over the shared cases (NaN when none are shared).
    pub fn first_rate(&self) -> f64 {
        (self.both_passed + self.first_only.len()) as f64 / self.shared as f64
    }

    pub fn second_rate(&self) -> f64 {
        (self.both_passed + self.second_only.len()) as f64 / self.shared as f64
    }
}

/// Pair `first` and `second` on the cases both measured.
pub fn paired(first: &Verdicts, second: &Verdicts) -> Paired {
    let mut p = Paired {
        shared: 0,
        first_only: Vec::new(),
        second_only: Vec::new(),
        both_passed: 0,
        both_failed: 0,
        mcnemar: mcnemar_paired([]),
        missing_in_second: Vec::new(),
        missing_in_first: Vec::new(),
    };
    let mut pairs = Vec::new();
    for (key, &a) in first {
        let Some(&b) = second.get(key) else {
            p.missing_in_second.push(key.clone());
            continue;
        };
        p.shared += 1;
        pairs.push((a, b));
        match (a, b) {
            (true, true) => p.both_passed += 1,
            (false, false) => p.both_failed += 1,
            (true, false) => p.first_only.push(key.clone()),
            (false, true) => p.second_only.push(key.clone()),
        }
    }
    p.missing_in_first = second
        .keys()
        .filter(|k| !first.contains_key(*k))
        .cloned()
        .collect();
    p.mcnemar = mcnemar_paired(pairs);
    p
}

/// Every pair of models (in the given order) that measured at least one case in common.
pub fn pairwise(models: &[(String, Verdicts)]) -> Vec<(usize, usize, Paired)> {
    let mut out = Vec::new();
    for i in 0..models.len() {
        for j in i + 1..models.len() {
            let p = paired(&models[i].1, &models[j].1);
            if p.shared > 0 {
                out.push((i, j, p));
            }
        }
    }
    out
}

/// One model across two runs: `paired.first_only` got worse (passed before, fails after),
/// `paired.second_only` got better.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChange {
    pub model: String,
    pub paired: Paired,
}

impl ModelChange {
    /// Passed before, fails now.
    pub fn worse(&self) -> &[String] {
        &self.paired.first_only
    }

    /// Failed before, passes now.
    pub fn better(&self) -> &[String] {
        &self.paired.second_only
    }

    /// Change of the pass rate over the shared cases, after minus before.
    pub fn rate_change(&self) -> f64 {
        self.paired.second_rate() - self.paired.first_rate()
    }
}

/// Two runs compared model by model.
#[derive(Debug, Clone, PartialEq)]
pub struct RunComparison {
    /// Models present in both runs, by name.
    pub models: Vec<ModelChange>,
    pub only_before: Vec<String>,
    pub only_after: Vec<String>,
}

/// Compare the models of two runs that have the same name.
pub fn runs(before: &[(String, Verdicts)], after: &[(String, Verdicts)]) -> RunComparison {
    let after_by: BTreeMap<&str, &Verdicts> = after.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let before_names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    RunComparison {
        models: before
            .iter()
            .filter_map(|(name, b)| {
                Some(ModelChange {
                    model: name.clone(),
                    paired: paired(b, after_by.get(name.as_str())?),
                })
            })
            .collect(),
        only_before: before
            .iter()
            .filter(|(n, _)| !after_by.contains_key(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect(),
        only_after: after
            .iter()
            .filter(|(n, _)| !before_names.contains(&n.as_str()))
            .map(|(n, _)| n.clone())
            .collect(),
    }
}

/// A p-value for people: three decimals, or scientific notation under 0.001.
pub fn p_value(p: f64) -> String {
    if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn list(keys: &[String]) -> String {
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

/// The comparison as a few lines of text for the terminal.
pub fn text(c: &RunComparison, before: &str, after: &str) -> String {
    let mut s = format!("comparing {before} (before) with {after} (after)\n");
    for m in &c.models {
        let p = &m.paired;
        let _ = writeln!(
            s,
            "model `{}`: {} shared cases, pass rate {:.1}% -> {:.1}% ({:+.1} points), McNemar p = {} ({} worse vs {} better)",
            m.model,
            p.shared,
            p.first_rate() * 100.0,
            p.second_rate() * 100.0,
            m.rate_change() * 100.0,
            p_value(p.mcnemar.p),
            p.mcnemar.b,
            p.mcnemar.c
        );
        let _ = writeln!(s, "  better (fail -> pass): {}", list(m.better()));
        let _ = writeln!(s, "  worse (pass -> fail): {}", list(m.worse()));
        if !p.missing_in_second.is_empty() {
            let _ = writeln!(s, "  measured only before: {}", list(&p.missing_in_second));
        }
        if !p.missing_in_first.is_empty() {
            let _ = writeln!(s, "  measured only after: {}", list(&p.missing_in_first));
        }
    }
    if !c.only_before.is_empty() {
        let _ = writeln!(s, "models only before: {}", list(&c.only_before));
    }
    if !c.only_after.is_empty() {
        let _ = writeln!(s, "models only after: {}", list(&c.only_after));
    }
    let _ = writeln!(s, "{MCNEMAR_METHOD}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[(&str, bool)]) -> Verdicts {
        items.iter().map(|(k, p)| (k.to_string(), *p)).collect()
    }

    #[test]
    fn paired_lists_discordant_cases_and_missing_ones() {
        let a = v(&[
            ("c/1", true),
            ("c/2", true),
            ("c/3", false),
            ("c/4", false),
            ("c/5", true),
        ]);
        let b = v(&[
            ("c/1", true),
            ("c/2", false),
            ("c/3", true),
            ("c/4", false),
            ("c/6", true),
        ]);
        let p = paired(&a, &b);
        assert_eq!(p.shared, 4);
        assert_eq!(p.first_only, ["c/2"]);
        assert_eq!(p.second_only, ["c/3"]);
        assert_eq!((p.both_passed, p.both_failed), (1, 1));
        assert_eq!((p.mcnemar.b, p.mcnemar.c, p.mcnemar.p), (1, 1, 1.0));
        assert_eq!(p.missing_in_second, ["c/5"]);
        assert_eq!(p.missing_in_first, ["c/6"]);
        assert_eq!(p.first_rate(), 0.5);
    }

    #[test]
    fn pairwise_skips_models_without_shared_cases() {
        let models = vec![
            ("a".to_string(), v(&[("x/1", true)])),
            ("b".to_string(), v(&[("x/1", false)])),
            ("c".to_string(), v(&[("y/1", true)])),
        ];
        let pairs = pairwise(&models);
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].0, pairs[0].1), (0, 1));
        assert_eq!(pairs[0].2.first_only, ["x/1"]);
    }

    #[test]
    fn two_runs_better_worse_and_significance() {
        // Six cases fixed, none broken: exact p = 2/64.
        let before: Vec<(String, Verdicts)> = vec![
            (
                "m".into(),
                (0..8).map(|i| (format!("k/{i}"), i >= 6)).collect(),
            ),
            ("gone".into(), v(&[("k/0", true)])),
        ];
        let mut after_m: Verdicts = (0..8).map(|i| (format!("k/{i}"), true)).collect();
        after_m.insert("k/new".into(), false);
        let after = vec![
            ("m".to_string(), after_m),
            ("fresh".to_string(), Verdicts::new()),
        ];
        let c = runs(&before, &after);
        assert_eq!(c.models.len(), 1);
        let m = &c.models[0];
        assert_eq!(m.better().len(), 6);
        assert!(m.worse().is_empty());
        assert!((m.paired.mcnemar.p - 0.03125).abs() < 1e-12);
        assert!((m.rate_change() - 0.75).abs() < 1e-12);
        assert_eq!(m.paired.missing_in_first, ["k/new"]);
        assert_eq!(c.only_before, ["gone"]);
        assert_eq!(c.only_after, ["fresh"]);
        let t = text(&c, "A", "B");
        assert!(
            t.contains(
                "pass rate 25.0% -> 100.0% (+75.0 points), McNemar p = 0.031 (0 worse vs 6 better)"
            ),
            "{t}"
        );
        assert!(t.contains("worse (pass -> fail): none"));
        assert!(t.contains("measured only after: k/new"));
        assert!(t.contains("models only before: gone"));
        assert!(t.contains("exact two-sided binomial test"));
        assert_eq!(p_value(0.25), "0.250");
        assert_eq!(p_value(2.0f64.powi(-35)), "2.9e-11");
    }
}
