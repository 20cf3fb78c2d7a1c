//! The trust state on the bus: which CAs agents' certificates must chain to and which
//! certificates are revoked. Published after every change, every `publish_interval` besides
//! (the bus delivers at most once), and whenever a gateway asks. Every replica also listens to
//! the others' states, so a revocation made anywhere reaches its identity cache at once.

use std::sync::Arc;

use ampora_shared::bus::Bus;
use ampora_shared::pb::bus::TrustState;
use ampora_shared::subjects::Subjects;
use futures::StreamExt;
use prost::Message;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Trust, TrustError};

/// Publishes until `shutdown`.
pub async fn run(
    trust: Arc<Trust>,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    shutdown: CancellationToken,
) {
    let (Ok(mut requests), Ok(mut states)) = (
        bus.subscribe(&subjects.trust_request()).await,
        bus.subscribe(&subjects.trust_state()).await,
    ) else {
        tracing::error!("cannot subscribe to trust requests and states");
        return;
    };
    let mut tick = tokio::time::interval(trust.config().publish_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = trust.wait_changed() => {}
            request = requests.next() => if request.is_none() { return },
            state = states.next() => {
                match state.map(|message| TrustState::decode(message.payload)) {
                    Some(Ok(state)) => trust.identities().revoked(&state.revoked_certificate_sha256),
                    Some(Err(error)) => tracing::warn!(%error, "undecodable trust state"),
                    None => return,
                }
                continue;
            }
        }
        if let Err(error) = publish(&trust, bus.as_ref(), &subjects).await {
            tracing::warn!(%error, "cannot publish the trust state");
        }
    }
}

/// Reads the trust state and publishes it.
pub async fn publish(trust: &Trust, bus: &dyn Bus, subjects: &Subjects) -> Result<(), TrustError> {
    trust.refresh_ca().await?;
    let now = OffsetDateTime::now_utc();
    let snapshot = trust.store().trust_snapshot(now).await?;
    trust.identities().revoked(&snapshot.revoked);
    trust.identities().certificates_exist(snapshot.any_valid);
    let state = TrustState {
        ca_certificates_der: snapshot
            .cas
            .into_iter()
            .map(|ca| ca.certificate_der.into())
            .collect(),
        revoked_certificate_sha256: snapshot.revoked,
        read_unix_nano: u64::try_from(now.unix_timestamp_nanos()).unwrap_or_default(),
    };
    metrics::counter!("ampora_control_plane_trust_state_published_total").increment(1);
    if let Err(error) = bus
        .publish(&subjects.trust_state(), state.encode_to_vec().into())
        .await
    {
        tracing::warn!(%error, "cannot publish the trust state");
    }
    Ok(())
}
