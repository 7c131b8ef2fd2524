#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The committed OpenAPI document (`docs/openapi.json`) is exactly what the code generates, so
//! a change to a route's documentation or to a request or response type shows in review.
//! After an intended change, regenerate it with
//! `LANYARD_BLESS=1 cargo test -p lanyard-http --test openapi`.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn generated() -> String {
    let doc = lanyard_http::api::openapi_document();
    let mut text = serde_json::to_string_pretty(&doc).expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

#[test]
fn committed_openapi_document_is_current() {
    let generated = generated();
    let path = committed_path();
    if std::env::var("LANYARD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "docs/openapi.json differs from the document the code generates (first at line {}).\n\
             If the API change is intended, regenerate it with\n    \
             LANYARD_BLESS=1 cargo test -p lanyard-http --test openapi\nand commit the file.",
            line + 1
        );
    }
}

#[test]
fn the_document_names_the_admin_api() {
    // The drift check above compares text; this guards against blessing an empty document.
    let doc: serde_json::Value = serde_json::from_str(&generated()).expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/api/v1/sessions"), "{paths:?}");
    assert!(paths.contains_key("/api/v1/users"), "{paths:?}");
}
