//! `Patch<T>`: a PATCH field that tells "absent" (keep) from `null` (clear) from a value (set).

use serde::{Deserialize, Deserializer};

/// One field of a PATCH body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Patch<T> {
    /// Not in the body: leave it as it is.
    #[default]
    Absent,
    /// `null`: clear it.
    Null,
    /// A new value.
    Value(T),
}

impl<T> Patch<T> {
    /// Whether the body mentioned this field.
    pub fn is_present(&self) -> bool {
        !matches!(self, Self::Absent)
    }

    /// Converts the value, keeping absent and null as they are.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Patch<U> {
        match self {
            Self::Absent => Patch::Absent,
            Self::Null => Patch::Null,
            Self::Value(v) => Patch::Value(f(v)),
        }
    }

    /// The new state given the current one: absent keeps it, null clears it.
    pub fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Self::Absent => current,
            Self::Null => None,
            Self::Value(v) => Some(v),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only called when the field is present (pair it with `#[serde(default)]`).
        Ok(match Option::<T>::deserialize(deserializer)? {
            Some(v) => Self::Value(v),
            None => Self::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        a: Patch<u32>,
    }

    #[test]
    fn absent_null_and_value_are_told_apart() {
        let absent: Body = serde_json::from_str("{}").unwrap();
        let null: Body = serde_json::from_str(r#"{"a":null}"#).unwrap();
        let value: Body = serde_json::from_str(r#"{"a":3}"#).unwrap();
        assert_eq!(absent.a.apply(Some(1)), Some(1));
        assert_eq!(null.a.apply(Some(1)), None);
        assert_eq!(value.a.apply(Some(1)), Some(3));
    }
}
