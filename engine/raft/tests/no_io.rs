//! The core stays free of I/O: its dependencies are a fixed set of `no_std` crates, and its
//! sources name no standard library, runtime, clock or OS randomness. The compiler already
//! rejects `std` in a `#![no_std]` crate. This test also catches a new dependency or feature
//! that could bring them in, and a removed `#![no_std]` attribute.

use std::fs;
use std::path::{Path, PathBuf};

const ALLOWED_DEPENDENCIES: [&str; 5] =
    ["bytes", "rand_core", "rand_chacha", "tracing", "thiserror"];

/// Text that the code of no source line may contain; `//` comments may mention it.
const FORBIDDEN: [&str; 8] = [
    "extern crate std",
    "std::",
    "glommio",
    "Instant",
    "SystemTime",
    "thread_rng",
    "OsRng",
    "getrandom",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Returns the names in the `[dependencies]` table of a Cargo manifest.
fn dependency_names(manifest: &str) -> Vec<String> {
    table_lines(manifest, "dependencies")
        .into_iter()
        .map(dependency_name)
        .collect()
}

/// Returns the dependency a manifest line such as `bytes.workspace = true` or
/// `"tracing" = { ... }` declares.
fn dependency_name(line: &str) -> String {
    let key = line.split('=').next().unwrap_or_default().trim();
    let name = key.split('.').next().unwrap_or_default().trim();
    name.trim_matches('"').to_string()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

/// Returns the code of a source line: the text before any `//` comment.
fn code_part(line: &str) -> &str {
    line.split("//").next().unwrap_or_default()
}

#[test]
fn dependencies_are_allowed_list() {
    let path = crate_dir().join("Cargo.toml");
    let manifest = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let mut names = dependency_names(&manifest);
    names.sort();
    let mut allowed: Vec<String> = ALLOWED_DEPENDENCIES
        .iter()
        .map(|name| name.to_string())
        .collect();
    allowed.sort();
    assert_eq!(names, allowed, "[dependencies] of {}", path.display());
}

/// Returns the lines of a manifest's `table`, without blank and comment lines.
fn table_lines<'a>(manifest: &'a str, table: &str) -> Vec<&'a str> {
    let header = format!("[{table}]");
    let mut lines = Vec::new();
    let mut in_table = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line == header;
            continue;
        }
        if in_table && !line.is_empty() && !line.starts_with('#') {
            lines.push(line);
        }
    }
    lines
}

#[test]
fn dependencies_build_without_std() {
    let path = crate_dir().join("../../Cargo.toml");
    let manifest = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let workspace_lines = table_lines(&manifest, "workspace.dependencies");
    for name in ALLOWED_DEPENDENCIES {
        let line = workspace_lines
            .iter()
            .find(|line| dependency_name(line) == name)
            .unwrap_or_else(|| panic!("{name} is missing from [workspace.dependencies]"));
        assert!(
            line.contains("default-features = false"),
            "{name} must turn off default features, which include std: {line}"
        );
        assert!(!line.contains("\"std\""), "{name} enables std: {line}");
    }

    let path = crate_dir().join("Cargo.toml");
    let manifest = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    for line in table_lines(&manifest, "dependencies") {
        assert!(
            line.ends_with(".workspace = true"),
            "{} must take the workspace's no-std settings: {line}",
            path.display()
        );
    }
}

#[test]
fn lib_declares_no_std() {
    let path = crate_dir().join("src/lib.rs");
    let source = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let declared = source.lines().any(|line| line.trim() == "#![no_std]");
    assert!(declared, "{} lacks #![no_std]", path.display());
}

#[test]
fn sources_name_no_io() {
    let mut sources = Vec::new();
    rust_sources(&crate_dir().join("src"), &mut sources);
    assert!(!sources.is_empty(), "no sources found under src");
    let mut findings = Vec::new();
    for path in &sources {
        let source = fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        for (number, line) in source.lines().enumerate() {
            let code = code_part(line);
            for forbidden in FORBIDDEN {
                if code.contains(forbidden) {
                    findings.push(format!(
                        "{}:{}: {forbidden:?} in {:?}",
                        path.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        findings.is_empty(),
        "I/O in the core:\n{}",
        findings.join("\n")
    );
}

#[test]
fn dependency_parser_reads_workspace_keys() {
    let manifest = concat!(
        "[package]\n",
        "name = \"x\"\n",
        "\n",
        "[dependencies]\n",
        "bytes.workspace = true\n",
        "\"tracing\" = { version = \"0.1\" }\n",
        "# std = \"1\"\n",
        "\n",
        "[dev-dependencies]\n",
        "proptest.workspace = true\n",
    );
    let names = dependency_names(manifest);
    assert_eq!(
        names,
        ["bytes", "tracing"],
        "names parsed from {manifest:?}"
    );
}

#[test]
fn code_part_drops_line_comments() {
    assert_eq!(code_part("/// uses std::vec"), "", "doc comment");
    assert_eq!(
        code_part("let a = 1; // std::mem"),
        "let a = 1; ",
        "trailing comment"
    );
    assert_eq!(code_part("use std::fmt;"), "use std::fmt;", "code");
}
