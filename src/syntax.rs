//! Syntax check with tree-sitter-python: valid or not, and each ERROR / MISSING node as a
//! diagnostic with its 1-based line and column.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use tree_sitter::{Node, Parser, Tree};

/// One syntax problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The syntax verdict on a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntaxReport {
    pub valid: bool,
    pub diagnostics: Vec<Diagnostic>,
}

thread_local! {
    static PARSER: RefCell<Parser> = RefCell::new(new_parser());
}

fn new_parser() -> Parser {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .expect("tree-sitter-python grammar matches the tree-sitter version");
    parser
}

/// Parse Python source into a tree-sitter tree (a parser per thread, reused).
pub fn parse(source: &str) -> Tree {
    PARSER.with(|p| {
        p.borrow_mut()
            .parse(source, None)
            .expect("parser has a language and no timeout")
    })
}

/// Check a whole program.
pub fn check(source: &str) -> SyntaxReport {
    let tree = parse(source);
    let mut diagnostics = Vec::new();
    collect(tree.root_node(), source, &mut diagnostics);
    SyntaxReport {
        valid: diagnostics.is_empty(),
        diagnostics,
    }
}

fn collect(node: Node<'_>, source: &str, out: &mut Vec<Diagnostic>) {
    if !node.has_error() {
        return;
    }
    if node.is_error() || node.is_missing() {
        let pos = node.start_position();
        let message = if node.is_missing() {
            format!("missing `{}`", node.kind())
        } else {
            let text = node.utf8_text(source.as_bytes()).unwrap_or("");
            let first = text.lines().next().unwrap_or("").trim();
            let shown: String = first.chars().take(40).collect();
            if shown.is_empty() {
                "unexpected input".to_string()
            } else {
                format!("unexpected `{shown}`")
            }
        };
        out.push(Diagnostic {
            line: pos.row + 1,
            column: pos.column + 1,
            message,
        });
        if node.is_error() {
            // Nested errors inside one ERROR node are noise for a reader.
            return;
        }
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        collect(child, source, out);
    }
}

/// Check that `expr` is exactly one Python expression (what `eval` accepts).
pub fn check_expression(expr: &str) -> Result<(), String> {
    if expr.trim().is_empty() {
        return Err("empty expression".into());
    }
    // `eval` ignores surrounding whitespace; brackets make multi-line expressions parse as-is.
    let expr = expr.trim();
    let report = check(expr);
    if let Some(d) = report.diagnostics.first() {
        return Err(format!(
            "{} (line {}, column {} of the expression)",
            d.message, d.line, d.column
        ));
    }
    let tree = parse(expr);
    let root = tree.root_node();
    let ok = root.named_child_count() == 1
        && root.named_child(0).is_some_and(|s| {
            s.kind() == "expression_statement"
                && s.named_child_count() == 1
                && s.named_child(0).is_some_and(|e| {
                    !matches!(e.kind(), "assignment" | "augmented_assignment" | "yield")
                })
        });
    if ok {
        Ok(())
    } else {
        Err("expected a single expression".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_program() {
        let r = check("def f(x):\n    return x + 1\n");
        assert!(r.valid, "{r:?}");
    }

    #[test]
    fn error_has_position() {
        let r = check("def f(x):\n    return (x + \n");
        assert!(!r.valid);
        assert_eq!(r.diagnostics[0].line, 2, "{r:?}");
    }

    #[test]
    fn missing_colon_is_reported() {
        let r = check("def f(x)\n    return x\n");
        assert!(!r.valid);
        assert!(!r.diagnostics.is_empty());
    }

    #[test]
    fn expressions() {
        assert!(check_expression("f(1, [2, 3])").is_ok());
        assert!(check_expression("{'a': 1}").is_ok());
        assert!(check_expression("f(\n  1,\n  2)").is_ok());
        assert!(check_expression("lambda x: x").is_ok());
        assert!(check_expression("x = 1").is_err());
        assert!(check_expression("f(1").is_err());
        assert!(check_expression("1) or (2").is_err());
        assert!(check_expression("").is_err());
        assert!(check_expression("import os").is_err());
    }
}
