//! The simulated Mac end to end against an in-process stand-in that speaks the Lanyard
//! enrollment contract over TLS: discovery, the `apple-as-web` challenge, two sign-in pages
//! with a session cookie, the signed profile, SCEP, check-in and the command channel.
//!
//! The stand-in is deliberately small and strict (it checks `Mdm-Signature`, the bearer
//! token, the SCEP challenge and every body with `lanyard-proto`); it is not the server.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Form, Router};
use lanyard_pki::scep::{FailInfo, IssueDecision, ScepResponder};
use lanyard_pki::Ca;
use lanyard_proto::checkin::CheckinMessage;
use lanyard_proto::command::{encode_command, Command};
use lanyard_proto::profile::{
    build_enrollment_profile, EnrollmentProfileInput, ProfileUuids, ScepSettings, ServerCapability,
};
use lanyard_proto::{CommandReport, OsVersion, SecretString};
use lanyard_testkit::{Channel, Ownership, SimMac, SimOptions, Step};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use plist::{Dictionary, Value};

const PASSWORD: &str = "a long password";
const TOPIC: &str = "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9";

/// How the stand-in answers the two steps the Mac is strict about; tests change it to see the
/// simulated Mac refuse.
#[derive(Clone)]
struct Quirks {
    /// The `WWW-Authenticate` value of the 401.
    challenge: &'static str,
    /// The status of the final hand-off.
    hand_off_status: StatusCode,
    /// The scheme the final hand-off goes to.
    hand_off_scheme: &'static str,
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks {
            challenge: r#"Bearer method="apple-as-web", url="/enroll/sign-in""#,
            hand_off_status: StatusCode::PERMANENT_REDIRECT,
            hand_off_scheme: "apple-remotemanagement-user-login",
        }
    }
}

struct Stand {
    quirks: Mutex<Quirks>,
    ca: Ca,
    signer: (X509, PKey<Private>),
    /// The SCEP RA: it signs every CertRep.
    ra: (X509, PKey<Private>),
    base: String,
    sessions: Mutex<HashMap<String, Option<String>>>,
    tokens: Mutex<HashMap<String, String>>,
    challenges: Mutex<HashSet<String>>,
    checkins: Mutex<Vec<(String, String)>>,
    attrs_seen: Mutex<Vec<(String, String)>>,
    queue: Mutex<VecDeque<Command>>,
    reports: Mutex<Vec<CommandReport>>,
    /// Add this `AccessRights` value to the MDM payload (as a server gone wrong would).
    access_rights: Mutex<Option<Value>>,
}

type S = State<Arc<Stand>>;

fn random_hex() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).unwrap();
    hex::encode(b)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn refusal(status: StatusCode, message: &str) -> Response {
    html(
        status,
        format!(
            "<!doctype html><html><body><header>Example</header><main><h1>Cannot continue</h1>\
             <p id=\"message\">{message}</p></main></body></html>"
        ),
    )
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix("sid="))
        .map(str::to_owned)
        .next()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

async fn well_known(State(s): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let id = q.get("user-identifier").cloned().unwrap_or_default();
    if q.get("model-family").map(String::as_str) != Some("Mac") || !id.ends_with("@example.com") {
        return (StatusCode::NOT_FOUND, "This domain is not managed here").into_response();
    }
    axum::Json(serde_json::json!({
        "Servers": [
            {"Version": "mdm-adde", "BaseURL": format!("{}/adde", s.base)},
            {"Version": "mdm-byod", "BaseURL": format!("{}/enroll", s.base)}
        ]
    }))
    .into_response()
}

