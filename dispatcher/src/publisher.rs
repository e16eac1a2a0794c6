//! Publishing with confirms for retries, dead letters and notices, one publish in flight per channel so each learns its own return; a message is acked only after this returns Ok.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use anika_shared::amqp::{Broker, BrokerError};
use lapin::{BasicProperties, Channel, Confirmation, options::BasicPublishOptions};
use tokio::sync::{Mutex, MutexGuard};

/// How many confirm channels publish at once, each with one publish in flight.
///
/// One at a time per channel because lapin cannot tell whose a `basic.return` is: it hands
/// the returned message to whichever confirm completes next, and a `multiple` ack completes
/// several in hash order. With publishes overlapping on one channel, a system notice that
/// no queue takes (the usual case) was reported as the return of a dead letter published
/// beside it; that dead letter was requeued and landed in its queue twice. With one
/// outstanding publish a return can only be its own.
const CHANNELS: usize = 8;

/// Confirm-mode channels of one dispatcher process, each reopened when it breaks.
#[derive(Debug)]
pub struct Publisher {
    broker: Arc<Broker>,
    channels: Vec<Mutex<Option<Channel>>>,
    /// Where the search for a free channel starts, so publishes spread over them.
    next: AtomicUsize,
}

impl Publisher {
    /// A publisher on `broker`; each channel opens on first use.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            channels: (0..CHANNELS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A channel no other publish uses until the guard is dropped: a free one if any,
    /// otherwise the next in turn once it is free.
    async fn take(&self) -> MutexGuard<'_, Option<Channel>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..CHANNELS {
            if let Ok(free) = self.channels[(start + i) % CHANNELS].try_lock() {
                return free;
            }
        }
        self.channels[start % CHANNELS].lock().await
    }

    /// Closes the channels, once nothing publishes any more (at shutdown).
    ///
    /// Left to its drop, lapin would close them after the connection is gone and log an error.
    pub async fn close(&self) {
        for slot in &self.channels {
            if let Some(channel) = slot.lock().await.take() {
                anika_shared::amqp::close_channel(&channel, "dispatcher stopping").await;
            }
        }
    }

    /// Publishes and waits for the broker's confirm; an unroutable or refused message is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        if self
            .publish_routed(exchange, routing_key, body, properties)
            .await?
        {
            Ok(())
        } else {
            Err(BrokerError::NotConfirmed("no queue is bound for it"))
        }
    }

    /// Publishes and waits for the broker's confirm: whether a queue took the message
    /// (`false`: confirmed, but no queue is bound for it); a refused message is an error.
    pub async fn publish_routed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<bool, BrokerError> {
        let mut slot = self.take().await;
        let channel = match slot.as_ref() {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                let channel = self.broker.confirm_channel().await?;
                *slot = Some(channel.clone());
                channel
            }
        };
        // Bounded: lapin may never resolve a publish's confirm on a connection the server
        // closed; unconfirmed means the message is not acked and comes back.
        let publishing = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    // mandatory: a missing queue must come back as an error, not vanish silently.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirm = match anika_shared::amqp::bounded("a publish's confirm", publishing).await {
            Ok(confirm) => confirm,
            Err(e) => {
                // A confirm or return still owed on this channel must not be taken for the
                // next publish's: the channel goes, and the next publish opens another.
                *slot = None;
                return Err(e);
            }
        };
        drop(slot);
        match confirm {
            Confirmation::Ack(None) => Ok(true),
            Confirmation::Ack(Some(_)) => Ok(false),
            Confirmation::Nack(_) => Err(BrokerError::NotConfirmed("the broker refused it")),
            Confirmation::NotRequested => Err(BrokerError::NotConfirmed(
                "confirms are off on this channel",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use anika_shared::{amqp::Topology, config::QueueType};
    use futures::future::join_all;
    use lapin::{
        ExchangeKind, options::ExchangeDeclareOptions, options::QueueBindOptions,
        options::QueueDeclareOptions, types::FieldTable,
    };

    use super::*;

    #[tokio::test]
    async fn each_publish_learns_whether_it_was_routed_while_unroutable_ones_overlap_it() {
        let env = anika_testkit::TestEnv::new().await;
        let topology = Topology {
            queue_type: QueueType::Classic,
            retry_schedule: "1s".parse().unwrap(),
        };
        let broker = Broker::new(&env.amqp_url, "publisher test", topology).unwrap();
        let channel = broker.channel().await.unwrap();
        channel
            .exchange_declare(
                "t".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                "t.kept".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                "t.kept".into(),
                "t".into(),
                "kept".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let publisher = Publisher::new(Arc::clone(&broker));
        // Like dead letters beside system notices nobody subscribed to: every other
        // publish has no queue, and they overlap.
        let answers = join_all((0..600).map(|i| {
            let publisher = &publisher;
            async move {
                let routed = i % 3 != 0;
                let key = if routed { "kept" } else { "nowhere" };
                let answer = publisher
                    .publish_routed("t", key, b"{}", BasicProperties::default())
                    .await
                    .unwrap();
                (routed, answer)
            }
        }))
        .await;
        let wrong: Vec<_> = answers
            .iter()
            .filter(|(routed, answer)| routed != answer)
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of 600 publishes were told the other's outcome",
            wrong.len()
        );
        assert_eq!(
            anika_shared::amqp::message_count(&channel, "t.kept")
                .await
                .unwrap(),
            400
        );
        publisher.close().await;
        broker.close().await;
    }
}
