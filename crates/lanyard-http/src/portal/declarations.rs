//! The portal's Declarations page: declarative device management. The declarations (with how
//! many Macs report each active and failing), adding one and editing one (its payload is checked
//! against Apple's schema; a refusal is shown against the field it concerns, with the typed
//! values kept), removing one; the declaration sets with their members and assignments (to a
//! person, to every User Enrollment Mac, to one enrollment). Every change goes through
//! `lanyard_core::declarations::DeclarationService`, like the admin API and the CLI, which
//! refuses read-only administrators and writes the audit log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use lanyard_core::declarations::{
    AssetData, AssignTo, DeclarationInput, DeclarationUpdate, DeclarationView, SetView,
};
use lanyard_core::CoreError;

use super::{
    describe, error_page, layout, message_page, notice, table, ChangeForm, Done, Fields, Nav,
    Notice, Session, Viewer,
};
use crate::api::declarations::{summaries, DeclarationSummary};
use crate::html::{html, qv, see_other, Markup};
use crate::AppState;

const LIST: &str = "/portal/declarations";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(LIST, get(list).post(create))
        .route("/portal/declarations/{identifier}", get(edit).post(update))
        .route("/portal/declarations/{identifier}/remove", post(remove))
        .route("/portal/declaration-sets", post(create_set))
        .route("/portal/declaration-sets/{name}/members", post(add_member))
        .route(
            "/portal/declaration-sets/{name}/members/remove",
            post(remove_member),
        )
        .route("/portal/declaration-sets/{name}/assign", post(assign))
        .route("/portal/declaration-sets/{name}/unassign", post(unassign))
        .route("/portal/declaration-sets/{name}/remove", post(remove_set))
}

/// The form field a refusal concerns, from the key that starts the domain's message
/// (`Payload.EnabledProtocolTypes: …`, `Type: …`, `Identifier: …`, `asset_data…: …`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Type,
    Identifier,
    Payload,
    AssetData,
    None,
}

fn field_of(message: &str) -> Field {
    let key = message.split(':').next().unwrap_or("").trim();
    if key.eq_ignore_ascii_case("type") {
        Field::Type
    } else if key.eq_ignore_ascii_case("identifier") {
        Field::Identifier
    } else if key.starts_with("Payload") || key.starts_with("payload") {
        Field::Payload
    } else if key.starts_with("asset_data") || key.starts_with("Asset_data") {
        Field::AssetData
    } else {
        Field::None
    }
}

/// What was typed into the add or edit form, shown again after a refusal.
#[derive(Default)]
struct Typed {
    declaration_type: String,
    identifier: String,
    payload: String,
    content_type: String,
}

impl Typed {
    fn from_form(f: &Fields) -> Self {
        Self {
            declaration_type: f.get("type").trim().to_string(),
            identifier: f.get("identifier").trim().to_string(),
            payload: f.get("payload").to_string(),
            content_type: f.get("content_type").trim().to_string(),
        }
    }

    fn from_view(d: &DeclarationView) -> Self {
        Self {
            declaration_type: d.declaration_type.clone(),
            identifier: d.identifier.clone(),
            payload: serde_json::to_string_pretty(&d.payload).unwrap_or_default(),
            content_type: d.asset_content_type.clone().unwrap_or_default(),
        }
    }
}

/// A refusal shown against its field.
struct Refusal {
    field: Field,
    text: String,
}

fn field_error(r: Option<&Refusal>, field: Field, id: &str) -> Markup {
    html! {
        @if let Some(r) = r.filter(|r| r.field == field) {
            p .field-error id=(id) role="alert" { (r.text) }
        }
    }
}

