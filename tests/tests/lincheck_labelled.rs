//! Agreement of the checker with every labelled history under
//! `tests/fixtures/linearizability`: the Jepsen etcd register logs listed in `LABELS`, and
//! the key-value histories whose file names end in `-ok` or `-bad`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shardraft_tests::history::History;
use shardraft_tests::lincheck::{CheckOutcome, check};

/// Generous, so that a slow machine reports a wrong verdict rather than `Unknown`.
const TIME_LIMIT: Duration = Duration::from_secs(30);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/linearizability")
}

/// Returns every labelled file with whether it is linearizable.
fn labelled_files() -> Vec<(PathBuf, bool)> {
    let mut files = Vec::new();
    let etcd = fixtures().join("jepsen-etcd");
    let labels = std::fs::read_to_string(etcd.join("LABELS")).expect("LABELS is readable");
    for line in labels.lines().filter(|line| !line.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let name = fields.next().expect("a LABELS line names a file");
        let linearizable = match fields.next() {
            Some("linearizable") => true,
            Some("not-linearizable") => false,
            other => panic!("LABELS line {line:?} has the label {other:?}"),
        };
        files.push((etcd.join(name), linearizable));
    }

    let kv = fixtures().join("kv");
    let mut names: Vec<String> = std::fs::read_dir(&kv)
        .expect("the kv fixture folder is readable")
        .map(|entry| {
            entry
                .expect("a kv fixture entry is readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    for name in names {
        let linearizable = if name.contains("-ok") {
            true
        } else if name.contains("-bad") {
            false
        } else {
            continue;
        };
        files.push((kv.join(name), linearizable));
    }
    files
}

#[test]
fn labelled_histories_match_their_labels() {
    let files = labelled_files();
    assert_eq!(
        files.len(),
        68 + 6,
        "expected 68 etcd logs and 6 kv histories"
    );

    let mut disagreements = Vec::new();
    let mut slowest = (Duration::ZERO, PathBuf::new());
    for (path, linearizable) in &files {
        let text = std::fs::read_to_string(path).expect("fixture is readable");
        let history = match History::parse_auto(&text) {
            Ok(history) => history,
            Err(error) => {
                disagreements.push(format!("{}: parse error: {error}", path.display()));
                continue;
            }
        };
        let start = Instant::now();
        let outcome = check(&history, TIME_LIMIT);
        let elapsed = start.elapsed();
        if elapsed > slowest.0 {
            slowest = (elapsed, path.clone());
        }
        let agrees = match &outcome {
            CheckOutcome::Linearizable => *linearizable,
            CheckOutcome::NotLinearizable { .. } => !*linearizable,
            CheckOutcome::Unknown { .. } => false,
        };
        if !agrees {
            let label = if *linearizable {
                "linearizable"
            } else {
                "not linearizable"
            };
            disagreements.push(format!(
                "{}: labelled {label}, checker returned {outcome:?}",
                path.display()
            ));
        }
    }
    println!("slowest check: {:?} for {}", slowest.0, slowest.1.display());
    assert!(
        disagreements.is_empty(),
        "{} of {} labelled histories disagree:\n{}",
        disagreements.len(),
        files.len(),
        disagreements.join("\n")
    );
}

#[test]
fn labelled_offending_sets_are_minimal() {
    for (path, linearizable) in labelled_files() {
        if linearizable {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("fixture is readable");
        let history = History::parse_auto(&text).expect("fixture parses");
        let CheckOutcome::NotLinearizable {
            offending, minimal, ..
        } = check(&history, TIME_LIMIT)
        else {
            panic!("{} is labelled not linearizable", path.display());
        };
        assert!(minimal, "{}: offending set is not minimal", path.display());
        assert!(
            !offending.is_empty(),
            "{}: empty offending set",
            path.display()
        );

        let positions: Vec<usize> = offending.iter().map(|op| op.invoke_position).collect();
        let subset = history.filter(|op| positions.contains(&op.invoke_position));
        assert!(
            matches!(
                check(&subset, TIME_LIMIT),
                CheckOutcome::NotLinearizable { .. }
            ),
            "{}: offending set alone is linearizable",
            path.display()
        );
        for removed in &positions {
            let smaller = subset.filter(|op| op.invoke_position != *removed);
            assert_eq!(
                check(&smaller, TIME_LIMIT),
                CheckOutcome::Linearizable,
                "{}: offending set without the operation at event {removed} is still not \
                 linearizable",
                path.display()
            );
        }
    }
}
