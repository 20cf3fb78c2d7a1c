// Command go-agent is a small OpAMP agent built on the reference Go client library
// (github.com/open-telemetry/opamp-go). Ampora's interop tests run it against a real server.
//
// It describes itself (service.name plus -attr pairs), reports healthy, reports an effective
// config, prints "instance_uid=<uuid>" as its first stdout line, and on SIGTERM or SIGINT stops
// the client (over WebSocket that sends AgentDisconnect) and exits 0.
//
// It applies the remote configs it is offered (see apply), and prints one stdout line per offer,
// "offer hash=<hex>", then "applied hash=<hex>" or "failed hash=<hex> error=<text>".
//
// It can enrol for a client certificate and reconnect with it (see enrol.go): -token, -csr;
// -cert and -key start it with a certificate already installed, -server-ca names the CA that
// signs the server's own certificate for wss:// and https:// URLs.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
	"gopkg.in/yaml.v3"
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

// agentConfig is what the agent runs: its effective config, guarded because the library calls
// GetEffectiveConfig from its own goroutines.
type agentConfig struct {
	mu        sync.Mutex
	effective *protobufs.EffectiveConfig
}

func (c *agentConfig) get() *protobufs.EffectiveConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.effective
}

func (c *agentConfig) set(body []byte, contentType string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.effective = &protobufs.EffectiveConfig{
		ConfigMap: &protobufs.AgentConfigMap{
			ConfigMap: map[string]*protobufs.AgentConfigFile{
				"": {Body: body, ContentType: contentType},
			},
		},
	}
}

// apply checks an offered config the way a real agent would before running it: the file ""
// must be YAML, and a processor named `batch/reject` stands for a component the agent cannot run.
func apply(remote *protobufs.AgentRemoteConfig) (*protobufs.AgentConfigFile, error) {
	file, ok := remote.GetConfig().GetConfigMap()[""]
	if !ok {
		return nil, errors.New(`the offered config has no file ""`)
	}
	var parsed map[string]any
	if err := yaml.Unmarshal(file.GetBody(), &parsed); err != nil {
		return nil, fmt.Errorf("not YAML: %w", err)
	}
	if processors, ok := parsed["processors"].(map[string]any); ok {
		if _, found := processors["batch/reject"]; found {
			return nil, errors.New("cannot run processor batch/reject")
		}
	}
	return file, nil
}

// say prints one line on stdout, where the tests read it.
var stdoutMu sync.Mutex

