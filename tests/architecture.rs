//! The shape of the library stays true: no import cycle between its files, nor between the
//! modules of any one folder (`crate::engine` and `crate::score` at the top, `score::stats`
//! and `score::failure` inside `score`, and so on).
//!
//! The module tree is read from `src/lib.rs` by following `mod` declarations (test-only ones
//! left out). An arrow is every `crate::` and `super::` path a file names outside its tests,
//! `use` and `pub use` included; it points at the deepest module file the path names. A
//! module's paths into its own submodules are not arrows (it holds them; they may use what it
//! defines). On a failure the test prints each cycle with the arrows that make it and where
//! they are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module of the crate that lives in its own file: its path (`["engine", "onnx"]`) and file.
struct ModFile {
    path: Vec<String>,
    file: PathBuf,
}

/// The crate's module files, from `src/lib.rs` down through `mod x;` declarations.
fn module_files(src: &Path) -> Vec<ModFile> {
    let mut out = Vec::new();
    let mut todo = vec![(Vec::new(), src.join("lib.rs"))];
    while let Some((path, file)) = todo.pop() {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Children of `a.rs` or `a/mod.rs` live in `a/`; of `lib.rs` in `src/`.
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "mod.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        for item in &parsed.items {
            let syn::Item::Mod(m) = item else { continue };
            if m.content.is_some() || is_test_only(&m.attrs) {
                continue;
            }
            let name = m.ident.to_string();
            let explicit = m.attrs.iter().find_map(|a| match &a.meta {
                syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            });
            let child = match explicit {
                Some(rel) => file.parent().unwrap().join(rel),
                None if dir.join(format!("{name}.rs")).is_file() => dir.join(format!("{name}.rs")),
                None => dir.join(&name).join("mod.rs"),
            };
            let mut child_path = path.clone();
            child_path.push(name);
            todo.push((child_path, child));
        }
        out.push(ModFile { path, file });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `#[cfg(test)]` (alone): code that only the unit tests compile.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

/// Every `crate::`/`super::` path of one file, made absolute (outside test-only code).
struct Paths<'a> {
    module: &'a [String],
    found: Vec<(Vec<String>, usize)>,
}

