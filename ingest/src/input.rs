//! Reading and checking what a publisher posts, before anything is stored.
//!
//! Every check that can fail because of the input happens here, so the group
//! commit never sees a row PostgreSQL would refuse (one bad row would fail its
//! neighbours' transaction too). The posted `data` bytes are kept as they came:
//! they go into the delivery envelope byte for byte.

use std::collections::HashMap;

use anika_shared::{
    FieldError, Problem,
    edge::BodyError,
    envelope::{Envelope, EventHead},
    extract::{escape_pointer, require_json_content_type},
    storable::{find_nul, raw_has_nul},
};
use axum::{
    body::Body,
    http::{HeaderMap, header},
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, value::RawValue};
use sha2::{Digest, Sha256};

use crate::{
    topics::Topic,
    writer::{Idempotency, Item, NewEvent},
};
use anika_shared::domain::{EventId, PartnerId};

/// Longest `key` (characters).
pub(crate) const MAX_KEY_CHARS: usize = 256;
/// Longest idempotency key (characters).
pub(crate) const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Most events in one batch.
pub(crate) const MAX_BATCH_EVENTS: usize = 1000;
/// Most field errors reported in one problem (the rest are counted in the detail).
const MAX_REPORTED_ERRORS: usize = 100;
/// Longest error detail (schema messages quote the offending value, which may be large).
const MAX_DETAIL_CHARS: usize = 300;

/// Reads a JSON body of at most `limit` bytes: 415 if it is not declared JSON,
/// 413 as soon as it is known to be too large (from `Content-Length`, or while
/// streaming a body that did not declare it) — never after buffering it whole.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Problem> {
    require_json_content_type(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared
        && length > limit as u64
    {
        return Err(too_large(&format!("the body has {length} bytes"), limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large("the body is larger than allowed", limit))
        }
        Err(e) => Err(match BodyError::find(&*e) {
            // Too slow, or the server's body budget is spent (see `anika_shared::edge`).
            Some(error) => error.problem(),
            None => Problem::bad_request(format!("the body could not be read: {e}")),
        }),
    }
}

fn too_large(what: &str, limit: usize) -> Problem {
    Problem::payload_too_large(format!(
        "{what}; at most {limit} bytes are accepted (ANIKA_MAX_EVENT_BYTES / ANIKA_MAX_BATCH_BYTES)"
    ))
}

/// Deserialises a field that is present, even as `null`, into `Some`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// `POST /v1/topics/{id}/events`: every value kept raw so each can be checked with its own pointer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSingle<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    key: Option<&'a RawValue>,
}

/// One item of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    key: Option<&'a RawValue>,
    #[serde(default, borrow)]
    idempotency_key: Option<&'a RawValue>,
}

/// `POST /v1/topics/{id}/events/batch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch<'a> {
    #[serde(default, borrow, deserialize_with = "bounded_events")]
    events: Option<EventList<'a>>,
}

/// The `events` of a batch, read no further than [`MAX_BATCH_EVENTS`] + 1 items.
enum EventList<'a> {
    Items(Vec<&'a RawValue>),
    /// Present, but not an array.
    NotArray,
}

/// The detail of a batch with too many events; also how the parse error is recognised.
const TOO_MANY_EVENTS: &str = "must hold 1 to 1000 events; this batch has more";

/// Stops at the 1001st event, so a huge `[0,0,0,…]` is refused without building a vector
/// of millions of items (or even reading the rest of the array).
fn bounded_events<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<EventList<'de>>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = EventList<'de>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of events")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH_EVENTS));
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                if items.len() == MAX_BATCH_EVENTS {
                    return Err(serde::de::Error::custom(TOO_MANY_EVENTS));
                }
                items.push(item);
            }
            Ok(EventList::Items(items))
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(EventList::NotArray)
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(EventList::NotArray)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(EventList::NotArray)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(EventList::NotArray)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(EventList::NotArray)
        }

        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(EventList::NotArray)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(EventList::NotArray)
        }
    }
    deserializer.deserialize_any(Bounded).map(Some)
}

