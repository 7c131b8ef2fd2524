//! Portal pages for administration: users (list, add, disable, reset password), enrollment
//! settings and custom attribute definitions, the APNs certificate, and the audit log.

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use chrono::{DateTime, NaiveDate, Utc};
use lanyard_core::attributes::DefineAttribute;
use lanyard_core::push::PushCertificateUpload;
use lanyard_core::settings::{
    parse_inactive_after_days, parse_min_version, EnrollmentSettings, OwnershipMode, SettingsPatch,
    TrustProfile,
};
use lanyard_core::users::{CreateUser, UpdateUser};
use lanyard_core::CoreError;
use lanyard_store::{AuditSearch, ListQuery};

use super::upload::{ChangeUpload, UploadPage};
use super::{
    enabled_field, error_page, layout, message_page, notice, or_dash, page_number, pager, refused,
    table, when, ChangeForm, Done, Fields, Nav, Notice, Session, Viewer, PAGE_SIZE,
};
use crate::html::{html, qv, see_other};
use crate::AppState;

/// The largest APNs certificate upload (PKCS#12 or PEM files are a few KiB).
pub const UPLOAD_LIMIT: usize = 256 * 1024;

pub fn routes() -> axum::Router<AppState> {
    Router::new()
        .route("/portal/users", get(users).post(add_user))
        .route("/portal/users/{id}/enabled", post(set_enabled))
        .route("/portal/users/{id}/password", post(reset_password))
        .route("/portal/settings", get(settings).post(save_settings))
        .route("/portal/settings/attributes", post(define_attribute))
        .route("/portal/settings/attributes/delete", post(delete_attribute))
        .route(
            "/portal/apns",
            get(apns)
                .post(upload_apns)
                .layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/portal/apns/request", post(create_apns_request))
        .route("/portal/apns/request.csr", get(apns_request_csr))
        .route(
            "/portal/apns/request/sign",
            post(sign_apns_request).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route(
            "/portal/apns/request/signing-service",
            post(send_apns_request),
        )
        .route(
            "/portal/apns/request/decrypt",
            post(decrypt_apns_reply).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/portal/audit", get(audit))
}

// ---------------------------------------------------------------------------------------------
// Users

#[derive(Deserialize, Default)]
struct UsersQuery {
    search: Option<String>,
    page: Option<String>,
    done: Option<String>,
}

async fn users(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    q: Result<Query<UsersQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return message_page(
            Some(&sess),
            StatusCode::BAD_REQUEST,
            "Users",
            "The search could not be read.",
        );
    };
    let page = match page_number(&sess, q.page.as_deref()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let done = match q.done.as_deref() {
        Some("added") => Some(Notice::Ok("User added.".into())),
        Some("disabled") => Some(Notice::Ok("User disabled.".into())),
        Some("enabled") => Some(Notice::Ok("User enabled.".into())),
        Some("password") => Some(Notice::Ok("Password reset.".into())),
        _ => None,
    };
    users_page(
        &s,
        &sess,
        StatusCode::OK,
        q.search.unwrap_or_default(),
        page,
        done,
        &Fields(Vec::new()),
    )
    .await
}

async fn users_page(
    s: &AppState,
    sess: &Session,
    status: StatusCode,
    search: String,
    page: i64,
    message: Option<Notice>,
    form: &Fields,
) -> Response {
    if search.len() > 200 {
        return message_page(
            Some(sess),
            StatusCode::BAD_REQUEST,
            "Users",
            "The search text is too long (200 characters at most).",
        );
    }
    let mut list = match s
        .lanyard
        .list_users(&ListQuery {
            search: Some(search.clone()).filter(|s| !s.trim().is_empty()),
            offset: (page - 1) * PAGE_SIZE,
            limit: PAGE_SIZE + 1,
        })
        .await
    {
        Ok(l) => l,
        Err(e) => return error_page(Some(sess), e),
    };
    let more = list.len() as i64 > PAGE_SIZE;
    list.truncate(PAGE_SIZE as usize);
    let body = html! {
        (notice(message))
        form method="get" action="/portal/users" .search role="search" {
            label for="search" { "Search email or name" }
            input #search type="search" name="search" value=(search) maxlength="200";
            button type="submit" { "Search" }
        }
        @if list.is_empty() {
            p .muted { "No users match." }
        } @else {
            (table(
                Some("users"),
                &["Email", "Managed Apple ID", "Name", "State", "Actions"],
                html! {
                    @for u in &list {
                        @let (toggle_value, toggle_label) =
                            if u.enabled { ("false", "Disable") } else { ("true", "Enable") };
                        tr {
                            td { (u.email) }
                            td { (or_dash(u.managed_apple_id.as_deref())) }
                            td { (u.display_name) }
                            td { (if u.enabled { "Enabled" } else { "Disabled" }) }
                            td .row-actions {
                                form method="post" action={ "/portal/users/" (u.id) "/enabled" } {
                                    (sess.csrf_field())
                                    input type="hidden" name="enabled" value=(toggle_value);
                                    button type="submit" .small { (toggle_label) }
                                }
                                form method="post" action={ "/portal/users/" (u.id) "/password" } {
                                    (sess.csrf_field())
                                    label .sr-only for={ "pw-" (u.id) } { "New password for " (u.email) }
                                    input #{ "pw-" (u.id) } type="password" name="password"
                                        placeholder="New password" autocomplete="new-password"
                                        minlength="10" required;
                                    button type="submit" .small { "Reset password" }
                                }
                            }
                        }
                    }
                },
            ))
        }
        (pager(&format!("/portal/users?search={}", qv(&search)), page, more))
        h2 { "Add a user" }
        form method="post" action="/portal/users" .grid-form {
            (sess.csrf_field())
            label for="email" { "Email" }
            input #email type="email" name="email" value=(form.get("email")) required;
            label for="display_name" { "Name" }
            input #display_name name="display_name" value=(form.get("display_name"));
            label for="managed_apple_id" { "Managed Apple ID (optional)" }
            input #managed_apple_id type="email" name="managed_apple_id"
                value=(form.get("managed_apple_id"));
            label for="password" { "Password (at least 10 characters)" }
            input #password type="password" name="password" autocomplete="new-password";
            button type="submit" { "Add user" }
        }
    };
    layout(sess, status, Nav::Users, "Users", body)
}

fn some(v: &str) -> Option<String> {
    Some(v.trim().to_string()).filter(|v| !v.is_empty())
}

async fn add_user(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let input = CreateUser {
        email: f.get("email").to_string(),
        display_name: some(f.get("display_name")),
        password: Some(f.get("password").to_string()).filter(|p| !p.is_empty()),
        managed_apple_id: some(f.get("managed_apple_id")),
    };
    match s.lanyard.create_user(&sess.actor, input).await {
        Ok(_) => see_other("/portal/users?done=added"),
        Err(e) => {
            let (status, message) = refused("", e);
            users_page(&s, &sess, status, String::new(), 1, message, &f).await
        }
    }
}

async fn user_change(
    s: &AppState,
    sess: &Session,
    id: i64,
    input: UpdateUser,
    done: &str,
) -> Response {
    match s
        .lanyard
        .update_user(&sess.actor, &id.to_string(), input)
        .await
    {
        Ok(_) => see_other(&format!("/portal/users?done={done}")),
        Err(e) => {
            let (status, message) = refused("", e);
            users_page(
                s,
                sess,
                status,
                String::new(),
                1,
                message,
                &Fields(Vec::new()),
            )
            .await
        }
    }
}

async fn set_enabled(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let enabled = match enabled_field(&sess, &f) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let done = if enabled { "enabled" } else { "disabled" };
    let input = UpdateUser {
        enabled: Some(enabled),
        ..UpdateUser::default()
    };
    user_change(&s, &sess, id, input, done).await
}

async fn reset_password(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let input = UpdateUser {
        password: Some(f.get("password").to_string()),
        ..UpdateUser::default()
    };
    user_change(&s, &sess, id, input, "password").await
}

// ---------------------------------------------------------------------------------------------
// Settings and custom attributes

async fn settings(State(s): State<AppState>, Viewer(sess): Viewer, done: Done) -> Response {
    let done = done.notice(|done, _| match done {
        "saved" => Some("Settings saved.".into()),
        "attribute" => Some("Custom attribute added.".into()),
        "deleted" => Some("Custom attribute deleted.".into()),
        _ => None,
    });
    settings_page(&s, &sess, StatusCode::OK, done, None).await
}

async fn settings_page(
    s: &AppState,
    sess: &Session,
    status: StatusCode,
    message: Option<Notice>,
    shown: Option<&Fields>,
) -> Response {
    let current: EnrollmentSettings = match s.lanyard.enrollment_settings().await {
        Ok(v) => v,
        Err(e) => return error_page(Some(sess), e),
    };
    let attrs = match s.lanyard.list_attributes().await {
        Ok(v) => v,
        Err(e) => return error_page(Some(sess), e),
    };
    // After a refused save, show what was typed so it can be corrected.
    let min = shown
        .map(|f| f.get("min_macos_version").to_string())
        .unwrap_or_else(|| current.min_macos_version.to_string());
    let domains = shown
        .map(|f| f.get("managed_domains").to_string())
        .unwrap_or_else(|| current.managed_domains.join(", "));
    let inactive = shown
        .map(|f| f.get("inactive_after_days").to_string())
        .unwrap_or_else(|| current.inactive_after_days.to_string());
    let trust_options = [
        (
            TrustProfile::Auto,
            "Automatic: only while Lanyard serves its own TLS certificate",
        ),
        (TrustProfile::Always, "Always"),
        (
            TrustProfile::Never,
            "Never (the TLS chain is publicly trusted)",
        ),
    ];
    let prompt = current.ownership_mode == OwnershipMode::Prompt;
    let body = html! {
        (notice(message))
        form method="post" action="/portal/settings" .settings {
            (sess.csrf_field())
            fieldset {
                legend { "Directory and Enrollment" }
                label for="ownership_mode" { "Default ownership mode" }
                select #ownership_mode name="ownership_mode" {
                    option value="prompt" selected[prompt] { "Prompt user for ownership" }
                    option value="employee" selected[!prompt] { "Employee owned (do not ask)" }
                }
                label for="min_macos_version" { "Minimum macOS version" }
                input #min_macos_version name="min_macos_version" value=(min) required
                    maxlength="20";
                label for="managed_domains" { "Managed domains (comma separated)" }
                input #managed_domains name="managed_domains" value=(domains) maxlength="4000";
                label for="install_trust_profile" {
                    "Install Lanyard's root certificate on enrolled Macs"
                }
                select #install_trust_profile name="install_trust_profile" {
                    @for (v, label) in &trust_options {
                        option value=(v.as_str()) selected[*v == current.install_trust_profile] {
                            (label)
                        }
                    }
                }
                label for="inactive_after_days" {
                    "Mark enrollments inactive after this many days without a request (0: never)"
                }
                input #inactive_after_days name="inactive_after_days" value=(inactive)
                    inputmode="numeric" maxlength="4";
            }
            fieldset {
                legend { "Advanced management for Apple devices" }
                label .check {
                    input type="checkbox" #manage_only_corporate_resources
                        name="manage_only_corporate_resources" value="on"
                        checked[current.manage_only_corporate_resources];
                    " User enrollment mode: manage only corporate resources"
                }
            }
            fieldset {
                legend { "User settings" }
                label .check {
                    input type="checkbox" #use_email_as_managed_apple_id
                        name="use_email_as_managed_apple_id" value="on"
                        checked[current.use_email_as_managed_apple_id];
                    " Use email address as managed Apple ID"
                }
            }
            button type="submit" { "Save settings" }
        }
        h2 { "Custom attributes" }
        @if attrs.is_empty() {
            p .muted { "No custom attributes are defined." }
        } @else {
            (table(None, &["Name", "Type", "Required", "Choices", "Actions"], html! {
                @for a in &attrs {
                    tr {
                        td { (a.name) }
                        td { (a.kind.as_str()) }
                        td { (if a.required { "Required" } else { "Optional" }) }
                        td { (a.choices.join(", ")) }
                        td {
                            form method="post" action="/portal/settings/attributes/delete" {
                                (sess.csrf_field())
                                input type="hidden" name="name" value=(a.name);
                                button type="submit" .small { "Delete" }
                            }
                        }
                    }
                }
            }))
        }
        form method="post" action="/portal/settings/attributes" .grid-form {
            (sess.csrf_field())
            label for="attr_name" { "Name" }
            input #attr_name name="name" required maxlength="64";
            label for="attr_kind" { "Type" }
            select #attr_kind name="kind" {
                option value="text" { "Text" }
                option value="number" { "Number" }
                option value="boolean" { "Yes / no" }
                option value="choice" { "Choice" }
            }
            label for="attr_choices" { "Choices (for Choice, comma separated)" }
            input #attr_choices name="choices";
            label .check {
                input type="checkbox" name="required" value="on";
                " Required"
            }
            button type="submit" { "Add attribute" }
        }
    };
    layout(sess, status, Nav::Settings, "Settings", body)
}

