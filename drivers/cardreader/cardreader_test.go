package cardreader

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/drivers/emv"
	"station.dev/agent/drivers/vcard"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// step is what one Detect call of the fake chip finds.
type step struct {
	card   *vcard.Card // the target; nil for an empty field
	target *Target     // a raw target instead of a card
	err    error       // Detect fails with this
	// failAt > 0 makes the failAt-th Transmit to this target, and every one
	// after it, fail with failErr.
	failAt  int
	failErr error
	// onTransmit, if set, runs before every Transmit to this target.
	onTransmit func()
}

// fakeChip plays a list of steps, one per Detect. Once they are used up,
// it closes done and Detect blocks until its context ends.
type fakeChip struct {
	mu       sync.Mutex
	steps    []step
	cur      *step
	sent     int
	releases int
	detected int
	done     chan struct{}
	closed   bool
}

func newChip(steps ...step) *fakeChip {
	return &fakeChip{steps: steps, done: make(chan struct{})}
}

func (f *fakeChip) Detect(ctx context.Context) (*Target, error) {
	f.mu.Lock()
	if len(f.steps) == 0 {
		if !f.closed {
			close(f.done)
			f.closed = true
		}
		f.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	s := f.steps[0]
	f.steps = f.steps[1:]
	f.cur, f.sent = &s, 0
	f.mu.Unlock()
	switch {
	case s.err != nil:
		return nil, s.err
	case s.target != nil:
		f.detected++
		return s.target, nil
	case s.card != nil:
		f.detected++
		return &Target{UID: s.card.UID(), SensRes: s.card.SensRes(), SelRes: s.card.SelRes(), ATS: s.card.ATS()}, nil
	}
	return nil, nil
}

func (f *fakeChip) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	f.mu.Lock()
	s := f.cur
	f.sent++
	n := f.sent
	f.mu.Unlock()
	if s == nil || s.card == nil {
		return nil, errors.New("fake: no target")
	}
	if s.onTransmit != nil {
		s.onTransmit()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.failAt > 0 && n >= s.failAt {
		return nil, s.failErr
	}
	return s.card.Transmit(apdu)
}

func (f *fakeChip) Release(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases++
	return nil
}

// next returns the next presentation, failing the test if there is none
// before the chip runs out of steps.
func next(t *testing.T, r *Reader, f *fakeChip) Presentation {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-f.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	p, err := r.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v (no presentation left)", err)
	}
	return p
}

// none checks that the chip's remaining steps make no presentation.
func none(t *testing.T, r *Reader, f *fakeChip) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-f.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	p, err := r.Next(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %+v, %v; want no presentation", p, err)
	}
}

func builtin(t *testing.T, name string) *vcard.Profile {
	t.Helper()
	p, ok := vcard.Builtin(name)
	if !ok {
		t.Fatalf("no built-in profile %s", name)
	}
	return p
}