fn described_by(r: Option<&Refusal>, field: Field, id: &'static str) -> Option<&'static str> {
    r.filter(|r| r.field == field).map(|_| id)
}

/// The payload and asset fields shared by the add and edit forms.
fn content_fields(t: &Typed, r: Option<&Refusal>) -> Markup {
    html! {
        label for="decl_payload" { "Payload (JSON, as Apple's schema for the type describes)" }
        textarea #decl_payload name="payload" rows="12" cols="80" maxlength="65536"
            aria-invalid=[described_by(r, Field::Payload, "payload-error").map(|_| "true")]
            aria-describedby=[described_by(r, Field::Payload, "payload-error")] {
            (t.payload)
        }
        (field_error(r, Field::Payload, "payload-error"))
        details .asset {
            summary { "Asset data (assets only)" }
            label for="decl_asset" { "Data Lanyard serves to the assigned Macs (text, such as a PEM certificate)" }
            textarea #decl_asset name="asset_data" rows="6" cols="80" maxlength="262144"
                aria-describedby=[described_by(r, Field::AssetData, "asset-error")] {}
            label for="decl_content_type" { "Media type" }
            input #decl_content_type name="content_type" maxlength="200"
                placeholder="application/pem" value=(t.content_type);
            (field_error(r, Field::AssetData, "asset-error"))
        }
    }
}

fn payload_of(t: &Typed) -> Result<Value, Refusal> {
    serde_json::from_str(&t.payload).map_err(|e| Refusal {
        field: Field::Payload,
        text: format!("Payload: this is not JSON ({e})."),
    })
}

fn asset_of(f: &Fields, t: &Typed) -> Option<AssetData> {
    let data = f.get("asset_data");
    (!data.is_empty()).then(|| AssetData {
        content_type: t.content_type.clone(),
        data: data.as_bytes().to_vec(),
    })
}

fn refusal_of(e: CoreError) -> (StatusCode, Refusal) {
    let (status, text) = describe(e);
    (
        status,
        Refusal {
            field: field_of(&text),
            text,
        },
    )
}

fn assignment_text(a: &AssignTo) -> String {
    match a {
        AssignTo::User { email } => format!("User {email}"),
        AssignTo::AllUserEnrollments => "All User Enrollment Macs".into(),
        AssignTo::Enrollment { id } => format!("Enrollment {id}"),
    }
}

/// The hidden fields naming an assignment (for the unassign button).
fn assignment_fields(a: &AssignTo) -> Markup {
    let (target, value) = match a {
        AssignTo::User { email } => ("user", email.as_str()),
        AssignTo::AllUserEnrollments => ("all", ""),
        AssignTo::Enrollment { id } => ("enrollment", id.as_str()),
    };
    html! {
        input type="hidden" name="target" value=(target);
        input type="hidden" name="value" value=(value);
    }
}

fn target_of(f: &Fields) -> Result<AssignTo, CoreError> {
    let value = f.get("value").trim().to_string();
    let missing = |m: &str| Err(CoreError::Invalid(m.into()));
    match f.get("target") {
        "user" if !value.is_empty() => Ok(AssignTo::User { email: value }),
        "enrollment" if !value.is_empty() => Ok(AssignTo::Enrollment { id: value }),
        "all" => Ok(AssignTo::AllUserEnrollments),
        "user" => missing("Type the person's email."),
        "enrollment" => missing("Type the enrollment id."),
        _ => missing("Choose whom to assign the set to."),
    }
}

async fn list(State(s): State<AppState>, Viewer(sess): Viewer, done: Done) -> Response {
    let done = done.notice(|done, name| match done {
        "added" => Some(format!("Declaration {name} added.")),
        "removed" => Some(format!("Declaration {name} removed.")),
        "set-added" => Some(format!("Set {name} added.")),
        "set-removed" => Some(format!("Set {name} removed.")),
        "set-saved" => Some(format!("Set {name} saved.")),
        _ => None,
    });
    list_page(&s, &sess, StatusCode::OK, done, &Typed::default(), None).await
}

async fn list_page(
    s: &AppState,
    sess: &Session,
    status: StatusCode,
    message: Option<Notice>,
    typed: &Typed,
    refusal: Option<&Refusal>,
) -> Response {
    let declarations: Vec<DeclarationSummary> = match summaries(s).await {
        Ok(l) => l,
        Err(e) => return error_page(Some(sess), e),
    };
    let sets = match s.declarations.list_sets().await {
        Ok(l) => l,
        Err(e) => return error_page(Some(sess), e),
    };
    let types: Vec<&str> = lanyard_proto::declaration::declarations()
        .iter()
        .map(|e| e.name)
        .collect();
    let r = refusal;
    let body = html! {
        (notice(message))
        p .muted {
            "Declarations are checked against Apple's schema. A Mac in User Enrollment receives "
            "only the types whose schema allows the user enrollment; a set holding another type "
            "cannot be assigned."
        }
        @if declarations.is_empty() {
            p .muted #no-declarations { "No declarations yet." }
        } @else {
            (table(
                Some("declarations"),
                &["Identifier", "Type", "Kind", "Active", "Failing", "Updated"],
                html! {
                    @for d in &declarations {
                        tr data-declaration=(d.identifier) {
                            td { a href={ "/portal/declarations/" (qv(&d.identifier)) } { (d.identifier) } }
                            td { code { (d.declaration_type) } }
                            td { (d.kind.to_string()) }
                            td .active { (d.active) }
                            td .failing { (d.failing) }
                            td { (super::when(Some(d.updated_at))) }
                        }
                    }
                },
            ))
        }
        h2 { "Add a declaration" }
        form method="post" action=(LIST) .grid-form #add-declaration {
            (sess.csrf_field())
            label for="decl_type" { "Type" }
            input #decl_type name="type" required maxlength="200" list="declaration-types"
                placeholder="com.apple.configuration.account.exchange"
                value=(typed.declaration_type)
                aria-describedby=[described_by(r, Field::Type, "type-error")];
            datalist #declaration-types {
                @for t in &types { option value=(t) {} }
            }
            (field_error(r, Field::Type, "type-error"))
            label for="decl_identifier" { "Identifier (1 to 64 letters, digits, '.', '-' or '_')" }
            input #decl_identifier name="identifier" required maxlength="64"
                value=(typed.identifier)
                aria-describedby=[described_by(r, Field::Identifier, "identifier-error")];
            (field_error(r, Field::Identifier, "identifier-error"))
            (content_fields(typed, r))
            button type="submit" { "Add declaration" }
        }
        h2 { "Sets" }
        @if sets.is_empty() {
            p .muted #no-sets { "No sets yet: a declaration reaches Macs through a set assigned to them." }
        }
        @for set in &sets {
            (set_section(sess, set, &declarations))
        }
        h2 { "Add a set" }
        form method="post" action="/portal/declaration-sets" .grid-form #add-set {
            (sess.csrf_field())
            label for="set_name" { "Name (1 to 64 letters, digits, '.', '-' or '_')" }
            input #set_name name="name" required maxlength="64";
            label for="set_description" { "Description" }
            input #set_description name="description" maxlength="1000";
            button type="submit" { "Add set" }
        }
    };
    layout(sess, status, Nav::Declarations, "Declarations", body)
}

