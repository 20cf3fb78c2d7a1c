//! The production shape under failure: 3 gateways and 2 control-planes over NATS and
//! PostgreSQL, behind HAProxy, with a few hundred agents (our simulated fleet and the opamp-go
//! agent, WebSocket and HTTP mixed). Each test breaks one thing and checks that every agent is
//! served again, current, and that no agent's history ever went backwards.

mod support;

use std::time::Duration;

use support::cluster::{Cluster, ClusterOptions};
use support::fleet::Fleet;
use support::ExternalAgent;

/// The cluster tests share two cores: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WEBSOCKET_AGENTS: usize = 200;
const HTTP_AGENTS: usize = 100;

fn options() -> ClusterOptions {
    ClusterOptions {
        gateways: 3,
        control_planes: 2,
        nats_servers: 1,
    }
}

async fn steady(cluster: &mut Cluster) -> (Fleet, Vec<ExternalAgent>) {
    let fleet = Fleet::start(
        &cluster.ws_url(),
        &cluster.http_url(),
        WEBSOCKET_AGENTS,
        HTTP_AGENTS,
    );
    let go = vec![
        ExternalAgent::go("ws", &cluster.ws_url(), "go-ws-cluster", &[]),
        ExternalAgent::go("http", &cluster.http_url(), "go-http-cluster", &[]),
    ];
    let api = cluster.api();
    let behind = fleet.wait_current(&api, Duration::from_secs(60)).await;
    assert!(
        behind.is_empty(),
        "fleet never became current: {} behind, e.g. {:?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
    (fleet, go)
}

async fn go_agents_online(cluster: &mut Cluster, agents: &[ExternalAgent]) {
    let api = cluster.api();
    for agent in agents {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let body: serde_json::Value =
                reqwest::get(format!("{api}/api/v1/agents/{}", agent.uid))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            if body["status"] == "online" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "opamp-go agent {} not online: {body}",
                agent.uid
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// After a disruption: agents keep changing for a while, then freeze; every one must end
/// current and in order.
async fn recovers(cluster: &mut Cluster, fleet: Fleet, go: Vec<ExternalAgent>) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.freeze();
    let api = cluster.api();
    let behind = fleet.wait_current(&api, Duration::from_secs(60)).await;
    assert!(
        behind.is_empty(),
        "{} agents not current, e.g. {:#?}",
        behind.len(),
        &behind[..behind.len().min(5)]
    );
    let checked = fleet.history_in_order(&api, 60).await.unwrap();
    assert!(
        checked > 60,
        "history was checked ({checked} health events)"
    );
    go_agents_online(cluster, &go).await;
    fleet.stop().await;
}

#[tokio::test]
async fn killed_gateway_agents_reconnect_through_the_load_balancer() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.gateways[0].kill9();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn killed_control_plane_loses_no_status_and_applies_none_twice() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.control_planes[0].kill9();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn restarted_nats_everyone_resyncs() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.nats[0].stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nats[0].restart();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn postgres_down_for_ten_seconds_then_state_is_correct() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(options()).await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.postgres.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for role in cluster
        .control_planes
        .iter_mut()
        .chain(cluster.gateways.iter_mut())
    {
        assert!(
            role.is_running(),
            "a process crashed while PostgreSQL was down"
        );
    }
    cluster.postgres.restart();
    recovers(&mut cluster, fleet, go).await;
}

#[tokio::test]
async fn three_node_nats_cluster_killed_gateway() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterOptions {
        nats_servers: 3,
        ..options()
    })
    .await;
    let (fleet, go) = steady(&mut cluster).await;
    cluster.gateways[1].kill9();
    cluster.nats[0].stop();
    recovers(&mut cluster, fleet, go).await;
}
