//! Where a snapshot comes from, as a reviewer sees it in `cargo insta review` and in the
//! header of each `.snap` file: the case file as its source (not the harness's own source
//! line, which changes from build to build), the profile, the case file's sha256, and for a
//! changed outcome whether the case file changed since the snapshot was accepted or the
//! model's output did with the case unchanged.

use std::path::{Path, PathBuf};

use insta::internals::Content;

/// The case and profile a snapshot belongs to.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The project root (the workspace insta makes paths relative to).
    pub root: PathBuf,
    /// The case file.
    pub case_file: PathBuf,
    /// The case id (`category/id`).
    pub case: String,
    /// The model profile.
    pub profile: String,
    /// The case file's sha256, as run.
    pub case_sha256: String,
}

/// What changed between the accepted snapshot and the new outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No accepted snapshot: a new case (or a new profile).
    New,
    /// The case file differs from the one the accepted snapshot was taken with.
    CaseFile,
    /// The case file is the same: the model's output (or the harness) changed.
    Output,
    /// The accepted snapshot does not record its case file's hash.
    Unknown,
}

impl Change {
    /// In words, for the header and the failure message.
    pub fn words(self) -> &'static str {
        match self {
            Change::New => "a new case: no snapshot was accepted before",
            Change::CaseFile => "the case file changed since the last accepted snapshot",
            Change::Output => {
                "the model's output changed: the case file is the one of the last accepted snapshot"
            }
            Change::Unknown => {
                "the outcome changed (the last accepted snapshot does not record its case file's hash)"
            }
        }
    }
}

/// The value of `key: value` in a snapshot file's header (between the `---` lines), if any.
pub fn header_value<'a>(file: &'a str, key: &str) -> Option<&'a str> {
    let header = file.strip_prefix("---\n")?.split_once("\n---\n")?.0;
    header
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix(": "))
        .map(|v| v.trim().trim_matches('"'))
}

impl Origin {
    /// The case file relative to the project root (as it is written in headers).
    pub fn case_file_rel(&self) -> String {
        self.case_file
            .strip_prefix(&self.root)
            .unwrap_or(&self.case_file)
            .to_string_lossy()
            .into_owned()
    }

    /// What changed, given the accepted snapshot file's text (`None`: there is none).
    pub fn change(&self, accepted: Option<&str>) -> Change {
        match accepted.map(|a| header_value(a, "case_sha256")) {
            None => Change::New,
            Some(None) => Change::Unknown,
            Some(Some(h)) if h == self.case_sha256 => Change::Output,
            Some(Some(_)) => Change::CaseFile,
        }
    }

    /// The header's description: the profile and the case.
    pub fn description(&self) -> String {
        format!("{} outcome of {}", self.profile, self.case)
    }

    /// The header's info: profile, case file, its hash, and what changed (for a pending
    /// snapshot; kept once accepted as why it was).
    pub fn info(&self, change: Option<Change>) -> Content {
        let s = |v: &str| Content::String(v.to_string());
        let mut fields = vec![
            (s("profile"), s(&self.profile)),
            (s("case_file"), s(&self.case_file_rel())),
            (s("case_sha256"), s(&self.case_sha256)),
        ];
        if let Some(change) = change {
            fields.push((s("change"), s(change.words())));
        }
        Content::Map(fields)
    }
}

/// The origin of a snapshot for case file `case_file` of `profile` (hashing the file).
pub fn origin(root: &Path, case_file: &Path, case: &str, profile: &str) -> Origin {
    Origin {
        root: root.to_path_buf(),
        case_file: case_file.to_path_buf(),
        case: case.to_string(),
        profile: profile.to_string(),
        case_sha256: crate::cache::sha256_file(case_file).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_case_file_and_a_changed_output_are_told_apart() {
        let o = Origin {
            root: "/p".into(),
            case_file: "/p/cases/a/b.toml".into(),
            case: "a/b".into(),
            profile: "reference".into(),
            case_sha256: "abc".into(),
        };
        let accepted = |h: &str| {
            format!(
                "---\nsource: cases/a/b.toml\ninfo:\n  profile: reference\n  case_sha256: {h}\n---\nverdict: passed\n"
            )
        };
        assert_eq!(o.change(None), Change::New);
        assert_eq!(o.change(Some(&accepted("abc"))), Change::Output);
        assert_eq!(o.change(Some(&accepted("def"))), Change::CaseFile);
        assert_eq!(
            o.change(Some("---\nsource: src/snapshot.rs\n---\nverdict: passed\n")),
            Change::Unknown
        );
        assert_eq!(o.case_file_rel(), "cases/a/b.toml");
    }
}
