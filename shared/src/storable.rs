//! What PostgreSQL cannot store, caught at the edge: U+0000 in `text` and `jsonb`.
//!
//! PostgreSQL refuses the character U+0000 in `text` values and anywhere in a
//! `jsonb` document (strings and member names). Left to the database it would
//! fail the statement with an error that reads like ours (a 500), and in a
//! group commit it would fail the neighbours' events too; so every string and
//! JSON value a client sends is checked here first, with a JSON Pointer to
//! each offending place.

use serde_json::Value;

use crate::{extract::escape_pointer, problem::FieldError};

/// Why a value cannot be stored, in words a client can act on.
pub const NUL_DETAIL: &str = "must not contain the character U+0000 (PostgreSQL cannot store it)";
/// The same, for a member name.
pub const NUL_KEY_DETAIL: &str =
    "this member name contains the character U+0000 (PostgreSQL cannot store it)";

/// Whether raw JSON text may hold a U+0000, i.e. contains the escape `\u0000`.
///
/// A literal U+0000 is not valid JSON (control characters must be escaped), so
/// the escape is the only way in. `\\u0000` is an escaped backslash followed by
/// the text `u0000`, not a NUL: an escape starts only after an even number of
/// backslashes. Cheap enough to run on every body; false means "certainly none".
pub fn raw_has_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            // A backslash always starts a two-character (or `\uXXXX`) escape: skip it whole.
            if bytes.get(i + 1) == Some(&b'u')
                && bytes.get(i + 2..i + 6).is_some_and(|hex| hex == b"0000")
            {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// Every place in `value` that holds a U+0000, as field errors under `pointer`.
pub fn find_nul(value: &Value, pointer: &str) -> Vec<FieldError> {
    let mut found = Vec::new();
    let mut at = pointer.to_owned();
    walk(value, &mut at, &mut found);
    found
}

fn walk(value: &Value, pointer: &mut String, found: &mut Vec<FieldError>) {
    let len = pointer.len();
    match value {
        Value::String(s) if s.contains('\0') => {
            found.push(FieldError::new(pointer.clone(), NUL_DETAIL));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointer.push('/');
                pointer.push_str(&i.to_string());
                walk(item, pointer, found);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                pointer.push('/');
                pointer.push_str(&escape_pointer(k));
                if k.contains('\0') {
                    found.push(FieldError::new(pointer.clone(), NUL_KEY_DETAIL));
                }
                walk(item, pointer, found);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_escape_counts_as_a_nul() {
        assert!(raw_has_nul(r#"{"a":"x\u0000y"}"#));
        assert!(raw_has_nul(r#"{"a\u0000":1}"#));
        // An escaped backslash, then the text `u0000`.
        assert!(!raw_has_nul(r#"{"a":"\\u0000"}"#));
        // An escaped backslash, then a real escape.
        assert!(raw_has_nul(r#"{"a":"\\\u0000"}"#));
        assert!(!raw_has_nul(r#"{"a":"\\\\u0000"}"#));
        assert!(!raw_has_nul(r#"{"a":"\u0001"}"#));
        assert!(!raw_has_nul(r#"{"a":"u0000"}"#));
        // A truncated escape at the very end is not a NUL (and not valid JSON either).
        assert!(!raw_has_nul(r#""\u000"#));
        assert!(!raw_has_nul("\\"));
    }

    #[test]
    fn the_raw_scan_agrees_with_the_parsed_value() {
        for text in [
            r#""\u0000""#,
            r#""\\u0000""#,
            r#""\\\u0000""#,
            r#"{"k":["\"\\u0000"]}"#,
            r#"{"k\u0000":null}"#,
            r#""\u0030\u0000""#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                raw_has_nul(text),
                !find_nul(&value, "").is_empty(),
                "{text}"
            );
        }
    }

    #[test]
    fn every_nul_is_pointed_at_including_member_names() {
        let value: Value =
            serde_json::from_str(r#"{"a":["ok","x\u0000"],"b/\u0000":{"c":"\u0000"}}"#).unwrap();
        let pointers: Vec<String> = find_nul(&value, "/data")
            .into_iter()
            .map(|e| e.pointer)
            .collect();
        assert_eq!(
            pointers,
            vec!["/data/a/1", "/data/b~1\u{0}", "/data/b~1\u{0}/c"]
        );
    }
}
