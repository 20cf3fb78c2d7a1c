//! Handles to the metrics every message touches, made once per gateway: `metrics::counter!`
//! finds its series by hashing the name and labels on every call, which at 20k messages a
//! second was a visible share of the gateway's CPU.

use metrics::{Counter, Gauge, Histogram};

/// One transport's series (`transport` label).
pub struct TransportTraffic {
    pub messages_in: Counter,
    pub messages_out: Counter,
    connections: Gauge,
}

impl TransportTraffic {
    fn new(transport: &'static str) -> Self {
        TransportTraffic {
            messages_in: metrics::counter!("ampora_gateway_messages_in_total", "transport" => transport),
            messages_out: metrics::counter!("ampora_gateway_messages_out_total", "transport" => transport),
            connections: metrics::gauge!("ampora_gateway_connections", "transport" => transport),
        }
    }

    /// Counts an open connection in `ampora_gateway_connections{transport}` while the returned
    /// guard lives. An HTTP exchange is a connection of one message.
    pub fn open_connection(&self) -> Counted {
        Counted::new(&self.connections)
    }
}

/// One of what a gauge counts (an open connection, a waiting handshake), until dropped.
pub struct Counted(Gauge);

impl Counted {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The gateway's per-message series.
pub struct Traffic {
    pub bytes_in: Counter,
    /// Connections waiting for a TLS handshake slot, and handshakes in progress.
    pub tls_handshakes_waiting: Gauge,
    pub tls_handshakes_in_progress: Gauge,
    pub http_reply_seconds: Histogram,
    pub websocket: TransportTraffic,
    pub http: TransportTraffic,
}

impl Traffic {
    pub fn new() -> Self {
        // The handles record into the process's Prometheus recorder, so it must exist first.
        ampora_shared::telemetry::prometheus();
        Traffic {
            bytes_in: metrics::counter!("ampora_gateway_bytes_in_total"),
            tls_handshakes_waiting: metrics::gauge!("ampora_gateway_tls_handshakes_waiting"),
            tls_handshakes_in_progress: metrics::gauge!(
                "ampora_gateway_tls_handshakes_in_progress"
            ),
            http_reply_seconds: metrics::histogram!("ampora_gateway_http_reply_seconds"),
            websocket: TransportTraffic::new("websocket"),
            http: TransportTraffic::new("http"),
        }
    }
}
