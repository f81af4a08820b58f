// Command tlogverify verifies a running `nekhebet-store serve` as a client of its transparency log
// would, with Go's golang.org/x/mod/sumdb/tlog and sumdb/note only (no code of the store):
//
//	tlogverify -url http://127.0.0.1:8080 -token T -vkey NAME+HASH+KEY -origin NAME \
//	    [-old old-checkpoint.txt] [-save checkpoint.txt] ID...
//
// It fetches /log/checkpoint and verifies its signature with the verifier key; reads the tree
// through the tiles under /log/tile/ (tlog.TileHashReader checks every tile against the signed
// root) and recomputes the root; for every event ID it fetches the envelope bytes from
// /v1/events/{id}, computes the leaf (SHA-256 of the bytes, then RFC 6962's leaf hash), checks it
// against the entry bundle, and checks the inclusion proof of /v1/events/{id}/proof (against the
// checkpoint it names, and as tlog.ProveRecord derives it from the tiles); with -old, it checks
// /log/consistency between that earlier checkpoint and this one (and as tlog.ProveTree derives it
// from the tiles). It prints one JSON line with what it verified and exits 1 naming the first
// thing that does not verify.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const height = 8

var (
	base  = flag.String("url", "", "the server's base URL")
	token = flag.String("token", "", "bearer token")
	vkey  = flag.String("vkey", "", "the log's note verifier key")
	org   = flag.String("origin", "", "the log's origin")
	old   = flag.String("old", "", "an earlier checkpoint (signed note) to check consistency with")
	save  = flag.String("save", "", "write the verified checkpoint here")
)

func get(path string) ([]byte, error) {
	req, err := http.NewRequest("GET", *base+path, nil)
	if err != nil {
		return nil, err
	}
	if *token != "" {
		req.Header.Set("Authorization", "Bearer "+*token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return body, nil
}

// checkpoint opens a signed checkpoint note with the verifier key and parses its body
// (C2SP tlog-checkpoint: origin, size, base64 root).
func checkpoint(msg []byte) (tlog.Tree, error) {
	verifier, err := note.NewVerifier(*vkey)
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("verifier key: %w", err)
	}
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("checkpoint signature: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != *org {
		return tlog.Tree{}, fmt.Errorf("checkpoint body %q: not a checkpoint of %s", n.Text, *org)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("checkpoint size %q: %w", lines[1], err)
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("checkpoint root %q: %w", lines[2], err)
	}
	return tlog.Tree{N: size, Hash: root}, nil
}

// c2spPath turns Go's tile path (tile/8/L/N, tile/8/data/N) into tlog-tiles' (tile/L/N,
// tile/entries/N).
func c2spPath(t tlog.Tile) string {
	p := strings.TrimPrefix(t.Path(), fmt.Sprintf("tile/%d/", height))
	if t.L == -1 {
		return "tile/entries/" + strings.TrimPrefix(p, "data/")
	}
	return "tile/" + p
}

// tiles reads tiles over HTTP, for tlog.TileHashReader.
type tiles struct{ fetched int }

func (r *tiles) Height() int { return height }

func (r *tiles) ReadTiles(ts []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(ts))
	for i, t := range ts {
		data, err := get("/log/" + c2spPath(t))
		if err != nil {
			return nil, err
		}
		r.fetched++
		out[i] = data
	}
	return out, nil
}

func (r *tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func hashes(list []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(list))
	for i, s := range list {
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(raw) != tlog.HashSize {
			return nil, fmt.Errorf("proof hash %q is not 32 bytes of base64", s)
		}
		copy(out[i][:], raw)
	}
	return out, nil
}

