//! Portal pages about the fleet: the summary, the device list, one device (inventory, custom
//! attributes, command history and results, send a command, unenroll) and a command's progress
//! across its targets.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use lanyard_core::commands::{
    CommandChannel, CommandSpec, CommandState, CommandTarget, CommandView,
};
use lanyard_core::enrollment::{list_enrollments, EnrollmentView};
use lanyard_core::CoreError;
use lanyard_store::{DeviceListQuery, DeviceSort, EnrollmentStatus};

use super::{
    change_form, error_page, layout, message_page, notice, or_dash, page_number, pager, when, Nav,
    Notice, Session, Viewer, PAGE_SIZE,
};
use crate::html::{esc, qv, see_other};
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

fn command_form(sess: &Session, action: &str, button: &str) -> String {
    let options: String = COMMAND_CHOICES
        .iter()
        .map(|(v, l)| format!("<option value=\"{v}\">{l}</option>"))
        .collect();
    format!(
        "<form method=\"post\" action=\"{action}\" class=\"inline-form\">{csrf}\
         <label for=\"command\">Command</label><select id=\"command\" name=\"command\">{options}</select>\
         <label for=\"raw\">Request type (for Other)</label>\
         <input id=\"raw\" name=\"raw\" placeholder=\"e.g. EraseDevice\" maxlength=\"100\">\
         <label for=\"channel\">Channel</label><select id=\"channel\" name=\"channel\">\
         <option value=\"device\">Device</option><option value=\"user\">User</option></select>\
         <button type=\"submit\">{button}</button></form>",
        csrf = sess.csrf_field(),
        action = esc(action),
    )
}

async fn summary(State(s): State<AppState>, Viewer(sess): Viewer) -> Response {
    match summary_body(&s).await {
        Ok(body) => layout(&sess, StatusCode::OK, Nav::Summary, "Summary", &body),
        Err(e) => error_page(Some(&sess), e),
    }
}

async fn summary_body(s: &AppState) -> Result<String, CoreError> {
    let sum = s.lanyard.summary(chrono::Utc::now()).await?;
    let push = s.lanyard.push_certificate_info(&s.secrets).await?;
    let add = |f: fn(&lanyard_core::listings::ModeCounts) -> i64| -> i64 {
        sum.by_mode.iter().map(f).sum()
    };
    let mut html = String::new();
    if push.is_none() {
        // The profile's Topic is the push certificate's and can never change after enrollment,
        // so nothing enrolls before one is uploaded.
        html.push_str(
            "<p id=\"enrollment-closed\" class=\"notice error\" role=\"alert\">Enrollment is \
             closed: there is no APNs push certificate, so every Mac is refused at service \
             discovery and at the enrollment URL. <a href=\"/portal/apns\">Upload the push \
             certificate</a> to open enrollment.</p>",
        );
    }
    html.push_str("<section class=\"tiles\" aria-label=\"Counts\">");
    for (label, n) in [
        ("Enrolled devices", add(|m| m.enrolled)),
        ("Enrollments in progress", add(|m| m.in_progress)),
        ("Checked out", add(|m| m.checked_out)),
        ("Inactive", add(|m| m.inactive)),
        ("Users", sum.users),
    ] {
        html.push_str(&format!(
            "<div class=\"tile\"><span class=\"num\">{n}</span><span>{label}</span></div>"
        ));
    }
    html.push_str("</section>");

    html.push_str(
        "<h2>Enrollments by mode and state</h2><table class=\"by-mode\"><thead><tr>\
         <th scope=\"col\">Device Enrollment Mode</th><th scope=\"col\">Enrolled</th>\
         <th scope=\"col\">In progress</th><th scope=\"col\">Checked out</th>\
         <th scope=\"col\">Inactive</th><th scope=\"col\">Total</th></tr></thead><tbody>",
    );
    if sum.by_mode.is_empty() {
        html.push_str(
            "<tr><td>User Enrollment</td><td>0</td><td>0</td><td>0</td><td>0</td><td>0</td></tr>",
        );
    }
    for m in &sum.by_mode {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.mode),
            m.enrolled,
            m.in_progress,
            m.checked_out,
            m.inactive,
            m.total
        ));
    }
    html.push_str("</tbody></table>");

    html.push_str("<h2>Expiring certificates and tokens</h2><ul class=\"plain\">");
    match push {
        Some(info) => {
            let class = if info.warning.is_some() { "warn" } else { "" };
            html.push_str(&format!(
                "<li class=\"{class}\">APNs certificate <strong>{}</strong> expires {} ({} days \
                 left){}</li>",
                esc(&info.topic),
                when(Some(info.not_after)),
                info.days_left,
                info.warning
                    .map(|w| format!(" — {}", esc(&w)))
                    .unwrap_or_default()
            ));
        }
        None => html.push_str(
            "<li class=\"warn\">No APNs certificate yet: enrollment is closed. \
             <a href=\"/portal/apns\">Upload one</a>.</li>",
        ),
    }
    for t in s.abm.list().await? {
        let expiry = match (t.token_expires_at, t.days_left) {
            (Some(at), Some(days)) => format!("expires {} ({days} days left)", when(Some(at))),
            _ => "has no token file yet".into(),
        };
        let class = if t.warning.is_some() || t.token_expires_at.is_none() {
            "warn"
        } else {
            ""
        };
        html.push_str(&format!(
            "<li class=\"{class}\">ABM server token <a href=\"/portal/tokens\">{}</a> {expiry}{}</li>",
            esc(&t.name),
            t.warning
                .map(|w| format!(" — {}", esc(&w)))
                .unwrap_or_default()
        ));
    }
    if sum.expiring.is_empty() {
        html.push_str(&format!(
            "<li>No device identity certificate expires within {} days.</li>",
            lanyard_core::listings::EXPIRY_WARNING_DAYS
        ));
    }
    for e in &sum.expiring {
        html.push_str(&format!(
            "<li class=\"warn\">Identity certificate of <a href=\"/portal/devices/{id}\">{who}</a> \
             expires {t}</li>",
            id = qv(&e.id),
            who = esc(&e.managed_apple_id),
            t = when(e.identity_certificate_not_after)
        ));
    }
    html.push_str("</ul>");

    let latest = list_enrollments(
        &s.lanyard,
        &DeviceListQuery {
            descending: true,
            limit: 10,
            ..DeviceListQuery::default()
        },
    )
    .await?;
    html.push_str("<h2>Recent enrollments</h2>");
    html.push_str(&device_table(&latest, None));
    Ok(html)
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

