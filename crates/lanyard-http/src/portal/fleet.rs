//! Portal pages about the fleet: the summary, the device list, one device (inventory, custom
//! attributes, command history and results, send a command, unenroll) and a command's progress
//! across its targets.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use lanyard_core::commands::{
    CommandChannel, CommandSpec, CommandState, CommandTarget, CommandView,
};
use lanyard_core::enrollment::{list_enrollments, EnrollmentView};
use lanyard_core::CoreError;
use lanyard_store::{DeviceListQuery, DeviceSort, EnrollmentStatus};

use super::{
    error_page, layout, message_page, notice, or_dash, page_number, pager, table, when, ChangeForm,
    Done, Nav, Notice, Session, Viewer, PAGE_SIZE,
};
use crate::html::{html, qv, see_other, Markup};
use crate::AppState;

pub fn routes() -> axum::Router<AppState> {
    Router::new()
        .route("/portal/summary", get(summary))
        .route("/portal/devices", get(devices))
        .route("/portal/devices/{id}", get(device))
        .route("/portal/devices/{id}/commands", post(device_command))
        .route("/portal/devices/{id}/unenroll", post(unenroll))
        .route("/portal/commands", post(bulk_command))
        .route("/portal/commands/{uuid}", get(command_page))
        .route("/portal/commands/{uuid}/progress", get(command_progress))
}

/// The commands an administrator can pick in the portal; `raw` takes any request type, which
/// the domain checks (`lanyard_core::commands::check_request_type`, then what User Enrollment
/// and the channel allow) when it is queued.
const COMMAND_CHOICES: &[(&str, &str)] = &[
    ("DeviceInformation", "Device information (inventory)"),
    ("SecurityInfo", "Security information"),
    ("ProfileList", "Installed profiles"),
    ("InstalledApplicationList", "Installed managed apps"),
    ("CertificateList", "Certificates"),
    ("raw", "Other (type the request type)"),
];

fn command_spec(kind: &str, raw: &str) -> Result<CommandSpec, String> {
    Ok(match kind {
        "DeviceInformation" => CommandSpec::DeviceInformation {
            queries: Vec::new(),
        },
        "SecurityInfo" => CommandSpec::SecurityInfo,
        "ProfileList" => CommandSpec::ProfileList,
        "InstalledApplicationList" => CommandSpec::InstalledApplicationList {
            managed_apps_only: Some(true),
        },
        "CertificateList" => CommandSpec::CertificateList {
            managed_only: Some(true),
        },
        "raw" => CommandSpec::Raw {
            raw_request_type: raw.to_string(),
            plist: None,
        },
        _ => return Err("Choose a command from the list.".into()),
    })
}

fn channel(v: &str) -> Result<CommandChannel, String> {
    match v {
        "" | "device" => Ok(CommandChannel::Device),
        "user" => Ok(CommandChannel::User),
        _ => Err("The channel is device or user.".into()),
    }
}

fn command_form(sess: &Session, action: &str, button: &str) -> Markup {
    html! {
        form method="post" action=(action) .inline-form {
            (sess.csrf_field())
            label for="command" { "Command" }
            select #command name="command" {
                @for (v, l) in COMMAND_CHOICES {
                    option value=(v) { (l) }
                }
            }
            label for="raw" { "Request type (for Other)" }
            input #raw name="raw" placeholder="e.g. EraseDevice" maxlength="100";
            label for="channel" { "Channel" }
            select #channel name="channel" {
                option value="device" { "Device" }
                option value="user" { "User" }
            }
            button type="submit" { (button) }
        }
    }
}

async fn summary(State(s): State<AppState>, Viewer(sess): Viewer) -> Response {
    match summary_body(&s).await {
        Ok(body) => layout(&sess, StatusCode::OK, Nav::Summary, "Summary", body),
        Err(e) => error_page(Some(&sess), e),
    }
}