/// What the body must look like, for error messages.
const SINGLE_SHAPE: &str = r#"a JSON object such as {"data": {...}, "key": "optional"}"#;
const BATCH_SHAPE: &str = r#"a JSON object such as {"events": [{"data": {...}}]}"#;

/// Everything that was wrong with one request, sorted into the status it earns.
#[derive(Default)]
struct Findings {
    /// Values too large to accept (413).
    too_large: Vec<FieldError>,
    /// Invalid values (422).
    invalid: Vec<FieldError>,
}

impl Findings {
    fn into_result(self, what: &str) -> Result<(), Problem> {
        if !self.too_large.is_empty() {
            let mut problem = Problem::payload_too_large(summary(&self.too_large, what));
            problem.errors = cap(self.too_large);
            return Err(problem);
        }
        if !self.invalid.is_empty() {
            return Err(Problem::validation(
                summary(&self.invalid, what),
                cap(self.invalid),
            ));
        }
        Ok(())
    }
}

fn summary(errors: &[FieldError], what: &str) -> String {
    let first = &errors[0];
    let at = if first.pointer.is_empty() {
        "body"
    } else {
        &first.pointer
    };
    match errors.len() {
        1 => format!("{at}: {}", first.detail),
        n => format!("{what}: {n} problems, the first at {at}: {}", first.detail),
    }
}

fn cap(mut errors: Vec<FieldError>) -> Vec<FieldError> {
    errors.truncate(MAX_REPORTED_ERRORS);
    errors
}

fn shorten(text: String) -> String {
    if text.chars().count() <= MAX_DETAIL_CHARS {
        text
    } else {
        let mut cut: String = text.chars().take(MAX_DETAIL_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// Parses a body that must be one JSON object; syntax errors are 400 (not JSON at all).
fn parse_object<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    shape: &str,
    pointer: &str,
) -> Result<T, ParseError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => {
            return Err(ParseError::NotJson(format!(
                "the body is empty; expected {shape}"
            )));
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => {
                        ParseError::Shape(FieldError::new(pointer, format!("expected {shape}")))
                    }
                    Err(e) => ParseError::NotJson(format!("the body is not valid JSON: {e}")),
                },
            );
        }
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ParseError::Shape(shape_error(pointer, &e)),
        _ => ParseError::NotJson(format!("the body is not valid JSON: {e}")),
    })
}

enum ParseError {
    /// Not JSON: 400.
    NotJson(String),
    /// JSON of the wrong shape: 422 at this pointer.
    Shape(FieldError),
}

/// Points at the field serde complained about (`unknown field `x``), or at the object.
fn shape_error(pointer: &str, error: &serde_json::Error) -> FieldError {
    let message = error.to_string();
    let message = match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    };
    for prefix in ["unknown field `", "duplicate field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            return FieldError::new(
                format!("{pointer}/{}", escape_pointer(&rest[..end])),
                message,
            );
        }
    }
    FieldError::new(pointer, message)
}

/// An optional string field: `null` or absent is `None`; anything but a string is an error.
fn optional_string(
    raw: Option<&RawValue>,
    pointer: &str,
    findings: &mut Findings,
) -> Option<String> {
    let raw = raw?;
    match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(text) => text,
        Err(_) => {
            findings
                .invalid
                .push(FieldError::new(pointer, "must be a string"));
            None
        }
    }
}

/// Checks a `key` or idempotency key: not empty, not too long, storable.
fn check_text(text: &str, pointer: &str, max: usize, findings: &mut Findings) -> bool {
    let problem = if text.is_empty() {
        Some("must not be empty (leave it out instead)".to_owned())
    } else if text.chars().count() > max {
        Some(format!(
            "must have at most {max} characters, this one has {}",
            text.chars().count()
        ))
    } else if text.contains('\0') {
        Some("must not contain the character U+0000".to_owned())
    } else {
        None
    };
    match problem {
        Some(detail) => {
            findings.invalid.push(FieldError::new(pointer, detail));
            false
        }
        None => true,
    }
}

