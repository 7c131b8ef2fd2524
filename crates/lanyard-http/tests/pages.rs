#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The server-rendered pages in process ([`support::TestApp`]): values from the database are
//! escaped by the templates, whatever characters they hold.

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use support::TestApp;

const HOSTILE: &str = "<script>alert(\"x\")</script> & \"quoted\"";
const ESCAPED: &str = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quoted&quot;";

#[tokio::test]
async fn a_display_name_with_markup_is_shown_as_text_on_the_users_page() {
    let app = TestApp::new().await;
    let user = json!({
        "email": "ann@example.com",
        "display_name": HOSTILE,
        "password": "a long password",
    });
    let a = app.api(Method::POST, "/api/v1/users", Some(user)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());

    let page = app.portal_page("/portal/users").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let html = page.text();
    assert!(html.contains(&format!("<td>{ESCAPED}</td>")), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("<td>ann@example.com</td>"), "{html}");
}

#[tokio::test]
async fn a_search_with_quotes_stays_inside_its_attribute() {
    let app = TestApp::new().await;
    let page = app
        .portal_page("/portal/users?search=%22%3E%3Cscript%3Ex%3C%2Fscript%3E")
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let html = page.text();
    assert!(
        html.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""),
        "{html}"
    );
    assert!(!html.contains("<script>x"), "{html}");
}
