package mqtt

// Message is a message received on a subscribed topic.
type Message struct {
	Topic   string
	Payload []byte
	// Retained is set when the broker kept the message and delivers it because of a new
	// subscription, not because someone just published it.
	Retained bool

	ack func()
}

// Ack acknowledges the message to the broker (PUBACK). Call it once the
// message is safely handled; until then the broker keeps it and delivers
// it again after a reconnect. Calling Ack more than once is harmless; an
// Ack after the connection that delivered the message was lost is dropped
// (the broker delivers the message again on the next connection). Ack may
// block briefly while the connection is congested.
func (m Message) Ack() {
	if m.ack != nil {
		m.ack()
	}
}
