//! RabbitMQ: the topology names, idempotent declarations, and a connection that heals itself.
//!
//! ```text
//! anika.events  (direct, rk = topic id)        ──► anika.sub.<subscription>
//! anika.deliver (direct, rk = subscription id) ──► anika.sub.<subscription>
//! anika.retry.<delay> (fanout) ──► queue anika.retry.<delay> (TTL, dead-letters into anika.deliver)
//! anika.dead    (direct, rk = subscription id) ──► anika.dlq.<subscription>
//! ```
//!
//! The exchanges are direct rather than topic: routing keys are exact ids, and
//! a direct exchange routes them with a hash lookup instead of a trie walk.

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{QueueType, RetrySchedule, format_delay},
    domain::{SubscriptionId, TopicId},
};

/// Events from ingest, routed by topic id.
pub const EVENTS_EXCHANGE: &str = "anika.events";
/// Direct delivery to one subscription, routed by subscription id (retries, replays).
pub const DELIVER_EXCHANGE: &str = "anika.deliver";
/// Dead letters, routed by subscription id.
pub const DEAD_EXCHANGE: &str = "anika.dead";
/// Header carrying the number of attempts already made for a message.
pub const ATTEMPT_HEADER: &str = "x-anika-attempts";
/// Header carrying the last error of a dead-lettered message.
pub const LAST_ERROR_HEADER: &str = "x-anika-last-error";

/// The longest one exchange with RabbitMQ may take: a (re)connect with its handshake and
/// declares, opening a channel, a consumer's set-up or cancel, a publish's confirm.
///
/// lapin bounds only the TCP connect (`connection_timeout`) and otherwise waits as long as
/// it takes for an answer, which a node that is stopping or starting may never send. A
/// reconnect stuck there holds [`Broker`]'s connection lock, so every consumer of the
/// process waits behind it: in a rolling restart of the cluster a dispatcher was seen with
/// no consumer left and thousands of messages ready. Past this, the exchange counts as
/// failed and the caller's own retry takes over.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs one exchange with RabbitMQ, failing it with [`BrokerError::TimedOut`] after
/// [`EXCHANGE_TIMEOUT`].
pub async fn bounded<T, E>(
    what: &'static str,
    exchange: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BrokerError>
where
    BrokerError: From<E>,
{
    within(EXCHANGE_TIMEOUT, what, exchange).await
}

async fn within<T, E>(
    limit: Duration,
    what: &'static str,
    exchange: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BrokerError>
where
    BrokerError: From<E>,
{
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result.map_err(BrokerError::from),
        Err(_) => Err(BrokerError::TimedOut { what, limit }),
    }
}

/// The messages ready in `queue`, by a passive declare: it only reads the count and never
/// creates a queue. A missing queue is an error that closes `channel`.
pub async fn message_count(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
}

/// The queue a subscription consumes: `anika.sub.<id>`.
pub fn subscription_queue(id: SubscriptionId) -> String {
    format!("anika.sub.{id}")
}

/// The dead-letter queue of a subscription: `anika.dlq.<id>`.
pub fn dead_letter_queue(id: SubscriptionId) -> String {
    format!("anika.dlq.{id}")
}

/// The exchange and queue of one retry tier: `anika.retry.<delay>`.
pub fn retry_name(delay: Duration) -> String {
    format!("anika.retry.{}", format_delay(delay))
}

/// How the static part of the topology looks for this installation.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Queue type of subscription, dead-letter and retry queues.
    pub queue_type: QueueType,
    /// One delay queue per tier.
    pub retry_schedule: RetrySchedule,
}

/// What a subscription's queues are declared with.
#[derive(Clone, Copy, Debug)]
pub struct SubscriptionQueues {
    /// The subscription.
    pub id: SubscriptionId,
    /// Its topic (the routing key of its binding to the events exchange).
    pub topic: TopicId,
    /// One consumer at a time (`x-single-active-consumer`), for publish order.
    pub ordered: bool,
    /// False when the subscriber currently has no grant: the queue exists (replays may
    /// target it) but gets nothing from the topic.
    pub receive_topic: bool,
}

