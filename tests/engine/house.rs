//! House rules of `src/` the compiler does not see, read from the source text. Layers (README,
//! Architecture): each top-level module uses only the modules of the layers below it, so there
//! is no circle and no arrow back up (every `crate::` path outside comments and string
//! literals, `use` trees included). Length: no function over 80 lines, except byte codecs that
//! say why they are one piece.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Lowest first: a module may use the modules listed before it, never one after it or beside
/// it. The rules, the query engine, what reads and writes them (store, outbound webhooks), the
/// use cases, the adapters, the wiring.
const LAYERS: &[&[&str]] = &[
    &["domain"],
    &["engine"],
    &["config", "outbound", "store"],
    &["app"],
    &["telemetry"],
    &["edge"],
    &["grpc"],
    &["web", "client"],
    &["import"],
    &["startup"],
    &["cli"],
    &["main"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The source with comments and the contents of string and character literals blanked; line
/// breaks are kept, so lines keep their numbers.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    // Skipped text leaves its line breaks.
    let skip = |out: &mut String, from: usize, to: usize| {
        out.extend(src[from..to.min(src.len())].chars().filter(|c| *c == '\n'));
    };
    while i < b.len() {
        let rest = &src[i..];
        let start = i;
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            let mut depth = 0;
            while i < b.len() {
                if src[i..].starts_with("/*") {
                    depth += 1;
                    i += 2;
                } else if src[i..].starts_with("*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            skip(&mut out, start, i);
        } else if let Some(len) = raw_string(rest) {
            i += len;
            out.push_str("\"\"");
            skip(&mut out, start, i);
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
            skip(&mut out, start, i);
        } else if let Some(len) = char_literal(rest) {
            i += len;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of the raw string literal `rest` starts with (`r"..."`, `r#"..."#`, `br"..."`).
fn raw_string(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix("br").or_else(|| rest.strip_prefix('r'))?;
    let hashes = body.len() - body.trim_start_matches('#').len();
    let after = body[hashes..].strip_prefix('"')?;
    let end = format!("\"{}", "#".repeat(hashes));
    let close = after.find(&end)?;
    Some(rest.len() - after.len() + close + end.len())
}

/// The length of the character literal `rest` starts with (`'x'`, `'\n'`, `'\u{..}'`); `None`
/// for a lifetime.
fn char_literal(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix('\'')?;
    if let Some(escaped) = body.strip_prefix('\\') {
        let close = escaped.find('\'')?;
        return Some(2 + close + 1);
    }
    let c = body.chars().next()?;
    body[c.len_utf8()..]
        .starts_with('\'')
        .then_some(1 + c.len_utf8() + 1)
}

/// The top-level modules named by the `crate::` paths of `code`: `crate::a::b` names `a`,
/// `crate::{a::b, c}` names `a` and `c`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let preceded_by_ident = code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded_by_ident {
            continue; // e.g. `$crate::` in a macro is the crate too, but `foo_crate::` is not
        }
        let rest = code[at + "crate::".len()..].trim_start();
        let Some(group) = rest.strip_prefix('{') else {
            named.insert(ident(rest));
            continue;
        };
        for item in top_level_items(group) {
            named.insert(ident(item.trim_start()));
        }
    }
    named.retain(|n| !n.is_empty() && n != "self");
    named
}

/// The comma-separated items of a `use` group body (after its `{`), nested groups kept whole.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Which top-level modules each top-level module of `src/` uses.
fn module_uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" {
            continue; // declares the modules
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let mut named = crate_paths(&code_only(&text));
        if module == "main" {
            // The binary reaches the library as `chatkpi::`.
            named = crate_paths(&code_only(&text).replace("chatkpi::", "crate::"));
        }
        named.remove(&module);
        uses.entry(module).or_default().extend(named);
    }
    uses
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let uses = module_uses();
    let mut wrong = Vec::new();
    for (module, named) in &uses {
        let Some(mine) = layer_of(module) else {
            wrong.push(format!(
                "{module}: not in LAYERS (place the new module in a layer)"
            ));
            continue;
        };
        for other in named {
            match layer_of(other) {
                Some(theirs) if theirs < mine => {}
                Some(_) => wrong.push(format!("{module} uses {other}: the same layer or above")),
                None => wrong.push(format!("{module} uses {other}, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layer rule broken:\n{}", wrong.join("\n"));
    // The reading works: the known arrows are seen.
    assert!(uses["app"].contains("store"), "{:?}", uses["app"]);
    assert!(uses["web"].contains("grpc"), "{:?}", uses["web"]);
}

#[test]
fn the_path_reader_sees_use_trees_and_skips_comments_and_strings() {
    let code = code_only(
        r##"
        use crate::{a::{b, c}, d, e::f as g};
        // crate::commented
        /* crate::blocked /* nested crate::deeper */ */
        let s = "crate::quoted";
        let r = r#"crate::raw "quoted""#;
        let c = '"'; let lifetime: &'static str = "";
        fn x() { crate::h::i(); }
        "##,
    );
    let named: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(named, ["a", "d", "e", "h"]);
}

/// The functions of `code` (comments and literals blanked, test modules cut off) as (name, first
/// line, number of lines), lines counted from 1.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let Some(name) = fn_name(lines[at]) else {
            at += 1;
            continue;
        };
        // The body: from the first `{` after the name to its match; a `;` first is a
        // declaration without a body.
        let (mut depth, mut opened, mut end) = (0usize, false, None);
        'lines: for (n, line) in lines.iter().enumerate().skip(at) {
            let from = if n == at { line.find("fn ").unwrap_or(0) } else { 0 };
            for c in line[from..].chars() {
                match c {
                    ';' if !opened => break 'lines,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' if opened => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(n);
                            break 'lines;
                        }
                    }
                    _ => {}
                }
            }
        }
        match end {
            Some(end) => {
                found.push((name, at + 1, end - at + 1));
                at = end + 1;
            }
            None => at += 1,
        }
    }
    found
}