func profile(t *testing.T, js string) *vcard.Profile {
	t.Helper()
	p, err := vcard.ParseProfile([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newReader(t *testing.T, f *fakeChip, opts *Opts) *Reader {
	t.Helper()
	if opts == nil {
		opts = &Opts{}
	}
	if opts.Key == nil {
		opts.Key = testKey
	}
	r, err := New(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	r.sleep = func(ctx context.Context, d time.Duration) error { return ctx.Err() }
	return r
}

func emvToken(p *vcard.Profile) string {
	return emv.EMVIdentity(testKey, &emv.Card{PAN: p.PAN, PSN: p.PSN}).Token
}

func TestEMVCard(t *testing.T) {
	p := builtin(t, "unionpay-debit")
	f := newChip(step{card: p.Card(0)})
	r := newReader(t, f, nil)
	got := next(t, r, f)
	want := emv.Identity{Kind: "emv", Token: emvToken(p), Masked: "622848******1234", Scheme: "unionpay", AID: "A000000333010101"}
	if got.Error != "" || got.Card == nil || *got.Card != want {
		t.Fatalf("presentation %+v, card %+v; want %+v", got, got.Card, want)
	}
	none(t, r, f)
	if f.releases != 1 {
		t.Errorf("%d releases, want 1", f.releases)
	}
	if h := r.Health(); h.Presentations != 1 || h.Failures != 0 || h.ChipErrors != 0 {
		t.Errorf("health %+v", h)
	}
}

func TestUIDTag(t *testing.T) {
	p := builtin(t, "ntag")
	c := p.Card(0)
	f := newChip(step{card: c})
	r := newReader(t, f, nil)
	got := next(t, r, f)
	want := emv.UIDIdentity(testKey, c.UID())
	if got.Error != "" || got.Card == nil || *got.Card != want || want.Kind != "uid" || want.RandomUID {
		t.Fatalf("presentation %+v, card %+v; want %+v", got, got.Card, want)
	}
}

func TestRandomUIDFlagged(t *testing.T) {
	tag := profile(t, `{"name":"rnd","kind":"uid","uid":"random","sak":"08"}`)
	card := builtin(t, "random-uid")
	f := newChip(step{card: tag.Card(0)}, step{}, step{card: card.Card(0)})
	r := newReader(t, f, nil)
	got := next(t, r, f)
	if got.Card == nil || got.Card.Kind != "uid" || !got.Card.RandomUID || got.Detail == "" {
		t.Errorf("random UID tag: %+v %+v", got, got.Card)
	}
	// A random-UID EMV card is known by its card number: nothing to flag.
	got = next(t, r, f)
	if got.Card == nil || got.Card.Kind != "emv" || got.Card.RandomUID || got.Card.Token != emvToken(card) {
		t.Errorf("random-UID EMV card: %+v %+v", got, got.Card)
	}
}

func TestHeldOnce(t *testing.T) {
	p := builtin(t, "unionpay-debit")
	c := p.Card(0)
	f := newChip(step{card: c}, step{card: c}, step{card: c}, step{}, step{}, step{card: c}, step{card: c})
	r := newReader(t, f, nil)
	first := next(t, r, f)
	second := next(t, r, f) // only after the field was empty
	if first.Card == nil || second.Card == nil || first.Card.Token != second.Card.Token {
		t.Fatalf("presentations %+v, %+v", first, second)
	}
	none(t, r, f)
	if f.releases != 5 {
		t.Errorf("%d releases for %d targets", f.releases, 5)
	}
}

func TestHeldRandomUIDs(t *testing.T) {
	// Each Card(0) of these profiles has a new random UID, as a card gets
	// when the field drops between polls: still one presentation each.
	emvCard := builtin(t, "random-uid")
	tag := profile(t, `{"name":"rnd","kind":"uid","uid":"random"}`)
	f := newChip(
		step{card: emvCard.Card(0)}, step{card: emvCard.Card(0)}, step{card: emvCard.Card(0)}, step{},
		step{card: tag.Card(0)}, step{card: tag.Card(0)}, step{card: tag.Card(0)},
	)
	r := newReader(t, f, nil)
	if got := next(t, r, f); got.Card == nil || got.Card.Kind != "emv" {
		t.Fatalf("first: %+v", got)
	}
	if got := next(t, r, f); got.Card == nil || !got.Card.RandomUID {
		t.Fatalf("second: %+v", got)
	}
	none(t, r, f)
}

func TestCardSwappedWithoutGap(t *testing.T) {
	debit, credit := builtin(t, "unionpay-debit"), builtin(t, "unionpay-credit")
	f := newChip(step{card: debit.Card(0)}, step{card: credit.Card(0)}, step{card: debit.Card(1)})
	r := newReader(t, f, nil)
	a, b, c := next(t, r, f), next(t, r, f), next(t, r, f)
	if a.Card.Token != emvToken(debit) || b.Card.Token != emvToken(credit) || c.Card.Token == a.Card.Token {
		t.Errorf("tokens %s %s %s", a.Card.Token, b.Card.Token, c.Card.Token)
	}
	none(t, r, f)
}

func TestRemovedMidRead(t *testing.T) {
	p := builtin(t, "unionpay-debit")
	c := p.Card(0)
	f := newChip(
		step{card: c, failAt: 3, failErr: ErrRemoved},
		step{},        // tried once more: gone
		step{card: c}, // back in the field: read again
		step{card: c},
	)
	r := newReader(t, f, nil)
	got := next(t, r, f)
	if got.Error != CodeRemoved || got.Card != nil || got.Detail == "" {
		t.Fatalf("presentation %+v", got)
	}
	got = next(t, r, f)
	if got.Error != "" || got.Card == nil || got.Card.Token != emvToken(p) {
		t.Fatalf("after coming back: %+v", got)
	}
	none(t, r, f)
	if h := r.Health(); h.ChipErrors != 0 || h.Failures != 1 || h.Presentations != 2 {
		t.Errorf("health %+v", h)
	}
}

// TestRemovedButStillThere: the card stopped answering for a moment but is
// still in the field: it is read once more, and only the card is reported.
func TestRemovedButStillThere(t *testing.T) {
	p := builtin(t, "unionpay-debit")
	c := p.Card(0)
	f := newChip(step{card: c, failAt: 3, failErr: ErrRemoved}, step{card: c}, step{card: c})
	r := newReader(t, f, nil)
	got := next(t, r, f)
	if got.Error != "" || got.Card == nil || got.Card.Token != emvToken(p) {
		t.Fatalf("presentation %+v, want the card", got)
	}
	none(t, r, f) // held: not read again
	if h := r.Health(); h.Failures != 0 || h.Presentations != 1 || h.ChipErrors != 0 {
		t.Errorf("health %+v", h)
	}
	if f.releases != 3 {
		t.Errorf("%d releases, want 3 (the failed read, the second read, the held card)", f.releases)
	}
}

func TestRemovedWhilePresentIsQuiet(t *testing.T) {
	// A random-UID card already reported, re-detected with a new UID, and
	// pulled away during that re-read: no error for the person who already
	// got an answer.
	p := builtin(t, "random-uid")
	f := newChip(step{card: p.Card(0)}, step{card: p.Card(0), failAt: 2, failErr: ErrRemoved}, step{card: p.Card(0)})
	r := newReader(t, f, nil)
	if got := next(t, r, f); got.Card == nil {
		t.Fatalf("first: %+v", got)
	}
	none(t, r, f)
}

const notEMV = `{"name":"badge","uid":%q,"apdus":[{"c":"00A4*","r":"6A82"}]}`

func TestUnsupported(t *testing.T) {
	badge := profile(t, strings.Replace(notEMV, "%q", `"04A1B2C3D4E5F7"`, 1))
	randomBadge := profile(t, strings.Replace(notEMV, "%q", `"random"`, 1))

	// Strict: reported as unsupported, once while held.
	f := newChip(step{card: badge.Card(0)}, step{card: badge.Card(0)}, step{card: randomBadge.Card(0)})
	r := newReader(t, f, &Opts{StrictEMV: true})
	got := next(t, r, f)
	if got.Error != CodeUnsupported || got.Card != nil || !strings.Contains(got.Detail, "6A82") {
		t.Fatalf("strict: %+v", got)
	}
	if got := next(t, r, f); got.Error != CodeUnsupported {
		t.Fatalf("strict, random UID: %+v", got)
	}
	none(t, r, f)

	// Default: identified by UID, a random one flagged.
	f = newChip(step{card: badge.Card(0)}, step{}, step{card: randomBadge.Card(0)})
	r = newReader(t, f, nil)
	got = next(t, r, f)
	if got.Error != "" || got.Card == nil || got.Card.Kind != "uid" || got.Card.RandomUID || got.Card.Token != emv.UIDIdentity(testKey, badge.Card(0).UID()).Token {
		t.Fatalf("fallback: %+v %+v", got, got.Card)
	}
	got = next(t, r, f)
	if got.Card == nil || !got.Card.RandomUID {
		t.Fatalf("fallback, random UID: %+v %+v", got, got.Card)
	}
}

func TestMalformed(t *testing.T) {
	p := profile(t, `{"name":"bad-luhn","uid":"0A1B2C3D","apdus":[
		{"c":"00A404000E325041592E5359532E444446303100","r":"6F20840E325041592E5359532E4444463031A50EBF0C0B61094F07A00000000310109000"},
		{"c":"00A4040007A000000003101000","r":"6F0B8407A0000000031010A5009000"},
		{"c":"80A8000002830000","r":"770E570C6228480000001238D30122209000"}]}`) // 6228480000001238: synthetic, Luhn-invalid on purpose
	c := p.Card(0)
	f := newChip(step{card: c}, step{card: c})
	r := newReader(t, f, nil)
	got := next(t, r, f)
	if got.Error != CodeMalformed || got.Card != nil || !strings.Contains(got.Detail, "Luhn") {
		t.Fatalf("presentation %+v", got)
	}
	none(t, r, f)
}

func TestMinInterval(t *testing.T) {
	p := builtin(t, "unionpay-debit")
	now := time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) func() {
		return func() { mu.Lock(); now = now.Add(d); mu.Unlock() }
	}
	other := builtin(t, "ntag")
	f := newChip(
		step{card: p.Card(0)}, step{},
		step{card: p.Card(0), onTransmit: once(advance(20 * time.Second))}, step{}, // suppressed
		step{card: other.Card(0)}, step{}, // another card is not held back
		step{card: p.Card(0), onTransmit: once(advance(41 * time.Second))}, step{},
	)
	r := newReader(t, f, &Opts{MinInterval: time.Minute, Now: clock})
	if got := next(t, r, f); got.Card == nil || got.Card.Kind != "emv" {
		t.Fatalf("first: %+v", got)
	}
	if got := next(t, r, f); got.Card == nil || got.Card.Kind != "uid" {
		t.Fatalf("second: %+v (the held-back card came through?)", got)
	}
	if got := next(t, r, f); got.Card == nil || got.Card.Kind != "emv" {
		t.Fatalf("third: %+v", got)
	}
	none(t, r, f)
	if h := r.Health(); h.Suppressed != 1 || h.Presentations != 3 {
		t.Errorf("health %+v", h)
	}
}

// once wraps f so it runs on the first call only.
func once(f func()) func() {
	var o sync.Once
	return func() { o.Do(f) }
}

func TestCancel(t *testing.T) {
	// Cancelled while waiting for a card.
	f := newChip()
	r := newReader(t, f, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-f.done; cancel() }()
	if _, err := r.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}

	// Cancelled in the middle of a read: no presentation, target released.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	p := builtin(t, "unionpay-debit")
	f = newChip(step{card: p.Card(0), onTransmit: once(cancel)})
	r = newReader(t, f, nil)
	if got, err := r.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %+v, %v; want context.Canceled", got, err)
	}
	if f.releases != 1 {
		t.Errorf("%d releases after a cancelled read, want 1", f.releases)
	}
	if h := r.Health(); h.Presentations != 0 || h.ChipErrors != 0 {
		t.Errorf("health %+v", h)
	}

	// Cancelled already.
	if _, err := r.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next on a done context = %v", err)
	}
}

