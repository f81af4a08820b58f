// Command tlogcheck checks nekhebet-store's transparency log (src/tlog) against an independent
// implementation, Go's golang.org/x/mod/sumdb/tlog and sumdb/note, in both directions.
//
//	tlogcheck <fixture.json> <out.json>
//
// It reads the fixture tests/tlog_interop.rs wrote (a tree built by the Rust side: its tiles and
// entry bundles as a server would serve them, signed checkpoints, the keys, proofs), verifies all
// of it with the Go packages, and exits non-zero naming the first thing that does not verify.
// Then it builds a tree of its own with a key of its own and writes it to out.json for the Rust
// side to verify.
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// height is the tlog-tiles tile height: 256 hashes per tile.
const height = 8

// Inclusion is an inclusion proof of the entry at Index in the tree of Size entries.
type Inclusion struct {
	Index int64       `json:"index"`
	Size  int64       `json:"size"`
	Entry []byte      `json:"entry"`
	Proof []tlog.Hash `json:"proof"`
}

// Consistency is a consistency proof from the tree of OldSize entries to NewSize.
type Consistency struct {
	OldSize int64       `json:"old_size"`
	NewSize int64       `json:"new_size"`
	Proof   []tlog.Hash `json:"proof"`
}

// Envelope is a stored envelope whose SHA-256 is the entry at Index.
type Envelope struct {
	Index int64  `json:"index"`
	Bytes []byte `json:"bytes"`
}

// Fixture is what the Rust side serves and signs.
type Fixture struct {
	Origin        string            `json:"origin"`
	SignerKey     string            `json:"signer_key"`
	VerifierKey   string            `json:"verifier_key"`
	Checkpoint    string            `json:"checkpoint"`
	OldCheckpoint string            `json:"old_checkpoint"`
	Tiles         map[string][]byte `json:"tiles"`
	Inclusion     []Inclusion       `json:"inclusion"`
	Consistency   Consistency       `json:"consistency"`
	Envelopes     []Envelope        `json:"envelopes"`
}

