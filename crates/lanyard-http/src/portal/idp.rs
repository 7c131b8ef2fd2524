//! The portal's Identity providers page: the OpenID Connect providers people sign in with at
//! enrollment (name, display name, issuer, client id, scopes, email claim, "create users on first
//! sign-in", enabled, and whether a client secret is stored — never the secret itself), adding a
//! provider, editing one (a blank secret field keeps the stored secret), enabling or disabling
//! one, and removing one after a confirmation. Every change goes through the same `Lanyard`
//! methods as the admin API, which check roles, validate and write the audit lines.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use lanyard_core::identity_providers::{
    CreateIdentityProvider, IdentityProviderView, UpdateIdentityProvider, CALLBACK_PATH,
};

use super::{
    error_page, layout, notice, refused, table, ChangeForm, Done, Fields, Nav, Notice, Session,
    Viewer,
};
use crate::html::{html, qv, see_other, Markup};
use crate::AppState;

const LIST: &str = "/portal/identity-providers";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(LIST, get(list).post(create))
        .route("/portal/identity-providers/{name}", get(edit).post(update))
        .route(
            "/portal/identity-providers/{name}/enabled",
            post(set_enabled),
        )
        .route("/portal/identity-providers/{name}/remove", post(remove))
}

/// The values typed into the add or edit form, shown again after a refusal (never the secret).
#[derive(Default)]
struct Typed {
    name: String,
    display_name: String,
    issuer: String,
    client_id: String,
    scopes: String,
    email_claim: String,
    allow_create_users: bool,
    enabled: bool,
}

impl Typed {
    fn blank() -> Self {
        Self {
            scopes: "email profile".into(),
            email_claim: "email".into(),
            enabled: true,
            ..Self::default()
        }
    }

    fn from_form(f: &Fields) -> Self {
        Self {
            name: f.get("name").trim().to_string(),
            display_name: f.get("display_name").to_string(),
            issuer: f.get("issuer").to_string(),
            client_id: f.get("client_id").to_string(),
            scopes: f.get("scopes").to_string(),
            email_claim: f.get("email_claim").to_string(),
            allow_create_users: f.checked("allow_create_users"),
            enabled: f.checked("enabled"),
        }
    }

    fn from_view(p: &IdentityProviderView) -> Self {
        Self {
            name: p.name.clone(),
            display_name: p.display_name.clone(),
            issuer: p.issuer.clone(),
            client_id: p.client_id.clone(),
            scopes: p.scopes.join(" "),
            email_claim: p.email_claim.clone(),
            allow_create_users: p.allow_create_users,
            enabled: p.enabled,
        }
    }
}

fn scopes_of(raw: &str) -> Vec<String> {
    raw.split_whitespace().map(str::to_string).collect()
}

fn yes_no(on: bool) -> &'static str {
    if on {
        "Yes"
    } else {
        "No"
    }
}

/// The fields shared by the add and edit forms.
fn provider_fields(t: &Typed, secret_hint: &str) -> Markup {
    html! {
        label for="idp_display_name" { "Display name (what the sign-in button says)" }
        input #idp_display_name name="display_name" maxlength="100" value=(t.display_name);
        label for="idp_issuer" { "Issuer URL" }
        input #idp_issuer name="issuer" required maxlength="2000"
            placeholder="https://login.example.com" value=(t.issuer);
        label for="idp_client_id" { "Client id" }
        input #idp_client_id name="client_id" required maxlength="200" value=(t.client_id);
        label for="idp_client_secret" { "Client secret (" (secret_hint) ")" }
        input #idp_client_secret type="password" name="client_secret" maxlength="1000"
            autocomplete="new-password";
        label for="idp_scopes" { "Scopes besides openid (separated by spaces)" }
        input #idp_scopes name="scopes" maxlength="2000" value=(t.scopes);
        label for="idp_email_claim" { "Email claim" }
        input #idp_email_claim name="email_claim" required maxlength="100" value=(t.email_claim);
        label .check {
            input type="checkbox" name="allow_create_users" value="on"
                checked[t.allow_create_users];
            " Create users on first sign-in"
        }
        label .check {
            input type="checkbox" name="enabled" value="on" checked[t.enabled];
            " Enabled"
        }
    }
}

