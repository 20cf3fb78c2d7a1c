//! What both sides of Ampora speak.
//!
//! # Layout
//! - [`pb`]: protobuf types generated from `proto/` — OpAMP itself (`pb::opamp`) and our bus
//!   messages (`pb::bus`).
//! - [`codec`]: OpAMP framing — the WebSocket header byte, bounded gzip in and out.
//! - [`uid`]: the 16-byte instance uid as a [`uuid::Uuid`].
//! - [`subjects`]: the bus subjects, so both sides name them the same way.
//! - [`bus`]: the [`bus::Bus`] trait (publish, subscribe, queue-subscribe: shaped on NATS) and the
//!   in-process implementation used by `ampora serve`, and the NATS one for production.
//! - [`http1`]: serving one HTTP/1.1 connection with bounded request heads, for every listener.
//! - [`server_error`]: the OpAMP error reply (`ServerErrorResponse`, optional `RetryInfo`) both
//!   sides send.
//! - [`telemetry`]: tracing and Prometheus set-up for every binary role, and its `/metrics`.
//! - `testing` (feature `testing`): a throwaway `nats-server` for tests.
//!
//! Data moves: gateway decodes a frame with [`codec`], wraps it in a [`pb::bus::AgentEnvelope`],
//! publishes it on [`subjects::Subjects::agent_inbound`]; the control-plane answers with a
//! [`pb::bus::GatewayDelivery`] on [`subjects::Subjects::gateway`].

pub mod bus;
pub mod codec;
pub mod http1;
pub mod pb;
pub mod server_error;
pub mod subjects;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod uid;
