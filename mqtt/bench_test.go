package mqtt_test

import (
	"context"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/mqtt/internal/mqtttest"
)

// The drain benchmarks publish benchItems payloads of benchPayload bytes
// with QoS 1 and a window of 32, per iteration. BenchmarkDrain goes
// through the link (outbox reads, per-item PUBACK tracking, batched
// deletes); BenchmarkBarePaho is one paho client keeping 32 tokens
// outstanding. Compare their items/s (same broker, same run):
//
//	go test -run '^$' -bench 'Drain|BarePaho' -benchtime 5x ./mqtt/
//	STATION_TEST_MQTT_URL=tcp://127.0.0.1:18830 go test ... (Mosquitto)
const (
	benchItems   = 50000
	benchPayload = 300
	benchWindow  = 32
)

func benchPayloads() [][]byte {
	p := make([][]byte, benchItems)
	for i := range p {
		p[i] = mqtttest.Payload(uint64(i+1), benchPayload)
	}
	return p
}

func BenchmarkDrain(b *testing.B) {
	br := brokertest.New(b)
	payloads := benchPayloads()
	topic := "bench/" + brokertest.UniquePrefix(b) + "/events"
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		out := mqtttest.NewMemOutbox()
		out.Add(events, benchItems, func(seq uint64) []byte { return payloads[seq-1] })
		l, err := mqtt.New(mqtt.Config{
			Broker:   br.URL(),
			ClientID: brokertest.UniquePrefix(b),
			Window:   benchWindow,
			Streams:  []mqtt.Stream{{Name: events, Topic: topic, QoS: 1}},
		}, out)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		b.StartTimer()

		go func() { done <- l.Run(ctx) }()
		out.WaitEmptyB(b)

		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if st := l.Stats(); st.Acked != benchItems || st.Connects != 1 {
			b.Fatalf("stats %+v", st)
		}
	}
	b.ReportMetric(float64(benchItems*b.N)/b.Elapsed().Seconds(), "items/s")
}

func BenchmarkBarePaho(b *testing.B) {
	br := brokertest.New(b)
	payloads := benchPayloads()
	topic := "bench/" + brokertest.UniquePrefix(b) + "/events"
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		o := paho.NewClientOptions().AddBroker(br.URL()).SetClientID(brokertest.UniquePrefix(b)).
			SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).
			SetStore(paho.NewMemoryStore())
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.Wait() || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		b.StartTimer()

		var ring [benchWindow]paho.Token
		for i, p := range payloads {
			if t := ring[i%benchWindow]; t != nil {
				<-t.Done()
				if err := t.Error(); err != nil {
					b.Fatal(err)
				}
			}
			ring[i%benchWindow] = c.Publish(topic, 1, false, p)
		}
		for _, t := range ring {
			<-t.Done()
			if err := t.Error(); err != nil {
				b.Fatal(err)
			}
		}

		b.StopTimer()
		c.Disconnect(250)
	}
	b.ReportMetric(float64(benchItems*b.N)/b.Elapsed().Seconds(), "items/s")
}
