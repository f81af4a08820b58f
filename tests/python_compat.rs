//! Compatibility with the Python package nekhebet-store 4.0.0 (pip-installed in a throwaway venv by
//! `scripts/pyenv`): what we write, its HybridEventRepository reads back, every envelope; what it
//! writes, we read back byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pg::TestDb;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn samples() -> Vec<String> {
    std::fs::read_to_string(repo_root().join("tests/data/envelopes-2000.jsonl"))
        .expect("tests/data/envelopes-2000.jsonl (scripts/make-test-data)")
        .lines()
        .map(str::to_string)
        .collect()
}

fn python() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/pyenv"))
        .output()
        .expect("run scripts/pyenv");
    assert!(
        out.status.success(),
        "scripts/pyenv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("pyenv prints the interpreter")
            .trim(),
    )
}

fn run_python(py: &Path, mode: &str, url: &str, lmdb: &Path, jsonl: &Path) {
    let out = Command::new(py)
        .arg(repo_root().join("tests/python/compat.py"))
        .args([mode, url])
        .arg(lmdb)
        .arg(jsonl)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python {mode} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ours(args: &[&str], url: &str, lmdb: &Path) -> std::process::Output {
    ours_with(args, url, lmdb, &[])
}

fn ours_with(args: &[&str], url: &str, lmdb: &Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nekhebet-store"))
        .args(args)
        .env("NEKHEBET_POSTGRES__URL", url)
        .env("NEKHEBET_LMDB__PATH", lmdb)
        .env("NEKHEBET_STORE__MODE", "hybrid")
        // The samples were valid when made; judge them without a clock dependency.
        .env("NEKHEBET_VERIFY__ENABLED", "false")
        .envs(env.iter().copied())
        .output()
        .expect("run nekhebet-store")
}

#[tokio::test]
async fn python_reads_what_we_write_and_we_read_what_python_writes() {
    let py = python();
    let lines = samples();
    let dir = tempfile::tempdir().unwrap();

    // Rust writes (import), Python reads.
    let db = TestDb::new().await;
    let lmdb = dir.path().join("ours");
    let jsonl = dir.path().join("ours.jsonl");
    std::fs::write(&jsonl, lines[..500].join("\n") + "\n").unwrap();
    // Python's readers open LMDB themselves: they need the compatible layout (README, Choosing a
    // layout), which a new environment gets only when asked for.
    let out = ours_with(
        &["import", jsonl.to_str().unwrap()],
        &db.url,
        &lmdb,
        &[("NEKHEBET_LMDB__LAYOUT", "compatible")],
    );
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_python(&py, "read", &db.url, &lmdb, &jsonl);

    // Python writes into a database migrated by us, Rust reads.
    let db2 = TestDb::new().await;
    let lmdb2 = dir.path().join("theirs");
    let jsonl2 = dir.path().join("theirs.jsonl");
    std::fs::write(&jsonl2, lines[500..700].join("\n") + "\n").unwrap();
    run_python(&py, "write", &db2.url, &lmdb2, &jsonl2);
    for line in &lines[500..700] {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["header"]["id"].as_str().unwrap();
        let out = ours(&["get", id], &db2.url, &lmdb2);
        assert!(
            out.status.success(),
            "get {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, line.as_bytes(), "bytes of {id}");
        let hash = v["header"]["payload_hash"].as_str().unwrap();
        let out = ours(&["get", "--hash", hash], &db2.url, &lmdb2);
        assert_eq!(out.stdout, line.as_bytes(), "bytes of hash {hash}");
    }

    // Its environment has an `events` database and no layout record: it opens compatible (and
    // keeps it: recorded by the first writer), and asking for the append layout is refused.
    let out = ours(&["reconcile"], &db2.url, &lmdb2);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("the environment's layout: compatible") && text.contains("missing    0"),
        "{text}"
    );
    let out = ours_with(
        &["reconcile"],
        &db2.url,
        &lmdb2,
        &[("NEKHEBET_LMDB__LAYOUT", "append")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{}: lmdb.layout = \"append\", but this environment was created with the \"compatible\" layout",
            lmdb2.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn importing_the_samples_twice_stores_them_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    let jsonl = repo_root().join("tests/data/envelopes-2000.jsonl");
    let first = ours(&["import", jsonl.to_str().unwrap()], &db.url, &lmdb);
    let first_out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{first_out}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(first_out.contains("stored      2000"), "{first_out}");
    let second = ours(&["import", jsonl.to_str().unwrap()], &db.url, &lmdb);
    let second_out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{second_out}");
    assert!(second_out.contains("stored      0"), "{second_out}");
    // The same envelopes again are exact repeats, not replays (seth.caught is for other envelopes).
    assert!(second_out.contains("redelivered 2000"), "{second_out}");
    assert!(second_out.contains("replay      0"), "{second_out}");
    let store = db.store().await;
    assert_eq!(store.counts().await.unwrap(), (2000, 2000));

    // A rejected line is reported with its number, does not stop the import, and sets the exit code.
    let mixed = dir.path().join("mixed.jsonl");
    let lines = samples();
    std::fs::write(&mixed, format!("{}\nnot json\n{}\n", lines[0], lines[1])).unwrap();
    let db2 = TestDb::new().await;
    let out = ours(
        &["import", mixed.to_str().unwrap()],
        &db2.url,
        &dir.path().join("lmdb2"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2: rejected"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stored      2"));
}
