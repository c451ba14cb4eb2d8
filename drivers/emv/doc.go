// Package emv reads the identity of a contactless EMV payment card and
// turns it into a token that may leave the station.
//
// Parse and Find decode BER-TLV. Read runs the contactless identity read
// (SELECT PPSE, SELECT the application, GET PROCESSING OPTIONS, READ
// RECORD) over any Transceiver and returns a Card holding the card number.
// The card number stays inside the driver layer: EMVIdentity and
// UIDIdentity turn a card or a UID into an Identity, with an HMAC token in
// place of the number, which is what the rest of the station agent sees.
// Nothing in this package logs, and no error text holds a card number,
// track data or a UID.
package emv
