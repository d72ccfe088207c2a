//! The checks a case file's fields pass: TOML errors turned into file:line:field errors,
//! identifiers, tolerances, and Python that parses.

use toml::Spanned;

use super::{CaseError, LineIndex};
use crate::syntax;

pub(super) fn toml_error(lines: &LineIndex<'_>, text: &str, e: toml::de::Error) -> CaseError {
    let mut location = e
        .span()
        .map(|s| lines.at(s.start))
        .unwrap_or_else(|| lines.at(0));
    let mut message = e.message().trim().to_string();
    if let Some((line, column)) =
        crate::toml_error::unclosed_string(text).filter(|(l, _)| *l <= location.line)
    {
        location.line = line;
        location.column = column;
        message = "this string is not closed on its line (a string in \"...\" cannot span lines: close it, or use \"\"\"...\"\"\" for text over several lines)".into();
    }
    // Unknown/missing-field messages name the field; other errors point at a value, whose key
    // starts its line (`key = value`).
    let named = message.starts_with("unknown field") || message.starts_with("missing field");
    let key_on_line = || {
        let line = text.lines().nth(location.line - 1)?;
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        (!key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        .then(|| key.to_string())
    };
    let field = if named {
        extract_backticked(&message)
    } else {
        key_on_line()
    }
    .unwrap_or_else(|| "<document>".to_string());
    CaseError::Invalid {
        location,
        field,
        message,
    }
}

fn extract_backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

pub(super) fn check_identifier_like(
    lines: &LineIndex<'_>,
    field: &str,
    value: &Spanned<String>,
) -> Result<(), CaseError> {
    let v = value.get_ref();
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CaseError::invalid(
            lines.span(&value.span()),
            field,
            format!("`{v}` may only contain letters, digits, `_` and `-`"),
        ))
    }
}

pub(super) fn check_tolerance(
    lines: &LineIndex<'_>,
    field: &str,
    value: &Spanned<f64>,
) -> Result<f64, CaseError> {
    let t = *value.get_ref();
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(CaseError::invalid(
            lines.span(&value.span()),
            field,
            format!("tolerance must be a finite number >= 0, got {t}"),
        ))
    }
}

/// Is `s` a valid Python identifier (ASCII subset, which is all case files need)?
pub fn is_python_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

pub(super) fn check_python_expression(
    lines: &LineIndex<'_>,
    field: &str,
    value: &Spanned<String>,
) -> Result<(), CaseError> {
    if let Err(message) = syntax::check_expression(value.get_ref()) {
        return Err(CaseError::invalid(
            lines.span(&value.span()),
            field,
            format!("not a valid Python expression: {message}"),
        ));
    }
    Ok(())
}

pub(super) fn check_python_module(
    lines: &LineIndex<'_>,
    field: &str,
    value: &Spanned<String>,
) -> Result<(), CaseError> {
    let report = syntax::check(value.get_ref());
    if let Some(d) = report.diagnostics.first() {
        return Err(CaseError::invalid(
            lines.span(&value.span()),
            field,
            format!(
                "Python syntax error at {}:{}: {}",
                d.line, d.column, d.message
            ),
        ));
    }
    Ok(())
}