/// Builds the settings change from the form; any invalid value refuses the whole form.
fn settings_patch(f: &Fields) -> Result<SettingsPatch, CoreError> {
    let ownership_mode: OwnershipMode = f.get("ownership_mode").parse()?;
    let min = parse_min_version(f.get("min_macos_version").trim())?;
    let domains: Vec<String> = f
        .get("managed_domains")
        .split([',', ' ', '\n', '\r', '\t'])
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    // Fields a form may lack (an older page) leave their settings as they are.
    let present = |name: &str| Some(f.get(name).trim()).filter(|v| !v.is_empty());
    Ok(SettingsPatch {
        ownership_mode: Some(ownership_mode),
        manage_only_corporate_resources: Some(f.checked("manage_only_corporate_resources")),
        use_email_as_managed_apple_id: Some(f.checked("use_email_as_managed_apple_id")),
        min_macos_version: Some(min),
        managed_domains: Some(domains),
        install_trust_profile: present("install_trust_profile")
            .map(str::parse)
            .transpose()?,
        inactive_after_days: present("inactive_after_days")
            .map(parse_inactive_after_days)
            .transpose()?,
    })
}

async fn save_settings(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let result = match settings_patch(&f) {
        Ok(patch) => s
            .lanyard
            .update_enrollment_settings(&sess.actor, patch)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => see_other("/portal/settings?done=saved"),
        Err(e) => {
            let (status, message) = refused("Nothing was saved.", e);
            settings_page(&s, &sess, status, message, Some(&f)).await
        }
    }
}

