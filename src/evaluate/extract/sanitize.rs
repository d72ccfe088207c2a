//! Drop an incomplete tail that would sink a complete program: a reply cut off at max tokens
//! mid-statement (a correct function, then a repetition loop of `print(...)` calls cut
//! mid-line) otherwise fails as a syntax error. Like EvalPlus's sanitizer, trailing top-level
//! statements are removed, last first, until the program parses, as long as what is left still
//! defines the entry point and the dropped text defines nothing the kept code uses. A program
//! whose entry point itself is broken is left as written. Pure: no I/O.

use crate::outcome::{Dropped, Scope};
use crate::syntax;

/// The program with its incomplete tail dropped, and the drop; `None` when `code` parses
/// already or no such cut exists.
pub fn drop_incomplete_tail(code: &str, entry_point: &str) -> Option<(String, Dropped)> {
    if !syntax::parse(code).root_node().has_error() {
        return None;
    }
    // Candidate cuts: byte offsets of lines that start in column 0 with something other than
    // a comment (top-level statements), latest first.
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        if offset > 0 && line.starts_with(|c: char| !c.is_whitespace() && c != '#') {
            starts.push(offset);
        }
        offset += line.len();
    }
    for &cut in starts.iter().rev() {
        let kept = &code[..cut];
        if !defines_at_top_level(kept, entry_point) || syntax::parse(kept).root_node().has_error() {
            continue;
        }
        let tail = &code[cut..];
        let used = crate::evaluate::extract::names_used(kept);
        if tail
            .lines()
            .filter_map(top_level_definition)
            .any(|name| used.contains(name))
        {
            return None;
        }
        let first_line = kept.matches('\n').count() + 1;
        let what: String = tail
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(60)
            .collect();
        let dropped = Dropped {
            scope: Scope::Code,
            first_line,
            last_line: first_line + tail.trim_end().matches('\n').count(),
            what,
            reason: "incomplete statements after the entry point (cut off mid-statement)".into(),
        };
        return Some((format!("{}\n", kept.trim_end()), dropped));
    }
    None
}

/// `def name(` / `async def name(` / `class name` at column 0.
fn defines_at_top_level(code: &str, entry_point: &str) -> bool {
    code.lines()
        .any(|l| top_level_definition(l) == Some(entry_point))
}

fn top_level_definition(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("def ")
        .or_else(|| line.strip_prefix("async def "))
        .or_else(|| line.strip_prefix("class "))?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_loop_cut_mid_line_is_dropped() {
        let code = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\nprint(add(2, 3))\nprint(add(3, \n";
        let (kept, dropped) = drop_incomplete_tail(code, "add").unwrap();
        assert_eq!(
            kept,
            "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\nprint(add(2, 3))\n"
        );
        assert_eq!((dropped.first_line, dropped.last_line), (6, 6));
        assert_eq!(dropped.what, "print(add(3,");
        assert!(syntax::check(&kept).valid);
    }

    #[test]
    fn broken_entry_point_is_left_as_is() {
        let code = "def helper():\n    return 1\n\ndef f(x):\n    return (x +\n";
        assert_eq!(drop_incomplete_tail(code, "f"), None);
        let code = "def f(x:\n    return x\n\nprint(f(1))\nprint(f(\n";
        assert_eq!(drop_incomplete_tail(code, "f"), None);
    }

    #[test]
    fn valid_programs_and_needed_tails_are_untouched() {
        assert_eq!(drop_incomplete_tail("def f():\n    return 1\n", "f"), None);
        // The cut-off helper is what `f` calls: dropping it would only hide the failure.
        let code = "def f(x):\n    return g(x)\n\ndef g(x):\n    return (x\n";
        assert_eq!(drop_incomplete_tail(code, "f"), None);
    }
}