func TestChipErrors(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bus := errors.New("i2c: remote I/O error")
	p := builtin(t, "unionpay-debit")
	var steps []step
	for range 7 {
		steps = append(steps, step{err: bus})
	}
	steps = append(steps, step{card: p.Card(0)})
	f := newChip(steps...)
	r := newReader(t, f, &Opts{Logger: log, MaxBackoff: time.Second})
	var waits []time.Duration
	r.sleep = func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		h := r.Health()
		if h.ConsecutiveChipErrors != uint64(len(waits)) || !strings.Contains(h.LastChipError, "remote I/O") {
			t.Errorf("health during failures: %+v", h)
		}
		return nil
	}
	got := next(t, r, f)
	if got.Card == nil {
		t.Fatalf("presentation %+v", got)
	}
	ms := time.Millisecond
	want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second, time.Second}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
	h := r.Health()
	if h.ChipErrors != 7 || h.ConsecutiveChipErrors != 0 || h.Presentations != 1 || h.LastChipErrorAt.IsZero() {
		t.Errorf("health %+v", h)
	}
	// Warnings at failures 1, 2 and 4 only, then one line for the recovery.
	if n := strings.Count(logs.String(), "level=WARN"); n != 3 {
		t.Errorf("%d warnings, want 3:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "chip working again") {
		t.Errorf("no recovery line:\n%s", logs.String())
	}
}