async fn enroll(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/pkcs7-signature")
    {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let Ok((content, _)) = lanyard_pki::verify_cms_attached_untrusted(&body) else {
        return (StatusCode::BAD_REQUEST, "bad signature").into_response();
    };
    let mi = lanyard_proto::decode_machine_info(&content).unwrap();
    assert!(!mi.has_device_identifiers());
    let os = mi.os_version().unwrap().unwrap();
    if !os.at_least(&OsVersion::DEFAULT_MACOS_MINIMUM) {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"error":"os_too_old","message":"macOS 15.2 or later is required (this Mac runs {os})"}}"#),
        )
            .into_response();
    }
    let email = bearer(&headers).and_then(|t| s.tokens.lock().unwrap().get(&t).cloned());
    let Some(email) = email else {
        let challenge = s.quirks.lock().unwrap().challenge;
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    };
    let challenge = random_hex();
    s.challenges.lock().unwrap().insert(challenge.clone());
    let input = EnrollmentProfileInput {
        organisation: "Example Ltd".into(),
        profile_identifier: "com.example.lanyard.enroll".into(),
        checkin_url: format!("{}/mdm/checkin", s.base),
        server_url: format!("{}/mdm/command", s.base),
        push_topic: TOPIC.into(),
        assigned_managed_apple_id: email,
        scep: ScepSettings {
            url: format!("{}/scep", s.base),
            challenge: SecretString::new(challenge),
            subject: vec![
                ("O".into(), "Example Ltd".into()),
                ("CN".into(), "Lanyard device identity".into()),
            ],
            key_size: 2048,
            name: Some("Lanyard".into()),
            ca_fingerprint: None,
        },
        ca_cert_der: Some(s.ca.cert_der().unwrap()),
        server_capabilities: ServerCapability::ALL.to_vec(),
        sign_message: true,
        uuids: ProfileUuids::random(),
    };
    let mut profile = build_enrollment_profile(&input).unwrap();
    if let Some(rights) = s.access_rights.lock().unwrap().clone() {
        let mut top: Dictionary = plist::from_bytes(&profile).unwrap();
        if let Some(Value::Array(payloads)) = top.get_mut("PayloadContent") {
            for p in payloads.iter_mut().filter_map(Value::as_dictionary_mut) {
                if p.get("PayloadType").and_then(Value::as_string) == Some("com.apple.mdm") {
                    p.insert("AccessRights".into(), rights.clone());
                }
            }
        }
        profile.clear();
        plist::to_writer_xml(&mut profile, &top).unwrap();
    }
    let signed = lanyard_pki::sign_cms(
        &s.signer.0,
        &s.signer.1,
        &[s.ca.certificate().clone()],
        &profile,
    )
    .unwrap();
    (
        [(header::CONTENT_TYPE, "application/x-apple-aspen-config")],
        signed,
    )
        .into_response()
}

async fn sign_in_page(State(s): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let sid = random_hex();
    s.sessions.lock().unwrap().insert(sid.clone(), None);
    let who = q.get("user-identifier").cloned().unwrap_or_default();
    let mut r = html(
        StatusCode::OK,
        format!(
            r#"<!doctype html><html><body><main><h1>Sign in</h1>
            <form method="post" action="sign-in">
              <input type="hidden" name="csrf" value="{sid}">
              <label>Email <input type="email" name="email" value="{who}"></label>
              <label>Password <input type="password" name="password"></label>
              <button type="submit">Continue</button>
            </form></main></body></html>"#
        ),
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        format!("sid={sid}; Path=/enroll; HttpOnly; Secure; SameSite=Lax")
            .parse()
            .unwrap(),
    );
    r
}

async fn sign_in_submit(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let Some(sid) = cookie(&headers) else {
        return refusal(StatusCode::BAD_REQUEST, "Your session has expired");
    };
    if f.get("csrf") != Some(&sid) || !s.sessions.lock().unwrap().contains_key(&sid) {
        return refusal(StatusCode::BAD_REQUEST, "Your session has expired");
    }
    let email = f.get("email").cloned().unwrap_or_default();
    if !email.ends_with("@example.com") || f.get("password").map(String::as_str) != Some(PASSWORD) {
        return refusal(StatusCode::FORBIDDEN, "Wrong email or password");
    }
    s.sessions.lock().unwrap().insert(sid, Some(email));
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/enroll/details")],
    )
        .into_response()
}

async fn details_page(State(s): S, headers: HeaderMap) -> Response {
    let signed_in = cookie(&headers)
        .and_then(|sid| s.sessions.lock().unwrap().get(&sid).cloned().flatten())
        .is_some();
    if !signed_in {
        return refusal(StatusCode::UNAUTHORIZED, "Sign in first");
    }
    html(
        StatusCode::OK,
        r#"<!doctype html><html><body><main><h1>About this Mac</h1>
        <form method="post">
          <label><input type="radio" name="ownership" value="employee" checked> Mine</label>
          <label><input type="radio" name="ownership" value="corporate"> My employer's</label>
          <label><input type="radio" name="ownership" value="shared"> Shared</label>
          <label>Department <input name="attr:department" required></label>
          <label>Site <select name="attr:site"><option value="lon">London</option><option value="par">Paris</option></select></label>
          <button type="submit" name="go" value="1">Enroll</button>
        </form></main></body></html>"#
            .to_owned(),
    )
}

