//! The crate's modules form no circle (design.md, "Modules import each other by path and form
//! no circle").
//!
//! Each file of `src/` is a vertex. Every `crate::…`, `super::…` or `self::…` path a file
//! names outside comments (in `use` lines and inline alike) is an edge to the file that
//! *defines* the named item: a path through a re-export (`lib.rs`, a `mod.rs`) is followed to
//! the file it re-exports from, so the crate root's convenience re-exports cannot hide a
//! circle, as they did before. Re-export lines themselves are not edges: a parent that
//! re-exports its children for users does not depend on them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path inside the crate, `["module", "scope"]` for `src/module/scope.rs`.
type ModulePath = Vec<String>;

/// The crate's sources, by module path.
struct Crate {
    files: BTreeMap<ModulePath, String>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut files = BTreeMap::new();
        let mut pending = vec![src.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let relative = path.strip_prefix(src).unwrap().with_extension("");
                    let mut module: ModulePath = relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                        module.pop();
                    }
                    files.insert(module, std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        Crate { files }
    }

    fn display(module: &ModulePath) -> String {
        if module.is_empty() {
            "lib.rs".into()
        } else {
            module.join("/") + ".rs"
        }
    }

    /// The file that defines what `path` (absolute, from the crate root) names.
    fn resolve(&self, path: &[String], depth: usize) -> Option<ModulePath> {
        // The longest prefix of the path that is a module.
        let mut module: ModulePath = Vec::new();
        let mut rest = path;
        while let Some((first, tail)) = rest.split_first() {
            let mut candidate = module.clone();
            candidate.push(first.clone());
            if !self.files.contains_key(&candidate) {
                break;
            }
            module = candidate;
            rest = tail;
        }
        // The next segment names an item of that module: defined there, unless the module
        // re-exports it from elsewhere.
        if let Some(item) = rest.first().filter(|_| depth < 16) {
            let source = &self.files[&module];
            for reexport in statements(source).filter(|s| s.public) {
                for target in reexport.paths {
                    if target.last() == Some(item) {
                        let absolute = absolute(&module, &target)?;
                        return self.resolve(&absolute, depth + 1);
                    }
                }
            }
        }
        Some(module)
    }

    /// Edges from each file to the files defining what it names.
    fn edges(&self) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
        let mut edges = BTreeMap::new();
        for (module, source) in &self.files {
            let mut targets = BTreeSet::new();
            for statement in statements(source).filter(|s| !s.public) {
                for path in statement.paths {
                    let Some(absolute) = absolute(module, &path) else {
                        continue; // a path into another crate
                    };
                    if let Some(target) = self.resolve(&absolute, 0) {
                        targets.insert(target);
                    }
                }
            }
            for path in inline_paths(source) {
                if let Some(target) = absolute(module, &path).and_then(|a| self.resolve(&a, 0)) {
                    targets.insert(target);
                }
            }
            // A file reaching into its own module, or into an ancestor that merely declares
            // it, is not a dependency between files.
            targets.retain(|t| t != module && !(module.starts_with(t) && self.declares_only(t)));
            edges.insert(module.clone(), targets);
        }
        edges
    }

    /// Whether the file of `module` only declares and re-exports (defines no item of its
    /// own that a child could use); `lib.rs` and most `mod.rs` files do.
    fn declares_only(&self, module: &ModulePath) -> bool {
        let code = code_lines(&self.files[module])
            .collect::<Vec<_>>()
            .join("\n");
        ["fn ", "struct ", "enum ", "trait ", "const ", "type "]
            .iter()
            .all(|keyword| {
                !code
                    .lines()
                    .any(|l| l.trim_start().starts_with("pub") && l.contains(keyword))
            })
    }
}

/// A `use` statement: its expanded paths and whether it is a re-export (`pub use`).
struct Use {
    public: bool,
    paths: Vec<Vec<String>>,
}

