use bytes::Bytes;

use super::FromRecord;
use crate::record::Header;
use crate::{HandlerError, Record};

/// Where the record came from: topic, partition, offset and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, if the record has a timestamp.
    pub timestamp: Option<i64>,
}

impl FromRecord for Metadata {
    const __READS_HEADERS: bool = false;

    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(Metadata {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp(),
        })
    }
}

/// The record's key, `None` for a null key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(pub Option<Bytes>);

impl FromRecord for Key {
    const __READS_HEADERS: bool = false;

    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(Key(record.key().map(Bytes::copy_from_slice)))
    }
}

/// The record's raw value, `None` for a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload(pub Option<Bytes>);

impl FromRecord for Payload {
    const __READS_HEADERS: bool = false;

    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(Payload(record.payload().map(Bytes::copy_from_slice)))
    }
}

/// The record's headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    /// The value of the last header named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().rev().find(|h| h.name == name).and_then(|h| h.value.as_deref())
    }
}

impl FromRecord for Headers {
    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(Headers(record.headers().to_vec()))
    }
}

/// Shared application state given to the consumer with
/// [`ConsumerBuilder::state`](crate::ConsumerBuilder::state), or put on the
/// record by a middleware.
///
/// A handler asking for state the consumer was not given fails permanently
/// with a message naming the type.
///
/// ```
/// use kafka_handler::{extract::{FromRecord, State}, Record};
///
/// #[derive(Clone)]
/// struct Db(&'static str);
///
/// let mut record = Record::builder("t").state(Db("orders")).build();
/// let State(db) = State::<Db>::from_record(&mut record).unwrap();
/// assert_eq!(db.0, "orders");
/// ```
#[derive(Clone, Debug)]
pub struct State<S>(pub S);

impl<S: Clone + Send + Sync + 'static> FromRecord for State<S> {
    const __READS_HEADERS: bool = false;

    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        record.lookup::<S>().cloned().map(State).ok_or_else(|| {
            HandlerError::permanent(format!(
                "no state of type `{}`: give it to the consumer with `.state(..)`",
                std::any::type_name::<S>()
            ))
        })
    }
}

/// Which attempt at the record this is: 1 for the first, counted by the
/// [retry middleware](crate::middleware::retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt(pub u32);

impl FromRecord for Attempt {
    const __READS_HEADERS: bool = false;

    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(record.extensions().get::<Attempt>().copied().unwrap_or(Attempt(1)))
    }
}

/// The consumer group handling the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group(pub std::sync::Arc<str>);

impl FromRecord for Group {
    const __READS_HEADERS: bool = false;

    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        record.lookup::<Group>().cloned().ok_or_else(|| HandlerError::permanent("the record has no consumer group"))
    }
}
