//! Checks an order request field by field; money is a decimal string.

use std::collections::HashMap;

use serde_json::Value;

use crate::money::format_cents;

/// A valid order request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub user_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub amount_cents: i64,
}

/// The first problem found, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { field, message: message.into() }
}

/// Most units of one product in one order.
pub const MAX_QUANTITY: i64 = 1_000;

/// Longest `userId` or `productId`, in characters.
pub const MAX_TEXT: usize = 64;

/// Why a text field is refused: empty, too long, or holding a control
/// character (a NUL, which PostgreSQL cannot store in text, a line break,
/// an escape sequence) — checked here, so that the database never sees it.
fn text_problem(s: &str) -> Option<String> {
    if s.trim().is_empty() {
        return Some("must not be empty".into());
    }
    if s.chars().count() > MAX_TEXT {
        return Some(format!("must be at most {MAX_TEXT} characters"));
    }
    let (at, c) = s.chars().enumerate().find(|(_, c)| c.is_control())?;
    Some(format!("must not contain control characters (U+{:04X} at character {})", u32::from(c), at + 1))
}

/// Validates `body` against the catalog (product id → price in cents): the
/// amount must be the product's price times the quantity.
pub fn validate(body: &Value, catalog: &HashMap<String, i64>) -> Result<NewOrder, Invalid> {
    let Some(fields) = body.as_object() else { return Err(invalid("body", "must be a JSON object")) };
    let text = |name: &'static str| -> Result<String, Invalid> {
        match fields.get(name) {
            None | Some(Value::Null) => Err(invalid(name, "is required")),
            Some(Value::String(s)) => match text_problem(s) {
                Some(problem) => Err(invalid(name, problem)),
                None => Ok(s.clone()),
            },
            Some(_) => Err(invalid(name, "must be a string")),
        }
    };
    let user_id = text("userId")?;
    let product_id = text("productId")?;
    let Some(&price_cents) = catalog.get(&product_id) else {
        return Err(invalid("productId", format!("unknown product `{product_id}`")));
    };
    let quantity = match fields.get("quantity") {
        None | Some(Value::Null) => return Err(invalid("quantity", "is required")),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(q) if q <= 0 => return Err(invalid("quantity", "must be a positive integer")),
            Some(q) if q > MAX_QUANTITY => return Err(invalid("quantity", format!("must be at most {MAX_QUANTITY}"))),
            Some(q) => q,
            None => return Err(invalid("quantity", "must be a positive integer")),
        },
        Some(_) => return Err(invalid("quantity", "must be an integer")),
    };
    let amount_cents = match fields.get("amount") {
        None | Some(Value::Null) => return Err(invalid("amount", "is required")),
        Some(Value::String(s)) => crate::money::parse_cents(s).map_err(|m| invalid("amount", m))?,
        Some(Value::Number(_)) => {
            return Err(invalid("amount", "must be a decimal string like \"19.99\", not a JSON number"));
        }
        Some(_) => return Err(invalid("amount", "must be a decimal string like \"19.99\"")),
    };
    let expected_cents = price_cents.saturating_mul(quantity);
    if amount_cents != expected_cents {
        return Err(invalid(
            "amount",
            format!(
                "must be \"{}\" ({quantity} × {product_id} at {}), not \"{}\"",
                format_cents(expected_cents),
                format_cents(price_cents),
                format_cents(amount_cents)
            ),
        ));
    }
    Ok(NewOrder { user_id, product_id, quantity, amount_cents })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn catalog() -> HashMap<String, i64> {
        HashMap::from([("sku-01".to_owned(), 499)])
    }

    fn field_of(body: Value) -> &'static str {
        validate(&body, &catalog()).unwrap_err().field
    }

    #[test]
    fn a_good_order_passes() {
        let body = json!({"userId": "u1", "productId": "sku-01", "quantity": 2, "amount": "9.98"});
        assert_eq!(validate(&body, &catalog()).unwrap().amount_cents, 998);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(json!({"productId": "sku-01", "quantity": 1, "amount": "1"})), "userId");
        assert_eq!(field_of(json!({"userId": "u", "productId": "nope", "quantity": 1, "amount": "1"})), "productId");
        assert_eq!(field_of(json!({"userId": "u", "productId": "sku-01", "quantity": -1, "amount": "1"})), "quantity");
        assert_eq!(field_of(json!({"userId": "u", "productId": "sku-01", "quantity": 1.5, "amount": "1"})), "quantity");
        assert_eq!(field_of(json!({"userId": "u", "productId": "sku-01", "quantity": 1, "amount": "ten"})), "amount");
        assert_eq!(field_of(json!({"userId": "u", "productId": "sku-01", "quantity": 1, "amount": 9.99})), "amount");
        assert_eq!(field_of(json!([1, 2])), "body");
    }

    #[test]
    fn control_characters_and_long_text_are_refused_before_the_database() {
        for (field, value) in
            [("userId", "nul\u{0}x"), ("userId", "a\nb"), ("userId", "\u{1b}[31m"), ("productId", "sku-01\u{0}")]
        {
            let mut body = json!({"userId": "u1", "productId": "sku-01", "quantity": 1, "amount": "4.99"});
            body[field] = json!(value);
            let bad = validate(&body, &catalog()).unwrap_err();
            assert_eq!(bad.field, field, "{value:?}");
            assert!(bad.message.contains("control characters"), "{value:?}: {}", bad.message);
        }
        let long = json!({"userId": "é".repeat(MAX_TEXT + 1), "productId": "sku-01", "quantity": 1, "amount": "4.99"});
        assert_eq!(validate(&long, &catalog()).unwrap_err().field, "userId");
        let at_limit = json!({"userId": "é".repeat(MAX_TEXT), "productId": "sku-01", "quantity": 1, "amount": "4.99"});
        assert!(validate(&at_limit, &catalog()).is_ok(), "the limit counts characters, not bytes");
    }

    #[test]
    fn the_amount_must_be_price_times_quantity() {
        let body = json!({"userId": "u1", "productId": "sku-01", "quantity": 1000, "amount": "0.01"});
        let bad = validate(&body, &catalog()).unwrap_err();
        assert_eq!(bad.field, "amount");
        assert!(bad.message.contains("\"4990.00\""), "names the expected amount: {}", bad.message);
        let body = json!({"userId": "u1", "productId": "sku-01", "quantity": 2, "amount": "9.99"});
        assert_eq!(field_of(body), "amount");
    }
}
