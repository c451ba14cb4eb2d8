package vcard

import (
	"maps"
	"slices"
)

// builtins are the profiles every station knows. Their card numbers are
// synthetic and Luhn-valid.
var builtins = map[string]string{
	// A UnionPay debit card with a fixed UID.
	"unionpay-debit": `{"name":"unionpay-debit","kind":"emv","pan":"6228480000031234","psn":"01","expiry":"3012","aid":"A000000333010101","uid":"1A2B3C4D"}`, // synthetic
	// A UnionPay credit card with a fixed UID.
	"unionpay-credit": `{"name":"unionpay-credit","kind":"emv","pan":"6258880000000001","psn":"00","expiry":"2906","aid":"A000000333010102","uid":"5E6F7081"}`, // synthetic
	// A UnionPay debit card that makes up a new UID for every tap.
	"random-uid": `{"name":"random-uid","kind":"emv","pan":"6214830000000009","psn":"00","expiry":"2811","aid":"A000000333010101","uid":"random"}`, // synthetic
	// A plain NTAG213 sticker: 7-byte NXP UID, no ISO/IEC 14443-4.
	"ntag": `{"name":"ntag","kind":"uid","uid":"04A1B2C3D4E5F6","sak":"00"}`,
}

// Builtin returns a fresh copy of the built-in profile with the given name.
func Builtin(name string) (*Profile, bool) {
	s, ok := builtins[name]
	if !ok {
		return nil, false
	}
	p, err := ParseProfile([]byte(s))
	if err != nil {
		panic("vcard: built-in profile " + name + ": " + err.Error())
	}
	return p, true
}

// BuiltinNames returns the names of the built-in profiles, sorted.
func BuiltinNames() []string {
	return slices.Sorted(maps.Keys(builtins))
}
