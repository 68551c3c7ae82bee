//! The history parsers, the JSON-lines round trip and the recorder.

use std::path::Path;

use proptest::prelude::*;
use shardraft_tests::history::{
    Call, History, HistoryRecorder, MissingKeyRead, Outcome, Output, ParseError,
};

fn fixture(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/linearizability")
        .join(relative);
    std::fs::read_to_string(&path).expect("fixture is readable")
}

fn register(value: &str) -> Option<String> {
    Some(value.to_string())
}

/// Writes `history` as JSON lines and parses the text back.
fn round_trip(history: &History) -> History {
    let mut bytes = Vec::new();
    history
        .write_jsonl(&mut bytes)
        .expect("writing to a Vec succeeds");
    let text = String::from_utf8(bytes).expect("JSON lines are UTF-8");
    History::parse_jsonl(&text).expect("written JSON lines parse")
}

#[test]
fn jepsen_parser_reads_event_kinds() {
    let text = "INFO  jepsen.util - 3\t:invoke\t:read\tnil\n\
                INFO  jepsen.util - 3\t:ok\t:read\t4\n\
                INFO  jepsen.util - 1\t:invoke\t:write\t2\n\
                INFO  jepsen.util - 4   :invoke :cas    [1 4]\n\
                INFO  jepsen.util - 1\t:ok\t:write\t2\n\
                INFO  jepsen.util - 4\t:fail\t:cas\t[1 4]\n\
                INFO  jepsen.util - 2\t:invoke\t:write\t3\n\
                INFO  jepsen.util - 2\t:info\t:write\t:timed-out\n\
                INFO  jepsen.util - 0\t:invoke\t:read\tnil\n\
                INFO  jepsen.util - 0\t:fail\t:read\t:timed-out\n\
                INFO  jepsen.util - 5\t:invoke\t:cas\t[nil 1]\n";
    let history = History::parse_jepsen_register(text).expect("valid log");
    let operations = history.operations();
    assert_eq!(operations.len(), 6);

    assert_eq!(operations[0].call, Call::Read { key: String::new() });
    assert_eq!(
        operations[0].outcome,
        Outcome::Ok(Output::Read(register("4")))
    );
    assert_eq!(operations[0].invoke_line, Some(1));
    assert_eq!(operations[0].completion_line, Some(2));
    assert_eq!(operations[1].outcome, Outcome::Ok(Output::Done));

    assert_eq!(
        operations[2].call,
        Call::Cas {
            key: String::new(),
            expected: register("1"),
            new: "4".into()
        }
    );
    assert_eq!(operations[2].outcome, Outcome::Ok(Output::Cas(false)));

    assert_eq!(operations[3].outcome, Outcome::Info);
    assert_eq!(operations[3].return_position(), None);
    assert_eq!(operations[4].outcome, Outcome::Fail);

    assert_eq!(operations[5].outcome, Outcome::Pending);
    assert_eq!(
        operations[5].call,
        Call::Cas {
            key: String::new(),
            expected: None,
            new: "1".into()
        }
    );
    assert_eq!(history.missing_key_read(), MissingKeyRead::Nil);
}

#[test]
fn jepsen_parser_ignores_other_lines() {
    let text = "2016-01-01 INFO  jepsen.core - Running test\n\
                \n\
                INFO  jepsen.util - Starting nemesis\n\
                INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n\
                INFO  jepsen.util - 1\t:invoke\t:write\t2\n";
    let history = History::parse_jepsen_register(text).expect("valid log");
    assert_eq!(history.len(), 1);
    assert_eq!(history.operations()[0].invoke_line, Some(5));
}

