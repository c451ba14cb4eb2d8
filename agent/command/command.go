// Package command holds the fleet command envelope (DESIGN §3.5): the wire types, the checks a
// station makes on what arrives on its command topics, and Ed25519 signing.
//
// A plain command is a JSON object:
//
//	{"id":"…","name":"ping","args":{…},"issued_at":"…","expires_at":"…","target":"<station id>|*"}
//
// A signed command wraps the plain command's exact bytes:
//
//	{"signed":"<base64url>","sig":"<base64url Ed25519 signature of those bytes>","kid":"…"}
//
// Both base64 fields use the URL alphabet without padding. The signature covers the plain
// command's bytes as sent, so nothing needs to be re-encoded to verify it. A signed command must
// carry issued_at and expires_at: a signature that never expires could be replayed for ever.
//
// Limits are in bytes: an id or a name is 1 to 64 bytes of printable ASCII, a payload at most
// contract.MaxCommandBytes, nested at most MaxDepth levels (checked before anything is decoded).
//
// Key ids: the kid of a public key is the first 8 bytes of the SHA-256 digest of the 32 raw key
// bytes, in base64url without padding (11 characters); see KeyID. It only selects the key to try;
// the signature is what authorises.
//
// The package is pure: it knows neither the station's id nor its clock. Decode checks that a
// payload is a well-formed and, when keys are configured, authentic command; the station then
// checks the target (Command.For) and the expiry (Command.Expired) itself.
package command

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/jsonlimit"
)

// maxNameLen bounds a command name, in bytes: names are logged and must stay short.
const maxNameLen = 64

// MaxDepth is how deeply a command may nest objects and arrays (the envelope, and the plain
// command inside it, each). Deeper input is refused before it is decoded.
const MaxDepth = jsonlimit.DefaultMaxDepth

func errorf(code, format string, args ...any) *contract.Error {
	return &contract.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Keys is the set of fleet command public keys a station trusts. The zero value and nil hold no
// keys. A Keys is immutable and safe for concurrent use.
type Keys struct {
	keys []pubKey
}

type pubKey struct {
	kid string
	pub ed25519.PublicKey
}

// ParseKeys parses raw 32-byte Ed25519 public keys written in base64, standard or URL alphabet,
// with or without padding (the [commands] public_keys of the configuration). A key listed twice
// counts once. An empty list gives an empty set: commands are then not authenticated.
func ParseKeys(b64 []string) (*Keys, error) {
	k := &Keys{}
	seen := make(map[string]bool, len(b64))
	for i, s := range b64 {
		raw, err := decodeAnyBase64(s)
		if err != nil {
			return nil, fmt.Errorf("command: public key %d: not base64", i+1)
		}
		if len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("command: public key %d: a raw Ed25519 public key is %d bytes, this is %d", i+1, ed25519.PublicKeySize, len(raw))
		}
		pub := ed25519.PublicKey(raw)
		kid := KeyID(pub)
		if seen[string(raw)] {
			continue
		}
		seen[string(raw)] = true
		k.keys = append(k.keys, pubKey{kid: kid, pub: pub})
	}
	return k, nil
}

// Len returns the number of keys; a nil Keys has none.
func (k *Keys) Len() int {
	if k == nil {
		return 0
	}
	return len(k.keys)
}

// IDs returns the key ids, in the order the keys were given.
func (k *Keys) IDs() []string {
	if k == nil {
		return nil
	}
	ids := make([]string, len(k.keys))
	for i, p := range k.keys {
		ids[i] = p.kid
	}
	return ids
}

// verify reports whether sig is a valid signature of msg by the key named kid, or by any key
// when kid is empty.
func (k *Keys) verify(kid string, msg, sig []byte) bool {
	for _, p := range k.keys {
		if kid != "" && p.kid != kid {
			continue
		}
		if ed25519.Verify(p.pub, msg, sig) {
			return true
		}
	}
	return false
}

// decodeAnyBase64 accepts the standard or URL alphabet, with or without padding.
func decodeAnyBase64(s string) ([]byte, error) {
	s = strings.TrimRight(strings.TrimSpace(s), "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.Strict().DecodeString(s)
	}
	return base64.RawStdEncoding.Strict().DecodeString(s)
}