func TestReaderFailureMidRead(t *testing.T) {
	p := builtin(t, "unionpay-debit")
	c := p.Card(0)
	fail := errors.New("pn532: frame checksum")
	// Fails once: the card still in the field is read once more.
	f := newChip(step{card: c, failAt: 2, failErr: fail}, step{card: c}, step{card: c})
	r := newReader(t, f, nil)
	got := next(t, r, f)
	if got.Error != "" || got.Card == nil || got.Card.Token != emvToken(p) {
		t.Fatalf("presentation %+v, want the card", got)
	}
	none(t, r, f) // held: not read again
	if h := r.Health(); h.ChipErrors != 1 || h.Failures != 0 {
		t.Errorf("health %+v", h)
	}

	// Fails twice: reported once, and not read again while held.
	f = newChip(step{card: c, failAt: 2, failErr: fail}, step{card: c, failAt: 1, failErr: fail}, step{card: c}, step{card: c})
	r = newReader(t, f, nil)
	got = next(t, r, f)
	if got.Error != CodeReader || got.Card != nil || !strings.Contains(got.Detail, "checksum") {
		t.Fatalf("presentation %+v", got)
	}
	none(t, r, f)
	if h := r.Health(); h.ChipErrors != 2 || h.Failures != 1 {
		t.Errorf("health %+v", h)
	}

	// Fails, and the card is gone: reported.
	f = newChip(step{card: c, failAt: 2, failErr: fail}, step{}, step{card: c})
	r = newReader(t, f, nil)
	if got := next(t, r, f); got.Error != CodeReader {
		t.Fatalf("presentation %+v", got)
	}
	if got := next(t, r, f); got.Card == nil { // back: read
		t.Fatalf("presentation %+v", got)
	}
}

