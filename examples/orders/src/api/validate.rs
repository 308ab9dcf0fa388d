//! Checks an order request field by field; money is a decimal string.

use std::collections::HashMap;

use serde_json::Value;

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

/// Validates `body` against the catalog (product id → price in cents).
pub fn validate(body: &Value, catalog: &HashMap<String, i64>) -> Result<NewOrder, Invalid> {
    let Some(fields) = body.as_object() else { return Err(invalid("body", "must be a JSON object")) };
    let text = |name: &'static str| -> Result<String, Invalid> {
        match fields.get(name) {
            None | Some(Value::Null) => Err(invalid(name, "is required")),
            Some(Value::String(s)) if s.trim().is_empty() => Err(invalid(name, "must not be empty")),
            Some(Value::String(s)) if s.len() > 64 => Err(invalid(name, "must be at most 64 characters")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(invalid(name, "must be a string")),
        }
    };
    let user_id = text("userId")?;
    let product_id = text("productId")?;
    if !catalog.contains_key(&product_id) {
        return Err(invalid("productId", format!("unknown product `{product_id}`")));
    }
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
}
