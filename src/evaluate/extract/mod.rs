//! Get the program out of a model's reply.
//!
//! Chat replies: the fenced code block that defines the entry point (```python or bare ```).
//! Completion replies: the case's prefix followed by the generated body. Then a tree-sitter pass
//! keeps the entry point and what it needs (imports, helper functions, classes, constants) and
//! drops chatter, example calls and `if __name__ == "__main__":` blocks. Every drop is recorded,
//! so a reader can see why code vanished.

pub mod sanitize;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tree_sitter::Node;

use crate::prompt::Prompt;
use crate::syntax;

pub use crate::outcome::{Dropped, Origin, Scope};

/// The program extracted from a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extraction {
    pub code: String,
    pub origin: Origin,
    pub dropped: Vec<Dropped>,
    /// Why pruning was skipped, when it was.
    pub unpruned_reason: Option<String>,
    /// Whether the code chosen from the reply parsed before [`sanitize`] dropped an
    /// incomplete tail (a reply cut off mid-statement); the program that ran may parse anyway.
    pub raw_syntax_valid: bool,
}

/// Extract the program for `entry_point` from `reply`, given the prompt it answers.
/// `test_names` are identifiers the case's tests use besides the entry point (a HumanEval
/// check block may call a helper the prompt defined); definitions of those are kept too.
pub fn extract(
    reply: &str,
    prompt: &Prompt,
    entry_point: &str,
    test_names: &BTreeSet<String>,
) -> Extraction {
    let (code, origin, mut dropped) = match prompt {
        Prompt::Complete { prefix } => {
            let (code, dropped) = prefix_and_body(prefix, reply);
            (code, Origin::PrefixAndBody, dropped)
        }
        Prompt::Chat { .. } => choose_block(reply, entry_point),
    };
    let raw_syntax_valid = !syntax::parse(&code).root_node().has_error();
    let code = match sanitize::drop_incomplete_tail(&code, entry_point) {
        Some((kept, drop)) if !raw_syntax_valid => {
            dropped.push(drop);
            kept
        }
        _ => code,
    };
    let (code, pruned, unpruned_reason) = prune(&code, entry_point, test_names);
    dropped.extend(pruned);
    Extraction {
        code,
        origin,
        dropped,
        unpruned_reason,
        raw_syntax_valid,
    }
}

/// `prefix + body`, where a model that kept writing after the function (closing fences, prose,
/// a chat turn) has that tail cut: the body is split at lines that start in column 0, and chunks
/// are kept while the program still parses. Without stop strings this is what an instruct model
/// continuing a HumanEval prompt needs; a body that parses whole is kept whole.
fn prefix_and_body(prefix: &str, body: &str) -> (String, Vec<Dropped>) {
    let whole = format!("{prefix}{body}");
    if !syntax::parse(&whole).root_node().has_error() {
        return (whole, Vec::new());
    }
    // Chunk boundaries: byte offsets in `body` of lines that start with a non-space character.
    let mut starts = vec![0];
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        if offset > 0 && line.starts_with(|c: char| !c.is_whitespace()) {
            starts.push(offset);
        }
        offset += line.len();
    }
    let mut keep = 0;
    for (i, &start) in starts.iter().enumerate().skip(1) {
        if !syntax::parse(&format!("{prefix}{}", &body[..start]))
            .root_node()
            .has_error()
        {
            keep = i;
        } else {
            break;
        }
    }
    // Only the first chunk (the function's own body) may fail to parse: then keep it all.
    if keep == 0 {
        return (whole, Vec::new());
    }
    let cut = starts[keep];
    let prefix_lines = prefix.matches('\n').count();
    let first_line = prefix_lines + body[..cut].matches('\n').count() + 1;
    let tail = &body[cut..];
    let dropped = vec![Dropped {
        scope: Scope::Code,
        first_line,
        last_line: first_line + tail.trim_end().matches('\n').count(),
        what: preview(tail.lines().next().unwrap_or("")),
        reason: "text after the completed code that does not parse (prose, fences)".into(),
    }];
    (format!("{prefix}{}", &body[..cut]), dropped)
}

struct Block {
    lang: String,
    /// 1-based reply lines of the opening fence and the closing fence (or last line).
    open_line: usize,
    close_line: usize,
    code: String,
}

