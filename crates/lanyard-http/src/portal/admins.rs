//! The Administrators page: who may use the portal and the API, with what role; add one, set a
//! password (which ends that administrator's other sessions), forget failed sign-ins
//! (`lanyard admin unlock`), disable, enable and remove. Every change goes through the domain
//! (`lanyard_core::admins`), which audits it and refuses to disable or remove the last enabled
//! Administrator.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use lanyard_core::admins::Role;

use super::{
    enabled_field, error_page, layout, notice, refused, table, ChangeForm, Done, Fields, Nav,
    Notice, Session, Viewer,
};
use crate::auth::{cookie, SESSION_COOKIE};
use crate::html::{html, see_other};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/portal/admins", get(admins).post(add_admin))
        .route("/portal/admins/{name}/password", post(set_password))
        .route("/portal/admins/{name}/unlock", post(unlock))
        .route("/portal/admins/{name}/enabled", post(set_enabled))
        .route("/portal/admins/{name}/remove", post(remove))
}

async fn admins(State(s): State<AppState>, Viewer(sess): Viewer, done: Done) -> Response {
    let done = done.notice(|done, _| match done {
        "added" => Some("Administrator added.".into()),
        "password" => Some("Password set; that administrator's other sessions were ended.".into()),
        "unlocked" => Some("Failed sign-ins forgotten.".into()),
        "disabled" => Some("Administrator disabled; their sessions were ended.".into()),
        "enabled" => Some("Administrator enabled.".into()),
        "removed" => Some("Administrator removed.".into()),
        _ => None,
    });
    admins_page(&s, &sess, StatusCode::OK, done, &Fields(Vec::new())).await
}

async fn admins_page(
    s: &AppState,
    sess: &Session,
    status: StatusCode,
    message: Option<Notice>,
    form: &Fields,
) -> Response {
    let list = match s.lanyard.list_admins().await {
        Ok(l) => l,
        Err(e) => return error_page(Some(sess), e),
    };
    let write = !sess.read_only();
    let read_only_role = form.get("role") == "read-only";
    let body = html! {
        (notice(message))
        p {
            "Failed sign-ins slow down further tries for that name from that address only (see \
             the README, " em { "Sign-in throttling" } "); “Forget failed sign-ins” clears them \
             from every address. Setting a password ends that administrator's other sessions. \
             The last enabled Administrator cannot be disabled or removed."
        }
        (table(Some("admins"), &["Name", "Role", "State", "Sign-ins", "Actions"], html! {
            @for a in &list {
                @let me = a.username == sess.username();
                @let name = &a.username;
                tr {
                    td { (name) @if me { " (you)" } }
                    td {
                        @match a.role {
                            Role::Administrator => "Administrator",
                            Role::ReadOnly => "Read-only",
                        }
                    }
                    td { (if a.enabled { "Enabled" } else { "Disabled" }) }
                    td { (if a.locked { "Sign-ins slowed after failures" } else { "—" }) }
                    td .row-actions {
                        // Anyone may set their own password; changing others is for
                        // Administrators.
                        @if write || me {
                            form method="post" action={ "/portal/admins/" (name) "/password" } {
                                (sess.csrf_field())
                                label .sr-only for={ "pw-" (name) } { "New password for " (name) }
                                input #{ "pw-" (name) } type="password" name="password"
                                    placeholder="New password" autocomplete="new-password"
                                    minlength="10" required;
                                button type="submit" .small { "Set password" }
                            }
                        }
                        @if write {
                            @if a.locked {
                                form method="post" action={ "/portal/admins/" (name) "/unlock" } {
                                    (sess.csrf_field())
                                    button type="submit" .small { "Forget failed sign-ins" }
                                }
                            }
                            @let (value, label) =
                                if a.enabled { ("false", "Disable") } else { ("true", "Enable") };
                            form method="post" action={ "/portal/admins/" (name) "/enabled" } {
                                (sess.csrf_field())
                                input type="hidden" name="enabled" value=(value);
                                button type="submit" .small { (label) }
                            }
                            form method="post" action={ "/portal/admins/" (name) "/remove" } {
                                (sess.csrf_field())
                                button type="submit" .small.danger { "Remove" }
                            }
                        }
                    }
                }
            }
        }))
        @if write {
            h2 { "Add an administrator" }
            form method="post" action="/portal/admins" .grid-form {
                (sess.csrf_field())
                label for="username" { "Name" }
                input #username name="username" value=(form.get("username")) required;
                label for="role" { "Role" }
                select #role name="role" {
                    option value="administrator" selected[!read_only_role] { "Administrator" }
                    option value="read-only" selected[read_only_role] { "Read-only" }
                }
                label for="password" { "Password (at least 10 characters)" }
                input #password type="password" name="password" autocomplete="new-password"
                    required;
                button type="submit" { "Add administrator" }
            }
        }
    };
    layout(sess, status, Nav::Admins, "Administrators", body)
}

/// After a change: back to the list with a notice, or the list with the refusal explained.
async fn after(
    s: &AppState,
    sess: &Session,
    outcome: lanyard_core::Result<()>,
    done: &str,
    form: &Fields,
) -> Response {
    match outcome {
        Ok(()) => see_other(&format!("/portal/admins?done={done}")),
        Err(e) => {
            let (status, message) = refused("", e);
            admins_page(s, sess, status, message, form).await
        }
    }
}

async fn add_admin(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let role: Role = match lanyard_core::admins::parse_role(f.get("role")) {
        Ok(r) => r,
        Err(e) => {
            let (status, message) = refused("", e);
            return admins_page(&s, &sess, status, message, &f).await;
        }
    };
    let outcome = s
        .lanyard
        .create_admin(&sess.actor, f.get("username"), f.get("password"), role)
        .await
        .map(|_| ());
    after(&s, &sess, outcome, "added", &f).await
}

async fn set_password(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    // The session that asked stays signed in when it changes its own password.
    let own = cookie(&headers, SESSION_COOKIE);
    let outcome = s
        .lanyard
        .set_admin_password(&sess.actor, &name, f.get("password"), own)
        .await
        .map(|_| ());
    after(&s, &sess, outcome, "password", &Fields(Vec::new())).await
}

async fn unlock(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, _): ChangeForm,
) -> Response {
    let outcome = s.lanyard.unlock_admin(&sess.actor, &name).await.map(|_| ());
    after(&s, &sess, outcome, "unlocked", &Fields(Vec::new())).await
}

async fn set_enabled(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let enabled = match enabled_field(&sess, &f) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let outcome = s
        .lanyard
        .set_admin_enabled(&sess.actor, &name, enabled)
        .await
        .map(|_| ());
    let done = if enabled { "enabled" } else { "disabled" };
    after(&s, &sess, outcome, done, &Fields(Vec::new())).await
}

async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, _): ChangeForm,
) -> Response {
    let outcome = s.lanyard.remove_admin(&sess.actor, &name).await;
    after(&s, &sess, outcome, "removed", &Fields(Vec::new())).await
}
