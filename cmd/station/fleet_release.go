package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/release"
)

// defaultReleaseExpiry is how long a release manifest stays valid unless --expires says.
const defaultReleaseExpiry = 30 * 24 * time.Hour

// fleetRelease signs a release: FILE.release holds the manifest of FILE signed with the release
// key (agent/contract/update.go).
func fleetRelease(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fleet release", flag.ContinueOnError)
	keyFile := fs.String("key", "", "release signing key `file` (PEM PKCS#8, from fleet keygen)")
	ver := fs.String("version", "", "the artifact's semantic `version`, as its `station version` prints it")
	arch := fs.String("arch", "", "GOARCH of the artifact (default: read from its ELF header)")
	expires := fs.Duration("expires", defaultReleaseExpiry, "the release expires this long after now")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want: station fleet release --key KEY --version V [--arch A] [--expires D] FILE")
	}
	if *keyFile == "" || *ver == "" {
		return usagef("--key and --version are required")
	}
	if _, err := release.ParseVersion(*ver); err != nil {
		return usagef("--version %q: %v", *ver, err)
	}
	if *expires <= 0 {
		return usagef("--expires must be positive")
	}
	file := pos[0]
	if *arch == "" {
		if *arch, err = release.ELFArch(file); err != nil {
			return err
		}
	}
	priv, err := readSigningKey(*keyFile)
	if err != nil {
		return err
	}
	sum, size, err := release.FileDigest(file)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	now := time.Now().UTC()
	m := contract.Manifest{Version: *ver, Arch: *arch, SHA256: sum, Size: size,
		IssuedAt: now.Format(time.RFC3339Nano), ExpiresAt: now.Add(*expires).Format(time.RFC3339Nano)}
	r, err := release.Sign(m, priv)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(r)
	out := file + ".release"
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the release: %w", err)
	}
	fmt.Fprintf(stdout, "release %s  version %s  arch %s  %d bytes  sha256 %s  expires %s  kid %s\n",
		out, m.Version, m.Arch, m.Size, m.SHA256, m.ExpiresAt, r.Kid)
	return nil
}

// readRelease reads FILE.release and its manifest (unverified: the stations check it).
func readRelease(path string) (contract.Release, *contract.Manifest, error) {
	var r contract.Release
	b, err := os.ReadFile(path)
	if err != nil {
		return r, nil, fmt.Errorf("release: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, nil, fmt.Errorf("release %s: %w (make it with station fleet release)", path, err)
	}
	m, err := release.Peek(r)
	if err != nil {
		return r, nil, fmt.Errorf("release %s: %w", path, err)
	}
	return r, m, nil
}
