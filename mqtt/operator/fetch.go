package operator

import (
	"context"
	"fmt"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Publish publishes payload on topic with QoS 1 and returns once the broker has acknowledged
// it. A retained publish with an empty payload clears the topic's retained message.
// `station fleet update` publishes update artifacts with it (agent/contract/update.go).
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, retained bool) error {
	if err := c.Err(); err != nil {
		return err
	}
	return c.await(ctx, c.pc.Publish(topic, 1, retained, payload), "publish to "+topic)
}

// PublishAsync starts a QoS 1 publish and returns a function that waits for its
// acknowledgement, so that a caller can keep several publishes in flight.
func (c *Client) PublishAsync(topic string, payload []byte, retained bool) func(ctx context.Context) error {
	tok := c.pc.Publish(topic, 1, retained, payload)
	return func(ctx context.Context) error { return c.await(ctx, tok, "publish to "+topic) }
}

// Fetch subscribes to topic (no wildcards), returns the payload of the first message that
// arrives (a retained one comes at once), and unsubscribes. It waits until ctx ends. Stations
// fetch update artifacts with it, one chunk at a time, so memory stays at one message.
func (c *Client) Fetch(ctx context.Context, topic string) ([]byte, error) {
	ch := make(chan []byte, 1)
	unsub, err := c.subscribe(ctx, topic, func(m paho.Message) {
		if m.Topic() != topic {
			return
		}
		select {
		case ch <- append([]byte(nil), m.Payload()...):
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	defer unsub()
	select {
	case b := <-ch:
		return b, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("operator: nothing on %s: %w", topic, ctx.Err())
	case <-c.lost:
		return nil, c.lostErr
	}
}

// Subscribe subscribes to filter at QoS 1 and returns once the broker has granted it, so nothing
// published afterwards is missed; fn gets each matching message on paho's receive path and must
// not block. The returned function unsubscribes.
func (c *Client) Subscribe(ctx context.Context, filter string, fn func(topic string, payload []byte, retained bool)) (func(), error) {
	return c.subscribe(ctx, filter, func(m paho.Message) {
		fn(m.Topic(), append([]byte(nil), m.Payload()...), m.Retained())
	})
}