impl Topology {
    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), long_string(kind));
        args
    }

    /// Declares the exchanges and retry queues; idempotent, run after every (re)connect.
    pub async fn declare_static(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for name in [EVENTS_EXCHANGE, DELIVER_EXCHANGE, DEAD_EXCHANGE] {
            channel
                .exchange_declare(
                    name.into(),
                    ExchangeKind::Direct,
                    // durable: the exchanges must outlive a broker restart.
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        // One queue per distinct delay: a repeated delay (12h,12h,12h) reuses its tier.
        for delay in self.retry_schedule.tiers() {
            let name = retry_name(delay);
            channel
                .exchange_declare(
                    name.as_str().into(),
                    // fanout: the routing key (the subscription id) passes through untouched
                    // and is reused when the message dead-letters into anika.deliver.
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let mut args = self.queue_args();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                long_string(DELIVER_EXCHANGE),
            );
            if self.queue_type == QueueType::Quorum {
                // at-least-once dead-lettering: an expiring retry is never dropped in transit
                // (it needs reject-publish overflow on RabbitMQ 3.10+).
                args.insert(
                    "x-dead-letter-strategy".into(),
                    long_string("at-least-once"),
                );
                args.insert("x-overflow".into(), long_string("reject-publish"));
            }
            channel
                .queue_declare(
                    name.as_str().into(),
                    // durable: a retry waiting for hours must survive a broker restart.
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await?;
            channel
                .queue_bind(
                    name.as_str().into(),
                    name.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares a subscription's queue and dead-letter queue and binds them.
    pub async fn declare_subscription(
        &self,
        channel: &Channel,
        queues: SubscriptionQueues,
    ) -> Result<(), BrokerError> {
        bounded(
            "the subscription's declares",
            self.declare_subscription_now(channel, queues),
        )
        .await
    }

    async fn declare_subscription_now(
        &self,
        channel: &Channel,
        queues: SubscriptionQueues,
    ) -> Result<(), lapin::Error> {
        let SubscriptionQueues {
            id,
            topic,
            ordered,
            receive_topic,
        } = queues;
        let queue = subscription_queue(id);
        let mut args = self.queue_args();
        if ordered {
            // One consumer at a time across all dispatchers keeps publish order.
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        channel
            .queue_declare(
                queue.as_str().into(),
                // durable: queued events survive a broker restart (messages are persistent too).
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        if receive_topic {
            bind(channel, &queue, EVENTS_EXCHANGE, &topic.to_string()).await?;
        }
        bind(channel, &queue, DELIVER_EXCHANGE, &id.to_string()).await?;
        let dlq = dead_letter_queue(id);
        channel
            .queue_declare(
                dlq.as_str().into(),
                // durable: dead letters wait for an operator, possibly for days.
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                self.queue_args(),
            )
            .await?;
        bind(channel, &dlq, DEAD_EXCHANGE, &id.to_string()).await
    }

    /// Binds a subscription's queue to its topic (a grant was given back).
    pub async fn bind_to_topic(
        &self,
        channel: &Channel,
        id: SubscriptionId,
        topic: TopicId,
    ) -> Result<(), BrokerError> {
        let queue = subscription_queue(id);
        let key = topic.to_string();
        bounded("queue.bind", bind(channel, &queue, EVENTS_EXCHANGE, &key)).await
    }

    /// Unbinds a subscription's queue from its topic: nothing more is routed to it.
    pub async fn unbind_from_topic(
        &self,
        channel: &Channel,
        id: SubscriptionId,
        topic: TopicId,
    ) -> Result<(), BrokerError> {
        bounded(
            "queue.unbind",
            channel.queue_unbind(
                subscription_queue(id).into(),
                EVENTS_EXCHANGE.into(),
                topic.to_string().into(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Deletes a subscription's queue and dead-letter queue with whatever they hold.
    pub async fn delete_subscription(
        &self,
        channel: &Channel,
        id: SubscriptionId,
    ) -> Result<(), BrokerError> {
        for queue in [subscription_queue(id), dead_letter_queue(id)] {
            bounded(
                "queue.delete",
                // default options: delete even if consumed or non-empty; the subscription is gone.
                channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
            )
            .await?;
        }
        Ok(())
    }
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// An AMQP long string value, the type RabbitMQ expects for string arguments.
pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// One RabbitMQ connection, reopened with backoff when it breaks (a process holds two: see
/// [`crate::context::Context::publishing`]).
///
/// Callers ask for a channel; if the connection died, the first caller
/// reconnects (and redeclares the static topology) while the others wait.
/// `ANIKA_AMQP_URL` may list the nodes of a cluster: the first connection goes
/// to a node chosen at random (so processes spread over the cluster), and a
/// reconnect after a loss tries the next node first, then the others in turn.
pub struct Broker {
    nodes: Vec<lapin::uri::AMQPUri>,
    name: String,
    topology: Topology,
    current: Mutex<Option<Link>>,
    /// The node the next connection attempt starts with.
    next: std::sync::atomic::AtomicUsize,
    /// How long opening a connection (handshake and static declares) may take.
    open_timeout: Duration,
}

/// The live connection and the node it goes to.
struct Link {
    node: usize,
    conn: Arc<Connection>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// A broker problem: the URL is wrong or RabbitMQ refused.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// `ANIKA_AMQP_URL` does not parse.
    #[error("ANIKA_AMQP_URL is not a valid AMQP URL: {0}")]
    BadUrl(String),
    /// RabbitMQ is unreachable or refused an operation.
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// A publish was not confirmed by the broker.
    #[error("RabbitMQ did not confirm the publish ({0})")]
    NotConfirmed(&'static str),
    /// RabbitMQ did not answer within the time one exchange may take.
    #[error("RabbitMQ did not answer {what} within {limit:?}")]
    TimedOut {
        /// The exchange that got no answer.
        what: &'static str,
        /// How long it waited.
        limit: Duration,
    },
}

/// One node of `ANIKA_AMQP_URL` as it may be shown: `host:port`, no credentials.
fn node_label(uri: &lapin::uri::AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// Parses `ANIKA_AMQP_URL`: one URL, or several separated by commas (the nodes of one
/// cluster, so one vhost). A bad entry is named by its position, never by its password.
fn parse_nodes(urls: &str) -> Result<Vec<lapin::uri::AMQPUri>, BrokerError> {
    let mut nodes: Vec<lapin::uri::AMQPUri> = Vec::new();
    for (i, entry) in urls.split(',').map(str::trim).enumerate() {
        let position = i + 1;
        if entry.is_empty() {
            return Err(BrokerError::BadUrl(format!("entry {position} is empty")));
        }
        let mut uri: lapin::uri::AMQPUri = entry.parse().map_err(|e| {
            BrokerError::BadUrl(format!(
                "entry {position} ({}): {e}",
                crate::config::redact_url(entry)
            ))
        })?;
        // A dead peer is noticed within ~20 s instead of the 60 s server default.
        uri.query.heartbeat.get_or_insert(10);
        uri.query.connection_timeout.get_or_insert(5_000);
        if let Some(first) = nodes.first()
            && first.vhost != uri.vhost
        {
            return Err(BrokerError::BadUrl(format!(
                "entry {position} names vhost `{}` but entry 1 `{}`; the nodes of one installation share a vhost",
                uri.vhost, first.vhost
            )));
        }
        nodes.push(uri);
    }
    Ok(nodes)
}

impl Broker {
    /// A broker handle; nothing is opened until the first channel is asked for.
    ///
    /// `url` is one AMQP URL or a comma-separated list of a cluster's nodes.
    pub fn new(
        url: &str,
        name: impl Into<String>,
        topology: Topology,
    ) -> Result<Arc<Self>, BrokerError> {
        let nodes = parse_nodes(url)?;
        let first = rand::random_range(0..nodes.len());
        Ok(Arc::new(Self {
            nodes,
            name: name.into(),
            topology,
            current: Mutex::new(None),
            next: std::sync::atomic::AtomicUsize::new(first),
            open_timeout: EXCHANGE_TIMEOUT,
        }))
    }

    /// The static topology this broker declares.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The vhost this installation lives in.
    pub fn vhost(&self) -> &str {
        &self.nodes[0].vhost
    }

    /// How many nodes `ANIKA_AMQP_URL` lists.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The node of the live connection (`host:port`), if there is one.
    pub async fn connected_node(&self) -> Option<String> {
        let current = self.current.lock().await;
        current
            .as_ref()
            .filter(|link| link.conn.status().connected())
            .map(|link| node_label(&self.nodes[link.node]))
    }

    /// Whether each node accepts TCP connections now (for `/readyz`): `(host:port, error)`.
    pub async fn probe_nodes(&self) -> Vec<(String, Option<String>)> {
        let probes = self.nodes.iter().map(|uri| async move {
            let address = (uri.authority.host.clone(), uri.authority.port);
            let connect = tokio::net::TcpStream::connect(address);
            let error = match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no answer within 2 s".to_owned()),
            };
            (node_label(uri), error)
        });
        futures::future::join_all(probes).await
    }

    /// A live connection, opening a new one (once) if the last one broke: to the next
    /// node after the one that was lost, then to each other node in turn.
    pub async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        use std::sync::atomic::Ordering;
        let mut current = self.current.lock().await;
        if let Some(link) = current.as_ref() {
            if link.conn.status().connected() {
                return Ok(Arc::clone(&link.conn));
            }
            tracing::warn!(connection = %self.name, node = %node_label(&self.nodes[link.node]),
                "lost the RabbitMQ connection; trying the next node");
            self.next
                .store((link.node + 1) % self.nodes.len(), Ordering::Relaxed);
            *current = None;
        }
        let start = self.next.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..self.nodes.len() {
            let node = (start + step) % self.nodes.len();
            match self.open(node).await {
                Ok(conn) => {
                    self.next.store(node, Ordering::Relaxed);
                    *current = Some(Link {
                        node,
                        conn: Arc::clone(&conn),
                    });
                    return Ok(conn);
                }
                Err(e) => {
                    if self.nodes.len() > 1 {
                        tracing::warn!(connection = %self.name, node = %node_label(&self.nodes[node]),
                            error = %e, "RabbitMQ node unavailable; trying the next");
                    }
                    last_error = Some(e);
                }
            }
        }
        // The next round starts after the node tried last, not always with the same one.
        self.next
            .store((start + 1) % self.nodes.len(), Ordering::Relaxed);
        Err(last_error.expect("at least one node is configured"))
    }

    /// Connects to one node and declares the static topology there (idempotent), within
    /// the broker's open timeout: a node that accepts TCP but never finishes the handshake
    /// (stopping, booting) must not hold the connection lock forever.
    async fn open(&self, node: usize) -> Result<Arc<Connection>, BrokerError> {
        let uri = &self.nodes[node];
        let opening = async {
            let properties =
                ConnectionProperties::default().with_connection_name(self.name.as_str().into());
            let conn = Arc::new(Connection::connect_uri(uri.clone(), properties).await?);
            let channel = conn.create_channel().await?;
            self.topology.declare_static(&channel).await?;
            close_channel(&channel, "topology declared").await;
            Ok::<_, lapin::Error>(conn)
        };
        let conn = within(self.open_timeout, "the connection handshake", opening).await?;
        tracing::info!(connection = %self.name, vhost = %uri.vhost, node = %node_label(uri), "connected to RabbitMQ");
        Ok(conn)
    }

    /// Like [`Broker::connection`], retrying with exponential backoff until it works or `cancel` fires.
    pub async fn connection_with_retry(
        &self,
        cancel: &CancellationToken,
    ) -> Option<Arc<Connection>> {
        let attempt = || self.connection();
        let retrying = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times(),
            )
            .notify(
                |err, wait| tracing::warn!(error = %err, ?wait, "RabbitMQ unavailable; retrying"),
            );
        tokio::select! {
            conn = retrying => conn.ok(),
            () = cancel.cancelled() => None,
        }
    }

    /// A fresh channel on the live connection.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let conn = self.connection().await?;
        bounded("channel.open", conn.create_channel()).await
    }

    /// A fresh channel in publisher-confirm mode.
    pub async fn confirm_channel(&self) -> Result<Channel, BrokerError> {
        let channel = self.channel().await?;
        bounded(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(channel)
    }

    /// The messages ready in `queue` now, on a channel of its own; `None` when the queue
    /// does not exist or RabbitMQ cannot be asked.
    pub async fn message_count(&self, queue: &str) -> Option<u32> {
        let channel = self.channel().await.ok()?;
        let count = bounded("a passive queue.declare", message_count(&channel, queue))
            .await
            .ok();
        // A failed passive declare already closed the channel.
        if count.is_some() {
            close_channel(&channel, "queue counted").await;
        }
        count
    }

    /// Whether RabbitMQ answers right now (for `/readyz`).
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        close_channel(&channel, "ping").await;
        Ok(())
    }

    /// Closes the connection politely (at shutdown).
    pub async fn close(&self) {
        if let Some(link) = self.current.lock().await.take()
            && let Err(e) = link.conn.close(200, "shutting down".into()).await
        {
            tracing::debug!(error = %e, "closing the RabbitMQ connection failed");
        }
    }
}

/// Reads an integer header such as [`ATTEMPT_HEADER`] from message properties.
pub fn header_u32(properties: &lapin::BasicProperties, name: &str) -> Option<u32> {
    let headers = properties.headers().as_ref()?;
    let key: ShortString = name.into();
    match headers.inner().get(&key)? {
        AMQPValue::LongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(*v),
        AMQPValue::LongLongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u32::from(*v)),
        AMQPValue::ShortShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u32::from(*v)),
        _ => None,
    }
}

/// Reads a string header from message properties.
pub fn header_str(properties: &lapin::BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    let key: ShortString = name.into();
    match headers.inner().get(&key)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

/// Closes a short-lived channel whose work is done. A failure is logged and otherwise
/// harmless: the work's outcome was already confirmed, and the broker drops a channel
/// whose connection goes away.
pub async fn close_channel(channel: &Channel, what: &str) {
    if let Err(e) = bounded("channel.close", channel.close(200, what.into())).await {
        tracing::debug!(error = %e, channel = what, "closing a channel failed; the broker drops it");
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use super::{Broker, BrokerError, Topology, parse_nodes};
    use crate::config::QueueType;

    #[tokio::test]
    async fn a_node_that_accepts_tcp_but_never_answers_fails_the_connect_within_its_timeout() {
        // A listener that accepts and holds each connection without a byte of AMQP, like a
        // node half up or half down; lapin alone would wait for Connection.Start forever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let topology = Topology {
            queue_type: QueueType::Classic,
            retry_schedule: "1s".parse().unwrap(),
        };
        let mut broker = Broker::new(
            &format!("amqp://u:p@127.0.0.1:{port}/%2f"),
            "test",
            topology,
        )
        .unwrap();
        Arc::get_mut(&mut broker).unwrap().open_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), broker.connection())
            .await
            .expect("the connect gave up on its own");
        assert!(
            matches!(answer, Err(BrokerError::TimedOut { .. })),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // The lock is free again: the next caller tries anew rather than waiting behind it.
        let again = tokio::time::timeout(Duration::from_secs(10), broker.connection())
            .await
            .expect("a second connect gave up on its own too");
        assert!(matches!(again, Err(BrokerError::TimedOut { .. })));
        holder.abort();
    }

    #[test]
    fn a_cluster_is_a_comma_separated_list_of_its_nodes() {
        let nodes = parse_nodes(
            "amqp://u:p@127.0.0.1:5701/%2f, amqp://u:p@127.0.0.1:5702/%2f,amqp://u:p@127.0.0.1:5703/%2f",
        )
        .unwrap();
        let ports: Vec<u16> = nodes.iter().map(|n| n.authority.port).collect();
        assert_eq!(ports, [5701, 5702, 5703]);
        assert!(nodes.iter().all(|n| n.query.heartbeat == Some(10)));
    }

    #[test]
    fn a_malformed_entry_is_named_by_its_position_without_its_password() {
        let Err(BrokerError::BadUrl(message)) =
            parse_nodes("amqp://u:secret@h1:5672/%2f,http://u:secret@h2/%2f")
        else {
            panic!("accepted a non-AMQP entry");
        };
        assert!(message.contains("entry 2"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        let Err(BrokerError::BadUrl(message)) = parse_nodes("amqp://h1/%2f,,amqp://h3/%2f") else {
            panic!("accepted an empty entry");
        };
        assert!(message.contains("entry 2 is empty"), "{message}");
        let Err(BrokerError::BadUrl(message)) = parse_nodes("amqp://h1/a,amqp://h2/b") else {
            panic!("accepted two vhosts");
        };
        assert!(message.contains("vhost"), "{message}");
    }
}
