//! Log lines written to a pipe or a file carry no terminal escapes, and `--log-format json`
//! writes one JSON object per line, for log shippers.

mod common;
use common::process::{broker_command, free_port, BrokerProcess};
use std::io::BufRead;
use std::process::Stdio;
use std::time::Duration;

/// The first log lines of a broker started with `extra` flags, its stdout a pipe.
fn first_lines(extra: &[&str], n: usize) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = broker_command(dir.path(), free_port(), "info");
    cmd.args(extra).stdout(Stdio::piped());
    let mut child = BrokerProcess(cmd.spawn().expect("broker starts"));
    let out = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while lines.len() < n {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("only {} log line(s) within 15 s: {lines:?}", lines.len()),
        }
    }
    lines
}

#[test]
fn text_logs_to_a_pipe_have_no_escapes() {
    let lines = first_lines(&[], 2);
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "escape in {l:?}");
        assert!(l.contains("INFO"), "{l:?}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = first_lines(&["--log-format", "json"], 2);
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON object per line");
        assert_eq!(v["level"], "INFO", "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
        assert!(v["timestamp"].is_string(), "{l}");
    }
}
