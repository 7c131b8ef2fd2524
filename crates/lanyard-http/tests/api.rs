#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The admin API in process ([`support::TestApp`]): the error shape and statuses, the
//! authentication rule, bounded and validated bodies, and the OpenAPI document beside the
//! routes — quick checks that need no server process.

mod support;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;
use support::TestApp;

#[tokio::test]
async fn errors_have_one_shape_and_the_right_status() {
    let app = TestApp::new().await;
    // Unknown user: 404 with the stable code.
    let a = app
        .api(Method::GET, "/api/v1/users/nobody@example.com", None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "not_found");
    // A body that is not JSON: 400, nothing created.
    let r = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/users")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let a = app.send(r).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "invalid");
    let a = app.api(Method::GET, "/api/v1/users", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json().as_array().map(Vec::len), Some(0), "{}", a.text());
    // A valid user, then the same email again: 409.
    let user =
        json!({"email": "ann@example.com", "display_name": "Ann", "password": "a long password"});
    let a = app
        .api(Method::POST, "/api/v1/users", Some(user.clone()))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let a = app.api(Method::POST, "/api/v1/users", Some(user)).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "conflict");
}

#[tokio::test]
async fn the_api_needs_a_valid_bearer_token() {
    let app = TestApp::new().await;
    for auth in [None, Some("Bearer not-a-token"), Some("Basic YWRtaW46eA==")] {
        let mut b = Request::builder().uri("/api/v1/users");
        if let Some(v) = auth {
            b = b.header(header::AUTHORIZATION, v);
        }
        let a = app.send(b.body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{auth:?}: {}", a.text());
        assert_eq!(a.json()["error"]["code"], "unauthorized");
    }
}

#[tokio::test]
async fn oversized_and_nul_bodies_are_refused() {
    let app = TestApp::new().await;
    let big = "x".repeat(lanyard_http::ADMIN_BODY_LIMIT + 1);
    let a = app
        .api(Method::POST, "/api/v1/users", Some(json!({ "email": big })))
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
    let a = app
        .api(
            Method::POST,
            "/api/v1/users",
            Some(json!({"email": "a\u{0}@example.com", "display_name": "A", "password": "a long password"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    let a = app.api(Method::GET, "/api/v1/users", None).await;
    assert_eq!(
        a.json().as_array().map(Vec::len),
        Some(0),
        "nothing was created"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_routes() {
    let app = TestApp::new().await;
    let a = app.api(Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/json");
    // Made on the first request and kept: the same bytes again, and the whole document.
    let again = app.api(Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(again.body, a.body);
    assert_eq!(
        a.json(),
        serde_json::to_value(lanyard_http::api::openapi_document()).unwrap()
    );
    let doc = a.json();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/users",
        "/api/v1/push-certificate/request",
        "/api/v1/push-certificate/request/sign",
        "/api/v1/push-certificate/request/signing-service",
        "/api/v1/push-certificate/request/decrypt",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
}

/// Every operation of the OpenAPI document is routed: asked without credentials, each answers
/// with its own refusal (401, or 415 for the sign-in without a JSON body), never the router's
/// "no such endpoint" (404) or "method not allowed" (405). The router asked here is the one
/// `lanyard serve` answers with, built without the documentation; the document is built from the
/// same lists (`api_routes!`), so the other way round holds by construction.
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = TestApp::new().await;
    let doc = serde_json::to_value(lanyard_http::api::openapi_document()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        // Placeholders get a value every parameter type accepts (names and numeric ids).
        let uri: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let req = Request::builder()
                .method(m.clone())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let a = app.send(req).await;
            assert!(
                ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&a.status),
                "{m} {uri} is documented but not routed: {} {}",
                a.status,
                a.text()
            );
            operations += 1;
        }
    }
    assert!(operations >= 50, "only {operations} operations documented");
}

/// Reads the API answers through the domain (no store call in the HTTP crate): an unknown
/// device is the domain's 404, and the token list shows the token without its secret.
#[tokio::test]
async fn devices_and_tokens_are_read_through_the_domain() {
    let app = TestApp::new().await;
    let a = app
        .api(Method::GET, "/api/v1/devices/no-such-id", None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "not_found");
    assert_eq!(
        a.json()["error"]["message"],
        "enrollment no-such-id not found"
    );
    let a = app.api(Method::GET, "/api/v1/api-tokens", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let tokens = a.json();
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["name"], "test");
    assert!(!a.text().contains(&app.token), "the secret is never listed");
}