func say(format string, args ...any) {
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	fmt.Printf(format+"\n", args...)
	os.Stdout.Sync()
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
	token := flag.String("token", "", "bootstrap token, sent as Authorization: Bearer until the agent has a certificate")
	sendCSR := flag.Bool("csr", false, "send a certificate signing request (with -token); without, the server may make the key")
	certFile := flag.String("cert", "", "client certificate (PEM) to connect with")
	keyFile := flag.String("key", "", "the client certificate's key (PEM)")
	serverCA := flag.String("server-ca", "", "CA (PEM) that signs the server's certificate")
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
	// For HTTP, opamp-go turns the heartbeat interval into the polling interval, so both are the
	// poll interval there.
	interval := *heartbeat
	if *transport == "http" {
		if *pollInterval <= 0 {
			log.Fatalf("-poll-interval must be positive")
		}
		interval = *pollInterval
	} else if *transport != "ws" {
		log.Fatalf("unknown -transport %q (want ws or http)", *transport)
	}
	enrolling := *token != "" || *certFile != ""

	nonIdentifying := []*protobufs.KeyValue{
		{Key: "os.type", Value: str("linux")},
	}
	for _, pair := range extra {
		key, value, _ := strings.Cut(pair, "=")
		nonIdentifying = append(nonIdentifying, &protobufs.KeyValue{Key: key, Value: str(value)})
	}
	started := time.Now()

	// newClient makes a client that describes the agent; one per connection's credentials.
	newClient := func() client.OpAMPClient {
		var opamp client.OpAMPClient
		if *transport == "http" {
			httpClient := client.NewHTTP(logger)
			httpClient.SetPollingInterval(*pollInterval)
			opamp = httpClient
		} else {
			opamp = client.NewWebSocket(logger)
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
		if enrolling {
			capabilities |= protobufs.AgentCapabilities_AgentCapabilities_AcceptsOpAMPConnectionSettings
		}
		if err := opamp.SetCapabilities(&capabilities); err != nil {
			log.Fatalf("capabilities: %v", err)
		}
		return opamp
	}
	var current struct {
		sync.Mutex
		client client.OpAMPClient
	}
	currentClient := func() client.OpAMPClient {
		current.Lock()
		defer current.Unlock()
		return current.client
	}

	configBody := fmt.Sprintf("# go-agent %s\nreceivers:\n  otlp:\n    protocols:\n      grpc: {}\nservice:\n  pipelines: {}\n", *name)
	config := &agentConfig{}
	config.set([]byte(configBody), "text/yaml")

	// Set once Start has returned: OnMessage may run before.
	var opampReady sync.WaitGroup
	opampReady.Add(1)
	onMessage := func(ctx context.Context, msg *types.MessageData) {
		remote := msg.RemoteConfig
		if remote == nil {
			return
		}
		opampReady.Wait()
		hash := hex.EncodeToString(remote.GetConfigHash())
		say("offer hash=%s", hash)
		status := &protobufs.RemoteConfigStatus{LastRemoteConfigHash: remote.GetConfigHash()}
		file, err := apply(remote)
		if err != nil {
			status.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED
			status.ErrorMessage = err.Error()
		} else {
			status.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED
			contentType := file.GetContentType()
			if contentType == "" {
				contentType = "text/yaml"
			}
			config.set(file.GetBody(), contentType)
			if err := currentClient().UpdateEffectiveConfig(ctx); err != nil {
				log.Printf("update effective config: %v", err)
			}
		}
		if err := currentClient().SetRemoteConfigStatus(status); err != nil {
			log.Printf("set remote config status: %v", err)
		}
		if err != nil {
			say("failed hash=%s error=%s", hash, strings.Join(strings.Fields(err.Error()), " "))
		} else {
			say("applied hash=%s", hash)
		}
	}

	enrol := newEnrolment()
	tlsConfig := &tls.Config{}
	if *serverCA != "" {
		pemBytes, err := os.ReadFile(*serverCA)
		if err != nil {
			log.Fatalf("-server-ca: %v", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			log.Fatalf("-server-ca %s: no certificate", *serverCA)
		}
		tlsConfig.RootCAs = roots
	}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatalf("-cert/-key: %v", err)
		}
		tlsConfig.Certificates = []tls.Certificate{pair}
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
				return config.get(), nil
			},
			OnMessage:                 onMessage,
			OnOpampConnectionSettings: enrol.onSettings,
		},
	}
	if *serverCA != "" || *certFile != "" {
		settings.TLSConfig = tlsConfig
	}
	if *token != "" && *certFile == "" {
		settings.Header = http.Header{"Authorization": {"Bearer " + *token}}
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	opamp := newClient()
	current.client = opamp
	if err := opamp.Start(context.Background(), settings); err != nil {
		log.Fatalf("start: %v", err)
	}
	say("instance_uid=%s", uid.String())
	opampReady.Done()
	if *sendCSR {
		csr, err := enrol.request(uid)
		if err != nil {
			log.Fatalf("certificate signing request: %v", err)
		}
		if err := opamp.RequestConnectionSettings(&protobufs.ConnectionSettingsRequest{
			Opamp: &protobufs.OpAMPConnectionSettingsRequest{
				CertificateRequest: &protobufs.CertificateRequest{Csr: csr},
			},
		}); err != nil {
			log.Fatalf("request connection settings: %v", err)
		}
	}

	for {
		select {
		case received := <-signals:
			log.Printf("%v: stopping", received)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := currentClient().Stop(ctx); err != nil {
				log.Printf("stop: %v", err)
			}
			return
		case pair := <-enrol.certificates:
			// The old credential is retired: reconnect with the certificate, without the token.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := currentClient().Stop(ctx); err != nil {
				log.Printf("stop before reconnecting: %v", err)
			}
			cancel()
			withCertificate := tlsConfig.Clone()
			withCertificate.Certificates = []tls.Certificate{pair}
			settings.TLSConfig = withCertificate
			settings.Header = nil
			next := newClient()
			current.Lock()
			current.client = next
			current.Unlock()
			if err := next.Start(context.Background(), settings); err != nil {
				log.Fatalf("restart with the certificate: %v", err)
			}
			say("reconnected fingerprint=%s", fingerprint(pair))
		}
	}
}
