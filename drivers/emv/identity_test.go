package emv

import (
	"encoding/json"
	"testing"
)

// The vectors were computed independently (Python hmac/hashlib) from the
// documented encodings, so the central platform can check its own side
// against them.
func TestEMVIdentityVectors(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	tests := []struct {
		card Card
		want Identity
	}{
		{
			Card{PAN: testPAN, PSN: "01", Expiry: "3012", AID: "a000000333010101", Scheme: "unionpay"}, // synthetic
			Identity{Kind: "emv", Token: "e0e777574b112c55d1242144ede6d988b97c4287fe4aba33140cd84911d39ffc",
				Masked: "622848******1237", Scheme: "unionpay", AID: "A000000333010101"},
		},
		{
			Card{PAN: testPAN2, PSN: "00", AID: "A000000333010102", Scheme: "unionpay"}, // synthetic
			Identity{Kind: "emv", Token: "c1f744a111e535665c2058088796ce94840b3d572e03f260a1f10121c1de355a",
				Masked: "625000******0004", Scheme: "unionpay", AID: "A000000333010102"},
		},
	}
	for _, tt := range tests {
		if got := EMVIdentity(key, &tt.card); got != tt.want {
			t.Errorf("EMVIdentity(%s) =\n%+v\nwant\n%+v", tt.card.AID, got, tt.want)
		}
	}
	c := tests[0].card
	if got := EMVIdentity([]byte("station-fleet-card-key-v1"), &c).Token; got != "154738e22a7b014dd5b43e68ec2e7a937bb5d9f136a02b6c5340c7a169ae6412" {
		t.Errorf("token with a text key = %s", got)
	}
	// The PSN is part of the identity: a replacement card differs.
	c.PSN = "02"
	if EMVIdentity(key, &c).Token == tests[0].want.Token {
		t.Error("PSN does not change the token")
	}
}

func TestUIDIdentityVectors(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	got := UIDIdentity(key, h("04a1b2c3d4e5f6"))
	want := Identity{Kind: "uid", Token: "351db75d1aa67d43b7f687dab4d9276c4eea88078ee6b2ef174c86cb1ece1915"}
	if got != want {
		t.Errorf("UIDIdentity(7-byte) = %+v, want %+v", got, want)
	}
	got = UIDIdentity(key, h("08123456"))
	want = Identity{Kind: "uid", Token: "df9cdc21d00e9a5475df13dc2b5eaf2865cdd50e4a65a6526012bc2a59a1942d", RandomUID: true}
	if got != want {
		t.Errorf("UIDIdentity(random) = %+v, want %+v", got, want)
	}
}

func TestIsRandomUID(t *testing.T) {
	for uid, want := range map[string]bool{
		"08123456":       true,
		"08000000":       true,
		"04123456":       false,
		"0812345678":     false,
		"08A1B2C3D4E5F6": false, // 7-byte UIDs are never random IDs
		"":               false,
	} {
		if got := IsRandomUID(h(uid)); got != want {
			t.Errorf("IsRandomUID(%s) = %v, want %v", uid, got, want)
		}
	}
}

func TestMask(t *testing.T) {
	for pan, want := range map[string]string{
		"6228480000031234":    "622848******1234",    // synthetic
		"6212340000000019":    "621234******0019",    // synthetic
		"6200000000000000003": "620000*********0003", // synthetic
		"123456789012":        "123456**9012",        // synthetic
		"12345678901":         "123456*8901",
		"1234567890":          "******7890",
		"1234":                "****",
		"":                    "",
	} {
		if got := Mask(pan); got != want {
			t.Errorf("Mask(%s) = %s, want %s", pan, got, want)
		}
	}
}

func TestIdentityJSON(t *testing.T) {
	b, err := json.Marshal(UIDIdentity([]byte("0123456789abcdef"), h("04A1B2C3D4E5F6")))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m["kind"] != "uid" || m["token"] == nil {
		t.Errorf("UID identity JSON = %s, want only kind and token", b)
	}
	c := Card{PAN: testPAN, PSN: "01", AID: aidDebit, Scheme: "unionpay"}
	b, _ = json.Marshal(EMVIdentity([]byte("0123456789abcdef"), &c))
	m = nil
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"kind", "token", "masked", "scheme", "aid"} {
		if _, ok := m[k]; !ok {
			t.Errorf("EMV identity JSON %s lacks %q", b, k)
		}
	}
	assertNoCardData(t, string(b))
}
