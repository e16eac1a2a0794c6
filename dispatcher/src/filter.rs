//! The subscription filter: JSON containment with exactly PostgreSQL's `jsonb @>` semantics.

/// JSON containment as PostgreSQL's `@>`: objects contain their subsets, arrays their elements.
pub fn contains(value: &serde_json::Value, filter: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (value, filter) {
        (Value::Object(v), Value::Object(f)) => f
            .iter()
            .all(|(k, fv)| v.get(k).is_some_and(|vv| contains(vv, fv))),
        (Value::Array(v), Value::Array(f)) => {
            f.iter().all(|fv| v.iter().any(|vv| contains(vv, fv)))
        }
        // A scalar array contains a scalar (a PostgreSQL special case).
        (Value::Array(v), scalar) if !scalar.is_object() && !scalar.is_array() => {
            v.iter().any(|vv| vv == scalar)
        }
        (v, f) => v == f,
    }
}

#[cfg(test)]
mod tests {
    use super::contains;
    use serde_json::json;

    #[test]
    fn containment_follows_postgresql() {
        let data = json!({"car": {"make": "VW", "price": 20000}, "tags": ["new", "blue"], "country": "DE"});
        assert!(contains(&data, &json!({})));
        assert!(contains(&data, &json!({"country": "DE"})));
        assert!(contains(&data, &json!({"car": {"make": "VW"}})));
        assert!(contains(&data, &json!({"tags": ["blue"]})));
        assert!(!contains(&data, &json!({"country": "FR"})));
        assert!(!contains(
            &data,
            &json!({"car": {"make": "VW", "price": 1}})
        ));
        assert!(!contains(&data, &json!({"missing": null})));
        assert!(!contains(&data, &json!({"tags": ["red"]})));
        assert!(contains(&json!(["a", "b"]), &json!("a")));
    }
}
