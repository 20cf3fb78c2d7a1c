//! The CA key in a PKCS#11 token: SoftHSM2, a real PKCS#11 module, in a token of this test's
//! own. The key is made in the token (or found there, made by the operator beforehand), never
//! leaves it, and signs agents' certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

use ampora_control_plane::audit::AuditContext;
use ampora_control_plane::storage::{self, StoreOptions};
use ampora_control_plane::trust::enrolment::Requester;
use ampora_control_plane::trust::signer::Pkcs11Settings;
use ampora_control_plane::trust::{Trust, TrustConfig};
use x509_parser::prelude::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234";

/// A SoftHSM2 configuration and token directory of this test's own. SoftHSM reads its
/// configuration from `SOFTHSM2_CONF`, once per process: this binary holds one test.
fn softhsm(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    conf
}

fn run(command: &mut Command) {
    let output = command.output().expect("the tool runs");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn settings(key_label: &str) -> Pkcs11Settings {
    Pkcs11Settings {
        module: MODULE.into(),
        token_label: Some("ampora-test".into()),
        slot: None,
        pin: PIN.into(),
        key_label: key_label.into(),
    }
}

fn verify(certificate_pem: &str, ca_pem: &str) {
    let certificate = ::pem::parse(certificate_pem).unwrap().into_contents();
    let ca = ::pem::parse(ca_pem).unwrap().into_contents();
    let (_, certificate) = parse_x509_certificate(&certificate).unwrap();
    let (_, ca) = parse_x509_certificate(&ca).unwrap();
    certificate
        .verify_signature(Some(ca.public_key()))
        .expect("signed by the CA key in the token");
    ca.verify_signature(None).expect("the CA is self-signed");
}

#[tokio::test]
async fn softhsm_holds_the_ca_key_and_signs() {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM2 is not installed (scripts/install-test-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm(dir.path());
    run(Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "ampora-test"])
        .args(["--pin", PIN, "--so-pin", "5678"]));
    // The operator makes the CA key in the token beforehand, with the HSM's own tools.
    run(Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--module", MODULE, "--token-label", "ampora-test"])
        .args([
            "--login",
            "--pin",
            PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
        ])
        .args(["--label", "operator-made", "--id", "01"]));

    let url = format!("sqlite:{}", dir.path().join("ampora.db").display());
    let store = storage::connect(&url, StoreOptions::default())
        .await
        .unwrap();
    let config = TrustConfig {
        kek: None,
        pkcs11: Some(settings("operator-made")),
        ..TrustConfig::default()
    };
    let trust = Trust::start(store.clone(), config.clone()).await.unwrap();
    let stored = store.current_ca().await.unwrap().unwrap();
    assert_eq!(stored.key_sealed, None, "no key leaves the token");
    assert_eq!(stored.key_label, "operator-made");

    let (token, _) = trust
        .create_token(None, Default::default(), &AuditContext::system())
        .await
        .unwrap();
    let enrolled = trust
        .enrol_with_token(&token, None, None, &Requester::default())
        .await
        .unwrap();
    verify(&enrolled.issued.certificate_pem, &enrolled.ca_pem);

    // Rotation makes a new key in the token, under a label of its own.
    let rotated = trust.rotate_ca(&AuditContext::system()).await.unwrap();
    let stored = store.current_ca().await.unwrap().unwrap();
    assert_eq!(stored.id, rotated.id);
    assert!(
        stored.key_label.starts_with("operator-made-"),
        "{}",
        stored.key_label
    );
    let (token, _) = trust
        .create_token(None, Default::default(), &AuditContext::system())
        .await
        .unwrap();
    let enrolled = trust
        .enrol_with_token(&token, None, None, &Requester::default())
        .await
        .unwrap();
    assert_eq!(enrolled.ca_pem, rotated.certificate_pem);
    verify(&enrolled.issued.certificate_pem, &enrolled.ca_pem);

    // A restart finds the current key in the token again.
    drop(trust);
    let trust = Trust::start(store.clone(), config).await.unwrap();
    assert_eq!(trust.ca().id, rotated.id);
    let (token, _) = trust
        .create_token(None, Default::default(), &AuditContext::system())
        .await
        .unwrap();
    let enrolled = trust
        .enrol_with_token(&token, None, None, &Requester::default())
        .await
        .unwrap();
    verify(&enrolled.issued.certificate_pem, &rotated.certificate_pem);

    // A CA created from scratch makes its key in the token.
    let other = storage::connect("sqlite::memory:", StoreOptions::default())
        .await
        .unwrap();
    let fresh = Trust::start(
        other.clone(),
        TrustConfig {
            pkcs11: Some(settings("made-by-ampora")),
            ..TrustConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        other.current_ca().await.unwrap().unwrap().key_label,
        "made-by-ampora"
    );
    let (token, _) = fresh
        .create_token(None, Default::default(), &AuditContext::system())
        .await
        .unwrap();
    let enrolled = fresh
        .enrol_with_token(&token, None, None, &Requester::default())
        .await
        .unwrap();
    verify(&enrolled.issued.certificate_pem, &enrolled.ca_pem);
}
