//! `nekhebet-store verify` agrees with nekhebet-core 4.0.0 on every reference vector (each judged at
//! its own `verified_at`), through the real binary.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;

#[test]
fn verify_command_agrees_with_nekhebet_core_on_every_vector() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nekhebet-core-4.0.0.jsonl"
    );
    let text = std::fs::read_to_string(path)
        .expect("tests/data/nekhebet-core-4.0.0.jsonl (scripts/make-test-data)");
    let mut checked = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let wire = base64::engine::general_purpose::STANDARD
            .decode(v["wire"].as_str().unwrap())
            .unwrap();
        // One envelope a line: a wire form containing a newline cannot be given on one line.
        if wire.contains(&b'\n') {
            continue;
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
            .args(["verify", "--at", v["verified_at"].as_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&wire).unwrap();
        stdin.write_all(b"\n").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["line"], 1);
        assert_eq!(got["verdict"], v["verdict"], "{}", v["name"]);
        assert_eq!(got["category"], v["category"], "{}", v["name"]);
        if v["verdict"] != "undecodable" {
            assert_eq!(got["id"], v["meta"]["id"], "{}", v["name"]);
        }
        checked += 1;
    }
    assert!(checked > 400, "checked {checked} vectors");
}

#[test]
fn verify_command_reads_files_in_order_and_summarises() {
    let samples = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/envelopes-2000.jsonl"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
        .args(["verify", "--at", "2026-11-25T17:00:00Z", samples])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2000);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["line"], i + 1);
        assert_eq!(l["verdict"], "valid");
    }
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("2000 lines: 2000 valid, 0 invalid, 0 undecodable"));
}
