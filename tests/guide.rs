//! The guide cannot drift from the code, nor get ahead of itself:
//!
//! * the primitive table of chapter 2 lists exactly the ops the code records (every name
//!   passed to the tape, all of them by `src/ops/`);
//! * reading the chapters in order, no chapter imports a tapegrad item that neither it nor
//!   an earlier chapter names in its prose: each API is taught where it is first used.
//!   (Chapter 0 is a preview of the whole crate and is not counted, either way.)

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The chapters in reading order, as (file name, text).
fn chapters() -> Vec<(String, String)> {
    let mut files: Vec<_> = fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".md") && name.as_bytes()[0].is_ascii_digit())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|name| {
            let text = fs::read_to_string(root().join("docs").join(&name)).unwrap();
            (name, text)
        })
        .collect()
}

/// The op names a source file hands to the tape: the string literal after each of the
/// call or definition forms that name an op.
fn recorded_ops(source: &str) -> Vec<String> {
    const MARKERS: [&str; 9] = [
        "record(",
        "scale(",
        "record_rules(",
        "record_one(",
        "unary(",
        "choose(",
        "compare(",
        "&str = ",
        "=> ",
    ];
    let mut ops = Vec::new();
    for marker in MARKERS {
        for (at, _) in source.match_indices(marker) {
            let rest = source[at + marker.len()..].trim_start();
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let name = &literal[..literal.find('"').unwrap_or(0)];
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                ops.push(name.to_string());
            }
        }
    }
    ops
}

#[test]
fn the_primitive_table_lists_exactly_the_recorded_ops() {
    let mut in_code = BTreeSet::new();
    // Only ops record nodes (design.md, invariant 13).
    for entry in fs::read_dir(root().join("src/ops")).unwrap() {
        let source = fs::read_to_string(entry.unwrap().path()).unwrap();
        in_code.extend(recorded_ops(&source));
    }
    let chapter = fs::read_to_string(root().join("docs/02-build-the-engine.md")).unwrap();
    let table = chapter
        .split("## The primitives")
        .nth(1)
        .expect("chapter 2 has the primitive table");
    let in_table: BTreeSet<String> = table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            first_cell
                .split(',')
                .map(|name| name.trim().trim_matches('`').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let missing: Vec<_> = in_code.difference(&in_table).collect();
    let stale: Vec<_> = in_table.difference(&in_code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "chapter 2's primitive table is out of date: recorded but not listed {missing:?}; \
         listed but not recorded {stale:?}"
    );
    assert!(
        in_code.len() >= 40,
        "the scan found too few ops: {in_code:?}"
    );
}

/// The code blocks of a chapter (hidden `# ` lines included), and its prose.
fn split_code_and_prose(text: &str) -> (String, String) {
    let (mut code, mut prose, mut in_code) = (String::new(), String::new(), false);
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let target = if in_code { &mut code } else { &mut prose };
        target.push_str(line.strip_prefix("# ").unwrap_or(line));
        target.push('\n');
    }
    (code, prose)
}

/// The items a chapter's Rust code imports from tapegrad: `use tapegrad::{a, b::c};` gives
/// `a` and `c`.
fn imported_items(code: &str) -> BTreeSet<String> {
    let mut items = BTreeSet::new();
    for (at, _) in code.match_indices("use tapegrad::") {
        let statement = &code[at + "use tapegrad::".len()..];
        let statement = &statement[..statement.find(';').unwrap_or(statement.len())];
        for item in statement.replace(['{', '}', '\n'], ",").split(',') {
            let name = item.trim().split(" as ").next().unwrap_or_default();
            let name = name.rsplit("::").next().unwrap_or_default().trim();
            if !name.is_empty() && name != "self" && name != "*" {
                items.insert(name.to_string());
            }
        }
    }
    items
}

/// Method names a chapter may call without naming them: the standard library's and
/// ndarray's common ones, which some of tapegrad's types share.
const COMMON_METHODS: [&str; 41] = [
    "abs",
    "all",
    "apply",
    "as_slice",
    "cast",
    "clone",
    "collect",
    "contains",
    "default",
    "entry",
    "exp",
    "fill",
    "first",
    "from",
    "get",
    "get_mut",
    "init",
    "insert",
    "into_iter",
    "is_empty",
    "item",
    "iter",
    "keys",
    "last",
    "len",
    "ln",
    "map",
    "max",
    "mean",
    "min",
    "name",
    "new",
    "paths",
    "push",
    "read",
    "remove",
    "run",
    "set",
    "shape",
    "sqrt",
    "sum",
];