fn fenced_blocks(reply: &str, entry_point: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, usize, Vec<&str>)> = None;
    let lines: Vec<&str> = reply.lines().collect();
    // A reply that starts with the code and only closes a fence (the opening was implied by the
    // prompt): the first bare fence closes a block that began on line 1.
    let first_fence = lines.iter().position(|l| l.trim_start().starts_with("```"));
    if let Some(f) = first_fence
        && lines[f].trim() == "```"
        && f > 0
        && defines(&join_lines(&lines[..f]), entry_point)
    {
        current = Some((String::new(), 0, lines[..f].to_vec()));
    }
    for (i, line) in lines.iter().enumerate() {
        if current.as_ref().is_some_and(|c| c.1 == 0) && i < first_fence.unwrap_or(0) {
            continue;
        }
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    current = Some((info.trim().to_ascii_lowercase(), i + 1, Vec::new()));
                }
            }
            Some((lang, open, body)) => {
                if trimmed.starts_with("```") && trimmed.trim_end() == "```" {
                    blocks.push(Block {
                        lang: std::mem::take(lang),
                        open_line: *open,
                        close_line: i + 1,
                        code: join_lines(body),
                    });
                    current = None;
                } else {
                    body.push(line);
                }
            }
        }
    }
    // An unterminated fence (generation cut off) still holds code.
    if let Some((lang, open, body)) = current {
        blocks.push(Block {
            lang,
            open_line: open,
            close_line: lines.len(),
            code: join_lines(&body),
        });
    }
    blocks
}