/// The lines that are code: whole-line comments (docs included) dropped, and trailing `// `
/// comments cut off.
fn code_lines(source: &str) -> impl Iterator<Item = &str> {
    source.lines().filter_map(|line| {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            return None;
        }
        Some(match line.find("// ") {
            Some(at) => &line[..at],
            None => line,
        })
    })
}

/// Every `use` statement of the file (one starts a line), braces expanded.
fn statements(source: &str) -> impl Iterator<Item = Use> {
    let lines: Vec<&str> = code_lines(source).collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let (public, body) = match ["pub use ", "pub(crate) use ", "use "]
            .iter()
            .find(|prefix| line.starts_with(*prefix))
        {
            Some(prefix) => (prefix.starts_with("pub"), &line[prefix.len()..]),
            None => {
                i += 1;
                continue;
            }
        };
        // The statement runs to its `;`, over as many lines as it takes.
        let mut text = body.to_string();
        while !text.contains(';') && i + 1 < lines.len() {
            i += 1;
            text.push(' ');
            text.push_str(lines[i]);
        }
        let text = without_renames(text.split(';').next().unwrap_or_default());
        // A line of a string literal may start with "use ": only a path is a statement.
        let is_path = text
            .chars()
            .all(|c| c.is_alphanumeric() || "_:{},*".contains(c));
        if is_path && text.matches('{').count() == text.matches('}').count() {
            found.push(Use {
                public,
                paths: expand(&text),
            });
        }
        i += 1;
    }
    found.into_iter()
}

/// The statement's text with `x as y` written `x`, and no white space.
fn without_renames(text: &str) -> String {
    let mut out = String::new();
    let mut tokens = text.split_whitespace();
    while let Some(token) = tokens.next() {
        if token == "as" {
            // Drop the new name, keep the punctuation after it.
            let renamed = tokens.next().unwrap_or_default();
            out.push_str(renamed.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
        } else {
            out.push_str(token);
        }
    }
    out
}

/// `a::{b, c::{d, e}}` as `[a, b]`, `[a, c, d]`, `[a, c, e]` (`self` in a group is its
/// prefix).
fn expand(body: &str) -> Vec<Vec<String>> {
    let split_top = |s: &str| -> Vec<String> {
        let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
        for c in s.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        if !current.is_empty() {
            parts.push(current);
        }
        parts
    };
    match body.find('{') {
        None => vec![
            body.split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ],
        Some(open) => {
            let prefix: Vec<String> = body[..open]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let inner = &body[open + 1..body.rfind('}').unwrap_or(body.len())];
            let mut paths = Vec::new();
            for part in split_top(inner) {
                for tail in expand(&part) {
                    let mut path = prefix.clone();
                    if tail != ["self"] {
                        path.extend(tail);
                    }
                    paths.push(path);
                }
            }
            paths
        }
    }
}

/// Paths written inline in code, outside `use` statements: `crate::ops::fused::linear(…)`.
fn inline_paths(source: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for line in
        code_lines(source).filter(|l| !l.trim_start().starts_with("use ") && !l.contains(" use "))
    {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let preceded = rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !preceded {
                paths.push(
                    tail[..end]
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                );
            }
            rest = &tail[end.max(1)..];
        }
    }
    paths
}

/// A path as written in `module`, made absolute; `None` for a path into another crate.
fn absolute(module: &ModulePath, path: &[String]) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.clone(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        // A path relative to the module: a child declared here (`pub use file::X` in a mod.rs).
        _ => {
            let mut child = module.clone();
            child.push(first.clone());
            return Some(child.into_iter().chain(rest.iter().cloned()).collect());
        }
    };
    let mut rest = rest;
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    Some(base.into_iter().chain(rest.iter().cloned()).collect())
}

