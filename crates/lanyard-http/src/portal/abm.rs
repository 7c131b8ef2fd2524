//! The portal's ABM page: Apple Business Manager server tokens (name, organisation, expiry,
//! last sync, the "Account Driven" column), adding a token (a key pair, its public key to
//! download for ABM, then the token file ABM gives, optionally as the default token for
//! account-driven enrollment), making a token the default, and syncing one: the sync runs in
//! the background and the token's row shows its progress (polled by `portal.js` from
//! `/portal/abm/{name}/progress`) until it is done, then its result.
//! Every change goes through `AbmService`, which checks roles and writes the audit lines.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use axum::Json;
use serde_json::json;

use lanyard_core::abm::MAX_TOKEN_FILE;

use super::upload::{ChangeUpload, UploadPage};
use super::{
    error_page, layout, notice, or_dash, refused, table, when, ChangeForm, Done, Nav, Notice,
    Session, Viewer,
};
use crate::html::{html, qv, see_other};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/portal/abm", get(tokens).post(new_key_pair))
        .route(
            "/portal/abm/upload",
            post(upload).layer(DefaultBodyLimit::max(MAX_TOKEN_FILE + 16 * 1024)),
        )
        .route("/portal/abm/{name}/certificate", get(certificate))
        .route("/portal/abm/{name}/default", post(make_default))
        .route("/portal/abm/{name}/sync", post(sync))
        .route("/portal/abm/{name}/progress", get(sync_progress))
}

/// The ABM page's upload form (a token file).
struct AbmPage;

impl UploadPage for AbmPage {
    const NAME: &'static str = "the ABM page";
    const TOO_LARGE: &'static str = "The file is too large for an ABM token file.";
}

async fn tokens(State(s): State<AppState>, Viewer(sess): Viewer, done: Done) -> Response {
    let done = done.notice(|done, name| match done {
        "created" => Some(format!(
            "Key pair for {name} created. Download its public key, upload it to your MDM server \
             in Apple Business Manager, then upload the token file Apple gives you."
        )),
        "uploaded" => Some(format!("Token file for {name} uploaded.")),
        "sync" => Some(format!(
            "Sync of {name} started; its progress shows in the Last sync column."
        )),
        "default" => Some(format!(
            "{name} is now the default token for account driven enrollment."
        )),
        _ => None,
    });
    tokens_page(&s, &sess, StatusCode::OK, done).await
}

async fn tokens_page(
    s: &AppState,
    sess: &Session,
    status: StatusCode,
    message: Option<Notice>,
) -> Response {
    let list = match s.abm.list().await {
        Ok(l) => l,
        Err(e) => return error_page(Some(sess), e),
    };
    let body = html! {
        (notice(message))
        @if list.is_empty() {
            p .muted { "No server tokens yet." }
        } @else {
            (table(
                Some("tokens"),
                &[
                    "Name",
                    "Organisation",
                    "State",
                    "Expires",
                    "Last sync",
                    "Devices",
                    "Account Driven",
                    "Actions",
                ],
                html! {
                    @for t in &list {
                        @let n = qv(&t.name);
                        tr data-token=(t.name) {
                            td { (t.name) }
                            td { (or_dash(t.org_name.as_deref())) }
                            td { (t.state.replace('_', " ")) }
                            td {
                                @match (&t.token_expires_at, t.days_left) {
                                    (Some(at), Some(days)) => {
                                        (when(Some(*at))) " (" (days) " days left)"
                                    }
                                    _ => "—",
                                }
                                @if let Some(w) = t.warning.as_deref() {
                                    br;
                                    span .warn { (w) }
                                }
                            }
                            td {
                                @match &t.last_sync_at {
                                    Some(at) => {
                                        (when(Some(*at))) " " (or_dash(t.last_sync_status.as_deref()))
                                    }
                                    None => "Never",
                                }
                                @match s.abm.progress(&t.name) {
                                    Some(p) if p.running() => {
                                        br;
                                        span .sync-progress role="status" aria-live="polite"
                                            data-poll={ "/portal/abm/" (n) "/progress" } {
                                            (p.text())
                                        }
                                    }
                                    Some(p) => {
                                        br;
                                        span .sync-progress role="status" { (p.text()) }
                                    }
                                    None => {}
                                }
                            }
                            td { (t.devices) }
                            td .account-driven {
                                (if t.default_account_driven { "Default" } else { "—" })
                            }
                            td .row-actions {
                                a href={ "/portal/abm/" (n) "/certificate" } download {
                                    "Download public key"
                                }
                                @if !t.default_account_driven && t.state == "active" {
                                    form method="post" action={ "/portal/abm/" (n) "/default" } {
                                        (sess.csrf_field())
                                        button type="submit" .small { "Make default" }
                                    }
                                }
                                @if t.state == "active" {
                                    form method="post" action={ "/portal/abm/" (n) "/sync" } {
                                        (sess.csrf_field())
                                        button type="submit" .small { "Sync now" }
                                    }
                                }
                            }
                        }
                    }
                },
            ))
        }
        h2 { "Add a server token" }
        h3 { "1. Create a key pair" }
        form method="post" action="/portal/abm" .grid-form {
            (sess.csrf_field())
            label for="new_name" { "Name" }
            input #new_name name="name" required maxlength="64" pattern="[A-Za-z0-9._-]+";
            button type="submit" { "Create key pair" }
        }
        @if !list.is_empty() {
            h3 { "2. Upload the token file" }
            form method="post" action="/portal/abm/upload" enctype="multipart/form-data"
                .grid-form {
                (sess.csrf_field())
                label for="token_name" { "Name" }
                select #token_name name="name" {
                    @for t in &list {
                        option value=(t.name) { (t.name) }
                    }
                }
                label for="token_file" { "Token file (.p7m from Apple Business Manager)" }
                input #token_file type="file" name="token" accept=".p7m" required;
                label .check {
                    input type="checkbox" name="default" value="on";
                    " Default token for account driven enrollment"
                }
                button type="submit" { "Upload token" }
            }
        }
    };
    layout(sess, status, Nav::Abm, "Apple Business Manager", body)
}