async fn define_attribute(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let choices: Vec<String> = f
        .get("choices")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let result = match f
        .get("kind")
        .parse::<lanyard_core::attributes::AttributeKind>()
    {
        Ok(kind) => {
            let def = serde_json::from_value::<DefineAttribute>(json!({
                "name": f.get("name"),
                "kind": kind,
                "required": f.checked("required"),
                "choices": choices,
            }))
            .map_err(|e| CoreError::Invalid(format!("the attribute could not be read: {e}")));
            match def {
                Ok(def) => s
                    .lanyard
                    .define_attribute(&sess.actor, def)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => see_other("/portal/settings?done=attribute"),
        Err(e) => {
            let (status, message) = refused("", e);
            settings_page(&s, &sess, status, message, None).await
        }
    }
}

async fn delete_attribute(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    match s.lanyard.delete_attribute(&sess.actor, f.get("name")).await {
        Ok(()) => see_other("/portal/settings?done=deleted"),
        Err(e) => {
            let (status, message) = refused("", e);
            settings_page(&s, &sess, status, message, None).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// APNs certificate

async fn apns(State(s): State<AppState>, Viewer(sess): Viewer, done: Done) -> Response {
    let done = done.notice(|done, _| match done {
        "uploaded" => Some("APNs certificate saved.".into()),
        "requested" => Some("Request made: download its CSR and have it signed (step 2).".into()),
        "sent" => Some(
            "Request sent to the signing service: it emails the signed request, encrypted, to \
             the address you gave. Choose the emailed file below to decrypt it (step 2)."
                .into(),
        ),
        _ => None,
    });
    apns_page(&s, &sess, StatusCode::OK, done).await
}

async fn apns_page(
    s: &AppState,
    sess: &Session,
    status: StatusCode,
    message: Option<Notice>,
) -> Response {
    let current = match s.lanyard.push_certificate_info().await {
        Ok(v) => v,
        Err(e) => return error_page(Some(sess), e),
    };
    let pending = match s.lanyard.push_request().await {
        Ok(p) => p,
        Err(e) => return error_page(Some(sess), e),
    };
    let body = html! {
        (notice(message))
        h2 { "Current certificate" }
        @match &current {
            Some(info) => {
                dl .facts {
                    dt { "Topic" } dd { (info.topic) }
                    dt { "Subject" } dd { (info.subject) }
                    dt { "Issuer" } dd { (info.issuer) }
                    dt { "Expires" } dd { (when(Some(info.not_after))) " (" (info.days_left) " days left)" }
                }
                @if let Some(w) = &info.warning {
                    p .notice.warn role="alert" { (w) }
                }
            }
            None => {
                p .notice.warn {
                    "No APNs certificate has been uploaded: enrollment is closed until one is \
                     (its topic goes into every enrollment profile and can never change \
                     afterwards)."
                }
            }
        }
        h2 { "Get or renew the certificate from Apple" }
        ol .steps {
            li {
                h3 { "Make a request" }
                p {
                    "Lanyard makes a new push key and its certificate signing request (CSR). \
                     The current certificate keeps working until the new one is uploaded."
                }
                @match &pending {
                    Some(r) => {
                        p {
                            "A request made " (when(Some(r.created_at))) " is pending"
                            @if r.signing_service { " (sent to the signing service)" }
                            ": its private key is kept sealed in Lanyard and never leaves it. \
                             Making a new request replaces it."
                        }
                        p {
                            a .button href="/portal/apns/request.csr" download {
                                "Download the CSR (lanyard-push.csr)"
                            }
                        }
                    }
                    None => p { "No request is pending." },
                }
                form method="post" action="/portal/apns/request" {
                    (sess.csrf_field())
                    button type="submit" {
                        (if pending.is_some() { "Make a new request" } else { "Make a request" })
                    }
                }
            }
            li {
                h3 { "Have the CSR signed by an MDM vendor" }
                p {
                    "Apple only takes a CSR signed by an MDM vendor certificate, in a request \
                     file. Choose one way."
                }
                h4 { "With your own vendor certificate" }
                p {
                    "With an Apple Developer Enterprise account's “MDM CSR” certificate, \
                     Lanyard signs the pending request and gives you the request file. The \
                     vendor key is used for this one signature and is not stored."
                }
                @if pending.is_some() {
                    form method="post" action="/portal/apns/request/sign"
                        enctype="multipart/form-data" .grid-form {
                        (sess.csrf_field())
                        label for="vendor" { "Vendor certificate and key (PKCS#12, .p12)" }
                        input #vendor type="file" name="vendor" required accept=".p12,.pfx";
                        label for="vendor-password" { "Its password" }
                        input #vendor-password type="password" name="password" autocomplete="off";
                        label for="wwdr" {
                            "Apple's WWDR intermediate certificate (the one that issued the \
                             vendor certificate)"
                        }
                        input #wwdr type="file" name="apple" required accept=".cer,.crt,.pem,.der";
                        label for="apple-root" { "Apple Inc. root certificate" }
                        input #apple-root type="file" name="apple" required
                            accept=".cer,.crt,.pem,.der";
                        button type="submit" { "Sign and download the request file" }
                    }
                } @else {
                    p { "Make a request first (step 1)." }
                }
                p {
                    "The same on the server (the password is read from standard input): "
                    code {
                        "lanyard push-cert sign --vendor-p12 vendor.p12 --apple-cert \
                         AppleWWDRCA.cer --apple-cert AppleIncRootCertificate.cer --out \
                         push-request.b64"
                    }
                }
                h4 { "With a signing service" }
                p {
                    "Without a vendor certificate, a signing service ("
                    code { (s.signing_service.url()) }
                    ") signs a new request and emails it to you, encrypted to a key Lanyard \
                     keeps for it. This replaces any pending request. The API key is sent to \
                     the service with this request only and is not stored."
                }
                form method="post" action="/portal/apns/request/signing-service" .grid-form {
                    (sess.csrf_field())
                    label for="email" { "Email the signed request to" }
                    input #email type="email" name="email" required autocomplete="email";
                    label for="api-key" { "The service's API key" }
                    input #api-key type="password" name="api_key" required autocomplete="off";
                    button type="submit" { "Send a new request to the signing service" }
                }
                @if pending.as_ref().is_some_and(|r| r.signing_service) {
                    p {
                        "When the service's email arrives, choose its attachment ("
                        code { "….plist.b64.p7" }
                        "): Lanyard decrypts it with the key it keeps for this request and \
                         gives you the request file."
                    }
                    form method="post" action="/portal/apns/request/decrypt"
                        enctype="multipart/form-data" .grid-form {
                        (sess.csrf_field())
                        label for="reply" { "The emailed reply" }
                        input #reply type="file" name="reply" required accept=".p7,.b64,.txt";
                        button type="submit" { "Decrypt and download the request file" }
                    }
                }
            }
            li {
                h3 { "Upload the request file to Apple" }
                p {
                    "Sign in to Apple's Push Certificates Portal ("
                    code { "https://identity.apple.com" }
                    "). For a first certificate choose " strong { "Create a Certificate" }
                    "; to renew, sign in with the " strong { "same Apple Account" }
                    " that made the current certificate and choose " strong { "Renew" }
                    " beside it, so the topic stays the same. A new certificate has a new \
                     topic, and every enrolled Mac would have to enroll again. Download the \
                     certificate Apple issues ("
                    code { "MDM_….pem" }
                    ")."
                }
            }
            li {
                h3 { "Upload the certificate Apple returns" }
                p {
                    "Choose Apple's " code { ".pem" } " file alone below: Lanyard matches it \
                     to the pending request's key, checks its topic, expiry and APNs \
                     environment, and keeps the topic on renewal."
                }
            }
        }
        h2 { "Upload" }
        form method="post" action="/portal/apns" enctype="multipart/form-data" .grid-form {
            (sess.csrf_field())
            label for="certificate" {
                "Certificate: Apple's PEM for the pending request, or PKCS#12 (.p12), or PEM \
                 with its key"
            }
            input #certificate type="file" name="certificate" required
                accept=".p12,.pfx,.pem,.crt,application/x-pkcs12";
            label for="key" { "Private key (PEM, only for a certificate made outside Lanyard)" }
            input #key type="file" name="key" accept=".pem,.key";
            label for="password" { "PKCS#12 password" }
            input #password type="password" name="password" autocomplete="off";
            label .check {
                input type="checkbox" name="force" value="on";
                " Accept a different topic (enrolled devices must then enroll again)"
            }
            button type="submit" { "Upload" }
        }
    };
    layout(sess, status, Nav::Apns, "APNs certificate", body)
}

/// The APNs page again, explaining why `e` refused the step after `prefix` (what was not done;
/// empty when the explanation says it all).
async fn apns_refused(s: &AppState, sess: &Session, prefix: &str, e: CoreError) -> Response {
    let (status, message) = refused(prefix, e);
    apns_page(s, sess, status, message).await
}

async fn upload_apns(
    State(s): State<AppState>,
    ChangeUpload { sess, fields, .. }: ChangeUpload<ApnsPage>,
) -> Response {
    let password = fields.text("password");
    let force = !fields.first("force").is_empty();
    let (cert, key) = (
        fields.first("certificate").to_vec(),
        fields.first("key").to_vec(),
    );
    if cert.is_empty() {
        return apns_page(
            &s,
            &sess,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(Notice::Error("Choose a certificate file.".into())),
        )
        .await;
    }
    let is_pem = cert.starts_with(b"-----BEGIN") || cert.windows(10).any(|w| w == b"-----BEGIN");
    let has_key = |b: &[u8]| b.windows(11).any(|w| w == b"PRIVATE KEY");
    if is_pem && key.is_empty() && !has_key(&cert) {
        // Apple's certificate alone: it belongs to the pending request's key.
        return match s
            .lanyard
            .complete_push_request(&sess.actor, &s.secrets, &cert, force)
            .await
        {
            Ok(_) => see_other("/portal/apns?done=uploaded"),
            Err(e) => apns_refused(&s, &sess, "Nothing was changed.", e).await,
        };
    }
    let upload = if is_pem {
        // A PEM file may hold the key too; otherwise the key comes as its own file.
        let key_src: &[u8] = if key.is_empty() { &cert } else { &key };
        PushCertificateUpload::Pem {
            cert: &cert,
            key: key_src,
        }
    } else {
        PushCertificateUpload::Pkcs12 {
            der: &cert,
            password: &password,
        }
    };
    match s
        .lanyard
        .set_push_certificate(&sess.actor, &s.secrets, &upload, force)
        .await
    {
        Ok(_) => see_other("/portal/apns?done=uploaded"),
        Err(e) => apns_refused(&s, &sess, "Nothing was changed.", e).await,
    }
}

/// Step 1 of the APNs page: a new pending push key and CSR.
async fn create_apns_request(
    State(s): State<AppState>,
    ChangeForm(sess, _): ChangeForm,
) -> Response {
    match s
        .lanyard
        .create_push_request(&sess.actor, &s.secrets, None)
        .await
    {
        Ok(_) => see_other("/portal/apns?done=requested"),
        Err(e) => apns_refused(&s, &sess, "", e).await,
    }
}

/// The APNs page's upload forms.
struct ApnsPage;

impl UploadPage for ApnsPage {
    const NAME: &'static str = "the APNs certificate page";
    const TOO_LARGE: &'static str = "The file is too large.";
}

/// The request file for Apple's Push Certificates Portal, as a download.
fn request_file_download(file: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"lanyard-push-request.b64\"",
            ),
        ],
        file,
    )
        .into_response()
}

/// Step 2 with the operator's own vendor certificate: signs the pending request and answers
/// with the request file. The vendor key is used for this signature only.
async fn sign_apns_request(
    State(s): State<AppState>,
    ChangeUpload { sess, fields, .. }: ChangeUpload<ApnsPage>,
) -> Response {
    let password = fields.text("password");
    let signed = match lanyard_core::pushcert::vendor_signer(
        fields.first("vendor"),
        &password,
        &fields.all("apple"),
    ) {
        Ok(signer) => s.lanyard.sign_push_request(&sess.actor, &signer).await,
        Err(e) => Err(e),
    };
    match signed {
        Ok(file) => request_file_download(file),
        Err(e) => apns_refused(&s, &sess, "Not signed.", e).await,
    }
}

/// Step 2 through the signing service: a new request goes to the service, which emails the
/// signed request file, encrypted.
async fn send_apns_request(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    match s
        .lanyard
        .request_push_signing(
            &sess.actor,
            &s.secrets,
            &s.signing_service,
            f.get("email").trim(),
            f.get("api_key"),
        )
        .await
    {
        Ok(_) => see_other("/portal/apns?done=sent"),
        Err(e) => apns_refused(&s, &sess, "Nothing was sent or changed.", e).await,
    }
}

/// The signing service's emailed reply, decrypted into the request file for Apple.
async fn decrypt_apns_reply(
    State(s): State<AppState>,
    ChangeUpload { sess, fields, .. }: ChangeUpload<ApnsPage>,
) -> Response {
    match s
        .lanyard
        .decrypt_push_reply(&sess.actor, &s.secrets, fields.first("reply"))
        .await
    {
        Ok(file) => request_file_download(file),
        Err(e) => apns_refused(&s, &sess, "", e).await,
    }
}

/// The pending request's CSR, as a file for the MDM vendor.
async fn apns_request_csr(State(s): State<AppState>, Viewer(sess): Viewer) -> Response {
    match s.lanyard.push_request().await {
        Ok(Some(r)) => (
            [
                (header::CONTENT_TYPE, "application/pkcs10"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"lanyard-push.csr\"",
                ),
            ],
            r.csr_pem,
        )
            .into_response(),
        Ok(None) => message_page(
            Some(&sess),
            StatusCode::NOT_FOUND,
            "APNs certificate",
            "No push certificate request is pending: make one on the APNs certificate page.",
        ),
        Err(e) => error_page(Some(&sess), e),
    }
}

// ---------------------------------------------------------------------------------------------
// Audit log

#[derive(Deserialize, Default)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    from: Option<String>,
    until: Option<String>,
    page: Option<String>,
}

/// A `YYYY-MM-DD` date from a filter field as the start of that day (UTC); empty is `None`.
fn day(raw: &str) -> Result<Option<DateTime<Utc>>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| format!("`{raw}` is not a date; use YYYY-MM-DD."))
}