/// Every circle of the graph, each as the files around it.
fn circles(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<ModulePath>> {
    // Depth-first search with colours; each back edge closes a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        Unseen,
        OnPath,
        Done,
    }
    fn visit(
        at: &ModulePath,
        edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        colour: &mut BTreeMap<ModulePath, Colour>,
        path: &mut Vec<ModulePath>,
        found: &mut Vec<Vec<ModulePath>>,
    ) {
        colour.insert(at.clone(), Colour::OnPath);
        path.push(at.clone());
        for next in edges.get(at).into_iter().flatten() {
            match colour.get(next).copied().unwrap_or(Colour::Unseen) {
                Colour::OnPath => {
                    let start = path.iter().position(|m| m == next).unwrap();
                    let mut circle = path[start..].to_vec();
                    circle.push(next.clone());
                    found.push(circle);
                }
                Colour::Unseen => visit(next, edges, colour, path, found),
                Colour::Done => {}
            }
        }
        path.pop();
        colour.insert(at.clone(), Colour::Done);
    }
    let (mut colour, mut found) = (BTreeMap::new(), Vec::new());
    for module in edges.keys() {
        if colour.get(module).copied().unwrap_or(Colour::Unseen) == Colour::Unseen {
            visit(module, edges, &mut colour, &mut Vec::new(), &mut found);
        }
    }
    found
}

fn describe(circle: &[ModulePath]) -> String {
    circle
        .iter()
        .map(Crate::display)
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn the_crate_has_no_import_circle() {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let edges = krate.edges();
    let total: usize = edges.values().map(BTreeSet::len).sum();
    // A parser that found nothing would find no circle either.
    assert!(
        total > 60,
        "only {total} edges found: is the parser reading the files?"
    );
    let tape = vec!["tape".to_string()];
    let tensor = vec!["tensor".to_string()];
    assert!(
        edges[&tensor].contains(&tape),
        "tensor.rs builds on tape.rs"
    );
    let circles = circles(&edges);
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles
            .iter()
            .map(|c| describe(c))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn error_rs_imports_nothing_from_the_crate() {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let edges = krate.edges();
    assert_eq!(edges[&vec!["error".to_string()]], BTreeSet::new());
}

/// The checker itself, on a small crate with the kind of circle it exists to find: two
/// modules that reach each other through the crate root's re-exports.
#[test]
fn a_circle_through_root_reexports_is_found() {
    let files = [
        (
            vec![],
            "mod a;\nmod b;\npub use a::Alpha;\npub use b::{Beta, helper};\n",
        ),
        (
            vec!["a"],
            "use crate::Beta;\n/// Links to [`crate::b`] are comments.\npub struct Alpha(Beta);\n",
        ),
        (
            vec!["b"],
            "pub struct Beta;\npub fn helper() -> usize { crate::Alpha::size() }\n",
        ),
        (vec!["c"], "use super::a::Alpha;\nuse std::fmt;\n"),
    ];
    let krate = Crate {
        files: files
            .into_iter()
            .map(|(m, s)| (m.into_iter().map(String::from).collect(), s.to_string()))
            .collect(),
    };
    let edges = krate.edges();
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    assert_eq!(edges[&a], BTreeSet::from([b.clone()]));
    assert_eq!(edges[&b], BTreeSet::from([a.clone()]));
    assert_eq!(edges[&vec!["c".to_string()]], BTreeSet::from([a.clone()]));
    assert_eq!(edges[&vec![]], BTreeSet::new(), "re-exports are not edges");
    let found = circles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(describe(&found[0]), "a.rs -> b.rs -> a.rs");
}

/// The files of `src/` under `folder` (`"nn"` for `src/nn/…`).
fn under(module: &ModulePath, folder: &str) -> bool {
    module.first().is_some_and(|first| first == folder)
}

/// The edges that break the house's rules (design.md, invariant 13), each as `from -> to`:
/// a layer (`nn/`) that names a kernel, the fusion switch or a checkpoint type (the PyTorch
/// mapping is derived in `checkpoint/`), and a kernel that reaches above the loops (anything
/// but other kernels and the value types below them). Ops naming the fusion switch break
/// nothing: ops choose.
fn broken_rules(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<String> {
    let fusion: ModulePath = vec!["ops".into(), "fusion".into()];
    let below_kernels = ["error", "float", "shape"];
    let mut broken = Vec::new();
    for (from, targets) in edges {
        for to in targets {
            let wrong = if under(from, "nn") {
                under(to, "kernels") || *to == fusion || under(to, "checkpoint")
            } else if under(from, "kernels") {
                !under(to, "kernels") && !below_kernels.iter().any(|b| to == &vec![b.to_string()])
            } else {
                false
            };
            if wrong {
                broken.push(format!(
                    "{} -> {}",
                    Crate::display(from),
                    Crate::display(to)
                ));
            }
        }
    }
    broken
}

/// The files whose code (comments aside) holds the keyword `unsafe`.
fn with_unsafe<'a>(krate: &'a Crate, folder: &str) -> Vec<&'a ModulePath> {
    krate
        .files
        .iter()
        .filter(|(module, source)| {
            under(module, folder)
                && code_lines(source).any(|line| {
                    line.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|word| word == "unsafe")
                })
        })
        .map(|(module, _)| module)
        .collect()
}

