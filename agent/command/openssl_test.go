package command_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/contract"
)

// Interoperability with OpenSSL: an operator may sign commands with openssl instead of
// `station fleet send --key`, and verify what the station agent's tools sign.

func opensslOrSkip(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	return p
}

func openssl(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl %v: %v: %s", args, err, stderr.String())
	}
	return out
}

func TestOpenSSLSignsStationVerifies(t *testing.T) {
	bin := opensslOrSkip(t)
	dir := t.TempDir()
	key, msg, sigFile := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cmd.json"), filepath.Join(dir, "cmd.sig")
	openssl(t, bin, "genpkey", "-algorithm", "ed25519", "-out", key)
	plain := []byte(`{"id":"ossl-1","name":"ping","args":{},"target":"st-1","issued_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T04:04:05Z"}`)
	if err := os.WriteFile(msg, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	openssl(t, bin, "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", msg, "-out", sigFile)
	sig, err := os.ReadFile(sigFile)
	if err != nil {
		t.Fatal(err)
	}
	der := openssl(t, bin, "pkey", "-in", key, "-pubout", "-outform", "DER")
	pk, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := pk.(ed25519.PublicKey)
	if !ok {
		t.Fatalf("openssl wrote a %T public key", pk)
	}
	keys, err := command.ParseKeys([]string{base64.StdEncoding.EncodeToString(pub)})
	if err != nil {
		t.Fatal(err)
	}

	env := envelope(t, plain, sig, command.KeyID(pub))
	cmd, inner, derr := command.Decode(env, keys)
	if derr != nil {
		t.Fatalf("Decode of the openssl-signed command: %v", derr)
	}
	if cmd.ID != "ossl-1" || !bytes.Equal(inner, plain) {
		t.Fatalf("cmd %+v, inner %s", cmd, inner)
	}

	// The same signature over other bytes must not verify.
	other := bytes.Replace(plain, []byte("st-1"), []byte("st-2"), 1)
	if _, _, derr := command.Decode(envelope(t, other, sig, ""), keys); derr == nil || derr.Code != contract.CodeUnauthorized {
		t.Fatalf("Decode of altered bytes: %v, want unauthorized", derr)
	}
}

func TestStationSignsOpenSSLVerifies(t *testing.T) {
	bin := opensslOrSkip(t)
	dir := t.TempDir()
	kp := newKey(t)
	spki, err := x509.MarshalPKIXPublicKey(kp.pub)
	if err != nil {
		t.Fatal(err)
	}
	pubFile, msg, sigFile := filepath.Join(dir, "pub.pem"), filepath.Join(dir, "cmd.json"), filepath.Join(dir, "cmd.sig")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), 0o600); err != nil {
		t.Fatal(err)
	}

	env, err := command.Sign(kp.priv, kp.kid, []byte(ping))
	if err != nil {
		t.Fatal(err)
	}
	var s contract.Signed
	if err := json.Unmarshal(env, &s); err != nil {
		t.Fatal(err)
	}
	plain, err := base64.RawURLEncoding.DecodeString(s.Signed)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(s.Sig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(msg, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sigFile, sig, 0o600); err != nil {
		t.Fatal(err)
	}
	out := openssl(t, bin, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", pubFile, "-in", msg, "-sigfile", sigFile)
	if !bytes.Contains(out, []byte("Signature Verified Successfully")) {
		t.Fatalf("openssl: %s", out)
	}

	// openssl must refuse the signature over altered bytes: the check above is not vacuous.
	if err := os.WriteFile(msg, append(plain, ' '), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", pubFile, "-in", msg, "-sigfile", sigFile)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("openssl verified altered bytes: %s", out)
	}
}
