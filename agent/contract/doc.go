// Package contract is the station agent's wire contract (DESIGN §3) as Go types: the topic layout
// and the station-id syntax, the records of the events stream, the retained status, telemetry,
// the fleet command envelope and its response, and the local API's paths and bodies.
//
// Everything here is observable from outside the process and is relied on by other programs (the
// central platform, operators' scripts, the `station` CLI, kiosk software). The agent, the
// operator client, the configuration and the CLI import this package; no other package spells a
// topic, a payload field or an API path. The package is pure: no I/O, no dependencies beyond the
// standard library.
package contract
