//! anika on a three-node RabbitMQ cluster of its own (started by `scripts/cluster` on test
//! ports): losing a node, restarting every node in turn, losing a dispatcher process, while
//! events pour in; every event answered 202 is delivered at least once, and an ordered
//! subscription keeps its order. And a memory alarm, which blocks every connection that
//! publishes, holds up no delivery: the consumers have a connection of their own.
//!
//! The cluster is shared by the tests of this binary (they run one at a time) and left
//! running at the end for the next run; `scripts/test` stops it. Each test leaves every
//! node running.

#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anika_testkit::{Receiver, Reply, TestEnv};
use serde_json::{Value, json};
use support::{Anika, Poster, Role, World, await_draining};
use tokio::sync::OnceCell;

/// One test at a time: they kill and restart the shared cluster's nodes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

/// The test cluster: `anikatest-N@localhost`, AMQP on 5801–5803, management on 15801–15803.
struct Cluster {
    vars: Vec<(&'static str, String)>,
}

const NODES: usize = 3;
const BASE_PORT: u16 = 5800;

impl Cluster {
    async fn shared() -> &'static Self {
        CLUSTER
            .get_or_init(|| async {
                let dir = std::env::temp_dir().join("anika-test-cluster");
                let cluster = Self {
                    vars: vec![
                        ("ANIKA_CLUSTER_NAME", "anikatest".to_owned()),
                        ("ANIKA_CLUSTER_PORT", BASE_PORT.to_string()),
                        ("ANIKA_CLUSTER_DIR", dir.display().to_string()),
                    ],
                };
                cluster.script(&["start"]).await;
                cluster
            })
            .await
    }

    async fn script(&self, args: &[&str]) -> String {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster");
        let output = tokio::time::timeout(
            Duration::from_secs(240),
            tokio::process::Command::new(script)
                .args(args)
                .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
                .output(),
        )
        .await
        .expect("scripts/cluster finished within 240 s")
        .expect("run scripts/cluster");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "scripts/cluster {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn management(node: usize) -> String {
        format!("http://127.0.0.1:{}", 10000 + BASE_PORT + node as u16)
    }

