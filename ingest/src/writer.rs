//! Group commit: many requests, one multi-row insert, one commit.
//!
//! Handlers send their checked events through a bounded channel (a full one
//! refuses the request with a 503 rather than queueing it) and wait on a
//! oneshot. A writer takes everything queued (up to [`MAX_GROUP_EVENTS`] /
//! [`MAX_GROUP_BYTES`]), writes the event rows and their outbox rows with one
//! `INSERT … SELECT FROM UNNEST(…)` — a single statement, so atomic without an
//! explicit transaction — and answers every request after the commit. Groups
//! with idempotency keys use a transaction: the keys are claimed with
//! `INSERT … ON CONFLICT`, so concurrent duplicates resolve through the unique
//! key, never through a read-then-write race.
//!
//! Up to [`MAX_WRITERS`] writers share the channel, so groups gather while
//! others commit; PostgreSQL then flushes several commits with one WAL write.
//! After the commit the envelopes go to the publisher; if it cannot keep up
//! (or RabbitMQ is down) they are simply not handed over, and the relay
//! publishes them from the outbox later.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use anika_shared::{
    Problem,
    domain::{EventId, PartnerId, TopicId},
    store::events,
};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    backlog::Backlog,
    error::Error,
    meters as m,
    publisher::{Outgoing, PublishQueue},
};

/// Writers committing in parallel, at most: while one waits for its WAL flush, others insert.
/// Measured on 2 cores: 2 writers ~20k events/s in batches of 100, 4 writers ~28k, 6 no better.
pub(crate) const MAX_WRITERS: usize = 4;
/// Most events in one group (a batch of 1000 always fits whole).
pub(crate) const MAX_GROUP_EVENTS: usize = 4000;
/// Most `data` bytes in one group, so a few huge batches do not make one enormous statement.
pub(crate) const MAX_GROUP_BYTES: usize = 8 << 20;
/// Requests waiting for a writer; past it requests are refused with a 503 (load shedding).
pub(crate) const QUEUE_DEPTH: usize = 1024;
/// After shutdown began, a writer stops once no request arrived for this long.
const SHUTDOWN_IDLE: Duration = Duration::from_secs(1);

/// A checked event, ready to be stored and published.
#[derive(Debug)]
pub(crate) struct NewEvent {
    /// Its id; `received_at` is the id's timestamp.
    pub(crate) id: EventId,
    /// The publisher's key.
    pub(crate) key: Option<String>,
    /// `data` exactly as posted.
    pub(crate) data: String,
    /// The delivery envelope, serialised once.
    pub(crate) envelope: Vec<u8>,
    /// The idempotency key and the hash of the request it stands for.
    pub(crate) idempotency: Option<Idempotency>,
}

/// An idempotency key with the hash of the request that first used it.
#[derive(Debug)]
pub(crate) struct Idempotency {
    /// The key.
    pub(crate) key: String,
    /// [`crate::input::request_hash`] of the event.
    pub(crate) hash: [u8; 32],
}

/// One item of a request.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event to store.
    Event(NewEvent),
    /// The same event as item n of the same request (a repeated idempotency key).
    SameAs(usize),
}

/// What a request got for one item.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Accepted {
    /// The event's id (the first event's, for an idempotent replay).
    pub(crate) id: EventId,
    /// Whether the item replayed an earlier request.
    pub(crate) replayed: bool,
}

impl Accepted {
    /// When the event was received.
    pub(crate) fn received_at(&self) -> DateTime<Utc> {
        self.id.timestamp()
    }
}

/// One request's events on their way to the writer.
#[derive(Debug)]
pub(crate) struct Submission {
    topic: TopicId,
    publisher: PartnerId,
    items: Vec<Item>,
    /// When the handler queued it, for the writer-wait histogram.
    queued_at: Instant,
    /// The answer, and when the writer sent it (the handler measures how long it took to resume).
    reply: oneshot::Sender<(Result<Vec<Accepted>, Error>, Instant)>,
}