fn join_lines(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn is_python_block(lang: &str) -> bool {
    crate::prompt::is_python_fence(lang)
}

fn defines(code: &str, entry_point: &str) -> bool {
    code.lines()
        .any(|l| crate::prompt::defines_function(l, entry_point))
}

fn choose_block(reply: &str, entry_point: &str) -> (String, Origin, Vec<Dropped>) {
    let blocks = fenced_blocks(reply, entry_point);
    if blocks.is_empty() {
        return (reply.to_string(), Origin::WholeReply, Vec::new());
    }
    let count = blocks.len();
    let python: Vec<usize> = (0..count)
        .filter(|&i| is_python_block(&blocks[i].lang))
        .collect();
    // The last block that defines the entry point (models often revise), else the first
    // Python block, else the first block of any language.
    let chosen = python
        .iter()
        .rev()
        .copied()
        .find(|&i| defines(&blocks[i].code, entry_point))
        .or_else(|| python.first().copied())
        .unwrap_or(0);

    let mut dropped = Vec::new();
    let total_lines = reply.lines().count();
    let mut prose_start = 1;
    let record_prose = |from: usize, to: usize, dropped: &mut Vec<Dropped>| {
        let text: Vec<&str> = reply
            .lines()
            .skip(from - 1)
            .take(to + 1 - from)
            .filter(|l| !l.trim().is_empty())
            .collect();
        if to >= from && !text.is_empty() {
            dropped.push(Dropped {
                scope: Scope::Reply,
                first_line: from,
                last_line: to,
                what: preview(text[0]),
                reason: "prose outside code blocks".into(),
            });
        }
    };
    for (i, b) in blocks.iter().enumerate() {
        record_prose(prose_start, b.open_line.saturating_sub(1), &mut dropped);
        prose_start = b.close_line + 1;
        if i != chosen {
            let reason = if !is_python_block(&b.lang) {
                format!(
                    "code block {} of {count} is `{}`, not Python",
                    i + 1,
                    b.lang
                )
            } else if defines(&b.code, entry_point) {
                format!(
                    "code block {} of {count}: a later block also defines `{entry_point}`",
                    i + 1
                )
            } else {
                format!(
                    "code block {} of {count} does not define `{entry_point}`",
                    i + 1
                )
            };
            dropped.push(Dropped {
                scope: Scope::Reply,
                first_line: b.open_line,
                last_line: b.close_line,
                what: preview(b.code.lines().find(|l| !l.trim().is_empty()).unwrap_or("")),
                reason,
            });
        }
    }
    record_prose(prose_start, total_lines, &mut dropped);
    (
        blocks[chosen].code.clone(),
        Origin::FencedBlock {
            index: chosen + 1,
            count,
        },
        dropped,
    )
}

fn preview(line: &str) -> String {
    let t = line.trim();
    let short: String = t.chars().take(60).collect();
    if short.len() < t.len() {
        format!("{short}...")
    } else {
        short
    }
}

/// Identifiers used by Python source (for the names a case's tests refer to).
pub fn names_used(source: &str) -> BTreeSet<String> {
    let tree = syntax::parse(source);
    let mut out = BTreeSet::new();
    identifiers(tree.root_node(), source, &mut out);
    out
}

/// A top-level statement of the program and what it defines and uses.
struct Item {
    start_byte: usize,
    end_byte: usize,
    first_line: usize,
    last_line: usize,
    kind: ItemKind,
    defines: Vec<String>,
    uses: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Import,
    Definition,
    Assignment,
    Keep,
    MainGuard,
    Expression,
    Comment,
    OtherStatement,
}

fn definition_name<'a>(node: Node<'a>, src: &'a str) -> Option<&'a str> {
    let def = if node.kind() == "decorated_definition" {
        node.child_by_field_name("definition")?
    } else {
        node
    };
    def.child_by_field_name("name")?
        .utf8_text(src.as_bytes())
        .ok()
}

fn identifiers(node: Node<'_>, src: &str, out: &mut BTreeSet<String>) {
    if node.kind() == "identifier" {
        if let Ok(t) = node.utf8_text(src.as_bytes()) {
            out.insert(t.to_string());
        }
        return;
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        identifiers(child, src, out);
    }
}

fn assignment_targets(node: Node<'_>, src: &str) -> Vec<String> {
    // expression_statement > assignment(left = identifier | pattern_list ...)
    let mut out = Vec::new();
    if let Some(assign) = node.named_child(0)
        && matches!(assign.kind(), "assignment" | "augmented_assignment")
        && let Some(left) = assign.child_by_field_name("left")
    {
        let mut ids = BTreeSet::new();
        identifiers(left, src, &mut ids);
        out.extend(ids);
    }
    out
}

fn is_main_guard(node: Node<'_>, src: &str) -> bool {
    node.kind() == "if_statement"
        && node
            .child_by_field_name("condition")
            .and_then(|c| c.utf8_text(src.as_bytes()).ok())
            .is_some_and(|c| c.contains("__name__") && c.contains("__main__"))
}

fn classify(node: Node<'_>, src: &str) -> Item {
    let mut uses = BTreeSet::new();
    let mut defines = Vec::new();
    let kind = match node.kind() {
        "import_statement" | "import_from_statement" | "future_import_statement" => {
            ItemKind::Import
        }
        "function_definition" | "class_definition" | "decorated_definition" => {
            if let Some(name) = definition_name(node, src) {
                defines.push(name.to_string());
            }
            identifiers(node, src, &mut uses);
            ItemKind::Definition
        }
        "expression_statement" => {
            let targets = assignment_targets(node, src);
            if targets.is_empty() {
                ItemKind::Expression
            } else {
                defines = targets;
                identifiers(node, src, &mut uses);
                ItemKind::Assignment
            }
        }
        "comment" => ItemKind::Comment,
        // Import fallbacks (`try: import x except ImportError: ...`) and global declarations.
        "try_statement" | "global_statement" | "type_alias_statement" => {
            identifiers(node, src, &mut uses);
            ItemKind::Keep
        }
        "if_statement" if is_main_guard(node, src) => ItemKind::MainGuard,
        _ => ItemKind::OtherStatement,
    };
    Item {
        start_byte: node.start_byte(),
        end_byte: node.end_byte(),
        first_line: node.start_position().row + 1,
        last_line: node.end_position().row + 1,
        kind,
        defines,
        uses,
    }
}

/// Keep the entry point and its dependencies; returns (code, drops, why not pruned).
fn prune(
    code: &str,
    entry_point: &str,
    test_names: &BTreeSet<String>,
) -> (String, Vec<Dropped>, Option<String>) {
    let tree = syntax::parse(code);
    let root = tree.root_node();
    if root.has_error() {
        return (
            code.to_string(),
            Vec::new(),
            Some("the code has syntax errors, so it is kept as written".into()),
        );
    }
    let mut cursor = root.walk();
    let items: Vec<Item> = root
        .children(&mut cursor)
        .map(|n| classify(n, code))
        .collect();
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        for d in &item.defines {
            by_name.entry(d.as_str()).or_default().push(i);
        }
    }
    if !by_name.contains_key(entry_point) {
        return (
            code.to_string(),
            Vec::new(),
            Some(format!(
                "`{entry_point}` is not defined at the top level, so the code is kept as written"
            )),
        );
    }

    let needed = needed(&items, &by_name, entry_point, test_names);
    let (mut out, dropped) = kept(code, &items, &needed, entry_point);
    out.push('\n');
    (out, dropped, None)
}