async fn list(State(s): State<AppState>, Viewer(sess): Viewer, done: Done) -> Response {
    let done = done.notice(|done, name| match done {
        "added" => Some(format!("Identity provider {name} added.")),
        "saved" => Some(format!("Identity provider {name} saved.")),
        "enabled" => Some(format!("Identity provider {name} enabled.")),
        "disabled" => Some(format!("Identity provider {name} disabled.")),
        "removed" => Some(format!("Identity provider {name} removed.")),
        _ => None,
    });
    list_page(&s, &sess, StatusCode::OK, done, &Typed::blank()).await
}

async fn list_page(
    s: &AppState,
    sess: &Session,
    status: StatusCode,
    message: Option<Notice>,
    typed: &Typed,
) -> Response {
    let providers = match s.lanyard.list_identity_providers().await {
        Ok(l) => l,
        Err(e) => return error_page(Some(sess), e),
    };
    let body = html! {
        (notice(message))
        p .muted {
            "Register " code { (CALLBACK_PATH) }
            " under this server's public address as the redirect URI at the provider."
        }
        @if providers.is_empty() {
            p .muted {
                "No identity providers yet: people sign in at enrollment with a Lanyard password."
            }
        } @else {
            (table(
                Some("identity-providers"),
                &[
                    "Name",
                    "Display name",
                    "Issuer",
                    "Client id",
                    "Scopes",
                    "Email claim",
                    "Create users on first sign-in",
                    "Enabled",
                    "Secret set",
                    "Actions",
                ],
                html! {
                    @for p in &providers {
                        @let n = qv(&p.name);
                        @let (toggle_value, toggle_label) =
                            if p.enabled { ("off", "Disable") } else { ("on", "Enable") };
                        tr data-provider=(p.name) {
                            td { (p.name) }
                            td { (p.display_name) }
                            td { (p.issuer) }
                            td { (p.client_id) }
                            td { (p.scopes.join(" ")) }
                            td { (p.email_claim) }
                            td { (yes_no(p.allow_create_users)) }
                            td .enabled { (yes_no(p.enabled)) }
                            td .secret-set { (yes_no(p.client_secret_set)) }
                            td .row-actions {
                                a href={ "/portal/identity-providers/" (n) } { "Edit" }
                                form method="post"
                                    action={ "/portal/identity-providers/" (n) "/enabled" } {
                                    (sess.csrf_field())
                                    input type="hidden" name="enabled" value=(toggle_value);
                                    button type="submit" .small { (toggle_label) }
                                }
                            }
                        }
                    }
                },
            ))
        }
        h2 { "Add identity provider" }
        form method="post" action=(LIST) .grid-form {
            (sess.csrf_field())
            label for="idp_name" { "Name (lower-case letters, digits and dashes)" }
            input #idp_name name="name" required maxlength="40" pattern="[a-z0-9][a-z0-9-]*"
                value=(typed.name);
            (provider_fields(typed, "leave blank for a public client"))
            button type="submit" { "Add identity provider" }
        }
    };
    layout(
        sess,
        status,
        Nav::IdentityProviders,
        "Identity providers",
        body,
    )
}

async fn create(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let typed = Typed::from_form(&f);
    let input = CreateIdentityProvider {
        name: typed.name.clone(),
        display_name: Some(typed.display_name.trim())
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        issuer: typed.issuer.clone(),
        client_id: typed.client_id.clone(),
        client_secret: Some(f.get("client_secret"))
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        scopes: Some(scopes_of(&typed.scopes)),
        email_claim: Some(typed.email_claim.clone()),
        allow_create_users: Some(typed.allow_create_users),
        enabled: Some(typed.enabled),
    };
    match s
        .lanyard
        .create_identity_provider(&sess.actor, &s.secrets, input)
        .await
    {
        Ok(p) => see_other(&format!("{LIST}?done=added&name={}", qv(&p.name))),
        Err(e) => {
            let (status, message) = refused("Nothing was added.", e);
            list_page(&s, &sess, status, message, &typed).await
        }
    }
}

