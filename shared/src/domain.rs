//! Domain newtypes: ids, names, roles and secrets that cannot be built invalid.
//!
//! Each is made only through `parse`/`TryFrom` (serde goes through them too), so
//! once a value exists nothing downstream checks it again.

use std::{fmt, str::FromStr};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The UUID inside.
            pub fn uuid(self) -> Uuid {
                self.0
            }

            /// Parses an id given by a client; the error names what was expected.
            pub fn parse(text: &str) -> Result<Self, String> {
                Uuid::parse_str(text)
                    .map(Self)
                    .map_err(|_| format!("`{}` is not a valid {} (a UUID is expected)", truncate(text, 64), $what))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            /// Trusted conversion for ids read back from our own database.
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }

        impl From<$name> for Uuid {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0.to_string()
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A partner company.
    PartnerId,
    "partner id"
);
id_type!(
    /// A topic.
    TopicId,
    "topic id"
);
id_type!(
    /// A subscription.
    SubscriptionId,
    "subscription id"
);
id_type!(
    /// An event (UUIDv7: sorts by time).
    EventId,
    "event id"
);
id_type!(
    /// An API key.
    ApiKeyId,
    "API key id"
);
id_type!(
    /// One delivery attempt.
    AttemptId,
    "attempt id"
);

impl EventId {
    /// The moment embedded in a UUIDv7, to the millisecond: the event's `received_at`.
    pub fn timestamp(self) -> chrono::DateTime<chrono::Utc> {
        let (secs, nanos) = self
            .0
            .get_timestamp()
            .map(|ts| ts.to_unix())
            .unwrap_or((0, 0));
        let millis = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
        chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the platform; may do everything, on behalf of any partner.
    Operator,
    /// Manages its partner's topics, grants, subscriptions and keys.
    Admin,
    /// Posts events to its partner's own topics and reads them.
    Publisher,
}

impl Role {
    /// The name used in tokens, the database and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Admin => "admin",
            Self::Publisher => "publisher",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            "publisher" => Ok(Self::Publisher),
            other => Err(format!(
                "`{other}` is not a role (operator, admin or publisher)"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic name: 1–128 characters of `[A-Za-z0-9._-]`, unique per owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,128}$", example = "car.chosen")]
pub struct TopicName(String);

impl TopicName {
    /// Parses a topic name, saying which rule it breaks.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a topic name must not be empty".into());
        }
        if text.len() > 128 {
            return Err(format!(
                "a topic name has at most 128 characters, this one has {}",
                text.chars().count()
            ));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "`{bad}` is not allowed in a topic name (only A-Z, a-z, 0-9, `.`, `_`, `-`)"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Names starting with `anika.` belong to anika (the system topic); partners may not
    /// create or rename a topic to one (API.md: 422).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_TOPIC_PREFIX)
    }
}

/// The prefix of the topic names anika keeps for itself.
pub const RESERVED_TOPIC_PREFIX: &str = "anika.";

/// The name of every partner's system topic, into which anika publishes operational
/// events about the partner's own subscriptions.
pub const SYSTEM_TOPIC: &str = "anika.system";

impl TryFrom<String> for TopicName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TopicName> for String {
    fn from(value: TopicName) -> Self {
        value.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name (partner, API key): 1–200 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, min_length = 1, max_length = 200)]
pub struct DisplayName(String);

impl DisplayName {
    /// Parses a display name; surrounding whitespace is trimmed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".into());
        }
        if trimmed.chars().count() > 200 {
            return Err("must have at most 200 characters".into());
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DisplayName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DisplayName> for String {
    fn from(value: DisplayName) -> Self {
        value.0
    }
}

/// A free-text description: at most 2,000 characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, max_length = 2000)]
pub struct Description(String);

impl Description {
    /// Parses a description.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.chars().count() > 2000 {
            return Err("must have at most 2000 characters".into());
        }
        if text.contains('\0') {
            return Err(crate::storable::NUL_DETAIL.into());
        }
        Ok(Self(text.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Description {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Description> for String {
    fn from(value: Description) -> Self {
        value.0
    }
}

/// The requests one subscription may have in flight to its endpoint at once: 1–1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "i64", into = "u32")]
#[schema(value_type = u32, minimum = 1, maximum = 1000)]
pub struct MaxInFlight(u32);

impl MaxInFlight {
    /// The smallest cap: one request at a time.
    pub const MIN: Self = Self(1);
    /// The largest cap a subscription may ask for.
    pub const MAX: Self = Self(1000);

    /// The cap.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for MaxInFlight {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (i64::from(Self::MIN.0)..=i64::from(Self::MAX.0)).contains(&value) {
            Ok(Self(value as u32))
        } else {
            Err(format!(
                "max_in_flight must be between 1 and 1000, not {value}"
            ))
        }
    }
}

impl From<MaxInFlight> for u32 {
    fn from(value: MaxInFlight) -> Self {
        value.0
    }
}

impl FromStr for MaxInFlight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: i64 = s
            .parse()
            .map_err(|_| format!("`{}` is not a number", truncate(s, 32)))?;
        Self::try_from(value)
    }
}

impl fmt::Display for MaxInFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// A webhook signing secret: `whsec_` + base64 of 24–64 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// A fresh secret of 32 random bytes.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::fill(&mut bytes[..]);
        Self(bytes)
    }