#[test]
fn jepsen_errors_name_line_and_value() {
    let cases = [
        ("INFO  jepsen.util - x\t:invoke\t:read\tnil\n", 1, "\"x\""),
        (
            "INFO  jepsen.util - 1\t:invoke\t:write\t2\nINFO  jepsen.util - 1\t:ok\t:frob\t2\n",
            2,
            ":frob",
        ),
        ("INFO  jepsen.util - 1\t:invoke\t:cas\t[1]\n", 1, "[1]"),
        (
            "INFO  jepsen.util - 1\t:ok\t:read\t1\n",
            1,
            "no open operation",
        ),
        (
            "INFO  jepsen.util - 1\t:invoke\t:write\t2\nINFO  jepsen.util - 1\t:invoke\t:write\t3\n",
            2,
            "still open",
        ),
        (
            "INFO  jepsen.util - 1\t:invoke\t:write\t2\nINFO  jepsen.util - 1\t:ok\t:write\t3\n",
            2,
            "differs",
        ),
    ];
    for (text, line, fragment) in cases {
        let error = History::parse_jepsen_register(text).expect_err(text);
        assert_eq!(error.line, line, "{text:?}: {error}");
        assert!(
            error.message.contains(fragment),
            "{text:?}: message {:?} lacks {fragment:?}",
            error.message
        );
    }
}

#[test]
fn edn_parser_reads_kv_history() {
    let text = "{:process 0, :type :invoke, :f :append, :key \"4\", :value \"x 0 1 y\"}\n\
                {:process 2, :type :invoke, :f :get, :key \"4\", :value nil}\n\
                {:process 0, :type :ok, :f :append, :key \"4\", :value \"x 0 1 y\"}\n\
                {:process 2, :type :ok, :f :get, :key \"4\", :value \"x 0 1 y\"}\n\
                {:process 1, :type :invoke, :f :put, :key 7, :value \"a\\\"b\"}\n\
                {:process 1, :type :fail, :f :put, :key 7, :value \"a\\\"b\"}\n\
                {:process :nemesis, :type :info, :f :start, :value nil}\n\
                {:process 3, :type :invoke, :f :cas, :value [\"a\" \"b\"], :time 17}\n";
    let history = History::parse_edn_kv(text).expect("valid EDN");
    let operations = history.operations();
    assert_eq!(operations.len(), 4);
    assert_eq!(
        operations[0].call,
        Call::Append {
            key: "4".into(),
            value: "x 0 1 y".into()
        }
    );
    assert_eq!(
        operations[1].outcome,
        Outcome::Ok(Output::Read(register("x 0 1 y")))
    );
    assert_eq!(
        operations[2].call,
        Call::Write {
            key: "7".into(),
            value: "a\"b".into()
        }
    );
    assert_eq!(operations[2].outcome, Outcome::Fail);
    assert_eq!(
        operations[3].call,
        Call::Cas {
            key: String::new(),
            expected: register("a"),
            new: "b".into()
        }
    );
    assert_eq!(history.missing_key_read(), MissingKeyRead::EmptyString);
}

#[test]
fn edn_errors_name_line_and_field() {
    let cases = [
        (
            "{:process 0, :type :invoke, :key \"a\"}",
            "missing field :f",
        ),
        ("{:process -1, :type :invoke, :f :get}", ":process -1"),
        ("{:process 0, :type :begin, :f :get}", ":type :begin"),
        ("{:process 0, :type :invoke, :f :get, :key \"a}", "string"),
        ("{:process 0, :type :invoke, :f :put, :value 1.5}", "1.5"),
        ("[1 2]", "EDN map"),
        ("{:process 0, :process 1}", "duplicate"),
    ];
    for (line, fragment) in cases {
        let text = format!("\n{line}\n");
        let error = History::parse_edn_kv(&text).expect_err(line);
        assert_eq!(error.line, 2, "{line}: {error}");
        assert!(
            error.message.contains(fragment),
            "{line}: message {:?} lacks {fragment:?}",
            error.message
        );
    }
}

