package config

import (
	"fmt"
	"time"

	"station.dev/agent/internal/release"
)

// Update is the [update] table: over-the-air updates. It is file-only: the fleet's config.set
// cannot change it, since it decides which releases the station trusts.
type Update struct {
	// PublicKeys are the release keys (base64 raw Ed25519 public keys), separate from the
	// command keys. Without any, every update is refused (unauthorized).
	PublicKeys []string `toml:"public_keys"`
	// HealthWindow is how long a new version must stay healthy before it is committed
	// (default 2m, at least 1s).
	HealthWindow Duration `toml:"health_window"`
	// MaxBytes is the disk budget of updates: installed versions and the download in progress
	// (default 64MiB). The store's own room (store.max_bytes) is kept apart from it.
	MaxBytes Size `toml:"max_bytes"`
}

// Defaults of [update].
const (
	DefaultHealthWindow   = 2 * time.Minute
	DefaultUpdateMaxBytes = 64 << 20
)

func (u *Update) normalize() error {
	if u.HealthWindow == 0 {
		u.HealthWindow = Duration(DefaultHealthWindow)
	}
	if u.HealthWindow < Duration(time.Second) {
		return fmt.Errorf("config: update.health_window %s: must be at least 1s", u.HealthWindow)
	}
	if u.MaxBytes == 0 {
		u.MaxBytes = DefaultUpdateMaxBytes
	}
	if u.MaxBytes < 1<<20 {
		return fmt.Errorf("config: update.max_bytes %s: must be at least 1MiB", u.MaxBytes)
	}
	if _, err := release.ParseKeys(u.PublicKeys); err != nil {
		return fmt.Errorf("config: update.public_keys: %w", err)
	}
	return nil
}