fn set_section(sess: &Session, set: &SetView, declarations: &[DeclarationSummary]) -> Markup {
    let base = format!("/portal/declaration-sets/{}", qv(&set.name));
    let n = &set.name;
    html! {
        section .declaration-set data-set=(set.name) {
            h3 { "Set " (set.name) }
            @if !set.description.is_empty() { p .muted { (set.description) } }
            (table(Some("members"), &["Member", "Actions"], html! {
                @if set.members.is_empty() {
                    tr { td colspan="2" .muted { "No members." } }
                }
                @for m in &set.members {
                    tr data-member=(m) {
                        td { (m) }
                        td {
                            form method="post" action={ (base) "/members/remove" } {
                                (sess.csrf_field())
                                input type="hidden" name="identifier" value=(m);
                                button type="submit" .small aria-label={ "Remove " (m) " from " (n) } { "Remove" }
                            }
                        }
                    }
                }
            }))
            form method="post" action={ (base) "/members" } .inline-form {
                (sess.csrf_field())
                label for={ "member-" (n) } { "Add a declaration" }
                select id={ "member-" (n) } name="identifier" {
                    @for d in declarations {
                        @if !set.members.contains(&d.identifier) {
                            option value=(d.identifier) { (d.identifier) }
                        }
                    }
                }
                button type="submit" { "Add to set" }
            }
            (table(Some("assignments"), &["Assigned to", "Actions"], html! {
                @if set.assignments.is_empty() {
                    tr { td colspan="2" .muted { "Not assigned." } }
                }
                @for a in &set.assignments {
                    tr {
                        td .assignment { (assignment_text(a)) }
                        td {
                            form method="post" action={ (base) "/unassign" } {
                                (sess.csrf_field())
                                (assignment_fields(a))
                                button type="submit" .small { "Unassign" }
                            }
                        }
                    }
                }
            }))
            form method="post" action={ (base) "/assign" } .inline-form {
                (sess.csrf_field())
                label for={ "target-" (n) } { "Assign to" }
                select id={ "target-" (n) } name="target" {
                    option value="user" { "A person (email)" }
                    option value="all" { "Every User Enrollment Mac" }
                    option value="enrollment" { "One enrollment (id)" }
                }
                label for={ "value-" (n) } { "Email or enrollment id" }
                input id={ "value-" (n) } name="value" maxlength="254";
                button type="submit" { "Assign" }
            }
            form method="post" action={ (base) "/remove" } .danger {
                (sess.csrf_field())
                label .check {
                    input type="checkbox" name="confirm" value="yes" required;
                    " Remove set " (n) " and its assignments"
                }
                button type="submit" .danger { "Remove set" }
            }
        }
    }
}

