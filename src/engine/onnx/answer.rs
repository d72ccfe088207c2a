//! Where a chat reply's answer ends: a fenced Python code block that defines the entry point
//! has closed. The fences are read as the extractor reads them (a ```` ``` ```` line opens a
//! block, a bare ```` ``` ```` line closes it, a reply may start inside a block the prompt
//! opened), so a row that stops here has what the extractor would take from it, unless the
//! model would have revised its answer in a later block. Used for `stop_at_answer`.

use crate::prompt::{defines_function, is_python_fence};

/// What a row stops at: its reply (after the prompt's prefill, which may open the fence)
/// closes a Python block defining `entry_point`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnswerStop {
    pub entry_point: String,
    /// The reply's start that the prompt wrote (a chat prompt's prefill).
    pub prefill: String,
}

impl AnswerStop {
    /// Whether `reply` (the text generated so far) has closed such a block with a complete
    /// line. Cheap unless the last complete line that is not blank is a bare fence (one token
    /// may end the fence's line and add blank ones).
    pub fn reached(&self, reply: &str) -> bool {
        let Some(end) = reply.rfind('\n') else {
            return false;
        };
        let last = reply[..end].rsplit('\n').find(|l| !l.trim().is_empty());
        if last.map(str::trim) != Some("```") {
            return false;
        }
        let text = format!("{}{}", self.prefill, &reply[..end + 1]);
        closes_answer(&text, &self.entry_point)
    }
}

/// Whether complete lines `text` hold a closed Python block that defines `entry_point`.
fn closes_answer(text: &str, entry_point: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    let is_fence = |l: &&str| l.trim_start().starts_with("```");
    // A reply that starts with the code and only closes a fence (the opening was implied).
    if let Some(f) = lines.iter().position(is_fence)
        && f > 0
        && lines[f].trim() == "```"
        && defines(&lines[..f], entry_point)
    {
        return true;
    }
    let mut open: Option<(bool, usize)> = None;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        match open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((is_python_fence(info), i + 1));
                }
            }
            Some((python, body)) => {
                if trimmed.trim_end() == "```" {
                    if python && defines(&lines[body..i], entry_point) {
                        return true;
                    }
                    open = None;
                }
            }
        }
    }
    false
}

/// Whether `lines` define `entry_point`.
fn defines(lines: &[&str], entry_point: &str) -> bool {
    lines.iter().any(|l| defines_function(l, entry_point))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(prefill: &str) -> AnswerStop {
        AnswerStop {
            entry_point: "add".into(),
            prefill: prefill.into(),
        }
    }

    #[test]
    fn a_closed_python_block_defining_the_entry_point_ends_the_answer() {
        let s = stop("");
        let reply = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n";
        assert!(s.reached(reply));
        // One token may close the fence's line and add a blank one.
        assert!(s.reached("```python\ndef add(a, b):\n    return a + b\n```\n\n"));
        assert!(s.reached("```python\ndef add(a, b):\n    return a + b\n```\n\nThis"));
        // Not before the closing fence's line is complete.
        assert!(!s.reached("Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"));
        assert!(!s.reached("Here it is:\n```python\ndef add(a, b):\n"));
    }

    #[test]
    fn other_blocks_do_not_end_it() {
        let s = stop("");
        // A block of another language, a block without the entry point, a fence with a
        // language inside a block (not a close), a name that only starts the same.
        assert!(!s.reached("```bash\ndef add(a):\n```\n"));
        assert!(!s.reached("```python\nprint(add(1, 2))\n```\n"));
        assert!(!s.reached("```python\ndef adder(a, b):\n    pass\n```\n"));
        assert!(!s.reached("```python\ndef add(a, b):\n```python\n"));
        // ... but a later block that defines it does.
        assert!(s.reached(
            "```python\nx = 1\n```\nThen:\n```py\nasync def add (a, b):\n    pass\n```\n"
        ));
    }

    #[test]
    fn a_fence_the_prompt_opened_or_implied_counts() {
        assert!(stop("```python\n").reached("def add(a, b):\n    return a + b\n```\n"));
        assert!(stop("").reached("def add(a, b):\n    return a + b\n```\n"));
        assert!(!stop("").reached("def add(a, b):\n    return a + b\n```python\n"));
    }
}
