//! The admin portal as a browser sees it: a cookie-keeping client that does not follow
//! redirects, the CSRF field of a page, form posts and the sign-in.

use reqwest::{Client, StatusCode};

use super::{Server, VIEWER_PASSWORD};

/// A browser-like client: keeps cookies, does not follow redirects (so they can be checked).
pub fn browser(s: &Server) -> Client {
    Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&s.ca_pem()).unwrap())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Creates the read-only administrator `viewer` ([`Server::create_viewer`]) and signs it in
/// to the portal in a fresh browser: that browser and its CSRF token.
pub async fn read_only_browser(s: &Server) -> (Client, String) {
    s.create_viewer();
    let v = browser(s);
    let csrf = sign_in(&v, s, "viewer", VIEWER_PASSWORD).await;
    (v, csrf)
}

/// The value of the first hidden `csrf` field on a page.
pub fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_string()
}

pub async fn get(c: &Client, s: &Server, path: &str) -> (StatusCode, String) {
    let r = c.get(format!("{}{path}", s.url)).send().await.unwrap();
    let st = r.status();
    (st, r.text().await.unwrap())
}

pub async fn post(
    c: &Client,
    s: &Server,
    path: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let r = c
        .post(format!("{}{path}", s.url))
        .form(form)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.text().await.unwrap())
}

/// Signs in through the sign-in page; returns the session's CSRF token (from the next page).
pub async fn sign_in(c: &Client, s: &Server, user: &str, password: &str) -> String {
    let (st, page) = get(c, s, "/portal/sign-in").await;
    assert_eq!(st, 200);
    let csrf = csrf_of(&page);
    let r = c
        .post(format!("{}/portal/sign-in", s.url))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/portal/summary");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("lanyard_session="))
        .expect("a session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let (st, page) = get(c, s, "/portal/summary").await;
    assert_eq!(st, 200);
    csrf_of(&page)
}

/// One part of a multipart form: a field, or a file when `filename` is set.
pub struct Part<'a> {
    pub name: &'a str,
    pub filename: Option<&'a str>,
    pub bytes: &'a [u8],
}

impl<'a> Part<'a> {
    pub fn field(name: &'a str, value: &'a str) -> Self {
        Part {
            name,
            filename: None,
            bytes: value.as_bytes(),
        }
    }

    pub fn file(name: &'a str, filename: &'a str, bytes: &'a [u8]) -> Self {
        Part {
            name,
            filename: Some(filename),
            bytes,
        }
    }
}

/// Posts a `multipart/form-data` form as a browser does; returns the whole response.
pub async fn post_multipart(
    c: &Client,
    s: &Server,
    path: &str,
    parts: &[Part<'_>],
) -> reqwest::Response {
    let boundary = "lanyardportalform7d1c";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p.filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n",
                    p.name
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"\r\n\r\n",
                    p.name
                )
                .as_bytes(),
            ),
        }
        body.extend_from_slice(p.bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    c.post(format!("{}{path}", s.url))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}
