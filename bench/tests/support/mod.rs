//! Helpers shared by the tests that run the built `shardraft-bench` binary.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// A file in the temp directory, named after `prefix` and this test process, that is
/// removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(prefix: &str) -> TempFile {
        let name = format!("{prefix}-{}.json", std::process::id());
        TempFile(std::env::temp_dir().join(name))
    }

    /// Returns the path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0
            .to_str()
            .expect("the temp directory's path is not UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `shardraft-bench` with `args`, asserts that it exited 0, and returns its stdout.
pub fn run_bench<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(env!("CARGO_BIN_EXE_shardraft-bench"))
        .args(args)
        .output()
        .expect("shardraft-bench could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "shardraft-bench failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}
