//! The module boundaries of ARCHITECTURE.md, checked (rust-analyzer's "tidy" tests are the
//! model): every `crate::x` a module of `src/` names must be in its row of the table between
//! the `module-dependencies` markers, and every entry of the table must still be used, so the
//! document cannot drift from the code in either direction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const START: &str = "<!-- module-dependencies:start -->";
const END: &str = "<!-- module-dependencies:end -->";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The table: module → the modules it may use.
fn allowed(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let from = architecture
        .find(START)
        .expect("ARCHITECTURE.md has the module-dependencies table");
    let to = architecture[from..].find(END).expect("the table ends") + from;
    let mut table = BTreeMap::new();
    for line in architecture[from + START.len()..to].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() != 2 || !cells[0].contains('`') {
            continue;
        }
        let names = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .map(|n| n.trim().trim_matches('`').to_string())
                .filter(|n| !n.is_empty() && n != "—")
                .collect()
        };
        let module = names(cells[0]).into_iter().next().expect("a module name");
        table.insert(module, names(cells[1]));
    }
    table
}

/// `{` minus `}` on a line, outside string literals.
fn brace_balance(line: &str) -> i64 {
    let (mut balance, mut in_string, mut escaped) = (0, false, false);
    for c in line.chars() {
        match (in_string, escaped, c) {
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, _, _) => escaped = false,
            (false, _, '"') => in_string = true,
            (false, _, '{') => balance += 1,
            (false, _, '}') => balance -= 1,
            _ => {}
        }
    }
    balance
}

/// The top-level modules named after `crate::` (or `cloudrun_render::` in the binary) in
/// `source`, leaving out comments and `#[cfg(test)] mod tests { … }`: what tests use is not
/// a dependency of the module.
fn uses(source: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod tests"))
        {
            let mut depth = 0;
            for line in lines.by_ref() {
                depth += brace_balance(line);
                if depth <= 0 && line.contains('}') {
                    break;
                }
            }
            continue;
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let after = &rest[at + prefix.len()..];
            if let Some(group) = after.strip_prefix('{') {
                found.extend(group_heads(group));
            } else {
                found.insert(ident(after).to_string());
            }
            rest = after;
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first name of each path in a `{a, b::c, d::{e, f}}` group (the text after the `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_start = true,
            c if at_start && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident(&group[i..]).to_string());
                at_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// `src/api/wire.rs` → `api`, `src/cli.rs` → `cli`, `src/main.rs` → `main`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    Path::new(first)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module → the modules its files name.
fn used_by_module() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // The crate root only declares the modules.
    files.retain(|f| f != &src.join("lib.rs"));
    for file in files {
        let module = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        let prefix = if module == "main" {
            "cloudrun_render::"
        } else {
            "crate::"
        };
        let entry = used.entry(module.clone()).or_default();
        entry.extend(uses(&text, prefix));
        entry.remove(&module);
    }
    used
}

#[test]
fn modules_use_only_what_architecture_md_allows() {
    let architecture = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let table = allowed(&architecture);
    let used = used_by_module();
    let mut problems = Vec::new();
    for (module, names) in &used {
        let Some(allowed) = table.get(module) else {
            problems.push(format!("`{module}` has no row in the table"));
            continue;
        };
        for name in names.difference(allowed) {
            problems.push(format!(
                "`{module}` uses `{name}`, which its row does not allow"
            ));
        }
        for name in allowed.difference(names) {
            problems.push(format!(
                "`{module}` may use `{name}` by the table but does not: remove it from the row"
            ));
        }
    }
    for module in table.keys().filter(|m| !used.contains_key(*m)) {
        problems.push(format!("the table names `{module}`, which is not a module"));
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's module-dependencies table and src/ disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_groups_and_skips_comments_and_tests() {
    let source = "use crate::options::Codec;\n\
                  use crate::{encode::{self, X}, fetch, pcm::Pcm};\n\
                  // crate::browser is only mentioned here\n\
                  fn f() { crate::system::cpu_count(); let _ = crate::audio::mix; }\n\
                  #[cfg(test)]\n\
                  mod tests {\n    use crate::storage;\n    fn f() { format!(\"{{\"); }\n}\n\
                  fn g() { crate::guard::check(); }\n";
    let found: Vec<String> = uses(source, "crate::").into_iter().collect();
    assert_eq!(
        found,
        [
            "audio", "encode", "fetch", "guard", "options", "pcm", "system"
        ]
    );
    let table = allowed(&format!(
        "{START}\n| module | may use |\n|---|---|\n| `a` | `b`, `c` |\n| `d` | — |\n{END}"
    ));
    assert_eq!(table["a"], BTreeSet::from(["b".into(), "c".into()]));
    assert!(table["d"].is_empty());
}