async fn create(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let typed = Typed::from_form(&f);
    let payload = match payload_of(&typed) {
        Ok(p) => p,
        Err(r) => {
            let text = Notice::Error(r.text.clone());
            return list_page(
                &s,
                &sess,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(text),
                &typed,
                Some(&r),
            )
            .await;
        }
    };
    let input = DeclarationInput {
        declaration_type: typed.declaration_type.clone(),
        identifier: typed.identifier.clone(),
        payload,
        asset_data: asset_of(&f, &typed),
    };
    match s.declarations.create(&sess.actor, input).await {
        Ok(d) => see_other(&format!("{LIST}?done=added&name={}", qv(&d.identifier))),
        Err(e) => {
            let (status, r) = refusal_of(e);
            let text = Notice::Error(r.text.clone());
            list_page(&s, &sess, status, Some(text), &typed, Some(&r)).await
        }
    }
}

async fn edit(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    Path(identifier): Path<String>,
    done: Done,
) -> Response {
    let done = done.notice(|done, _| (done == "saved").then(|| "Declaration saved.".into()));
    match s.declarations.get(&identifier).await {
        Ok(d) => edit_page(&sess, &d, StatusCode::OK, done, &Typed::from_view(&d), None),
        Err(CoreError::NotFound(_)) => message_page(
            Some(&sess),
            StatusCode::NOT_FOUND,
            "Declaration not found",
            "There is no declaration with this identifier.",
        ),
        Err(e) => error_page(Some(&sess), e),
    }
}

fn edit_page(
    sess: &Session,
    d: &DeclarationView,
    status: StatusCode,
    message: Option<Notice>,
    typed: &Typed,
    refusal: Option<&Refusal>,
) -> Response {
    let action = format!("/portal/declarations/{}", qv(&d.identifier));
    let body = html! {
        (notice(message))
        dl .facts {
            dt { "Type" } dd { code { (d.declaration_type) } }
            dt { "Kind" } dd { (d.kind.to_string()) }
            dt { "Server token" } dd { code { (d.server_token) } }
            @if d.has_asset_data {
                dt { "Asset data" } dd { (d.asset_content_type.as_deref().unwrap_or("—")) }
            }
            dt { "Updated" } dd { (super::when(Some(d.updated_at))) }
        }
        h2 { "Edit" }
        form method="post" action=(action) .grid-form #edit-declaration {
            (sess.csrf_field())
            (content_fields(typed, refusal))
            @if d.has_asset_data { p .muted { "Leave the asset data empty to keep the stored data." } }
            button type="submit" { "Save" }
        }
        form method="post" action={ (action) "/remove" } .danger {
            (sess.csrf_field())
            label .check {
                input type="checkbox" name="confirm" value="yes" required;
                " Remove this declaration"
            }
            button type="submit" .danger { "Remove" }
        }
        p { a href=(LIST) { "Back to declarations" } }
    };
    layout(sess, status, Nav::Declarations, &d.identifier, body)
}