// TestReaderFailureOtherCard: after a failed read another card is in the
// field: the failure is reported, then the other card is read.
func TestReaderFailureOtherCard(t *testing.T) {
	debit, credit := builtin(t, "unionpay-debit"), builtin(t, "unionpay-credit")
	f := newChip(
		step{card: debit.Card(0), failAt: 2, failErr: errors.New("pn532: timeout")},
		step{card: credit.Card(0)}, // found when trying the first card again
		step{card: credit.Card(0)},
	)
	r := newReader(t, f, nil)
	if got := next(t, r, f); got.Error != CodeReader {
		t.Fatalf("first: %+v", got)
	}
	if got := next(t, r, f); got.Card == nil || got.Card.Token != emvToken(credit) {
		t.Fatalf("second: %+v", got)
	}
}

// TestReaderFailureRandomUID: a card with a random UID comes back with a new
// one when it is activated again; it is read once more all the same.
func TestReaderFailureRandomUID(t *testing.T) {
	p := builtin(t, "random-uid")
	f := newChip(step{card: p.Card(0), failAt: 3, failErr: errors.New("pn532: timeout")}, step{card: p.Card(0)})
	r := newReader(t, f, nil)
	if got := next(t, r, f); got.Card == nil || got.Card.Token != emvToken(p) {
		t.Fatalf("presentation %+v, want the card", got)
	}
}

