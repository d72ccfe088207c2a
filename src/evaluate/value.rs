//! Python values in a strict canonical form, compared in Rust.
//!
//! The sandboxed child reports what a call returned as tagged JSON built only from exact builtin
//! types; expected values are evaluated by a separate, trusted Python. Comparison happens here,
//! outside any process that ran generated code, so a forged `__eq__` cannot fake a pass.
//!
//! Wire form: `["none"]`, `["bool", b]`, `["int", "123"]`, `["float", "1.5"]` (Python's repr),
//! `["complex", "1.0", "2.0"]`, `["str", s]`, `["bytes", "hex"]`, `["list", [...]]`,
//! `["tuple", [...]]`, `["set", [...]]`, `["frozenset", [...]]`, `["dict", [[k, v], ...]]`.

use std::fmt::{self, Write as _};

use serde_json::Value as Json;
use thiserror::Error;

/// A Python value restricted to exact builtin types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Decimal digits as Python's `str(int)` writes them (arbitrary precision).
    Int(String),
    /// The float and Python's `repr` of it (for faithful display).
    Float(f64, String),
    Complex(f64, f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// A malformed wire value.
#[derive(Debug, Error, PartialEq)]
#[error("failed to decode a canonical value: {0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

fn parse_float(s: &str) -> Result<f64, DecodeError> {
    match s {
        "nan" => Ok(f64::NAN),
        "inf" => Ok(f64::INFINITY),
        "-inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .or_else(|_| err(format!("bad float `{s}`"))),
    }
}

impl Value {
    /// Decode the wire form. Nesting is bounded by the JSON parser's own recursion limit.
    pub fn from_json(json: &Json) -> Result<Value, DecodeError> {
        let Json::Array(items) = json else {
            return err("expected a tagged array");
        };
        let tag = items.first().and_then(Json::as_str).unwrap_or("");
        let arg = |i: usize| {
            items
                .get(i)
                .ok_or_else(|| DecodeError(format!("`{tag}` needs an argument")))
        };
        let str_arg = |i: usize| -> Result<&str, DecodeError> {
            arg(i)?
                .as_str()
                .ok_or_else(|| DecodeError(format!("`{tag}` needs a string")))
        };
        let seq = |i: usize| -> Result<Vec<Value>, DecodeError> {
            match arg(i)? {
                Json::Array(xs) => xs.iter().map(Value::from_json).collect(),
                _ => err(format!("`{tag}` needs a list")),
            }
        };
        Ok(match tag {
            "none" => Value::None,
            "bool" => Value::Bool(
                arg(1)?
                    .as_bool()
                    .ok_or_else(|| DecodeError("bad bool".into()))?,
            ),
            "int" => {
                let s = str_arg(1)?;
                let digits = s.strip_prefix('-').unwrap_or(s);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return err(format!("bad int `{s}`"));
                }
                Value::Int(s.to_string())
            }
            "float" => {
                let s = str_arg(1)?;
                Value::Float(parse_float(s)?, s.to_string())
            }
            "complex" => Value::Complex(parse_float(str_arg(1)?)?, parse_float(str_arg(2)?)?),
            "str" => Value::Str(str_arg(1)?.to_string()),
            "bytes" => {
                let hex = str_arg(1)?;
                if hex.len() % 2 != 0 {
                    return err("odd hex length");
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .or_else(|_| err("bad hex"))?;
                Value::Bytes(bytes)
            }
            "list" => Value::List(seq(1)?),
            "tuple" => Value::Tuple(seq(1)?),
            "set" => Value::Set(seq(1)?),
            "frozenset" => Value::FrozenSet(seq(1)?),
            "dict" => {
                let Json::Array(pairs) = arg(1)? else {
                    return err("`dict` needs a list of pairs");
                };
                let mut out = Vec::with_capacity(pairs.len());
                for p in pairs {
                    match p {
                        Json::Array(kv) if kv.len() == 2 => {
                            out.push((Value::from_json(&kv[0])?, Value::from_json(&kv[1])?))
                        }
                        _ => return err("`dict` pair must be [key, value]"),
                    }
                }
                Value::Dict(out)
            }
            other => return err(format!("unknown tag `{other}`")),
        })
    }

    fn as_number(&self) -> Option<Num<'_>> {
        match self {
            Value::Bool(b) => Some(Num::Int(if *b { "1" } else { "0" })),
            Value::Int(s) => Some(Num::Int(s)),
            Value::Float(f, _) => Some(Num::Float(*f)),
            _ => None,
        }
    }

    /// Python equality (`==`) between builtin values, with an optional absolute tolerance for
    /// floats. Numbers compare across bool/int/float as Python does; list and tuple never equal.
    pub fn equals(&self, other: &Value, tolerance: Option<f64>) -> bool {
        if let (Some(a), Some(b)) = (self.as_number(), other.as_number()) {
            return a.equals(&b, tolerance);
        }
        match (self, other) {
            (Value::None, Value::None) => true,
            (Value::Complex(a, b), Value::Complex(c, d)) => {
                close(*a, *c, tolerance) && close(*b, *d, tolerance)
            }
            (Value::Complex(re, im), n) | (n, Value::Complex(re, im)) => match n.as_number() {
                Some(x) => *im == 0.0 && Num::Float(*re).equals(&x, tolerance),
                None => false,
            },
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::List(a), Value::List(b)) | (Value::Tuple(a), Value::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.equals(y, tolerance))
            }
            (Value::Set(a) | Value::FrozenSet(a), Value::Set(b) | Value::FrozenSet(b)) => {
                unordered_equal(a, b, |x, y| x.equals(y, tolerance))
            }
            (Value::Dict(a), Value::Dict(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        b.iter()
                            .find(|(k2, _)| k.equals(k2, None))
                            .is_some_and(|(_, v2)| v.equals(v2, tolerance))
                    })
            }
            _ => false,
        }
    }

    /// Python's `repr` of the value (sets and dicts in the order received).
    pub fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        let seq = |out: &mut String, items: &[Value], open: &str, close: &str| {
            out.push_str(open);
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                v.write_repr(out);
            }
            out.push_str(close);
        };
        match self {
            Value::None => out.push_str("None"),
            Value::Bool(true) => out.push_str("True"),
            Value::Bool(false) => out.push_str("False"),
            Value::Int(s) => out.push_str(s),
            Value::Float(_, repr) => out.push_str(repr),
            Value::Complex(re, im) => {
                let _ = write!(out, "({re}{im:+}j)");
            }
            Value::Str(s) => out.push_str(&python_str_repr(s)),
            Value::Bytes(b) => {
                out.push_str("b'");
                for &c in b {
                    match c {
                        b'\\' => out.push_str("\\\\"),
                        b'\'' => out.push_str("\\'"),
                        b'\n' => out.push_str("\\n"),
                        b'\t' => out.push_str("\\t"),
                        b'\r' => out.push_str("\\r"),
                        0x20..=0x7e => out.push(c as char),
                        _ => {
                            let _ = write!(out, "\\x{c:02x}");
                        }
                    }
                }
                out.push('\'');
            }
            Value::List(xs) => seq(out, xs, "[", "]"),
            Value::Tuple(xs) if xs.len() == 1 => seq(out, xs, "(", ",)"),
            Value::Tuple(xs) => seq(out, xs, "(", ")"),
            Value::Set(xs) if xs.is_empty() => out.push_str("set()"),
            Value::Set(xs) => seq(out, xs, "{", "}"),
            Value::FrozenSet(xs) => {
                out.push_str("frozenset(");
                if !xs.is_empty() {
                    seq(out, xs, "{", "}");
                }
                out.push(')');
            }
            Value::Dict(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr())
    }
}