async fn audit(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let bad = |text: &str| message_page(Some(&sess), StatusCode::BAD_REQUEST, "Audit log", text);
    let Ok(Query(q)) = q else {
        return bad("The filter could not be read.");
    };
    let page = match page_number(&sess, q.page.as_deref()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = q.actor.unwrap_or_default();
    let action = q.action.unwrap_or_default();
    let target = q.target.unwrap_or_default();
    let from_raw = q.from.unwrap_or_default();
    let until_raw = q.until.unwrap_or_default();
    if [&actor, &action, &target, &from_raw, &until_raw]
        .iter()
        .any(|v| v.len() > 200)
    {
        return bad("A filter is too long (200 characters at most).");
    }
    let from = match day(&from_raw) {
        Ok(v) => v,
        Err(m) => return bad(&m),
    };
    // "Until" is inclusive on the page: entries before the end of that day.
    let until = match day(&until_raw) {
        Ok(v) => v.map(|t| t + chrono::Duration::days(1)),
        Err(m) => return bad(&m),
    };
    let list = match s
        .lanyard
        .search_audit(&AuditSearch {
            actor: some(&actor),
            action: some(&action),
            target: some(&target),
            from,
            until,
            offset: (page - 1) * PAGE_SIZE,
            limit: PAGE_SIZE,
        })
        .await
    {
        Ok(l) => l,
        Err(e) => return error_page(Some(&sess), e),
    };
    let more = (page - 1) * PAGE_SIZE + (list.items.len() as i64) < list.total;
    let base = format!(
        "/portal/audit?actor={}&action={}&target={}&from={}&until={}",
        qv(&actor),
        qv(&action),
        qv(&target),
        qv(&from_raw),
        qv(&until_raw)
    );
    let total = match list.total {
        1 => "1 entry".to_string(),
        n => format!("{n} entries"),
    };
    let body = html! {
        form method="get" action="/portal/audit" .search role="search" {
            label for="actor" { "Who" }
            input #actor name="actor" value=(actor) maxlength="200";
            label for="action" { "Action" }
            input #action name="action" value=(action) maxlength="200";
            label for="target" { "Target" }
            input #target name="target" value=(target) maxlength="200";
            label for="from" { "From" }
            input #from type="date" name="from" value=(from_raw);
            label for="until" { "Until" }
            input #until type="date" name="until" value=(until_raw);
            button type="submit" { "Filter" }
        }
        p .muted #total { (total) }
        @if list.items.is_empty() {
            p .muted { "No entries match." }
        } @else {
            (table(Some("audit"), &["When", "Who", "Action", "Target", "Detail"], html! {
                @for e in &list.items {
                    tr {
                        td { (when(Some(e.at))) }
                        td { (e.actor) }
                        td { (e.action) }
                        td { (e.target) }
                        td { code { (e.detail) } }
                    }
                }
            }))
        }
        (pager(&base, page, more))
    };
    layout(&sess, StatusCode::OK, Nav::Audit, "Audit log", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Fields {
        Fields(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn settings_form_is_checked_whole() {
        let ok = form(&[
            ("ownership_mode", "prompt"),
            ("min_macos_version", "15.2"),
            ("managed_domains", "example.com, example.org"),
            ("use_email_as_managed_apple_id", "on"),
        ]);
        let p = settings_patch(&ok).unwrap();
        assert_eq!(p.manage_only_corporate_resources, Some(false));
        assert_eq!(p.use_email_as_managed_apple_id, Some(true));
        assert_eq!(p.managed_domains.unwrap().len(), 2);
        assert_eq!(p.install_trust_profile, None);
        assert_eq!(p.inactive_after_days, None);
        let p = settings_patch(&form(&[
            ("ownership_mode", "prompt"),
            ("min_macos_version", "15.2"),
            ("install_trust_profile", "never"),
            ("inactive_after_days", "30"),
        ]))
        .unwrap();
        assert_eq!(p.install_trust_profile, Some(TrustProfile::Never));
        assert_eq!(p.inactive_after_days, Some(30));
        for (k, v) in [
            ("install_trust_profile", "maybe"),
            ("inactive_after_days", "-3"),
        ] {
            let bad = form(&[
                ("ownership_mode", "prompt"),
                ("min_macos_version", "15.2"),
                (k, v),
            ]);
            assert!(settings_patch(&bad).is_err(), "{k}={v}");
        }
        let bad = form(&[("ownership_mode", "prompt"), ("min_macos_version", "9.1")]);
        assert!(settings_patch(&bad).is_err());
        let bad = form(&[
            ("ownership_mode", "corporate"),
            ("min_macos_version", "15.2"),
        ]);
        assert!(settings_patch(&bad).is_err());
    }

    #[test]
    fn audit_dates() {
        assert_eq!(day("").unwrap(), None);
        assert_eq!(
            day("2026-12-03").unwrap().map(|t| t.to_rfc3339()),
            Some("2026-12-03T00:00:00+00:00".into())
        );
        assert!(day("03/12/2026").is_err());
        assert!(day("2026-02-30").is_err());
    }
}