async fn edit(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    Path(name): Path<String>,
) -> Response {
    edit_page(&s, &sess, &name, StatusCode::OK, None, None).await
}

async fn edit_page(
    s: &AppState,
    sess: &Session,
    name: &str,
    status: StatusCode,
    message: Option<Notice>,
    typed: Option<Typed>,
) -> Response {
    let p = match s.lanyard.identity_provider(name).await {
        Ok(p) => p,
        Err(e) => return error_page(Some(sess), e),
    };
    let typed = typed.unwrap_or_else(|| Typed::from_view(&p));
    let n = qv(&p.name);
    let secret_hint = if p.client_secret_set {
        "a secret is set; leave blank to keep it"
    } else {
        "none is set; leave blank for a public client"
    };
    let body = html! {
        (notice(message))
        p { a href=(LIST) { "← All identity providers" } }
        form method="post" action={ "/portal/identity-providers/" (n) } .grid-form {
            (sess.csrf_field())
            (provider_fields(&typed, secret_hint))
            button type="submit" { "Save" }
        }
        form method="post" action={ "/portal/identity-providers/" (n) "/remove" } .danger {
            (sess.csrf_field())
            label .check {
                input type="checkbox" name="confirm" value="yes" required;
                " Remove " (p.name) ": people can no longer sign in with it at enrollment"
            }
            button type="submit" .danger { "Remove" }
        }
    };
    layout(
        sess,
        status,
        Nav::IdentityProviders,
        &format!("Identity provider {}", p.name),
        body,
    )
}

async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let mut typed = Typed::from_form(&f);
    typed.name = name.clone();
    let input = UpdateIdentityProvider {
        display_name: Some(typed.display_name.trim())
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        issuer: Some(typed.issuer.clone()),
        client_id: Some(typed.client_id.clone()),
        // A blank secret field keeps the stored secret.
        client_secret: Some(f.get("client_secret"))
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        scopes: Some(scopes_of(&typed.scopes)),
        email_claim: Some(typed.email_claim.clone()),
        allow_create_users: Some(typed.allow_create_users),
        enabled: Some(typed.enabled),
    };
    match s
        .lanyard
        .update_identity_provider(&sess.actor, &s.secrets, &name, input)
        .await
    {
        Ok(p) => see_other(&format!("{LIST}?done=saved&name={}", qv(&p.name))),
        Err(e) => {
            let (status, message) = refused("Nothing was changed.", e);
            edit_page(&s, &sess, &name, status, message, Some(typed)).await
        }
    }
}

async fn set_enabled(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let enabled = match f.get("enabled") {
        "on" => true,
        "off" => false,
        _ => {
            return list_page(
                &s,
                &sess,
                StatusCode::BAD_REQUEST,
                Some(Notice::Error(
                    "Nothing was changed: the form did not say whether to enable or disable."
                        .into(),
                )),
                &Typed::blank(),
            )
            .await
        }
    };
    let input = UpdateIdentityProvider {
        enabled: Some(enabled),
        ..UpdateIdentityProvider::default()
    };
    match s
        .lanyard
        .update_identity_provider(&sess.actor, &s.secrets, &name, input)
        .await
    {
        Ok(p) => {
            let done = if p.enabled { "enabled" } else { "disabled" };
            see_other(&format!("{LIST}?done={done}&name={}", qv(&p.name)))
        }
        Err(e) => {
            let (status, message) = refused("Nothing was changed.", e);
            list_page(&s, &sess, status, message, &Typed::blank()).await
        }
    }
}

async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    if !f.checked("confirm") {
        return edit_page(
            &s,
            &sess,
            &name,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(Notice::Error(
                "Tick the confirmation box to remove this identity provider.".into(),
            )),
            None,
        )
        .await;
    }
    match s.lanyard.delete_identity_provider(&sess.actor, &name).await {
        Ok(()) => see_other(&format!("{LIST}?done=removed&name={}", qv(&name))),
        Err(e) => {
            let (status, message) = refused("Nothing was removed.", e);
            list_page(&s, &sess, status, message, &Typed::blank()).await
        }
    }
}