fn device_table(list: &[EnrollmentView], sort: Option<&SortLinks>) -> String {
    if list.is_empty() {
        return "<p class=\"muted\">No devices match.</p>".into();
    }
    let mut html = String::from("<table class=\"devices\"><thead><tr>");
    for (label, key) in DEVICE_COLUMNS {
        match (sort, key) {
            (Some(links), Some(key)) => {
                let current = links.sort == *key;
                let descending = current && !links.descending;
                let aria = match (current, links.descending) {
                    (true, true) => " aria-sort=\"descending\"",
                    (true, false) => " aria-sort=\"ascending\"",
                    _ => "",
                };
                let arrow = match (current, links.descending) {
                    (true, true) => " ↓",
                    (true, false) => " ↑",
                    _ => "",
                };
                html.push_str(&format!(
                    "<th scope=\"col\"{aria}><a href=\"{}&amp;sort={}&amp;dir={}\">{label}{arrow}</a></th>",
                    esc(&links.base),
                    key.key(),
                    if descending { "desc" } else { "asc" },
                ));
            }
            _ => html.push_str(&format!("<th scope=\"col\">{label}</th>")),
        }
    }
    html.push_str("</tr></thead><tbody>");
    for e in list {
        html.push_str(&format!(
            "<tr><td><a href=\"/portal/devices/{id}\">{who}</a></td><td>{model}</td><td>{os}</td>\
             <td>{mode}</td><td>{own}</td><td>{status}</td><td>{seen}</td></tr>",
            id = qv(&e.id),
            who = esc(&e.managed_apple_id),
            model = or_dash(e.model_family.as_deref().or(e.product.as_deref())),
            os = or_dash(e.os_version.as_deref()),
            mode = esc(&e.enrollment_mode),
            own = esc(&e.ownership),
            status = esc(e.status.label()),
            seen = when(e.last_seen_at),
        ));
    }
    html.push_str("</tbody></table>");
    html
}