impl Submission {
    fn events(&self) -> impl Iterator<Item = &NewEvent> {
        self.items.iter().filter_map(|item| match item {
            Item::Event(event) => Some(event),
            Item::SameAs(_) => None,
        })
    }

    fn data_bytes(&self) -> usize {
        self.events().map(|e| e.data.len()).sum()
    }

    fn idempotency_keys(&self) -> impl Iterator<Item = &str> {
        self.events()
            .filter_map(|e| e.idempotency.as_ref().map(|i| i.key.as_str()))
    }
}

/// The handlers' end of the group commit.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Submission>,
    /// [`m::ANSWER_DELAY_SECONDS`], looked up once.
    answer_delay: metrics::Histogram,
}

impl Writer {
    /// Stores `items` of one request (all or nothing) and says what each became.
    pub(crate) async fn submit(
        &self,
        topic: TopicId,
        publisher: PartnerId,
        items: Vec<Item>,
    ) -> Result<Vec<Accepted>, Error> {
        let (reply, answer) = oneshot::channel();
        // A full queue means the writers are behind by a whole queue of requests: waiting
        // for room would only grow every client's latency (and the requests in memory),
        // so the request is refused at once with a Retry-After, before anything is stored.
        self.queue
            .try_send(Submission {
                topic,
                publisher,
                items,
                queued_at: Instant::now(),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Busy,
                mpsc::error::TrySendError::Closed(_) => Error::WriterGone,
            })?;
        let (answer, sent_at) = answer.await.map_err(|_| Error::WriterGone)?;
        self.answer_delay.record(sent_at.elapsed().as_secs_f64());
        answer
    }
}

/// How many writers a pool of `connections` affords: a quarter of it (the rest serves
/// search, the catalog, the relay and the change listener), at least 1, at most [`MAX_WRITERS`].
pub(crate) fn writers_for(connections: u32) -> usize {
    (connections as usize / 4).clamp(1, MAX_WRITERS)
}

/// Starts `writers` writers; they stop when every [`Writer`] is dropped, or after shutdown once idle.
pub(crate) fn start(
    writers: usize,
    pool: &PgPool,
    publish: &PublishQueue,
    backlog: &Arc<Backlog>,
    running: crate::Running<'_>,
) -> Writer {
    let crate::Running { tasks, shutdown } = running;
    let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..writers {
        let task = WriterTask {
            pool: pool.clone(),
            receiver: Arc::clone(&receiver),
            publish: publish.clone(),
            backlog: Arc::clone(backlog),
            shutdown: shutdown.clone(),
            carry: VecDeque::new(),
        };
        tasks.spawn(task.run());
    }
    Writer {
        queue,
        answer_delay: metrics::histogram!(m::ANSWER_DELAY_SECONDS),
    }
}

struct WriterTask {
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Submission>>>,
    publish: PublishQueue,
    /// Told how many outbox rows each group added.
    backlog: Arc<Backlog>,
    shutdown: CancellationToken,
    /// Submissions put off to the next group because an earlier one in the group used the same key.
    carry: VecDeque<Submission>,
}

impl WriterTask {
    async fn run(mut self) {
        while let Some(group) = self.gather().await {
            self.write(group).await;
        }
        tracing::debug!("event writer stopped");
    }