    /// Parses `whsec_<base64>` as stored or shown.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(WEBHOOK_SECRET_PREFIX)
            .ok_or_else(|| "a webhook secret starts with `whsec_`".to_owned())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "a webhook secret is `whsec_` followed by base64".to_owned())?;
        if !(24..=64).contains(&bytes.len()) {
            return Err("a webhook secret holds 24 to 64 bytes".into());
        }
        Ok(Self(bytes))
    }

    /// The key bytes the HMAC is computed with.
    pub fn key_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `whsec_…` form, to show once to the subscriber or store.
    pub fn expose(&self) -> String {
        format!(
            "{WEBHOOK_SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }
}

impl WebhookSecret {
    /// Seals the secret for storage in `slot` (see [`crate::secrets`]).
    pub fn seal(
        &self,
        ring: &crate::secrets::KeyRing,
        slot: crate::secrets::Slot<'_>,
    ) -> Result<crate::secrets::Sealed, crate::secrets::SecretError> {
        let text = zeroize::Zeroizing::new(self.expose());
        ring.seal(text.as_bytes(), slot)
    }

    /// Opens a secret stored sealed in `slot`.
    pub fn open(
        stored: &str,
        ring: &crate::secrets::KeyRing,
        slot: crate::secrets::Slot<'_>,
    ) -> Result<Self, crate::secrets::SecretError> {
        use crate::secrets::{Sealed, SecretError};
        let plain = ring.open(&Sealed::parse(stored)?, slot)?;
        std::str::from_utf8(&plain)
            .ok()
            .and_then(|text| Self::parse(text).ok())
            .ok_or_else(|| {
                SecretError::Malformed("opens to something that is not a webhook secret".into())
            })
    }
}

impl Drop for WebhookSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// A point in time PostgreSQL can store and compare: RFC 3339, years 1 to 9999, UTC.
///
/// `timestamptz` spans 4713 BC to 294276 AD; chrono reaches further, and a time
/// outside PostgreSQL's range fails the query (a 500). Every time a client
/// sends (query parameters, cursors, bodies) is parsed into this type, so none
/// reaches the database unchecked. Years 1–9999 are also all RFC 3339 allows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, format = DateTime, example = "2026-11-02T10:00:00Z")]
pub struct Timestamp(chrono::DateTime<chrono::Utc>);

impl Timestamp {
    /// Parses an RFC 3339 time; a `+` that arrived as a space (an unencoded offset in a query) is forgiven.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed =
            chrono::DateTime::parse_from_rfc3339(&text.trim().replace(' ', "+")).map_err(|e| {
                format!(
                    "`{}` is not an RFC 3339 time such as 2026-11-02T10:00:00Z ({e})",
                    truncate(text, 64)
                )
            })?;
        Self::try_from(parsed.with_timezone(&chrono::Utc))
    }

    /// The time.
    pub fn get(self) -> chrono::DateTime<chrono::Utc> {
        self.0
    }
}

