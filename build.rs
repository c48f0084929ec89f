//! Prepares the guide's chapters for rustdoc. The Markdown in `docs/` is written for the
//! readers who see it as files, in the mdBook build and on the repository's page: pictures are
//! `![alt](img/name.svg)` beside the chapter, another chapter is `[text](06-batchnorm.md)`,
//! and an item of the crate is its page on docs.rs, the crate's declared documentation. For
//! rustdoc, each picture is embedded as a `data:` URI (rustdoc and docs.rs publish the text of
//! a doc comment, not the files it links), and each link to a chapter or to docs.rs becomes an
//! intra-doc link with the item's kind (`struct@crate::Tape`), so that `cargo doc` checks that
//! every item a chapter links exists and is of that kind. `src/guide.rs` includes the
//! rewritten chapters from `OUT_DIR`.

use std::fs;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=docs");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("guide");
    fs::create_dir_all(&out).expect("OUT_DIR is writable");
    let mut chapters: Vec<_> = fs::read_dir("docs")
        .expect("the guide is in docs/")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    chapters.sort();
    for chapter in chapters {
        let text = fs::read_to_string(&chapter).expect("chapters are UTF-8");
        let name = chapter.file_name().expect("a chapter has a file name");
        let rewritten = intra_doc_links(&embed_pictures(&text, Path::new("docs")))
            .unwrap_or_else(|e| panic!("{}: {e}", chapter.display()));
        fs::write(out.join(name), rewritten).expect("OUT_DIR is writable");
    }
}

/// `text` with every `![alt](img/….svg)` replaced by an `<img>` holding the file's bytes.
fn embed_pictures(text: &str, base: &Path) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("![") {
        let (before, from_image) = rest.split_at(start);
        out.push_str(before);
        let Some((alt, target, after)) = parse_image(from_image) else {
            out.push_str("![");
            rest = &from_image[2..];
            continue;
        };
        if target.starts_with("img/") && target.ends_with(".svg") {
            let path = base.join(target);
            let bytes = fs::read(&path)
                .unwrap_or_else(|e| panic!("{} links {target}: {e}", base.display()));
            out.push_str(&format!(
                "<img alt=\"{alt}\" src=\"data:image/svg+xml;base64,{}\">",
                base64(&bytes)
            ));
        } else {
            out.push_str(&from_image[..from_image.len() - after.len()]);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `(alt, target, rest)` of a Markdown image `![alt](target)` at the start of `s`.
fn parse_image(s: &str) -> Option<(&str, &str, &str)> {
    let s = s.strip_prefix("![")?;
    let (alt, s) = s.split_once("](")?;
    let (target, rest) = s.split_once(')')?;
    (!alt.contains('\n') && !target.contains(char::is_whitespace)).then_some((alt, target, rest))
}

/// Where the crate's items are documented: `documentation` in Cargo.toml.
const DOCS_RS: &str = "https://docs.rs/tapegrad/latest/tapegrad/";

/// `text` with every link target (inline `](target)` or a definition `]: target`) that is a
/// chapter or a docs.rs page of this crate rewritten as an intra-doc link.
fn intra_doc_links(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(target_at) = ["](", "]: "]
        .into_iter()
        .filter_map(|opener| rest.find(opener).map(|at| at + opener.len()))
        .min()
    {
        out.push_str(&rest[..target_at]);
        rest = &rest[target_at..];
        let end = rest
            .find(|c: char| c == ')' || c.is_whitespace())
            .unwrap_or(rest.len());
        let target = &rest[..end];
        match intra_doc_target(target)? {
            Some(link) => out.push_str(&link),
            None => out.push_str(target),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The intra-doc link for a chapter (`06-batchnorm.md`) or a docs.rs page of the crate
/// (`replicas/struct.InProcess.html#method.new`); `None` for any other target.
fn intra_doc_target(target: &str) -> Result<Option<String>, String> {
    if let Some(chapter) = target.strip_suffix(".md") {
        if chapter.contains('/') || !chapter.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok(None);
        }
        return Ok(Some(format!(
            "mod@crate::guide::ch{}",
            chapter.replace('-', "_")
        )));
    }
    let Some(page) = target.strip_prefix(DOCS_RS) else {
        return Ok(None);
    };
    let (page, member) = page.split_once('#').unwrap_or((page, ""));
    let mut path: Vec<&str> = page.split('/').collect();
    let file = path.pop().unwrap_or_default();
    let kind = if file == "index.html" {
        "mod"
    } else {
        let (kind, name) = file
            .strip_suffix(".html")
            .and_then(|stem| stem.split_once('.'))
            .ok_or_else(|| format!("{target} is not a rustdoc page"))?;
        path.push(name);
        match kind {
            "struct" | "enum" | "trait" | "fn" | "type" | "macro" | "mod" => kind,
            "constant" => "const",
            _ => return Err(format!("{target}: no intra-doc kind for `{kind}` pages")),
        }
    };
    let path = path.join("::");
    let link = match member.split_once('.') {
        None if member.is_empty() => format!("{kind}@crate::{path}"),
        Some(("method" | "tymethod", name)) => format!("method@crate::{path}::{name}"),
        Some(("variant", name)) => format!("variant@crate::{path}::{name}"),
        Some(("structfield", name)) => format!("field@crate::{path}::{name}"),
        _ => return Err(format!("{target}: no intra-doc link for `#{member}`")),
    };
    Ok(Some(link))
}

/// Standard base64 with padding (RFC 4648), for the few kilobytes of a picture.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