// b64 is the envelope's encoding: base64url without padding, strict (no padding, no line
// breaks, canonical trailing bits).
var b64 = base64.RawURLEncoding.Strict()

// KeyID returns the key id of a public key: the first 8 bytes of the SHA-256 digest of the raw
// 32 key bytes, base64url without padding.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:8])
}

// NewID returns a fresh random command id: 32 hexadecimal digits (128 bits).
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail (Go 1.24+ crashes the program instead)
	return hex.EncodeToString(b[:])
}

// Sign returns the signed envelope of the plain command bytes plain, signed with priv and
// labelled with kid (omitted when empty; usually KeyID of priv's public key). plain must be a
// well-formed plain command, and the envelope must fit in contract.MaxCommandBytes.
func Sign(priv ed25519.PrivateKey, kid string, plain []byte) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("command: sign: an Ed25519 private key is %d bytes, this is %d", ed25519.PrivateKeySize, len(priv))
	}
	if _, _, e := Decode(plain, nil); e != nil {
		return nil, fmt.Errorf("command: sign: not a well-formed plain command: %w", e)
	}
	var probe map[string]json.RawMessage
	if json.Unmarshal(plain, &probe) == nil {
		if _, ok := probe["signed"]; ok {
			return nil, errors.New("command: sign: already a signed envelope")
		}
		if _, _, e := decodeInner(plain, probe, true); e != nil {
			return nil, fmt.Errorf("command: sign: %w", e)
		}
	}
	env, err := json.Marshal(contract.Signed{
		Signed: b64.EncodeToString(plain),
		Sig:    b64.EncodeToString(ed25519.Sign(priv, plain)),
		Kid:    kid,
	})
	if err != nil {
		return nil, fmt.Errorf("command: sign: %w", err)
	}
	if len(env) > contract.MaxCommandBytes {
		return nil, fmt.Errorf("command: sign: the signed command is %d bytes, more than the %d a station accepts", len(env), contract.MaxCommandBytes)
	}
	return env, nil
}