#[test]
fn layers_name_no_kernel_and_kernels_reach_no_higher_than_the_values_they_compute_on() {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let broken = broken_rules(&krate.edges());
    assert!(
        broken.is_empty(),
        "imports against the rules:\n{}",
        broken.join("\n")
    );
}

#[test]
fn ops_hold_no_unsafe_code() {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let found = with_unsafe(&krate, "ops");
    assert!(found.is_empty(), "unsafe in ops: {found:?}");
    // The check reads the files it should: the kernels do hold some.
    assert!(!with_unsafe(&krate, "kernels").is_empty());
}

/// The rules' checks themselves, on a small crate that breaks each rule once.
#[test]
fn each_broken_rule_is_found() {
    let files = [
        (
            vec![],
            "mod nn;\nmod ops;\nmod kernels;\nmod tensor;\nmod float;\n",
        ),
        (vec!["float"], "pub trait Float {}\n"),
        (vec!["tensor"], "pub struct Tensor;\n"),
        (vec!["kernels"], "pub mod gemm;\n"),
        (
            vec!["kernels", "gemm"],
            "use crate::float::Float;\nuse crate::tensor::Tensor;\n",
        ),
        (vec!["ops"], "pub mod fusion;\npub mod conv;\n"),
        (vec!["ops", "fusion"], "pub enum Fusion { On }\n"),
        (
            vec!["ops", "conv"],
            "use crate::ops::fusion::Fusion;\n// unsafe in a comment is not code\nfn f() { unsafe { g() } }\n",
        ),
        (vec!["nn"], "pub mod dense;\n"),
        (
            vec!["nn", "dense"],
            "use crate::ops::fusion::Fusion;\nuse crate::checkpoint::TorchMapping;\nfn f() { crate::kernels::gemm::g() }\n",
        ),
        (vec!["checkpoint"], "pub struct TorchMapping;\n"),
    ];
    let krate = Crate {
        files: files
            .into_iter()
            .map(|(m, s)| (m.into_iter().map(String::from).collect(), s.to_string()))
            .collect(),
    };
    assert_eq!(
        broken_rules(&krate.edges()),
        [
            "kernels/gemm.rs -> tensor.rs",
            "nn/dense.rs -> checkpoint.rs",
            "nn/dense.rs -> kernels/gemm.rs",
            "nn/dense.rs -> ops/fusion.rs",
        ]
    );
    let found: Vec<String> = with_unsafe(&krate, "ops")
        .into_iter()
        .map(Crate::display)
        .collect();
    assert_eq!(found, ["ops/conv.rs"]);
}
