// Package release signs and checks release manifests (issue 16), compares versions, reads an
// executable's architecture and keeps the station's version state: which installed version is
// committed, which one is on trial, and which one a rollback returns to.
//
// The wire types (Manifest, Release) are in agent/contract; this package is the logic that the
// operator's `station fleet release`, the agent and the launcher in `station run` share.
package release

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"station.dev/agent/agent/contract"
)

// Errors of Open. Each wraps the detail; errors.Is tells the kind.
var (
	// ErrUnauthorized: no configured release key made the signature.
	ErrUnauthorized = errors.New("release: not signed by a trusted release key")
	// ErrMalformed: the release or its manifest cannot be read or misses a field.
	ErrMalformed = errors.New("release: malformed")
)

// KeyID is the key id of a public key: the first 8 bytes of its SHA-256, base64url.
func KeyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(h[:8])
}

// ParseKeys reads public keys written as base64 (standard or URL alphabet, padded or not) of the
// raw 32 bytes, as in [update] public_keys.
func ParseKeys(keys []string) ([]ed25519.PublicKey, error) {
	out := make([]ed25519.PublicKey, 0, len(keys))
	for i, k := range keys {
		b, err := decode64(strings.TrimSpace(k))
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key %d: want the base64 of a 32-byte Ed25519 public key", i)
		}
		out = append(out, ed25519.PublicKey(b))
	}
	return out, nil
}

func decode64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "+/") {
		return base64.RawStdEncoding.DecodeString(s)
	}
	return base64.RawURLEncoding.DecodeString(s)
}

// Sign makes a Release of m with key.
func Sign(m contract.Manifest, key ed25519.PrivateKey) (contract.Release, error) {
	if err := Check(m); err != nil {
		return contract.Release{}, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return contract.Release{}, err
	}
	return contract.Release{
		Manifest: base64.RawURLEncoding.EncodeToString(b),
		Sig:      base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, b)),
		Kid:      KeyID(key.Public().(ed25519.PublicKey)),
	}, nil
}

// Open checks r's signature against keys (only the key its kid names, or every key without a
// kid) and returns its manifest. A bad signature or an unknown key is ErrUnauthorized; a
// manifest that cannot be read is ErrMalformed.
func Open(r contract.Release, keys []ed25519.PublicKey) (*contract.Manifest, error) {
	b, err := base64.RawURLEncoding.DecodeString(r.Manifest)
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("%w: manifest is not base64url", ErrMalformed)
	}
	sig, err := base64.RawURLEncoding.DecodeString(r.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: sig is not a base64url Ed25519 signature", ErrUnauthorized)
	}
	ok := false
	for _, k := range keys {
		if r.Kid != "" && KeyID(k) != r.Kid {
			continue
		}
		if ed25519.Verify(k, b, sig) {
			ok = true
			break
		}
	}
	if !ok {
		if len(keys) == 0 {
			return nil, fmt.Errorf("%w: the station has no [update] public_keys", ErrUnauthorized)
		}
		return nil, fmt.Errorf("%w: kid %q", ErrUnauthorized, r.Kid)
	}
	return Peek(r)
}

// Peek reads r's manifest without checking the signature (the operator's side: stations
// check it).
func Peek(r contract.Release) (*contract.Manifest, error) {
	b, err := base64.RawURLEncoding.DecodeString(r.Manifest)
	if err != nil {
		return nil, fmt.Errorf("%w: manifest is not base64url", ErrMalformed)
	}
	var m contract.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	return &m, Check(m)
}

// Check reports a manifest that misses a field or holds a bad value (ErrMalformed).
func Check(m contract.Manifest) error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(f, a...)) }
	if _, err := ParseVersion(m.Version); err != nil {
		return bad("version: %v", err)
	}
	if m.Arch == "" {
		return bad("arch is missing")
	}
	if h, err := hexDecode(m.SHA256); err != nil || len(h) != sha256.Size {
		return bad("sha256: want 64 lower-case hex digits")
	}
	if m.Size <= 0 {
		return bad("size: want a positive byte count")
	}
	iss, err1 := time.Parse(time.RFC3339Nano, m.IssuedAt)
	exp, err2 := time.Parse(time.RFC3339Nano, m.ExpiresAt)
	if err1 != nil || err2 != nil {
		return bad("issued_at and expires_at: want RFC 3339 times")
	}
	if !exp.After(iss) {
		return bad("expires_at is not after issued_at")
	}
	return nil
}

func hexDecode(s string) ([]byte, error) {
	if strings.ToLower(s) != s {
		return nil, errors.New("upper case")
	}
	return hex.DecodeString(s)
}

// Expired reports whether the manifest has expired at now, the station's trusted time (the
// synchronised wall clock, or a floor that never goes back while it is not synchronised). A
// manifest whose expires_at cannot be read counts as expired.
func Expired(m *contract.Manifest, now time.Time) bool {
	exp, err := time.Parse(time.RFC3339Nano, m.ExpiresAt)
	return err != nil || !now.Before(exp)
}

// ELF machine numbers (e_machine) with a GOARCH name. The header is read by hand: debug/elf
// would add a quarter of a megabyte to the binary for two fields.
var elfMachines = map[uint16]string{3: "386", 40: "arm", 62: "amd64", 183: "arm64", 243: "riscv64"}

// ELFArch returns the GOARCH name of an ELF executable's machine (arm, arm64, amd64, 386,
// riscv64), or an error for any other file.
func ELFArch(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var h [20]byte
	if _, err := io.ReadFull(f, h[:]); err != nil || string(h[:4]) != "\x7fELF" {
		return "", fmt.Errorf("%s is not an ELF executable: give --arch", path)
	}
	var order binary.ByteOrder = binary.LittleEndian
	if h[5] == 2 {
		order = binary.BigEndian
	}
	m := order.Uint16(h[18:20])
	if a, ok := elfMachines[m]; ok && (a != "riscv64" || h[4] == 2) {
		return a, nil
	}
	return "", fmt.Errorf("%s: ELF machine %d has no GOARCH name here: give --arch", path, m)
}

// FileDigest returns the SHA-256 (hex) and size of a file, read in a stream.
func FileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
