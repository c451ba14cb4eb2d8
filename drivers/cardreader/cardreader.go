// Package cardreader turns the activity of a contactless reader chip into
// card presentations: one per card held to the reader, each either a card
// identity (an emv.Identity, never a card number or raw UID) or the reason
// the card could not be read.
//
// The package depends only on the small Chip interface it defines; the
// station agent adapts the PN532 driver (or its emulation) to it.
//
// # Identification
//
// A target without ISO/IEC 14443-4 (SEL_RES bit 0x20 clear: NTAG, MIFARE
// Classic) is identified by its UID (emv.UIDIdentity). An ISO/IEC 14443-4
// target goes through the EMV read (emv.Read) and is identified by its card
// number and PAN sequence number (emv.EMVIdentity). When the card turns out
// not to be an EMV card at all (emv.ErrUnsupported: no PPSE, no usable
// application), it is identified by its UID instead, so that access badges
// and other ISO/IEC 14443-4 cards with a fixed UID work; Opts.StrictEMV
// turns this off and reports such cards as "unsupported". A UID that is
// random per presentation is flagged (Identity.RandomUID): it identifies
// nothing, and the caller decides what to do with it.
//
// # One presentation per card
//
// A card held in the field is reported once. It counts as present, and is
// not reported again, until Chip.Detect returns no target. While a card is
// present, a target with the same UID is the same card and is not read
// again. A target with another UID is read, since a random-UID card comes
// back with a new UID whenever the field drops, and is reported only if it
// is a different card: another token, except that two cards identified by
// random UIDs in a row count as the same card. For the same reason a read
// that fails on a random UID while a card with a random UID is present is
// not reported.
//
// A read that fails because the chip failed ("reader") or the card stopped
// answering ("removed") is tried once more when the card is still in the
// field: the reader releases it, activates it again and, if it is the same
// card, reads it again, so that a moment's fault costs nobody their tap. A
// card that fails to read twice is reported once with its failure and not
// read again while it stays; a card that left the field during the read is
// read again as soon as it comes back.
//
// With Opts.MinInterval, a card whose token was reported less than that
// long ago is not reported again even after it left the field.
//
// # Chip failures
//
// A failing chip (Detect or Release errors) makes no presentations: the
// reader backs off exponentially and keeps trying, and reports the failures
// through Health. Only a failure while a card is being read, when someone is
// at the reader waiting for an answer, makes a presentation ("reader").
package cardreader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"station.dev/agent/drivers/emv"
)

// ErrRemoved is what a Chip's Transmit returns (wrapped or as is) when the
// target no longer answers because it left the field. The reader reports
// such a read as "removed"; any other Transmit error counts as a reader
// failure.
var ErrRemoved = errors.New("cardreader: card left the field")

// Presentation error codes (Presentation.Error).
const (
	// CodeRemoved: the card left the field before the read completed.
	CodeRemoved = "removed"
	// CodeUnsupported: a card this reader cannot identify.
	CodeUnsupported = "unsupported"
	// CodeMalformed: the card answered with data that breaks the rules.
	CodeMalformed = "malformed"
	// CodeReader: the reader chip failed during the read.
	CodeReader = "reader"
)

// Target is a card the chip found in the field.
type Target struct {
	// UID is the NFCID1: 4, 7 or 10 bytes.
	UID []byte
	// SensRes is the SENS_RES (ATQA).
	SensRes [2]byte
	// SelRes is the SEL_RES (SAK); bit 0x20 means ISO/IEC 14443-4.
	SelRes byte
	// ATS is the answer to select of an ISO/IEC 14443-4 target, if any.
	ATS []byte
}

// Chip is the reader chip as the reader loop needs it.
type Chip interface {
	// Detect looks for a card in the field and activates it. It returns
	// nil, nil when there is none, within a short poll period, and returns
	// early when ctx is done.
	Detect(ctx context.Context) (*Target, error)
	// Transmit sends a C-APDU to the detected target and returns the R-APDU
	// with its status word. It returns ErrRemoved when the target is gone.
	Transmit(ctx context.Context, apdu []byte) ([]byte, error)
	// Release deactivates the detected target.
	Release(ctx context.Context) error
}

// Presentation is the outcome of one card presentation.
type Presentation struct {
	// Card is the card's identity, nil when the read failed.
	Card *emv.Identity `json:"card,omitempty"`
	// Error is "" for a card, else one of the Code constants.
	Error string `json:"error,omitempty"`
	// Detail is a short text for people; it never holds a card number,
	// track data or a UID.
	Detail string `json:"detail,omitempty"`
}

