//! The transparency log (`src/tlog`) against an independent implementation: Go's
//! `golang.org/x/mod/sumdb/tlog` and `sumdb/note`, driven through `tests/go/tlogcheck`.
//!
//! Rust to Go: we build trees, serve them as tlog-tiles paths and bytes, sign checkpoints with a
//! key we generated, prove inclusion and consistency, and write it all to a fixture that the Go
//! program verifies with `note.Open`, `tlog.TileHashReader`/`TreeHash`, `ReadTileData`,
//! `CheckRecord`, `CheckTree` (and `ProveRecord`/`ProveTree` must give our very proofs).
//! Go to Rust: the Go program builds a tree with a key `note.GenerateKey` made and we verify it.
//!
//! Needs `go` (1.26+) on PATH and, the first time, the Go module proxy (for golang.org/x/mod,
//! pinned by tests/go/tlogcheck/go.sum). Without Go the test fails: it is never skipped.
//! `TLOG_INTEROP_SEED=<u64>` replays a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use serde::Deserialize;
use serde_json::json;

use nekhebet_store::tlog::{
    append_stored_hashes, check_consistency, check_inclusion, encode_entry_bundle, envelope_entry,
    leaf_hash, new_tiles, open_note, parse_entry_bundle, prove_consistency, prove_inclusion,
    read_tile, sign_note, tree_hash, Checkpoint, CheckpointError, Hash, NoteError, NoteSigner,
    NoteVerifier, Tile, TileKind,
};

const ORIGIN: &str = "nekhebet.example/tlog-interop";

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    BASE64.decode(s).expect("base64 from Go")
}

fn hashes_b64(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(Hash::to_base64).collect()
}

fn unb64_hashes(list: &Option<Vec<String>>) -> Vec<Hash> {
    list.iter()
        .flatten()
        .map(|s| Hash::from_base64(s).expect("hash from Go"))
        .collect()
}

/// The tiles a log publishes when it checkpoints `old` and then `new`: hash tiles plus the
/// entry bundles of the level-0 ones.
fn published_tiles(old: u64, new: u64) -> BTreeSet<Tile> {
    let mut tiles = BTreeSet::new();
    for tile in new_tiles(0, old).into_iter().chain(new_tiles(old, new)) {
        tiles.extend(tile.entry_bundle());
        tiles.insert(tile);
    }
    tiles
}

/// The bytes a server would serve for `tile` of the tree of `size` entries.
fn serve(tile: &Tile, size: u64, stored: &Vec<Hash>, entries: &[[u8; 32]]) -> Vec<u8> {
    match tile.kind() {
        TileKind::Hashes(_) => read_tile(tile, size, stored).expect("tile of our tree"),
        TileKind::Entries => {
            let range = tile.leaf_range().expect("bundle in range");
            encode_entry_bundle(&entries[range.start as usize..range.end as usize]).unwrap()
        }
    }
}

