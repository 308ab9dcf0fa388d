use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

#[cfg(feature = "json")]
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::extract::FromRecord;
use crate::{HandlerError, Record};

/// The longest event id accepted, in bytes.
const MAX_LEN: usize = 255;

/// Where a record's event id is: a top-level field of its JSON payload, or a
/// header.
///
/// ```
/// use kafka_handler::dedup::EventIdSource;
/// use kafka_handler::Record;
///
/// let record = Record::builder("order.created").payload(r#"{"eventId":"e-1","quantity":2}"#).build();
/// assert_eq!(&*EventIdSource::default().event_id(&record).unwrap(), "e-1");
///
/// let record = Record::builder("order.created").header("event-id", "e-2").build();
/// assert_eq!(&*EventIdSource::header("event-id").event_id(&record).unwrap(), "e-2");
///
/// let missing = Record::builder("order.created").payload(r#"{"quantity":2}"#).build();
/// assert!(EventIdSource::default().event_id(&missing).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventIdSource {
    /// A top-level field of the JSON payload, a string or an integer.
    Field(Arc<str>),
    /// A header, UTF-8.
    Header(Arc<str>),
}

impl Default for EventIdSource {
    /// The payload field `eventId`.
    fn default() -> Self {
        Self::field("eventId")
    }
}

impl EventIdSource {
    /// A top-level field of the JSON payload.
    pub fn field(name: &str) -> Self {
        Self::Field(Arc::from(name))
    }

    /// A header.
    pub fn header(name: &str) -> Self {
        Self::Header(Arc::from(name))
    }

    /// The record's event id, checked: present, not empty, at most 255 bytes,
    /// no control characters.
    pub fn event_id(&self, record: &Record) -> Result<Arc<str>, EventIdError> {
        let id = match self {
            Self::Header(name) => {
                let value = record.header(name).ok_or_else(|| EventIdError::missing(self))?;
                Cow::Borrowed(std::str::from_utf8(value).map_err(|_| EventIdError::malformed(self, "not UTF-8"))?)
            }
            #[cfg(feature = "json")]
            Self::Field(name) => {
                let payload = record.payload().ok_or_else(|| EventIdError::tombstone(self))?;
                let mut de = serde_json::Deserializer::from_slice(payload);
                let found = FindField(name).deserialize(&mut de).and_then(|found| de.end().map(|()| found));
                found.map_err(|e| EventIdError::unreadable(self, &e))?.ok_or_else(|| EventIdError::missing(self))?
            }
            #[cfg(not(feature = "json"))]
            Self::Field(_) => {
                return Err(EventIdError::malformed(self, "reading a payload field needs the `json` feature"));
            }
        };
        if id.is_empty() {
            return Err(EventIdError::malformed(self, "empty"));
        }
        if id.len() > MAX_LEN {
            return Err(EventIdError::malformed(self, "longer than 255 bytes"));
        }
        if id.chars().any(char::is_control) {
            return Err(EventIdError::malformed(self, "contains control characters"));
        }
        Ok(Arc::from(id))
    }
}

impl fmt::Display for EventIdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(name) => write!(f, "payload field `{name}`"),
            Self::Header(name) => write!(f, "header `{name}`"),
        }
    }
}

/// A record's event id is missing or malformed. With dedup on, such a record
/// is a permanent failure: it is never handled without the check.
///
/// ```
/// use kafka_handler::dedup::{EventIdErrorKind, EventIdSource};
/// use kafka_handler::Record;
///
/// let kind = |record: Record| EventIdSource::default().event_id(&record).unwrap_err().kind();
/// assert_eq!(kind(Record::builder("t").payload(r#"{"id":1}"#).build()), EventIdErrorKind::Missing);
/// assert_eq!(kind(Record::builder("t").payload(r#"{"eventId":""}"#).build()), EventIdErrorKind::Malformed);
/// assert_eq!(kind(Record::builder("t").payload("{not json").build()), EventIdErrorKind::NotJson);
/// assert_eq!(kind(Record::builder("t").build()), EventIdErrorKind::Tombstone);
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[error("event id ({source_name}) {problem}")]
pub struct EventIdError {
    kind: EventIdErrorKind,
    source_name: String,
    problem: String,
}

/// What is wrong with a record's event id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventIdErrorKind {
    /// The payload is valid, but there is no id where the source says: no
    /// such field (or it is `null`), no such header.
    Missing,
    /// There is one, but it is not a usable id: not a string or an integer,
    /// empty, longer than 255 bytes, with control characters, not UTF-8; or
    /// the payload is JSON but not an object.
    Malformed,
    /// The id is a payload field and the payload is not JSON at all: it does
    /// not decode. Its dead letter's kind is `decode`.
    NotJson,
    /// The id is a payload field and the record has no payload (a
    /// tombstone). Its dead letter's kind is `tombstone`.
    Tombstone,
}

impl EventIdError {
    /// What is wrong.
    pub fn kind(&self) -> EventIdErrorKind {
        self.kind
    }

    fn missing(source: &EventIdSource) -> Self {
        Self { kind: EventIdErrorKind::Missing, source_name: source.to_string(), problem: "missing".into() }
    }

