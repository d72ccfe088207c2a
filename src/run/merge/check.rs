//! Whether shards belong together, over their manifests alone (pure): the same N, harness
//! version, settings, models and model files, sandbox isolation and case set; each shard K of
//! N exactly once; no case run twice; no case left out. Every problem is a sentence naming
//! the shard folders and the differing field.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::run::shard::manifest::Manifest;

/// At most this many case ids are named in one sentence.
const NAMED: usize = 5;

/// `a, b, c and 4 more`.
fn some_of(ids: &[&str]) -> String {
    let shown: Vec<String> = ids.iter().take(NAMED).map(|i| format!("`{i}`")).collect();
    match ids.len().saturating_sub(NAMED) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// The first place where `a` and `b` differ: a path such as `models[qwen].source.precision`
/// (array elements with a `name` go by it) and the two values as JSON.
pub fn first_difference(a: &Json, b: &Json) -> Option<(String, String, String)> {
    fn walk(a: &Json, b: &Json, path: &str) -> Option<(String, String, String)> {
        match (a, b) {
            (Json::Object(x), Json::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&Json::Null),
                        y.get(k).unwrap_or(&Json::Null),
                        &p,
                    )
                })
            }
            (Json::Array(x), Json::Array(y)) if x.len() == y.len() => {
                x.iter().zip(y).enumerate().find_map(|(i, (u, v))| {
                    let label = match (u.get("name"), v.get("name")) {
                        (Some(Json::String(n)), Some(Json::String(m))) if n == m => n.clone(),
                        _ => i.to_string(),
                    };
                    walk(u, v, &format!("{path}[{label}]"))
                })
            }
            _ if a == b => None,
            _ => Some((path.to_string(), a.to_string(), b.to_string())),
        }
    }
    walk(a, b, "")
}

/// The keys of `a` that `b` lacks.
fn only<'a>(a: &BTreeMap<&'a str, &str>, b: &BTreeMap<&str, &str>) -> Vec<&'a str> {
    a.keys().filter(|k| !b.contains_key(*k)).copied().collect()
}

/// Every reason `shards` (folder, manifest) cannot be merged; empty when they can.
pub fn problems(shards: &[(&Path, &Manifest)]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(&(first_dir, first)) = shards.first() else {
        return vec!["no shard folders given".into()];
    };
    let f = first_dir.display();
    for &(dir, m) in &shards[1..] {
        let d = dir.display();
        if m.shard.count() != first.shard.count() {
            out.push(format!(
                "{d} is shard {} but {f} is shard {}: shards of different N",
                m.shard, first.shard
            ));
        }
        if m.harness_version != first.harness_version {
            out.push(format!(
                "{d} ran harness version {}, {f} ran {}",
                m.harness_version, first.harness_version
            ));
        }
        if let Some((path, a, b)) = first_difference(&first.settings, &m.settings) {
            out.push(format!(
                "{d} and {f} ran different settings: `{path}` is {b} in {d}, {a} in {f}"
            ));
        }
        let names = |m: &Manifest| m.models.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        if names(m) != names(first) {
            out.push(format!(
                "{d} ran models [{}], {f} ran [{}]",
                names(m).join(", "),
                names(first).join(", ")
            ));
        } else {
            for (x, y) in first.models.iter().zip(&m.models) {
                if x.files_sha256 != y.files_sha256 {
                    let h = |s: &Option<String>| {
                        s.clone()
                            .unwrap_or_else(|| "none (the source did not open)".into())
                    };
                    out.push(format!(
                        "model `{}` ran from different files: sha256 {} in {d}, {} in {f}",
                        x.name,
                        h(&y.files_sha256),
                        h(&x.files_sha256)
                    ));
                }
            }
        }
        if !m.isolation.is_empty() && !first.isolation.is_empty() && m.isolation != first.isolation
        {
            out.push(format!(
                "{d} ran under sandbox isolation `{}`, {f} under `{}`",
                m.isolation, first.isolation
            ));
        }
        if m.cases != first.cases {
            let theirs: BTreeMap<&str, &str> = m
                .cases
                .iter()
                .map(|c| (c.id.as_str(), c.sha256.as_str()))
                .collect();
            let ours: BTreeMap<&str, &str> = first
                .cases
                .iter()
                .map(|c| (c.id.as_str(), c.sha256.as_str()))
                .collect();
            let mut parts = Vec::new();
            let (only_theirs, only_ours) = (only(&theirs, &ours), only(&ours, &theirs));
            if !only_theirs.is_empty() {
                parts.push(format!("only in {d}: {}", some_of(&only_theirs)));
            }
            if !only_ours.is_empty() {
                parts.push(format!("only in {f}: {}", some_of(&only_ours)));
            }
            let changed: Vec<&str> = theirs
                .iter()
                .filter(|(k, v)| ours.get(*k).is_some_and(|w| w != *v))
                .map(|(k, _)| *k)
                .collect();
            if !changed.is_empty() {
                parts.push(format!("case files differ: {}", some_of(&changed)));
            }
            out.push(format!(
                "{d} and {f} ran different case sets: {}",
                parts.join("; ")
            ));
        }
    }
    if !out.is_empty() {
        return out; // the partition means nothing across different suites
    }
    out.extend(partition_problems(shards));
    out
}

