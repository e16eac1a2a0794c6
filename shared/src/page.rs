//! Cursor pagination: `?limit=&cursor=` in, `{"items","next_cursor"}` out.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

use crate::problem::Problem;

/// A page size between 1 and 1000 (default 50).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[schema(value_type = u32, minimum = 1, maximum = 1000, default = 50)]
pub struct Limit(u32);

impl Limit {
    /// The largest page.
    pub const MAX: u32 = 1000;

    /// Parses a page size.
    pub fn parse(value: u32) -> Result<Self, String> {
        if (1..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!(
                "limit must be between 1 and {}, not {value}",
                Self::MAX
            ))
        }
    }

    /// The size.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The size as the `LIMIT` of a query that fetches one extra row to know if there is more.
    pub fn fetch(self) -> i64 {
        i64::from(self.0) + 1
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self(50)
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Query strings carry text, JSON bodies numbers: accept both.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let value = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n,
            Raw::Text(t) => t
                .trim()
                .parse::<u64>()
                .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a whole number")))?,
        };
        let value =
            u32::try_from(value).map_err(|_| serde::de::Error::custom("limit is too large"))?;
        Limit::parse(value).map_err(serde::de::Error::custom)
    }
}

/// A page of results.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    /// The results of this page.
    pub items: Vec<T>,
    /// Pass as `?cursor=` to get the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says there is more.
    pub fn from_rows<K: Serialize>(mut rows: Vec<T>, limit: Limit, key: impl Fn(&T) -> K) -> Self {
        let more = rows.len() > limit.get() as usize;
        rows.truncate(limit.get() as usize);
        let next_cursor = if more {
            rows.last().map(|last| encode_cursor(&key(last)))
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

/// Encodes a position as an opaque cursor.
pub fn encode_cursor<K: Serialize>(key: &K) -> String {
    let json = serde_json::to_vec(key).expect("cursor keys serialise");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a cursor given back by a client; a tampered one is a 400.
pub fn decode_cursor<K: DeserializeOwned>(cursor: &str) -> Result<K, Problem> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid cursor: pass back the `next_cursor` of a previous page unchanged",
            )
        })
}

/// Decodes the usual `(time, id)` cursor; a time PostgreSQL cannot store (a
/// tampered cursor) is refused here like any other tampering, not by the database.
pub fn decode_time_cursor(
    cursor: &str,
) -> Result<(chrono::DateTime<chrono::Utc>, uuid::Uuid), Problem> {
    decode_cursor::<(crate::domain::Timestamp, uuid::Uuid)>(cursor).map(|(at, id)| (at.get(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert!(serde_json::from_str::<Limit>("0").is_err());
        assert!(serde_json::from_str::<Limit>("1001").is_err());
        assert_eq!(serde_json::from_str::<Limit>("\"7\"").unwrap().get(), 7);
    }

    #[test]
    fn a_page_knows_if_more_follow() {
        let page = Page::from_rows(vec![1, 2, 3], Limit::parse(2).unwrap(), |n| *n);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(
            decode_cursor::<i32>(page.next_cursor.as_deref().unwrap()).unwrap(),
            2
        );
        let last = Page::from_rows(vec![1, 2], Limit::parse(2).unwrap(), |n| *n);
        assert!(last.next_cursor.is_none());
        assert!(decode_cursor::<i32>("!!").is_err());
    }

    #[test]
    fn a_time_cursor_outside_postgresqls_range_is_a_400() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-02T10:00:00.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            decode_time_cursor(&encode_cursor(&(at, id))).unwrap(),
            (at, id)
        );
        let far = encode_cursor(&("-5000-01-01T00:00:00Z", id));
        assert_eq!(decode_time_cursor(&far).unwrap_err().status, 400);
        let min = encode_cursor(&(chrono::DateTime::<chrono::Utc>::MIN_UTC, id));
        assert_eq!(decode_time_cursor(&min).unwrap_err().status, 400);
    }
}