enum Num<'a> {
    Int(&'a str),
    Float(f64),
}

impl Num<'_> {
    fn to_f64(&self) -> f64 {
        match self {
            Num::Int(s) => s.parse::<f64>().unwrap_or(f64::NAN),
            Num::Float(f) => *f,
        }
    }

    fn equals(&self, other: &Num<'_>, tolerance: Option<f64>) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a == b,
            (Num::Int(i), Num::Float(f)) | (Num::Float(f), Num::Int(i)) if tolerance.is_none() => {
                // Exact comparison of an int with a float, as Python does it.
                f.is_finite() && f.fract() == 0.0 && int_eq_float(i, *f)
            }
            _ => close(self.to_f64(), other.to_f64(), tolerance),
        }
    }
}

fn int_eq_float(int: &str, f: f64) -> bool {
    if let Ok(i) = int.parse::<i128>() {
        // f is integral and finite here; i128 covers every f64 below 2^127 exactly.
        if f.abs() < 1.7e38 {
            return i == f as i128;
        }
        return false;
    }
    // Huge ints: compare the float's exact integer expansion.
    format!("{f:.0}") == int
}

fn close(a: f64, b: f64, tolerance: Option<f64>) -> bool {
    match tolerance {
        None => a == b,
        Some(t) => a == b || (a - b).abs() <= t,
    }
}

