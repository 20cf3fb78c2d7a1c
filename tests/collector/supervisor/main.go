// Command opampsupervisor runs the OpenTelemetry Collector's OpAMP supervisor (contrib's
// cmd/opampsupervisor) for Ampora's end-to-end tests. That command cannot be `go install`ed (its
// go.mod has replace directives), so this module imports its supervisor package instead.
//
//	opampsupervisor -config supervisor.yaml
//
// It stops the supervisor, and with it the Collector, on SIGTERM or SIGINT and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/open-telemetry/opentelemetry-collector-contrib/cmd/opampsupervisor/supervisor"
	"github.com/open-telemetry/opentelemetry-collector-contrib/cmd/opampsupervisor/supervisor/config"
	"github.com/open-telemetry/opentelemetry-collector-contrib/cmd/opampsupervisor/supervisor/telemetry"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "opampsupervisor: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	configPath := flag.String("config", "", "the supervisor's configuration file")
	flag.Parse()
	if *configPath == "" {
		return fmt.Errorf("-config is required")
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		return fmt.Errorf("loading %s: %w", *configPath, err)
	}
	logger, err := telemetry.NewLogger(cfg.Telemetry.Logs)
	if err != nil {
		return fmt.Errorf("logger: %w", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sup, err := supervisor.NewSupervisor(ctx, logger.Named("supervisor"), cfg)
	if err != nil {
		return fmt.Errorf("new supervisor: %w", err)
	}
	if err := sup.Start(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	sup.Shutdown()
	return nil
}
