//! Wiring: turns the parsed command line into running gateway and control-plane roles.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ampora_control_plane::audit::retention::RetentionPolicy;
use ampora_control_plane::config::ControlPlaneConfig;
use ampora_control_plane::ingest::Readiness;
use ampora_control_plane::operators::{self, FirstRun, OperatorError, Passwords};
use ampora_control_plane::storage::{self, StoreOptions};
use ampora_control_plane::trust::ca::Kek;
use ampora_control_plane::trust::signer::Pkcs11Settings;
use ampora_control_plane::trust::TrustConfig;
use ampora_gateway::{Gateway, GatewayConfig, GatewayError, TlsConfig};
use ampora_shared::bus::{Bus, InProcessBus, NatsBus, NatsOptions};
use ampora_shared::subjects::{Subjects, DEFAULT_PARTITIONS};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{
    BusArgs, ControlPlaneArgs, ControlPlaneOptions, GatewayArgs, GatewayOptions, HttpArgs, Role,
    ServeArgs, StorageArgs, TrustOptions,
};

/// A mistake in the configuration (exit status 64), as opposed to a failure while running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub async fn run(role: Role) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signal(shutdown.clone()));
    match role {
        Role::Serve(args) => serve(args, shutdown).await,
        Role::Gateway(args) => gateway(args, shutdown).await,
        Role::ControlPlane(args) => control_plane(args, shutdown).await,
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ServeArgs {
        opamp_listen,
        http,
        storage,
        gateway,
        control_plane,
        bus_queue,
    } = args;
    let subjects = Subjects::new(ampora_shared::subjects::DEFAULT_PREFIX, DEFAULT_PARTITIONS);
    let gateway_config = gateway_config(&gateway, subjects.clone());
    ampora_gateway::check_exposure(&gateway_config, opamp_listen).map_err(gateway_error)?;
    let database_url = database_url(&storage)?;
    let store = open_store(&database_url, &control_plane).await?;
    let first_run = first_account(store.as_ref(), &control_plane, &storage).await?;
    let in_process_bus = InProcessBus::with_queue_capacity(bus_queue.get());
    let bus: Arc<dyn Bus> = Arc::new(in_process_bus.clone());
    let opamp_listener = bind(opamp_listen, "AMPORA_OPAMP_LISTEN").await?;
    let http_listener = bind(http.http_listen, "AMPORA_HTTP_LISTEN").await?;
    let opamp_addr = opamp_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    // The control-plane stops after the gateway, so it still records the agents the gateway
    // disconnects while draining.
    let control_plane_stop = CancellationToken::new();
    let readiness = Readiness::default();
    let mut control_plane = tokio::spawn(ampora_control_plane::run(
        http_listener,
        ControlPlaneConfig {
            http_tls: http_tls(&http)?,
            ..control_plane_config(&control_plane, subjects.clone(), &storage.data_dir)?
        },
        store,
        bus.clone(),
        readiness.clone(),
        control_plane_stop.clone().cancelled_owned(),
    ));
    tokio::select! {
        () = readiness.ready() => {}
        stopped = &mut control_plane => {
            return stopped?.context("control-plane failed to start");
        }
    }
    let tls = gateway.tls_cert.is_some();
    let gateway = match Gateway::start(opamp_listener, gateway_config, bus).await {
        Ok(gateway) => gateway,
        Err(error) => {
            control_plane_stop.cancel();
            control_plane.await?.context("control-plane failed")?;
            return Err(gateway_error(error));
        }
    };
    let agents = gateway.agent_authentication();
    let gateway = tokio::spawn(gateway.serve(shutdown.clone().cancelled_owned()));
    let (ws, http_scheme) = if tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    println!("Ampora is ready.");
    println!("  OpAMP WebSocket: {ws}://{opamp_addr}/v1/opamp");
    println!("  OpAMP HTTP:      {http_scheme}://{opamp_addr}/v1/opamp");
    let api_scheme = if http.http_tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!("  API:             {api_scheme}://{http_addr}/api/v1/agents");
    print_sign_in(&first_run, &format!("{api_scheme}://{http_addr}"));
    println!("  Agents:          {agents}");
    tracing::info!(%opamp_addr, %http_addr, database = %redact(&database_url), "ampora serve ready");

    let gateway_result = gateway.await;
    // The drained gateway has published its last envelopes; the control-plane stops once it
    // has taken them.
    in_process_bus.flushed().await;
    control_plane_stop.cancel();
    let control_plane_result = control_plane.await;
    gateway_result.context("gateway failed")?;
    control_plane_result?.context("control-plane failed")?;
    Ok(())
}