/// One event that passed every check, ready for the writer.
struct Checked<'a> {
    data: &'a RawValue,
    key: Option<String>,
    /// The parsed data, kept only when an idempotency hash needs it.
    value: Value,
}

/// What each event of a request is checked against: its topic and the size limit (batches only).
struct EventRules<'t> {
    topic: &'t Topic,
    max_data_bytes: Option<usize>,
}

/// Checks one event's `data` (size, storability, schema) and `key`; problems go into `findings`.
fn check_event<'a>(
    rules: &EventRules<'_>,
    data: &'a RawValue,
    key: Option<String>,
    pointer: &str,
    findings: &mut Findings,
) -> Option<Checked<'a>> {
    let EventRules {
        topic,
        max_data_bytes,
    } = *rules;
    let data_pointer = format!("{pointer}/data");
    let before = findings.too_large.len() + findings.invalid.len();
    if let Some(max) = max_data_bytes
        && data.get().len() > max
    {
        findings.too_large.push(FieldError::new(
            &data_pointer,
            format!(
                "is {} bytes; at most {max} are accepted per event",
                data.get().len()
            ),
        ));
        return None;
    }
    if let Some(key) = &key {
        check_text(key, &format!("{pointer}/key"), MAX_KEY_CHARS, findings);
    }
    // Parsing fully catches what the raw syntax check lets through and PostgreSQL's
    // jsonb refuses (lone surrogates, numbers out of range); the schema needs the value too.
    let value: Value = match serde_json::from_str(data.get()) {
        Ok(value) => value,
        Err(e) => {
            let message = e.to_string();
            let message = message
                .rfind(" at line ")
                .map_or(message.clone(), |i| message[..i].to_owned());
            findings.invalid.push(FieldError::new(
                &data_pointer,
                format!("cannot be stored: {message}"),
            ));
            return None;
        }
    };
    if raw_has_nul(data.get()) {
        findings.invalid.extend(find_nul(&value, &data_pointer));
    }
    if let Some(validator) = &topic.validator {
        for error in validator.iter_errors(&value) {
            findings.invalid.push(FieldError::new(
                format!("{data_pointer}{}", error.instance_path().as_str()),
                shorten(error.to_string()),
            ));
            if findings.invalid.len() >= MAX_REPORTED_ERRORS {
                break;
            }
        }
    }
    (findings.too_large.len() + findings.invalid.len() == before).then_some(Checked {
        data,
        key,
        value,
    })
}

/// The hash an idempotency key remembers: the same key with another hash is a different request.
///
/// Computed over the meaning, not the bytes (members sorted, whitespace ignored),
/// so a client that re-serialises its retry is still recognised.
pub(crate) fn request_hash(key: Option<&str>, data: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"anika-event-v1\0");
    match key {
        Some(key) => {
            hasher.update(b"k");
            hash_str(&mut hasher, key);
        }
        None => hasher.update(b"n"),
    }
    hash_value(&mut hasher, data);
    hasher.finalize().into()
}

fn hash_str(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_be_bytes());
    hasher.update(text.as_bytes());
}

fn hash_value(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hasher.update(b"0"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            hasher.update(b"#");
            hash_str(hasher, &n.to_string());
        }
        Value::String(s) => {
            hasher.update(b"s");
            hash_str(hasher, s);
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_be_bytes());
            for item in items {
                hash_value(hasher, item);
            }
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"{");
            hasher.update((members.len() as u64).to_be_bytes());
            for (k, v) in members {
                hash_str(hasher, k);
                hash_value(hasher, v);
            }
        }
    }
}

/// Reads the `Idempotency-Key` header: absent is `None`; invalid is a 422 naming the header.
pub(crate) fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = |detail: String| {
        Problem::validation(format!("the Idempotency-Key header {detail}"), Vec::new())
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("must be visible ASCII characters".to_owned()))?
        .trim();
    if text.is_empty() {
        return Err(invalid("must not be empty".to_owned()));
    }
    if text.len() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(invalid(format!(
            "must have at most {MAX_IDEMPOTENCY_KEY_CHARS} characters, this one has {}",
            text.len()
        )));
    }
    Ok(Some(text.to_owned()))
}