func equal(a, b []tlog.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// bundleEntry is entry i of an entry bundle (uint16 big-endian length prefixes).
func bundleEntry(data []byte, i int) ([]byte, error) {
	for n := 0; ; n++ {
		if len(data) < 2 {
			return nil, errors.New("entry bundle is truncated")
		}
		l := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+l {
			return nil, errors.New("entry bundle is truncated")
		}
		if n == i {
			return data[2 : 2+l], nil
		}
		data = data[2+l:]
	}
}

type proofBody struct {
	Index      int64    `json:"index"`
	Checkpoint string   `json:"checkpoint"`
	Proof      []string `json:"proof"`
}

type consistencyBody struct {
	From  int64    `json:"from"`
	To    int64    `json:"to"`
	Proof []string `json:"proof"`
}

type report struct {
	Size        int64  `json:"size"`
	Root        string `json:"root"`
	Events      int    `json:"events"`
	Consistency *int64 `json:"consistency_from"`
	Tiles       int    `json:"tiles_fetched"`
}

func run() (report, error) {
	var rep report
	msg, err := get("/log/checkpoint")
	if err != nil {
		return rep, err
	}
	tree, err := checkpoint(msg)
	if err != nil {
		return rep, err
	}
	tr := &tiles{}
	thr := tlog.TileHashReader(tree, tr)
	root, err := tlog.TreeHash(tree.N, thr)
	if err != nil {
		return rep, fmt.Errorf("reading the tree of %d through its tiles: %w", tree.N, err)
	}
	if root != tree.Hash {
		return rep, fmt.Errorf("the tiles give root %v, the checkpoint says %v", root, tree.Hash)
	}
	rep.Size, rep.Root = tree.N, tree.Hash.String()

	for _, id := range flag.Args() {
		envelope, err := get("/v1/events/" + id)
		if err != nil {
			return rep, err
		}
		entry := sha256.Sum256(envelope)
		leaf := tlog.RecordHash(entry[:])
		raw, err := get("/v1/events/" + id + "/proof")
		if err != nil {
			return rep, err
		}
		var p proofBody
		if err := json.Unmarshal(raw, &p); err != nil {
			return rep, fmt.Errorf("proof of %s: %w", id, err)
		}
		at, err := checkpoint([]byte(p.Checkpoint))
		if err != nil {
			return rep, fmt.Errorf("the checkpoint in the proof of %s: %w", id, err)
		}
		proof, err := hashes(p.Proof)
		if err != nil {
			return rep, err
		}
		if err := tlog.CheckRecord(proof, at.N, at.Hash, p.Index, leaf); err != nil {
			return rep, fmt.Errorf("event %s (leaf %d): the inclusion proof does not verify: %w", id, p.Index, err)
		}
		if at.N > tree.N {
			return rep, fmt.Errorf("event %s: proof against size %d beyond the checkpoint %d", id, at.N, tree.N)
		}
		ours, err := tlog.ProveRecord(tree.N, p.Index, thr)
		if err != nil {
			return rep, fmt.Errorf("event %s: proving leaf %d from the tiles: %w", id, p.Index, err)
		}
		if err := tlog.CheckRecord(ours, tree.N, tree.Hash, p.Index, leaf); err != nil {
			return rep, fmt.Errorf("event %s: leaf %d is not in the tiled tree: %w", id, p.Index, err)
		}
		if at.N == tree.N && !equal(ours, proof) {
			return rep, fmt.Errorf("event %s: the server's proof differs from the one the tiles give", id)
		}
		// The bundle as a client of this checkpoint fetches it: full, or as wide as the tree.
		n := p.Index >> height
		bundleTile := tlog.Tile{H: height, L: -1, N: n, W: int(min(1<<height, tree.N-n<<height))}
		bundle, err := get("/log/" + c2spPath(bundleTile))
		if err != nil {
			return rep, err
		}
		got, err := bundleEntry(bundle, int(p.Index%(1<<height)))
		if err != nil {
			return rep, fmt.Errorf("bundle %s: %w", c2spPath(bundleTile), err)
		}
		if !bytes.Equal(got, entry[:]) {
			return rep, fmt.Errorf("event %s: the entry bundle holds %x at leaf %d, the envelope hashes to %x", id, got, p.Index, entry)
		}
		rep.Events++
	}

	if *old != "" {
		msg, err := os.ReadFile(*old)
		if err != nil {
			return rep, err
		}
		before, err := checkpoint(msg)
		if err != nil {
			return rep, fmt.Errorf("the earlier checkpoint: %w", err)
		}
		raw, err := get(fmt.Sprintf("/log/consistency?from=%d&to=%d", before.N, tree.N))
		if err != nil {
			return rep, err
		}
		var c consistencyBody
		if err := json.Unmarshal(raw, &c); err != nil {
			return rep, err
		}
		proof, err := hashes(c.Proof)
		if err != nil {
			return rep, err
		}
		if err := tlog.CheckTree(proof, tree.N, tree.Hash, before.N, before.Hash); err != nil {
			return rep, fmt.Errorf("consistency %d -> %d does not verify: %w", before.N, tree.N, err)
		}
		ours, err := tlog.ProveTree(tree.N, before.N, thr)
		if err != nil {
			return rep, fmt.Errorf("proving consistency from the tiles: %w", err)
		}
		if !equal(ours, proof) {
			return rep, errors.New("the server's consistency proof differs from the one the tiles give")
		}
		rep.Consistency = &before.N
	}
	if *save != "" {
		if err := os.WriteFile(*save, msg, 0o644); err != nil {
			return rep, err
		}
	}
	rep.Tiles = tr.fetched
	return rep, nil
}

func main() {
	flag.Parse()
	rep, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlogverify:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(rep)
	fmt.Println(string(out))
}
