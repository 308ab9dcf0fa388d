//! The record a handler receives.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// One Kafka record, as handed to a handler.
///
/// Cloning is cheap: the record's data is shared, only the per-record
/// [`Extensions`](http::Extensions) are copied.
///
/// Records are usually taken apart by [extractors](crate::extract) rather than
/// used whole, but a handler may take the `Record` itself. Tests build one with
/// [`Record::builder`], so a handler can be called without a broker:
///
/// ```
/// use kafka_handler::Record;
///
/// let record = Record::builder("order.created")
///     .partition(2)
///     .offset(41)
///     .key("user-7")
///     .header("eventId", "5b1c…")
///     .payload(r#"{"orderId":1}"#)
///     .build();
/// assert_eq!(record.topic(), "order.created");
/// assert_eq!(record.key(), Some(&b"user-7"[..]));
/// assert_eq!(record.header("eventId"), Some(&b"5b1c\xe2\x80\xa6"[..]));
/// ```
#[derive(Clone)]
pub struct Record {
    inner: Arc<Inner>,
    shared: Arc<http::Extensions>,
    extensions: http::Extensions,
}

struct Inner {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    /// Key and payload in one allocation: `data[..key_len]` is the key.
    data: KeyAndPayload,
    headers: Vec<Header>,
    /// The trace context the runtime read from the headers when it took the
    /// record from librdkafka (without copying them, if nothing else reads
    /// them); `None` when it did not.
    #[cfg(feature = "trace-context")]
    parent: Option<opentelemetry::Context>,
}

/// A record's key and value copied out of librdkafka with one allocation.
#[derive(Clone, Default)]
pub(crate) struct KeyAndPayload {
    data: Box<[u8]>,
    key_len: Option<usize>,
    has_payload: bool,
}

impl KeyAndPayload {
    pub(crate) fn new(key: Option<&[u8]>, payload: Option<&[u8]>) -> Self {
        let key_len = key.map(<[u8]>::len);
        let mut data = Vec::with_capacity(key_len.unwrap_or(0) + payload.map_or(0, <[u8]>::len));
        data.extend_from_slice(key.unwrap_or_default());
        data.extend_from_slice(payload.unwrap_or_default());
        Self { data: data.into_boxed_slice(), key_len, has_payload: payload.is_some() }
    }

    fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|n| &self.data[..n])
    }

    fn payload(&self) -> Option<&[u8]> {
        self.has_payload.then(|| &self.data[self.key_len.unwrap_or(0)..])
    }
}

/// A record header: a name and an optional value (Kafka allows null values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The header's name.
    pub name: String,
    /// The header's value, `None` for a null header.
    pub value: Option<Bytes>,
}

impl Record {
    /// Starts building a record for `topic`, for tests and tools.
    pub fn builder(topic: impl Into<Arc<str>>) -> RecordBuilder {
        RecordBuilder {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            payload: None,
            headers: Vec::new(),
            shared: Arc::default(),
        }
    }

    /// The topic the record was read from.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The partition the record was read from.
    pub fn partition(&self) -> i32 {
        self.inner.partition
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.inner.offset
    }

    /// The record's timestamp in milliseconds since the Unix epoch, if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.inner.timestamp
    }

    /// The record's key, `None` for a null key.
    pub fn key(&self) -> Option<&[u8]> {
        self.inner.data.key()
    }

    /// The record's value, `None` for a null value (a tombstone).
    pub fn payload(&self) -> Option<&[u8]> {
        self.inner.data.payload()
    }

    /// All headers, in the order they were written.
    pub fn headers(&self) -> &[Header] {
        &self.inner.headers
    }

    /// The value of the last header named `name`, if present and not null.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.inner.headers.iter().rev().find(|h| h.name == name).and_then(|h| h.value.as_deref())
    }

    /// Per-record extensions: middleware stores values here for handlers to
    /// extract (for example a database transaction).
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Mutable access to the per-record extensions.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }

    /// Looks a value up in the per-record extensions, then in the state the
    /// consumer was built with.
    pub(crate) fn lookup<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get::<T>().or_else(|| self.shared.get::<T>())
    }

    pub(crate) fn from_parts(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        data: KeyAndPayload,
        headers: Vec<Header>,
        shared: Arc<http::Extensions>,
    ) -> Self {
        let inner = Inner {
            topic,
            partition,
            offset,
            timestamp,
            data,
            headers,
            #[cfg(feature = "trace-context")]
            parent: None,
        };
        Record { inner: Arc::new(inner), shared, extensions: http::Extensions::new() }
    }

    /// Sets the trace context read from the record's headers; only on a
    /// record not cloned yet.
    #[cfg(feature = "trace-context")]
    pub(crate) fn set_trace_parent(&mut self, cx: opentelemetry::Context) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.parent = Some(cx);
        }
    }

    /// The trace context the runtime read from the headers, if it did.
    #[cfg(feature = "trace-context")]
    pub(crate) fn trace_parent(&self) -> Option<&opentelemetry::Context> {
        self.inner.parent.as_ref()
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.inner.topic)
            .field("partition", &self.inner.partition)
            .field("offset", &self.inner.offset)
            .field("timestamp", &self.inner.timestamp)
            .field("key", &self.key().map(String::from_utf8_lossy))
            .field("payload_len", &self.payload().map(<[u8]>::len))
            .field("headers", &self.inner.headers)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Record`] by hand, for tests and tools.
#[derive(Debug)]
pub struct RecordBuilder {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Bytes>,
    payload: Option<Bytes>,
    headers: Vec<Header>,
    shared: Arc<http::Extensions>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl RecordBuilder {
    /// Sets the partition (default 0).
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// Sets the offset (default 0).
    pub fn offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }

    /// Sets the timestamp in milliseconds since the Unix epoch.
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header { name: name.into(), value: Some(value.into()) });
        self
    }

    /// Makes `value` available to the [`State`](crate::extract::State) extractor,
    /// as [`ConsumerBuilder::state`](crate::ConsumerBuilder::state) does.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.shared).insert(value);
        self
    }

    /// Finishes the record.
    pub fn build(self) -> Record {
        let data = KeyAndPayload::new(self.key.as_deref(), self.payload.as_deref());
        Record::from_parts(self.topic, self.partition, self.offset, self.timestamp, data, self.headers, self.shared)
    }
}