/// A random log of `size` envelopes, checkpointed at `old` and `size`, as the fixture the Go
/// program checks.
fn fixture(rng: &mut StdRng, size: u64, old: u64) -> serde_json::Value {
    let envelopes: Vec<Vec<u8>> = (0..size)
        .map(|_| {
            let mut e = vec![0u8; rng.gen_range(40..200)];
            rng.fill_bytes(&mut e);
            e
        })
        .collect();
    let entries: Vec<[u8; 32]> = envelopes.iter().map(|e| envelope_entry(e)).collect();
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
    // Appended in random batches, as the store will.
    let mut stored: Vec<Hash> = Vec::new();
    let mut n = 0;
    while n < size {
        let batch = rng.gen_range(1..=4000).min(size - n);
        let new = append_stored_hashes(n, &leaves[n as usize..(n + batch) as usize], &stored);
        stored.extend(new.unwrap());
        n += batch;
    }
    let root = tree_hash(size, &stored).unwrap();
    let old_root = tree_hash(old, &stored).unwrap();

    let signer = NoteSigner::generate(ORIGIN, rng).unwrap();
    let checkpoint = Checkpoint::new(ORIGIN, size, root).unwrap();
    let old_checkpoint = Checkpoint::new(ORIGIN, old, old_root).unwrap();

    let tiles: BTreeMap<String, String> = published_tiles(old, size)
        .iter()
        .map(|t| (t.path(), b64(&serve(t, size, &stored, &entries))))
        .collect();

    let mut proofs = vec![(0, size), (size - 1, size), (0, old), (old - 1, old)];
    for _ in 0..20 {
        proofs.push((rng.gen_range(0..size), size));
        proofs.push((rng.gen_range(0..old), old));
    }
    let inclusion: Vec<_> = proofs
        .into_iter()
        .map(|(index, at)| {
            let proof = prove_inclusion(index, at, &stored).unwrap();
            let root = tree_hash(at, &stored).unwrap();
            let leaf = &leaves[index as usize];
            assert_eq!(check_inclusion(&proof, index, leaf, at, &root), Ok(()));
            json!({
                "index": index,
                "size": at,
                "entry": b64(&entries[index as usize]),
                "proof": hashes_b64(&proof),
            })
        })
        .collect();
    let consistency = prove_consistency(old, size, &stored).unwrap();
    assert_eq!(
        check_consistency(&consistency, old, &old_root, size, &root),
        Ok(())
    );
    let samples: Vec<_> = [0, old - 1, size - 1, rng.gen_range(0..size)]
        .iter()
        .map(|&i| json!({"index": i, "bytes": b64(&envelopes[i as usize])}))
        .collect();

    json!({
        "origin": ORIGIN,
        "signer_key": signer.to_key_string(),
        "verifier_key": signer.verifier().to_string(),
        "checkpoint": checkpoint.sign(&[&signer]).unwrap(),
        "old_checkpoint": old_checkpoint.sign(&[&signer]).unwrap(),
        "tiles": tiles,
        "inclusion": inclusion,
        "consistency": {"old_size": old, "new_size": size, "proof": hashes_b64(&consistency)},
        "envelopes": samples,
    })
}