async fn update(
    State(s): State<AppState>,
    Path(identifier): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let current = match s.declarations.get(&identifier).await {
        Ok(d) => d,
        Err(e) => return error_page(Some(&sess), e),
    };
    let typed = Typed {
        declaration_type: current.declaration_type.clone(),
        identifier: current.identifier.clone(),
        ..Typed::from_form(&f)
    };
    let result = match payload_of(&typed) {
        Ok(payload) => s
            .declarations
            .update(
                &sess.actor,
                &identifier,
                DeclarationUpdate {
                    payload,
                    asset_data: asset_of(&f, &typed),
                },
            )
            .await
            .map_err(refusal_of),
        Err(r) => Err((StatusCode::UNPROCESSABLE_ENTITY, r)),
    };
    match result {
        Ok(d) => see_other(&format!(
            "/portal/declarations/{}?done=saved",
            qv(&d.identifier)
        )),
        Err((status, r)) => {
            let text = Notice::Error(r.text.clone());
            edit_page(&sess, &current, status, Some(text), &typed, Some(&r))
        }
    }
}

/// Answers a set or removal form: back to the list with `done`, or the list with the refusal.
async fn after<T>(
    s: &AppState,
    sess: &Session,
    result: Result<T, CoreError>,
    done: &str,
    name: &str,
) -> Response {
    match result {
        Ok(_) => see_other(&format!("{LIST}?done={done}&name={}", qv(name))),
        Err(e) => {
            let (status, text) = describe(e);
            list_page(
                s,
                sess,
                status,
                Some(Notice::Error(format!("{text} Nothing was changed."))),
                &Typed::default(),
                None,
            )
            .await
        }
    }
}

async fn remove(
    State(s): State<AppState>,
    Path(identifier): Path<String>,
    ChangeForm(sess, _): ChangeForm,
) -> Response {
    let r = s.declarations.delete(&sess.actor, &identifier).await;
    after(&s, &sess, r, "removed", &identifier).await
}

async fn create_set(State(s): State<AppState>, ChangeForm(sess, f): ChangeForm) -> Response {
    let name = f.get("name").trim().to_string();
    let r = s
        .declarations
        .create_set(&sess.actor, &name, f.get("description"))
        .await;
    after(&s, &sess, r, "set-added", &name).await
}

async fn remove_set(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, _): ChangeForm,
) -> Response {
    let r = s.declarations.delete_set(&sess.actor, &name).await;
    after(&s, &sess, r, "set-removed", &name).await
}

async fn add_member(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let identifier = f.get("identifier");
    let r = s
        .declarations
        .add_to_set(&sess.actor, &name, identifier)
        .await;
    after(&s, &sess, r, "set-saved", &name).await
}

async fn remove_member(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let identifier = f.get("identifier");
    let r = s
        .declarations
        .remove_from_set(&sess.actor, &name, identifier)
        .await;
    after(&s, &sess, r, "set-saved", &name).await
}

async fn assign(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let r = match target_of(&f) {
        Ok(to) => s.declarations.assign(&sess.actor, &name, &to).await,
        Err(e) => Err(e),
    };
    after(&s, &sess, r, "set-saved", &name).await
}

async fn unassign(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let r = match target_of(&f) {
        Ok(to) => s.declarations.unassign(&sess.actor, &name, &to).await,
        Err(e) => Err(e),
    };
    after(&s, &sess, r, "set-saved", &name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_find_their_field() {
        assert!(
            field_of("Payload.EnabledProtocolTypes[1]: \"IMAP\" is not allowed") == Field::Payload
        );
        assert!(field_of("Type: com.example is not a declaration type") == Field::Type);
        assert!(field_of("Identifier: 1 to 64 letters") == Field::Identifier);
        assert!(field_of("asset_data: only assets carry data") == Field::AssetData);
        assert!(field_of("set names are 1 to 64 letters") == Field::None);
    }
}