/// Which items stay: the closure over names from the entry point, the names the tests use,
/// and what imports and kept try-blocks use; then everything the definitions reached use in
/// turn. A comment directly above a kept item stays with it.
fn needed(
    items: &[Item],
    by_name: &HashMap<&str, Vec<usize>>,
    entry_point: &str,
    test_names: &BTreeSet<String>,
) -> Vec<bool> {
    let mut needed: Vec<bool> = items
        .iter()
        .map(|item| matches!(item.kind, ItemKind::Import | ItemKind::Keep))
        .collect();
    let mut work: Vec<&str> = vec![entry_point];
    work.extend(test_names.iter().map(String::as_str));
    for (i, item) in items.iter().enumerate() {
        if needed[i] {
            work.extend(item.uses.iter().map(String::as_str));
        }
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    while let Some(name) = work.pop() {
        if !seen.insert(name) {
            continue;
        }
        for &i in by_name.get(name).into_iter().flatten() {
            if !needed[i] {
                needed[i] = true;
                work.extend(items[i].uses.iter().map(String::as_str));
            }
        }
    }
    // A comment directly above a kept item stays with it.
    for i in (0..items.len()).rev() {
        if items[i].kind == ItemKind::Comment
            && i + 1 < items.len()
            && needed[i + 1]
            && items[i + 1].first_line == items[i].last_line + 1
        {
            needed[i] = true;
        }
    }
    needed
}

/// The kept items, spaced as PEP 8 asks, and why each other item was dropped.
fn kept(code: &str, items: &[Item], needed: &[bool], entry_point: &str) -> (String, Vec<Dropped>) {
    let mut out = String::new();
    let mut dropped = Vec::new();
    let mut prev: Option<&Item> = None;
    for (i, item) in items.iter().enumerate() {
        let text = &code[item.start_byte..item.end_byte];
        if needed[i] {
            if let Some(p) = prev {
                let gap = item.first_line.saturating_sub(p.last_line);
                // Newlines between items: two blank lines around definitions (PEP 8), else
                // the original spacing, capped.
                let newlines =
                    if item.kind == ItemKind::Definition || p.kind == ItemKind::Definition {
                        3
                    } else {
                        gap.clamp(1, 3)
                    };
                if p.kind == ItemKind::Comment && gap == 1 {
                    out.push('\n');
                } else {
                    out.push_str(&"\n".repeat(newlines));
                }
            }
            out.push_str(text);
            prev = Some(item);
            continue;
        }
        let first = text.lines().next().unwrap_or("");
        dropped.push(Dropped {
            scope: Scope::Code,
            first_line: item.first_line,
            last_line: item.last_line,
            what: preview(first),
            reason: drop_reason(item, entry_point),
        });
    }
    (out, dropped)
}

/// Why `item` (not needed by `entry_point`) was dropped.
fn drop_reason(item: &Item, entry_point: &str) -> String {
    match item.kind {
        ItemKind::Definition => format!(
            "`{}` is not used by `{entry_point}`",
            item.defines.first().map(String::as_str).unwrap_or("?")
        ),
        ItemKind::Assignment => format!(
            "`{}` is not used by `{entry_point}`",
            item.defines.join("`, `")
        ),
        ItemKind::MainGuard => "`if __name__ == \"__main__\":` block".into(),
        ItemKind::Expression => "top-level expression (example call or output)".into(),
        ItemKind::Comment => "comment".into(),
        ItemKind::OtherStatement => "top-level statement outside any definition".into(),
        ItemKind::Import | ItemKind::Keep => unreachable!("always kept"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Message;

    fn chat() -> Prompt {
        Prompt::Chat {
            messages: vec![Message {
                role: "user".into(),
                content: "x".into(),
            }],
            prefill: None,
        }
    }

    #[test]
    fn picks_the_block_with_the_entry_point_and_records_prose() {
        let reply = "Here you go:\n\n```python\nimport math\n\ndef helper(x):\n    return x * 2\n\ndef unused():\n    pass\n\ndef f(x):\n    return helper(x) + math.pi\n\nprint(f(2))\n```\n\nExample:\n```\nf(1)\n```\n";
        let e = extract(reply, &chat(), "f", &BTreeSet::new());
        assert_eq!(e.origin, Origin::FencedBlock { index: 1, count: 2 });
        assert_eq!(
            e.code,
            "import math\n\n\ndef helper(x):\n    return x * 2\n\n\ndef f(x):\n    return helper(x) + math.pi\n"
        );
        let reasons: Vec<&str> = e.dropped.iter().map(|d| d.reason.as_str()).collect();
        assert!(
            reasons.contains(&"prose outside code blocks"),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&"`unused` is not used by `f`"),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&"top-level expression (example call or output)"),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("block 2 of 2 does not define")),
            "{reasons:?}"
        );
    }

    #[test]
    fn main_guard_dropped_constants_kept() {
        let code = "LIMIT = 10\nOTHER = 3\n\ndef f(x):\n    return min(x, LIMIT)\n\nif __name__ == '__main__':\n    print(f(3))\n";
        let e = extract(code, &chat(), "f", &BTreeSet::new());
        assert_eq!(e.origin, Origin::WholeReply);
        assert!(e.code.starts_with("LIMIT = 10\n\n\ndef f"), "{}", e.code);
        assert_eq!(e.dropped.len(), 2, "{:?}", e.dropped);
        assert!(e.dropped[1].reason.contains("__main__"));
    }

    #[test]
    fn completion_mode_joins_prefix_and_body() {
        let prompt = Prompt::Complete {
            prefix: "def f(x):\n    \"\"\"Double.\"\"\"\n".into(),
        };
        let e = extract(
            "    return 2 * x\n\n\nprint(f(1))\n",
            &prompt,
            "f",
            &BTreeSet::new(),
        );
        assert_eq!(e.origin, Origin::PrefixAndBody);
        assert_eq!(
            e.code,
            "def f(x):\n    \"\"\"Double.\"\"\"\n    return 2 * x\n"
        );
        assert_eq!(e.dropped.len(), 1);
    }

    #[test]
    fn helpers_named_by_tests_are_kept() {
        let code = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    return s[::-1]\n";
        let names =
            names_used("def check(candidate):\n    assert candidate(encode('ab')) == 'ab'\n");
        let e = extract(code, &chat(), "decode", &names);
        assert!(e.code.contains("def encode"), "{}", e.code);
        assert!(e.dropped.is_empty());
    }

    #[test]
    fn completion_mode_cuts_trailing_prose() {
        let prompt = Prompt::Complete {
            prefix: "def f(x):\n".into(),
        };
        let body = "    return helper(x)\n\n\ndef helper(x):\n    return x + 1\n```\n\nThis function adds one.\n";
        let e = extract(body, &prompt, "f", &BTreeSet::new());
        assert_eq!(
            e.code,
            "def f(x):\n    return helper(x)\n\n\ndef helper(x):\n    return x + 1\n"
        );
        assert!(e.unpruned_reason.is_none());
        assert!(
            e.dropped[0].reason.contains("does not parse"),
            "{:?}",
            e.dropped
        );
    }

    #[test]
    fn reply_that_only_closes_a_fence() {
        let reply = "def f(x):\n    return x\n```\n\nThis function returns x.\n";
        let e = extract(reply, &chat(), "f", &BTreeSet::new());
        assert_eq!(e.code, "def f(x):\n    return x\n");
        assert_eq!(e.origin, Origin::FencedBlock { index: 1, count: 1 });
        assert!(
            e.dropped
                .iter()
                .any(|d| d.reason == "prose outside code blocks"),
            "{:?}",
            e.dropped
        );
    }

    #[test]
    fn unterminated_fence_still_yields_code() {
        let e = extract(
            "```python\ndef f():\n    return 1\n",
            &chat(),
            "f",
            &BTreeSet::new(),
        );
        assert_eq!(e.code, "def f():\n    return 1\n");
    }

    #[test]
    fn syntax_errors_skip_pruning() {
        let e = extract(
            "def f(:\n    pass\nprint(1)\n",
            &chat(),
            "f",
            &BTreeSet::new(),
        );
        assert!(e.unpruned_reason.is_some());
        assert!(e.code.contains("print(1)"));
    }

    #[test]
    fn reply_cut_mid_print_loop_runs_the_complete_function() {
        let reply = "```python\ndef f(x):\n    return x\n\nprint(f(1))\nprint(f(";
        let e = extract(reply, &chat(), "f", &BTreeSet::new());
        assert!(!e.raw_syntax_valid);
        assert_eq!(e.code, "def f(x):\n    return x\n");
        assert!(
            e.dropped.iter().any(|d| d.reason.contains("incomplete")),
            "{:?}",
            e.dropped
        );
    }

    #[test]
    fn class_entry_point_and_decorators() {
        let code = "import functools\n\n@functools.lru_cache(None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nclass Stack:\n    def push(self, x):\n        return fib(x)\n";
        let e = extract(code, &chat(), "Stack", &BTreeSet::new());
        assert!(e.code.contains("@functools.lru_cache"), "{}", e.code);
        assert!(e.code.contains("class Stack"));
        assert!(e.dropped.is_empty(), "{:?}", e.dropped);
    }
}