#[test]
fn jsonl_errors_name_line_and_field() {
    let cases = [
        (
            r#"{"process":-1,"type":"invoke","f":"read"}"#,
            "\"process\" -1",
        ),
        (r#"{"process":0,"type":"begin","f":"read"}"#, "\"begin\""),
        (r#"{"process":0,"type":"invoke","f":"frob"}"#, "\"frob\""),
        (
            r#"{"process":0,"type":"invoke","f":"write","key":"a"}"#,
            "\"value\"",
        ),
        (
            r#"{"process":0,"type":"invoke","f":"read","key":3}"#,
            "\"key\" 3",
        ),
        (
            r#"{"process":0,"type":"ok","f":"read"}"#,
            "no open operation",
        ),
        (r#"{"process":0,"type":"invoke""#, "invalid JSON"),
        (
            r#"{"format":"shardraft-history","version":1,"missing_key_reads_as":null}"#,
            "first line",
        ),
    ];
    for (line, fragment) in cases {
        let text = format!("{{\"process\":9,\"type\":\"invoke\",\"f\":\"read\"}}\n{line}\n");
        let error = History::parse_jsonl(&text).expect_err(line);
        assert_eq!(error.line, 2, "{line}: {error}");
        assert!(
            error.message.contains(fragment),
            "{line}: message {:?} lacks {fragment:?}",
            error.message
        );
    }
}

#[test]
fn jsonl_read_completion_requires_value() {
    let text = "{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\"}\n\
                {\"process\":0,\"type\":\"ok\",\"f\":\"read\",\"key\":\"a\"}\n";
    let error = History::parse_jsonl(text).expect_err("the ok read lacks its value");
    assert_eq!(error.line, 2);
    assert!(error.message.contains("\"value\""), "{error}");
}

#[test]
fn documented_jsonl_example_parses() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/history.rs"))
            .expect("the history module source is readable");
    let section = source
        .split("//! # JSON-lines format")
        .nth(1)
        .expect("the module documents the JSON-lines format");
    let example: String = section
        .split("//! ```text\n")
        .nth(1)
        .and_then(|rest| rest.split("//! ```").next())
        .expect("the JSON-lines section has a text example")
        .lines()
        .map(|line| format!("{}\n", line.trim_start_matches("//! ")))
        .collect();

    let history = History::parse_jsonl(&example).expect("the documented example parses");
    assert_eq!(history.len(), 5);
    assert_eq!(history.missing_key_read(), MissingKeyRead::Nil);
    let outcomes: Vec<&Outcome> = history.operations().iter().map(|op| &op.outcome).collect();
    assert_eq!(
        outcomes,
        [
            &Outcome::Ok(Output::Done),
            &Outcome::Ok(Output::Read(register("1"))),
            &Outcome::Ok(Output::Cas(false)),
            &Outcome::Info,
            &Outcome::Ok(Output::Done),
        ]
    );
}

#[test]
fn parse_error_displays_line() {
    let error = ParseError {
        line: 7,
        message: "missing field \"type\"".into(),
    };
    assert_eq!(error.to_string(), "line 7: missing field \"type\"");
}

#[test]
fn auto_detection_picks_format() {
    let jepsen = fixture("jepsen-etcd/etcd_002.log");
    assert_eq!(
        History::parse_auto(&jepsen),
        History::parse_jepsen_register(&jepsen)
    );
    let edn = fixture("kv/c01-ok.txt");
    assert_eq!(History::parse_auto(&edn), History::parse_edn_kv(&edn));
    let jsonl = "\n{\"process\":0,\"type\":\"invoke\",\"f\":\"delete\",\"key\":\"a\"}\n";
    assert_eq!(History::parse_auto(jsonl), History::parse_jsonl(jsonl));
    assert_eq!(History::parse_auto("  \n"), Ok(History::default()));

    let error = History::parse_auto("\nhello\n").expect_err("no known format");
    assert_eq!(error.line, 2);
    assert!(error.message.contains("\"hello\""), "{error}");
}

#[test]
fn recorded_history_round_trips_through_jsonl() {
    let mut recorder = HistoryRecorder::new();
    let written = recorder.invoke(
        0,
        Call::Write {
            key: "a".into(),
            value: "1 \"quoted\"\n".into(),
        },
    );
    let read = recorder.invoke(1, Call::Read { key: "a".into() });
    recorder.ok(written, Output::Done);
    recorder.ok(read, Output::Read(None));
    let swap = recorder.invoke(
        2,
        Call::Cas {
            key: "a".into(),
            expected: None,
            new: "é".into(),
        },
    );
    recorder.ok(swap, Output::Cas(false));
    let appended = recorder.invoke(
        3,
        Call::Append {
            key: "b".into(),
            value: "x".into(),
        },
    );
    recorder.info(appended);
    let deleted = recorder.invoke(3, Call::Delete { key: "b".into() });
    recorder.fail(deleted);
    recorder.invoke(4, Call::Read { key: "".into() });
    let history = recorder.into_history();

    assert_eq!(round_trip(&history).without_source_lines(), history);
}

#[test]
fn fixtures_round_trip_through_jsonl() {
    for name in ["jepsen-etcd/etcd_000.log", "kv/c10-bad.txt"] {
        let history = History::parse_auto(&fixture(name)).expect("fixture parses");
        assert_eq!(
            round_trip(&history).without_source_lines(),
            history.without_source_lines(),
            "{name}"
        );
    }
}

#[test]
fn recorder_rejects_second_open_operation() {
    let result = std::panic::catch_unwind(|| {
        let mut recorder = HistoryRecorder::new();
        recorder.invoke(0, Call::Read { key: "a".into() });
        recorder.invoke(0, Call::Read { key: "a".into() });
    });
    assert!(result.is_err());
}

#[test]
fn recorder_rejects_mismatched_output() {
    let result = std::panic::catch_unwind(|| {
        let mut recorder = HistoryRecorder::new();
        let op = recorder.invoke(0, Call::Read { key: "a".into() });
        recorder.ok(op, Output::Done);
    });
    assert!(result.is_err());
}

#[test]
fn recorder_rejects_foreign_handle() {
    let result = std::panic::catch_unwind(|| {
        let mut first = HistoryRecorder::new();
        let mut second = HistoryRecorder::new();
        let op = first.invoke(0, Call::Read { key: "a".into() });
        second.invoke(0, Call::Read { key: "a".into() });
        second.ok(op, Output::Read(None));
    });
    assert!(result.is_err());
}

#[test]
fn recorder_allows_invoke_after_info() {
    let mut recorder = HistoryRecorder::new();
    let first = recorder.invoke(0, Call::Delete { key: "a".into() });
    recorder.info(first);
    let second = recorder.invoke(0, Call::Delete { key: "a".into() });
    recorder.ok(second, Output::Done);
    let history = recorder.history();
    assert_eq!(history.len(), 2);
    assert_eq!(history.operations()[0].outcome, Outcome::Info);
}

/// Lines of each format that parse, used as seeds for mutation.
const VALID_LINES: &[&str] = &[
    "INFO  jepsen.util - 3\t:invoke\t:read\tnil",
    "INFO  jepsen.util - 3\t:ok\t:read\t4",
    "INFO  jepsen.util - 4\t:invoke\t:cas\t[1 4]",
    "INFO  jepsen.util - 4\t:fail\t:cas\t[1 4]",
    "INFO  jepsen.util - 2\t:info\t:write\t:timed-out",
    "{:process 0, :type :invoke, :f :append, :key \"4\", :value \"x 0 1 y\"}",
    "{:process 0, :type :ok, :f :get, :key \"4\", :value \"a\\u00e9\\\"\"}",
    "{:process 1, :type :invoke, :f :cas, :key \"k\", :value [nil \"2\"]}",
    "{\"format\":\"shardraft-history\",\"version\":1,\"missing_key_reads_as\":\"\"}",
    "{\"process\":0,\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"a\",\"expected\":\"1\",\"value\":\"2\"}",
    "{\"process\":0,\"type\":\"fail\",\"f\":\"cas\",\"key\":\"a\",\"expected\":\"1\",\"value\":\"2\"}",
    "{\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"key\":\"a\",\"value\":null}",
];

/// Feeds `text` to every parser, which must return rather than panic.
fn parse_with_every_parser(text: &str) {
    let _ = History::parse_jepsen_register(text);
    let _ = History::parse_edn_kv(text);
    let _ = History::parse_jsonl(text);
    let _ = History::parse_auto(text);
}

/// One edit of a line: delete, insert or replace the character at a relative position.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, char),
    Replace(prop::sample::Index, char),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        any::<char>(),
        prop::sample::select(vec![
            '{', '}', '[', ']', '(', ')', '"', '\\', ':', ',', ';', '\t', ' ', '\n', '-', '0', '9',
            'u', 'n', 'é', '\u{0}',
        ]),
    ];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        (any::<prop::sample::Index>(), interesting.clone())
            .prop_map(|(index, c)| Mutation::Insert(index, c)),
        (any::<prop::sample::Index>(), interesting)
            .prop_map(|(index, c)| Mutation::Replace(index, c)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply_mutations(line: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = line.chars().collect();
    for mutation in mutations {
        match mutation {
            Mutation::Delete(index) if !chars.is_empty() => {
                chars.remove(index.index(chars.len()));
            }
            Mutation::Insert(index, c) => {
                let at = index.index(chars.len() + 1);
                chars.insert(at, *c);
            }
            Mutation::Replace(index, c) if !chars.is_empty() => {
                let at = index.index(chars.len());
                chars[at] = *c;
            }
            Mutation::Truncate(index) => {
                let at = index.index(chars.len() + 1);
                chars.truncate(at);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in any::<String>()) {
        parse_with_every_parser(&text);
    }

    #[test]
    fn parsers_never_panic_on_mutated_lines(
        seeds in prop::collection::vec(prop::sample::select(VALID_LINES), 1..5),
        mutations in prop::collection::vec(mutation(), 0..6),
        target in any::<prop::sample::Index>(),
    ) {
        let mut lines: Vec<String> = seeds.iter().map(|line| line.to_string()).collect();
        let at = target.index(lines.len());
        lines[at] = apply_mutations(&lines[at], &mutations);
        parse_with_every_parser(&lines.join("\n"));
    }

    #[test]
    fn edn_value_text_never_panics(
        text in "[\\[\\]{}()\":,;a-z0-9\\\\ nil+-]{0,40}",
    ) {
        let line = format!("{{:process 0, :type :invoke, :f :put, :value {text}}}");
        parse_with_every_parser(&line);
        let line = format!("INFO  jepsen.util - 1\t:invoke\t:cas\t{text}");
        parse_with_every_parser(&line);
    }
}

/// Random strings for the round trip, including quotes, escapes and non-ASCII characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{0,3}",
        any::<String>(),
        Just("\"\\\n\t".to_string()),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        text().prop_map(|key| Call::Read { key }),
        (text(), text()).prop_map(|(key, value)| Call::Write { key, value }),
        (text(), prop::option::of(text()), text()).prop_map(|(key, expected, new)| Call::Cas {
            key,
            expected,
            new
        }),
        (text(), text()).prop_map(|(key, value)| Call::Append { key, value }),
        text().prop_map(|key| Call::Delete { key }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_histories_round_trip_through_jsonl(
        steps in prop::collection::vec((0..4u64, call(), 0..5u8, prop::option::of(text())), 0..20),
    ) {
        let mut recorder = HistoryRecorder::new();
        let mut open = std::collections::HashMap::new();
        for (process, call, completion, read_value) in steps {
            match open.remove(&process) {
                None => {
                    let is_read = matches!(call, Call::Read { .. });
                    let is_cas = matches!(call, Call::Cas { .. });
                    open.insert(process, (recorder.invoke(process, call), is_read, is_cas));
                }
                Some((handle, is_read, is_cas)) => match completion {
                    0 => recorder.fail(handle),
                    1 => recorder.info(handle),
                    _ if is_read => recorder.ok(handle, Output::Read(read_value)),
                    _ if is_cas => recorder.ok(handle, Output::Cas(completion == 2)),
                    _ => recorder.ok(handle, Output::Done),
                },
            }
        }
        let history = recorder.into_history();
        prop_assert_eq!(round_trip(&history).without_source_lines(), history);
    }
}