async fn open_store(
    url: &str,
    options: &ControlPlaneOptions,
) -> anyhow::Result<Arc<dyn storage::Store>> {
    match storage::connect(url, store_options(options)).await {
        Err(storage::StoreError::UnsupportedUrl(scheme)) => Err(ConfigError(format!(
            "AMPORA_DATABASE_URL {scheme}: expected postgres://… or sqlite:…"
        ))
        .into()),
        result => result.with_context(|| format!("while opening the database {}", redact(url))),
    }
}

/// Creates the first account when there is none (first run).
async fn first_account(
    store: &dyn storage::Store,
    options: &ControlPlaneOptions,
    storage: &StorageArgs,
) -> anyhow::Result<FirstRun> {
    // Set but empty counts as unset, as in a compose file's `AMPORA_ADMIN_PASSWORD: ""`.
    let password = options
        .admin_password
        .as_ref()
        .map(|secret| secret.0.as_str())
        .filter(|password| !password.is_empty());
    let now = time::OffsetDateTime::now_utc();
    let passwords = Passwords::default();
    match operators::ensure_admin(store, &passwords, password, &storage.data_dir, now).await {
        Err(OperatorError::Invalid(message)) => Err(ConfigError(message).into()),
        result => result.context("while creating the first account"),
    }
}

/// How to sign in; a generated password is shown this once.
fn print_sign_in(first_run: &FirstRun, api: &str) {
    match first_run {
        FirstRun::Generated { password, file } => {
            println!("  First run: created the account admin with password {password}");
            println!(
                "             (also in {}, mode 0600; change it after signing in)",
                file.display()
            );
        }
        FirstRun::Created => {
            println!(
                "  First run: created the account admin with the password in AMPORA_ADMIN_PASSWORD"
            );
        }
        FirstRun::AccountsExist => {}
    }
    println!("  Sign in:         POST {api}/api/v1/auth/login {{\"username\", \"password\"}}");
}

fn database_url(storage: &StorageArgs) -> anyhow::Result<String> {
    if let Some(url) = &storage.database_url {
        return Ok(url.clone());
    }
    std::fs::create_dir_all(&storage.data_dir).map_err(|e| {
        ConfigError(format!(
            "AMPORA_DATA_DIR {}: cannot create it: {e}",
            storage.data_dir.display()
        ))
    })?;
    Ok(format!(
        "sqlite:{}",
        Path::new(&storage.data_dir).join("ampora.db").display()
    ))
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

async fn bind(addr: SocketAddr, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError(format!("{variable} {addr}: cannot listen: {e}")).into())
}

fn store_options(options: &ControlPlaneOptions) -> StoreOptions {
    StoreOptions {
        gzip_threshold: options.gzip_threshold,
        ..StoreOptions::default()
    }
}

