//! The request middleware every answer goes through: a request id, one tracing span per request,
//! a bound on a handler's time, and a panic in a handler turned into a `500`.
//!
//! - **Request id.** `X-Request-Id` is kept when the client (or a proxy in front) sent a usable
//!   one (1 to [`MAX_REQUEST_ID_LEN`] characters of `A-Z a-z 0-9 - _ . :`), otherwise a fresh
//!   UUID replaces it, and the answer carries it back.
//! - **Span.** Each request runs in a `request` span with its `id`, `method` and `route` (the
//!   route template, never the raw path or query, so identifiers and tokens stay out of the
//!   log); every log line written while the request is served — the error mapping's, the
//!   domain's — carries it, and one `INFO` line closes the request with its status and latency.
//! - **Timeout.** A handler that has not answered after [`REQUEST_TIMEOUT`] is dropped and the
//!   client gets `503` (with `Retry-After`, like every `503`).
//! - **Panics.** A panic in a handler becomes a `500` in the API's error shape. The panic is
//!   logged once, by the binary's panic hook, inside the request's span (so with its id).

use std::any::Any;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, MakeSpan, TraceLayer};
use tracing::{Level, Span};

use crate::error::ApiError;

/// The header carrying a request's id, in both directions.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id kept from a client; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// How long a handler may take before the client gets `503`. Above every upstream timeout a
/// handler waits on (APNs, identity providers, one Apple Business Manager request). The one
/// route that may run longer on purpose, an ABM sync the caller waits for
/// (`POST /api/v1/server-tokens/{name}/sync?wait=true`), is not bounded by it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds the handlers of `router` by [`REQUEST_TIMEOUT`] (`503` when it passes).
pub fn with_timeout<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        REQUEST_TIMEOUT,
    ))
}

/// Turns a panic in `router`'s handlers into a `500` (apply it inside the layers that should
/// still see the answer, such as the response headers and the metrics).
pub fn catching_panics<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(CatchPanicLayer::custom(panic_response))
}

/// The request id and the request span around everything `router` does (the outermost layers).
pub fn with_request_ids<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(RequestSpan)
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // A server fault is logged once, where it is mapped to its answer.
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id))
}

/// Whether a client's request id is kept: short, and only characters that cannot forge or
/// break a log line.
fn usable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Removes an `X-Request-Id` that is not [`usable_request_id`] (or is sent twice), so a fresh
/// one is made for the request.
async fn drop_unusable_request_id(mut req: Request, next: Next) -> Response {
    let headers = req.headers_mut();
    let mut values = headers.get_all(&REQUEST_ID_HEADER).iter();
    let keep = match (values.next(), values.next()) {
        (Some(v), None) => usable_request_id(v),
        (None, _) => true,
        _ => false,
    };
    if !keep {
        headers.remove(&REQUEST_ID_HEADER);
    }
    next.run(req).await
}

/// The `request` span: id, method and route template.
#[derive(Clone, Copy, Debug)]
struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> Span {
        let id = req
            .headers()
            .get(&REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
            .unwrap_or("-");
        // At level ERROR so that the span is enabled whatever the filter (`LANYARD_LOG=warn`
        // included): a span's level only decides whether it exists, and every line written
        // inside it carries its fields.
        tracing::error_span!("request", id = %id, method = %req.method(), route = %route)
    }
}

/// The answer to a request whose handler panicked.
fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    // The panic itself was logged by the panic hook, in this request's span.
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the server log has the details",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::routing::get;
    use lanyard_core::CoreError;
    use tower::ServiceExt;

    use super::*;

    /// A router with the production layers around test-only handlers.
    fn app() -> Router {
        let routes = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/fails",
                get(|| async {
                    ApiError::from(CoreError::Internal("the disk caught fire".into()))
                }),
            )
            .route(
                "/panics",
                get(|| async {
                    if true {
                        panic!("a handler bug");
                    }
                    "unreachable"
                }),
            );
        with_request_ids(catching_panics(with_timeout(routes)))
    }

    async fn send(req: axum::http::Request<Body>) -> Response {
        app().oneshot(req).await.expect("infallible")
    }

    fn get_req(path: &str) -> axum::http::request::Builder {
        axum::http::Request::builder().uri(path)
    }

    fn id_of(res: &Response) -> String {
        res.headers()
            .get(&REQUEST_ID_HEADER)
            .expect("x-request-id on the answer")
            .to_str()
            .expect("ASCII")
            .to_string()
    }

    #[tokio::test]
    async fn a_usable_request_id_is_kept_and_answered() {
        let res = send(
            get_req("/ok")
                .header("x-request-id", "proxy-4711:a.b_c")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(id_of(&res), "proxy-4711:a.b_c");
    }

    #[tokio::test]
    async fn a_missing_or_unusable_request_id_is_made() {
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for sent in [
            None,
            Some(""),
            Some("two words"),
            Some("x\"y"),
            Some(&long[..]),
        ] {
            let mut req = get_req("/ok");
            if let Some(v) = sent {
                req = req.header("x-request-id", v);
            }
            let res = send(req.body(Body::empty()).expect("request")).await;
            let id = id_of(&res);
            assert!(
                uuid::Uuid::parse_str(&id).is_ok(),
                "sent {sent:?}, answered {id:?}"
            );
        }
        // Two requests without an id get two ids.
        let a = id_of(&send(get_req("/ok").body(Body::empty()).expect("request")).await);
        let b = id_of(&send(get_req("/ok").body(Body::empty()).expect("request")).await);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_with_the_api_error_shape() {
        let res = send(
            get_req("/panics")
                .header("x-request-id", "panic-1")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(id_of(&res), "panic-1");
        let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"]["code"], "internal");
        assert_eq!(
            json["error"]["message"],
            "internal error; the server log has the details"
        );
        // The service still answers after a panic.
        let res = send(get_req("/ok").body(Body::empty()).expect("request")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().expect("lock"))
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_error_log_line_carries_the_request_id_and_is_written_once() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        // The whole request is polled on this thread, under this subscriber.
        let _guard = tracing::subscriber::set_default(subscriber);
        let res = send(
            get_req("/fails")
                .header("x-request-id", "trace-me-42")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(id_of(&res), "trace-me-42");
        let lines = captured.lines();
        let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "one error line: {lines:#?}");
        assert!(errors[0].contains("request failed"), "{lines:#?}");
        assert!(errors[0].contains("the disk caught fire"), "{lines:#?}");
        assert!(errors[0].contains("id=trace-me-42"), "{lines:#?}");
        assert!(errors[0].contains("route=/fails"), "{lines:#?}");
        // The closing line of the request has the id and the status.
        assert!(
            lines
                .iter()
                .any(|l| l.contains("id=trace-me-42") && l.contains("status=500")),
            "{lines:#?}"
        );
    }
}
