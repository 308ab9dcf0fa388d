//! `POST /orders/sync`: the system before — stock, charge, points, email
//! and SMS inline in the request, against the same providers. Kept to
//! measure what the event-driven endpoint saves.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::body::JsonBody;
use super::error::{database, error};
use super::{Api, parse};
use crate::config::now_ms;
use crate::db::view::{self, OrderView};
use crate::on_conn;

pub(super) async fn create_inline(State(api): State<Api>, body: JsonBody) -> Response {
    let order = match parse(&api, body) {
        Ok(order) => order,
        Err(response) => return *response,
    };
    let now = now_ms();
    let (order_id, event_id) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    let mut view = OrderView::pending(
        order_id.clone(),
        event_id.clone(),
        order.user_id.clone(),
        order.product_id.clone(),
        order.quantity,
        order.amount_cents,
        now,
    );
    // Save the order and decrease stock.
    let reserved = async {
        let mut tx = api.db.begin().await?;
        view::insert(&mut tx.conn(), &view, None).await?;
        let taken = on_conn!(&mut tx.conn(), |c| sqlx::query(
            "UPDATE products SET available = available - $1 WHERE product_id = $2 AND available >= $1"
        )
        .bind(order.quantity)
        .bind(&order.product_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        if taken == 0 {
            view.status = "CANCELLED".into();
            view.stock = "FAILED".into();
            view.payment = "FAILED".into();
            view.refund_done = true;
            view.failure_reason = Some("out of stock".into());
            view.settled_at = Some(now_ms());
        } else {
            view.stock = "RESERVED".into();
        }
        view::save(&mut tx.conn(), &view, now_ms()).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(view.stock == "RESERVED")
    }
    .await;
    match reserved {
        Ok(true) => {}
        Ok(false) => return *error(StatusCode::CONFLICT, "productId", "is out of stock"),
        Err(e) => return database(&e),
    }
    // Charge, then points, email and SMS; any failure undoes the order.
    let outcome = async {
        let payment_id = api.providers.charge(&event_id, &order_id, &view.amount).await?;
        view.payment = "PAID".into();
        view.payment_id = Some(payment_id);
        let to = format!("{}@example.com", order.user_id);
        let (email_key, sms_key) = (format!("{event_id}:email"), format!("{event_id}:sms"));
        let (email, sms) = tokio::join!(
            api.providers.notify("email", &email_key, &order_id, &to),
            api.providers.notify("sms", &sms_key, &order_id, "+15550000000"),
        );
        view.email_sent = email.is_ok();
        view.sms_sent = sms.is_ok();
        email.and(sms)
    }
    .await;
    let mut tx = match api.db.begin().await {
        Ok(tx) => tx,
        Err(e) => return database(&e),
    };
    let result = match outcome {
        Ok(()) => {
            let points = order.amount_cents / 100;
            view.status = "CONFIRMED".into();
            view.points = Some(points);
            view.settled_at = Some(now_ms());
            let saved = async {
                on_conn!(&mut tx.conn(), |c| sqlx::query(
                    "INSERT INTO points_ledger (order_id, user_id, points, created_at) VALUES ($1, $2, $3, $4)"
                )
                .bind(&order_id)
                .bind(&order.user_id)
                .bind(points)
                .bind(now_ms())
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                view::save(&mut tx.conn(), &view, now_ms()).await
            }
            .await;
            saved.map(|()| {
                (StatusCode::CREATED, Json(json!({"orderId": order_id, "status": "CONFIRMED"}))).into_response()
            })
        }
        Err(failure) => {
            if view.payment == "PAID" {
                match api.providers.refund(&event_id).await {
                    Ok(_) => view.payment = "REFUNDED".into(),
                    Err(e) => tracing::error!(error = %e, order_id, "inline refund failed"),
                }
            } else {
                view.payment = "FAILED".into();
            }
            view.refund_done = true;
            view.status = "CANCELLED".into();
            view.stock = "RELEASED".into();
            view.failure_reason = Some(failure.to_string());
            view.settled_at = Some(now_ms());
            let saved = async {
                on_conn!(&mut tx.conn(), |c| sqlx::query(
                    "UPDATE products SET available = available + $1 WHERE product_id = $2"
                )
                .bind(order.quantity)
                .bind(&order.product_id)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                view::save(&mut tx.conn(), &view, now_ms()).await
            }
            .await;
            saved.map(|()| *error(StatusCode::BAD_GATEWAY, "provider", failure))
        }
    };
    match result {
        Ok(response) => match tx.commit().await {
            Ok(()) => response,
            Err(e) => database(&e),
        },
        Err(e) => database(&e),
    }
}
