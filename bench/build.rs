//! Records the version of the compiler that builds the crate, for the machine facts that
//! `shardraft-bench` prints beside its figures, and the git commit of the checkout, for the
//! JSON result of `shardraft-bench run`.

use std::path::Path;
use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let version = command_output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SHARDRAFT_BENCH_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
    record_git_commit();
}

/// Sets `SHARDRAFT_BENCH_GIT_COMMIT` to `git rev-parse HEAD` when the crate is built inside
/// a git checkout with git installed, and leaves it unset otherwise.
///
/// NOTE: the commit does not record uncommitted changes in the working tree.
fn record_git_commit() {
    if let Some(commit) = command_output("git", &["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=SHARDRAFT_BENCH_GIT_COMMIT={commit}");
    }
    // Rebuild when HEAD moves: a new commit changes a file under refs/ (or packed-refs),
    // a checkout changes HEAD itself.
    if let Some(git_dir) = command_output("git", &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = Path::new(&git_dir);
        for watched in ["HEAD", "refs/heads", "packed-refs"] {
            let path = git_dir.join(watched);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// Runs `program args` and returns its trimmed standard output, when it succeeds.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}
