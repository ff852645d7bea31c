//! Reading one registration field for a 0.2.0 policy's `job-meta.field`: a single streaming
//! pass over the job's JSON object that neither allocates its keys nor builds any value: the
//! answer is the value's own text, copied once.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The field `name` of the JSON object `meta` as JSON text; `None` when absent (or when `meta`
/// is empty or not an object, which the engine never hands over). The text is the value's own
/// slice of `meta`, which the decoder wrote compactly with serde_json, so it reads exactly as
/// that value serialised on its own would. A repeated key gives its
/// last value, as serde_json's own parse into a map does.
pub(crate) fn field(meta: &str, name: &str) -> Option<String> {
    if meta.is_empty() {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(meta);
    let found = de.deserialize_map(Seek(name)).ok()?;
    found.map(|v| v.get().to_owned())
}

/// Walks an object, keeping the value of key `.0`.
struct Seek<'n>(&'n str);

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<&'de RawValue>, A::Error> {
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(self.0))? {
            if matches {
                found = Some(map.next_value::<&RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Deserializes a key into "is it `.0`?", borrowing it where it has no escapes.
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::field;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    #[test]
    fn a_field_is_its_json_text_and_absent_is_none() {
        let meta =
            r#"{"priority":5,"tenant":"acme","tags":["a","b"],"nested":{"x":null},"z":null}"#;
        assert_eq!(field(meta, "priority").as_deref(), Some("5"));
        assert_eq!(field(meta, "tenant").as_deref(), Some(r#""acme""#));
        assert_eq!(field(meta, "tags").as_deref(), Some(r#"["a","b"]"#));
        assert_eq!(field(meta, "nested").as_deref(), Some(r#"{"x":null}"#));
        assert_eq!(field(meta, "z").as_deref(), Some("null"));
        assert_eq!(field(meta, "x"), None);
        assert_eq!(field("{}", "x"), None);
        assert_eq!(field("", "x"), None);
        assert_eq!(field("[1]", "x"), None);
        assert_eq!(field(r#"{"t\u00e9":1}"#, "té").as_deref(), Some("1"));
    }

    proptest! {
        /// The same answer as parsing the whole object with serde_json and looking the key up.
        #[test]
        fn agrees_with_a_full_parse(
            fields in prop::collection::vec(("[a-c]{1,2}", prop_oneof![
                any::<i64>().prop_map(Value::from),
                "[a-z\"\\\\é]{0,5}".prop_map(Value::from),
                Just(Value::Null),
                Just(json!({"k": [1, 2]})),
            ]), 0..6),
            name in "[a-c]{1,2}",
        ) {
            let object: Map<String, Value> = fields.into_iter().collect();
            let meta = Value::Object(object.clone()).to_string();
            prop_assert_eq!(field(&meta, &name), object.get(&name).map(Value::to_string));
        }
    }
}
