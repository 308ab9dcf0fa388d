//! The struct and `handle` keep the function's visibility: a `pub(crate)`
//! handler in a module is usable, and callable, from elsewhere in the crate.
#![deny(warnings)]

mod inventory {
    use kafka_handler::{extract::Json, handler};

    #[handler(topic = "order.created", group = "inventory")]
    pub(crate) async fn reserve_stock(Json(quantity): Json<u32>) {
        assert_eq!(quantity, 2);
    }
}

fn main() {
    let handler = inventory::reserve_stock;
    let _ = kafka_handler::Consumer::builder().handler(handler).bootstrap_servers("x").build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(inventory::reserve_stock::handle(kafka_handler::extract::Json(2)));
}
