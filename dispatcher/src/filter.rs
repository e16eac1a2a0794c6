//! The subscription filter: JSON containment with exactly PostgreSQL's `jsonb @>` semantics.
//!
//! The live path and a replay from the log (which PostgreSQL filters with `@>`)
//! must agree on every event, or one of them delivers what the other skips.
//! So this follows `JsonbDeepContains` (PostgreSQL's `jsonb_util.c`):
//! - numbers compare by exact decimal value (`1`, `1.0` and `10e-1` are equal;
//!   `0.1` and `0.10000000000000000001` are not), never through `f64`;
//! - objects contain objects whose every key they have with a contained value
//!   of the same kind (a scalar never contains an array, nor the reverse);
//! - arrays contain arrays whose every scalar element they have, and whose every
//!   container element is contained in one of their containers of the same kind;
//! - only at the top level, an array also contains a scalar it has as an element.
//!
//! Documents are read through `serde_json`'s raw values so that each number
//! keeps its literal text until it is compared.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// A parsed JSON document, numbers kept as exact decimals.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Doc {
    Null,
    Bool(bool),
    Number(Decimal),
    String(String),
    Array(Vec<Doc>),
    Object(BTreeMap<String, Doc>),
}

/// An exact decimal in a canonical form: `0.digits × 10^exponent`, negative or not,
/// with no leading or trailing zero digit; zero has no digits and is never negative.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    /// Reads a JSON number literal (`-12.50e3`); `None` if it is not one.
    fn parse(text: &str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let Some(first) = all.iter().position(|d| *d != 0) else {
            return Some(Self::zero());
        };
        let last = all.iter().rposition(|d| *d != 0).unwrap_or(first);
        // The point sits after `int.len()` digits; each leading zero moves the first digit right.
        let exponent = (int.len() as i64 - first as i64).saturating_add(exp);
        Some(Self {
            negative,
            digits: all[first..=last].to_vec(),
            exponent,
        })
    }

    fn zero() -> Self {
        Self {
            negative: false,
            digits: Vec::new(),
            exponent: 0,
        }
    }
}

impl Doc {
    /// Parses a JSON text; duplicate keys keep their last value, as in `jsonb`.
    fn parse(json: &str) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(json)?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: &RawValue) -> Result<Self, serde_json::Error> {
        let text = raw.get();
        Ok(match text.as_bytes().first() {
            Some(b'{') => {
                let map: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
                Self::Object(
                    map.into_iter()
                        .map(|(k, v)| Ok((k, Self::from_raw(v)?)))
                        .collect::<Result<_, serde_json::Error>>()?,
                )
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(text)?;
                Self::Array(
                    items
                        .into_iter()
                        .map(Self::from_raw)
                        .collect::<Result<_, _>>()?,
                )
            }
            Some(b'"') => Self::String(serde_json::from_str(text)?),
            Some(b't' | b'f') => Self::Bool(serde_json::from_str(text)?),
            Some(b'n') => Self::Null,
            _ => Self::Number(Decimal::parse(text).ok_or_else(|| {
                <serde_json::Error as serde::de::Error>::custom("not a JSON number")
            })?),
        })
    }

    fn is_container(&self) -> bool {
        matches!(self, Self::Array(_) | Self::Object(_))
    }

    /// `self @> contained` below the top level: the kinds must match exactly.
    fn deep_contains(&self, contained: &Self) -> bool {
        match (self, contained) {
            (Self::Object(have), Self::Object(want)) => want.iter().all(|(key, w)| {
                have.get(key)
                    .is_some_and(|h| match (h.is_container(), w.is_container()) {
                        (true, true) => h.deep_contains(w),
                        (false, false) => h == w,
                        _ => false,
                    })
            }),
            (Self::Array(have), Self::Array(want)) => want.iter().all(|w| {
                if w.is_container() {
                    have.iter().any(|h| h.is_container() && h.deep_contains(w))
                } else {
                    have.iter().any(|h| h == w)
                }
            }),
            // Two containers of different kinds, or scalars (compared by the caller).
            (a, b) => !a.is_container() && !b.is_container() && a == b,
        }
    }

    /// `self @> contained` at the top level, where a scalar stands for a one-element array.
    fn contains(&self, contained: &Self) -> bool {
        match (self, contained) {
            (Self::Array(have), scalar) if !scalar.is_container() => {
                have.iter().any(|h| h == scalar)
            }
            // A scalar document contains only an equal scalar, never an array.
            (scalar, _) if !scalar.is_container() => {
                !contained.is_container() && scalar == contained
            }
            (have, want) => have.deep_contains(want),
        }
    }
}

