//! Request extractors whose every rejection is a problem document naming what is wrong.
//!
//! axum's own `Json`, `Path` and `Query` answer bad input with plain text; these
//! wrappers answer with RFC 9457 documents, and point at the offending field.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::{header, request::Parts},
};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::{
    edge::BodyError,
    problem::{FieldError, Problem},
    storable::{find_nul, raw_has_nul},
};

/// A JSON body. Not JSON: 400; JSON of the wrong shape: 422 with a pointer; too large: 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json_object(&bytes).map(Json)
    }
}

/// An optional JSON body: no body at all is `None`; any body must be valid.
impl<S, T> axum::extract::OptionalFromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let json_type = require_json_content_type(req.headers());
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        json_type?;
        parse_json_object(&bytes).map(|v| Some(Json(v)))
    }
}

/// Like [`parse_json`], for request bodies, which are always JSON objects: serde
/// would otherwise read a struct from an array (`[]` as an empty PATCH).
pub fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(Problem::validation(
            "the body must be a JSON object",
            vec![FieldError::new("", "expected a JSON object")],
        ));
    }
    refuse_nul(bytes)?;
    parse_json(bytes)
}

/// 422 with a pointer to each string or member name holding U+0000, which PostgreSQL cannot store.
///
/// Checked on every JSON body, whatever its type: the fields of every route are covered at once.
pub fn refuse_nul(bytes: &[u8]) -> Result<(), Problem> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(()); // not JSON at all: parsing says so
    };
    if !raw_has_nul(text) {
        return Ok(());
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Ok(());
    };
    let errors = find_nul(&value, "");
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(Problem::validation(
            format!(
                "{}: {}",
                if first.pointer.is_empty() {
                    "body"
                } else {
                    &first.pointer
                },
                first.detail
            ),
            errors,
        )),
    }
}

/// Refuses a body that does not say it is JSON (415), so a form post is not misread.
pub fn require_json_content_type(headers: &axum::http::HeaderMap) -> Result<(), Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(Problem::unsupported_media_type(
            "the body must be JSON: send `Content-Type: application/json`",
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(Problem::unsupported_media_type(format!(
            "the body must be JSON, not `{essence}`: send `Content-Type: application/json`"
        )))
    }
}

/// Maps a body that could not be read: over the size limit is 413; too slow 408;
/// over the server's body budget 503 (see [`crate::edge`]).
pub fn body_rejection(rejection: BytesRejection) -> Problem {
    if let Some(error) = BodyError::find(&rejection) {
        return error.problem();
    }
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        Problem::payload_too_large(format!(
            "the body is larger than allowed ({})",
            rejection.body_text()
        ))
    } else {
        Problem::bad_request(format!(
            "the body could not be read: {}",
            rejection.body_text()
        ))
    }
}

/// Deserialises JSON, telling syntax errors (400) from shape errors (422 with a pointer).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let inner = err.inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let pointer = pointer_of(err.path(), &inner.to_string());
                let detail = strip_position(&inner.to_string());
                Problem::validation(
                    format!(
                        "{}: {detail}",
                        if pointer.is_empty() { "body" } else { &pointer }
                    ),
                    vec![FieldError::new(pointer, detail)],
                )
            }
            serde_json::error::Category::Eof if bytes.iter().all(u8::is_ascii_whitespace) => {
                Problem::bad_request("the body is empty; a JSON object is expected")
            }
            _ => Problem::bad_request(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// `serde_json` appends "at line 1 column 9"; a pointer says it better.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Converts a serde path to a JSON Pointer; a missing or unknown field is pointed at by name.
fn pointer_of(path: &serde_path_to_error::Path, message: &str) -> String {
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                pointer.push('/');
                pointer.push_str(&index.to_string());
            }
            serde_path_to_error::Segment::Map { key } => {
                pointer.push('/');
                pointer.push_str(&escape_pointer(key));
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            let field = &rest[..end];
            if !pointer.ends_with(&format!("/{}", escape_pointer(field))) {
                pointer.push('/');
                pointer.push_str(&escape_pointer(field));
            }
        }
    }
    pointer
}

/// Escapes one JSON Pointer reference token (RFC 6901 section 3).
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Path parameters; a malformed id is a 400 that names the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|rejection| {
                use axum::extract::rejection::PathRejection;
                match rejection {
                    PathRejection::FailedToDeserializePathParams(e) => {
                        Problem::bad_request(format!("invalid path: {}", e.body_text()))
                    }
                    other => Problem::bad_request(other.body_text()),
                }
            })
    }
}

/// Query parameters; a malformed one is a 400 that names it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        // PostgreSQL cannot compare with (or store) U+0000: refuse it in any parameter, by name.
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if name.contains('\0') || value.contains('\0') {
                return Err(Problem::bad_request(format!(
                    "invalid query parameter `{}`: contains the character U+0000",
                    name.replace('\0', "\\u0000")
                )));
            }
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|err| {
                let field = err.path().to_string();
                let inner = err.into_inner();
                if field.is_empty() || field == "." {
                    Problem::bad_request(format!("invalid query string: {inner}"))
                } else {
                    Problem::bad_request(format!("invalid query parameter `{field}`: {inner}"))
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        price: u32,
    }

    #[test]
    fn a_wrong_type_points_at_the_field() {
        let p =
            parse_json::<Body>(br#"{"name":"a","items":[{"price":1},{"price":"x"}]}"#).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].pointer, "/items/1/price");
    }

    #[test]
    fn a_missing_field_points_at_its_name() {
        let p = parse_json::<Body>(br#"{"items":[]}"#).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].pointer, "/name");
        assert!(p.detail.contains("missing field `name`"), "{}", p.detail);
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let p = parse_json::<Body>(br#"{"name":"a","items":[],"nmae":1}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "/nmae");
    }

    #[test]
    fn broken_json_is_a_400() {
        assert_eq!(parse_json::<Body>(br#"{"name":"#).unwrap_err().status, 400);
        assert_eq!(parse_json::<Body>(b"").unwrap_err().status, 400);
        assert_eq!(
            parse_json::<Body>(br#"{"name":"a","items":[]} trailing"#)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn a_nul_anywhere_in_a_body_is_pointed_at() {
        let p =
            parse_json_object::<serde_json::Value>(br#"{"a":{"b\u0000":["\u0000"]}}"#).unwrap_err();
        assert_eq!(p.status, 422);
        let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, vec!["/a/b\u{0}", "/a/b\u{0}/0"]);
        assert!(parse_json_object::<serde_json::Value>(br#"{"a":"\\u0000"}"#).is_ok());
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(escape_pointer("a/b~c"), "a~1b~0c");
    }
}
