package agent

import (
	"context"

	"station.dev/agent/agent/contract"
	"station.dev/agent/mqtt"
	"station.dev/agent/store"
)

// Link is the broker link as the agent uses it (implemented by *mqtt.Link).
type Link interface {
	Run(ctx context.Context) error
	Stats() mqtt.Stats
	UpdateStatus()
	PublishNow(topic string, payload []byte) bool
}

// LinkHooks are the agent's side of the broker link: what it publishes, from where, and what
// it does with what arrives.
type LinkHooks struct {
	StatusTopic    string
	Status         func() []byte // the retained online status
	Will           func() []byte // the last will of each connection: offline, lost
	ShutdownStatus func() []byte // the retained status of a clean stop
	Streams        []mqtt.Stream
	Subscriptions  []string
	OnMessage      func(mqtt.Message)
	OnUndelivered  func(topic string, payload []byte) // PublishNow messages a lost connection did not deliver
	Progress       func()                             // watchdog progress of the link loop
	Outbox         mqtt.Outbox
}

// MQTTLink returns a Link builder for Parts.Link: the paho link with the connection settings of
// base (broker, credentials, TLS, keepalive, backoff, window, logger) and the agent's hooks.
func MQTTLink(base mqtt.Config) func(LinkHooks) (Link, error) {
	return func(h LinkHooks) (Link, error) {
		c := base
		c.StatusTopic, c.Status, c.Will, c.ShutdownStatus = h.StatusTopic, h.Status, h.Will, h.ShutdownStatus
		c.Streams, c.Subscriptions, c.OnMessage, c.Progress = h.Streams, h.Subscriptions, h.OnMessage, h.Progress
		c.OnUndelivered = h.OnUndelivered
		return mqtt.New(c, h.Outbox)
	}
}

func (a *Agent) linkHooks() LinkHooks {
	return LinkHooks{
		StatusTopic:    a.topics.Status,
		Status:         a.statusPayload,
		Will:           func() []byte { return a.offlinePayload(contract.ReasonLost) },
		ShutdownStatus: func() []byte { return a.offlinePayload(contract.ReasonShutdown) },
		Streams: []mqtt.Stream{
			{Name: string(store.Events), Topic: a.topics.Events, QoS: 1},
			{Name: string(store.Responses), Topic: a.topics.Resp, QoS: 1},
			{Name: string(store.Telemetry), Topic: a.topics.Telemetry, QoS: 1},
		},
		Subscriptions: []string{a.topics.Cmd, a.topics.FleetCmd},
		Progress:      a.heartbeat("link"),
		OnMessage:     a.onMessage,
		OnUndelivered: a.telemetryUndelivered,
		Outbox:        outbox{a.store, a.storeFailed},
	}
}

// telemetryUndelivered keeps a heartbeat that a lost connection took but never delivered, as
// if it had been made offline.
func (a *Agent) telemetryUndelivered(topic string, b []byte) {
	if topic != a.topics.Telemetry {
		return
	}
	a.tel.mu.Lock()
	a.tel.buf = append(a.tel.buf, b)
	a.tel.mu.Unlock()
}

// outbox adapts the store to the link's Outbox interface.
type outbox struct {
	s      *store.Store
	failed func(error) // sees every error of the store (storeFailed)
}

func (o outbox) Read(stream string, after uint64, max int) ([]mqtt.Item, error) {
	recs, err := o.s.Read(store.Stream(stream), after, max)
	if err != nil {
		o.failed(err)
		return nil, err
	}
	items := make([]mqtt.Item, len(recs))
	for i, r := range recs {
		items[i] = mqtt.Item{Seq: r.Seq, Payload: r.Payload}
	}
	return items, nil
}

func (o outbox) Delete(stream string, seqs ...uint64) error {
	err := o.s.Delete(store.Stream(stream), seqs...)
	if err != nil {
		o.failed(err)
	}
	return err
}

func (o outbox) Changed() <-chan struct{} { return o.s.Changed() }