impl Paths<'_> {
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let mut base: Vec<String> = match segments.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") => self.module.to_vec(),
            _ => return None,
        };
        let mut rest = &segments[1..];
        if segments[0] == "super" {
            base.pop();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        base.extend(rest.iter().filter(|s| *s != "self").cloned());
        Some(base)
    }

    fn record(&mut self, segments: Vec<String>, line: usize) {
        if let Some(path) = self.absolute(&segments) {
            self.found.push((path, line));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                full.push(n.ident.to_string());
                self.record(full, n.ident.span().start().line);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.record(full, r.ident.span().start().line);
            }
            syn::UseTree::Glob(g) => {
                self.record(prefix.clone(), g.star_token.spans[0].start().line);
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = path
            .segments
            .first()
            .map_or(0, |s| s.ident.span().start().line);
        self.record(segments, line);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Paths inside macro bodies (`format!`, `matches!`) are tokens, not syntax: read the
        // `crate :: a :: b` runs out of them.
        let tokens: Vec<proc_macro2::TokenTree> = flatten(mac.tokens.clone());
        let mut i = 0;
        while i < tokens.len() {
            if let proc_macro2::TokenTree::Ident(id) = &tokens[i]
                && (id == "crate" || id == "super")
            {
                let line = id.span().start().line;
                let mut segments = vec![id.to_string()];
                let mut j = i + 1;
                while j + 2 < tokens.len() + 1 {
                    match (&tokens.get(j), &tokens.get(j + 1), &tokens.get(j + 2)) {
                        (
                            Some(proc_macro2::TokenTree::Punct(a)),
                            Some(proc_macro2::TokenTree::Punct(b)),
                            Some(proc_macro2::TokenTree::Ident(next)),
                        ) if a.as_char() == ':' && b.as_char() == ':' => {
                            segments.push(next.to_string());
                            j += 3;
                        }
                        _ => break,
                    }
                }
                self.record(segments, line);
                i = j;
            } else {
                i += 1;
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

fn flatten(stream: proc_macro2::TokenStream) -> Vec<proc_macro2::TokenTree> {
    let mut out = Vec::new();
    for tt in stream {
        match tt {
            proc_macro2::TokenTree::Group(g) => out.extend(flatten(g.stream())),
            other => out.push(other),
        }
    }
    out
}

/// One arrow between files: from, to, and where (file:line) it is named.
struct Arrow {
    from: Vec<String>,
    to: Vec<String>,
    at: String,
}

/// Every arrow between module files of the crate under `src`.
fn arrows(src: &Path) -> Vec<Arrow> {
    let files = module_files(src);
    let modules: BTreeSet<&[String]> = files.iter().map(|m| m.path.as_slice()).collect();
    let mut out = Vec::new();
    for m in &files {
        let text = std::fs::read_to_string(&m.file).unwrap();
        let parsed = syn::parse_file(&text).unwrap();
        let mut paths = Paths {
            module: &m.path,
            found: Vec::new(),
        };
        for item in &parsed.items {
            paths.visit_item(item);
        }
        for (path, line) in paths.found {
            // The deepest module file the path names.
            let target = (0..=path.len())
                .rev()
                .map(|n| &path[..n])
                .find(|p| modules.contains(p))
                .unwrap();
            // A module may use its own submodules (it holds them); the other way is an arrow.
            if !target.starts_with(&m.path) {
                let rel = m.file.strip_prefix(src.parent().unwrap()).unwrap();
                out.push(Arrow {
                    from: m.path.clone(),
                    to: target.to_vec(),
                    at: format!("{}:{line}", rel.display()),
                });
            }
        }
    }
    out
}

fn name(path: &[String]) -> String {
    match path.is_empty() {
        true => "crate".to_string(),
        false => path.join("::"),
    }
}

/// The strongly connected components of more than one node (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The cycles of a graph, each with the arrows inside it (and where they are named).
fn describe(kind: &str, arrows: &BTreeMap<(String, String), BTreeSet<String>>) -> String {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in arrows.keys() {
        edges.entry(from.clone()).or_default().insert(to.clone());
    }
    let mut report = String::new();
    for comp in cycles(&edges) {
        let members: BTreeSet<&String> = comp.iter().collect();
        writeln!(report, "{kind} cycle: {}", comp.join(" <-> ")).unwrap();
        for ((from, to), at) in arrows {
            if members.contains(from) && members.contains(to) {
                let at: Vec<&str> = at.iter().map(String::as_str).collect();
                writeln!(report, "  {from} -> {to}  ({})", at.join(", ")).unwrap();
            }
        }
    }
    report
}

/// File cycles, and module cycles at every level: an arrow from `a::b::c` to `a::d::e` is the
/// arrow `a::b -> a::d` between the modules of folder `a`.
fn shape_report(src: &Path) -> String {
    let mut files: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut modules: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for a in arrows(src) {
        files
            .entry((name(&a.from), name(&a.to)))
            .or_default()
            .insert(a.at.clone());
        let common = a.from.iter().zip(&a.to).take_while(|(x, y)| x == y).count();
        // A module and one of its own descendants are not siblings.
        if common < a.from.len() && common < a.to.len() {
            let from = name(&a.from[..=common]);
            let to = name(&a.to[..=common]);
            modules.entry((from, to)).or_default().insert(a.at);
        }
    }
    describe("file", &files) + &describe("module", &modules)
}

#[test]
fn no_import_cycles_between_files_or_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let report = shape_report(&src);
    assert!(report.is_empty(), "import cycles in src/:\n{report}");
}

/// The test finds what it is meant to find: a cycle planted in a scratch crate.
#[test]
fn a_planted_cycle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    let files = [
        ("lib.rs", "mod a;\nmod b;\n#[cfg(test)]\nmod t;\n"),
        ("a.rs", "use crate::b::c::Thing;\n"),
        ("b/mod.rs", "mod c;\npub use c::Thing;\n"),
        (
            "b/c.rs",
            "pub struct Thing;\nfn f() { let _ = crate::a::f; }\n",
        ),
        ("t.rs", "use crate::a;\n"),
    ];
    for (path, text) in files {
        std::fs::write(src.join(path), text).unwrap();
    }
    let report = shape_report(&src);
    assert!(report.contains("file cycle: a <-> b::c"), "{report}");
    assert!(report.contains("module cycle: a <-> b"), "{report}");
    assert!(report.contains("b::c -> a  (src/b/c.rs:2)"), "{report}");
}

/// For the record (`cargo test --test architecture -- --ignored --nocapture`): the arrows
/// between top-level modules.
#[test]
#[ignore]
fn print_module_graph() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in arrows(&src) {
        if let (Some(from), Some(to)) = (a.from.first(), a.to.first())
            && from != to
        {
            edges.entry(from.clone()).or_default().insert(to.clone());
        }
    }
    for (from, to) in edges {
        println!(
            "{from} -> {}",
            to.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    print!("{}", shape_report(&src));
}