async fn details_submit(
    State(s): S,
    headers: HeaderMap,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let email =
        cookie(&headers).and_then(|sid| s.sessions.lock().unwrap().get(&sid).cloned().flatten());
    let Some(email) = email else {
        return refusal(StatusCode::UNAUTHORIZED, "Sign in first");
    };
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match get("ownership").as_deref() {
        Some("employee") | Some("shared") => {}
        Some("corporate") => {
            return refusal(
                StatusCode::FORBIDDEN,
                "Corporate devices cannot be enrolled here",
            )
        }
        _ => return refusal(StatusCode::BAD_REQUEST, "Choose who owns this Mac"),
    }
    if get("attr:department").unwrap_or_default().is_empty() {
        return refusal(StatusCode::UNPROCESSABLE_ENTITY, "Department is required");
    }
    s.attrs_seen
        .lock()
        .unwrap()
        .extend(f.iter().filter(|(k, _)| k.starts_with("attr:")).cloned());
    let token = random_hex();
    s.tokens.lock().unwrap().insert(token.clone(), email);
    let q = s.quirks.lock().unwrap().clone();
    (
        q.hand_off_status,
        [(
            header::LOCATION,
            format!(
                "{}://authentication-results?access-token={token}",
                q.hand_off_scheme
            ),
        )],
    )
        .into_response()
}

async fn scep(State(s): S, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    let responder = ScepResponder::new(&s.ca, &s.ra.0, &s.ra.1, Some(s.ca.private_key()));
    let reply = match q.get("operation").map(String::as_str) {
        Some("GetCACaps") => responder.ca_caps(),
        Some("GetCACert") => responder.ca_cert().unwrap(),
        Some("PKIOperation") => {
            let policy = |_: &lanyard_pki::scep::PkiRequest, csr: &lanyard_pki::Csr| {
                let ok = csr
                    .challenge_password()
                    .is_some_and(|c| s.challenges.lock().unwrap().remove(c));
                if ok {
                    Ok(IssueDecision {
                        validity: std::time::Duration::from_secs(365 * 86_400),
                        subject_override: None,
                    })
                } else {
                    Err(FailInfo::BadRequest)
                }
            };
            match responder.pki_operation(&body, policy) {
                Ok(r) => r,
                Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
            }
        }
        _ => return StatusCode::BAD_REQUEST.into_response(),
    };
    ([(header::CONTENT_TYPE, reply.content_type)], reply.body).into_response()
}

/// The checks every MDM request gets: signature by an identity of our CA, and a known token on
/// the user channel.
fn authorise(s: &Stand, headers: &HeaderMap, body: &[u8]) -> Result<(), (StatusCode, String)> {
    let sig = headers
        .get("Mdm-Signature")
        .ok_or_else(|| (StatusCode::UNAUTHORIZED, "no Mdm-Signature".to_owned()))?;
    lanyard_pki::verify_detached(sig.as_bytes(), body, s.ca.certificate())
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    // On macOS the access token comes on user-channel requests only (Apple, "Onboarding users
    // with account sign-in").
    let user_channel = plist::from_bytes::<plist::Dictionary>(body)
        .is_ok_and(|d| d.contains_key("EnrollmentUserID"));
    let known = bearer(headers).is_some_and(|t| s.tokens.lock().unwrap().contains_key(&t));
    if user_channel && !known {
        return Err((StatusCode::UNAUTHORIZED, "unknown access token".to_owned()));
    }
    Ok(())
}

async fn checkin(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorise(&s, &headers, &body) {
        return r.into_response();
    }
    let m = lanyard_proto::decode_checkin(&body).unwrap();
    if let CheckinMessage::Authenticate(a) = &m {
        assert!(a.serial_number.is_none() && a.identity.udid.is_none());
    }
    s.checkins
        .lock()
        .unwrap()
        .push((m.message_type().to_owned(), m.enrollment().id.clone()));
    StatusCode::OK.into_response()
}