// Output is the tree Go builds for the Rust side to verify.
type Output struct {
	Origin        string            `json:"origin"`
	SignerKey     string            `json:"signer_key"`
	VerifierKey   string            `json:"verifier_key"`
	Checkpoint    string            `json:"checkpoint"`
	OldCheckpoint string            `json:"old_checkpoint"`
	Size          int64             `json:"size"`
	OldSize       int64             `json:"old_size"`
	Entries       [][]byte          `json:"entries"`
	Tiles         map[string][]byte `json:"tiles"`
	Inclusion     []Inclusion       `json:"inclusion"`
	Consistency   Consistency       `json:"consistency"`
	Note          string            `json:"note"`
	NoteText      string            `json:"note_text"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tlogcheck <fixture.json> <out.json>")
		os.Exit(2)
	}
	if err := check(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck: Rust fixture rejected:", err)
		os.Exit(1)
	}
	if err := generate(os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck: generating the Go tree:", err)
		os.Exit(1)
	}
}

// c2spPath turns Go's tile path (tile/8/L/N, or tile/8/data/N for entries) into tlog-tiles'
// (tile/L/N, tile/entries/N).
func c2spPath(t tlog.Tile) string {
	p := strings.TrimPrefix(t.Path(), fmt.Sprintf("tile/%d/", height))
	if t.L == -1 {
		return "tile/entries/" + strings.TrimPrefix(p, "data/")
	}
	return "tile/" + p
}

// goTile parses a tlog-tiles path with Go's parser.
func goTile(path string) (tlog.Tile, error) {
	rest, ok := strings.CutPrefix(path, "tile/")
	if !ok {
		return tlog.Tile{}, fmt.Errorf("%q does not start with tile/", path)
	}
	if r, ok := strings.CutPrefix(rest, "entries/"); ok {
		rest = "data/" + r
	}
	t, err := tlog.ParseTilePath(fmt.Sprintf("tile/%d/%s", height, rest))
	if err != nil {
		return tlog.Tile{}, err
	}
	if t.H != height || c2spPath(t) != path {
		return tlog.Tile{}, fmt.Errorf("%q does not round-trip through Go's tile paths", path)
	}
	return t, nil
}

// tileReader serves the fixture's tiles to tlog.TileHashReader, as an HTTP client would.
type tileReader map[string][]byte

func (r tileReader) Height() int { return height }

func (r tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, ok := r[c2spPath(t)]
		if !ok {
			return nil, fmt.Errorf("tile %s is not served", c2spPath(t))
		}
		out[i] = data
	}
	return out, nil
}

func (r tileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// memHashes is an in-memory stored-hash list.
type memHashes []tlog.Hash

func (m memHashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(m)) {
			return nil, fmt.Errorf("stored hash %d missing", x)
		}
		out[i] = m[x]
	}
	return out, nil
}

func build(entries [][]byte) (memHashes, error) {
	var m memHashes
	for i, e := range entries {
		hs, err := tlog.StoredHashes(int64(i), e, m)
		if err != nil {
			return nil, err
		}
		m = append(m, hs...)
	}
	return m, nil
}

// parseCheckpoint parses c2sp.org/tlog-checkpoint text with the rules of tlog.ParseTree
// (which insists on the go.sum origin line, so cannot be used as is).
func parseCheckpoint(text string) (origin string, tree tlog.Tree, err error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || lines[0] == "" {
		return "", tlog.Tree{}, errors.New("malformed checkpoint: fewer than 3 lines")
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || n < 0 || lines[1] != strconv.FormatInt(n, 10) {
		return "", tlog.Tree{}, fmt.Errorf("malformed checkpoint size %q", lines[1])
	}
	h, err := tlog.ParseHash(lines[2])
	if err != nil {
		return "", tlog.Tree{}, fmt.Errorf("malformed checkpoint root %q", lines[2])
	}
	return lines[0], tlog.Tree{N: n, Hash: h}, nil
}

func openCheckpoint(msg, origin string, v note.Verifier) (tlog.Tree, error) {
	n, err := note.Open([]byte(msg), note.VerifierList(v))
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("note.Open: %w", err)
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Name != origin {
		return tlog.Tree{}, fmt.Errorf("note.Open: signatures %v", n.Sigs)
	}
	o, tree, err := parseCheckpoint(n.Text)
	if err != nil {
		return tlog.Tree{}, err
	}
	if o != origin {
		return tlog.Tree{}, fmt.Errorf("checkpoint origin %q, want %q", o, origin)
	}
	return tree, nil
}

func bundle(entries [][]byte) []byte {
	var b []byte
	for _, e := range entries {
		b = binary.BigEndian.AppendUint16(b, uint16(len(e)))
		b = append(b, e...)
	}
	return b
}

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var fx Fixture
	if err := json.Unmarshal(raw, &fx); err != nil {
		return fmt.Errorf("fixture: %w", err)
	}

	// Keys and checkpoints: note.Open with the Rust verifier key.
	verifier, err := note.NewVerifier(fx.VerifierKey)
	if err != nil {
		return fmt.Errorf("note.NewVerifier(%q): %w", fx.VerifierKey, err)
	}
	tree, err := openCheckpoint(fx.Checkpoint, fx.Origin, verifier)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	oldTree, err := openCheckpoint(fx.OldCheckpoint, fx.Origin, verifier)
	if err != nil {
		return fmt.Errorf("old checkpoint: %w", err)
	}
	// The Rust signer key works in Go, and Ed25519 being deterministic, Go's signature of the
	// same text is byte for byte the Rust one.
	signer, err := note.NewSigner(fx.SignerKey)
	if err != nil {
		return fmt.Errorf("note.NewSigner: %w", err)
	}
	text, _, _ := strings.Cut(fx.Checkpoint, "\n\n")
	resigned, err := note.Sign(&note.Note{Text: text + "\n"}, signer)
	if err != nil || string(resigned) != fx.Checkpoint {
		return fmt.Errorf("note.Sign with the Rust key gives %q (%v), Rust gave %q", resigned, err, fx.Checkpoint)
	}
	// Tampering is caught.
	tampered := strings.Replace(fx.Checkpoint, tree.Hash.String(), tlog.Hash{}.String(), 1)
	var invalid *note.InvalidSignatureError
	if _, err := note.Open([]byte(tampered), note.VerifierList(verifier)); !errors.As(err, &invalid) {
		return fmt.Errorf("tampered checkpoint: note.Open gave %v, want InvalidSignatureError", err)
	}
	_, otherV, _ := note.GenerateKey(rand.Reader, fx.Origin)
	other, _ := note.NewVerifier(otherV)
	var unverified *note.UnverifiedNoteError
	if _, err := note.Open([]byte(fx.Checkpoint), note.VerifierList(other)); !errors.As(err, &unverified) {
		return fmt.Errorf("checkpoint with another key: note.Open gave %v, want UnverifiedNoteError", err)
	}
	fmt.Printf("ok: checkpoints of sizes %d and %d open with the Rust verifier key\n", oldTree.N, tree.N)

	// The served tile set is exactly what Go's NewTiles says publishing old, then new, needs.
	want := map[string]bool{}
	for _, t := range append(tlog.NewTiles(height, 0, oldTree.N), tlog.NewTiles(height, oldTree.N, tree.N)...) {
		want[c2spPath(t)] = true
		if t.L == 0 {
			t.L = -1
			want[c2spPath(t)] = true
		}
	}
	for p := range fx.Tiles {
		if _, err := goTile(p); err != nil {
			return err
		}
		if !want[p] {
			return fmt.Errorf("served tile %s is not one Go's NewTiles lists", p)
		}
	}
	for p := range want {
		if _, ok := fx.Tiles[p]; !ok {
			return fmt.Errorf("tile %s is not served", p)
		}
	}

	// Tree hashes through tlog.TileHashReader, which authenticates every tile it reads.
	tr := tileReader(fx.Tiles)
	hr := tlog.TileHashReader(tree, tr)
	if th, err := tlog.TreeHash(tree.N, hr); err != nil || th != tree.Hash {
		return fmt.Errorf("tlog.TreeHash(%d) over the tiles = %v, %v; checkpoint says %v", tree.N, th, err, tree.Hash)
	}
	if th, err := tlog.TreeHash(oldTree.N, hr); err != nil || th != oldTree.Hash {
		return fmt.Errorf("tlog.TreeHash(%d) over the new tree's tiles = %v, %v; old checkpoint says %v", oldTree.N, th, err, oldTree.Hash)
	}
	oldHr := tlog.TileHashReader(oldTree, tr)
	if th, err := tlog.TreeHash(oldTree.N, oldHr); err != nil || th != oldTree.Hash {
		return fmt.Errorf("tlog.TreeHash(%d) over the old tree's tiles = %v, %v; old checkpoint says %v", oldTree.N, th, err, oldTree.Hash)
	}
	fmt.Printf("ok: tlog.TreeHash over the served tiles matches both checkpoints\n")

	// Every byte of every tile and bundle: rebuild the tree from the entry bundles with Go's
	// StoredHashes and compare with Go's ReadTileData and Go's bundle encoding.
	var entries [][]byte
	for n := int64(0); ; n++ {
		t := tlog.Tile{H: height, L: -1, N: n, W: 1 << height}
		data, ok := fx.Tiles[c2spPath(t)]
		if !ok {
			t.W = int(tree.N - n<<height)
			data, ok = fx.Tiles[c2spPath(t)]
		}
		if !ok {
			break
		}
		for rest := data; len(rest) > 0; {
			if len(rest) < 2 || len(rest) < 2+int(binary.BigEndian.Uint16(rest)) {
				return fmt.Errorf("bundle %s is truncated", c2spPath(t))
			}
			l := int(binary.BigEndian.Uint16(rest))
			entries = append(entries, rest[2:2+l])
			rest = rest[2+l:]
		}
		if int64(len(entries)) != n<<height+int64(t.W) {
			return fmt.Errorf("bundle %s holds the wrong number of entries", c2spPath(t))
		}
	}
	if int64(len(entries)) != tree.N {
		return fmt.Errorf("bundles hold %d entries, the tree %d", len(entries), tree.N)
	}
	for _, e := range entries {
		if len(e) != sha256.Size {
			return fmt.Errorf("an entry is %d bytes, not a SHA-256", len(e))
		}
	}
	mem, err := build(entries)
	if err != nil {
		return err
	}
	if th, err := tlog.TreeHash(tree.N, mem); err != nil || th != tree.Hash {
		return fmt.Errorf("Go's tree of the served entries has root %v (%v), checkpoint says %v", th, err, tree.Hash)
	}
	for p, data := range fx.Tiles {
		t, _ := goTile(p)
		var wantData []byte
		if t.L == -1 {
			lo := t.N << height
			wantData = bundle(entries[lo : lo+int64(t.W)])
		} else if wantData, err = tlog.ReadTileData(t, mem); err != nil {
			return err
		}
		if !bytes.Equal(data, wantData) {
			return fmt.Errorf("tile %s differs from Go's", p)
		}
	}
	fmt.Printf("ok: all %d tiles and bundles are byte for byte Go's\n", len(fx.Tiles))

	for _, e := range fx.Envelopes {
		if e.Index < 0 || e.Index >= tree.N {
			return fmt.Errorf("envelope index %d is not in the tree", e.Index)
		}
		if sum := sha256.Sum256(e.Bytes); !bytes.Equal(sum[:], entries[e.Index]) {
			return fmt.Errorf("entry %d is not the SHA-256 of its envelope", e.Index)
		}
	}

	// Proofs: tlog.CheckRecord / CheckTree accept the Rust proofs, which are exactly the ones
	// Go's ProveRecord / ProveTree derive from the tiles; a flipped bit is rejected.
	roots := map[int64]tlog.Hash{tree.N: tree.Hash, oldTree.N: oldTree.Hash}
	for _, p := range fx.Inclusion {
		root, ok := roots[p.Size]
		if !ok || p.Index < 0 || p.Index >= p.Size {
			return fmt.Errorf("inclusion proof of index %d for unknown size %d", p.Index, p.Size)
		}
		if !bytes.Equal(p.Entry, entries[p.Index]) {
			return fmt.Errorf("inclusion proof entry %d is not the served one", p.Index)
		}
		leaf := tlog.RecordHash(p.Entry)
		if err := tlog.CheckRecord(p.Proof, p.Size, root, p.Index, leaf); err != nil {
			return fmt.Errorf("tlog.CheckRecord(index %d, size %d): %w", p.Index, p.Size, err)
		}
		goProof, err := tlog.ProveRecord(p.Size, p.Index, hr)
		if err != nil || !slices.Equal(goProof, p.Proof) {
			return fmt.Errorf("tlog.ProveRecord(%d, %d) = %v (%v), Rust sent %v", p.Size, p.Index, goProof, err, p.Proof)
		}
		if len(p.Proof) > 0 {
			p.Proof[0][0] ^= 1
			if tlog.CheckRecord(p.Proof, p.Size, root, p.Index, leaf) == nil {
				return fmt.Errorf("tampered inclusion proof %d accepted", p.Index)
			}
		}
		if tlog.CheckRecord(goProof, p.Size, root, p.Index, tlog.RecordHash(nil)) == nil {
			return fmt.Errorf("inclusion proof %d accepted for another entry", p.Index)
		}
	}
	c := fx.Consistency
	if c.OldSize != oldTree.N || c.NewSize != tree.N {
		return fmt.Errorf("consistency proof is %d -> %d, checkpoints %d -> %d", c.OldSize, c.NewSize, oldTree.N, tree.N)
	}
	if err := tlog.CheckTree(c.Proof, tree.N, tree.Hash, oldTree.N, oldTree.Hash); err != nil {
		return fmt.Errorf("tlog.CheckTree(%d -> %d): %w", oldTree.N, tree.N, err)
	}
	goProof, err := tlog.ProveTree(tree.N, oldTree.N, hr)
	if err != nil || !slices.Equal(goProof, c.Proof) {
		return fmt.Errorf("tlog.ProveTree(%d, %d) = %v (%v), Rust sent %v", tree.N, oldTree.N, goProof, err, c.Proof)
	}
	if len(c.Proof) > 0 {
		c.Proof[len(c.Proof)-1][31] ^= 0x80
		if tlog.CheckTree(c.Proof, tree.N, tree.Hash, oldTree.N, oldTree.Hash) == nil {
			return errors.New("tampered consistency proof accepted")
		}
	}
	fmt.Printf("ok: %d inclusion proofs and the consistency proof %d -> %d verify\n", len(fx.Inclusion), oldTree.N, tree.N)
	return nil
}

func randInt(lo, hi int64) int64 {
	n, err := rand.Int(rand.Reader, big.NewInt(hi-lo+1))
	if err != nil {
		panic(err)
	}
	return lo + n.Int64()
}

func generate(path string) error {
	const origin = "go.example/tlogcheck"
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return err
	}
	size := randInt(1, 3*256*256/2)
	oldSize := randInt(1, size)
	entries := make([][]byte, size)
	for i := range entries {
		entries[i] = make([]byte, 32)
		rand.Read(entries[i])
	}
	mem, err := build(entries)
	if err != nil {
		return err
	}
	out := Output{
		Origin: origin, SignerKey: skey, VerifierKey: vkey, Size: size, OldSize: oldSize,
		Entries: entries, Tiles: map[string][]byte{},
	}
	for i, n := range []int64{size, oldSize} {
		root, err := tlog.TreeHash(n, mem)
		if err != nil {
			return err
		}
		msg, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\n", origin, n, root)}, signer)
		if err != nil {
			return err
		}
		if i == 0 {
			out.Checkpoint = string(msg)
		} else {
			out.OldCheckpoint = string(msg)
		}
	}
	for _, t := range append(tlog.NewTiles(height, 0, oldSize), tlog.NewTiles(height, oldSize, size)...) {
		data, err := tlog.ReadTileData(t, mem)
		if err != nil {
			return err
		}
		out.Tiles[c2spPath(t)] = data
		if t.L == 0 {
			lo := t.N << height
			t.L = -1
			out.Tiles[c2spPath(t)] = bundle(entries[lo : lo+int64(t.W)])
		}
	}
	for _, p := range [][2]int64{{0, size}, {size - 1, size}, {oldSize - 1, oldSize}, {randInt(0, size-1), size}, {randInt(0, oldSize-1), oldSize}} {
		proof, err := tlog.ProveRecord(p[1], p[0], mem)
		if err != nil {
			return err
		}
		out.Inclusion = append(out.Inclusion, Inclusion{Index: p[0], Size: p[1], Entry: entries[p[0]], Proof: proof})
	}
	proof, err := tlog.ProveTree(size, oldSize, mem)
	if err != nil {
		return err
	}
	out.Consistency = Consistency{OldSize: oldSize, NewSize: size, Proof: proof}
	// A note that is not a checkpoint, with a blank line and non-ASCII in its text.
	out.NoteText = "Ognuno sta solo sul cuor della terra\n\ned è subito sera.\n"
	msg, err := note.Sign(&note.Note{Text: out.NoteText}, signer)
	if err != nil {
		return err
	}
	out.Note = string(msg)

	raw, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Printf("ok: wrote a Go tree of %d entries (old size %d), verifier key %s\n", size, oldSize, vkey)
	return os.WriteFile(path, raw, 0o644)
}
