//! The order API: `POST /orders` saves the order and its `OrderCreated`
//! outbox row in one transaction and answers `201 PENDING` at once;
//! `GET /orders/{id}` shows the view kept from the events; `POST
//! /orders/sync` is the system before: every step inline.

mod body;
pub mod error;
mod sync;
pub mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;

use self::body::JsonBody;
use self::error::{database, error, unavailable};
use self::validate::{NewOrder, validate};
use crate::config::{Topics, now_ms};
use crate::db::Db;
use crate::db::view::{self, OrderView};
use crate::events::OrderCreated;
use crate::outbox::{self, OutboxSignal};
use crate::shutdown::Shutdown;
use crate::workers::providers::Providers;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The API's shared state.
#[derive(Clone, Debug)]
pub struct Api {
    pub db: Db,
    pub topics: Topics,
    pub signal: OutboxSignal,
    pub providers: Providers,
    /// Product id → price in cents, loaded at start.
    pub catalog: Arc<HashMap<String, i64>>,
    /// The consumers' metrics, when they run in this process.
    pub telemetry: Option<crate::telemetry::Telemetry>,
}

impl Api {
    /// Loads the catalog and its prices.
    pub async fn new(db: Db, topics: Topics, signal: OutboxSignal, providers: Providers) -> anyhow::Result<Self> {
        let prices: Vec<(String, i64)> =
            crate::on_db!(&db, |p| sqlx::query_as("SELECT product_id, price_cents FROM products").fetch_all(p).await)?;
        let catalog = prices.into_iter().collect();
        Ok(Self { db, topics, signal, providers, catalog: Arc::new(catalog), telemetry: None })
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/orders", post(create))
            .route("/orders/sync", post(sync::create_inline))
            .route("/orders/{id}", get(show))
            .route("/health", get(|| async { "ok" }))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self)
    }

    /// Serves on `addr` until `shutdown`; returns the bound address. An
    /// address it cannot listen on is an error that names it.
    pub async fn serve(self, addr: SocketAddr, shutdown: Shutdown) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| error::cannot_listen(addr, &e, "ORDERS_API_ADDR or --api-addr"))?;
        let bound = listener.local_addr()?;
        // Answers are small: send them at once rather than wait for an ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await;
        });
        Ok(bound)
    }
}

/// Validates the request; the response is the 4xx to send.
pub(crate) fn parse(api: &Api, JsonBody(body): JsonBody) -> Result<NewOrder, Box<Response>> {
    validate(&body, &api.catalog).map_err(|bad| error(StatusCode::UNPROCESSABLE_ENTITY, bad.field, bad.message))
}

/// Whether `order` asks for what `saved` holds. The fingerprint of a request
/// is its validated fields, which the order row keeps next to its
/// idempotency key: a key reused for a different request is refused (the
/// IETF draft "The Idempotency-Key HTTP Header Field": `422`).
fn is_request_of(order: &NewOrder, saved: &OrderView) -> bool {
    (&*order.user_id, &*order.product_id, order.quantity, order.amount_cents)
        == (&*saved.user_id, &*saved.product_id, saved.quantity, saved.amount_cents)
}

async fn create(State(api): State<Api>, headers: HeaderMap, body: JsonBody) -> Response {
    let order = match parse(&api, body) {
        Ok(order) => order,
        Err(response) => return *response,
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 && !k.contains('\t') => Some(k.to_owned()),
        Some(_) => return *error(StatusCode::BAD_REQUEST, "Idempotency-Key", "must be 1 to 255 visible characters"),
    };
    let now = now_ms();
    let (order_id, event_id) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    let view = OrderView::pending(
        order_id.clone(),
        event_id.clone(),
        order.user_id.clone(),
        order.product_id.clone(),
        order.quantity,
        order.amount_cents,
        now,
    );
    let event = OrderCreated {
        event_id,
        order_id: order_id.clone(),
        user_id: order.user_id.clone(),
        product_id: order.product_id.clone(),
        quantity: order.quantity,
        amount: view.amount.clone(),
        created_at: now,
    };
    let payload = match serde_json::to_string(&event) {
        Ok(payload) => payload,
        Err(e) => return *error(StatusCode::INTERNAL_SERVER_ERROR, "order", e.to_string()),
    };
    let outbox_row = (&*api.topics.created, &*event.user_id, "OrderCreated", &*payload);
    let saved = async {
        if let Some(saved) = view::insert_with_outbox(&api.db, &view, key.as_deref(), outbox_row).await {
            return saved;
        }
        let mut tx = api.db.begin().await?;
        if !view::insert(&mut tx.conn(), &view, key.as_deref()).await? {
            return Ok(false);
        }
        outbox::enqueue(&mut tx.conn(), &api.topics.created, &event.user_id, "OrderCreated", &event).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(true)
    }
    .await;
    match saved {
        Ok(true) => {
            api.signal.wake();
            let location = format!("/orders/{order_id}");
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(json!({"orderId": order_id, "status": "PENDING"})),
            )
                .into_response()
        }
        // The key was used before: the client retried; answer with that order.
        Ok(false) => match view::by_idempotency_key(&api.db, key.as_deref().unwrap_or_default()).await {
            Ok(Some(existing)) if !is_request_of(&order, &existing) => *error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key",
                "was used before for a different request: send the same request to retry it, or a new key \
                 for a new order",
            ),
            Ok(Some(existing)) => (
                StatusCode::OK,
                [("idempotent-replayed", "true")],
                Json(json!({"orderId": existing.order_id, "status": existing.status})),
            )
                .into_response(),
            Ok(None) => unavailable("order with the idempotency key vanished"),
            Err(e) => database(&e),
        },
        Err(e) => database(&e),
    }
}

async fn show(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let not_found = || *error(StatusCode::NOT_FOUND, "orderId", format_args!("`{}` not found", id.escape_debug()));
    // No order id holds a control character; PostgreSQL would refuse a NUL.
    if id.chars().any(char::is_control) {
        return not_found();
    }
    match view::get(&api.db, &id).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => not_found(),
        Err(e) => database(&e),
    }
}

/// Orders by status, the outbox depth, and the consumers' metrics when they
/// run in this process, in Prometheus' text format.
async fn metrics(State(api): State<Api>) -> Response {
    let counts: Result<Vec<(String, i64)>, _> =
        crate::on_db!(&api.db, |p| sqlx::query_as("SELECT status, COUNT(*) FROM orders GROUP BY status")
            .fetch_all(p)
            .await);
    let (Ok(counts), Ok(depth)) = (counts, api.db.outbox_depth().await) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response();
    };
    let mut text = String::from("# TYPE orders gauge\n");
    for (status, n) in counts {
        text.push_str(&format!("orders{{status=\"{status}\"}} {n}\n"));
    }
    text.push_str(&format!("# TYPE orders_outbox_depth gauge\norders_outbox_depth {depth}\n"));
    if let Some(telemetry) = &api.telemetry {
        text.push_str(&telemetry.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
