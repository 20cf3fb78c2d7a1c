//! `ampora serve` as one process: what its shutdown keeps.

mod agent;
mod support;

use std::time::Duration;

use agent::{full_state, WsAgent};
use support::Ampora;

const AGENTS: usize = 50;

#[tokio::test]
async fn sigterm_records_every_websocket_agent_offline_before_exiting() {
    let data_dir = tempfile::tempdir().unwrap();
    // Nothing times out within the test: only the drain can take these agents offline. One
    // worker with a queue of one: the drain's envelopes wait on the bus for their turn.
    let env = [
        ("AMPORA_GATEWAY_TIMEOUT", "1h"),
        ("AMPORA_HEARTBEAT_TIMEOUT", "1h"),
        ("AMPORA_INGEST_WORKERS", "1"),
        ("AMPORA_INGEST_QUEUE", "1"),
    ];
    let mut ampora = Ampora::start_in(data_dir.path(), &env).await;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let mut agent = WsAgent::connect(&ampora.ws_url()).await;
        // The reply comes after the commit: the agent is stored online.
        agent
            .exchange(full_state(&format!("drained-{i}"), "prod"))
            .await;
        agents.push(agent);
    }
    let online = ampora.agents("status=online&limit=1000").await;
    assert_eq!(online["agents"].as_array().unwrap().len(), AGENTS);

    let status = ampora.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|status| status.success()),
        "exit after SIGTERM: {status:?}\n{}",
        ampora.logs()
    );
    drop(ampora);

    let again = Ampora::start_in(data_dir.path(), &env).await;
    let online = again.agents("status=online&limit=1000").await;
    assert_eq!(
        online["agents"].as_array().unwrap().len(),
        0,
        "left online by the drain: {online:#}"
    );
    let offline = again.agents("status=offline&limit=1000").await;
    assert_eq!(offline["agents"].as_array().unwrap().len(), AGENTS);
}

/// The first start makes the account `admin` with a password it prints once and keeps in
/// `initial-admin-password` (readable by its owner only); later starts leave accounts alone.
#[tokio::test]
async fn the_first_start_makes_an_admin_and_says_how_to_sign_in() {
    use std::os::unix::fs::PermissionsExt;

    let data_dir = tempfile::tempdir().unwrap();
    let ampora = Ampora::start_in(data_dir.path(), &[("AMPORA_ADMIN_PASSWORD", "")]).await;
    let password = ampora
        .generated_password()
        .expect("a generated password was printed")
        .to_owned();
    let file = data_dir.path().join("initial-admin-password");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), password);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert!(ampora.logs().contains("Sign in:"), "{}", ampora.logs());
    let (cookie, csrf) = support::auth::sign_in(&ampora.api_base(), "admin", &password).await;
    assert!(cookie.starts_with("ampora_session=") && !csrf.is_empty());
    drop(ampora);

    // Started again: no new password; the first still signs in.
    std::fs::remove_file(&file).unwrap();
    let again = Ampora::start_in(
        data_dir.path(),
        &[("AMPORA_ADMIN_PASSWORD", password.as_str())],
    )
    .await;
    assert_eq!(again.generated_password(), None);
    assert!(!file.exists(), "no new password file");
    support::auth::sign_in(&again.api_base(), "admin", &password).await;
}

/// What the server printed, once it contains `what` (its two pipes are read apart).
async fn printed(ampora: &Ampora, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = ampora.logs();
        if logs.contains(what) {
            return logs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what:?} not printed:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_says_how_agents_authenticate_and_an_insecure_public_one_says_it_loudly() {
    let mut local = Ampora::start(&[]).await;
    printed(
        &local,
        "Agents:          plain (no TLS); agents are not authenticated",
    )
    .await;
    assert!(!local.logs().contains("INSECURE"));
    local.terminate(Duration::from_secs(10));

    let mut public = Ampora::start(&[
        ("AMPORA_OPAMP_LISTEN", "0.0.0.0:0"),
        ("AMPORA_INSECURE", "true"),
    ])
    .await;
    printed(
        &public,
        "INSECURE: started with --insecure on a non-loopback address",
    )
    .await;
    // And it serves: an agent's exchange is answered.
    let mut agent = WsAgent::connect(&public.ws_url().replace("0.0.0.0", "127.0.0.1")).await;
    agent.exchange(full_state("insecure-1", "dev")).await;
    public.terminate(Duration::from_secs(10));
}