#[derive(Deserialize)]
struct GoInclusion {
    index: u64,
    size: u64,
    entry: String,
    proof: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct GoConsistency {
    old_size: u64,
    new_size: u64,
    proof: Option<Vec<String>>,
}

/// The tree the Go program built and signed.
#[derive(Deserialize)]
struct GoOutput {
    origin: String,
    signer_key: String,
    verifier_key: String,
    checkpoint: String,
    old_checkpoint: String,
    size: u64,
    old_size: u64,
    entries: Vec<String>,
    tiles: BTreeMap<String, String>,
    inclusion: Vec<GoInclusion>,
    consistency: GoConsistency,
    note: String,
    note_text: String,
}

fn verify_go_output(path: &Path) {
    let go: GoOutput = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();

    // Go's keys parse, and Go's signer key derives Go's verifier key.
    let verifier = NoteVerifier::parse(&go.verifier_key).expect("Go's verifier key");
    let signer = NoteSigner::parse(&go.signer_key).expect("Go's signer key");
    assert_eq!(signer.verifier().to_string(), go.verifier_key);

    let verifiers = [verifier];
    let (checkpoint, note) = Checkpoint::open(go.checkpoint.as_bytes(), &go.origin, &verifiers)
        .expect("Go's checkpoint opens");
    assert_eq!(note.sigs.len(), 1);
    assert_eq!(checkpoint.size(), go.size);
    let (old_checkpoint, _) =
        Checkpoint::open(go.old_checkpoint.as_bytes(), &go.origin, &verifiers)
            .expect("Go's old checkpoint opens");
    assert_eq!(old_checkpoint.size(), go.old_size);
    // Deterministic Ed25519: signing Go's checkpoint with Go's key reproduces it exactly.
    assert_eq!(checkpoint.sign(&[&signer]).unwrap(), go.checkpoint);
    let tampered = go.checkpoint.replacen(
        &format!("\n{}\n", go.size),
        &format!("\n{}\n", go.size + 1),
        1,
    );
    assert!(matches!(
        Checkpoint::open(tampered.as_bytes(), &go.origin, &verifiers),
        Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
    ));

    // Our tree of Go's entries has the roots Go signed.
    let entries: Vec<[u8; 32]> = go
        .entries
        .iter()
        .map(|e| unb64(e).try_into().expect("32-byte entries"))
        .collect();
    assert_eq!(entries.len() as u64, go.size);
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
    let stored = append_stored_hashes(0, &leaves, &Vec::new()).unwrap();
    let root = tree_hash(go.size, &stored).unwrap();
    let old_root = tree_hash(go.old_size, &stored).unwrap();
    assert_eq!(&root, checkpoint.root());
    assert_eq!(&old_root, old_checkpoint.root());

    // Go's tiles: the set we would publish, each path canonical to our parser, each byte ours.
    let ours: BTreeSet<String> = published_tiles(go.old_size, go.size)
        .iter()
        .map(Tile::path)
        .collect();
    let theirs: BTreeSet<String> = go.tiles.keys().cloned().collect();
    assert_eq!(ours, theirs, "tile sets differ");
    for (path, data) in &go.tiles {
        let tile = Tile::parse_path(path).unwrap_or_else(|e| panic!("Go's {path}: {e}"));
        let data = unb64(data);
        assert_eq!(
            data,
            serve(&tile, go.size, &stored, &entries),
            "tile {path} differs"
        );
        if tile.kind() == TileKind::Entries {
            let range = tile.leaf_range().unwrap();
            let bundle = parse_entry_bundle(&data).unwrap();
            assert_eq!(bundle.len() as u64, range.end - range.start);
        }
    }

    // Go's proofs check here, and are the proofs we would give.
    for p in &go.inclusion {
        let proof = unb64_hashes(&p.proof);
        let at_root = tree_hash(p.size, &stored).unwrap();
        let leaf = leaf_hash(&unb64(&p.entry));
        assert_eq!(
            check_inclusion(&proof, p.index, &leaf, p.size, &at_root),
            Ok(())
        );
        assert_eq!(prove_inclusion(p.index, p.size, &stored).unwrap(), proof);
    }
    let c = &go.consistency;
    assert_eq!((c.old_size, c.new_size), (go.old_size, go.size));
    let proof = unb64_hashes(&c.proof);
    assert_eq!(
        check_consistency(&proof, c.old_size, &old_root, c.new_size, &root),
        Ok(())
    );
    assert_eq!(
        prove_consistency(c.old_size, c.new_size, &stored).unwrap(),
        proof
    );

    // A plain note with a blank line and non-ASCII text.
    let note = open_note(go.note.as_bytes(), &verifiers).expect("Go's note opens");
    assert_eq!(note.text, go.note_text);
    assert_eq!(sign_note(&go.note_text, &[&signer]).unwrap(), go.note);
}

/// Builds tests/go/tlogcheck into `dir`. Fails (never skips) without Go.
fn build_go(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/tlogcheck");
    let bin = dir.join("tlogcheck");
    // -mod=readonly: go.mod/go.sum pin golang.org/x/mod, whatever GOFLAGS says.
    let out = Command::new("go")
        .args(["build", "-mod=readonly", "-buildvcs=false", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`go` is not on PATH: tests/tlog_interop.rs checks src/tlog against Go's \
             golang.org/x/mod/sumdb and needs Go 1.26 or newer (https://go.dev/dl/)"
        ),
        Err(e) => panic!("running `go build` in {}: {e}", src.display()),
        Ok(out) => assert!(
            out.status.success(),
            "`go build` in {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    bin
}

#[test]
fn go_verifies_our_log_and_we_verify_gos() {
    let seed: u64 = std::env::var("TLOG_INTEROP_SEED")
        .ok()
        .map(|s| s.parse().expect("TLOG_INTEROP_SEED is a u64"))
        .unwrap_or_else(rand::random);
    eprintln!("tlog_interop: seed {seed} (TLOG_INTEROP_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let bin = build_go(dir.path());
    // A small tree (one or two tile levels) and one past 65,536 entries (three levels, with
    // a partial level-2 tile).
    let small = rng.gen_range(1..=600);
    let large = rng.gen_range(65_537..=70_000);
    for size in [small, large] {
        let old = rng.gen_range(1..=size);
        let fixture_path = dir.path().join(format!("fixture-{size}.json"));
        let out_path = dir.path().join(format!("go-{size}.json"));
        let fx = fixture(&mut rng, size, old);
        std::fs::write(&fixture_path, serde_json::to_vec(&fx).unwrap()).unwrap();

        let out = Command::new(&bin)
            .arg(&fixture_path)
            .arg(&out_path)
            .output()
            .expect("run tlogcheck");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("tlogcheck (size {size}, old {old}):\n{stdout}{stderr}");
        assert!(
            out.status.success(),
            "Go rejected our log of {size} entries (old size {old}, seed {seed}):\n{stdout}{stderr}"
        );
        verify_go_output(&out_path);
    }
}
