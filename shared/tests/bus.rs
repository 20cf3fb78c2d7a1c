//! One suite, every `Bus` implementation: in-process and NATS (a real `nats-server`).

use std::sync::Arc;
use std::time::Duration;

use ampora_shared::bus::{Bus, BusError, InProcessBus, NatsBus, NatsOptions, Subscription};
use ampora_shared::testing::TestNats;
use bytes::Bytes;
use futures::StreamExt;

async fn next(subscription: &mut Subscription) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_millis(500), subscription.next())
        .await
        .ok()
        .flatten()
        .map(|m| m.payload)
}

/// Subscriptions on NATS are live once the server has them; a round trip makes sure.
async fn settle(bus: &dyn Bus) {
    let mut probe = bus.subscribe("settle.probe").await.unwrap();
    bus.publish("settle.probe", Bytes::new()).await.unwrap();
    next(&mut probe).await.expect("probe round trip");
}

async fn fan_out_and_wildcards(bus: Arc<dyn Bus>) {
    let mut star = bus.subscribe("t.agent.*").await.unwrap();
    let mut tail = bus.subscribe("t.>").await.unwrap();
    let mut other = bus.subscribe("u.*").await.unwrap();
    settle(bus.as_ref()).await;
    bus.publish("t.agent.7", Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(next(&mut star).await.unwrap(), "one");
    assert_eq!(next(&mut tail).await.unwrap(), "one");
    bus.publish("t.agent.7.deep", Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(next(&mut tail).await.unwrap(), "two");
    // Messages from one publisher arrive in order: had "one" or "two" reached the subscriptions
    // they do not match, they would come before these.
    bus.publish("u.after", Bytes::from_static(b"after"))
        .await
        .unwrap();
    bus.publish("t.agent.8", Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut other).await.unwrap(), "after");
    assert_eq!(next(&mut star).await.unwrap(), "after");
}

async fn dropping_unsubscribes(bus: Arc<dyn Bus>) {
    let subscription = bus.subscribe("d.x").await.unwrap();
    drop(subscription);
    let mut later = bus.subscribe("d.x").await.unwrap();
    settle(bus.as_ref()).await;
    bus.publish("d.x", Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut later).await.unwrap(), "after");
}

async fn invalid_subjects_are_refused(bus: Arc<dyn Bus>) {
    assert!(matches!(
        bus.publish("a.*", Bytes::new()).await,
        Err(BusError::InvalidSubject(_))
    ));
    assert!(matches!(
        bus.publish("a..b", Bytes::new()).await,
        Err(BusError::InvalidSubject(_))
    ));
    assert!(matches!(
        bus.subscribe("a.>.b").await,
        Err(BusError::InvalidSubject(_))
    ));
}

macro_rules! bus_suite {
    ($($test:ident),* $(,)?) => {
        mod in_process {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(Arc::new(InProcessBus::default())).await;
                }
            )*
        }
        mod nats {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    let server = TestNats::start();
                    let bus = NatsBus::connect(&NatsOptions { url: server.url(), ..Default::default() }).await.unwrap();
                    super::$test(Arc::new(bus)).await;
                }
            )*
        }
    };
}

bus_suite!(
    fan_out_and_wildcards,
    dropping_unsubscribes,
    invalid_subjects_are_refused,
);

#[tokio::test]
async fn nats_refuses_payloads_over_the_server_limit() {
    let server = TestNats::start();
    let bus = NatsBus::connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let huge = Bytes::from(vec![0u8; 2 << 20]);
    assert!(matches!(
        bus.publish("big", huge).await,
        Err(BusError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn nats_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("nats.pem"), dir.path().join("nats.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = TestNats::start_tls(&cert_path, &key_path);

    let options = NatsOptions {
        url: server.url(),
        tls_ca: Some(cert_path.clone()),
        ..Default::default()
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&options).await.unwrap());
    let mut subscription = bus.subscribe("tls.x").await.unwrap();
    settle(bus.as_ref()).await;
    bus.publish("tls.x", Bytes::from_static(b"secret"))
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.unwrap(), "secret");
}

#[tokio::test]
async fn nats_with_password_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        "authorization { users = [ { user: gateway, password: s3cret } ] }\n",
    )
    .unwrap();
    let server = TestNats::start_with_config(&config);
    let with_password = NatsOptions {
        url: server.url().replace("nats://", "nats://gateway:s3cret@"),
        ..Default::default()
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&with_password).await.unwrap());
    let mut subscription = bus.subscribe("auth.x").await.unwrap();
    settle(bus.as_ref()).await;

    // Without the password the server refuses the client: nothing it publishes arrives.
    let anonymous = NatsBus::connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let _ = anonymous
        .publish("auth.x", Bytes::from_static(b"intruder"))
        .await;
    bus.publish("auth.x", Bytes::from_static(b"member"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut subscription).await.unwrap(),
        "member",
        "an unauthenticated client got through first"
    );
}

#[tokio::test]
async fn nats_with_nkey_authorization() {
    let user = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let server = TestNats::start_with_config(&config);
    let with_nkey = NatsOptions {
        url: server.url(),
        nkey_seed: Some(user.seed().unwrap()),
        ..Default::default()
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&with_nkey).await.unwrap());
    settle(bus.as_ref()).await;
}