async fn summary_body(s: &AppState) -> Result<Markup, CoreError> {
    let sum = s.lanyard.summary(chrono::Utc::now()).await?;
    let push = s.lanyard.push_certificate_info().await?;
    let add = |f: fn(&lanyard_core::listings::ModeCounts) -> i64| -> i64 {
        sum.by_mode.iter().map(f).sum()
    };
    let abm = s.abm.list().await?;
    let latest = list_enrollments(
        &s.lanyard,
        &DeviceListQuery {
            descending: true,
            limit: 10,
            ..DeviceListQuery::default()
        },
    )
    .await?;
    let tiles = [
        ("Enrolled devices", add(|m| m.enrolled)),
        ("Enrollments in progress", add(|m| m.in_progress)),
        ("Checked out", add(|m| m.checked_out)),
        ("Inactive", add(|m| m.inactive)),
        ("Users", sum.users),
    ];
    Ok(html! {
        @if push.is_none() {
            // The profile's Topic is the push certificate's and can never change after
            // enrollment, so nothing enrolls before one is uploaded.
            p #enrollment-closed .notice.error role="alert" {
                "Enrollment is closed: there is no APNs push certificate, so every Mac is \
                 refused at service discovery and at the enrollment URL. "
                a href="/portal/apns" { "Upload the push certificate" }
                " to open enrollment."
            }
        }
        section .tiles aria-label="Counts" {
            @for (label, n) in tiles {
                div .tile { span .num { (n) } span { (label) } }
            }
        }
        h2 { "Enrollments by mode and state" }
        (table(
            Some("by-mode"),
            &[
                "Device Enrollment Mode",
                "Enrolled",
                "In progress",
                "Checked out",
                "Inactive",
                "Total",
            ],
            html! {
                @if sum.by_mode.is_empty() {
                    tr { td { "User Enrollment" } td { "0" } td { "0" } td { "0" } td { "0" } td { "0" } }
                }
                @for m in &sum.by_mode {
                    tr {
                        td { (m.mode) }
                        td { (m.enrolled) }
                        td { (m.in_progress) }
                        td { (m.checked_out) }
                        td { (m.inactive) }
                        td { (m.total) }
                    }
                }
            },
        ))
        h2 { "Expiring certificates and tokens" }
        ul .plain {
            @match &push {
                Some(info) => {
                    li class=(if info.warning.is_some() { "warn" } else { "" }) {
                        "APNs certificate " strong { (info.topic) } " expires "
                        (when(Some(info.not_after))) " (" (info.days_left) " days left)"
                        @if let Some(w) = &info.warning { " — " (w) }
                    }
                }
                None => {
                    li .warn {
                        "No APNs certificate yet: enrollment is closed. "
                        a href="/portal/apns" { "Upload one" } "."
                    }
                }
            }
            @for t in &abm {
                li class=(if t.warning.is_some() || t.token_expires_at.is_none() { "warn" } else { "" }) {
                    "ABM server token " a href="/portal/abm" { (t.name) } " "
                    @match (t.token_expires_at, t.days_left) {
                        (Some(at), Some(days)) => {
                            "expires " (when(Some(at))) " (" (days) " days left)"
                        }
                        _ => "has no token file yet",
                    }
                    @if let Some(w) = &t.warning { " — " (w) }
                }
            }
            @if sum.expiring.is_empty() {
                li {
                    "No device identity certificate expires within "
                    (lanyard_core::listings::EXPIRY_WARNING_DAYS) " days."
                }
            }
            @for e in &sum.expiring {
                li .warn {
                    "Identity certificate of "
                    a href={ "/portal/devices/" (qv(&e.id)) } { (e.managed_apple_id) }
                    " expires " (when(e.identity_certificate_not_after))
                }
            }
        }
        h2 { "Recent enrollments" }
        (device_table(&latest, None))
    })
}

/// Column headers of the device list; with `sort`, each sortable header links to sort by it
/// (again: the other direction).
const DEVICE_COLUMNS: &[(&str, Option<DeviceSort>)] = &[
    ("Managed Apple ID", Some(DeviceSort::ManagedAppleId)),
    ("Model family", Some(DeviceSort::ModelFamily)),
    ("OS version", Some(DeviceSort::OsVersion)),
    ("Device Enrollment Mode", None),
    ("Ownership", None),
    ("Status", Some(DeviceSort::Status)),
    ("Last check-in", Some(DeviceSort::LastSeen)),
];

/// How the device list is sorted and where its header links point.
struct SortLinks {
    base: String,
    sort: DeviceSort,
    descending: bool,
}

