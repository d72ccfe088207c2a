//! Where a TOML error really is. The `toml` crate reports some mistakes at whatever it trips
//! over next: a string left open on one line becomes "key with no value" on the next. Case
//! files and the config use this to point at the real line (offsets become lines with
//! `case::LineIndex`).

/// The first line (1-based) and column where a single-line string opens and is not closed on
/// the same line. TOML's parser reports such a string at whatever it trips over next (often
/// the next line, "key with no value"), so this finds the real place.
pub(crate) fn unclosed_string(text: &str) -> Option<(usize, usize)> {
    let mut multi: Option<&str> = None;
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        let mut consumed = 0;
        loop {
            if let Some(delim) = multi {
                match rest.find(delim) {
                    Some(i) => {
                        multi = None;
                        consumed += i + 3;
                        rest = &rest[i + 3..];
                    }
                    None => break,
                }
            }
            let Some(i) = rest.find(['"', '\'', '#']) else {
                break;
            };
            let (quote, after) = (&rest[i..], &rest[i + 1..]);
            if quote.starts_with('#') {
                break;
            }
            if quote.starts_with("\"\"\"") || quote.starts_with("'''") {
                multi = Some(&quote[..3]);
                consumed += i + 3;
                rest = &rest[i + 3..];
                continue;
            }
            let basic = quote.starts_with('"');
            let mut escaped = false;
            let close = after.char_indices().find(|&(_, c)| {
                let hit = if basic {
                    c == '"' && !escaped
                } else {
                    c == '\''
                };
                escaped = basic && c == '\\' && !escaped;
                hit
            });
            match close {
                Some((j, _)) => {
                    consumed += i + 2 + j;
                    rest = &after[j + 1..];
                }
                None => return Some((n + 1, consumed + i + 1)),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unclosed_strings_are_found_on_their_own_line() {
        assert_eq!(unclosed_string("a = \"x\"\nb = \"y\nc = 1\n"), Some((2, 5)));
        assert_eq!(unclosed_string("a = 'it\nb = 1\n"), Some((1, 5)));
        // Closed strings, escapes, comments and multi-line strings are fine.
        let fine = r#"a = "say \"hi\"" # it's
b = """
free " text
"""
c = '''
x
'''
"#;
        assert_eq!(unclosed_string(fine), None);
    }
}
