// Command go-agent is an OpAMP agent built on the reference Go client library
// (github.com/open-telemetry/opamp-go), used by Ampora's interop tests. It reports a description,
// health and an effective config, prints its instance uid, and stops cleanly on SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
)

type attrs []string

func (a *attrs) String() string     { return strings.Join(*a, ",") }
func (a *attrs) Set(v string) error { *a = append(*a, v); return nil }

type logger struct{}

func (logger) Debugf(_ context.Context, format string, v ...interface{}) {}
func (logger) Errorf(_ context.Context, format string, v ...interface{}) {
	log.Printf("opamp error: "+format, v...)
}

func stringValue(s string) *protobufs.AnyValue {
	return &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: s}}
}

func main() {
	url := flag.String("url", "ws://127.0.0.1:4320/v1/opamp", "OpAMP server URL")
	transport := flag.String("transport", "ws", "ws or http")
	name := flag.String("name", "interop-go-agent", "service.name")
	uidText := flag.String("uid", "", "instance uid (default: a new UUIDv7)")
	pollInterval := flag.Duration("poll-interval", time.Second, "HTTP polling interval")
	heartbeat := flag.Duration("heartbeat", 30*time.Second, "heartbeat interval")
	var extra attrs
	flag.Var(&extra, "attr", "non-identifying attribute key=value (repeatable)")
	flag.Parse()

	uid, err := uuid.NewV7()
	if *uidText != "" {
		uid, err = uuid.Parse(*uidText)
	}
	if err != nil {
		log.Fatalf("instance uid: %v", err)
	}

	var opamp client.OpAMPClient
	switch *transport {
	case "ws":
		opamp = client.NewWebSocket(logger{})
	case "http":
		httpClient := client.NewHTTP(logger{})
		httpClient.SetPollingInterval(*pollInterval)
		opamp = httpClient
	default:
		log.Fatalf("unknown transport %q", *transport)
	}

	nonIdentifying := []*protobufs.KeyValue{{Key: "os.type", Value: stringValue("linux")}}
	for _, pair := range extra {
		key, value, ok := strings.Cut(pair, "=")
		if !ok {
			log.Fatalf("attribute %q is not key=value", pair)
		}
		nonIdentifying = append(nonIdentifying, &protobufs.KeyValue{Key: key, Value: stringValue(value)})
	}
	err = opamp.SetAgentDescription(&protobufs.AgentDescription{
		IdentifyingAttributes: []*protobufs.KeyValue{
			{Key: "service.name", Value: stringValue(*name)},
			{Key: "service.version", Value: stringValue("0.0.1")},
		},
		NonIdentifyingAttributes: nonIdentifying,
	})
	if err != nil {
		log.Fatalf("agent description: %v", err)
	}
	if err := opamp.SetHealth(&protobufs.ComponentHealth{Healthy: true, Status: "running", StartTimeUnixNano: uint64(time.Now().UnixNano())}); err != nil {
		log.Fatalf("health: %v", err)
	}

	effective := &protobufs.EffectiveConfig{ConfigMap: &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
		"": {Body: []byte("receivers:\n  otlp:\n    protocols:\n      grpc: {}\n# go-agent " + *name + "\n"), ContentType: "text/yaml"},
	}}}
	capabilities := protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
		protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat
	if err := opamp.SetCapabilities(&capabilities); err != nil {
		log.Fatalf("capabilities: %v", err)
	}
	settings := types.StartSettings{
		OpAMPServerURL:    *url,
		InstanceUid:       types.InstanceUid(uid),
		HeartbeatInterval: heartbeat,
		Callbacks: types.Callbacks{
			GetEffectiveConfig: func(context.Context) (*protobufs.EffectiveConfig, error) { return effective, nil },
			OnError: func(_ context.Context, e *protobufs.ServerErrorResponse) {
				log.Printf("server error: %v", e.GetErrorMessage())
			},
		},
	}
	if err := opamp.Start(context.Background(), settings); err != nil {
		log.Fatalf("start: %v", err)
	}
	fmt.Printf("instance_uid=%s\n", uid.String())

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := opamp.Stop(ctx); err != nil {
		log.Printf("stop: %v", err)
	}
}