/// Each shard K of N present once, no case run twice, none left out.
fn partition_problems(shards: &[(&Path, &Manifest)]) -> Vec<String> {
    let mut out = Vec::new();
    let n = shards[0].1.shard.count();
    let mut by_k: BTreeMap<u32, Vec<&Path>> = BTreeMap::new();
    for &(dir, m) in shards {
        by_k.entry(m.shard.index()).or_default().push(dir);
    }
    for (k, dirs) in &by_k {
        if dirs.len() > 1 {
            let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            out.push(format!(
                "shard {k}/{n} is given {} times: {}",
                dirs.len(),
                list.join(", ")
            ));
        }
    }
    let missing: Vec<String> = (1..=n)
        .filter(|k| !by_k.contains_key(k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "shard {} missing: each of the {n} shards must be given once",
            missing.join(", ")
        ));
    }
    let suite: std::collections::BTreeSet<&str> =
        shards[0].1.cases.iter().map(|c| c.id.as_str()).collect();
    let mut ran_by: BTreeMap<&str, &Path> = BTreeMap::new();
    let mut twice: Vec<String> = Vec::new();
    for &(dir, m) in shards {
        let outside: Vec<&str> = m
            .ran
            .iter()
            .map(String::as_str)
            .filter(|id| !suite.contains(id))
            .collect();
        if !outside.is_empty() {
            out.push(format!(
                "{} ran cases that are not in the case set: {}",
                dir.display(),
                some_of(&outside)
            ));
        }
        for id in &m.ran {
            if let Some(other) = ran_by.insert(id, dir) {
                twice.push(format!(
                    "`{id}` ({} and {})",
                    other.display(),
                    dir.display()
                ));
            }
        }
    }
    let repeated = by_k.values().any(|dirs| dirs.len() > 1);
    if !twice.is_empty() && !repeated {
        let more = twice.len().saturating_sub(NAMED);
        twice.truncate(NAMED);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        out.push(format!(
            "shards overlap: cases ran twice: {}{tail}",
            twice.join(", ")
        ));
    }
    if missing.is_empty() {
        let gaps: Vec<&str> = suite
            .iter()
            .filter(|id| !ran_by.contains_key(*id))
            .copied()
            .collect();
        if !gaps.is_empty() {
            out.push(format!(
                "shards leave a gap: {} of the suite's {} cases ran in no shard: {} (a shard run with a libtest filter, or one that stopped early?)",
                gaps.len(),
                suite.len(),
                some_of(&gaps)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GateConfig;
    use crate::run::shard::Shard;
    use crate::run::shard::manifest::{CaseEntry, FORMAT, ModelRun};
    use serde_json::json;

    fn manifest(k: u32, n: u32, ids: &[&str]) -> Manifest {
        let cases: Vec<CaseEntry> = ids
            .iter()
            .map(|id| CaseEntry {
                id: id.to_string(),
                sha256: format!("h-{id}"),
            })
            .collect();
        let shard = Shard::new(k, n).unwrap();
        Manifest {
            format: FORMAT,
            shard,
            harness_version: "1.0.0".into(),
            settings: json!({"generation": {"max_new_tokens": 512}, "models": [{"name": "m", "precision": "native"}]}),
            models: vec![ModelRun {
                name: "m".into(),
                files_sha256: Some("aa".into()),
                gate: GateConfig::default(),
                baseline: None,
                source_warnings: Vec::new(),
                profile: None,
                devices: Vec::new(),
            }],
            ran: ids
                .iter()
                .filter(|id| shard.contains(id))
                .map(|s| s.to_string())
                .collect(),
            cases,
            isolation: "strict".into(),
            failed_trials: 0,
        }
    }

    /// Spread over all three shards (4 each).
    const IDS: &[&str] = &[
        "x/0", "x/1", "x/2", "x/3", "x/4", "x/5", "x/6", "x/7", "x/8", "x/9", "x/10", "x/11",
    ];

    fn check(ms: &[Manifest]) -> Vec<String> {
        let dirs: Vec<std::path::PathBuf> = ms
            .iter()
            .map(|m| format!("s{}", m.shard.index()).into())
            .collect();
        let pairs: Vec<(&Path, &Manifest)> = dirs.iter().map(|d| d.as_path()).zip(ms).collect();
        problems(&pairs)
    }

    fn three() -> Vec<Manifest> {
        (1..=3).map(|k| manifest(k, 3, IDS)).collect()
    }

    #[test]
    fn a_complete_partition_merges() {
        assert_eq!(check(&three()), Vec::<String>::new());
    }

    #[test]
    fn each_refusal_names_folder_and_field() {
        let mut ms = three();
        ms[1].settings["generation"]["max_new_tokens"] = json!(256);
        assert_eq!(
            check(&ms),
            [
                "s2 and s1 ran different settings: `generation.max_new_tokens` is 256 in s2, 512 in s1"
            ]
        );
        let mut ms = three();
        ms[2].settings["models"][0]["precision"] = json!("int4");
        assert_eq!(
            check(&ms),
            [
                "s3 and s1 ran different settings: `models[m].precision` is \"int4\" in s3, \"native\" in s1"
            ]
        );
        let mut ms = three();
        ms[1].harness_version = "1.1.0".into();
        assert_eq!(check(&ms), ["s2 ran harness version 1.1.0, s1 ran 1.0.0"]);
        let mut ms = three();
        ms[1].models[0].files_sha256 = Some("bb".into());
        assert_eq!(
            check(&ms),
            ["model `m` ran from different files: sha256 bb in s2, aa in s1"]
        );
        let mut ms = three();
        ms[1].models[0].name = "other".into();
        assert_eq!(check(&ms), ["s2 ran models [other], s1 ran [m]"]);
        let mut ms = three();
        ms[1].cases[0].sha256 = "changed".into();
        ms[1].cases.remove(1);
        assert_eq!(
            check(&ms),
            ["s2 and s1 ran different case sets: only in s1: `x/1`; case files differ: `x/0`"]
        );
        let mut ms = three();
        ms[2] = manifest(2, 4, IDS);
        assert!(
            check(&ms)[0] == "s2 is shard 2/4 but s1 is shard 1/3: shards of different N",
            "{:?}",
            check(&ms)
        );
    }

    #[test]
    fn overlaps_gaps_and_repeats_are_refused() {
        let ms = three();
        assert_eq!(
            check(&ms[..2]),
            ["shard 3/3 missing: each of the 3 shards must be given once"]
        );
        let repeated = vec![ms[0].clone(), ms[1].clone(), ms[1].clone(), ms[2].clone()];
        assert_eq!(check(&repeated), ["shard 2/3 is given 2 times: s2, s2"]);
        let mut ms = three();
        let stolen = ms[1].ran[0].clone();
        ms[0].ran.push(stolen.clone());
        assert_eq!(
            check(&ms),
            [format!(
                "shards overlap: cases ran twice: `{stolen}` (s1 and s2)"
            )]
        );
        let mut ms = three();
        let lost = ms[2].ran.remove(0);
        assert_eq!(
            check(&ms),
            [format!(
                "shards leave a gap: 1 of the suite's 12 cases ran in no shard: `{lost}` (a shard run with a libtest filter, or one that stopped early?)"
            )]
        );
    }
}
