//! Taking records from librdkafka in batches.
//!
//! rust-rdkafka's `poll` takes one event per call: a queue lock, three clock
//! reads in librdkafka and one in rust-rdkafka, and a reference-counted
//! allocation, for every record. With a handler that does little, that is
//! about a fifth of the polling thread's time. So the runtime forwards each
//! partition's fetch queue, before the partition is assigned, to a queue of
//! its own, and takes records from it in batches
//! (`rd_kafka_consume_batch_queue`: one clock read per batch). Rebalances,
//! errors, statistics and commit results stay on the consumer's main queue,
//! which the polling thread still serves through rust-rdkafka's `poll`
//! between batches; that queue cannot be consumed in batches, as librdkafka
//! would then serve a rebalance itself instead of handing it to the
//! application.
//!
//! Neither queue is waited on inside librdkafka, where a wait on one would
//! miss what arrives on the other: when both are empty the polling thread
//! parks, and librdkafka unparks it when either queue turns non-empty.
//!
//! This is the crate's only `unsafe` code: librdkafka's batch and queue
//! functions, which rust-rdkafka does not wrap.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

/// Unparks the polling thread once it has said which thread it is.
#[derive(Debug, Default)]
pub(crate) struct Wake(OnceLock<Thread>);

impl Wake {
    /// Marks the calling thread as the one to wake.
    pub(crate) fn register(&self) {
        let _ = self.0.set(std::thread::current());
    }

    pub(crate) fn wake(&self) {
        if let Some(thread) = self.0.get() {
            thread.unpark();
        }
    }
}

/// The queue the records of every assigned partition are forwarded to. It
/// holds its consumer, so that it is always released first.
pub(crate) struct FetchQueue<C: ConsumerContext + 'static> {
    consumer: Arc<BaseConsumer<C>>,
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// The consumer's main queue, which rust-rdkafka's `poll` serves.
    main: NonNull<rdsys::rd_kafka_queue_t>,
    /// Kept alive while librdkafka may call [`wake_up`] with it.
    _wake: Arc<Wake>,
}

// SAFETY: librdkafka's queue handles may be used from any thread, and the
// consumer is `Send` and `Sync`.
unsafe impl<C: ConsumerContext> Send for FetchQueue<C> {}
// SAFETY: as above; every method only calls thread-safe librdkafka functions.
unsafe impl<C: ConsumerContext> Sync for FetchQueue<C> {}

impl<C: ConsumerContext> std::fmt::Debug for FetchQueue<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchQueue").field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl<C: ConsumerContext> FetchQueue<C> {
    /// A new queue of `consumer`'s, which unparks through `wake` when it or
    /// the consumer's main queue turns non-empty. `None` for a consumer
    /// without a group.
    pub(crate) fn new(consumer: Arc<BaseConsumer<C>>, wake: Arc<Wake>) -> Option<Self> {
        let rk = consumer.client().native_ptr();
        // SAFETY: a live client, which `self` keeps alive; the queues are
        // released in `drop`.
        let main = NonNull::new(unsafe { rdsys::rd_kafka_queue_get_consumer(rk) })?;
        // SAFETY: as above.
        let queue = NonNull::new(unsafe { rdsys::rd_kafka_queue_new(rk) }).expect("librdkafka allocates");
        for q in [queue, main] {
            // SAFETY: the opaque points into `wake`, which this value keeps
            // alive until `drop` has disabled the callbacks.
            unsafe {
                rdsys::rd_kafka_queue_cb_event_enable(q.as_ptr(), Some(wake_up), Arc::as_ptr(&wake) as *mut c_void);
            }
        }
        Some(FetchQueue { consumer, queue, main, _wake: wake })
    }

    /// Sends the records of `tpl`'s partitions here from now on; called
    /// before they are assigned, so that none arrives on the main queue.
    pub(crate) fn forward(&self, tpl: &TopicPartitionList) {
        for elem in tpl.elements() {
            let Ok(topic) = CString::new(elem.topic()) else {
                continue;
            };
            // SAFETY: a live client and a NUL-terminated topic name. The
            // returned handle is the partition's fetch queue, released right
            // after the forward, which persists in librdkafka.
            unsafe {
                let partition = rdsys::rd_kafka_queue_get_partition(
                    self.consumer.client().native_ptr(),
                    topic.as_ptr(),
                    elem.partition(),
                );
                if partition.is_null() {
                    tracing::warn!(topic = elem.topic(), partition = elem.partition(), "no fetch queue for partition");
                    continue;
                }
                rdsys::rd_kafka_queue_forward(partition, self.queue.as_ptr());
                rdsys::rd_kafka_queue_destroy(partition);
            }
        }
    }

    /// Appends up to `max` records (or consumer errors) to `into`, without
    /// waiting.
    pub(crate) fn take(&self, max: usize, into: &mut Vec<Fetched>) {
        into.reserve(max);
        let spare = into.spare_capacity_mut();
        // SAFETY: `Fetched` is a transparent non-null message pointer, so the
        // spare capacity is `max` writable message pointers; librdkafka
        // writes `n` of them, each a message the caller now owns.
        unsafe {
            let n = rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, spare.as_mut_ptr().cast(), max);
            if n > 0 {
                into.set_len(into.len() + n as usize);
            }
        }
    }

    /// Whether nothing waits on either queue. If something arrives after
    /// this, the polling thread is unparked.
    pub(crate) fn is_idle(&self) -> bool {
        // SAFETY: live queues.
        unsafe {
            rdsys::rd_kafka_queue_length(self.queue.as_ptr()) == 0
                && rdsys::rd_kafka_queue_length(self.main.as_ptr()) == 0
        }
    }
}