    /// Waits for a first submission, then takes whatever else is queued, within the group bounds.
    async fn gather(&mut self) -> Option<Vec<Submission>> {
        // Carried-over work goes first and must not wait for the lock: the other
        // writer may hold it while waiting for a request that never comes.
        let (first, mut receiver) = match self.carry.pop_front() {
            Some(first) => (first, self.receiver.try_lock().ok()),
            None => {
                let mut receiver = self.receiver.lock().await;
                let first = loop {
                    if self.shutdown.is_cancelled() {
                        match tokio::time::timeout(SHUTDOWN_IDLE, receiver.recv()).await {
                            Ok(next) => break next?,
                            // Nothing came for a while: refuse new submissions, then drain the rest.
                            Err(_) => receiver.close(),
                        }
                    } else {
                        tokio::select! {
                            next = receiver.recv() => break next?,
                            () = self.shutdown.cancelled() => {}
                        }
                    }
                };
                (first, Some(receiver))
            }
        };
        let mut events = first.items.len();
        let mut bytes = first.data_bytes();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS && bytes < MAX_GROUP_BYTES {
            let next = match self.carry.pop_front() {
                Some(next) => next,
                None => match receiver.as_mut().map(|r| r.try_recv()) {
                    Some(Ok(next)) => next,
                    _ => break,
                },
            };
            if events + next.items.len() > MAX_GROUP_EVENTS {
                self.carry.push_front(next);
                break;
            }
            events += next.items.len();
            bytes += next.data_bytes();
            group.push(next);
        }
        Some(group)
    }

    async fn write(&mut self, mut group: Vec<Submission>) {
        // A key used twice in one group would make one statement touch its row twice:
        // the later request waits for the next group and then meets the first one's row.
        let mut claimed: HashSet<(TopicId, &str)> = HashSet::new();
        let mut deferred = Vec::new();
        for (i, submission) in group.iter().enumerate() {
            let keys: Vec<&str> = submission.idempotency_keys().collect();
            if keys
                .iter()
                .any(|k| claimed.contains(&(submission.topic, *k)))
            {
                deferred.push(i);
            } else {
                claimed.extend(keys.into_iter().map(|k| (submission.topic, k)));
            }
        }
        for i in deferred.into_iter().rev() {
            self.carry.push_front(group.remove(i));
        }

        let started = Instant::now();
        let waited = metrics::histogram!(m::WRITER_WAIT_SECONDS);
        for submission in &group {
            waited.record(started.duration_since(submission.queued_at).as_secs_f64());
        }
        let outcomes = match write_group(&self.pool, &group).await {
            Ok(outcomes) => outcomes,
            Err(e) if is_retryable(&e) => {
                tracing::debug!(error = %e, "group commit lost a lock race; retrying it");
                match write_group(&self.pool, &group).await {
                    Ok(outcomes) => outcomes,
                    Err(e) => self.one_by_one(&group, e).await,
                }
            }
            Err(e) => self.one_by_one(&group, e).await,
        };
        metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::GROUP_EVENTS)
            .record(group.iter().map(|s| s.items.len()).sum::<usize>() as f64);

