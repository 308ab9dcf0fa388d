//! Every kind of extractor, in any order, with each kind of return type:
//! `Result<(), E>` for any error, `()` written out, and no return type.
#![deny(warnings)]

use kafka_handler::extract::{Headers, Json, Key, Metadata, Payload, State};
use kafka_handler::{handler, Handler, Record};

#[derive(Clone)]
struct Db;

#[handler(topic = "t", group = "g")]
async fn everything(
    meta: Metadata,
    Key(key): Key,
    Payload(payload): Payload,
    headers: Headers,
    State(_db): State<Db>,
    Json(n): Json<u32>,
    maybe: Option<Json<u32>>,
    whole: Record,
) -> Result<(), std::io::Error> {
    assert_eq!(meta.offset, 3);
    assert_eq!(key.as_deref(), Some(&b"k"[..]));
    assert_eq!(payload.as_deref(), Some(&b"7"[..]));
    assert_eq!(headers.get("h"), Some(&b"v"[..]));
    assert_eq!(n, 7);
    assert!(maybe.is_some());
    assert_eq!(whole.topic(), "t");
    Ok(())
}

#[handler(topic = "t", group = "g")]
async fn unit_written_out(_meta: Metadata) -> () {}

#[handler(topic = "t", group = "g")]
async fn no_arguments() {}

fn main() {
    let record = || Record::builder("t").offset(3).key("k").header("h", "v").payload("7").state(Db).build();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        everything.call(record()).await.unwrap();
        unit_written_out.call(record()).await.unwrap();
        no_arguments.call(record()).await.unwrap();
    });
}