async fn new_key_pair(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let name = f.get("name").trim().to_string();
    match s.abm.new_token(&sess.actor, &name).await {
        Ok(_) => see_other(&format!("/portal/abm?done=created&name={}", qv(&name))),
        Err(e) => {
            let (status, message) = refused("", e);
            tokens_page(&s, &sess, status, message).await
        }
    }
}

async fn certificate(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    Path(name): Path<String>,
) -> Response {
    match s.abm.certificate_pem(&name).await {
        Ok(pem) => {
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            (
                [
                    (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"lanyard-abm-{file}.pem\""),
                    ),
                ],
                pem,
            )
                .into_response()
        }
        Err(e) => error_page(Some(&sess), e),
    }
}

async fn upload(
    State(s): State<AppState>,
    ChangeUpload { sess, fields, .. }: ChangeUpload<AbmPage>,
) -> Response {
    let name = fields.text("name").trim().to_string();
    let default = !fields.first("default").is_empty();
    let file = fields.first("token");
    if file.is_empty() {
        return tokens_page(
            &s,
            &sess,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(Notice::Error("Choose the token file.".into())),
        )
        .await;
    }
    match s.abm.upload(&sess.actor, &name, file, default).await {
        Ok(_) => see_other(&format!("/portal/abm?done=uploaded&name={}", qv(&name))),
        Err(e) => {
            let (status, message) = refused("Nothing was changed.", e);
            tokens_page(&s, &sess, status, message).await
        }
    }
}

async fn make_default(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, _): ChangeForm,
) -> Response {
    match s.abm.set_default(&sess.actor, &name).await {
        Ok(_) => see_other(&format!("/portal/abm?done=default&name={}", qv(&name))),
        Err(e) => {
            let (status, message) = refused("", e);
            tokens_page(&s, &sess, status, message).await
        }
    }
}

async fn sync(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, _): ChangeForm,
) -> Response {
    // The sync runs in the background (holding the token's lease); the page shows its progress.
    match s.abm.start_sync(&sess.actor, &name).await {
        Ok(_) => see_other(&format!("/portal/abm?done=sync&name={}", qv(&name))),
        Err(e) => {
            let (status, message) = refused("", e);
            tokens_page(&s, &sess, status, message).await
        }
    }
}

/// The progress of this server's latest sync of a token, as `portal.js` polls it:
/// `{text, state, pages, devices_seen, devices_stored, waiting}` (`waiting` is 1 while running).
async fn sync_progress(
    State(s): State<AppState>,
    _viewer: Viewer,
    Path(name): Path<String>,
) -> Response {
    match s.abm.progress(&name) {
        Some(p) => Json(json!({
            "text": p.text(),
            "state": p.state,
            "pages": p.pages,
            "devices_seen": p.devices_seen,
            "devices_stored": p.devices_stored,
            "error": p.error,
            "waiting": u8::from(p.running()),
        }))
        .into_response(),
        None => crate::ApiError::from(lanyard_core::CoreError::NotFound(format!(
            "no sync of `{name}` was started on this server"
        )))
        .into_response(),
    }
}
