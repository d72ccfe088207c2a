//! Diversity of n samples: how many distinct programs a case's samples are once whitespace and
//! comments are normalised away, and per model the share of cases (with two samples or more)
//! whose samples are all identical and the mean distinct count. Pure: no I/O.

use std::collections::BTreeSet;

use serde::Serialize;
use tree_sitter::Node;

use crate::evaluate::CaseOutcome;
use crate::syntax;

/// A program with whitespace and comments normalised away: the tree-sitter tree's structure and
/// leaf tokens (so indentation that changes blocks still counts); for code that does not parse,
/// its lines with `#` comments (outside strings), blank lines and trailing whitespace removed.
pub fn normalise(code: &str) -> String {
    let tree = syntax::parse(code);
    let root = tree.root_node();
    if root.has_error() {
        return code
            .lines()
            .map(|l| strip_comment(l).trim_end())
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut out = String::new();
    tokens(root, code, &mut out);
    out
}

fn tokens(node: Node<'_>, src: &str, out: &mut String) {
    if node.kind() == "comment" {
        return;
    }
    if node.child_count() == 0 {
        out.push_str(node.utf8_text(src.as_bytes()).unwrap_or(""));
        out.push(' ');
        return;
    }
    out.push('(');
    out.push_str(node.kind());
    out.push(' ');
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        tokens(child, src, out);
    }
    out.push(')');
}

/// The line up to a `#` that is outside a string literal (on this line).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '#' => return &line[..i],
            None if c == '"' || c == '\'' => quote = Some(c),
            None => {}
        }
    }
    line
}

/// The number of distinct programs among a case's samples.
pub fn distinct(outcome: &CaseOutcome) -> usize {
    outcome
        .samples
        .iter()
        .map(|s| normalise(&s.extraction.code))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Diversity over a model's cases with two samples or more.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diversity {
    /// Measured cases with two samples or more.
    pub cases: usize,
    /// Share of those cases whose samples are all the same program.
    pub all_identical_rate: f64,
    /// Mean number of distinct programs per case.
    pub mean_distinct: f64,
}

impl Diversity {
    /// `None` when no case has two samples or more.
    pub fn of<'a>(outcomes: impl Iterator<Item = &'a CaseOutcome>) -> Option<Diversity> {
        let counts: Vec<usize> = outcomes
            .filter(|o| o.error.is_none() && o.samples.len() >= 2)
            .map(distinct)
            .collect();
        if counts.is_empty() {
            return None;
        }
        let n = counts.len() as f64;
        Some(Diversity {
            cases: counts.len(),
            all_identical_rate: counts.iter().filter(|&&c| c == 1).count() as f64 / n,
            mean_distinct: counts.iter().sum::<usize>() as f64 / n,
        })
    }

    /// `diversity: 40.0% of 10 cases with n >= 2 all identical; mean 1.8 distinct samples`.
    pub fn line(&self) -> String {
        format!(
            "diversity: {:.1}% of {} cases with n >= 2 all identical; mean {:.2} distinct samples",
            self.all_identical_rate * 100.0,
            self.cases,
            self.mean_distinct
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_comments_do_not_count() {
        let a = "def f(x):\n    # add one\n    return x+1\n";
        let b = "def f(x):\n\n  return x + 1   # done\n\n";
        assert_eq!(normalise(a), normalise(b));
        assert_ne!(normalise(a), normalise("def f(x):\n    return x + 2\n"));
        // Indentation that moves a statement out of a block is a different program.
        let c = "def f(x):\n    if x:\n        x = 1\n        return x\n";
        let d = "def f(x):\n    if x:\n        x = 1\n    return x\n";
        assert_ne!(normalise(c), normalise(d));
    }

    #[test]
    fn line_fallback_for_code_that_does_not_parse() {
        let a = "def f(x:\n    return '#' # note\n\n";
        let b = "def f(x:   \n    return '#'\n";
        assert_eq!(normalise(a), normalise(b));
        assert_eq!(strip_comment("s = \"a#b\"  # c"), "s = \"a#b\"  ");
    }

    fn with_codes(codes: &[&str]) -> CaseOutcome {
        let mut o = crate::snapshot::tests::outcome(true);
        let sample = o.samples.remove(0);
        for c in codes {
            let mut s = sample.clone();
            s.extraction.code = c.to_string();
            o.samples.push(s);
        }
        o
    }

    #[test]
    fn per_case_and_per_model() {
        let same = with_codes(&["def f():\n  return 1\n", "def f():\n    return 1  # one\n"]);
        let two = with_codes(&[
            "def f():\n  return 1\n",
            "def f():\n  return 2\n",
            "x = 1\n",
        ]);
        assert_eq!(distinct(&same), 1);
        assert_eq!(distinct(&two), 3);
        let one = with_codes(&["def f():\n  return 1\n"]);
        let d = Diversity::of([same, two, one.clone()].iter()).unwrap();
        assert_eq!(d.cases, 2);
        assert_eq!(d.all_identical_rate, 0.5);
        assert_eq!(d.mean_distinct, 2.0);
        assert_eq!(Diversity::of([one].iter()), None);
    }
}
