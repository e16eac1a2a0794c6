//! Publishing with confirms for retries and dead letters: a message is acked only after this returns Ok.

use std::sync::Arc;

use anika_shared::amqp::{Broker, BrokerError};
use lapin::{BasicProperties, Channel, Confirmation, options::BasicPublishOptions};
use tokio::sync::Mutex;

/// One confirm-mode channel per dispatcher process, reopened when it breaks.
#[derive(Debug)]
pub struct Publisher {
    broker: Arc<Broker>,
    channel: Mutex<Option<Channel>>,
}

impl Publisher {
    /// A publisher on `broker`; the channel opens on first use.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            channel: Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut current = self.channel.lock().await;
        if let Some(channel) = current.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.broker.confirm_channel().await?;
        *current = Some(channel.clone());
        Ok(channel)
    }

    /// Closes the channel, once nothing publishes any more (at shutdown).
    ///
    /// Left to its drop, lapin would close it after the connection is gone and log an error.
    pub async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take() {
            anika_shared::amqp::close_channel(&channel, "dispatcher stopping").await;
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
        let channel = self.channel().await?;
        let confirm = channel
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
            .await?;
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
