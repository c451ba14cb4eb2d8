package emv

import (
	"context"
	"errors"
	"testing"
	"time"
)

// responder answers every C-APDU with the next chunk of the fuzz input.
// The input is a sequence of chunks, each a length byte then that many
// bytes; once it runs out, every command fails as if the card had left.
type responder struct {
	in []byte
}

var errFuzzGone = errors.New("fuzz card gone")

func (r *responder) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if len(r.in) == 0 {
		return nil, errFuzzGone
	}
	n := int(r.in[0])
	r.in = r.in[1:]
	if n > len(r.in) {
		n = len(r.in)
	}
	out := r.in[:n]
	r.in = r.in[n:]
	return out, nil
}

// chunks builds a responder input from whole responses.
func chunks(resps ...[]byte) []byte {
	var out []byte
	for _, r := range resps {
		if len(r) > 255 {
			panic("response too long for a fuzz chunk")
		}
		out = append(out, byte(len(r)))
		out = append(out, r...)
	}
	return out
}

func FuzzRead(f *testing.F) {
	gpo := append(enc(0x77, enc(0x82, h("7C00")), enc(0x94, h("08010100 10010100"))), sw9000...)
	rec1 := append(enc(0x70, enc(0x57, track2(testPAN, "3012"))), sw9000...)
	rec2 := append(enc(0x70, enc(0x5A, bcdPAN(testPAN)), enc(0x5F34, h("01")), enc(0x5F24, h("301231"))), sw9000...)
	f.Add(chunks(ppse(aidDebit, 1), appFCI(aidDebit, upPDOL), gpo, rec1, rec2))
	f.Add(chunks(ppse(aidDebit, 2, aidCredit, 1), h("6A82"), appFCI(aidDebit, nil), append(enc(0x80, h("0000 08010100")), sw9000...), rec1))
	f.Add(chunks(h("6110"), ppse(aidDebit, 1)[:18]))
	f.Add(chunks(h("6A82")))
	f.Add(chunks(ppse(aidDebit, 1), appFCI(aidDebit, h("9F66 81 FF DF01 04")), gpo))
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		opts := &ReadOpts{Now: func() time.Time { return testClock }, Rand: zeroReader{}}
		card, err := Read(ctx, &responder{in: in}, opts)
		if err != nil {
			if card != nil {
				t.Fatal("card returned with an error")
			}
			if !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrMalformed) && !errors.Is(err, errFuzzGone) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if !LuhnValid(card.PAN) || len(card.PSN) != 2 || card.Scheme == "" {
			t.Fatalf("bad card accepted: %+v", card)
		}
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
