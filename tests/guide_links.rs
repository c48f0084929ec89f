//! The guide is read in three places, and every link in it must work in each:
//!
//! * as files, on the repository's page and in the mdBook build (`mdbook serve docs`): a link
//!   is a file beside the chapter (another chapter, a picture) or a web address, and an item
//!   of the crate is its page on docs.rs, the crate's declared documentation;
//! * in rustdoc (`tapegrad::guide`), where the build script turns the chapter and docs.rs
//!   links into intra-doc links with the item's kind, which `cargo doc -D warnings` (in CI)
//!   resolves: an item renamed, removed or of another kind fails the documentation build.
//!
//! These tests check the first place, and that the build script left nothing for rustdoc to
//! fetch from the web. They also check that the book's summary, the README and `src/guide.rs`
//! list the same chapters.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the crate's items are documented (`documentation` in Cargo.toml).
const DOCS_RS: &str = "https://docs.rs/tapegrad/latest/tapegrad/";

/// The Markdown files a reader follows links in: every file in `docs/`, and the README.
fn markdown_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    files.sort();
    files.push(root().join("README.md"));
    files
}

/// A link of a Markdown file: its line number and its target.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    target: String,
}

/// The lines of `text` outside code blocks, numbered from 1, with inline code blanked out
/// except inside a link's text (`` [`Tape`] `` stays a link).
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut in_code = false;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            lines.push((index + 1, without_code_spans(line)));
        }
    }
    lines
}