func TestBadTarget(t *testing.T) {
	p := builtin(t, "ntag")
	f := newChip(step{target: &Target{UID: []byte{1, 2, 3}}}, step{target: &Target{}}, step{card: p.Card(0)})
	r := newReader(t, f, nil)
	if got := next(t, r, f); got.Card == nil || got.Card.Kind != "uid" {
		t.Fatalf("presentation %+v", got)
	}
	if h := r.Health(); h.ChipErrors != 2 {
		t.Errorf("health %+v", h)
	}
}

func TestDetectRemovedIsEmptyField(t *testing.T) {
	p := builtin(t, "ntag")
	c := p.Card(0)
	f := newChip(step{card: c}, step{err: ErrRemoved}, step{card: c})
	r := newReader(t, f, nil)
	next(t, r, f)
	next(t, r, f) // the field was empty in between
	if h := r.Health(); h.ChipErrors != 0 {
		t.Errorf("health %+v", h)
	}
}

func TestNew(t *testing.T) {
	if _, err := New(nil, &Opts{Key: testKey}); err == nil {
		t.Error("nil chip accepted")
	}
	if _, err := New(newChip(), nil); err == nil {
		t.Error("nil opts accepted")
	}
	if _, err := New(newChip(), &Opts{Key: make([]byte, 15)}); err == nil || !strings.HasPrefix(err.Error(), "cardreader: ") {
		t.Errorf("short key: %v", err)
	}
	key := bytes.Clone(testKey)
	r, err := New(newChip(), &Opts{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	key[0] ^= 0xFF
	if !bytes.Equal(r.key, testKey) {
		t.Error("New keeps the caller's key slice")
	}
}

// TestNoCardDataLeaks runs every kind of presentation with a debug logger
// and checks that no card number or UID shows up in what leaves the
// package.
func TestNoCardDataLeaks(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	debit, credit, rnd, ntag := builtin(t, "unionpay-debit"), builtin(t, "unionpay-credit"), builtin(t, "random-uid"), builtin(t, "ntag")
	badge := profile(t, strings.Replace(notEMV, "%q", `"04A1B2C3D4E5F7"`, 1))
	cards := []*vcard.Card{debit.Card(0), credit.Card(3), rnd.Card(0), ntag.Card(0), badge.Card(0), debit.Card(1)}
	f := newChip(
		step{card: cards[0]}, step{},
		step{card: cards[1], failAt: 4, failErr: ErrRemoved}, step{},
		step{card: cards[1]}, step{},
		step{card: cards[2]}, step{},
		step{card: cards[3]}, step{},
		step{card: cards[4]}, step{},
		step{card: cards[5], failAt: 3, failErr: errors.New("pn532: timeout")}, step{},
		step{err: errors.New("i2c: nack")},
	)
	r := newReader(t, f, &Opts{Logger: log, MinInterval: time.Hour})
	var out bytes.Buffer
	for range 7 {
		p := next(t, r, f)
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(b)
		out.WriteString(p.Detail)
	}
	none(t, r, f)
	h, _ := json.Marshal(r.Health())
	out.Write(h)
	out.Write(logs.Bytes())
	all := strings.ToUpper(out.String())
	if !strings.Contains(all, "622848******1234") {
		t.Fatalf("the scan saw no presentations:\n%s", all)
	}
	var secrets []string
	for _, p := range []*vcard.Profile{debit, credit, rnd} {
		secrets = append(secrets, p.PAN)
	}
	for _, c := range cards {
		secrets = append(secrets, strings.ToUpper(hex.EncodeToString(c.UID())))
	}
	secrets = append(secrets, "6228480000031242", "6258880000000035") // synthetic: Card(1) of debit, Card(3) of credit
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("output holds %s:\n%s", s, all)
		}
	}
	// Hex with separators, as some formatters print bytes.
	for _, c := range cards {
		if s := strings.ToUpper(strings.Trim(strings.Join(strings.Fields(hexSpaced(c.UID())), " "), " ")); strings.Contains(all, s) {
			t.Errorf("output holds %s", s)
		}
	}
}

func hexSpaced(b []byte) string {
	var sb strings.Builder
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(hex.EncodeToString([]byte{x}))
	}
	return sb.String()
}