fn control_plane_config(
    options: &ControlPlaneOptions,
    subjects: Subjects,
    data_dir: &Path,
) -> anyhow::Result<ControlPlaneConfig> {
    let defaults = ControlPlaneConfig::default();
    Ok(ControlPlaneConfig {
        replica_id: options.replica_id.clone().unwrap_or(defaults.replica_id),
        subjects,
        workers: options.ingest_workers.max(1),
        batch_max: options.ingest_batch.max(1),
        round_interval: options.ingest_round_interval,
        worker_queue: options.ingest_queue.get(),
        retry_after: options.control_plane_retry_after,
        heartbeat_timeout: options.heartbeat_timeout,
        sweep_interval: options.sweep_interval,
        lease_ttl: options.lease_ttl,
        // Renew well within the lease so one slow round does not lose it.
        lease_renew_interval: (options.lease_ttl / 5).max(Duration::from_millis(100)),
        heartbeat_interval: options.control_plane_heartbeat_interval,
        gateway_timeout: options.gateway_timeout,
        api_request_timeout: options.api_request_timeout,
        agent_heartbeat_interval: options.agent_heartbeat_interval,
        assignment_check_interval: options.assignment_check_interval,
        offer_retry_interval: options.offer_retry_interval,
        trust: trust_config(&options.trust, data_dir)?,
        session_ttl: options.session_ttl,
        audit_retention: RetentionPolicy {
            hot: days(options.audit_hot_days),
            retain: days(options.audit_retain_days.max(options.audit_hot_days)),
        },
        ..defaults
    })
}

/// HTTPS for the API, when a certificate and key are given.
fn http_tls(http: &HttpArgs) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&http.http_tls_cert, &http.http_tls_key) else {
        return Ok(None);
    };
    let config = ampora_control_plane::api::tls::server_config(cert, key)
        .map_err(|e| ConfigError(format!("AMPORA_HTTP_TLS_CERT/KEY: {e}")))?;
    Ok(Some(config))
}

/// The CA's key: in a PKCS#11 token, or sealed with the key-encryption key from
/// `AMPORA_CA_KEK_FILE`, `AMPORA_CA_KEK`, or else a `ca.kek` file in the data dir (created when
/// missing, and said so).
fn trust_config(options: &TrustOptions, data_dir: &Path) -> anyhow::Result<TrustConfig> {
    let kek = match (&options.ca_kek_file, &options.ca_kek) {
        (Some(path), _) => {
            Kek::from_file(path).map_err(|e| ConfigError(format!("AMPORA_CA_KEK_FILE: {e}")))?
        }
        (None, Some(text)) => {
            Kek::from_base64(text).map_err(|e| ConfigError(format!("AMPORA_CA_KEK: {e}")))?
        }
        (None, None) => {
            let path = data_dir.join("ca.kek");
            let (kek, created) = Kek::load_or_create(&path).map_err(|e| {
                ConfigError(format!(
                    "no AMPORA_CA_KEK_FILE or AMPORA_CA_KEK, and the data dir's: {e}"
                ))
            })?;
            if created {
                println!(
                    "Created the CA key-encryption key {} (mode 0600); keep it safe, and give \
                     every replica the same one (AMPORA_CA_KEK_FILE).",
                    path.display()
                );
            }
            tracing::info!(path = %path.display(), created, "CA key-encryption key from the data dir");
            kek
        }
    };
    let pkcs11 = options
        .ca_pkcs11_module
        .as_ref()
        .map(|module| Pkcs11Settings {
            module: module.clone(),
            token_label: options.ca_pkcs11_token_label.clone(),
            slot: options.ca_pkcs11_slot,
            pin: options.ca_pkcs11_pin.clone().unwrap_or_default(),
            key_label: options.ca_pkcs11_key_label.clone(),
        });
    Ok(TrustConfig {
        kek: Some(Arc::new(kek)),
        pkcs11,
        bootstrap_token_ttl: options.bootstrap_token_ttl,
        certificate_lifetime: options.certificate_lifetime,
        renewal_window: options.certificate_renewal_window,
        publish_interval: options.trust_publish_interval,
        ..TrustConfig::default()
    })
}

fn days(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 24 * 3600)
}