/// `line` with each inline code span blanked, except a link's whole text (`` [`Tape`] ``).
fn without_code_spans(line: &str) -> String {
    let parts: Vec<&str> = line.split('`').collect();
    let mut out = String::with_capacity(line.len());
    for (index, part) in parts.iter().enumerate() {
        let in_code = index % 2 == 1 && index + 1 < parts.len();
        let link_text =
            in_code && parts[index - 1].ends_with('[') && parts[index + 1].starts_with(']');
        if in_code {
            out.push('`');
            out.push_str(if link_text { part } else { "" });
            out.push('`');
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Every link target: inline `[text](target)` and `![alt](target)`, and reference
/// definitions `[label]: target` at the start of a line.
fn links(text: &str) -> Vec<Link> {
    let mut found = Vec::new();
    for (line, prose) in prose_lines(text) {
        if let Some((_, target)) = definition(&prose) {
            found.push(Link {
                line,
                target: target.to_string(),
            });
            continue;
        }
        for (at, _) in prose.match_indices("](") {
            let rest = &prose[at + 2..];
            let target = rest.split([')', ' ']).next().unwrap_or_default();
            found.push(Link {
                line,
                target: target.to_string(),
            });
        }
    }
    found
}

/// A reference definition's label and target: a whole line `[label]: target`.
fn definition(line: &str) -> Option<(&str, &str)> {
    let (label, target) = line.strip_prefix('[')?.split_once("]: ")?;
    (!label.contains(']') && !target.is_empty() && !target.contains(char::is_whitespace))
        .then_some((label, target))
}

/// The reference links (`` [`Tape`] `` with no target after it) whose label has no
/// definition in the file: rustdoc would resolve them as intra-doc links, but the book and
/// the repository's page show them as bracketed text.
fn undefined_references(text: &str) -> Vec<(usize, String)> {
    let lines = prose_lines(text);
    let defined: BTreeSet<&str> = lines
        .iter()
        .filter_map(|(_, line)| definition(line))
        .map(|(label, _)| label)
        .collect();
    let mut undefined = Vec::new();
    for (line, prose) in &lines {
        for (at, _) in prose.match_indices("[`") {
            let Some(len) = prose[at + 1..].find("`]") else {
                continue;
            };
            let label = &prose[at + 1..at + 1 + len + 1];
            let after = &prose[at + 1 + len + 2..];
            let is_reference =
                !after.starts_with('(') && !after.starts_with('[') && !after.starts_with(':');
            if is_reference && !defined.contains(label) {
                undefined.push((*line, label.to_string()));
            }
        }
    }
    undefined
}

/// Why `target`, linked from a file in `dir`, would not work as a file or a web page; `None`
/// when it works.
fn broken(target: &str, dir: &Path) -> Option<String> {
    if let Some(page) = target.strip_prefix(DOCS_RS) {
        return docs_rs_page_problem(page);
    }
    if target.starts_with("https://") || target.starts_with("http://") {
        return None;
    }
    let file = target.split('#').next().unwrap_or_default();
    if file.is_empty() {
        return None;
    }
    let path = dir.join(file);
    if !path.exists() {
        if file.contains("::") || !file.contains(['.', '/']) {
            return Some(format!(
                "`{target}` is a rustdoc path: the book and the repository's page cannot follow \
                 it; link the item's page at {DOCS_RS}"
            ));
        }
        return Some(format!("`{target}`: there is no {}", path.display()));
    }
    let docs = root().join("docs").canonicalize().unwrap();
    if dir.starts_with(root().join("docs")) && !path.canonicalize().unwrap().starts_with(&docs) {
        return Some(format!(
            "`{target}` is outside docs/: mdBook publishes only what is inside it"
        ));
    }
    None
}

/// What is wrong with a docs.rs page of the crate, as the build script reads it
/// (`module/kind.Name.html`, then `#method.name`, `#variant.Name` or `#structfield.name`).
fn docs_rs_page_problem(page: &str) -> Option<String> {
    let (file, member) = page.split_once('#').unwrap_or((page, ""));
    let name = file.rsplit('/').next().unwrap_or_default();
    let known_page = name == "index.html"
        || name.strip_suffix(".html").is_some_and(|stem| {
            stem.split_once('.').is_some_and(|(kind, item)| {
                ["struct", "enum", "trait", "fn", "type", "macro", "constant"].contains(&kind)
                    && !item.is_empty()
            })
        });
    let known_member = member.is_empty()
        || ["method.", "tymethod.", "variant.", "structfield."]
            .iter()
            .any(|prefix| member.strip_prefix(prefix).is_some_and(|m| !m.is_empty()));
    (!known_page || !known_member)
        .then(|| format!("{DOCS_RS}{page} is not a rustdoc item page the build script can map"))
}

#[test]
fn every_link_works_as_a_file_in_the_book_and_on_the_repository_page() {
    let mut problems = Vec::new();
    for file in markdown_files() {
        let text = fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        let dir = file.parent().unwrap();
        for link in links(&text) {
            if let Some(problem) = broken(&link.target, dir) {
                problems.push(format!("{name}:{}: {problem}", link.line));
            }
        }
        for (line, label) in undefined_references(&text) {
            problems.push(format!(
                "{name}:{line}: [{label}] has no definition `[{label}]: {DOCS_RS}…` in the file"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The build script's output, which rustdoc includes: no chapter still links docs.rs (every
/// such link became an intra-doc link that `cargo doc` checks) nor a chapter file.
#[test]
fn rustdoc_reads_the_chapters_with_local_links_only() {
    let out = Path::new(env!("OUT_DIR")).join("guide");
    let mut checked = 0;
    for entry in fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let on_disk = fs::read_to_string(&path).unwrap();
        let for_rustdoc = fs::read_to_string(out.join(&name)).unwrap();
        let from_docs_rs = on_disk.matches(DOCS_RS).count();
        assert!(
            !for_rustdoc.contains(DOCS_RS),
            "{name}: a docs.rs link was left for rustdoc"
        );
        for link in links(&for_rustdoc) {
            assert!(
                !link.target.ends_with(".md"),
                "{name}:{}: a chapter link `{}` was left for rustdoc",
                link.line,
                link.target
            );
        }
        assert!(
            for_rustdoc.matches("@crate::").count() >= from_docs_rs,
            "{name}: fewer intra-doc links than docs.rs links"
        );
        checked += from_docs_rs;
    }
    assert!(checked >= 40, "only {checked} docs.rs links were checked");
}

/// The chapters, by file name: `00-start-here.md`, … (not the summary, the page on running
/// the code, nor `performance.md`, which is not teaching material).
fn chapter_files() -> BTreeSet<String> {
    fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".md") && name.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

/// The `.md` targets of the links in `text`, relative to `prefix`.
fn linked_chapters(text: &str, prefix: &str) -> BTreeSet<String> {
    links(text)
        .into_iter()
        .filter_map(|link| link.target.strip_prefix(prefix).map(String::from))
        .filter(|target| target.ends_with(".md"))
        .collect()
}

#[test]
fn the_book_the_readme_and_rustdoc_list_every_chapter_and_only_chapters() {
    let chapters = chapter_files();
    assert!(chapters.len() >= 17, "{chapters:?}");

    let summary = fs::read_to_string(root().join("docs/SUMMARY.md")).unwrap();
    let mut in_book = linked_chapters(&summary, "");
    assert!(
        in_book.remove("running-the-code.md"),
        "the summary lists the page on running the code"
    );
    assert_eq!(in_book, chapters, "docs/SUMMARY.md");

    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let guide_list = readme
        .split("## Learning from it")
        .nth(1)
        .and_then(|section| section.split("\n## ").next())
        .expect("the README has a section on the guide");
    assert_eq!(
        linked_chapters(guide_list, "docs/"),
        chapters,
        "the README's guide"
    );

    let guide_rs = fs::read_to_string(root().join("src/guide.rs")).unwrap();
    let included: BTreeSet<String> = guide_rs
        .match_indices("/guide/")
        .map(|(at, _)| {
            let rest = &guide_rs[at + "/guide/".len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect();
    assert_eq!(included, chapters, "the chapters src/guide.rs includes");
}

#[test]
fn the_link_scanners_see_what_they_should() {
    let text = "See [`Tape`] and [chapter 6](06-batchnorm.md), `[not](a link)`.\n\
                ```rust\nlet a = [x](y);\n```\n\
                ![a picture](img/p.svg) [`Scope`]\n\
                [`Tape`]: https://docs.rs/tapegrad/latest/tapegrad/struct.Tape.html\n";
    let targets: Vec<String> = links(text).into_iter().map(|l| l.target).collect();
    assert_eq!(
        targets,
        [
            "06-batchnorm.md",
            "img/p.svg",
            "https://docs.rs/tapegrad/latest/tapegrad/struct.Tape.html"
        ]
    );
    assert_eq!(undefined_references(text), [(5, "`Scope`".to_string())]);

    let docs = root().join("docs");
    assert!(broken("06-batchnorm.md", &docs).is_none());
    assert!(broken("img/bn_eval_tape.svg", &docs).is_none());
    assert!(
        broken("crate::Tape", &docs)
            .unwrap()
            .contains("rustdoc path")
    );
    assert!(broken("99-missing.md", &docs).unwrap().contains("no "));
    assert!(
        broken("../README.md", &docs)
            .unwrap()
            .contains("outside docs/")
    );
    assert!(broken(&format!("{DOCS_RS}replicas/struct.InProcess.html"), &docs).is_none());
    assert!(broken(&format!("{DOCS_RS}struct.Tape.html#method.leaf"), &docs).is_none());
    assert!(broken(&format!("{DOCS_RS}Tape.html"), &docs).is_some());
    assert!(broken(&format!("{DOCS_RS}struct.Tape.html#impl-Debug"), &docs).is_some());
}