/// A subscription's filter, ready to test events against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter(Doc);

impl Filter {
    /// Reads a filter from its JSON text (exact: numbers keep every digit).
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        Doc::parse(json).map(Self)
    }

    /// Whether the event data (JSON text) contains the filter, as `data @> filter` would say.
    /// Data that is not JSON contains nothing (PostgreSQL would never have stored it).
    pub fn matches(&self, data: &str) -> bool {
        Doc::parse(data).is_ok_and(|doc| doc.contains(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::{Decimal, Filter};

    fn holds(data: &str, filter: &str) -> bool {
        Filter::parse(filter).unwrap().matches(data)
    }

    #[test]
    fn objects_contain_their_subsets() {
        let data =
            r#"{"car": {"make": "VW", "price": 20000}, "tags": ["new", "blue"], "country": "DE"}"#;
        assert!(holds(data, "{}"));
        assert!(holds(data, r#"{"country": "DE"}"#));
        assert!(holds(data, r#"{"car": {"make": "VW"}}"#));
        assert!(holds(data, r#"{"tags": ["blue"]}"#));
        assert!(!holds(data, r#"{"country": "FR"}"#));
        assert!(!holds(data, r#"{"car": {"make": "VW", "price": 1}}"#));
        assert!(!holds(data, r#"{"missing": null}"#));
        assert!(!holds(data, r#"{"tags": ["red"]}"#));
    }

    #[test]
    fn numbers_compare_by_exact_value_not_by_text_or_float() {
        assert!(holds(r#"{"n": 1.0}"#, r#"{"n": 1}"#));
        assert!(holds(r#"{"n": 1}"#, r#"{"n": 10e-1}"#));
        assert!(holds(r#"{"n": -0}"#, r#"{"n": 0.000}"#));
        assert!(holds(r#"{"n": 2.50}"#, r#"{"n": 25E-1}"#));
        assert!(!holds(r#"{"n": 0.1}"#, r#"{"n": 0.10000000000000000001}"#));
        assert!(!holds(
            r#"{"n": 9007199254740993}"#,
            r#"{"n": 9007199254740992}"#
        ));
        assert!(!holds(r#"{"n": -1}"#, r#"{"n": 1}"#));
        assert!(!holds(r#"{"n": "1"}"#, r#"{"n": 1}"#));
    }

    #[test]
    fn decimals_are_canonical() {
        let d = |s| Decimal::parse(s).unwrap();
        assert_eq!(d("100"), d("1e2"));
        assert_eq!(d("0.00120"), d("1.2e-3"));
        assert_eq!(d("-0.0"), d("0"));
        assert_ne!(d("12"), d("1.2"));
        assert!(Decimal::parse("1.2.3").is_none());
    }

    #[test]
    fn a_scalar_is_in_an_array_only_at_the_top_level() {
        assert!(holds(r#"["a", "b"]"#, r#""a""#));
        assert!(!holds(r#""a""#, r#"["a"]"#));
        assert!(!holds(r#"{"tags": ["a"]}"#, r#"{"tags": "a"}"#));
        assert!(!holds(r#"[["a"]]"#, r#"["a"]"#));
        assert!(holds(r#"[["a", "b"], 1]"#, r#"[["b"]]"#));
        assert!(!holds(r#"[{"a": 1}]"#, r#"{"a": 1}"#));
        assert!(!holds(r#"{"a": {}}"#, r#"{"a": []}"#));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_as_in_jsonb() {
        assert!(holds(r#"{"a": 1, "a": 2}"#, r#"{"a": 2}"#));
        assert!(!holds(r#"{"a": 1, "a": 2}"#, r#"{"a": 1}"#));
    }

    #[test]
    fn strings_compare_after_unescaping() {
        assert!(holds(r#"{"s": "\u00e9"}"#, r#"{"s": "é"}"#));
        assert!(!holds(r#"{"s": "e"}"#, r#"{"s": "é"}"#));
    }
}