/// Builds the writer's form of a checked event: a fresh id, the envelope serialised once.
fn new_event(
    topic: &Topic,
    publisher: PartnerId,
    checked: Checked<'_>,
    idempotency_key: Option<String>,
) -> NewEvent {
    let id = EventId::new();
    let idempotency = idempotency_key.map(|key| Idempotency {
        hash: request_hash(checked.key.as_deref(), &checked.value),
        key,
    });
    let envelope = Envelope::encode(
        &EventHead {
            id,
            topic_id: topic.id,
            topic: &topic.name,
            publisher,
            key: checked.key.as_deref(),
            received_at: id.timestamp(),
        },
        checked.data,
    );
    NewEvent {
        id,
        key: checked.key,
        data: checked.data.get().to_owned(),
        envelope,
        idempotency,
    }
}

/// Parses and checks the body of a single-event post.
pub(crate) fn single(
    topic: &Topic,
    publisher: PartnerId,
    body: &[u8],
    idempotency_key: Option<String>,
) -> Result<NewEvent, Problem> {
    let raw: RawSingle<'_> = parse_object(body, SINGLE_SHAPE, "").map_err(|e| match e {
        ParseError::NotJson(detail) => Problem::bad_request(detail),
        ParseError::Shape(error) => Problem::validation(
            summary(std::slice::from_ref(&error), "the event"),
            vec![error],
        ),
    })?;
    let Some(data) = raw.data else {
        return Err(Problem::bad_request(format!(
            "the body has no `data`; expected {SINGLE_SHAPE}"
        )));
    };
    let mut findings = Findings::default();
    let key = optional_string(raw.key, "/key", &mut findings);
    let checked = check_event(
        &EventRules {
            topic,
            max_data_bytes: None,
        },
        data,
        key,
        "",
        &mut findings,
    );
    findings.into_result("the event")?;
    let checked = checked.expect("no findings means the event was checked");
    Ok(new_event(topic, publisher, checked, idempotency_key))
}