// Decode turns a payload from a command topic into a command. It checks, in this order:
//
//  1. size: more than contract.MaxCommandBytes is bad_request (the id is still read, so the sender hears why);
//  2. a JSON object, in the plain or the signed form (an object with a "signed" or "sig"
//     member is an envelope);
//  3. authenticity: with keys configured, a plain command is unauthorized, and so is a signed one
//     whose signature does not verify with the key its kid names (with any key when kid is
//     absent). With no keys configured a signed command's inner command is accepted without
//     verification: the station has nothing to verify with, and a fleet can start signing before
//     every station has its keys;
//  4. the inner command: id a string of 1 to 64 bytes of printable ASCII, name likewise, target
//     a station id or "*", issued_at and expires_at RFC 3339 times if present (both required in
//     a signed command, expires_at after issued_at), args a JSON object if present (null counts
//     as absent for the optional members); anything else is bad_request. Unknown members are
//     ignored.
//
// Before any of it, input nested more than MaxDepth levels is bad_request (an oversize one is
// then not read for its id either).
//
// Decode does not check the target or the expiry: the station does, with its id and clock.
//
// cmd is nil only when no valid id can be read; otherwise it has at least ID set, so the station
// can answer with the id the sender used (for an unauthorized command, the id it claims). inner
// is the plain command's bytes (the payload itself for a plain command), or nil when they could
// not be extracted or the payload is too large. err is nil when the command is well-formed and
// authentic; then cmd is complete.
func Decode(payload []byte, keys *Keys) (cmd *contract.Command, inner []byte, err *contract.Error) {
	if jsonlimit.Check(payload, MaxDepth) != nil {
		return nil, nil, errorf(contract.CodeBadRequest, "JSON nested more than %d levels deep", MaxDepth)
	}
	if len(payload) > contract.MaxCommandBytes {
		return idOnly(claimedID(payload, true)), nil, errorf(contract.CodeBadRequest, "command of %d bytes is larger than %d", len(payload), contract.MaxCommandBytes)
	}
	var top map[string]json.RawMessage
	if e := unmarshalObject(payload, &top); e != nil {
		return nil, nil, e
	}
	_, hasSigned := top["signed"]
	_, hasSig := top["sig"]
	if !hasSigned && !hasSig {
		if keys.Len() > 0 {
			return idOnly(readID(top)), payload, errorf(contract.CodeUnauthorized, "unsigned command: this station accepts only signed commands")
		}
		return decodeInner(payload, top, false)
	}

	// Signed form. The inner bytes are read leniently first, only to learn the claimed id for
	// the answer; the envelope is then checked strictly.
	var env contract.Signed
	signedB, e := stringMember(top, "signed", true)
	if e != nil {
		return idOnly(claimedSignedID(top)), nil, e
	}
	env.Signed = signedB
	if env.Sig, e = stringMember(top, "sig", true); e != nil {
		return idOnly(claimedSignedID(top)), nil, e
	}
	if env.Kid, e = stringMember(top, "kid", false); e != nil {
		return idOnly(claimedSignedID(top)), nil, e
	}
	plain, err1 := b64.DecodeString(env.Signed)
	if err1 != nil {
		return idOnly(claimedSignedID(top)), nil, errorf(contract.CodeBadRequest, "signed: not base64url without padding")
	}
	if jsonlimit.Check(plain, MaxDepth) != nil {
		return nil, nil, errorf(contract.CodeBadRequest, "signed: JSON nested more than %d levels deep", MaxDepth)
	}
	sig, err1 := b64.DecodeString(env.Sig)
	if err1 != nil || len(sig) != ed25519.SignatureSize {
		return idOnly(claimedSignedID(top)), plain, errorf(contract.CodeBadRequest, "sig: not a %d-byte Ed25519 signature in base64url without padding", ed25519.SignatureSize)
	}
	if keys.Len() > 0 && !keys.verify(env.Kid, plain, sig) {
		msg := "signature does not verify with any configured key"
		if env.Kid != "" {
			msg = "signature does not verify with the key kid names"
			if !keys.hasKid(env.Kid) {
				msg = "kid names no configured key"
			}
		}
		return idOnly(idFromBytes(plain)), plain, errorf(contract.CodeUnauthorized, "%s", msg)
	}
	var innerTop map[string]json.RawMessage
	if e := unmarshalObject(plain, &innerTop); e != nil {
		e.Message = "signed: " + e.Message
		return nil, plain, e
	}
	if _, nested := innerTop["signed"]; nested {
		return idOnly(readID(innerTop)), plain, errorf(contract.CodeBadRequest, "signed: holds another envelope, not a plain command")
	}
	return decodeInner(plain, innerTop, true)
}

func (k *Keys) hasKid(kid string) bool {
	for _, p := range k.keys {
		if p.kid == kid {
			return true
		}
	}
	return false
}

func idOnly(id string) *contract.Command {
	if id == "" {
		return nil
	}
	return &contract.Command{ID: id}
}

// unmarshalObject decodes b as one JSON object into top.
func unmarshalObject(b []byte, top *map[string]json.RawMessage) *contract.Error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return errorf(contract.CodeBadRequest, "empty payload, want a JSON object")
	}
	if b[0] != '{' {
		return errorf(contract.CodeBadRequest, "not a JSON object")
	}
	if err := json.Unmarshal(b, top); err != nil || *top == nil {
		return errorf(contract.CodeBadRequest, "not valid JSON")
	}
	return nil
}

