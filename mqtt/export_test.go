package mqtt

// Backoff exposes backoff to the tests.
var Backoff = backoff