impl<C: ConsumerContext> Drop for FetchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: the callback is disabled under the queue's lock, so it is
        // not running when `wake` may be freed after this; the consumer is
        // released only after this.
        unsafe {
            for q in [self.queue, self.main] {
                rdsys::rd_kafka_queue_cb_event_enable(q.as_ptr(), None, std::ptr::null_mut());
            }
            // Records still here go with the queue; they were not handled,
            // so their offsets were not stored.
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
            // Only this handle; the main queue lives on with the consumer.
            rdsys::rd_kafka_queue_destroy(self.main.as_ptr());
        }
    }
}

/// librdkafka's callback when a queue turns non-empty; runs on one of its
/// threads and must not call librdkafka.
unsafe extern "C" fn wake_up(_rk: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: the opaque is the `Wake` a `FetchQueue` keeps alive while the
    // callback is enabled.
    let wake = unsafe { &*(opaque as *const Wake) };
    wake.wake();
}

/// A message taken from a [`FetchQueue`], owned until dropped.
#[repr(transparent)]
#[derive(Debug)]
pub(crate) struct Fetched(NonNull<rdsys::rd_kafka_message_t>);

impl Fetched {
    pub(crate) fn view(&self) -> Polled<'_> {
        // SAFETY: the message lives as long as `self`.
        Polled(unsafe { self.0.as_ref() })
    }
}

// SAFETY: librdkafka messages may be destroyed on any thread.
unsafe impl Send for Fetched {}

impl Drop for Fetched {
    fn drop(&mut self) {
        // SAFETY: a message from `rd_kafka_consume_batch_queue`, destroyed once.
        unsafe { rdsys::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

/// A polled message as librdkafka holds it, from a batch or from the main
/// queue.
#[derive(Clone, Copy)]
pub(crate) struct Polled<'a>(&'a rdsys::rd_kafka_message_t);

impl<'a> Polled<'a> {
    pub(crate) fn borrowed(message: &'a BorrowedMessage<'_>) -> Self {
        // SAFETY: the message lives as long as the borrow.
        Polled(unsafe { &*message.ptr() })
    }

    /// The consumer error this message carries instead of a record.
    pub(crate) fn error(self) -> Option<KafkaError> {
        let err = self.0.err;
        (err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| KafkaError::MessageConsumption(err.into()))
    }

    pub(crate) fn topic(self) -> &'a str {
        if self.0.rkt.is_null() {
            return "";
        }
        // SAFETY: the name of the message's topic handle, which lives as
        // long as the message.
        let name = unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.0.rkt)) };
        name.to_str().unwrap_or_default()
    }

    /// Whether both are of the same topic handle (so of the same topic).
    pub(crate) fn same_topic(self, other: Polled<'_>) -> bool {
        std::ptr::eq(self.0.rkt, other.0.rkt)
    }

    pub(crate) fn partition(self) -> i32 {
        self.0.partition
    }

    pub(crate) fn offset(self) -> i64 {
        self.0.offset
    }

    pub(crate) fn key(self) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's key pointer and length, alive with the message.
        (!self.0.key.is_null()).then(|| unsafe { std::slice::from_raw_parts(self.0.key.cast(), self.0.key_len) })
    }

    pub(crate) fn payload(self) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's payload pointer and length, alive with the message.
        (!self.0.payload.is_null()).then(|| unsafe { std::slice::from_raw_parts(self.0.payload.cast(), self.0.len) })
    }

    /// Milliseconds since the Unix epoch, if the record has a timestamp.
    pub(crate) fn timestamp(self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message, only read.
        let at = unsafe { rdsys::rd_kafka_message_timestamp(self.ptr(), &mut kind) };
        (at != -1 && kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(at)
    }

    /// The record's headers. librdkafka parses them on first access,
    /// allocating even for a record without any.
    pub(crate) fn headers(self) -> Option<RawHeaders<'a>> {
        let mut headers = std::ptr::null_mut();
        // SAFETY: a live message; the headers belong to it.
        let err = unsafe { rdsys::rd_kafka_message_headers(self.ptr(), &mut headers) };
        (err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && !headers.is_null())
            .then_some(RawHeaders(headers, PhantomData))
    }

    fn ptr(self) -> *const rdsys::rd_kafka_message_t {
        self.0
    }
}