/// Parses and checks a batch: every problem of every event is reported, and any one refuses the batch.
pub(crate) fn batch(
    topic: &Topic,
    publisher: PartnerId,
    body: &[u8],
    max_data_bytes: usize,
) -> Result<Vec<Item>, Problem> {
    let raw: RawBatch<'_> = parse_object(body, BATCH_SHAPE, "").map_err(|e| match e {
        ParseError::NotJson(detail) => Problem::bad_request(detail),
        ParseError::Shape(error) if error.detail == TOO_MANY_EVENTS => {
            Problem::invalid_field("/events", TOO_MANY_EVENTS)
        }
        ParseError::Shape(error) => Problem::validation(
            summary(std::slice::from_ref(&error), "the batch"),
            vec![error],
        ),
    })?;
    let events = match raw.events {
        None => {
            return Err(Problem::bad_request(format!(
                "the body has no `events`; expected {BATCH_SHAPE}"
            )));
        }
        Some(EventList::NotArray) => {
            return Err(Problem::invalid_field(
                "/events",
                "must be an array of events",
            ));
        }
        Some(EventList::Items(events)) => events,
    };
    if events.is_empty() {
        return Err(Problem::invalid_field(
            "/events",
            format!(
                "must hold 1 to {MAX_BATCH_EVENTS} events, not {}",
                events.len()
            ),
        ));
    }
    let rules = EventRules {
        topic,
        max_data_bytes: Some(max_data_bytes),
    };
    let mut findings = Findings::default();
    let mut items = Vec::with_capacity(events.len());
    // Idempotency key → (index, hash) of its first use in this batch.
    let mut seen: HashMap<String, (usize, [u8; 32])> = HashMap::new();
    for (i, raw_item) in events.iter().enumerate() {
        let pointer = format!("/events/{i}");
        let item: RawItem<'_> =
            match parse_object(raw_item.get().as_bytes(), "an object with `data`", &pointer) {
                Ok(item) => item,
                Err(ParseError::Shape(error)) => {
                    findings.invalid.push(error);
                    continue;
                }
                Err(ParseError::NotJson(detail)) => {
                    findings.invalid.push(FieldError::new(&pointer, detail));
                    continue;
                }
            };
        let key = optional_string(item.key, &format!("{pointer}/key"), &mut findings);
        let idem_pointer = format!("{pointer}/idempotency_key");
        let idempotency_key = optional_string(item.idempotency_key, &idem_pointer, &mut findings)
            .filter(|k| check_text(k, &idem_pointer, MAX_IDEMPOTENCY_KEY_CHARS, &mut findings));
        let Some(data) = item.data else {
            findings.invalid.push(FieldError::new(
                format!("{pointer}/data"),
                "missing field `data`",
            ));
            continue;
        };
        let Some(checked) = check_event(&rules, data, key, &pointer, &mut findings) else {
            continue;
        };
        if let Some(idem) = &idempotency_key {
            let hash = request_hash(checked.key.as_deref(), &checked.value);
            match seen.get(idem) {
                Some((first, first_hash)) if *first_hash == hash => {
                    // The same event twice under one key: one event, both items answer with its id.
                    items.push(Item::SameAs(*first));
                    continue;
                }
                Some((first, _)) => {
                    findings.invalid.push(FieldError::new(
                        &idem_pointer,
                        format!(
                            "repeats the idempotency key of /events/{first} with a different event"
                        ),
                    ));
                    continue;
                }
                None => {
                    seen.insert(idem.clone(), (i, hash));
                }
            }
        }
        items.push(Item::Event(new_event(
            topic,
            publisher,
            checked,
            idempotency_key,
        )));
    }
    findings.into_result("the batch")?;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(schema: Option<Value>) -> Topic {
        Topic {
            id: anika_shared::domain::TopicId::new(),
            owner: PartnerId::new(),
            name: "car.chosen".into(),
            validator: schema.map(|s| jsonschema::draft202012::new(&s).unwrap()),
        }
    }

    #[test]
    fn the_posted_data_bytes_go_into_the_envelope_unchanged() {
        let t = topic(None);
        let event = single(
            &t,
            PartnerId::new(),
            br#"{"data": {"price": 1.50, "b": [1, 2]}, "key": "k"}"#,
            None,
        )
        .unwrap();
        assert_eq!(event.data, r#"{"price": 1.50, "b": [1, 2]}"#);
        let text = String::from_utf8(event.envelope).unwrap();
        assert!(
            text.contains(r#""data":{"price": 1.50, "b": [1, 2]}"#),
            "{text}"
        );
        assert_eq!(event.key.as_deref(), Some("k"));
    }

    #[test]
    fn null_data_is_data_but_missing_data_is_a_400() {
        let t = topic(None);
        assert_eq!(
            single(&t, PartnerId::new(), br#"{"data": null}"#, None)
                .unwrap()
                .data,
            "null"
        );
        assert_eq!(
            single(&t, PartnerId::new(), br#"{"key": "k"}"#, None)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            single(&t, PartnerId::new(), br#"[1]"#, None)
                .unwrap_err()
                .status,
            422
        );
        assert_eq!(
            single(&t, PartnerId::new(), br#"{"data": "#, None)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn fields_are_pointed_at() {
        let t = topic(None);
        let p = single(&t, PartnerId::new(), br#"{"data": 1, "kye": "k"}"#, None).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/kye"));
        let p = single(&t, PartnerId::new(), br#"{"data": 1, "key": 5}"#, None).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/key"));
        let long = format!(r#"{{"data": 1, "key": "{}"}}"#, "k".repeat(257));
        let p = single(&t, PartnerId::new(), long.as_bytes(), None).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/key"));
    }

    #[test]
    fn what_jsonb_cannot_store_is_a_422_not_a_500() {
        let t = topic(None);
        let p = single(
            &t,
            PartnerId::new(),
            br#"{"data": {"a": ["x\u0000y"]}}"#,
            None,
        )
        .unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/data/a/0"));
        let p = single(&t, PartnerId::new(), br#"{"data": "\ud800"}"#, None).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/data"));
        let p = single(&t, PartnerId::new(), br#"{"data": 1e400}"#, None).unwrap_err();
        assert_eq!(p.status, 422);
        // An escaped backslash before u0000 is just text.
        assert!(single(&t, PartnerId::new(), br#"{"data": "\\u0000"}"#, None).is_ok());
    }

    #[test]
    fn schema_violations_point_into_data() {
        let t = topic(Some(serde_json::json!({
            "type": "object", "required": ["price"],
            "properties": {"price": {"type": "number"}, "car": {"type": "string"}}
        })));
        let p = single(
            &t,
            PartnerId::new(),
            br#"{"data": {"price": "x", "car": 1}}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(p.status, 422);
        let mut pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        pointers.sort();
        assert_eq!(pointers, vec!["/data/car", "/data/price"]);
    }

    #[test]
    fn a_batch_names_every_bad_event_and_accepts_none() {
        let t = topic(Some(
            serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        ));
        let body = br#"{"events": [{"data": {"n": 1}}, {"data": {"n": "x"}}, {"key": "k"}, {"data": {}, "oops": 1}]}"#;
        let p = batch(&t, PartnerId::new(), body, 1024).unwrap_err();
        assert_eq!(p.status, 422);
        let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            vec!["/events/1/data/n", "/events/2/data", "/events/3/oops"]
        );
        let p = batch(&t, PartnerId::new(), br#"{"events": []}"#, 1024).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/events"));
        let p = batch(
            &t,
            PartnerId::new(),
            br#"{"events": [{"data": "xxxxxxxxxx"}]}"#,
            8,
        )
        .unwrap_err();
        assert_eq!(
            (p.status, p.errors[0].pointer.as_str()),
            (413, "/events/0/data")
        );
    }

    #[test]
    fn a_batch_is_refused_at_its_1001st_event_without_reading_further() {
        let t = topic(None);
        // Unterminated: had the whole array been read first, this would be "not JSON" (400).
        let mut body = String::from(r#"{"events": ["#);
        body.push_str(&"0,".repeat(8 << 20));
        let started = std::time::Instant::now();
        let p = batch(&t, PartnerId::new(), body.as_bytes(), 1024).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/events"));
        assert!(p.detail.contains("1000"), "{}", p.detail);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let p = batch(&t, PartnerId::new(), br#"{"events": null}"#, 1024).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/events"));
        let p = batch(&t, PartnerId::new(), br#"{"events": {"a": [1]}}"#, 1024).unwrap_err();
        assert_eq!((p.status, p.errors[0].pointer.as_str()), (422, "/events"));
        let exactly: String = format!(
            r#"{{"events": [{}]}}"#,
            vec![r#"{"data": 1}"#; 1000].join(",")
        );
        assert_eq!(
            batch(&t, PartnerId::new(), exactly.as_bytes(), 1024)
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn a_key_repeated_in_a_batch_is_one_event_or_an_error() {
        let t = topic(None);
        let same = br#"{"events": [{"data": {"a": 1, "b": 2}, "idempotency_key": "k"}, {"data": {"b": 2, "a": 1}, "idempotency_key": "k"}]}"#;
        let items = batch(&t, PartnerId::new(), same, 1024).unwrap();
        assert!(matches!(items[1], Item::SameAs(0)));
        let different = br#"{"events": [{"data": 1, "idempotency_key": "k"}, {"data": 2, "idempotency_key": "k"}]}"#;
        let p = batch(&t, PartnerId::new(), different, 1024).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/events/1/idempotency_key");
    }

    #[test]
    fn the_request_hash_ignores_member_order_but_not_content() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": [true, null]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b": [true, null], "a": 1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"b": [true, null], "a": 2}"#).unwrap();
        assert_eq!(request_hash(Some("k"), &a), request_hash(Some("k"), &b));
        assert_ne!(request_hash(Some("k"), &a), request_hash(Some("k"), &c));
        assert_ne!(request_hash(Some("k"), &a), request_hash(None, &a));
    }
}