#[derive(Deserialize, Default)]
struct DeviceListParams {
    search: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<String>,
    done: Option<String>,
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
    let list = match s
        .lanyard
        .device_list(&DeviceListQuery {
            search: Some(search.clone()),
            status,
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
    let statuses: String = EnrollmentStatus::ALL
        .iter()
        .map(|v| (v.as_str(), v.label()))
        .chain([("all", "All")])
        .map(|(v, l)| {
            let sel = if v == status_raw { " selected" } else { "" };
            format!("<option value=\"{v}\"{sel}>{l}</option>")
        })
        .collect();
    let done = match q.done.as_deref() {
        Some("unenroll") => Some(Notice::Ok(
            "Unenrollment queued: the Mac removes its work data at its next check-in.".into(),
        )),
        _ => None,
    };
    let filter = format!(
        "/portal/devices?search={}&status={}",
        qv(&search),
        qv(&status_raw)
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
    let body = format!(
        "{done}<form method=\"get\" action=\"/portal/devices\" class=\"search\" role=\"search\">\
         <label for=\"search\">Search managed Apple ID, email or model</label>\
         <input id=\"search\" type=\"search\" name=\"search\" value=\"{search}\" maxlength=\"200\">\
         <label for=\"status\">Status</label><select id=\"status\" name=\"status\">{statuses}</select>\
         <button type=\"submit\">Search</button></form>\
         <p class=\"muted\" id=\"total\">{count}</p>{table}{pager}\
         <details class=\"bulk\"><summary>Send a command to every enrolled device matching the \
         search</summary>{bulk}</details>",
        done = notice(done),
        search = esc(&search),
        table = device_table(&list.items, Some(&links)),
        pager = pager(&paged, page, more),
        bulk = command_form(
            &sess,
            &format!("/portal/commands?search={}", qv(&search)),
            "Send to matching devices"
        ),
    );
    layout(&sess, StatusCode::OK, Nav::Devices, "Devices", &body)
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

fn history_table(list: &[CommandView]) -> String {
    if list.is_empty() {
        return "<p class=\"muted\">No commands yet.</p>".into();
    }
    let mut html = String::from(
        "<table class=\"history\"><thead><tr><th scope=\"col\">Command</th>\
         <th scope=\"col\">Channel</th><th scope=\"col\">Status</th><th scope=\"col\">Queued</th>\
         <th scope=\"col\">Finished</th><th scope=\"col\">Result</th></tr></thead><tbody>",
    );
    for c in list {
        let result = match (&c.result, &c.error_chain) {
            (_, Some(err)) => format!(
                "<details><summary>Error</summary><pre>{}</pre></details>",
                esc(&serde_json::to_string_pretty(err).unwrap_or_default())
            ),
            (Some(r), None) => format!(
                "<details><summary>Result</summary><pre>{}</pre></details>",
                esc(&serde_json::to_string_pretty(r).unwrap_or_default())
            ),
            _ => "—".into(),
        };
        html.push_str(&format!(
            "<tr data-status=\"{st}\"><td><a href=\"/portal/commands/{uuid}\">{rt}</a></td>\
             <td>{ch}</td><td class=\"status\">{st}</td><td>{q}</td><td>{f}</td><td>{result}</td></tr>",
            uuid = qv(&c.command_uuid),
            rt = esc(&c.request_type),
            ch = esc(c.channel.as_str()),
            st = esc(c.status.as_str()),
            q = when(Some(c.queued_at)),
            f = when(c.finished_at),
        ));
    }
    html.push_str("</tbody></table>");
    html
}

#[derive(Deserialize, Default)]
struct DoneQuery {
    done: Option<String>,
}

async fn device(
    State(s): State<AppState>,
    Viewer(sess): Viewer,
    Path(id): Path<String>,
    q: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let done = match q.ok().and_then(|Query(q)| q.done).as_deref() {
        Some("command") => Some(Notice::Ok(
            "Command queued; its result appears below when the Mac answers.".into(),
        )),
        _ => None,
    };
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
    let mut facts = vec![
        ("Managed Apple ID", esc(&e.managed_apple_id)),
        ("Device Enrollment Mode", esc(&e.enrollment_mode)),
        ("Ownership", esc(&e.ownership)),
        ("Status", esc(e.status.label())),
        ("Model family", or_dash(e.model_family.as_deref())),
        ("Product", or_dash(e.product.as_deref())),
        ("OS version", or_dash(e.os_version.as_deref())),
        ("Build", or_dash(e.build_version.as_deref())),
        ("Enrolled", when(e.enrolled_at)),
        ("Last check-in", when(e.last_seen_at)),
        (
            "Reachable by push",
            if e.reachable { "Yes" } else { "No" }.into(),
        ),
        ("Last push", or_dash(e.last_push_status.as_deref())),
        (
            "Identity certificate expires",
            when(e.identity_certificate_not_after),
        ),
        ("Enrollment id", esc(&e.id)),
    ];
    if let Some(u) = &e.enrollment_user_id {
        facts.push(("EnrollmentUserID", esc(u)));
    }
    let facts: String = facts
        .into_iter()
        .map(|(k, v)| format!("<dt>{k}</dt><dd>{v}</dd>"))
        .collect();
    let attrs = if e.attributes.is_empty() {
        "<p class=\"muted\">No custom attributes.</p>".to_string()
    } else {
        let rows: String = e
            .attributes
            .iter()
            .map(|(k, v)| format!("<dt>{}</dt><dd>{}</dd>", esc(k), esc(v)))
            .collect();
        format!("<dl class=\"facts\">{rows}</dl>")
    };
    let mut inv = Vec::new();
    flatten("", &inventory, &mut inv);
    let inv = if inv.is_empty() {
        "<p class=\"muted\">Nothing reported yet; send Device information.</p>".to_string()
    } else {
        let rows: String = inv
            .iter()
            .map(|(k, v)| {
                format!(
                    "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                    esc(k),
                    esc(v)
                )
            })
            .collect();
        format!("<table class=\"inventory\"><tbody>{rows}</tbody></table>")
    };
    let actions = if e.status == EnrollmentStatus::CheckedOut {
        "<p class=\"muted\">This device has checked out; no commands can be sent.</p>".to_string()
    } else {
        format!(
            "{cmd}<form method=\"post\" action=\"/portal/devices/{id}/unenroll\" class=\"danger\">{csrf}\
             <label class=\"check\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> \
             Remove the MDM profile and the work data from this Mac</label>\
             <button type=\"submit\" class=\"danger\">Unenroll</button></form>",
            cmd = command_form(sess, &format!("/portal/devices/{}/commands", qv(id)), "Send command"),
            id = qv(id),
            csrf = sess.csrf_field(),
        )
    };
    let body = format!(
        "{msg}<div class=\"cols\"><section><h2>Device</h2><dl class=\"facts\">{facts}</dl>\
         <h2>Custom attributes</h2>{attrs}</section><section><h2>Actions</h2>{actions}</section></div>\
         <h2>Inventory</h2>{inv}<h2>Commands</h2>{hist}",
        msg = notice(message),
        hist = history_table(&history),
    );
    layout(sess, status, Nav::Devices, &e.managed_apple_id, &body)
}

async fn device_command(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (sess, f) = match change_form(&s, &headers, form).await {
        Ok(v) => v,
        Err(r) => return r,
    };
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
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (sess, f) = match change_form(&s, &headers, form).await {
        Ok(v) => v,
        Err(r) => return r,
    };
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
    headers: HeaderMap,
    q: Result<Query<BulkQuery>, QueryRejection>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let (sess, f) = match change_form(&s, &headers, form).await {
        Ok(v) => v,
        Err(r) => return r,
    };
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
    let rows: String = targets
        .iter()
        .take(500)
        .map(|t| {
            format!(
                "<tr><td><a href=\"/portal/devices/{id}\">{id_text}</a></td><td>{st}</td><td>{f}</td></tr>",
                id = qv(&t.enrollment_id),
                id_text = esc(&t.enrollment_id),
                st = esc(t.status.as_str()),
                f = when(t.finished_at),
            )
        })
        .collect();
    let body = format!(
        "<p class=\"progress\"><progress id=\"progress-bar\" max=\"{total}\" value=\"{ack}\">\
         </progress> <span id=\"progress\" role=\"status\" aria-live=\"polite\" \
         data-poll=\"/portal/commands/{uuid}/progress\">{text}</span></p>\
         <table><thead><tr><th scope=\"col\">Enrollment</th><th scope=\"col\">Status</th>\
         <th scope=\"col\">Finished</th></tr></thead><tbody>{rows}</tbody></table>",
        total = p["total"],
        ack = p["acknowledged"],
        uuid = qv(&uuid),
        text = esc(&progress_text(&p)),
    );
    layout(
        &sess,
        StatusCode::OK,
        Nav::Devices,
        &format!("Command {rt}"),
        &body,
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
