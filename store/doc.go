// Package store is the station agent's durable outbox: an append-only,
// per-stream queue of records kept in a bbolt file.
//
// A record is appended in one fsynced transaction and gets a per-stream
// sequence number (1, 2, 3 …) that is never reused and has no gaps, across
// deletes, restarts and power cuts. Records are read back in sequence order,
// a bounded page at a time, and deleted once the broker has acknowledged
// them.
//
// # Capacity
//
// Stored bytes are accounted per record as the payload length plus a fixed
// overhead (see [RecordOverhead]) and capped by [Options.MaxBytes]. When an
// append would go over the cap, the oldest records of the [Telemetry] stream
// are evicted first, whatever the class of the new record; only when
// telemetry cannot make enough room is the record refused with [ErrFull].
// [Critical] records may use a reserve above the cap (MaxBytes/16, at least
// 64 KiB) so that alarms, boot records and command responses still go through
// on a full store. Nothing but telemetry is ever deleted without an explicit
// [Store.Delete], or [Store.Respond] for the inbox record it answers.
//
// The file itself is limited with bbolt's MaxSize, set from MaxBytes with
// headroom for the B+tree (see [Options.MaxBytes]); on 32-bit platforms the
// file, and so the memory map, stays at or below 512 MiB.
//
// # Commands
//
// Fleet commands are appended to the [Inbox] stream (class Critical) before
// they are acknowledged to the broker, so a command is never lost between
// acknowledgement and execution; inbox records count against MaxBytes like
// any other record. Once a command is executed, [Store.Respond] appends its
// response to the [Responses] stream, records the command in the command
// ledger and deletes it from the inbox, all in one transaction, so a
// command has exactly one response whatever the moment of a power cut.
// [Store.Ledger] finds an executed command by id, so a redelivered command
// is answered with its stored response instead of running again.
//
// The ledger is bounded by its count of entries, their age and their bytes
// (see [Options.LedgerMaxEntries]); Respond prunes the oldest entries as
// it records a new one, reading only what it deletes. Ledger bytes are not
// accounted against MaxBytes: a full ledger never refuses a record, and a
// full store never evicts ledger entries. The file limit leaves room for
// them.
//
// # Idempotency keys
//
// [Store.AppendKeyed] appends records under callers' keys, several in one
// transaction, all or nothing. A key seen again with the same digest
// answers the record it first made, without appending; with another digest
// it is refused with [ErrKeyConflict]. Keys are kept at least
// [KeyRetention] and as long as their record is stored, and are not
// accounted against MaxBytes.
//
// # Robustness
//
// [Open] locks the file, then reads every page reachable from its newest
// metadata with pread (check.go). A file bbolt's structures prove broken is
// salvaged record by record into a new store whose sequences continue
// (salvage.go); the alarm of Options.RecoveryAlarm is written in the
// transaction that completes it, and [Store.Recovered] reports it. At most
// [MaxBrokenFiles] broken files are kept. Errors of the system (EIO, ENOMEM,
// permissions, [ErrLocked]) are returned and leave the file alone.
// Corruption met at run time (a bbolt panic or a memory fault) is salvaged
// the same way, and a commit that fails with an error of the system is
// settled by reopening the file (health.go).
//
// The file never shrinks by itself. Open compacts it when the backlog is tiny
// and the file is far larger than needed, and [Store.CompactIfWasteful] does
// the same on demand, for example when the backlog has drained after a long
// outage.
//
// Deletes of Events, Responses and Telemetry records are deferred: they ride
// in the next commit (usually the next append), or are committed when 64 are
// pending or the oldest has waited Options.DeleteDelay (deletes.go). A crash
// then re-sends at most 64 acknowledged records.
//
// Only this package imports bbolt; it knows nothing of MQTT, drivers or the
// agent.
package store