async fn command(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorise(&s, &headers, &body) {
        return r.into_response();
    }
    let report = lanyard_proto::decode_command_report(&body).unwrap();
    s.reports.lock().unwrap().push(report);
    match s.queue.lock().unwrap().pop_front() {
        Some(c) => encode_command(&c).unwrap().into_response(),
        None => StatusCode::OK.into_response(),
    }
}

struct Running {
    stand: Arc<Stand>,
    url: String,
    ca_pem: Vec<u8>,
}

async fn start() -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("https://{addr}");
    let ca = Ca::generate("Stand-in CA", "Example Ltd").unwrap();
    let tls = ca
        .issue_tls_server(&[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    let signer = ca.issue_cms_signer("Stand-in profile signer", 30).unwrap();
    let signer = (
        X509::from_der(&signer.cert_der).unwrap(),
        PKey::private_key_from_pem(signer.key_pem.as_bytes()).unwrap(),
    );
    let ra = ca.issue_scep_ra("Stand-in SCEP RA", 30).unwrap();
    let ra = (
        X509::from_der(&ra.cert_der).unwrap(),
        PKey::private_key_from_pem(ra.key_pem.as_bytes()).unwrap(),
    );
    let ca_pem = ca.cert_pem().unwrap().into_bytes();
    let key_der = PKey::private_key_from_pem(tls.key_pem.as_bytes())
        .unwrap()
        .private_key_to_pkcs8()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(
            tls.cert_der.clone(),
        )],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
    )
    .unwrap();
    let stand = Arc::new(Stand {
        quirks: Mutex::default(),
        ca,
        signer,
        ra,
        base: base.clone(),
        sessions: Mutex::default(),
        tokens: Mutex::default(),
        challenges: Mutex::default(),
        checkins: Mutex::default(),
        attrs_seen: Mutex::default(),
        queue: Mutex::default(),
        reports: Mutex::default(),
        access_rights: Mutex::default(),
    });
    let app = Router::new()
        .route("/.well-known/com.apple.remotemanagement", get(well_known))
        .route("/enroll", post(enroll))
        .route("/enroll/sign-in", get(sign_in_page).post(sign_in_submit))
        .route("/enroll/details", get(details_page).post(details_submit))
        .route("/scep", get(scep).post(scep))
        .route("/mdm/checkin", put(checkin))
        .route("/mdm/command", put(command))
        .with_state(stand.clone());
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .unwrap();
    tokio::spawn(async move {
        let _ = server.serve(app.into_make_service()).await;
    });
    Running {
        stand,
        url: base,
        ca_pem,
    }
}

fn opts(r: &Running, email: &str) -> SimOptions {
    let mut o = SimOptions::new(&r.url, email, PASSWORD);
    o.ca_cert_pem = Some(r.ca_pem.clone());
    o.push_topic = Some(TOPIC.into());
    o.attrs = BTreeMap::from([("department".to_owned(), "Research".to_owned())]);
    o
}

