package mqtt

// Message is a message received on a subscribed topic.
type Message struct {
	Topic   string
	Payload []byte
	// Retained is set when the broker kept the message and delivers it because of a new
	// subscription, not because someone just published it.
	Retained bool

	ack, nack func()
}

// Ack acknowledges the message to the broker (PUBACK). Call it once the
// message is safely handled; until then the broker keeps it and delivers
// it again after a reconnect. PUBACKs leave in receive order: an
// acknowledged message waits for those received before it. Calling Ack
// more than once is harmless; an Ack after the connection that delivered
// the message was lost is dropped (the broker delivers the message again
// on the next connection). Ack does not wait for the network.
func (m Message) Ack() {
	if m.ack != nil {
		m.ack()
	}
}

// Nack reports that the message could not be handled (it could not be
// stored): the link drops the connection, so that the broker delivers it
// again at once on the next one, instead of holding it unacknowledged
// until some later reconnect.
func (m Message) Nack() {
	if m.nack != nil {
		m.nack()
	}
}