    /// The AMQP URLs of every node, for `vhost`.
    fn urls(vhost: &str) -> String {
        (1..=NODES)
            .map(|n| {
                format!(
                    "amqp://guest:guest@127.0.0.1:{}/{vhost}",
                    BASE_PORT + n as u16
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A request to the management API of the first node that answers.
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let client = reqwest::Client::new();
        for node in 1..=NODES {
            let mut request = client
                .request(method.clone(), format!("{}{path}", Self::management(node)))
                .basic_auth("guest", Some("guest"))
                .timeout(Duration::from_secs(5));
            if let Some(body) = &body {
                request = request.json(body);
            }
            if let Ok(response) = request.send().await
                && response.status().is_success()
            {
                return response.json().await.unwrap_or(Value::Null);
            }
        }
        panic!("no node's management API answered {method} {path}");
    }

    /// `GET path` on the management API of the first node that answers.
    async fn get(&self, path: &str) -> Value {
        self.api(reqwest::Method::GET, path, None).await
    }

    async fn create_vhost(&self, vhost: &str) {
        self.api(reqwest::Method::PUT, &format!("/api/vhosts/{vhost}"), None)
            .await;
        self.api(
            reqwest::Method::PUT,
            &format!("/api/permissions/{vhost}/guest"),
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
    }

    /// The node (1-based) that leads `queue`'s Raft group, and its member count.
    async fn leader(&self, vhost: &str, queue: &str) -> (usize, usize) {
        let info = self.get(&format!("/api/queues/{vhost}/{queue}")).await;
        let leader = info["leader"].as_str().unwrap_or_default();
        let node = (1..=NODES)
            .find(|n| leader == format!("anikatest-{n}@localhost"))
            .unwrap_or_else(|| panic!("queue {queue} has no known leader: {info}"));
        let members = info["members"].as_array().map_or(0, Vec::len);
        (node, members)
    }

    /// The states of `vhost`'s client connections (`running`, `flow`, `blocked`, …).
    async fn connection_states(&self, vhost: &str) -> Vec<String> {
        let list = self.get(&format!("/api/vhosts/{vhost}/connections")).await;
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["state"].as_str().map(str::to_owned))
            .collect()
    }

    /// A count the management API last saw for `queue`: `consumers`, or `messages` (ready
    /// and unacknowledged).
    async fn queue_count(&self, vhost: &str, queue: &str, field: &str) -> u64 {
        self.get(&format!("/api/queues/{vhost}/{queue}")).await[field]
            .as_u64()
            .unwrap_or(0)
    }
}

/// A memory alarm on node 1 while it lives: the cluster blocks every connection that
/// publishes, as when memory runs short. Dropping it (a failed test too) clears it.
struct MemoryAlarm;

impl MemoryAlarm {
    async fn raise(cluster: &Cluster) -> Self {
        cluster.script(&["alarm", "1", "on"]).await;
        Self
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        // Synchronous: a drop cannot await, and the next test needs the alarm gone.
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster");
        let cleared = std::process::Command::new(script)
            .args(["alarm", "1", "off"])
            .envs(
                CLUSTER
                    .get()
                    .into_iter()
                    .flat_map(|c| c.vars.iter().map(|(k, v)| (*k, v.as_str()))),
            )
            .status();
        if !cleared.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("could not clear the memory alarm on the test cluster: {cleared:?}");
        }
    }
}

/// anika on the test cluster: one `anika up` with the list of all nodes.
struct OnCluster {
    env: TestEnv,
    cluster: &'static Cluster,
    anika: Anika,
    receiver: Receiver,
    world: World,
    vhost: String,
    amqp: String,
}

impl OnCluster {
    async fn start(sub: Value) -> Self {
        let cluster = Cluster::shared().await;
        let env = TestEnv::new().await;
        // The cluster's vhost has the test's name too; the system broker's is left unused.
        let vhost = env.vhost.clone();
        cluster.create_vhost(&vhost).await;
        let amqp = Cluster::urls(&vhost);
        let anika = Anika::up(&env, &[("ANIKA_AMQP_URL", &amqp)]).await;
        let receiver = Receiver::start().await;
        let world = World::new(&anika.api, &receiver, sub).await;
        Self {
            env,
            cluster,
            anika,
            receiver,
            world,
            vhost,
            amqp,
        }
    }

    fn queue(&self) -> String {
        format!("anika.sub.{}", self.world.subscriptions[0])
    }

    fn poster(&self, parallel: usize) -> Poster {
        Poster::start(
            Arc::new(Mutex::new(self.anika.api.clone())),
            self.world.topic.clone(),
            self.world.publisher.clone(),
            parallel,
        )
    }
}

async fn posting_for(poster: &Poster, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while poster.accepted_count() < at_least {
        assert!(
            Instant::now() < deadline,
            "posting stalled at {} accepted",
            poster.accepted_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `more` accepted events beyond what was accepted so far.
async fn posting_more(poster: &Poster, more: usize) {
    let now = poster.accepted_count();
    posting_for(poster, now + more).await;
}

async fn lost_none(what: &str, on: &OnCluster, poster: Poster) {
    let receiver = &on.receiver;
    let (accepted, refused) = poster.stop().await;
    // A rolling restart under full load leaves a backlog of many thousands in a debug build,
    // drained at whatever pace the machine allows: wait while it drains.
    let (missing, duplicates) = await_draining(
        receiver,
        &accepted,
        Duration::from_secs(60),
        Duration::from_secs(900),
    )
    .await;
    if !missing.is_empty() {
        // Where the missing ones are: still in the outbox, queued, or gone.
        let pool = anika_shared::db::connect(&on.env.database_url, 1)
            .await
            .unwrap();
        let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        let queue = on
            .cluster
            .get(&format!("/api/queues/{}/{}", on.vhost, on.queue()))
            .await;
        eprintln!(
            "{what}: {} missing; outbox {outbox}; queue {} ready, {} unacked, {} consumers",
            missing.len(),
            queue["messages_ready"],
            queue["messages_unacknowledged"],
            queue["consumers"]
        );
        on.anika.show_warnings();
    }
    eprintln!(
        "{what}: {} accepted, {refused} refused or failed while disturbed, {} lost, {duplicates} duplicates",
        accepted.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{what}: {} of {} events answered 202 were never delivered",
        missing.len(),
        accepted.len()
    );
}

#[tokio::test]
async fn every_subscription_queue_is_replicated_on_all_three_nodes() {
    let _serial = SERIAL.lock().await;
    let on = OnCluster::start(json!({})).await;
    let (_, members) = on.cluster.leader(&on.vhost, &on.queue()).await;
    assert_eq!(members, NODES, "the subscription queue's Raft group");
    let dlq = format!("anika.dlq.{}", on.world.subscriptions[0]);
    assert_eq!(
        on.cluster.leader(&on.vhost, &dlq).await.1,
        NODES,
        "the dead-letter queue's"
    );
    let ready = reqwest::get(format!("{}/readyz", on.anika.api.base))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let nodes = ready["checks"]["rabbitmq_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), NODES, "{ready}");
    assert!(nodes.iter().all(|n| n["ok"] == true), "{ready}");
    assert_eq!(
        nodes.iter().filter(|n| n["connected"] == true).count(),
        1,
        "{ready}"
    );
    on.anika.terminate().await;
}

#[tokio::test]
async fn sigkill_of_the_node_leading_the_busy_queue_then_its_restart_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let on = OnCluster::start(json!({})).await;
    let poster = on.poster(4);
    posting_for(&poster, 150).await;
    let (leader, _) = on.cluster.leader(&on.vhost, &on.queue()).await;
    on.cluster.script(&["kill", &leader.to_string()]).await;
    posting_more(&poster, 200).await;
    on.cluster.script(&["restart", &leader.to_string()]).await;
    posting_more(&poster, 100).await;
    lost_none("leader node killed", &on, poster).await;
    on.anika.terminate().await;
}

#[tokio::test]
async fn a_rolling_restart_of_all_three_nodes_under_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let on = OnCluster::start(json!({})).await;
    let poster = on.poster(4);
    posting_for(&poster, 100).await;
    for node in 1..=NODES {
        let node = node.to_string();
        on.cluster.script(&["stop", &node]).await;
        posting_more(&poster, 50).await;
        on.cluster.script(&["restart", &node]).await;
        posting_more(&poster, 50).await;
    }
    lost_none("rolling restart", &on, poster).await;
    on.anika.terminate().await;
}

#[tokio::test]
async fn sigkill_of_one_of_two_dispatcher_processes_under_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let on = OnCluster::start(json!({})).await;
    let second = Role::start(&on.env, "dispatcher", &[("ANIKA_AMQP_URL", &on.amqp)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while on
        .cluster
        .queue_count(&on.vhost, &on.queue(), "consumers")
        .await
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the second dispatcher never consumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let poster = on.poster(4);
    posting_for(&poster, 200).await;
    second.kill().await;
    posting_more(&poster, 200).await;
    lost_none("one of two dispatchers killed", &on, poster).await;
    on.anika.terminate().await;
}

#[tokio::test]
async fn an_ordered_subscription_delivers_in_publish_order_across_a_node_kill() {
    let _serial = SERIAL.lock().await;
    let on = OnCluster::start(json!({"ordered": true})).await;
    // A slow endpoint keeps a backlog in the queue, so the kill lands mid-stream.
    on.receiver.always(Reply::Delay(Duration::from_millis(60)));
    // One poster: the publish order is the order of the 202s.
    let poster = on.poster(1);
    posting_for(&poster, 200).await;
    let (accepted, _) = poster.stop().await;
    // Every accepted event is in RabbitMQ (none waits in the outbox for the relay, which
    // would publish it after younger ones: see docs/operations.md on ordering).
    let pool = anika_shared::db::connect(&on.env.database_url, 1)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap()
        > 0
    {
        assert!(Instant::now() < deadline, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered_before = on.receiver.received().len();
    assert!(
        delivered_before < accepted.len(),
        "the backlog drained before the kill"
    );
    let (leader, _) = on.cluster.leader(&on.vhost, &on.queue()).await;
    on.cluster.script(&["kill", &leader.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    on.cluster.script(&["restart", &leader.to_string()]).await;
    let (missing, duplicates) = await_draining(
        &on.receiver,
        &accepted,
        Duration::from_secs(60),
        Duration::from_secs(600),
    )
    .await;
    assert!(
        missing.is_empty(),
        "{} of {} lost",
        missing.len(),
        accepted.len()
    );
    // At least once: a redelivered head may come twice; first arrivals keep the order.
    let mut seen = HashSet::new();
    let first_arrivals: Vec<String> = on
        .receiver
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .filter(|id| seen.insert(id.clone()))
        .collect();
    eprintln!(
        "ordered across a node kill: {} delivered ({delivered_before} before the kill), {duplicates} duplicates",
        accepted.len()
    );
    assert_eq!(first_arrivals, accepted, "delivered out of publish order");
    on.anika.terminate().await;
}

#[tokio::test]
async fn deliveries_go_on_while_rabbitmq_blocks_the_process_publishing() {
    // RabbitMQ throttles a connection that publishes (flow control, or a resource alarm as
    // here) by no longer reading its socket. On a connection shared with the consumers,
    // their acks would wait with it, and no subscription would get past its prefetch.
    const QUEUED: usize = 500;
    let _serial = SERIAL.lock().await;
    let on = OnCluster::start(json!({})).await;
    let api = &on.anika.api;
    let subscription = format!("/v1/subscriptions/{}", on.world.subscriptions[0]);
    api.patch(&subscription, &on.world.admin, json!({"status": "paused"}))
        .await
        .expect(200);
    // More than the consumer's prefetch (200) wait in the queue: delivering them takes acks.
    let events: Vec<Value> = (0..QUEUED).map(|n| json!({"data": {"n": n}})).collect();
    api.post(
        &format!("/v1/topics/{}/events/batch", on.world.topic),
        &on.world.publisher,
        json!({ "events": events }),
    )
    .await
    .expect(202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while on
        .cluster
        .queue_count(&on.vhost, &on.queue(), "messages")
        .await
        < QUEUED as u64
    {
        assert!(
            Instant::now() < deadline,
            "the batch never reached the queue"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let alarm = MemoryAlarm::raise(on.cluster).await;
    // Stored (202 means durable), and its publish gets the publishing connection blocked.
    let late = on
        .world
        .post(api, json!({"late": true}))
        .await
        .expect("an event posted while RabbitMQ blocks publishers is accepted");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !on
        .cluster
        .connection_states(&on.vhost)
        .await
        .iter()
        .any(|s| s == "blocked")
    {
        assert!(
            Instant::now() < deadline,
            "RabbitMQ never blocked the publishing connection"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    api.patch(&subscription, &on.world.admin, json!({"status": "active"}))
        .await
        .expect(200);
    // Distinct events: at least once may bring one twice.
    let distinct = || {
        let received = on.receiver.received();
        let ids = received.iter().filter_map(|r| r.header("webhook-id"));
        ids.collect::<HashSet<_>>().len()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct() < QUEUED && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = distinct();
    assert!(
        delivered >= QUEUED,
        "{delivered} of the {QUEUED} queued events delivered while publishing was blocked"
    );

    drop(alarm);
    assert!(
        on.receiver
            .wait_for_webhook(&late, Duration::from_secs(60))
            .await,
        "the event posted during the alarm was not delivered after it"
    );
    on.anika.terminate().await;
}
