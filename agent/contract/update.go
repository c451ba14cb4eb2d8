package contract

import "strconv"

// Over-the-air updates (issue 16).
//
// A release is a Manifest signed with an Ed25519 release key (the [update] public_keys of the
// station, apart from the command keys), kept beside the artifact as FILE.release (a Release).
// The operator publishes the artifact retained, in chunks, under the fleet's update topics and
// sends the `update` command (UpdateArgs) carrying the Release. The station fetches the chunk
// index and then one chunk at a time, checks each chunk against the index and the whole against
// the manifest, installs it under its data directory as a pending version and restarts into it;
// the pending version commits itself once it has been healthy for [update] health_window, and
// three failed starts bring the previous version back.
//
// Topic layout (retained, QoS 1, written by the operator, read by every station):
//
//	{p}/_fleet/update/{sha256}/index   the chunk index: the SHA-256 of each chunk, 32 bytes each, in order
//	{p}/_fleet/update/{sha256}/{n}     chunk n (0, 1, …): bytes [n*chunk_size, (n+1)*chunk_size) of the artifact
//
// {sha256} is the artifact's SHA-256 in lower-case hex (the manifest's sha256), so artifacts never
// share topics and a station can check what it fetched. The command names the topic base, the
// chunk size and the SHA-256 of the index, so the index (and through it each chunk) is bound to
// the signed command.

// CommandUpdate is the name of the update command.
const CommandUpdate = "update"

// UpdateLevel is the topic level, under FleetLevel, of the update artifacts.
const UpdateLevel = "update"

// UpdateTopicBase returns {prefix}/_fleet/update/{sha256}: the topic base of one artifact.
func UpdateTopicBase(prefix, sha256hex string) string {
	return prefix + "/" + FleetLevel + "/" + UpdateLevel + "/" + sha256hex
}

// UpdateIndexTopic returns the topic of the chunk index under base.
func UpdateIndexTopic(base string) string { return base + "/index" }

// UpdateChunkTopic returns the topic of chunk n under base.
func UpdateChunkTopic(base string, n int) string { return base + "/" + strconv.Itoa(n) }

// DefaultChunkSize is the chunk size `station fleet update` uses; MaxChunkSize the largest a
// station accepts (it bounds the memory a download takes).
const (
	DefaultChunkSize = 64 << 10
	MaxChunkSize     = 1 << 20
)

// Manifest describes one release artifact. It is signed as its exact JSON bytes.
type Manifest struct {
	Version   string `json:"version"`    // semantic version, as `station version` prints it
	Arch      string `json:"arch"`       // GOARCH: arm, arm64, amd64, …
	SHA256    string `json:"sha256"`     // of the artifact, lower-case hex
	Size      int64  `json:"size"`       // of the artifact, bytes
	IssuedAt  string `json:"issued_at"`  // RFC 3339
	ExpiresAt string `json:"expires_at"` // RFC 3339
}

// Release is a signed manifest (the content of FILE.release): Manifest holds the manifest's
// exact bytes and Sig their Ed25519 signature, both base64url without padding; Kid names the
// release key (the first 8 bytes of the SHA-256 of the public key, base64url).
type Release struct {
	Manifest string `json:"manifest"`
	Sig      string `json:"sig"`
	Kid      string `json:"kid,omitempty"`
}

// UpdateSource says where the station fetches the artifact over MQTT.
type UpdateSource struct {
	Topic       string `json:"topic"`        // the topic base, UpdateTopicBase
	ChunkSize   int    `json:"chunk_size"`   // bytes per chunk; the last one may be shorter
	IndexSHA256 string `json:"index_sha256"` // SHA-256 of the index, lower-case hex
}

// UpdateArgs are the args of the update command.
type UpdateArgs struct {
	Release Release       `json:"release"`
	Source  *UpdateSource `json:"source,omitempty"`
	// AllowDowngrade lets the station install a version older than the one it runs.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
}

// UpdateResult is the result of an accepted update command.
type UpdateResult struct {
	State   string `json:"state"` // UpdateDownloading, or UpdateCommitted when the version already runs
	Version string `json:"version"`
}

// UpdateStatus is the update member of the status.
type UpdateStatus struct {
	State    string `json:"state"`              // one of the Update* states
	Version  string `json:"version,omitempty"`  // the version the state is about
	Previous string `json:"previous,omitempty"` // the version a rollback returns to
	Progress string `json:"progress,omitempty"` // while downloading: "received/size" bytes
	Error    *Error `json:"error,omitempty"`    // when failed: the code and why
}

// Update states.
const (
	UpdateIdle        = "idle"
	UpdateDownloading = "downloading"
	UpdatePending     = "pending"
	UpdateCommitted   = "committed"
	UpdateRolledBack  = "rolled_back"
	UpdateFailed      = "failed"
)

// Record types of updates. update.rolled_back carries data.reason, update.failed data.code and
// data.message; all carry data.version.
const (
	TypeUpdateDone       = "update.done"
	TypeUpdateRolledBack = "update.rolled_back"
	TypeUpdateFailed     = "update.failed"
)

// CodeDowngrade refuses an update to an older version without allow_downgrade.
const CodeDowngrade = "downgrade"
