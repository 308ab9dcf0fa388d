//! The body of a request that carries JSON.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::error::error;

/// A JSON request body: sent as `application/json` (else `415`), within
/// the body limit (else `413`), and valid JSON (else `400`). Each refusal
/// names the field at fault: `Content-Type` or `body`.
#[derive(Debug)]
pub(crate) struct JsonBody(pub(crate) Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        if !is_json(request.headers()) {
            let sent = request.headers().get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()));
            let message = match sent {
                Some(sent) => format!("must be application/json, not `{sent}`"),
                None => "must be application/json (none was sent)".to_owned(),
            };
            let mut response = *error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type", message);
            response.headers_mut().insert("accept-post", HeaderValue::from_static("application/json"));
            return Err(response);
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| *error(rejection.status(), "body", rejection.body_text().to_lowercase()))?;
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(|e| *error(StatusCode::BAD_REQUEST, "body", format_args!("is not valid JSON: {e}")))
    }
}

/// Whether the request says its body is JSON: `application/json`, with
/// parameters or none; a charset, if given, is UTF-8, the only one JSON has
/// (RFC 8259).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(Ok(value)) = headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) else { return false };
    let mut parts = value.split(';');
    if !parts.next().is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json")) {
        return false;
    }
    parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        Some(_) => true,
        None => parameter.trim().is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(content_type: &str) -> HeaderMap {
        HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap())])
    }

    #[test]
    fn json_with_or_without_parameters_is_json() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(&with(ok)), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_not() {
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/json; charset=latin1",
            "application/json; x",
            "",
        ] {
            assert!(!is_json(&with(bad)), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()), "no Content-Type");
    }
}