impl TryFrom<chrono::DateTime<chrono::Utc>> for Timestamp {
    type Error = String;
    fn try_from(value: chrono::DateTime<chrono::Utc>) -> Result<Self, Self::Error> {
        use chrono::Datelike as _;
        if (1..=9999).contains(&value.year()) {
            Ok(Self(value))
        } else {
            Err(format!(
                "{value} is out of range: times must lie in the years 1 to 9999"
            ))
        }
    }
}

impl From<Timestamp> for chrono::DateTime<chrono::Utc> {
    fn from(value: Timestamp) -> Self {
        value.0
    }
}

impl TryFrom<String> for Timestamp {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Timestamp> for String {
    fn from(value: Timestamp) -> Self {
        value.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from(*self))
    }
}

/// A stored name that is not one of its type's: a row written by a newer version, or by hand
/// past the column's CHECK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what} ({expected})")]
pub struct UnknownValue {
    /// What the value should have been, e.g. `subscription status`.
    pub what: &'static str,
    /// What was found (at most 64 characters of it).
    pub value: String,
    /// The names that are known.
    pub expected: &'static str,
}

/// An enum stored by name in a `text` column (whose CHECK lists the names) and shown by the
/// same name in the API: one `as_str`, one `FromStr`, serde and sqlx all go through them, so
/// every crate reads a stored value the same way. A value that does not parse is an error
/// (never a fallback), and reading one from PostgreSQL logs and counts it
/// ([`crate::meters::STORED_VALUES_UNREADABLE`]).
macro_rules! stored_enum {
    (
        $(#[$meta:meta])* $name:ident, $what:literal,
        { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }
    ) => {
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash,
            ::serde::Serialize, ::serde::Deserialize, ::utoipa::ToSchema,
        )]
        $(#[$meta])*
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// Parses a value read from the database; one that does not parse is logged and
            /// counted before it is returned as an error.
            pub fn from_stored(text: &str) -> Result<Self, $crate::domain::UnknownValue> {
                text.parse().inspect_err(|e: &$crate::domain::UnknownValue| {
                    ::metrics::counter!($crate::meters::STORED_VALUES_UNREADABLE, "type" => $what)
                        .increment(1);
                    ::tracing::error!(error = %e, "a stored value does not parse");
                })
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::domain::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err($crate::domain::UnknownValue {
                        what: $what,
                        value: $crate::domain::truncate(other, 64),
                        expected: concat!($($text, ", "),+).trim_end_matches(", "),
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::sqlx::Type<::sqlx::Postgres> for $name {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $name {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                Ok(Self::from_stored(text)?)
            }
        }
    };
}

pub(crate) use stored_enum;

stored_enum! {
    /// The state of a subscription (`subscriptions.status`).
    #[schema(as = Status)]
    SubscriptionStatus, "subscription status", {
        /// Delivering.
        Active => "active",
        /// Events queue up; nothing is sent.
        Paused => "paused",
        /// Set by the server for an endpoint that keeps failing (or answered 410).
        Disabled => "disabled",
    }
}

stored_enum! {
    /// What came of one delivery attempt (`attempts.status`).
    AttemptStatus, "attempt status", {
        /// 2xx.
        Succeeded => "succeeded",
        /// Anything else.
        Failed => "failed",
    }
}

impl AttemptStatus {
    /// `Succeeded` for a 2xx, `Failed` for anything else.
    pub fn of(succeeded: bool) -> Self {
        if succeeded {
            Self::Succeeded
        } else {
            Self::Failed
        }
    }
}

/// Fills a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes[..]);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_uuids_and_say_what_they_are() {
        let err = TopicId::parse("abc").unwrap_err();
        assert!(err.contains("topic id"), "{err}");
        let id = TopicId::new();
        assert_eq!(TopicId::parse(&id.to_string()).unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<TopicId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TopicId>("\"nope\"").is_err());
    }

    #[test]
    fn an_event_id_carries_its_receive_time() {
        let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
        let id = EventId::new();
        let at = id.timestamp();
        assert!(at >= before && at <= chrono::Utc::now(), "{at}");
    }

    #[test]
    fn topic_names_follow_the_rules() {
        assert!(TopicName::parse("car.chosen-v2_x").is_ok());
        assert!(TopicName::parse("").is_err());
        assert!(TopicName::parse("has space").unwrap_err().contains('`'));
        assert!(TopicName::parse(&"a".repeat(128)).is_ok());
        assert!(TopicName::parse(SYSTEM_TOPIC).unwrap().is_reserved());
        assert!(TopicName::parse("anika.other").unwrap().is_reserved());
        assert!(!TopicName::parse("anika-system").unwrap().is_reserved());
        assert!(TopicName::parse(&"a".repeat(129)).is_err());
        assert!(TopicName::parse("ünïcode").is_err());
    }

    #[test]
    fn max_in_flight_accepts_only_1_to_1000() {
        assert_eq!(MaxInFlight::try_from(1).unwrap().get(), 1);
        assert_eq!(MaxInFlight::try_from(1000).unwrap().get(), 1000);
        for bad in [0, -1, 1001, i64::MAX] {
            let err = MaxInFlight::try_from(bad).unwrap_err();
            assert!(err.contains("max_in_flight"), "{err}");
        }
        assert_eq!("32".parse::<MaxInFlight>().unwrap().get(), 32);
        assert!("lots".parse::<MaxInFlight>().is_err());
        assert!(serde_json::from_str::<MaxInFlight>("0").is_err());
        assert_eq!(
            serde_json::to_string(&MaxInFlight::try_from(7).unwrap()).unwrap(),
            "7"
        );
    }

    #[test]
    fn timestamps_are_only_what_postgresql_can_store() {
        let t = Timestamp::parse("2026-11-02T10:00:00.123Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-02T10:00:00.123Z");
        assert_eq!(
            Timestamp::parse("2026-11-02T10:00:00 01:00").unwrap(),
            Timestamp::parse("2026-11-02T09:00:00Z").unwrap()
        );
        for bad in [
            "-5000-01-01T00:00:00Z",
            "+300000-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:00:00-05:00",
            "yesterday",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
        let far = chrono::DateTime::<chrono::Utc>::MIN_UTC;
        assert!(Timestamp::try_from(far).is_err());
        // Cursors carry times through serde: the same rule applies there.
        assert!(serde_json::from_str::<Timestamp>("\"-5000-01-01T00:00:00Z\"").is_err());
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn stored_enums_round_trip_by_their_one_name_and_refuse_any_other() {
        for status in SubscriptionStatus::ALL {
            assert_eq!(status.as_str().parse::<SubscriptionStatus>(), Ok(*status));
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(
                serde_json::from_str::<SubscriptionStatus>(&json).unwrap(),
                *status
            );
        }
        for status in AttemptStatus::ALL {
            assert_eq!(status.as_str().parse::<AttemptStatus>(), Ok(*status));
        }
        assert_eq!(AttemptStatus::of(true), AttemptStatus::Succeeded);
        assert_eq!(AttemptStatus::of(false), AttemptStatus::Failed);
        // No fallback: an unknown value is an error that names the known ones.
        let err = SubscriptionStatus::from_stored("archived").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`archived` is not a subscription status (active, paused, disabled)"
        );
        assert!("Active".parse::<SubscriptionStatus>().is_err());
        assert!(serde_json::from_str::<AttemptStatus>("\"ok\"").is_err());
    }

    #[test]
    fn descriptions_refuse_nul() {
        assert!(Description::parse("a\0b").is_err());
        assert!(Description::parse("fine").is_ok());
    }

    #[test]
    fn webhook_secrets_round_trip_and_hide() {
        let s = WebhookSecret::generate();
        let shown = s.expose();
        assert!(shown.starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(&shown).unwrap(), s);
        assert_eq!(s.key_bytes().len(), 32);
        assert!(!format!("{s:?}").contains(&shown[6..]));
        assert!(WebhookSecret::parse("whsec_AAAA").is_err());
        assert!(WebhookSecret::parse("nope").is_err());
        let ring = crate::secrets::KeyRing::parse(crate::secrets::tests_ring()).unwrap();
        let slot = crate::secrets::Slot::new(crate::secrets::Column::SubscriptionSecret, "row-1");
        let stored = s.seal(&ring, slot).unwrap().to_text();
        assert!(!stored.contains(&shown));
        assert_eq!(WebhookSecret::open(&stored, &ring, slot).unwrap(), s);
    }
}
