//! `crate = ".."` for a renamed dependency. trybuild cannot rename the crate
//! under test, so `extern crate .. as kh` stands in for
//! `kh = { package = "kafka-handler" }`; `fail/wrong_crate_path.rs` shows that
//! the path is the one the generated code uses.
#![deny(warnings)]

extern crate kafka_handler as kh;

mod handlers {
    #[kh::handler(topic = "order.created", group = "inventory", crate = "::kh")]
    pub(crate) async fn reserve_stock(_meta: kh::extract::Metadata) {}
}

/// Through a re-export, with a relative path.
mod reexport {
    pub(crate) use kh as framework;

    #[framework::handler(topic = "t", group = "g", crate = "self::framework")]
    pub(crate) async fn audit() {}
}

fn main() {
    let consumer = kh::Consumer::builder().handler(handlers::reserve_stock).bootstrap_servers("x").build().unwrap();
    assert_eq!(consumer.group_id(), "inventory");
    let _ = kh::Consumer::builder().handler(reexport::audit).bootstrap_servers("x").build().unwrap();
}
