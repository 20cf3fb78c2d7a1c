// Command go-agent is a small OpAMP agent built on the reference Go client library
// (github.com/open-telemetry/opamp-go). Ampora's interop tests run it against a real server.
//
// It describes itself (service.name plus -attr pairs), reports healthy, reports an effective
// config, prints "instance_uid=<uuid>" as its first stdout line, and on SIGTERM or SIGINT stops
// the client (over WebSocket that sends AgentDisconnect) and exits 0.
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

// pairs collects repeated -attr key=value flags.
type pairs []string

func (p *pairs) String() string { return strings.Join(*p, ",") }

func (p *pairs) Set(value string) error {
	if !strings.Contains(value, "=") {
		return fmt.Errorf("%q is not key=value", value)
	}
	*p = append(*p, value)
	return nil
}

// stderrLogger sends the library's errors to stderr (stdout carries only the uid line).
type stderrLogger struct{ debug bool }

func (l stderrLogger) Debugf(_ context.Context, format string, v ...interface{}) {
	if l.debug {
		log.Printf("opamp debug: "+format, v...)
	}
}

func (stderrLogger) Errorf(_ context.Context, format string, v ...interface{}) {
	log.Printf("opamp error: "+format, v...)
}

func str(s string) *protobufs.AnyValue {
	return &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: s}}
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("go-agent: ")

	url := flag.String("url", "ws://127.0.0.1:4320/v1/opamp", "OpAMP server URL (ws:// for -transport ws, http:// for -transport http)")
	transport := flag.String("transport", "ws", "ws or http")
	name := flag.String("name", "interop-go-agent", "service.name (identifying attribute)")
	uidText := flag.String("uid", "", "instance uid (default: a new UUIDv7)")
	pollInterval := flag.Duration("poll-interval", time.Second, "HTTP polling interval (HTTP only; opamp-go also uses it as the heartbeat)")
	heartbeat := flag.Duration("heartbeat", 30*time.Second, "WebSocket heartbeat interval (0 disables)")
	debug := flag.Bool("debug", false, "log the library's debug messages to stderr")
	var extra pairs
	flag.Var(&extra, "attr", "non-identifying attribute key=value (repeatable)")
	flag.Parse()

	uid, err := uuid.NewV7()
	if *uidText != "" {
		uid, err = uuid.Parse(*uidText)
	}
	if err != nil {
		log.Fatalf("instance uid: %v", err)
	}

	logger := stderrLogger{debug: *debug}
	var opamp client.OpAMPClient
	// For HTTP, opamp-go turns the heartbeat interval into the polling interval, so both are the
	// poll interval there.
	interval := *heartbeat
	switch *transport {
	case "ws":
		opamp = client.NewWebSocket(logger)
	case "http":
		if *pollInterval <= 0 {
			log.Fatalf("-poll-interval must be positive")
		}
		httpClient := client.NewHTTP(logger)
		httpClient.SetPollingInterval(*pollInterval)
		interval = *pollInterval
		opamp = httpClient
	default:
		log.Fatalf("unknown -transport %q (want ws or http)", *transport)
	}

	nonIdentifying := []*protobufs.KeyValue{
		{Key: "os.type", Value: str("linux")},
	}
	for _, pair := range extra {
		key, value, _ := strings.Cut(pair, "=")
		nonIdentifying = append(nonIdentifying, &protobufs.KeyValue{Key: key, Value: str(value)})
	}
	if err := opamp.SetAgentDescription(&protobufs.AgentDescription{
		IdentifyingAttributes: []*protobufs.KeyValue{
			{Key: "service.name", Value: str(*name)},
			{Key: "service.version", Value: str("0.0.1")},
		},
		NonIdentifyingAttributes: nonIdentifying,
	}); err != nil {
		log.Fatalf("agent description: %v", err)
	}

	started := time.Now()
	if err := opamp.SetHealth(&protobufs.ComponentHealth{
		Healthy:            true,
		Status:             "running",
		StartTimeUnixNano:  uint64(started.UnixNano()),
		StatusTimeUnixNano: uint64(started.UnixNano()),
	}); err != nil {
		log.Fatalf("health: %v", err)
	}

	// opamp-go rejects ReportsHealth until a health is set, so this comes after SetHealth.
	capabilities := protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
		protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat
	if err := opamp.SetCapabilities(&capabilities); err != nil {
		log.Fatalf("capabilities: %v", err)
	}

	configBody := fmt.Sprintf("# go-agent %s\nreceivers:\n  otlp:\n    protocols:\n      grpc: {}\nservice:\n  pipelines: {}\n", *name)
	effective := &protobufs.EffectiveConfig{
		ConfigMap: &protobufs.AgentConfigMap{
			ConfigMap: map[string]*protobufs.AgentConfigFile{
				"": {Body: []byte(configBody), ContentType: "text/yaml"},
			},
		},
	}

	settings := types.StartSettings{
		OpAMPServerURL:    *url,
		InstanceUid:       types.InstanceUid(uid),
		HeartbeatInterval: &interval,
		Callbacks: types.Callbacks{
			OnConnect: func(context.Context) {
				if *debug {
					log.Printf("connected to %s", *url)
				}
			},
			OnConnectFailed: func(_ context.Context, err error) {
				log.Printf("connect to %s failed: %v", *url, err)
			},
			OnError: func(_ context.Context, e *protobufs.ServerErrorResponse) {
				log.Printf("server error: %v", e.GetErrorMessage())
			},
			GetEffectiveConfig: func(context.Context) (*protobufs.EffectiveConfig, error) {
				return effective, nil
			},
		},
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	if err := opamp.Start(context.Background(), settings); err != nil {
		log.Fatalf("start: %v", err)
	}
	fmt.Printf("instance_uid=%s\n", uid.String())
	os.Stdout.Sync()

	received := <-signals
	log.Printf("%v: stopping", received)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := opamp.Stop(ctx); err != nil {
		log.Printf("stop: %v", err)
	}
}