fn gateway_config(options: &GatewayOptions, subjects: Subjects) -> GatewayConfig {
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert_path), Some(key_path)) => Some(TlsConfig {
            ticket_key_file: options.tls_ticket_key_file.clone(),
            client_auth: options.tls_client_auth.unwrap_or_default(),
            ..TlsConfig::new(cert_path.clone(), key_path.clone())
        }),
        _ => None,
    };
    GatewayConfig {
        gateway_id: options
            .gateway_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        tls,
        max_message_size: options.max_message_size,
        ws_ping_interval: options.ws_ping_interval,
        ws_idle_timeout: options.ws_idle_timeout,
        first_message_timeout: options.first_message_timeout,
        http_reply_timeout: options.http_reply_timeout,
        max_connections: options.max_connections,
        max_tls_handshakes: options.max_tls_handshakes,
        ws_read_buffer_size: options.ws_read_buffer.get(),
        ws_write_buffer_size: options.ws_write_buffer.get(),
        ws_max_write_buffer_size: options.ws_max_write_buffer.get(),
        connection_queue: options.connection_queue.get(),
        retry_after: options.gateway_retry_after,
        shutdown_grace: options.shutdown_grace,
        control_plane_timeout: options.control_plane_timeout,
        heartbeat_interval: options.gateway_heartbeat_interval,
        subjects,
        proxy_protocol_from: options.proxy_protocol_from.clone().unwrap_or_default(),
        insecure: options.insecure,
        trust_request_interval: GatewayConfig::default().trust_request_interval,
    }
}

/// Certificates, keys and ticket key files the gateway cannot use, and plain agents on a public
/// address without the insecure flag, are configuration mistakes.
fn gateway_error(error: GatewayError) -> anyhow::Error {
    match error {
        GatewayError::Tls(_) | GatewayError::Insecure(_) => ConfigError(error.to_string()).into(),
        other => other.into(),
    }
}

async fn connect_bus(args: &BusArgs, name: &str) -> anyhow::Result<Arc<dyn Bus>> {
    let options = NatsOptions {
        url: args.nats_url.clone(),
        name: name.to_owned(),
        tls_ca: args.nats_ca.clone(),
        tls_client_cert: args.nats_cert.clone(),
        tls_client_key: args.nats_key.clone(),
        credentials_file: args.nats_creds.clone(),
        nkey_seed: args.nats_nkey.clone(),
        subscription_capacity: args.bus_queue.get(),
    };
    let bus = NatsBus::connect(&options)
        .await
        .context("while connecting to NATS")?;
    Ok(Arc::new(bus))
}

fn subjects(args: &BusArgs) -> Subjects {
    Subjects::new(args.bus_prefix.clone(), DEFAULT_PARTITIONS)
}

async fn gateway(args: GatewayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let GatewayArgs {
        opamp_listen,
        gateway,
        bus,
    } = args;
    let config = gateway_config(&gateway, subjects(&bus));
    ampora_gateway::check_exposure(&config, opamp_listen).map_err(gateway_error)?;
    let connection = connect_bus(&bus, &format!("ampora-gateway-{}", config.gateway_id)).await?;
    let listener = bind(opamp_listen, "AMPORA_OPAMP_LISTEN").await?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let gateway_id = config.gateway_id.clone();
    let gateway = Gateway::start(listener, config, connection)
        .await
        .map_err(gateway_error)?;
    println!("Ampora gateway {gateway_id} is ready.");
    println!("  OpAMP: {scheme}://{addr}/v1/opamp");
    println!("  Agents: {}", gateway.agent_authentication());
    tracing::info!(%addr, %gateway_id, "gateway ready");
    gateway.serve(shutdown.cancelled_owned()).await;
    Ok(())
}

