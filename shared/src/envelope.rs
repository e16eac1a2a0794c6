//! The message contract between ingest (and replays) and the dispatcher.
//!
//! The AMQP body is the delivery envelope, serialised once at ingest and sent
//! to every subscriber byte for byte: `{"id","topic_id","topic",
//! "publisher_partner_id","key","received_at","data"}`. The properties carry
//! what the dispatcher needs without parsing the body: the event id as
//! `message_id`, the topic id and the attempt count as headers.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    amqp::{ATTEMPT_HEADER, header_str, header_u32, long_string},
    domain::{EventId, PartnerId, TopicId},
};

/// Header carrying the topic id.
pub const TOPIC_HEADER: &str = "x-anika-topic-id";

/// What a subscriber's endpoint receives.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// The event id (also `webhook-id`).
    pub id: EventId,
    /// The topic id.
    pub topic_id: TopicId,
    /// The topic's name when the event was published.
    pub topic: &'a str,
    /// The partner that published it.
    pub publisher_partner_id: PartnerId,
    /// The publisher's key (for ordering and search), if any.
    pub key: Option<&'a str>,
    /// RFC 3339 UTC, millisecond precision.
    pub received_at: String,
    /// The event's data, exactly as posted.
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// What an envelope says about its event besides the data: the event's head.
#[derive(Clone, Copy, Debug)]
pub struct EventHead<'a> {
    /// The event id (UUIDv7).
    pub id: EventId,
    /// The topic id.
    pub topic_id: TopicId,
    /// The topic's name when the event was published.
    pub topic: &'a str,
    /// The partner that published it.
    pub publisher: PartnerId,
    /// The publisher's key, if any.
    pub key: Option<&'a str>,
    /// When anika accepted it.
    pub received_at: DateTime<Utc>,
}

impl<'a> Envelope<'a> {
    /// Serialises the envelope of an event.
    pub fn encode(head: &EventHead<'_>, data: &RawValue) -> Vec<u8> {
        let envelope = Envelope {
            id: head.id,
            topic_id: head.topic_id,
            topic: head.topic,
            publisher_partner_id: head.publisher,
            key: head.key,
            received_at: format_time(head.received_at),
            data,
        };
        serde_json::to_vec(&envelope).expect("an envelope always serialises")
    }

    /// Reads an envelope back (the dispatcher does so only to apply a filter).
    pub fn decode(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// The RFC 3339 form used everywhere in the API: UTC, milliseconds, `Z`.
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The properties of an event message: persistent, with id, topic and attempt count.
pub fn properties(event: EventId, topic: TopicId, attempts: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(TOPIC_HEADER.into(), long_string(&topic.to_string()));
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempts));
    BasicProperties::default()
        // 2 = persistent: written to disk by the broker, survives its restart.
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(event.to_string()))
        .with_timestamp(event.timestamp().timestamp() as u64)
        .with_headers(headers)
}

/// The same message with a new attempt count (for a retry or a replay).
pub fn with_attempts(properties: &BasicProperties, attempts: u32) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempts));
    properties.clone().with_headers(headers)
}

/// What the dispatcher reads from a message's properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The event.
    pub event: EventId,
    /// Its topic.
    pub topic: TopicId,
    /// Attempts already made before this delivery.
    pub attempts: u32,
}

impl Meta {
    /// Reads the metadata; `None` for a message that did not come from anika.
    pub fn read(properties: &BasicProperties) -> Option<Self> {
        let event = EventId::parse(properties.message_id().as_ref()?.as_str()).ok()?;
        let topic = TopicId::parse(&header_str(properties, TOPIC_HEADER)?).ok()?;
        let attempts = header_u32(properties, ATTEMPT_HEADER).unwrap_or(0);
        Some(Self {
            event,
            topic,
            attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_keeps_data_byte_for_byte() {
        let data = RawValue::from_string(r#"{"price": 1.50, "car":"ü"}"#.to_owned()).unwrap();
        let id = EventId::new();
        let body = Envelope::encode(
            &EventHead {
                id,
                topic_id: TopicId::new(),
                topic: "car.chosen",
                publisher: PartnerId::new(),
                key: Some("k1"),
                received_at: id.timestamp(),
            },
            &data,
        );
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            text.contains(r#""data":{"price": 1.50, "car":"ü"}"#),
            "{text}"
        );
        let back = Envelope::decode(&body).unwrap();
        assert_eq!(back.id, id);
        assert_eq!(back.topic, "car.chosen");
        assert!(back.received_at.ends_with('Z'));
    }

    #[test]
    fn properties_round_trip_through_meta() {
        let (event, topic) = (EventId::new(), TopicId::new());
        let props = properties(event, topic, 0);
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            Meta::read(&props),
            Some(Meta {
                event,
                topic,
                attempts: 0
            })
        );
        let retried = with_attempts(&props, 3);
        assert_eq!(Meta::read(&retried).unwrap().attempts, 3);
    }
}