// decodeInner checks the members of a plain command; signed says it came in an envelope, which
// requires issued_at and expires_at.
func decodeInner(raw []byte, top map[string]json.RawMessage, signed bool) (*contract.Command, []byte, *contract.Error) {
	id, e := stringMember(top, "id", true)
	if e != nil {
		return nil, raw, e
	}
	if !validID(id) {
		return nil, raw, errorf(contract.CodeBadRequest, "id: want 1 to %d bytes of printable ASCII", contract.MaxCommandID)
	}
	c := &contract.Command{ID: id}
	if c.Name, e = stringMember(top, "name", true); e != nil {
		return c, raw, e
	}
	if len(c.Name) < 1 || len(c.Name) > maxNameLen || !printableASCII(c.Name) {
		return c, raw, errorf(contract.CodeBadRequest, "name: want 1 to %d bytes of printable ASCII", maxNameLen)
	}
	if c.Target, e = stringMember(top, "target", true); e != nil {
		return c, raw, e
	}
	if c.Target != contract.FleetTarget && !contract.ValidStationID(c.Target) {
		return c, raw, errorf(contract.CodeBadRequest, "target: want a station id or %q", contract.FleetTarget)
	}
	var issued, expires time.Time
	for _, m := range []struct {
		name string
		s    *string
		t    *time.Time
	}{{"issued_at", &c.IssuedAt, &issued}, {"expires_at", &c.ExpiresAt, &expires}} {
		if *m.s, e = stringMember(top, m.name, signed); e != nil {
			if signed {
				e.Message += " (a signed command must carry issued_at and expires_at)"
			}
			return c, raw, e
		}
		if *m.s == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, *m.s)
		if err != nil {
			return c, raw, errorf(contract.CodeBadRequest, "%s: not an RFC 3339 time", m.name)
		}
		*m.t = t
	}
	if !issued.IsZero() && !expires.IsZero() && !expires.After(issued) {
		return c, raw, errorf(contract.CodeBadRequest, "expires_at: must be after issued_at")
	}
	if a, ok := top["args"]; ok && !isNull(a) {
		if t := bytes.TrimSpace(a); len(t) == 0 || t[0] != '{' {
			return c, raw, errorf(contract.CodeBadRequest, "args: want a JSON object")
		}
		c.Args = append(json.RawMessage(nil), a...)
	}
	return c, raw, nil
}

func isNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }

// stringMember reads member name as a string. A missing member (or null, for an optional one)
// gives "".
func stringMember(top map[string]json.RawMessage, name string, required bool) (string, *contract.Error) {
	v, ok := top[name]
	if !ok || (!required && isNull(v)) {
		if required {
			return "", errorf(contract.CodeBadRequest, "%s: missing", name)
		}
		return "", nil
	}
	var s string
	if t := bytes.TrimSpace(v); len(t) == 0 || t[0] != '"' || json.Unmarshal(t, &s) != nil {
		return "", errorf(contract.CodeBadRequest, "%s: want a string", name)
	}
	return s, nil
}

// validID reports whether id is a command id: 1 to contract.MaxCommandID bytes of printable
// ASCII. The limit is in bytes so that every place that keeps an id (the ledger, logs, responses)
// agrees on it.
func validID(id string) bool {
	return len(id) >= 1 && len(id) <= contract.MaxCommandID && printableASCII(id)
}

// ValidID reports whether id is a valid command id.
func ValidID(id string) bool { return validID(id) }

// printableASCII reports whether s is made of printable ASCII characters (0x20 to 0x7E).
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// readID returns the valid id in an object's members, or "".
func readID(top map[string]json.RawMessage) string {
	v, ok := top["id"]
	if !ok {
		return ""
	}
	var s string
	if json.Unmarshal(v, &s) != nil || !validID(s) {
		return ""
	}
	return s
}

// idFromBytes returns the valid id of a plain command's bytes, or "".
func idFromBytes(b []byte) string {
	var top map[string]json.RawMessage
	if unmarshalObject(b, &top) != nil {
		return ""
	}
	return readID(top)
}

// claimedSignedID reads the id of an envelope's inner command as best it can: padded or
// otherwise sloppy base64 is accepted here, since the id only addresses the error answer.
func claimedSignedID(top map[string]json.RawMessage) string {
	var s string
	if json.Unmarshal(top["signed"], &s) != nil {
		return ""
	}
	plain, err := decodeAnyBase64(s)
	if err != nil {
		return ""
	}
	return idFromBytes(plain)
}

// claimedID reads the id of an oversized payload, plain or (when envelope is true) signed,
// without keeping more than one member value at a time.
func claimedID(payload []byte, envelope bool) string {
	dec := json.NewDecoder(bytes.NewReader(payload))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := t.(string)
		switch key {
		case "id":
			var s string
			if dec.Decode(&s) != nil {
				return ""
			}
			if validID(s) {
				return s
			}
			return ""
		case "signed":
			if !envelope {
				return ""
			}
			var s string
			if dec.Decode(&s) != nil {
				return ""
			}
			plain, err := decodeAnyBase64(s)
			if err != nil {
				return ""
			}
			return claimedID(plain, false)
		default:
			if skipValue(dec) != nil {
				return ""
			}
		}
	}
	return ""
}

// skipValue consumes one JSON value from dec.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}