fn device_table(list: &[EnrollmentView], sort: Option<&SortLinks>) -> Markup {
    if list.is_empty() {
        return html! { p .muted { "No devices match." } };
    }
    html! {
        table .devices {
            thead {
                tr {
                    @for (label, key) in DEVICE_COLUMNS {
                        @match (sort, key) {
                            (Some(links), Some(key)) => {
                                @let current = links.sort == *key;
                                @let next_dir = if current && !links.descending { "desc" } else { "asc" };
                                @let (aria, arrow) = match (current, links.descending) {
                                    (true, true) => (Some("descending"), " ↓"),
                                    (true, false) => (Some("ascending"), " ↑"),
                                    _ => (None, ""),
                                };
                                th scope="col" aria-sort=[aria] {
                                    a href={ (links.base) "&sort=" (key.key()) "&dir=" (next_dir) } {
                                        (label) (arrow)
                                    }
                                }
                            }
                            _ => th scope="col" { (label) },
                        }
                    }
                }
            }
            tbody {
                @for e in list {
                    tr {
                        td { a href={ "/portal/devices/" (qv(&e.id)) } { (e.managed_apple_id) } }
                        td { (or_dash(e.model_family.as_deref().or(e.product.as_deref()))) }
                        td { (or_dash(e.os_version.as_deref())) }
                        td { (e.enrollment_mode) }
                        td { (e.ownership) }
                        td { (e.status.label()) }
                        td { (when(e.last_seen_at)) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
struct DeviceListParams {
    search: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<String>,
    done: Option<String>,
    /// `1`: only devices reporting a declaration failing.
    failing: Option<String>,
}

async fn devices(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    q: Result<Query<DeviceListParams>, QueryRejection>,
) -> Response {
    let bad = |text: &str| message_page(Some(&sess), StatusCode::BAD_REQUEST, "Devices", text);
    let Ok(Query(q)) = q else {
        return bad("The search could not be read.");
    };
    let page = match page_number(&sess, q.page.as_deref()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let search = q.search.unwrap_or_default();
    if search.len() > 200 {
        return bad("The search text is too long (200 characters at most).");
    }
    let status_raw = q.status.unwrap_or_else(|| "enrolled".into());
    let status = match status_raw.as_str() {
        "all" => None,
        st => match EnrollmentStatus::parse(st) {
            Some(v) => Some(v),
            None => return bad("Unknown status filter; choose one from the list."),
        },
    };
    let sort = match q.sort.as_deref().filter(|v| !v.is_empty()) {
        None => DeviceSort::Created,
        Some(k) => match DeviceSort::parse(k) {
            Some(v) => v,
            None => return bad("Unknown sort column."),
        },
    };
    let descending = match q.dir.as_deref() {
        None | Some("") => sort == DeviceSort::Created || sort == DeviceSort::LastSeen,
        Some("desc") => true,
        Some("asc") => false,
        Some(_) => return bad("The sort direction is asc or desc."),
    };
    let failing = match q.failing.as_deref() {
        None | Some("") => false,
        Some("1") => true,
        Some(_) => return bad("The declarations filter is 1 or absent."),
    };
    let list = match s
        .lanyard
        .device_list(&DeviceListQuery {
            search: Some(search.clone()),
            status,
            declarations_failing: failing,
            sort,
            descending,
            offset: (page - 1) * PAGE_SIZE,
            limit: PAGE_SIZE,
        })
        .await
    {
        Ok(l) => l,
        Err(e) => return error_page(Some(&sess), e),
    };
    let more = (page - 1) * PAGE_SIZE + (list.items.len() as i64) < list.total;
    let statuses = EnrollmentStatus::ALL
        .iter()
        .map(|v| (v.as_str(), v.label()))
        .chain([("all", "All")]);
    let done = match q.done.as_deref() {
        Some("unenroll") => Some(Notice::Ok(
            "Unenrollment queued: the Mac removes its work data at its next check-in.".into(),
        )),
        _ => None,
    };
    let filter = format!(
        "/portal/devices?search={}&status={}{}",
        qv(&search),
        qv(&status_raw),
        if failing { "&failing=1" } else { "" }
    );
    let links = SortLinks {
        base: filter.clone(),
        sort,
        descending,
    };
    let paged = format!(
        "{filter}&sort={}&dir={}",
        sort.key(),
        if descending { "desc" } else { "asc" }
    );
    let count = match list.total {
        1 => "1 device".to_string(),
        n => format!("{n} devices"),
    };
    let body = html! {
        (notice(done))
        form method="get" action="/portal/devices" .search role="search" {
            label for="search" { "Search managed Apple ID, email or model" }
            input #search type="search" name="search" value=(search) maxlength="200";
            label for="status" { "Status" }
            select #status name="status" {
                @for (v, l) in statuses {
                    option value=(v) selected[v == status_raw] { (l) }
                }
            }
            label .check for="failing" {
                input #failing type="checkbox" name="failing" value="1" checked[failing];
                " Declarations failing"
            }
            button type="submit" { "Search" }
        }
        p .muted #total { (count) }
        (device_table(&list.items, Some(&links)))
        (pager(&paged, page, more))
        details .bulk {
            summary { "Send a command to every enrolled device matching the search" }
            (command_form(
                &sess,
                &format!("/portal/commands?search={}", qv(&search)),
                "Send to matching devices"
            ))
        }
    };
    layout(&sess, StatusCode::OK, Nav::Devices, "Devices", body)
}

/// Flattens inventory JSON into `key → value` rows.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => out.push((prefix.to_string(), "—".into())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn history_table(list: &[CommandView]) -> Markup {
    if list.is_empty() {
        return html! { p .muted { "No commands yet." } };
    }
    html! {
        (table(
            Some("history"),
            &["Command", "Channel", "Status", "Queued", "Finished", "Result"],
            html! {
                @for c in list {
                    tr data-status=(c.status.as_str()) {
                        td { a href={ "/portal/commands/" (qv(&c.command_uuid)) } { (c.request_type) } }
                        td { (c.channel.as_str()) }
                        td .status { (c.status.as_str()) }
                        td { (when(Some(c.queued_at))) }
                        td { (when(c.finished_at)) }
                        td {
                            @match (&c.result, &c.error_chain) {
                                (_, Some(err)) => details {
                                    summary { "Error" }
                                    pre { (serde_json::to_string_pretty(err).unwrap_or_default()) }
                                },
                                (Some(r), None) => details {
                                    summary { "Result" }
                                    pre { (serde_json::to_string_pretty(r).unwrap_or_default()) }
                                },
                                _ => "—",
                            }
                        }
                    }
                }
            },
        ))
    }
}

async fn device(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    Path(id): Path<String>,
    done: Done,
) -> Response {
    let done = done.notice(|done, _| {
        (done == "command")
            .then(|| "Command queued; its result appears below when the Mac answers.".into())
    });
    device_page(&s, &sess, &id, StatusCode::OK, done).await
}

async fn device_page(
    s: &AppState,
    sess: &Session,
    id: &str,
    status: StatusCode,
    message: Option<Notice>,
) -> Response {
    let e: EnrollmentView = match s.lanyard.enrollment(id).await {
        Ok(e) => e,
        Err(CoreError::NotFound(_)) => {
            return message_page(
                Some(sess),
                StatusCode::NOT_FOUND,
                "Device not found",
                "There is no device with this id.",
            )
        }
        Err(e) => return error_page(Some(sess), e),
    };
    let inventory = match s.lanyard.inventory(id).await {
        Ok(v) => v,
        Err(e) => return error_page(Some(sess), e),
    };
    let history = match s.lanyard.command_history(id, 100).await {
        Ok(v) => v,
        Err(e) => return error_page(Some(sess), e),
    };
    let declarative = match s.declarations.enrollment_status(id).await {
        Ok(v) => v,
        Err(e) => return error_page(Some(sess), e),
    };
    let reachable = if e.reachable { "Yes" } else { "No" };
    let mut facts: Vec<(&str, String)> = vec![
        ("Managed Apple ID", e.managed_apple_id.clone()),
        ("Device Enrollment Mode", e.enrollment_mode.clone()),
        ("Ownership", e.ownership.clone()),
        ("Status", e.status.label().to_string()),
        (
            "Model family",
            or_dash(e.model_family.as_deref()).to_string(),
        ),
        ("Product", or_dash(e.product.as_deref()).to_string()),
        ("OS version", or_dash(e.os_version.as_deref()).to_string()),
        ("Build", or_dash(e.build_version.as_deref()).to_string()),
        ("Enrolled", when(e.enrolled_at)),
        ("Last check-in", when(e.last_seen_at)),
        ("Reachable by push", reachable.to_string()),
        (
            "Last push",
            or_dash(e.last_push_status.as_deref()).to_string(),
        ),
        (
            "Identity certificate expires",
            when(e.identity_certificate_not_after),
        ),
        ("Enrollment id", e.id.clone()),
    ];
    if let Some(u) = &e.enrollment_user_id {
        facts.push(("EnrollmentUserID", u.clone()));
    }
    let mut inv = Vec::new();
    flatten("", &inventory, &mut inv);
    let body = html! {
        (notice(message))
        div .cols {
            section {
                h2 { "Device" }
                dl .facts {
                    @for (k, v) in &facts { dt { (k) } dd { (v) } }
                }
                h2 { "Custom attributes" }
                @if e.attributes.is_empty() {
                    p .muted { "No custom attributes." }
                } @else {
                    dl .facts {
                        @for (k, v) in &e.attributes { dt { (k) } dd { (v) } }
                    }
                }
            }
            section {
                h2 { "Actions" }
                @if e.status == EnrollmentStatus::CheckedOut {
                    p .muted { "This device has checked out; no commands can be sent." }
                } @else {
                    (command_form(sess, &format!("/portal/devices/{}/commands", qv(id)), "Send command"))
                    form method="post" action={ "/portal/devices/" (qv(id)) "/unenroll" } .danger {
                        (sess.csrf_field())
                        label .check {
                            input type="checkbox" name="confirm" value="yes" required;
                            " Remove the MDM profile and the work data from this Mac"
                        }
                        button type="submit" .danger { "Unenroll" }
                    }
                }
            }
        }
        h2 { "Inventory" }
        @if inv.is_empty() {
            p .muted { "Nothing reported yet; send Device information." }
        } @else {
            table .inventory {
                tbody {
                    @for (k, v) in &inv { tr { th scope="row" { (k) } td { (v) } } }
                }
            }
        }
        (declarative_section(&declarative))
        h2 { "Commands" }
        (history_table(&history))
    };
    layout(sess, status, Nav::Devices, &e.managed_apple_id, body)
}

/// What the Mac reported about its declarations and its status items.
fn declarative_section(st: &lanyard_core::declarations::EnrollmentDeclarativeStatus) -> Markup {
    html! {
        h2 { "Declarations" }
        @if st.declarations.is_empty() {
            p .muted #no-declaration-status { "No declaration status reported yet." }
        } @else {
            (table(
                Some("declaration-status"),
                &["Declaration", "Active", "Valid", "Current content", "Reasons", "Reported"],
                html! {
                    @for d in &st.declarations {
                        tr data-declaration=(d.identifier) data-valid=(d.valid.as_str()) {
                            td { a href={ "/portal/declarations/" (qv(&d.identifier)) } { (d.identifier) } }
                            td { (if d.active { "Yes" } else { "No" }) }
                            td .valid { (d.valid.label()) }
                            td { (if d.current { "Yes" } else { "No, an older version" }) }
                            td {
                                @if d.reasons.as_array().is_some_and(|r| !r.is_empty()) {
                                    pre { (serde_json::to_string_pretty(&d.reasons).unwrap_or_default()) }
                                } @else { "—" }
                            }
                            td { (when(Some(d.updated_at))) }
                        }
                    }
                },
            ))
        }
        h2 { "Status items" }
        @if st.status_items.is_empty() {
            p .muted { "No status items reported yet." }
        } @else {
            table .status-items {
                tbody {
                    @for i in &st.status_items {
                        tr data-item=(i.name) {
                            th scope="row" { (i.name) }
                            td { code { (i.value.to_string()) } }
                            td { (when(Some(i.updated_at))) }
                        }
                    }
                }
            }
        }
    }
}

async fn device_command(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let spec = match command_spec(f.get("command"), f.get("raw"))
        .and_then(|spec| channel(f.get("channel")).map(|c| (spec, c)))
    {
        Ok(v) => v,
        Err(m) => {
            return device_page(
                &s,
                &sess,
                &id,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(Notice::Error(m)),
            )
            .await
        }
    };
    match s
        .lanyard
        .enqueue_command_on(
            &sess.actor,
            &CommandTarget::Enrollments(vec![id.clone()]),
            spec.1,
            &spec.0,
            true,
        )
        .await
    {
        Ok(_) => see_other(&format!("/portal/devices/{}?done=command", qv(&id))),
        Err(e) => {
            let (status, text) = super::describe(e);
            device_page(&s, &sess, &id, status, Some(Notice::Error(text))).await
        }
    }
}

async fn unenroll(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    if !f.checked("confirm") {
        return device_page(
            &s,
            &sess,
            &id,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(Notice::Error(
                "Tick the confirmation box to unenroll this device.".into(),
            )),
        )
        .await;
    }
    match s.lanyard.unenroll(&sess.actor, &id, true).await {
        Ok(_) => see_other("/portal/devices?done=unenroll"),
        Err(e) => {
            let (status, text) = super::describe(e);
            device_page(&s, &sess, &id, status, Some(Notice::Error(text))).await
        }
    }
}

#[derive(Deserialize, Default)]
struct BulkQuery {
    #[serde(default)]
    search: String,
}

async fn bulk_command(
    State(s): State<AppState>,
    q: Result<Query<BulkQuery>, QueryRejection>,
    ChangeForm(sess, f): ChangeForm,
) -> Response {
    let search = q.map(|Query(q)| q.search).unwrap_or_default();
    let spec = match command_spec(f.get("command"), f.get("raw"))
        .and_then(|spec| channel(f.get("channel")).map(|c| (spec, c)))
    {
        Ok(v) => v,
        Err(m) => {
            return message_page(
                Some(&sess),
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not sent",
                &m,
            )
        }
    };
    match s
        .lanyard
        .enqueue_command_on(
            &sess.actor,
            &CommandTarget::Filter { search },
            spec.1,
            &spec.0,
            true,
        )
        .await
    {
        Ok(q) => see_other(&format!("/portal/commands/{}", qv(&q.command_uuid))),
        Err(e) => {
            let (status, text) = super::describe(e);
            message_page(Some(&sess), status, "Not sent", &text)
        }
    }
}

/// How far a command has come across its targets.
fn progress(targets: &[CommandView]) -> Value {
    let n = |pick: fn(CommandState) -> bool| targets.iter().filter(|t| pick(t.status)).count();
    json!({
        "total": targets.len(),
        "acknowledged": n(|s| s == CommandState::Acknowledged),
        "failed": n(CommandState::is_failure),
        "waiting": n(|s| !s.is_final()),
    })
}

fn progress_text(p: &Value) -> String {
    format!(
        "{} of {} acknowledged, {} failed, {} waiting",
        p["acknowledged"], p["total"], p["failed"], p["waiting"]
    )
}

async fn command_page(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    Path(uuid): Path<String>,
) -> Response {
    let targets = match s.lanyard.command_targets(&uuid).await {
        Ok(t) => t,
        Err(e) => return error_page(Some(&sess), e),
    };
    let p = progress(&targets);
    let rt = targets
        .first()
        .map(|t| t.request_type.clone())
        .unwrap_or_default();
    let body = html! {
        p .progress {
            progress #progress-bar max=(p["total"]) value=(p["acknowledged"]) {}
            " "
            span #progress role="status" aria-live="polite"
                data-poll={ "/portal/commands/" (qv(&uuid)) "/progress" } {
                (progress_text(&p))
            }
        }
        (table(None, &["Enrollment", "Status", "Finished"], html! {
            @for t in targets.iter().take(500) {
                tr {
                    td { a href={ "/portal/devices/" (qv(&t.enrollment_id)) } { (t.enrollment_id) } }
                    td { (t.status.as_str()) }
                    td { (when(t.finished_at)) }
                }
            }
        }))
    };
    layout(
        &sess,
        StatusCode::OK,
        Nav::Devices,
        &format!("Command {rt}"),
        body,
    )
}

async fn command_progress(
    State(s): State<AppState>,
    _viewer: Viewer,
    Path(uuid): Path<String>,
) -> Response {
    match s.lanyard.command_targets(&uuid).await {
        Ok(t) => {
            let mut p = progress(&t);
            p["text"] = Value::String(progress_text(&p));
            Json(p).into_response()
        }
        Err(e) => crate::ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_choices_are_checked() {
        assert!(matches!(
            command_spec("raw", "EraseDevice"),
            Ok(CommandSpec::Raw { raw_request_type, .. }) if raw_request_type == "EraseDevice"
        ));
        assert!(command_spec("ProfileList", "").is_ok());
        assert!(command_spec("nonsense", "").is_err());
        assert!(channel("sideways").is_err());
    }

    #[test]
    fn inventory_is_flattened() {
        let mut out = Vec::new();
        flatten(
            "",
            &json!({"DeviceInformation": {"OSVersion": "15.2", "IsSupervised": false}}),
            &mut out,
        );
        assert!(out.contains(&("DeviceInformation.OSVersion".into(), "15.2".into())));
        assert!(out.contains(&("DeviceInformation.IsSupervised".into(), "false".into())));
    }
}