/// The name of the function a line declares (`fn name`, after any qualifiers), if it does.
fn fn_name(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "fn")?;
    let qualifiers = ["pub", "async", "const", "unsafe", "extern", "default"];
    let before_ok = words[..i]
        .iter()
        .all(|w| qualifiers.contains(w) || w.starts_with("pub("));
    let name: String = words
        .get(i + 1)?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (before_ok && !name.is_empty()).then_some(name)
}

/// The source without its test module (`#[cfg(test)] mod ...` to the end of the file).
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let after = text[at + "#[cfg(test)]".len()..].trim_start();
        let module = after.trim_start_matches("pub(crate) ");
        // `mod tests { ... }`, not `mod testkit;` (a file of its own).
        if let Some(rest) = module.strip_prefix("mod ") {
            let head = rest.split('\n').next().unwrap_or("");
            if head.contains('{') {
                return &text[..at];
            }
        }
        from = at + 1;
    }
    text
}

const MAX_FUNCTION_LINES: usize = 80;

#[test]
fn no_function_is_over_80_lines_except_byte_codecs_that_say_why() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut long = Vec::new();
    for file in files {
        let name = file.file_name().expect("a file name").to_string_lossy();
        if name == "tests.rs" || name.ends_with("_tests.rs") || name == "testkit.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let original: Vec<&str> = text.lines().collect();
        for (fn_name, line, len) in functions(&code_only(without_tests(&text))) {
            // The doc comment right above the function says why a codec is one piece.
            let doc = original[..line - 1]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("///") || l.trim_start().starts_with("#["))
                .any(|l| l.to_lowercase().contains("a byte codec, one function on purpose"));
            if len > MAX_FUNCTION_LINES && !doc {
                long.push(format!("{}:{line} {fn_name}: {len} lines", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_reader_measures_bodies_and_skips_declarations() {
    let code = code_only(
        "trait T {\n    fn declared(&self);\n}\npub(crate) async fn two() {\n    let s = \"{\";\n}\nfn three()\n{\n    if x { y }\n}\n",
    );
    assert_eq!(
        functions(&code),
        [("two".to_owned(), 4, 3), ("three".to_owned(), 7, 4)]
    );
}