// Opts configures a Reader. Only Key is required.
type Opts struct {
	// Key is the fleet card key that keys the card tokens: at least 16
	// bytes. New copies it.
	Key []byte
	// MinInterval, when positive, suppresses a card whose token was
	// reported less than MinInterval ago.
	MinInterval time.Duration
	// Now is the clock for MinInterval and the EMV transaction date.
	// Default time.Now.
	Now func() time.Time
	// Logger receives debug records for presentations and warnings for
	// chip failures. Nil means quiet. Records never hold a card number,
	// track data or a UID.
	Logger *slog.Logger
	// ReadTimeout bounds the read of one card. Default 3 s.
	ReadTimeout time.Duration
	// MaxBackoff caps the wait between attempts while the chip fails; the
	// wait starts at 100 ms and doubles. Default 5 s. No jitter: the chip
	// is local, there is no herd to spread.
	MaxBackoff time.Duration
	// PollInterval, when positive, is the least time between the starts of
	// two Detect calls. Default 0: Detect paces the loop itself.
	PollInterval time.Duration
	// StrictEMV reports ISO/IEC 14443-4 cards that are not EMV cards as
	// "unsupported" instead of identifying them by UID.
	StrictEMV bool
	// EMV tunes the EMV read; nil means emv's defaults, with Now above.
	EMV *emv.ReadOpts
}

// Health is a snapshot of the reader's counters.
type Health struct {
	// Presentations counts the presentations returned, cards and failures.
	Presentations uint64
	// Failures counts the presentations with an Error.
	Failures uint64
	// Suppressed counts cards not reported because of MinInterval.
	Suppressed uint64
	// ChipErrors counts chip failures: Detect and Release errors, bad
	// target data, Transmit errors other than ErrRemoved.
	ChipErrors uint64
	// ConsecutiveChipErrors counts the chip failures since the last Detect
	// that worked; 0 means the chip is working.
	ConsecutiveChipErrors uint64
	// LastChipError and LastChipErrorAt describe the latest chip failure.
	LastChipError   string
	LastChipErrorAt time.Time
}

// Defaults and limits.
const (
	defaultReadTimeout = 3 * time.Second
	defaultMaxBackoff  = 5 * time.Second
	firstBackoff       = 100 * time.Millisecond
	releaseTimeout     = time.Second
	maxRecent          = 1024 // tokens remembered for MinInterval
	maxDetail          = 160
	minKeyLen          = 16
)

// Reader is the reader loop. Call Next from one goroutine at a time;
// Health may be called from any.
type Reader struct {
	chip   Chip
	key    []byte
	opts   Opts
	emv    emv.ReadOpts
	log    *slog.Logger
	sleep  func(ctx context.Context, d time.Duration) error
	counts struct {
		presentations, failures, suppressed, chipErrors, consecutive atomic.Uint64
	}
	lastMu     sync.Mutex
	lastErr    string
	lastErrAt  time.Time
	mu         sync.Mutex // serialises Next; guards the fields below
	present    *presence
	recent     map[string]time.Time
	backoff    time.Duration
	lastDetect time.Time
	haveDetect bool
}

// presence is the card the reader considers in the field.
type presence struct {
	uid    []byte
	token  string // "" when its read failed
	random bool   // identified by a random UID
}

// New returns a Reader for chip. It does not talk to the chip.
func New(chip Chip, opts *Opts) (*Reader, error) {
	if chip == nil {
		return nil, errors.New("cardreader: nil chip")
	}
	if opts == nil || len(opts.Key) < minKeyLen {
		return nil, fmt.Errorf("cardreader: card key of at least %d bytes required", minKeyLen)
	}
	r := &Reader{chip: chip, opts: *opts, key: bytes.Clone(opts.Key), recent: map[string]time.Time{}}
	if r.opts.Now == nil {
		r.opts.Now = time.Now
	}
	if r.opts.ReadTimeout <= 0 {
		r.opts.ReadTimeout = defaultReadTimeout
	}
	if r.opts.MaxBackoff <= 0 {
		r.opts.MaxBackoff = defaultMaxBackoff
	}
	if opts.EMV != nil {
		r.emv = *opts.EMV
	}
	if r.emv.Now == nil {
		r.emv.Now = r.opts.Now
	}
	r.log = opts.Logger
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.sleep = sleepCtx
	return r, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Health returns the reader's counters.
func (r *Reader) Health() Health {
	h := Health{
		Presentations:         r.counts.presentations.Load(),
		Failures:              r.counts.failures.Load(),
		Suppressed:            r.counts.suppressed.Load(),
		ChipErrors:            r.counts.chipErrors.Load(),
		ConsecutiveChipErrors: r.counts.consecutive.Load(),
	}
	r.lastMu.Lock()
	h.LastChipError, h.LastChipErrorAt = r.lastErr, r.lastErrAt
	r.lastMu.Unlock()
	return h
}

// Next waits for the next presentation and returns it. It returns ctx.Err()
// when ctx is done; a read cut short by ctx is not a presentation.
func (r *Reader) Next(ctx context.Context) (Presentation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return Presentation{}, err
		}
		if err := r.pace(ctx); err != nil {
			return Presentation{}, err
		}
		tgt, err := r.chip.Detect(ctx)
		if errors.Is(err, ErrRemoved) {
			tgt, err = nil, nil // the card left while being activated
		}
		if err != nil {
			if ctx.Err() != nil {
				return Presentation{}, ctx.Err()
			}
			r.chipFailed("detect", err)
			if err := r.wait(ctx); err != nil {
				return Presentation{}, err
			}
			continue
		}
		r.chipWorks()
		if tgt == nil {
			r.present = nil
			continue
		}
		prev := r.present
		p, report := r.handle(ctx, tgt)
		r.release(ctx)
		if report && retryable(p) && ctx.Err() == nil {
			p, report = r.retry(ctx, tgt, prev, p)
		}
		if err := ctx.Err(); err != nil {
			return Presentation{}, err
		}
		if report {
			r.counts.presentations.Add(1)
			if p.Error != "" {
				r.counts.failures.Add(1)
				r.log.Debug("cardreader: card read failed", "error", p.Error, "detail", p.Detail)
			} else {
				r.log.Debug("cardreader: card presented", "kind", p.Card.Kind, "scheme", p.Card.Scheme,
					"masked", p.Card.Masked, "random_uid", p.Card.RandomUID)
			}
			return p, nil
		}
	}
}