async fn control_plane(args: ControlPlaneArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ControlPlaneArgs {
        http,
        storage,
        control_plane,
        bus,
    } = args;
    let database_url = database_url(&storage)?;
    let store = open_store(&database_url, &control_plane).await?;
    let first_run = first_account(store.as_ref(), &control_plane, &storage).await?;
    let connection = connect_bus(&bus, "ampora-control-plane").await?;
    let listener = bind(http.http_listen, "AMPORA_HTTP_LISTEN").await?;
    let addr = listener.local_addr()?;
    let config = ControlPlaneConfig {
        http_tls: http_tls(&http)?,
        ..control_plane_config(&control_plane, subjects(&bus), &storage.data_dir)?
    };
    let scheme = if config.http_tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("Ampora control-plane is ready.");
    println!("  API: {scheme}://{addr}/api/v1/agents");
    print_sign_in(&first_run, &format!("{scheme}://{addr}"));
    tracing::info!(%addr, database = %redact(&database_url), "control-plane ready");
    ampora_control_plane::run(
        listener,
        config,
        store,
        connection,
        Readiness::default(),
        shutdown.cancelled_owned(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Role {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Role(role) => *role,
            Command::Configs(_) => unreachable!("parsed as a role"),
        }
    }

    /// The flags' documented defaults are the libraries' own: one set of defaults, not two.
    #[test]
    fn flags_default_to_the_library_defaults() {
        let Role::Gateway(args) = parse(&["ampora", "gateway", "--nats-url", "nats://x"]) else {
            unreachable!("parsed as the gateway role");
        };
        let gateway = GatewayConfig {
            gateway_id: "one".to_owned(),
            ..gateway_config(&args.gateway, subjects(&args.bus))
        };
        let library = GatewayConfig {
            gateway_id: "one".to_owned(),
            ..GatewayConfig::default()
        };
        assert_eq!(format!("{gateway:?}"), format!("{library:?}"));

        let Role::ControlPlane(args) =
            parse(&["ampora", "control-plane", "--nats-url", "nats://x"])
        else {
            unreachable!("parsed as the control-plane role");
        };
        let data_dir = tempfile::tempdir().unwrap();
        let control_plane = ControlPlaneConfig {
            replica_id: "one".to_owned(),
            ..control_plane_config(&args.control_plane, subjects(&args.bus), data_dir.path())
                .unwrap()
        };
        // With no key-encryption key set, one is made in the data dir.
        assert!(data_dir.path().join("ca.kek").exists());
        let library = ControlPlaneConfig {
            replica_id: "one".to_owned(),
            trust: TrustConfig {
                kek: control_plane.trust.kek.clone(),
                ..TrustConfig::default()
            },
            ..ControlPlaneConfig::default()
        };
        assert_eq!(format!("{control_plane:?}"), format!("{library:?}"));
        assert_eq!(
            format!("{:?}", store_options(&args.control_plane)),
            format!("{:?}", StoreOptions::default())
        );
    }

    #[test]
    fn a_ticket_key_file_goes_with_the_tls_settings() {
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let ticket_keys = ["--tls-ticket-key-file", "/etc/ampora/tickets"];
        let Role::Serve(args) = parse(&[&["ampora", "serve"], &tls[..], &ticket_keys[..]].concat())
        else {
            unreachable!("parsed as serve");
        };
        let tls_config = gateway_config(&args.gateway, Subjects::default())
            .tls
            .unwrap();
        let expected = TlsConfig {
            ticket_key_file: Some("/etc/ampora/tickets".into()),
            ..TlsConfig::new("c.pem".into(), "k.pem".into())
        };
        assert_eq!(format!("{tls_config:?}"), format!("{expected:?}"));

        let without_tls = [
            &["ampora", "gateway", "--nats-url", "nats://x"],
            &ticket_keys[..],
        ]
        .concat();
        assert!(
            Cli::try_parse_from(without_tls).is_err(),
            "needs --tls-cert"
        );
    }

    #[test]
    fn unusable_tls_files_are_configuration_errors() {
        let tls = gateway_error(GatewayError::Tls("ticket key file t: line 2: …".into()));
        assert!(tls.is::<ConfigError>());
        let listener = gateway_error(GatewayError::Io(std::io::ErrorKind::AddrInUse.into()));
        assert!(!listener.is::<ConfigError>());
    }
}
