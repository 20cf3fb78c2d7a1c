//! The bus over NATS core: subjects and queue groups map one to one.
//!
//! NATS core is at-most-once. That is enough here because OpAMP repairs loss itself: a missing
//! message shows as a `sequence_num` gap and the control-plane asks the agent for its full state.

use std::path::PathBuf;

use async_nats::ConnectOptions;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::pattern::{validate_pattern, validate_subject};
use super::{Bus, BusError, BusMessage, Result, Subscription};

/// How to reach NATS. The URL may list several servers separated by commas and carry
/// `user:password@`.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    pub url: String,
    /// Shown in the server's connection list.
    pub name: String,
    /// CA bundle to verify the NATS server with; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS servers that verify clients.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// A `.creds` file (JWT + nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// An nkey seed (`SU…`).
    pub nkey_seed: Option<String>,
    /// Messages buffered per subscription before NATS drops for a slow consumer.
    pub subscription_capacity: usize,
}

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    pub async fn connect(options: &NatsOptions) -> Result<Self> {
        let mut connect = match &options.credentials_file {
            Some(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| {
                    BusError::Unavailable(format!("NATS credentials {}: {e}", path.display()))
                })?,
            None => ConnectOptions::new(),
        };
        if let Some(seed) = &options.nkey_seed {
            connect = connect.nkey(seed.clone());
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.require_tls(true).add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&options.tls_client_cert, &options.tls_client_key) {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        if !options.name.is_empty() {
            connect = connect.name(options.name.clone());
        }
        if options.subscription_capacity > 0 {
            connect = connect.subscription_capacity(options.subscription_capacity);
        }
        // Credentials in the URL (`nats://user:password@host` or `nats://token@host`) apply to
        // every server of the list.
        if let Some(userinfo) = options.url.split(',').find_map(|url| {
            url.trim()
                .split_once("://")?
                .1
                .split_once('@')
                .map(|(userinfo, _)| userinfo)
        }) {
            connect = match userinfo.split_once(':') {
                Some((user, password)) => {
                    connect.user_and_password(user.to_owned(), password.to_owned())
                }
                None => connect.token(userinfo.to_owned()),
            };
        }
        let servers = options
            .url
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::Unavailable(format!("NATS url {}: {e}", options.url)))?;
        let client = connect
            .retry_on_initial_connect()
            .event_callback(|event| async move { tracing::info!(%event, "NATS connection event") })
            .connect(servers)
            .await
            .map_err(|e| BusError::Unavailable(format!("NATS {}: {e}", options.url)))?;
        Ok(Self { client })
    }

    fn subscription(subscriber: async_nats::Subscriber) -> Subscription {
        Box::pin(subscriber.map(|message| BusMessage {
            subject: message.subject.to_string(),
            payload: message.payload,
        }))
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        validate_subject(subject)?;
        // The negotiated limit, read without copying the server's INFO (which `server_info`
        // clones whole, strings and all, on every call).
        let limit = self.client.max_payload();
        if payload.len() > limit {
            return Err(BusError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        self.client
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        validate_pattern(subject)?;
        let subscriber = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(Self::subscription(subscriber))
    }
}
