package contract

// Status is the retained status (DESIGN §3.3) and the body of GET PathStatus. The retained copy
// leaves out Link and Indicator, which only the local API shows.
type Status struct {
	State       string                     `json:"state"` // StateOnline or StateOffline
	Reason      string                     `json:"reason,omitempty"`
	StationID   string                     `json:"station_id"`
	Version     string                     `json:"version"`
	BootID      string                     `json:"boot_id"`
	Since       string                     `json:"since"`
	TS          string                     `json:"ts"`
	ClockSynced bool                       `json:"clock_synced"`
	UptimeMS    int64                      `json:"uptime_ms"`
	Sim         bool                       `json:"sim,omitempty"`
	Insecure    []string                   `json:"insecure,omitempty"` // e.g. "unsigned commands accepted …"
	Reader      ComponentHealth            `json:"reader"`
	Queue       QueueStatus                `json:"queue"`
	Link        *LinkStatus                `json:"link,omitempty"`
	Components  map[string]ComponentHealth `json:"components,omitempty"`
	Door        *DoorStatus                `json:"door,omitempty"`
	Environment map[string]float64         `json:"environment,omitempty"`
	Indicator   *IndicatorState            `json:"indicator,omitempty"`
	Update      *UpdateStatus              `json:"update,omitempty"`
}

// Offline is the status a station leaves when it goes: its last will (ReasonLost) or the status
// of a clean stop (ReasonShutdown).
type Offline struct {
	State     string `json:"state"` // StateOffline
	Reason    string `json:"reason"`
	StationID string `json:"station_id"`
	BootID    string `json:"boot_id"`
	Version   string `json:"version"`
	TS        string `json:"ts"`
}

// States and reasons of Status and Offline.
const (
	StateOnline    = "online"
	StateOffline   = "offline"
	ReasonLost     = "lost"     // the broker published the last will
	ReasonShutdown = "shutdown" // the agent stopped cleanly
)

// ComponentHealth is the health of one part of the station.
type ComponentHealth struct {
	State     string            `json:"state"` // HealthOK, HealthDegraded, HealthDown or HealthAbsent
	Detail    string            `json:"detail,omitempty"`
	Counters  map[string]uint64 `json:"counters,omitempty"`
	Firmware  string            `json:"firmware,omitempty"`
	LastError string            `json:"last_error,omitempty"`
}

// Health states of a component.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded" // working, with errors
	HealthDown     = "down"     // configured but not working
	HealthAbsent   = "absent"   // not configured
)

// Component names of Status.Components and of the self-test.
const (
	ComponentIndicator   = "indicator"
	ComponentDoor        = "door"
	ComponentEnvironment = "environment"
	ComponentDisplay     = "display"
)

// Components lists the component names in the order they are shown.
var Components = []string{ComponentIndicator, ComponentDoor, ComponentEnvironment, ComponentDisplay}

// DoorStatus is the cabinet door.
type DoorStatus struct {
	Open bool `json:"open"`
}

// IndicatorState is what the indicator shows now.
type IndicatorState struct {
	Pattern string   `json:"pattern"`
	LEDs    string   `json:"leds"` // "off", "green", "yellow" …
	Buzzer  bool     `json:"buzzer"`
	Active  []string `json:"active"` // active patterns, highest priority first
}

// QueueStatus summarises the store.
type QueueStatus struct {
	Depth        int                     `json:"depth"`
	OldestAgeS   float64                 `json:"oldest_age_s"`
	Bytes        int64                   `json:"bytes"`
	MaxBytes     int64                   `json:"max_bytes"`
	FileBytes    int64                   `json:"file_bytes"`
	Full         bool                    `json:"full"`
	FullReason   string                  `json:"full_reason,omitempty"` // ErrStoreFull or ErrDiskFull
	Refused      uint64                  `json:"refused"`
	Evicted      uint64                  `json:"evicted"`
	Streams      map[string]StreamStatus `json:"streams,omitempty"`
	DiskFreeByte uint64                  `json:"disk_free_bytes"`
	// BrokenFiles and BrokenBytes count the broken store files kept for inspection beside the
	// store (at most two) and their bytes.
	BrokenFiles int   `json:"broken_files,omitempty"`
	BrokenBytes int64 `json:"broken_bytes,omitempty"`
}

// StreamStatus is one stream of the store.
type StreamStatus struct {
	Depth      int     `json:"depth"`
	Bytes      int64   `json:"bytes"`
	OldestAgeS float64 `json:"oldest_age_s"`
	LastSeq    uint64  `json:"last_seq"`
}

// LinkStatus is the broker link, for the local API.
type LinkStatus struct {
	Broker    string `json:"broker"`
	Connected bool   `json:"connected"`
	Since     string `json:"since,omitempty"`
	Connects  uint64 `json:"connects"`
	Failures  uint64 `json:"failures"`
	LastError string `json:"last_error,omitempty"`
	InFlight  int    `json:"in_flight"`
	Published uint64 `json:"published"`
	Acked     uint64 `json:"acked"`
	Alarm     string `json:"alarm,omitempty"` // the broker acknowledges publishes but drops them
}

// Telemetry is the heartbeat published on the telemetry topic.
type Telemetry struct {
	TS          string                     `json:"ts"`
	ClockSynced bool                       `json:"clock_synced"`
	BootID      string                     `json:"boot_id"`
	UptimeMS    int64                      `json:"uptime_ms"`
	Queue       QueueStatus                `json:"queue"`
	Connects    uint64                     `json:"connects"`
	Failures    uint64                     `json:"failures"`
	Reader      ComponentHealth            `json:"reader"`
	Components  map[string]ComponentHealth `json:"components,omitempty"`
	Environment map[string]float64         `json:"environment,omitempty"`
	Door        *DoorStatus                `json:"door,omitempty"`
	Commands    CommandStats               `json:"commands"`
}

// CommandStats counts what happened to fleet commands since the agent started.
type CommandStats struct {
	Received uint64 `json:"received"`
	Executed uint64 `json:"executed"`
	Refused  uint64 `json:"refused"`
	Dropped  uint64 `json:"dropped"`
}