#[tokio::test]
async fn enrolls_checks_in_and_answers_commands() {
    let r = start().await;
    let mut o = opts(&r, "Ann@example.com");
    o.attrs.insert("unasked".into(), "x".into());
    let mut mac = SimMac::new(o).unwrap();
    let report = mac
        .enroll()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{:#?}", mac.steps()));
    assert_eq!(report.managed_apple_id, "Ann@example.com");
    assert_eq!(report.topic, TOPIC);
    assert_eq!(report.server_url, format!("{}/mdm/command", r.url));
    assert_eq!(
        report.identity_certificate.subject,
        "O=Example Ltd, CN=Lanyard device identity"
    );
    assert!(report.identity_certificate.issuer.contains("Stand-in CA"));
    assert_eq!(
        report.profile_signer_subject,
        "O=Example Ltd, CN=Stand-in profile signer"
    );
    assert!(report.steps.len() >= 8, "{:#?}", report.steps);
    let text = report.steps.join("\n");
    assert!(
        text.contains("no page asked for attribute(s) unasked (not sent)"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD) && !text.contains(mac.access_token().unwrap()));

    let eid = mac.enrollment_id().to_owned();
    let euid = mac.enrollment_user_id().to_owned();
    assert_eq!(
        *r.stand.checkins.lock().unwrap(),
        vec![
            ("Authenticate".to_owned(), eid.clone()),
            ("TokenUpdate".to_owned(), eid.clone()),
            ("TokenUpdate".to_owned(), format!("{eid}:{euid}")),
        ]
    );
    assert_eq!(
        *r.stand.attrs_seen.lock().unwrap(),
        vec![
            ("attr:department".to_owned(), "Research".to_owned()),
            ("attr:site".to_owned(), "lon".to_owned()),
        ]
    );

    // nothing queued
    assert!(mac.idle().await.unwrap().is_none());
    // two commands, answered by the built-in responder
    let mut q = Dictionary::new();
    q.insert(
        "Queries".into(),
        Value::Array(vec![
            Value::String("OSVersion".into()),
            Value::String("SerialNumber".into()),
        ]),
    );
    r.stand.queue.lock().unwrap().extend([
        Command::new("C-1", "DeviceInformation", q),
        Command::new("C-2", "ProfileList", Dictionary::new()),
        Command::new("C-3", "EraseDevice", Dictionary::new()),
    ]);
    let handled = mac.run_commands(Channel::Device, 10).await.unwrap();
    let summary: Vec<(&str, &str)> = handled
        .iter()
        .map(|h| (h.request_type.as_str(), h.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("DeviceInformation", "Acknowledged"),
            ("ProfileList", "Acknowledged"),
            ("EraseDevice", "Error"),
        ]
    );
    let reports = r.stand.reports.lock().unwrap().clone();
    // Idle, Idle, three answers
    assert_eq!(reports.len(), 5);
    let qr = reports[2].result["QueryResponses"].as_dictionary().unwrap();
    assert_eq!(qr["OSVersion"].as_string(), Some("15.2"));
    assert!(!qr.contains_key("SerialNumber"));
    let list = reports[3].result["ProfileList"].as_array().unwrap();
    assert_eq!(
        list[0].as_dictionary().unwrap()["PayloadIdentifier"].as_string(),
        Some("com.example.lanyard.enroll")
    );
    assert!(!reports[4].error_chain.is_empty());

    // user channel idles with EnrollmentUserID
    assert!(mac.idle_on(Channel::User).await.unwrap().is_none());
    let last = r
        .stand
        .reports
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .enrollment
        .id
        .clone();
    assert_eq!(last, format!("{eid}:{euid}"));

    // removing the profile checks out; a new enrollment of the same Mac gets new ids
    mac.check_out().await.unwrap();
    assert!(!mac.is_enrolled());
    assert_eq!(
        r.stand.checkins.lock().unwrap().last().unwrap(),
        &("CheckOut".to_owned(), eid.clone())
    );
    assert_eq!(mac.idle().await.unwrap_err().step(), Step::Command);
    mac.renew_enrollment_ids();
    assert_ne!(mac.enrollment_id(), eid);
    let again = mac.enroll().await.unwrap();
    assert_eq!(again.enrollment_id, mac.enrollment_id());
}

#[tokio::test]
async fn refusals_name_the_step_and_the_server_message() {
    let r = start().await;

    let mut o = opts(&r, "ann@example.com");
    o.ownership = Ownership::Corporate;
    let err = SimMac::new(o).unwrap().enroll().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "sign-in refused (403): Corporate devices cannot be enrolled here"
    );

    let mut o = opts(&r, "ann@example.com");
    o.password = "wrong".into();
    let err = SimMac::new(o).unwrap().enroll().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "sign-in refused (403): Wrong email or password"
    );

    let mut o = opts(&r, "ann@example.com");
    o.attrs.clear();
    let err = SimMac::new(o).unwrap().enroll().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "sign-in refused (422): Department is required"
    );

    let mut o = opts(&r, "ann@example.com");
    o.os_version = "15.1".into();
    let err = SimMac::new(o).unwrap().enroll().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "enrollment refused (403): macOS 15.2 or later is required (this Mac runs 15.1)"
    );

    // The Mac refuses a profile whose Topic is not its server's push certificate's…
    let mut o = opts(&r, "ann@example.com");
    o.push_topic = Some("com.apple.mgmt.External.00000000-0000-0000-0000-000000000001".into());
    let err = SimMac::new(o).unwrap().enroll().await.unwrap_err();
    assert_eq!(err.step(), Step::Profile, "{err}");
    assert!(err.message().contains("push certificate"), "{err}");
    // …and one with AccessRights, whatever its value or type (User Enrollment has none).
    for rights in [Value::Integer(8191.into()), Value::String("0".into())] {
        *r.stand.access_rights.lock().unwrap() = Some(rights.clone());
        let err = SimMac::new(opts(&r, "ann@example.com"))
            .unwrap()
            .enroll()
            .await
            .unwrap_err();
        assert_eq!(err.step(), Step::Profile, "{err}");
        assert!(err.message().contains("AccessRights"), "{rights:?}: {err}");
    }
    *r.stand.access_rights.lock().unwrap() = None;

    let err = SimMac::new(opts(&r, "bob@elsewhere.example"))
        .unwrap()
        .enroll()
        .await
        .unwrap_err();
    assert_eq!(err.step(), Step::Discovery);
    assert_eq!(err.status(), Some(404));

    // without the CA (system roots only) the TLS handshake fails; on a machine without
    // system roots the Mac cannot even be built
    let mut o = opts(&r, "ann@example.com");
    o.ca_cert_pem = None;
    match SimMac::new(o) {
        Ok(mut mac) => {
            let err = mac.enroll().await.unwrap_err();
            assert_eq!(err.step(), Step::Discovery);
            assert!(err.status().is_none());
        }
        Err(e) => assert_eq!(e.step(), Step::Setup),
    }
    // ... unless told to accept anything (then the profile is still verified via GetCACert)
    let mut o = opts(&r, "ann@example.com");
    o.ca_cert_pem = None;
    o.insecure = true;
    SimMac::new(o).unwrap().enroll().await.unwrap();
}