        let mut outgoing = Vec::new();
        for (submission, outcome) in group.into_iter().zip(outcomes) {
            let answer = match outcome {
                Outcome::Stored(accepted) => {
                    for (item, accepted) in submission.items.into_iter().zip(&accepted) {
                        if let Item::Event(event) = item
                            && !accepted.replayed
                        {
                            outgoing.push(Outgoing {
                                id: event.id,
                                topic: submission.topic,
                                envelope: event.envelope,
                                written_from: started,
                            });
                        }
                    }
                    Ok(accepted)
                }
                Outcome::Refused(problem) => Err(Error::Client(problem)),
                Outcome::Failed(error) => Err(error),
            };
            // The client may have gone; its events are committed and will be published all the same.
            if submission.reply.send((answer, Instant::now())).is_err() {
                tracing::debug!("a client left before its answer; its events are committed");
            }
        }
        // Every new event got an outbox row in its commit.
        self.backlog.added(outgoing.len());
        if !outgoing.is_empty() {
            self.publish.hand_over(outgoing);
        }
    }

    /// After a group failed: each request alone, so one bad request cannot fail its neighbours.
    async fn one_by_one(&self, group: &[Submission], error: sqlx::Error) -> Vec<Outcome> {
        if group.len() == 1 || is_unavailable(&error) {
            if !is_unavailable(&error) {
                tracing::error!(error = %error, "storing events failed");
            }
            let shared = Arc::new(error);
            return group
                .iter()
                .map(|_| Outcome::Failed(Error::Db(clone_error(&shared))))
                .collect();
        }
        tracing::warn!(error = %error, requests = group.len(), "group commit failed; writing its requests one by one");
        let mut outcomes = Vec::with_capacity(group.len());
        for submission in group {
            let outcome = match write_group(&self.pool, std::slice::from_ref(submission)).await {
                Ok(mut one) => one.remove(0),
                Err(e) => {
                    tracing::error!(error = %e, "storing events failed");
                    Outcome::Failed(Error::Db(e))
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// `sqlx::Error` is not `Clone`; every request of a failed group gets an equivalent error.
fn clone_error(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(e) => sqlx::Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// The database is out of reach: writing requests one by one would only wait longer.
fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

/// A deadlock or serialisation failure: the same group may well succeed at once.
fn is_retryable(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// What became of one request.
enum Outcome {
    /// Stored (or replayed): one answer per item.
    Stored(Vec<Accepted>),
    /// Refused as a whole (an idempotency key reused with another request): nothing stored.
    Refused(Problem),
    /// The database failed.
    Failed(Error),
}

/// Writes one group; on success every submission has an outcome, in order.
async fn write_group(pool: &PgPool, group: &[Submission]) -> Result<Vec<Outcome>, sqlx::Error> {
    let keyed = group.iter().any(|s| s.idempotency_keys().next().is_some());
    if !keyed {
        let events: Vec<(&Submission, &NewEvent)> = group
            .iter()
            .flat_map(|s| s.events().map(move |e| (s, e)))
            .collect();
        insert_events(pool, &events).await?;
        return Ok(group.iter().map(|s| Outcome::Stored(fresh(s))).collect());
    }
    let mut tx = pool.begin().await?;
    let outcomes = write_keyed(&mut tx, group).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Every item of a submission stored as new.
fn fresh(submission: &Submission) -> Vec<Accepted> {
    let mut accepted: Vec<Accepted> = Vec::with_capacity(submission.items.len());
    for item in &submission.items {
        let next = match item {
            Item::Event(event) => Accepted {
                id: event.id,
                replayed: false,
            },
            Item::SameAs(first) => accepted[*first],
        };
        accepted.push(next);
    }
    accepted
}

async fn insert_events(
    executor: impl sqlx::PgExecutor<'_>,
    events: &[(&Submission, &NewEvent)],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len();
    let (mut ids, mut topics, mut publishers) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut keys, mut data, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (submission, event) in events {
        ids.push(event.id.uuid());
        topics.push(submission.topic.uuid());
        publishers.push(submission.publisher.uuid());
        keys.push(event.key.as_deref());
        data.push(event.data.as_str());
        times.push(event.id.timestamp());
    }
    events::insert_events(
        executor,
        events::EventColumns {
            ids: &ids,
            topic_ids: &topics,
            publisher_partner_ids: &publishers,
            keys: &keys,
            data: &data,
            received_at: &times,
        },
    )
    .await
}

/// A group with idempotency keys, inside a transaction.
async fn write_keyed(
    tx: &mut Transaction<'_, Postgres>,
    group: &[Submission],
) -> Result<Vec<Outcome>, sqlx::Error> {
    // Every keyed event, sorted so that concurrent writers lock keys in the same order.
    let mut keyed: Vec<(TopicId, &str, &NewEvent, &[u8; 32])> = group
        .iter()
        .flat_map(|s| {
            s.events().filter_map(move |e| {
                e.idempotency
                    .as_ref()
                    .map(|i| (s.topic, i.key.as_str(), e, &i.hash))
            })
        })
        .collect();
    keyed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));

    let claimed = events::claim_idempotency_keys(
        &mut **tx,
        events::KeyClaims {
            topic_ids: &keyed.iter().map(|k| k.0.uuid()).collect::<Vec<_>>(),
            keys: &keyed.iter().map(|k| k.1).collect::<Vec<_>>(),
            event_ids: &keyed.iter().map(|k| k.2.id.uuid()).collect::<Vec<_>>(),
            received_at: &keyed.iter().map(|k| k.2.id.timestamp()).collect::<Vec<_>>(),
            request_hashes: &keyed.iter().map(|k| k.3.as_slice()).collect::<Vec<_>>(),
        },
    )
    .await?;
    let claimed: HashSet<(Uuid, String)> =
        claimed.into_iter().map(|c| (c.topic_id, c.key)).collect();

    let held: Vec<&(TopicId, &str, &NewEvent, &[u8; 32])> = keyed
        .iter()
        .filter(|k| !claimed.contains(&(k.0.uuid(), k.1.to_owned())))
        .collect();
    let mut holders: HashMap<(Uuid, String), (Uuid, Vec<u8>)> = HashMap::new();
    if !held.is_empty() {
        let rows = events::held_idempotency_keys(
            &mut **tx,
            &held.iter().map(|k| k.0.uuid()).collect::<Vec<_>>(),
            &held.iter().map(|k| k.1).collect::<Vec<_>>(),
        )
        .await?;
        holders = rows
            .into_iter()
            .map(|h| ((h.topic_id, h.key), (h.event_id, h.request_hash)))
            .collect();
    }

    let mut outcomes = Vec::with_capacity(group.len());
    let mut to_insert: Vec<(&Submission, &NewEvent)> = Vec::new();
    let mut release: Vec<(Uuid, &str, Uuid)> = Vec::new();
    for submission in group {
        let mut accepted: Vec<Accepted> = Vec::with_capacity(submission.items.len());
        let mut refused = None;
        for item in &submission.items {
            let next = match item {
                Item::SameAs(first) => accepted[*first],
                Item::Event(event) => match &event.idempotency {
                    None => Accepted {
                        id: event.id,
                        replayed: false,
                    },
                    Some(idem)
                        if claimed.contains(&(submission.topic.uuid(), idem.key.clone())) =>
                    {
                        Accepted {
                            id: event.id,
                            replayed: false,
                        }
                    }
                    Some(idem) => match holders.get(&(submission.topic.uuid(), idem.key.clone())) {
                        Some((first, hash)) if hash.as_slice() == idem.hash.as_slice() => {
                            Accepted {
                                id: EventId::from(*first),
                                replayed: true,
                            }
                        }
                        Some((first, _)) => {
                            refused.get_or_insert_with(|| {
                                Problem::conflict(format!(
                                    "the idempotency key `{}` was used within the last 24 hours for a different \
                                     request (event {first}); send the original request again to get its answer, \
                                     or use a new key for a new event",
                                    idem.key
                                ))
                            });
                            Accepted {
                                id: event.id,
                                replayed: false,
                            }
                        }
                        // Claimed by nobody and not claimable: it expired and was removed in between.
                        None => {
                            return Err(sqlx::Error::Protocol(format!(
                                "idempotency key `{}` vanished while being claimed",
                                idem.key
                            )));
                        }
                    },
                },
            };
            accepted.push(next);
        }
        match refused {
            Some(problem) => {
                for event in submission.events() {
                    if let Some(idem) = &event.idempotency
                        && claimed.contains(&(submission.topic.uuid(), idem.key.clone()))
                    {
                        release.push((submission.topic.uuid(), idem.key.as_str(), event.id.uuid()));
                    }
                }
                outcomes.push(Outcome::Refused(problem));
            }
            None => {
                for (item, accepted) in submission.items.iter().zip(&accepted) {
                    if let Item::Event(event) = item
                        && !accepted.replayed
                    {
                        to_insert.push((submission, event));
                    }
                }
                outcomes.push(Outcome::Stored(accepted));
            }
        }
    }
    if !release.is_empty() {
        events::release_idempotency_keys(
            &mut **tx,
            &release.iter().map(|r| r.0).collect::<Vec<_>>(),
            &release.iter().map(|r| r.1).collect::<Vec<_>>(),
            &release.iter().map(|r| r.2).collect::<Vec<_>>(),
        )
        .await?;
    }
    insert_events(&mut **tx, &to_insert).await?;
    Ok(outcomes)
}