// pace keeps PollInterval between the starts of two Detect calls.
func (r *Reader) pace(ctx context.Context) error {
	if r.opts.PollInterval <= 0 {
		return nil
	}
	if r.haveDetect {
		if d := r.opts.PollInterval - time.Since(r.lastDetect); d > 0 {
			if err := r.sleep(ctx, d); err != nil {
				return err
			}
		}
	}
	r.lastDetect, r.haveDetect = time.Now(), true
	return nil
}

// handle reads a detected target and decides whether it makes a
// presentation.
func (r *Reader) handle(ctx context.Context, tgt *Target) (Presentation, bool) {
	if n := len(tgt.UID); n != 4 && n != 7 && n != 10 {
		r.chipFailed("detect", fmt.Errorf("cardreader: target with a UID of %d bytes", n))
		return Presentation{}, false
	}
	if r.present != nil && bytes.Equal(r.present.uid, tgt.UID) {
		return Presentation{}, false // the same card, still in the field
	}
	p := r.identify(ctx, tgt)
	if ctx.Err() != nil {
		return Presentation{}, false
	}
	if p.Card == nil {
		if r.present != nil && emv.IsRandomUID(r.present.uid) && emv.IsRandomUID(tgt.UID) {
			// Perhaps the card already answered for, back with a new random
			// UID: keep quiet.
			r.present.uid = bytes.Clone(tgt.UID)
			return Presentation{}, false
		}
		if p.Error != CodeRemoved {
			r.present = &presence{uid: bytes.Clone(tgt.UID)}
		}
		return p, true
	}
	if prev := r.present; prev != nil {
		same := prev.token == p.Card.Token || prev.random && p.Card.RandomUID
		if same {
			prev.uid = bytes.Clone(tgt.UID)
			return Presentation{}, false
		}
	}
	r.present = &presence{uid: bytes.Clone(tgt.UID), token: p.Card.Token, random: p.Card.RandomUID}
	if r.suppress(p.Card.Token) {
		r.counts.suppressed.Add(1)
		r.log.Debug("cardreader: card seen again within the minimum interval", "kind", p.Card.Kind)
		return Presentation{}, false
	}
	return p, true
}

// retryable reports whether a failed read is worth one more try while the
// card stays: the chip failed, or the card stopped answering, which may be a
// moment's glitch as well as a card taken away.
func retryable(p Presentation) bool {
	return p.Error == CodeReader || p.Error == CodeRemoved
}

// retry reads the card of a failed read once more if it is still in the
// field: it activates whatever is there again (a fresh start for the chip and
// the card) and reads it if it is the same card. Otherwise, or if Detect
// fails, the first failure stands. prev is the presence before the failed
// read.
func (r *Reader) retry(ctx context.Context, tgt *Target, prev *presence, failed Presentation) (Presentation, bool) {
	again, err := r.chip.Detect(ctx)
	switch {
	case ctx.Err() != nil:
		return Presentation{}, false
	case errors.Is(err, ErrRemoved) || err == nil && again == nil:
		r.present = nil // the field is empty
		return failed, true
	case err != nil:
		r.chipFailed("detect", err)
		return failed, true
	}
	r.chipWorks()
	if !sameCard(tgt.UID, again.UID) {
		// Another card: the next Detect finds it again.
		r.release(ctx)
		return failed, true
	}
	r.log.Debug("cardreader: card read failed, reading it once more", "error", failed.Error)
	r.present = prev
	p, report := r.handle(ctx, again)
	r.release(ctx)
	return p, report
}