#[tokio::test]
async fn a_challenge_or_hand_off_a_mac_would_not_take_is_refused() {
    let r = start().await;
    let set = |q: Quirks| *r.stand.quirks.lock().unwrap() = q;
    let enroll = || async {
        SimMac::new(opts(&r, "ann@example.com"))
            .unwrap()
            .enroll()
            .await
    };

    // Auth-params without their commas are not RFC 7235.
    set(Quirks {
        challenge: r#"Bearer method="apple-as-web" url="/enroll/sign-in""#,
        ..Quirks::default()
    });
    let err = enroll().await.unwrap_err();
    assert_eq!(err.step(), Step::Enrollment, "{err}");
    assert!(
        err.message()
            .starts_with("the WWW-Authenticate challenge is not RFC 7235 (expected ','"),
        "{err}"
    );

    // The hand-off with a 303 or a 302 instead of the 308 Apple documents.
    for status in [StatusCode::SEE_OTHER, StatusCode::FOUND] {
        set(Quirks {
            hand_off_status: status,
            ..Quirks::default()
        });
        let err = enroll().await.unwrap_err();
        assert_eq!(err.step(), Step::SignIn, "{err}");
        assert!(
            err.message().contains(&format!(
                "handed off to apple-remotemanagement-user-login: with {}, not 308",
                status.as_u16()
            )),
            "{err}"
        );
    }

    // A hand-off to another scheme.
    set(Quirks {
        hand_off_scheme: "x-other-login",
        ..Quirks::default()
    });
    let err = enroll().await.unwrap_err();
    assert_eq!(err.step(), Step::SignIn, "{err}");
    assert!(
        err.message()
            .contains("handed off to x-other-login:, not apple-remotemanagement-user-login:"),
        "{err}"
    );

    // As Apple writes them, both are taken.
    set(Quirks::default());
    enroll().await.unwrap();
}

#[tokio::test]
async fn command_line_prints_the_report() {
    let r = start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &r.ca_pem).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lanyard-sim"))
        .args(["enroll", "--server", &r.url, "--email", "ann@example.com"])
        .args(["--attr", "department=Sales", "--ownership", "shared"])
        .arg("--ca-cert")
        .arg(&ca)
        .env("LANYARD_SIM_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["managed_apple_id"], "ann@example.com");
    assert!(v["identity_certificate"]["serial_hex"].as_str().is_some());

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lanyard-sim"))
        .args(["enroll", "--server", &r.url, "--email", "ann@example.com"])
        .args(["--password", "nope", "--insecure"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: sign-in refused (403): Wrong email or password"
    );
    assert!(out.stdout.is_empty());
}
