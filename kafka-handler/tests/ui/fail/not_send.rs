//! A handler whose future is not `Send` (an `Rc` held across an `.await`):
//! the error says it is no handler, and why that can be.

use std::rc::Rc;

use kafka_handler::Consumer;

async fn count() {
    let seen = Rc::new(1);
    tokio::task::yield_now().await;
    drop(seen);
}

fn main() {
    let _ = Consumer::builder().handler(count);
}