    fn malformed(source: &EventIdSource, why: &str) -> Self {
        Self {
            kind: EventIdErrorKind::Malformed,
            source_name: source.to_string(),
            problem: format!("malformed: {why}"),
        }
    }

    #[cfg(feature = "json")]
    fn tombstone(source: &EventIdSource) -> Self {
        Self {
            kind: EventIdErrorKind::Tombstone,
            source_name: source.to_string(),
            problem: "missing: the record has no payload (a tombstone)".into(),
        }
    }

    /// The payload did not give up the field: not JSON (a syntax error or
    /// cut short), or JSON of the wrong shape.
    #[cfg(feature = "json")]
    fn unreadable(source: &EventIdSource, e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof => Self {
                kind: EventIdErrorKind::NotJson,
                source_name: source.to_string(),
                problem: format!("unreadable: the payload is not JSON: {e}"),
            },
            Category::Data | Category::Io => Self::malformed(source, &e.to_string()),
        }
    }
}

/// The event id of the record being handled, an extractor. With dedup on
/// it is the id dedup checked; otherwise it is read from the payload field
/// `eventId`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventId(pub Arc<str>);

impl FromRecord for EventId {
    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        if let Some(id) = record.extensions().get::<EventId>() {
            return Ok(id.clone());
        }
        EventIdSource::default().event_id(record).map(EventId).map_err(HandlerError::permanent)
    }
}

/// Reads one top-level field of a JSON object, skipping the rest unparsed.
#[cfg(feature = "json")]
struct FindField<'n>(&'n str);

#[cfg(feature = "json")]
impl<'de> DeserializeSeed<'de> for FindField<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

#[cfg(feature = "json")]
impl<'de> Visitor<'de> for FindField<'_> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && key == self.0 {
                found = map.next_value::<IdValue<'de>>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A string or an integer; `null` counts as missing.
#[cfg(feature = "json")]
struct IdValue<'de>(Option<Cow<'de, str>>);

#[cfg(feature = "json")]
impl<'de> de::Deserialize<'de> for IdValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IdValue(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(IdValue(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::*;

    fn id(payload: &str) -> Result<Arc<str>, EventIdError> {
        EventIdSource::default().event_id(&Record::builder("t").payload(payload.to_owned()).build())
    }

    #[test]
    fn reads_strings_and_integers_and_skips_the_rest() {
        assert_eq!(&*id(r#"{"a":{"eventId":"nested"},"eventId":"top","b":[1,2]}"#).unwrap(), "top");
        assert_eq!(&*id(r#"{"eventId":42}"#).unwrap(), "42");
        assert_eq!(&*id(r#"{"eventId":"esc\"aped"}"#).unwrap(), "esc\"aped");
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(id(r#"{"x":1}"#).unwrap_err().to_string(), "event id (payload field `eventId`) missing");
        assert_eq!(id(r#"{"eventId":null}"#).unwrap_err().to_string(), "event id (payload field `eventId`) missing");
        assert!(id(r#"{"eventId":""}"#).unwrap_err().to_string().contains("empty"));
        assert!(id(r#"{"eventId":1.5}"#).unwrap_err().to_string().contains("malformed"));
        assert!(id("[1]").unwrap_err().to_string().contains("malformed"));
        assert!(id("{not json").unwrap_err().to_string().contains("not JSON"));
        let long = format!(r#"{{"eventId":"{}"}}"#, "x".repeat(300));
        assert!(id(&long).unwrap_err().to_string().contains("255"));
        let r = Record::builder("t").header("id", vec![0xff, 0xfe]).build();
        assert!(EventIdSource::header("id").event_id(&r).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn tells_a_payload_that_is_not_json_and_a_tombstone_from_a_bad_id() {
        let kind = |payload: &str| id(payload).unwrap_err().kind();
        for bad_json in ["{not json", "", "{\"eventId\":\"e-1\"", "{\"eventId\":\"e-1\"} trailing", "\u{0}"] {
            assert_eq!(kind(bad_json), EventIdErrorKind::NotJson, "{bad_json:?}");
        }
        for bad_id in ["[1]", "\"e-1\"", r#"{"eventId":1.5}"#, r#"{"eventId":""}"#, r#"{"eventId":{"a":1}}"#] {
            assert_eq!(kind(bad_id), EventIdErrorKind::Malformed, "{bad_id:?}");
        }
        for no_id in [r#"{"x":1}"#, r#"{"eventId":null}"#] {
            assert_eq!(kind(no_id), EventIdErrorKind::Missing, "{no_id:?}");
        }
        let tombstone = EventIdSource::default().event_id(&Record::builder("t").build()).unwrap_err();
        assert_eq!(tombstone.kind(), EventIdErrorKind::Tombstone);
        assert!(tombstone.to_string().contains("tombstone"), "{tombstone}");
        // A header id does not need a payload.
        let r = Record::builder("t").header("id", "e-1").build();
        assert_eq!(&*EventIdSource::header("id").event_id(&r).unwrap(), "e-1");
        let missing = EventIdSource::header("id").event_id(&Record::builder("t").build()).unwrap_err();
        assert_eq!(missing.kind(), EventIdErrorKind::Missing);
    }
}
