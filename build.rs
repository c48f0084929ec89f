//! Prepares the guide's chapters for rustdoc: each picture the Markdown links
//! (`![alt](img/name.svg)`, which GitHub and mdBook resolve beside the file) is embedded as a
//! `data:` URI, because rustdoc (and docs.rs) publish the text of a doc comment but not the
//! files it links. `src/guide.rs` includes the rewritten chapters from `OUT_DIR`.

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
        let rewritten = embed_pictures(&text, Path::new("docs"));
        let name = chapter.file_name().expect("a chapter has a file name");
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