fn unordered_equal(a: &[Value], b: &[Value], eq: impl Fn(&Value, &Value) -> bool) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && eq(x, y) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

/// Python's `repr` of a `str`.
pub fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(j: Json) -> Value {
        Value::from_json(&j).unwrap()
    }

    #[test]
    fn numbers_compare_like_python() {
        assert!(v(json!(["int", "2"])).equals(&v(json!(["float", "2.0"])), None));
        assert!(v(json!(["bool", true])).equals(&v(json!(["int", "1"])), None));
        assert!(
            !v(json!(["float", "0.30000000000000004"])).equals(&v(json!(["float", "0.3"])), None)
        );
        assert!(
            v(json!(["float", "0.30000000000000004"]))
                .equals(&v(json!(["float", "0.3"])), Some(1e-9))
        );
        assert!(!v(json!(["float", "nan"])).equals(&v(json!(["float", "nan"])), None));
        let big = "123456789012345678901234567890";
        assert!(v(json!(["int", big])).equals(&v(json!(["int", big])), None));
    }

    #[test]
    fn containers() {
        let l = v(json!(["list", [["int", "1"], ["str", "a"]]]));
        let t = v(json!(["tuple", [["int", "1"], ["str", "a"]]]));
        assert!(!l.equals(&t, None), "list != tuple");
        let s1 = v(json!(["set", [["int", "1"], ["int", "2"]]]));
        let s2 = v(json!(["frozenset", [["int", "2"], ["int", "1"]]]));
        assert!(s1.equals(&s2, None));
        let d1 = v(json!([
            "dict",
            [[["str", "a"], ["int", "1"]], [["str", "b"], ["int", "2"]]]
        ]));
        let d2 = v(json!([
            "dict",
            [[["str", "b"], ["int", "2"]], [["str", "a"], ["int", "1"]]]
        ]));
        assert!(d1.equals(&d2, None));
    }

    #[test]
    fn repr_matches_python() {
        assert_eq!(v(json!(["tuple", [["int", "1"]]])).repr(), "(1,)");
        assert_eq!(v(json!(["str", "it's"])).repr(), "\"it's\"");
        assert_eq!(v(json!(["str", "a\nb"])).repr(), "'a\\nb'");
        assert_eq!(v(json!(["set", []])).repr(), "set()");
        assert_eq!(v(json!(["bytes", "610a"])).repr(), "b'a\\n'");
        assert_eq!(
            v(json!(["dict", [[["str", "k"], ["none"]]]])).repr(),
            "{'k': None}"
        );
    }

    #[test]
    fn rejects_malformed() {
        assert!(Value::from_json(&json!(["int", "12a"])).is_err());
        assert!(Value::from_json(&json!(["object", "x"])).is_err());
        assert!(Value::from_json(&json!("str")).is_err());
    }
}
