//! Shards: one of N workers (a CI matrix job, a Kubernetes indexed job, a Slurm array task)
//! runs shard K of N of a suite's cases. A case belongs to shard `fnv1a64(case id) % N + 1`, a
//! fixed function of its id alone, so adding a case moves only that case, and every machine
//! agrees without talking to the others. K and N are 1-based like `cargo nextest
//! --partition hash:K/N`. [`manifest`] is what a shard writes beside its results so that
//! `codegen merge` ([`crate::run::merge`]) can check the shards belong together.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod manifest;

/// Shard K of N (1 <= K <= N).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "ShardFields")]
pub struct Shard {
    index: u32,
    count: u32,
}

/// A shard as written in a manifest, checked on the way in.
#[derive(Deserialize)]
struct ShardFields {
    index: u32,
    count: u32,
}

impl TryFrom<ShardFields> for Shard {
    type Error = ShardError;

    fn try_from(f: ShardFields) -> Result<Shard, ShardError> {
        Shard::new(f.index, f.count)
    }
}

/// Why `K/N` is not a shard.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShardError {
    #[error("failed to read shard `{0}`: expected K/N, two whole numbers such as 2/3")]
    Syntax(String),
    #[error("failed to read shard {index}/{count}: N must be at least 1")]
    NoShards { index: u32, count: u32 },
    #[error("failed to read shard {index}/{count}: K must be between 1 and N")]
    OutOfRange { index: u32, count: u32 },
}

impl Shard {
    /// Shard `index` of `count`, both 1-based.
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if count == 0 {
            return Err(ShardError::NoShards { index, count });
        }
        if index == 0 || index > count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// K (1-based).
    pub fn index(self) -> u32 {
        self.index
    }

    /// N.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The shard (1-based) that the case `id` belongs to among `count` shards.
    pub fn of(id: &str, count: u32) -> u32 {
        (fnv1a64(id.as_bytes()) % u64::from(count.max(1))) as u32 + 1
    }

    /// Does this shard run the case `id`?
    pub fn contains(self, id: &str) -> bool {
        Shard::of(id, self.count) == self.index
    }

    /// The folder a shard's results go to, under the config's results folder: `shard-2-of-3`.
    pub fn dir_name(self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let syntax = || ShardError::Syntax(s.to_string());
        let (k, n) = s.trim().split_once('/').ok_or_else(syntax)?;
        let number = |t: &str| {
            let t = t.trim();
            // `+2` and `02` parse as numbers, but a shard is written plainly.
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            t.parse::<u32>().map_err(|_| syntax())
        };
        Shard::new(number(k)?, number(n)?)
    }
}

/// 64-bit FNV-1a: a fixed, documented hash (unlike std's `DefaultHasher`, which may change
/// between Rust releases), so every machine and every version agrees on a case's shard.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard::new(2, 3).unwrap());
        assert_eq!(" 1 / 1 ".parse::<Shard>().unwrap().to_string(), "1/1");
        let err = |s: &str| s.parse::<Shard>().unwrap_err().to_string();
        assert_eq!(
            err("4/3"),
            "failed to read shard 4/3: K must be between 1 and N"
        );
        assert_eq!(
            err("0/3"),
            "failed to read shard 0/3: K must be between 1 and N"
        );
        assert_eq!(err("1/0"), "failed to read shard 1/0: N must be at least 1");
        for bad in ["3", "a/b", "1/", "-1/3", "+1/3", "1/3/4", ""] {
            assert_eq!(
                err(bad),
                format!(
                    "failed to read shard `{bad}`: expected K/N, two whole numbers such as 2/3"
                )
            );
        }
    }

    #[test]
    fn fnv1a64_is_the_published_function() {
        // Test vectors of the FNV reference (draft-eastlake-fnv): "" and "a", "foobar".
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn every_case_is_in_exactly_one_shard() {
        let ids: Vec<String> = (0..200).map(|i| format!("cat{}/case_{i}", i % 7)).collect();
        for n in 1..=5 {
            for id in &ids {
                let owners = (1..=n)
                    .filter(|&k| Shard::new(k, n).unwrap().contains(id))
                    .count();
                assert_eq!(owners, 1, "{id} among {n}");
            }
        }
        // The split is not degenerate.
        let before: Vec<u32> = ids.iter().map(|id| Shard::of(id, 3)).collect();
        for k in 1..=3 {
            let size = before.iter().filter(|&&s| s == k).count();
            assert!((40..=100).contains(&size), "shard {k}/3 has {size} of 200");
        }
    }

    #[test]
    fn a_case_keeps_its_shard_across_versions() {
        // Computed with an independent FNV-1a implementation (Python): a change of the hash or
        // of what it is applied to would move cases between shards of an existing CI matrix.
        assert_eq!(Shard::of("algorithms/edit_distance", 3), 3);
        assert_eq!(Shard::of("algorithms/find_first", 3), 1);
        assert_eq!(Shard::of("mathematical/is_prime", 3), 2);
    }

    #[test]
    fn manifest_form_is_checked_on_the_way_in() {
        let s: Shard = serde_json::from_str(r#"{"index":2,"count":3}"#).unwrap();
        assert_eq!(s, Shard::new(2, 3).unwrap());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"index":2,"count":3}"#
        );
        assert!(serde_json::from_str::<Shard>(r#"{"index":4,"count":3}"#).is_err());
    }
}