/// A message's headers where librdkafka keeps them.
#[derive(Clone, Copy)]
pub(crate) struct RawHeaders<'a>(*const rdsys::rd_kafka_headers_t, PhantomData<&'a rdsys::rd_kafka_message_t>);

impl<'a> RawHeaders<'a> {
    /// Each header with a UTF-8 name, in order: name and value (`None` for a
    /// null value).
    pub(crate) fn iter(self) -> impl DoubleEndedIterator<Item = (&'a str, Option<&'a [u8]>)> {
        // SAFETY: live headers, only read.
        let count = unsafe { rdsys::rd_kafka_header_cnt(self.0) };
        (0..count).filter_map(move |i| {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: `i` is in range; names are NUL-terminated, values
            // `size` bytes long, all alive with the message.
            unsafe {
                let err = rdsys::rd_kafka_header_get_all(self.0, i, &mut name, &mut value, &mut size);
                if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return None;
                }
                let name = CStr::from_ptr(name).to_str().ok()?;
                Some((name, (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size))))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;

    /// Invariant: every record of partitions forwarded before they are
    /// assigned comes from the fetch queue, in offset order per partition;
    /// none comes from the main queue, and none is missing.
    #[test]
    fn forwarded_partitions_deliver_every_record_through_the_fetch_queue() {
        const RECORDS: i64 = 300;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 3, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        for i in 0..RECORDS {
            let payload = i.to_string();
            let record = BaseRecord::<(), _>::to("orders").partition(i32::try_from(i % 3).unwrap()).payload(&payload);
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let consumer: Arc<BaseConsumer> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "fetch-queue-test")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap(),
        );
        let wake = Arc::new(Wake::default());
        wake.register();
        let fetch = FetchQueue::new(Arc::clone(&consumer), wake).expect("a consumer with a group");
        let mut tpl = TopicPartitionList::new();
        for partition in 0..3 {
            tpl.add_partition_offset("orders", partition, Offset::Beginning).unwrap();
        }
        fetch.forward(&tpl);
        consumer.assign(&tpl).unwrap();

        let (mut next, mut taken, mut seen) = ([0i64; 3], Vec::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen < RECORDS {
            assert!(Instant::now() < deadline, "only {seen} of {RECORDS} records arrived");
            if let Some(Ok(message)) = consumer.poll(Duration::ZERO) {
                let view = Polled::borrowed(&message);
                panic!("record {}/{} arrived on the main queue", view.partition(), view.offset());
            }
            fetch.take(64, &mut taken);
            if taken.is_empty() {
                std::thread::park_timeout(Duration::from_millis(100));
            }
            for message in taken.drain(..) {
                let record = message.view();
                assert!(record.error().is_none(), "{:?}", record.error());
                assert_eq!(record.topic(), "orders");
                let partition = usize::try_from(record.partition()).unwrap();
                assert_eq!(record.offset(), next[partition], "offset order in partition {partition}");
                next[partition] += 1;
                seen += 1;
            }
        }
        assert_eq!(next, [RECORDS / 3; 3]);
    }
}