// sameCard reports whether two activations are of the same card as far as
// the UIDs tell: the same UID, or two random ones (a random-UID card draws a
// new one on each activation).
func sameCard(a, b []byte) bool {
	return bytes.Equal(a, b) || emv.IsRandomUID(a) && emv.IsRandomUID(b)
}

// identify reads the target's identity.
func (r *Reader) identify(ctx context.Context, tgt *Target) Presentation {
	if tgt.SelRes&0x20 == 0 {
		return r.uidPresentation(tgt.UID, "")
	}
	rctx, cancel := context.WithTimeout(ctx, r.opts.ReadTimeout)
	defer cancel()
	card, err := emv.Read(rctx, transceiver{r.chip}, &r.emv)
	switch {
	case err == nil:
		id := emv.EMVIdentity(r.key, card)
		return Presentation{Card: &id}
	case ctx.Err() != nil:
		return Presentation{}
	case errors.Is(err, ErrRemoved):
		return Presentation{Error: CodeRemoved, Detail: "card left the field during the read"}
	case errors.Is(err, emv.ErrUnsupported) && !r.opts.StrictEMV:
		return r.uidPresentation(tgt.UID, "not an EMV card: identified by UID")
	case errors.Is(err, emv.ErrUnsupported):
		return Presentation{Error: CodeUnsupported, Detail: detail(err)}
	case errors.Is(err, emv.ErrMalformed):
		return Presentation{Error: CodeMalformed, Detail: detail(err)}
	case rctx.Err() != nil:
		r.chipFailed("transmit", fmt.Errorf("cardreader: card read took longer than %v", r.opts.ReadTimeout))
		return Presentation{Error: CodeReader, Detail: "card read timed out"}
	default:
		r.chipFailed("transmit", err)
		return Presentation{Error: CodeReader, Detail: detail(fmt.Errorf("card read failed: %w", err))}
	}
}

func (r *Reader) uidPresentation(uid []byte, why string) Presentation {
	id := emv.UIDIdentity(r.key, uid)
	if id.RandomUID {
		why = strings.TrimPrefix(why+"; ", "; ") + "UID is random per presentation: not an identity"
	}
	return Presentation{Card: &id, Detail: why}
}

// detail turns an error into a short Detail text.
func detail(err error) string {
	s := strings.TrimPrefix(err.Error(), "emv: ")
	if len(s) > maxDetail {
		s = s[:maxDetail-3] + "..."
	}
	return s
}

// suppress reports whether token was reported less than MinInterval ago,
// and remembers it as reported now otherwise.
func (r *Reader) suppress(token string) bool {
	if r.opts.MinInterval <= 0 {
		return false
	}
	now := r.opts.Now()
	for t, at := range r.recent {
		if age := now.Sub(at); age >= r.opts.MinInterval || age < 0 {
			delete(r.recent, t)
		}
	}
	if _, ok := r.recent[token]; ok {
		return true
	}
	if len(r.recent) >= maxRecent {
		var oldest string
		var oldestAt time.Time
		for t, at := range r.recent {
			if oldest == "" || at.Before(oldestAt) {
				oldest, oldestAt = t, at
			}
		}
		delete(r.recent, oldest)
	}
	r.recent[token] = now
	return false
}

func (r *Reader) release(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := r.chip.Release(rctx); err != nil {
		r.chipFailed("release", err)
	}
}

// chipFailed counts and logs a chip failure. It logs the first of a run and
// then at powers of two, so a dead chip does not flood the log.
func (r *Reader) chipFailed(op string, err error) {
	r.counts.chipErrors.Add(1)
	n := r.counts.consecutive.Add(1)
	r.lastMu.Lock()
	r.lastErr, r.lastErrAt = op+": "+err.Error(), r.opts.Now()
	r.lastMu.Unlock()
	if n&(n-1) == 0 {
		r.log.Warn("cardreader: chip failure", "op", op, "err", err, "consecutive", n)
	}
}

// chipWorks notes a Detect that worked.
func (r *Reader) chipWorks() {
	r.backoff = 0
	if n := r.counts.consecutive.Swap(0); n > 0 {
		r.log.Info("cardreader: chip working again", "after_failures", n)
	}
}

// wait backs off after a chip failure.
func (r *Reader) wait(ctx context.Context) error {
	if r.backoff == 0 {
		r.backoff = firstBackoff
	} else if r.backoff *= 2; r.backoff > r.opts.MaxBackoff {
		r.backoff = r.opts.MaxBackoff
	}
	return r.sleep(ctx, r.backoff)
}

// transceiver lets emv.Read talk through the chip.
type transceiver struct{ chip Chip }

func (t transceiver) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	return t.chip.Transmit(ctx, apdu)
}