#[test]
fn every_item_a_chapter_imports_or_calls_was_named_in_its_prose_or_before() {
    let crate_fns = public_fns(&root().join("src"));
    let mut taught = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, text) in chapters()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("00"))
    {
        let (code, prose) = split_code_and_prose(&text);
        taught.extend(named_in_prose(&prose));
        let used = imported_items(&code)
            .into_iter()
            .chain(called_methods(&code, &crate_fns));
        for item in used {
            if !taught.contains(&item) {
                problems.push(format!(
                    "{name} uses `{item}` before any chapter's prose names it in backticks"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The identifiers inside the prose's backticks: `` `Tape::leaf` `` names `Tape` and `leaf`.
/// A word of the running text (`reads`) names nothing.
fn named_in_prose(prose: &str) -> BTreeSet<String> {
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(identifiers)
        .collect()
}

fn identifiers(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(|c: char| c.is_alphabetic() || c == '_'))
        .map(String::from)
        .collect()
}

/// The methods of tapegrad a chapter's code calls: each `.name(` whose `name` the crate
/// defines with `pub fn`, less the common names and the functions the chapter defines.
fn called_methods(code: &str, crate_fns: &BTreeSet<String>) -> BTreeSet<String> {
    let own: BTreeSet<String> = code
        .match_indices("fn ")
        .filter_map(|(at, _)| identifiers(&code[at + 3..]).into_iter().next())
        .collect();
    code.match_indices('.')
        .filter_map(|(at, _)| {
            let rest = &code[at + 1..];
            let name = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()?;
            rest[name.len()..]
                .starts_with('(')
                .then(|| name.to_string())
        })
        .filter(|name| crate_fns.contains(name))
        .filter(|name| !COMMON_METHODS.contains(&name.as_str()) && !own.contains(name))
        .collect()
}

/// Every `pub fn` name in the Rust files under `dir`.
fn public_fns(dir: &std::path::Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            names.extend(public_fns(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = fs::read_to_string(&path).unwrap();
            for (at, _) in source.match_indices("pub fn ") {
                if let Some(name) = identifiers(&source[at + 7..]).into_iter().next() {
                    names.insert(name);
                }
            }
        }
    }
    names
}

#[test]
fn the_scanners_see_what_they_should() {
    let (code, prose) = split_code_and_prose(
        "Use `Tape`; it reads.\n```rust\nuse tapegrad::{Tape, nn::{Dense, Mlp as M}};\nlet y = x.sum_all().clone();\nfn own() {}\nx.own();\n```\n",
    );
    assert_eq!(
        imported_items(&code),
        ["Dense", "Mlp", "Tape"].map(String::from).into()
    );
    assert!(prose.contains("Tape") && !prose.contains("Dense"));
    let named = named_in_prose(&prose);
    assert!(named.contains("Tape") && !named.contains("reads") && !named.contains("it"));
    let crate_fns: BTreeSet<String> = ["sum_all", "clone", "own"].map(String::from).into();
    assert_eq!(
        called_methods(&code, &crate_fns),
        ["sum_all".to_string()].into()
    );
    let ops =
        recorded_ops("record_one(\"sum\", x); self.unary(\n \"powi\", f); let s = \"Not an op\";");
    assert_eq!(ops, ["sum", "powi"]);
}

/// Chapter 0's Python excerpts are quoted from `scripts/start_here_peers.py`, which runs them
/// and asserts what the chapter says: every line of every excerpt stands in the script, in
/// the excerpt's order (the script interleaves its assertions and indents the code into
/// functions).
#[test]
fn chapter_0s_python_is_the_code_its_script_runs() {
    let chapter = fs::read_to_string(root().join("docs/00-start-here.md")).unwrap();
    let script = fs::read_to_string(root().join("scripts/start_here_peers.py")).unwrap();
    let script_lines: Vec<&str> = script.lines().map(str::trim).collect();
    let excerpts: Vec<&str> = chapter
        .split("```python\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default())
        .collect();
    assert!(
        excerpts.len() >= 4,
        "the chapter's excerpts: {}",
        excerpts.len()
    );
    for excerpt in excerpts {
        let mut from = 0;
        for line in excerpt.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let found = script_lines[from..].iter().position(|l| *l == line);
            let Some(offset) = found else {
                panic!("not in scripts/start_here_peers.py (after line {from}): {line}");
            };
            from += offset + 1;
        }
    }
}
