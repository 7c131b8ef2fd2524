//! [`SimMac`]: a Mac (macOS 15.2 by default) doing an account-driven User Enrollment against a
//! Lanyard server over real HTTPS, then talking on the check-in and command channels.
//!
//! The flow, step by step (each failure is a [`SimError`] naming the step):
//!
//! 1. **discovery** — `GET {server}/.well-known/com.apple.remotemanagement?user-identifier=…&model-family=Mac`,
//!    pick the `mdm-byod` entry's `BaseURL`;
//! 2. **enrollment** — `POST BaseURL` with the CMS-signed MachineInfo
//!    (`application/pkcs7-signature`), expect `401` with
//!    `WWW-Authenticate: Bearer method="apple-as-web", url="…"` (read strictly by RFC 7235: a
//!    challenge whose auth-params lack their commas is refused);
//! 3. **sign-in** — act as the web view: fetch the sign-in URL, fill and submit each page's
//!    first form, follow redirects by hand until a `308 Permanent Redirect` to
//!    `apple-remotemanagement-user-login://authentication-results?access-token=…` (another
//!    status, or a hand-off to another scheme, is refused);
//! 4. **profile** — `POST BaseURL` again with `Authorization: Bearer <token>`, verify the
//!    CMS signature chains to the Lanyard CA, check `EnrollmentMode` `BYOD` and
//!    `AssignedManagedAppleID`;
//! 5. **SCEP** — a fresh RSA key, GetCACaps, GetCACert, PKCSReq → identity certificate (the
//!    CertRep must be signed by the RA GetCACert served, see [`crate::scep_client`]);
//! 6. **check-in** — `Authenticate`, `TokenUpdate` (device channel), `TokenUpdate` (user
//!    channel), each `PUT` to `CheckInURL` with `Mdm-Signature` and the bearer token;
//! 7. **command channel** — [`SimMac::idle`], [`SimMac::respond`], [`SimMac::run_commands`];
//! 8. **identity renewal** — an `InstallProfile` of its own enrollment profile renewed (same
//!    identifiers, a fresh SCEP payload) is checked like the enrollment profile and against
//!    the schema's update rules, then SCEP runs with the new challenge and every later request
//!    is signed by the new identity ([`SimMac::install_renewal`]).
//!
//! [`SimMac::enroll`] runs steps 1–6. [`SimMac::obtain_profile`] stops after step 4 so that
//! another SCEP client can use the profile's challenge, and [`SimMac::install_profile`] goes
//! on from there with the identity that client obtained.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use lanyard_pki::{name_to_string, CertInfo};
use lanyard_proto::CommandStatus;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use plist::Dictionary;
use rand::RngCore as _;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use url::Url;

use crate::commands::{
    builtin_reply, parse_command, Channel, HeldCertificate, InstalledProfile, Reply,
    ResponderContext, ServerCommand,
};
use crate::declarative::{self, DeclarativeState, Held};
use crate::device::{self, DeviceFacts, UserChannel};
use crate::error::{error_chain, Result, SimError, Step, StepContext as _};
use crate::profile::{
    check_push_topic, check_user_enrollment, parse_enrollment_profile, EnrollmentProfile,
};
use crate::scep_client::{self, ScepError};
use crate::webauth::{self, FormAnswers, RESULT_SCHEME};

/// Content type of the signed MachineInfo.
pub const MACHINE_INFO_CONTENT_TYPE: &str = "application/pkcs7-signature";
/// Content type of the enrollment profile.
pub const PROFILE_CONTENT_TYPE: &str = "application/x-apple-aspen-config";
/// Content type of check-in requests.
pub const CHECKIN_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm-checkin";
/// Content type of command-channel requests.
pub const COMMAND_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm";
/// Most sign-in pages (forms) the simulated Mac fills before giving up.
pub const MAX_SIGN_IN_PAGES: usize = 10;
/// Most commands [`SimMac::run_commands`] answers in one go by default.
pub const DEFAULT_MAX_COMMANDS: usize = 50;

/// How the person answers the sign-in pages' ownership question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// The person's own Mac (BYOD).
    #[default]
    Employee,
    /// A company-owned Mac.
    Corporate,
    /// A shared Mac.
    Shared,
}

impl Ownership {
    /// The form value.
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::Employee => "employee",
            Ownership::Corporate => "corporate",
            Ownership::Shared => "shared",
        }
    }
}

impl fmt::Display for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Ownership {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "employee" => Ok(Ownership::Employee),
            "corporate" => Ok(Ownership::Corporate),
            "shared" => Ok(Ownership::Shared),
            other => Err(format!(
                "unknown ownership {other:?} (employee, corporate or shared)"
            )),
        }
    }
}

/// How to build a simulated Mac.
#[derive(Clone, PartialEq, Eq)]
pub struct SimOptions {
    /// The Lanyard server, e.g. `https://127.0.0.1:8443` (discovery is asked here).
    pub server: String,
    /// The account signed in on the Mac (`ann@example.com`): what the person typed, sent as
    /// `user-identifier` at discovery and to the sign-in page, and typed into its email field.
    pub email: String,
    /// The password typed on the sign-in page.
    pub password: String,
    /// What the person types into the sign-in page's email field when it is not `email` (for
    /// example their email address while the Mac is signed in with their managed Apple Account).
    pub sign_in_as: Option<String>,
    /// The managed Apple Account the profile must assign (`AssignedManagedAppleID`) when it is
    /// not `email` (the Mac was signed in with an identifier the server maps to that account).
    pub managed_apple_id: Option<String>,
    /// The ownership answer.
    pub ownership: Ownership,
    /// Answers for `attr:<NAME>` fields, by NAME.
    pub attrs: BTreeMap<String, String>,
    /// macOS version, e.g. `15.2`.
    pub os_version: String,
    /// Model identifier, e.g. `Mac14,2`.
    pub model: String,
    /// PEM (or DER) certificates to trust for TLS and the profile signature (the server's
    /// `ca.pem`). `None`: the system's roots for TLS.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Accept any TLS certificate (tests only).
    pub insecure: bool,
    /// Sign in through this OpenID Connect provider instead of the password form.
    pub oidc: Option<SimOidc>,
    /// The topic of the server's APNs push certificate, when known: the profile's `Topic`
    /// must be exactly it (a Mac enrolled under another topic could never be woken).
    pub push_topic: Option<String>,
}

/// Signing in through an identity provider: the "Sign in with …" link of the Lanyard sign-in
/// page, then the provider's own login form, then back to Lanyard.
#[derive(Clone, PartialEq, Eq)]
pub struct SimOidc {
    /// The provider's name in Lanyard (the link is `#idp-<name>`).
    pub provider: String,
    /// What the person types into the provider's email field.
    pub login: String,
    /// What the person types into the provider's password field.
    pub password: String,
    /// A deliberate fault, for refusal tests.
    pub tamper: OidcTamper,
}

impl fmt::Debug for SimOidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimOidc")
            .field("provider", &self.provider)
            .field("login", &self.login)
            .field("password", &"<redacted>")
            .field("tamper", &self.tamper)
            .finish()
    }
}

/// Faults a test can inject into the identity provider's redirect back to Lanyard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OidcTamper {
    #[default]
    None,
    /// Alter the `state` parameter.
    State,
    /// Wait this long before following the redirect (to let the code expire).
    DelayCallback(Duration),
    /// Follow the redirect, then send the very same callback again.
    Replay,
}

impl fmt::Debug for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimOptions")
            .field("server", &self.server)
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("sign_in_as", &self.sign_in_as)
            .field("managed_apple_id", &self.managed_apple_id)
            .field("ownership", &self.ownership)
            .field("attrs", &self.attrs)
            .field("os_version", &self.os_version)
            .field("model", &self.model)
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<pem>"))
            .field("insecure", &self.insecure)
            .field("oidc", &self.oidc)
            .field("push_topic", &self.push_topic)
            .finish()
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            server: String::new(),
            email: String::new(),
            password: String::new(),
            sign_in_as: None,
            managed_apple_id: None,
            ownership: Ownership::Employee,
            attrs: BTreeMap::new(),
            os_version: "15.2".into(),
            model: "Mac14,2".into(),
            ca_cert_pem: None,
            insecure: false,
            oidc: None,
            push_topic: None,
        }
    }
}

impl SimOptions {
    /// Options with the defaults (employee, macOS 15.2, Mac14,2, system roots).
    pub fn new(
        server: impl Into<String>,
        email: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        SimOptions {
            server: server.into(),
            email: email.into(),
            password: password.into(),
            ..SimOptions::default()
        }
    }
}

/// The identity certificate, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityCertificateReport {
    /// Serial, lower-case hex.
    pub serial_hex: String,
    /// Subject, e.g. `O=Example, CN=…`.
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256: String,
}

/// What an enrollment produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentReport {
    /// `EnrollmentID` (device channel).
    pub enrollment_id: String,
    /// `EnrollmentUserID` (user channel).
    pub enrollment_user_id: String,
    /// The profile's `AssignedManagedAppleID`.
    pub managed_apple_id: String,
    /// The APNs topic.
    pub topic: String,
    /// `ServerURL`.
    pub server_url: String,
    /// `CheckInURL`.
    pub checkin_url: String,
    /// The SCEP-issued identity.
    pub identity_certificate: IdentityCertificateReport,
    /// `PushMagic` of the device channel.
    pub push_magic: String,
    /// `PushMagic` of the user channel.
    pub user_push_magic: String,
    /// Push token of the device channel, hex.
    pub push_token_hex: String,
    /// Push token of the user channel, hex.
    pub user_push_token_hex: String,
    /// Subject of the certificate that signed the profile.
    pub profile_signer_subject: String,
    /// What happened, one line per step.
    pub steps: Vec<String>,
}

/// A push registration (token and magic) of one channel.
#[derive(Clone, PartialEq, Eq)]
pub struct PushRegistration {
    /// The APNs device token (32 bytes).
    pub token: Vec<u8>,
    /// `PushMagic`.
    pub push_magic: String,
}

impl fmt::Debug for PushRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushRegistration")
            .field("token", &hex::encode(&self.token))
            .field("push_magic", &"<redacted>")
            .finish()
    }
}

impl PushRegistration {
    fn random() -> Self {
        let mut token = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut token);
        PushRegistration {
            token,
            push_magic: upper_uuid(),
        }
    }
}

/// One command answered by [`SimMac::run_commands`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandledCommand {
    /// The channel.
    pub channel: Channel,
    /// `CommandUUID`.
    pub command_uuid: String,
    /// `RequestType`.
    pub request_type: String,
    /// The `Status` the simulated Mac answered.
    pub status: String,
}

/// A verified enrollment profile and the access token that fetched it: what
/// [`SimMac::obtain_profile`] stops with.
#[derive(Clone)]
pub struct ObtainedProfile {
    /// The profile (its `scep` payload holds the SCEP URL and one-time challenge).
    pub profile: EnrollmentProfile,
    /// The access token of the sign-in, if the server asked for one.
    pub access_token: Option<String>,
    /// Subject of the certificate that signed the profile.
    pub signer_subject: String,
}

impl fmt::Debug for ObtainedProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObtainedProfile")
            .field("profile", &self.profile)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("signer_subject", &self.signer_subject)
            .finish()
    }
}

struct Enrolled {
    access_token: Option<String>,
    profile: EnrollmentProfile,
    identity_cert: X509,
    identity_key: PKey<Private>,
    /// The identity the last renewal replaced (a Mac deletes it; kept so tests can show the
    /// server refuses it).
    previous_identity: Option<(X509, PKey<Private>)>,
    /// A client presenting the identity for TLS, when the profile has `SignMessage` false.
    mtls: Option<reqwest::Client>,
}

impl Enrolled {
    /// What a Mac adds to a device request: the `Mdm-Signature` over `body` by `identity` when
    /// the profile asks for it, and on the user channel the bearer.
    fn as_device(
        &self,
        mut rb: reqwest::RequestBuilder,
        step: Step,
        body: &[u8],
        identity: (&X509, &PKey<Private>),
        channel: Channel,
    ) -> Result<reqwest::RequestBuilder> {
        if self.profile.mdm.sign_message {
            let sig = lanyard_pki::sign_detached(identity.0, identity.1, body)
                .at_doing(step, "Mdm-Signature")?;
            rb = rb.header(
                "Mdm-Signature",
                base64::engine::general_purpose::STANDARD.encode(sig),
            );
        }
        if channel == Channel::User {
            if let Some(t) = &self.access_token {
                rb = rb.header(AUTHORIZATION, format!("Bearer {t}"));
            }
        }
        Ok(rb)
    }
}

/// A simulated Mac. See the module documentation.
pub struct SimMac {
    opts: SimOptions,
    server: Url,
    client: reqwest::Client,
    trust: Vec<X509>,
    facts: DeviceFacts,
    device_cert: X509,
    device_key: PKey<Private>,
    enrollment_id: String,
    user: UserChannel,
    device_push: PushRegistration,
    user_push: PushRegistration,
    profiles: Vec<InstalledProfile>,
    steps: Vec<String>,
    enrolled: Option<Enrolled>,
    /// Test hooks that make the simulated Mac behave as a Mac does under conditions a test
    /// cannot create otherwise.
    conditions: Conditions,
    /// Declarative device management: what the Mac holds.
    declarative: DeclarativeState,
}

/// Conditions a test sets on the simulated Mac.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    /// The answer to the next command report is lost (as on a dropped connection): the Mac
    /// sends the same report again, as a Mac does until it gets a 2xx.
    pub lose_next_answer: bool,
    /// Commands of these request types are answered `NotNow` (e.g. the Mac is locked), once
    /// each; after a `NotNow` the Mac waits for the server's empty answer and polls again
    /// later by itself.
    pub not_now: Vec<String>,
    /// Declarations (by identifier) the Mac fails to apply: reported invalid with
    /// `Error.ConfigurationCannotBeApplied`.
    pub fail_declarations: Vec<String>,
}

/// What one declarative synchronisation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeclarativeSync {
    /// The `DeclarationsToken` synchronised with.
    pub declarations_token: String,
    /// Identifiers fetched (new or changed).
    pub fetched: Vec<String>,
    /// Identifiers dropped (no longer listed).
    pub removed: Vec<String>,
}

impl fmt::Debug for SimMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimMac")
            .field("server", &self.server.as_str())
            .field("facts", &self.facts)
            .field("enrollment_id", &self.enrollment_id)
            .field("enrolled", &self.enrolled.is_some())
            .finish()
    }
}

fn upper_uuid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase()
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// Certificates from PEM (one or more) or DER bytes.
pub fn parse_certificates(bytes: &[u8]) -> std::result::Result<Vec<X509>, String> {
    if let Ok(v) = X509::stack_from_pem(bytes) {
        if !v.is_empty() {
            return Ok(v);
        }
    }
    X509::from_der(bytes)
        .map(|c| vec![c])
        .map_err(|e| format!("not a PEM or DER certificate: {e}"))
}

/// Macs' user short names: the account's local part, lower case, letters/digits/`.`/`_`/`-`.
fn short_name_for(email: &str) -> String {
    let local = email.rsplit_once('@').map(|(l, _)| l).unwrap_or(email);
    let s: String = local
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect::<String>()
        .to_ascii_lowercase();
    if s.is_empty() {
        "user".into()
    } else {
        s
    }
}

/// A full name from the account's local part: `ann.smith` → `Ann Smith`.
fn long_name_for(email: &str) -> String {
    let local = email.rsplit_once('@').map(|(l, _)| l).unwrap_or(email);
    let words: Vec<String> = local
        .split(['.', '_', '-', '+'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => String::new(),
            }
        })
        .collect();
    if words.is_empty() {
        "Simulated User".into()
    } else {
        words.join(" ")
    }
}

fn build_client(
    opts: &SimOptions,
    trust: &[X509],
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(15))
        .user_agent(format!(
            "Lanyard-SimMac/{} (macOS {}; {})",
            env!("CARGO_PKG_VERSION"),
            opts.os_version,
            opts.model
        ));
    for c in trust {
        let der = c.to_der().at_doing(Step::Setup, "CA certificate")?;
        b = b.add_root_certificate(
            reqwest::Certificate::from_der(&der).at_doing(Step::Setup, "CA certificate")?,
        );
    }
    if trust.is_empty() && !opts.insecure {
        let native = rustls_native_certs::load_native_certs();
        if native.certs.is_empty() {
            return Err(SimError::failed(
                Step::Setup,
                "no CA certificate given and no system roots found (use --ca-cert or --insecure)",
            ));
        }
        for c in native.certs {
            if let Ok(cert) = reqwest::Certificate::from_der(c.as_ref()) {
                b = b.add_root_certificate(cert);
            }
        }
    }
    if opts.insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().at_doing(Step::Setup, "HTTP client")
}

/// Lanyard's OpenID Connect sign-in paths.
const OIDC_START: &str = "/enroll/oidc/start";
const OIDC_CALLBACK: &str = "/enroll/oidc/callback";

/// A request the sign-in loop is about to make.
struct PageRequest {
    method: Method,
    url: Url,
    form: Option<Vec<(String, String)>>,
}

impl SimMac {
    /// A new simulated Mac: checks the options, makes its device key and certificate, its
    /// `EnrollmentID`/`EnrollmentUserID` (upper-case UUIDs, stable for this Mac) and its push
    /// tokens, and its HTTP client.
    pub fn new(opts: SimOptions) -> Result<SimMac> {
        let server = Url::parse(opts.server.trim())
            .map_err(|e| SimError::failed(Step::Setup, format!("server URL: {e}")))?;
        if !matches!(server.scheme(), "https" | "http") {
            return Err(SimError::failed(
                Step::Setup,
                format!("server URL must be https:// (or http://): {server}"),
            ));
        }
        lanyard_proto::UserIdentifier::parse(&opts.email)
            .map_err(|e| SimError::failed(Step::Setup, format!("email {:?}: {e}", opts.email)))?;
        lanyard_proto::OsVersion::parse(&opts.os_version).map_err(|e| {
            SimError::failed(
                Step::Setup,
                format!("OS version {:?}: {e}", opts.os_version),
            )
        })?;
        if opts.model.trim().is_empty() {
            return Err(SimError::failed(Step::Setup, "model is empty"));
        }
        let trust = match &opts.ca_cert_pem {
            Some(pem) => parse_certificates(pem)
                .map_err(|e| SimError::failed(Step::Setup, format!("CA certificate: {e}")))?,
            None => Vec::new(),
        };
        let client = build_client(&opts, &trust, None)?;
        let device_key = device::rsa_key(2048).at_doing(Step::Setup, "device key")?;
        let device_cert = device::self_signed(&device_key, "Simulated Mac Device Identity", 365)
            .at_doing(Step::Setup, "device certificate")?;
        let user = UserChannel {
            enrollment_user_id: upper_uuid(),
            short_name: short_name_for(&opts.email),
            long_name: long_name_for(&opts.email),
        };
        Ok(SimMac {
            facts: DeviceFacts::new(opts.model.trim(), opts.os_version.trim()),
            server,
            client,
            trust,
            device_cert,
            device_key,
            enrollment_id: upper_uuid(),
            user,
            device_push: PushRegistration::random(),
            user_push: PushRegistration::random(),
            profiles: Vec::new(),
            steps: Vec::new(),
            enrolled: None,
            conditions: Conditions::default(),
            declarative: DeclarativeState::default(),
            opts,
        })
    }

    /// The options it was built with.
    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// Model, OS and build it reports.
    pub fn facts(&self) -> &DeviceFacts {
        &self.facts
    }

    /// `EnrollmentID`.
    pub fn enrollment_id(&self) -> &str {
        &self.enrollment_id
    }

    /// `EnrollmentUserID`.
    pub fn enrollment_user_id(&self) -> &str {
        &self.user.enrollment_user_id
    }

    /// The user-channel identity keys.
    pub fn user_channel(&self) -> &UserChannel {
        &self.user
    }

    /// Start afresh as the same Mac would for a *new* enrollment: new `EnrollmentID`,
    /// `EnrollmentUserID` and push registrations, and no enrollment. (They are otherwise
    /// stable for the life of this value, across repeated [`SimMac::enroll`] calls.)
    pub fn renew_enrollment_ids(&mut self) {
        self.enrollment_id = upper_uuid();
        self.user.enrollment_user_id = upper_uuid();
        self.device_push = PushRegistration::random();
        self.user_push = PushRegistration::random();
        self.enrolled = None;
        self.profiles.clear();
    }

    /// Push token and magic of a channel.
    pub fn push(&self, channel: Channel) -> &PushRegistration {
        match channel {
            Channel::Device => &self.device_push,
            Channel::User => &self.user_push,
        }
    }

    /// The step log of the last (or current) enrollment.
    pub fn steps(&self) -> &[String] {
        &self.steps
    }

    /// True once [`SimMac::enroll`] succeeded.
    pub fn is_enrolled(&self) -> bool {
        self.enrolled.is_some()
    }

    /// The access token the sign-in produced.
    pub fn access_token(&self) -> Option<&str> {
        self.enrolled
            .as_ref()
            .and_then(|e| e.access_token.as_deref())
    }

    /// The installed enrollment profile.
    pub fn profile(&self) -> Option<&EnrollmentProfile> {
        self.enrolled.as_ref().map(|e| &e.profile)
    }

    /// The identity certificate.
    pub fn identity_certificate(&self) -> Option<&X509> {
        self.enrolled.as_ref().map(|e| &e.identity_cert)
    }

    /// The identity's private key.
    pub fn identity_key(&self) -> Option<&PKey<Private>> {
        self.enrolled.as_ref().map(|e| &e.identity_key)
    }

    /// Profiles the Mac holds (the enrollment profile first).
    pub fn installed_profiles(&self) -> &[InstalledProfile] {
        &self.profiles
    }

    fn log(&mut self, line: String) {
        self.steps.push(line);
    }

    /// The test hooks (see [`Conditions`]).
    pub fn conditions(&mut self) -> &mut Conditions {
        &mut self.conditions
    }

    /// The whole enrollment (steps 1–6). On success the Mac is enrolled and the command
    /// channel can be used.
    pub async fn enroll(&mut self) -> Result<EnrollmentReport> {
        let obtained = self.obtain_profile().await?;
        let scep = scep_client::enroll(&self.client, &obtained.profile.scep)
            .await
            .map_err(|e| match e {
                ScepError::Http {
                    operation,
                    status,
                    message,
                } => SimError::refused(Step::Scep, status, format!("{operation}: {message}")),
                other => SimError::failed(Step::Scep, other),
            })?;
        for line in &scep.log {
            self.steps.push(line.clone());
        }
        self.install_profile(obtained, scep.certificate, scep.key)
            .await
    }

    /// Steps 1–4 and stop: discovery, the `apple-as-web` challenge, the web sign-in and the
    /// signed profile, verified and checked as a Mac checks it before installing. The
    /// profile's SCEP payload (URL and one-time challenge) is then for any SCEP client to
    /// use; [`SimMac::install_profile`] continues with the identity it obtained.
    pub async fn obtain_profile(&mut self) -> Result<ObtainedProfile> {
        self.steps.clear();
        self.enrolled = None;
        self.profiles.clear();

        let base_url = self.discover().await?;
        let machine_info = self.signed_machine_info()?;

        let (access_token, profile_der) = match self
            .post_machine_info(&base_url, &machine_info, None)
            .await?
        {
            EnrollAnswer::Challenge(sign_in_url) => {
                let token = self.sign_in(&base_url, sign_in_url).await?;
                match self
                    .post_machine_info(&base_url, &machine_info, Some(&token))
                    .await?
                {
                    EnrollAnswer::Profile(der) => (Some(token), der),
                    EnrollAnswer::Challenge(_) => {
                        return Err(SimError::refused(
                            Step::Enrollment,
                            401,
                            "the server challenged again after a completed sign-in",
                        ));
                    }
                }
            }
            EnrollAnswer::Profile(der) => {
                self.log("enrollment: the server sent the profile without a sign-in".into());
                (None, der)
            }
        };

        let (profile, signer_subject) = self.read_profile(&profile_der).await?;
        let expected = self
            .opts
            .managed_apple_id
            .as_deref()
            .unwrap_or(&self.opts.email);
        check_user_enrollment(&profile, expected)
            .and_then(|()| match &self.opts.push_topic {
                Some(topic) => check_push_topic(&profile, topic),
                None => Ok(()),
            })
            .map_err(|m| {
                SimError::failed(Step::Profile, format!("the Mac refuses the profile: {m}"))
            })?;
        self.log(format!(
            "profile: com.apple.mdm Topic {}, EnrollmentMode BYOD, AssignedManagedAppleID {}, \
             SignMessage {}, ServerURL {}, CheckInURL {}; payloads: {}",
            profile.mdm.topic,
            profile
                .mdm
                .assigned_managed_apple_id
                .as_deref()
                .unwrap_or_default(),
            profile.mdm.sign_message,
            profile.mdm.server_url,
            profile.mdm.checkin_url,
            profile.payload_types.join(", ")
        ));
        Ok(ObtainedProfile {
            profile,
            access_token,
            signer_subject,
        })
    }

    /// Steps 5 (its result) and 6: install the profile of [`SimMac::obtain_profile`] with the
    /// identity obtained for its SCEP payload (by the built-in client or any other), then
    /// check in: `Authenticate`, `TokenUpdate` on the device and the user channel.
    pub async fn install_profile(
        &mut self,
        obtained: ObtainedProfile,
        identity: X509,
        key: PKey<Private>,
    ) -> Result<EnrollmentReport> {
        let ObtainedProfile {
            profile,
            access_token,
            signer_subject,
        } = obtained;
        let matches = identity
            .public_key()
            .map(|k| k.public_eq(&key))
            .unwrap_or(false);
        if !matches {
            return Err(SimError::failed(
                Step::Scep,
                "the identity certificate is not for the given key",
            ));
        }
        let mtls = self.mtls_client(&profile, &identity, &key)?;

        self.profiles.push(InstalledProfile {
            profile: profile.raw.clone(),
        });
        self.enrolled = Some(Enrolled {
            access_token,
            profile,
            identity_cert: identity,
            identity_key: key,
            previous_identity: None,
            mtls,
        });

        self.authenticate().await?;
        self.token_update(Channel::Device).await?;
        self.token_update(Channel::User).await?;
        self.report(signer_subject)
    }

    fn report(&self, profile_signer_subject: String) -> Result<EnrollmentReport> {
        let e = self.enrolled(Step::Scep)?;
        let info = CertInfo::from_x509(&e.identity_cert).at_doing(Step::Scep, "identity")?;
        let not_after = chrono::DateTime::from_timestamp(info.not_after, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| info.not_after.to_string());
        Ok(EnrollmentReport {
            enrollment_id: self.enrollment_id.clone(),
            enrollment_user_id: self.user.enrollment_user_id.clone(),
            managed_apple_id: e
                .profile
                .mdm
                .assigned_managed_apple_id
                .clone()
                .unwrap_or_default(),
            topic: e.profile.mdm.topic.clone(),
            server_url: e.profile.mdm.server_url.clone(),
            checkin_url: e.profile.mdm.checkin_url.clone(),
            identity_certificate: IdentityCertificateReport {
                serial_hex: info.serial_hex,
                subject: info.subject,
                issuer: info.issuer,
                not_after,
                sha256: info.sha256,
            },
            push_magic: self.device_push.push_magic.clone(),
            user_push_magic: self.user_push.push_magic.clone(),
            push_token_hex: hex::encode(&self.device_push.token),
            user_push_token_hex: hex::encode(&self.user_push.token),
            profile_signer_subject,
            steps: self.steps.clone(),
        })
    }

    fn enrolled(&self, step: Step) -> Result<&Enrolled> {
        self.enrolled
            .as_ref()
            .ok_or_else(|| SimError::failed(step, "the simulated Mac is not enrolled"))
    }

    // ---------------------------------------------------------------------------------
    // 1. discovery

    /// Step 1: the `mdm-byod` `BaseURL` from service discovery.
    pub async fn discover(&mut self) -> Result<Url> {
        let mut url = Url::parse(&format!(
            "{}{}",
            self.server.as_str().trim_end_matches('/'),
            lanyard_proto::discovery::WELL_KNOWN_PATH
        ))
        .at_doing(Step::Discovery, "well-known URL")?;
        url.query_pairs_mut()
            .append_pair("user-identifier", &self.opts.email)
            .append_pair("model-family", "Mac");
        let first = url.clone();
        let mut redirects = 0;
        let resp = loop {
            let resp = self
                .client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .at(Step::Discovery)?;
            if resp.status().is_redirection() && redirects < 5 {
                let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                    return Err(SimError::failed(
                        Step::Discovery,
                        format!("{} without Location", resp.status()),
                    ));
                };
                url = url.join(loc).at_doing(Step::Discovery, "redirect")?;
                redirects += 1;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        let ct = content_type(resp.headers());
        let body = resp.bytes().await.at(Step::Discovery)?;
        if !status.is_success() {
            return Err(SimError::refused(
                Step::Discovery,
                status.as_u16(),
                webauth::body_message(&ct, &body),
            ));
        }
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            SimError::failed(Step::Discovery, format!("the answer is not JSON: {e}"))
        })?;
        let servers = doc
            .get("Servers")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| SimError::failed(Step::Discovery, "the answer has no Servers array"))?;
        let base = servers
            .iter()
            .find(|s| s.get("Version").and_then(serde_json::Value::as_str) == Some("mdm-byod"))
            .and_then(|s| s.get("BaseURL"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                SimError::failed(
                    Step::Discovery,
                    format!("no mdm-byod entry with a BaseURL in {doc}"),
                )
            })?;
        let base_url = Url::parse(base)
            .map_err(|e| SimError::failed(Step::Discovery, format!("BaseURL {base:?}: {e}")))?;
        if base_url.scheme() != "https" && self.server.scheme() == "https" {
            return Err(SimError::failed(
                Step::Discovery,
                format!("BaseURL {base_url} is not https"),
            ));
        }
        self.log(format!(
            "discovery: GET {first} → {}, mdm-byod BaseURL {base_url}",
            status.as_u16()
        ));
        Ok(base_url)
    }

    // ---------------------------------------------------------------------------------
    // 2. MachineInfo

    /// The MachineInfo plist this Mac sends (unsigned XML).
    pub fn machine_info_plist(&self) -> Result<Vec<u8>> {
        device::to_xml(device::machine_info(&self.facts)).at_doing(Step::Enrollment, "MachineInfo")
    }

    /// The MachineInfo as sent: CMS SignedData (DER, content attached), signed with the
    /// Mac's self-signed device certificate.
    pub fn signed_machine_info(&self) -> Result<Vec<u8>> {
        let plist = self.machine_info_plist()?;
        lanyard_pki::sign_cms(&self.device_cert, &self.device_key, &[], &plist)
            .at_doing(Step::Enrollment, "signing MachineInfo")
    }

    async fn post_machine_info(
        &mut self,
        base_url: &Url,
        body: &[u8],
        token: Option<&str>,
    ) -> Result<EnrollAnswer> {
        let step = if token.is_some() {
            Step::Profile
        } else {
            Step::Enrollment
        };
        let mut rb = self
            .client
            .post(base_url.clone())
            .header(CONTENT_TYPE, MACHINE_INFO_CONTENT_TYPE)
            .body(body.to_vec());
        if let Some(t) = token {
            rb = rb.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = rb.send().await.at(step)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let ct = content_type(&headers);
        let bytes = resp.bytes().await.at(step)?.to_vec();
        let what = format!(
            "POST {base_url} (MachineInfo {} macOS {} {}{})",
            self.facts.product,
            self.facts.os_version,
            self.facts.build_version,
            if token.is_some() {
                ", Bearer token"
            } else {
                ""
            }
        );
        match status {
            StatusCode::OK => {
                if !ct.starts_with(PROFILE_CONTENT_TYPE) {
                    return Err(SimError::failed(
                        Step::Profile,
                        format!(
                            "{what} answered 200 with content type {ct:?}, expected {PROFILE_CONTENT_TYPE}"
                        ),
                    ));
                }
                self.log(format!(
                    "profile: {what} → 200 {PROFILE_CONTENT_TYPE} ({} bytes)",
                    bytes.len()
                ));
                Ok(EnrollAnswer::Profile(bytes))
            }
            StatusCode::UNAUTHORIZED => {
                let header = headers
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if token.is_some() {
                    return Err(SimError::refused(
                        Step::Profile,
                        401,
                        format!(
                            "the access token was not accepted: {}",
                            webauth::body_message(&ct, &bytes)
                        ),
                    ));
                }
                if header.trim().is_empty() {
                    return Err(SimError::refused(
                        Step::Enrollment,
                        401,
                        format!(
                            "401 without a WWW-Authenticate challenge: {}",
                            webauth::body_message(&ct, &bytes)
                        ),
                    ));
                }
                let url = apple_as_web_url(Step::Enrollment, &header, base_url)?;
                self.log(format!(
                    "enrollment: {what} → 401 Bearer method=\"apple-as-web\", url={url}"
                ));
                Ok(EnrollAnswer::Challenge(url))
            }
            other => Err(SimError::refused(
                step,
                other.as_u16(),
                webauth::body_message(&ct, &bytes),
            )),
        }
    }

    // ---------------------------------------------------------------------------------
    // 3. sign-in

    /// Step 3: act as the web authentication session from `sign_in_url` to the access token.
    pub async fn sign_in(&mut self, base_url: &Url, sign_in_url: Url) -> Result<String> {
        let mut url = sign_in_url;
        if !url.query_pairs().any(|(k, _)| k == "user-identifier") {
            url.query_pairs_mut()
                .append_pair("user-identifier", &self.opts.email);
        }
        let mut allowed = vec![origin(&self.server), origin(base_url), origin(&url)];
        let lanyard_origins = allowed.clone();
        let oidc = self.opts.oidc.clone();
        if let Some(o) = &oidc {
            // The person presses "Sign in with …" on the sign-in page.
            let resp = self
                .client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "text/html")
                .send()
                .await
                .at(Step::SignIn)?;
            let status = resp.status();
            let text = resp.text().await.at(Step::SignIn)?;
            if !status.is_success() {
                return Err(SimError::refused(
                    Step::SignIn,
                    status.as_u16(),
                    webauth::page_message(&text),
                ));
            }
            let id = format!("idp-{}", o.provider);
            url = webauth::link_by_id(&text, &url, &id).ok_or_else(|| {
                SimError::failed(
                    Step::SignIn,
                    format!("the sign-in page offers no link #{id} for the identity provider"),
                )
            })?;
            self.log(format!(
                "sign-in: the sign-in page offers {}, following it",
                o.provider
            ));
        }
        let mut replayed = false;
        let mut req = PageRequest {
            method: Method::GET,
            url,
            form: None,
        };
        let mut pages = 0usize;
        let mut requests = 0usize;
        let mut last_submission: Option<String> = None;
        let mut fields_seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            requests += 1;
            if requests > MAX_SIGN_IN_PAGES * 3 {
                return Err(SimError::failed(
                    Step::SignIn,
                    "too many redirects between sign-in pages",
                ));
            }
            let mut rb = self
                .client
                .request(req.method.clone(), req.url.clone())
                .header(reqwest::header::ACCEPT, "text/html,application/xhtml+xml");
            if let Some(pairs) = &req.form {
                rb = rb.form(pairs);
            }
            let resp = rb.send().await.at(Step::SignIn)?;
            if oidc
                .as_ref()
                .is_some_and(|o| o.tamper == OidcTamper::Replay)
                && !replayed
                && req.url.path() == OIDC_CALLBACK
            {
                replayed = true;
                self.log("sign-in: sending the identity provider's callback a second time".into());
                continue;
            }
            let status = resp.status();
            let headers = resp.headers().clone();
            let ct = content_type(&headers);
            let body = resp.bytes().await.at(Step::SignIn)?;
            let shown = format!("{} {}", req.method, without_query(&req.url));

            if status.is_redirection() {
                let loc = headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        SimError::failed(
                            Step::SignIn,
                            format!("{shown} answered {} without Location", status.as_u16()),
                        )
                    })?
                    .to_owned();
                // A redirect to a scheme other than http(s) is the hand-off to the Mac. Apple
                // documents exactly one: 308 Permanent Redirect to
                // apple-remotemanagement-user-login://authentication-results?access-token=…
                // ("Implementing the simple authentication account-driven enrollment flow",
                // step 11). The web authentication session waits for that scheme only.
                if let Some(scheme) = Url::parse(&loc)
                    .ok()
                    .map(|u| u.scheme().to_owned())
                    .filter(|sc| sc != "http" && sc != "https")
                {
                    if scheme != RESULT_SCHEME {
                        return Err(SimError::failed(
                            Step::SignIn,
                            format!(
                                "{shown} handed off to {scheme}:, not {RESULT_SCHEME}: \
                                 (the Mac waits for {RESULT_SCHEME}://authentication-results)"
                            ),
                        ));
                    }
                    if status != StatusCode::PERMANENT_REDIRECT {
                        return Err(SimError::failed(
                            Step::SignIn,
                            format!(
                                "{shown} handed off to {RESULT_SCHEME}: with {}, not 308 \
                                 Permanent Redirect",
                                status.as_u16()
                            ),
                        ));
                    }
                    let token = webauth::access_token_from_result(&loc)
                        .map_err(|m| SimError::failed(Step::SignIn, m))?;
                    self.log(format!(
                        "sign-in: {shown} → {} {RESULT_SCHEME}://authentication-results (access token received)",
                        status.as_u16()
                    ));
                    let unused: Vec<String> = self
                        .opts
                        .attrs
                        .keys()
                        .filter(|k| !fields_seen.contains(&format!("attr:{k}")))
                        .cloned()
                        .collect();
                    if !unused.is_empty() {
                        self.log(format!(
                            "sign-in: no page asked for attribute(s) {} (not sent)",
                            unused.join(", ")
                        ));
                    }
                    return Ok(token);
                }
                let next = req.url.join(&loc).map_err(|e| {
                    SimError::failed(Step::SignIn, format!("redirect to {loc:?}: {e}"))
                })?;
                if oidc.is_some()
                    && req.url.path() == OIDC_START
                    && !allowed.contains(&origin(&next))
                {
                    // Lanyard sends the person to the identity provider.
                    allowed.push(origin(&next));
                }
                if !allowed.contains(&origin(&next)) {
                    return Err(SimError::failed(
                        Step::SignIn,
                        format!("{shown} redirected outside the server, to {next}"),
                    ));
                }
                let mut next = next;
                if let Some(o) = oidc.as_ref().filter(|_| next.path() == OIDC_CALLBACK) {
                    match o.tamper {
                        OidcTamper::State => {
                            let pairs: Vec<(String, String)> = next
                                .query_pairs()
                                .map(|(k, v)| {
                                    let v = if k == "state" {
                                        format!("{v}x")
                                    } else {
                                        v.into_owned()
                                    };
                                    (k.into_owned(), v)
                                })
                                .collect();
                            next.query_pairs_mut().clear().extend_pairs(pairs);
                            self.log("sign-in: altering the state of the callback".into());
                        }
                        OidcTamper::DelayCallback(d) => {
                            self.log(format!("sign-in: waiting {d:?} before the callback"));
                            tokio::time::sleep(d).await;
                        }
                        OidcTamper::None | OidcTamper::Replay => {}
                    }
                }
                self.log(format!(
                    "sign-in: {shown} → {} {}",
                    status.as_u16(),
                    without_query(&next)
                ));
                req = match status {
                    StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
                        PageRequest { url: next, ..req }
                    }
                    _ => PageRequest {
                        method: Method::GET,
                        url: next,
                        form: None,
                    },
                };
                continue;
            }

            let text = String::from_utf8_lossy(&body).into_owned();
            if status.is_client_error() || status.is_server_error() {
                return Err(SimError::refused(
                    Step::SignIn,
                    status.as_u16(),
                    webauth::body_message(&ct, &body),
                ));
            }
            pages += 1;
            if pages > MAX_SIGN_IN_PAGES {
                return Err(SimError::failed(
                    Step::SignIn,
                    format!("no access token after {MAX_SIGN_IN_PAGES} pages"),
                ));
            }
            let form = webauth::parse_first_form(&text, &req.url)
                .map_err(|m| SimError::failed(Step::SignIn, m))?
                .ok_or_else(|| {
                    SimError::failed(
                        Step::SignIn,
                        format!(
                            "{shown} → {}: the page has no form ({})",
                            status.as_u16(),
                            webauth::page_message(&text)
                        ),
                    )
                })?;
            let at_provider = !lanyard_origins.contains(&origin(&req.url));
            let (email, password) = match oidc.as_ref().filter(|_| at_provider) {
                Some(o) => (o.login.as_str(), o.password.as_str()),
                None => (
                    self.opts.sign_in_as.as_deref().unwrap_or(&self.opts.email),
                    self.opts.password.as_str(),
                ),
            };
            let answers = FormAnswers {
                email,
                password,
                ownership: self.opts.ownership.as_str(),
                attrs: &self.opts.attrs,
            };
            let pairs = form
                .fill(&answers)
                .map_err(|m| SimError::failed(Step::SignIn, m))?;
            fields_seen.extend(form.field_names().into_iter().map(str::to_owned));
            let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
            self.log(format!(
                "sign-in: {shown} → {}, form {} {} [{}]",
                status.as_u16(),
                form.method,
                without_query(&form.action),
                names.join(", ")
            ));
            let submission = format!(
                "{} {} {}",
                form.method,
                form.action,
                serde_json::to_string(&pairs).unwrap_or_default()
            );
            if last_submission.as_deref() == Some(submission.as_str()) {
                return Err(SimError::refused(
                    Step::SignIn,
                    status.as_u16(),
                    format!(
                        "the same form came back after submitting it: {}",
                        webauth::page_message(&text)
                    ),
                ));
            }
            last_submission = Some(submission);
            if !allowed.contains(&origin(&form.action)) {
                return Err(SimError::failed(
                    Step::SignIn,
                    format!("the form posts outside the server, to {}", form.action),
                ));
            }
            req = if form.method == "POST" {
                PageRequest {
                    method: Method::POST,
                    url: form.action,
                    form: Some(pairs),
                }
            } else {
                let mut u = form.action;
                u.query_pairs_mut().clear().extend_pairs(pairs.iter());
                PageRequest {
                    method: Method::GET,
                    url: u,
                    form: None,
                }
            };
        }
    }

    // ---------------------------------------------------------------------------------
    // 4. profile

    async fn fetch_ca(&mut self, url: &str) -> Vec<X509> {
        let Ok(mut u) = Url::parse(url) else {
            return Vec::new();
        };
        u.query_pairs_mut().append_pair("operation", "GetCACert");
        let Ok(resp) = self.client.get(u.clone()).send().await else {
            return Vec::new();
        };
        if !resp.status().is_success() {
            return Vec::new();
        }
        let ct = content_type(resp.headers());
        let Ok(body) = resp.bytes().await else {
            return Vec::new();
        };
        scep_client::parse_get_ca_cert(&ct, &body)
            .map(|c| vec![c.ca])
            .unwrap_or_default()
    }

    /// Step 4: unwrap and verify the signed profile. The signer must chain to the CA given
    /// in the options or to the CA the server's SCEP service announces.
    async fn read_profile(&mut self, der: &[u8]) -> Result<(EnrollmentProfile, String)> {
        let (content, _) = lanyard_pki::verify_cms_attached_untrusted(der).map_err(|e| {
            SimError::failed(
                Step::Profile,
                format!("the profile is not a valid CMS SignedData: {e}"),
            )
        })?;
        let profile =
            parse_enrollment_profile(&content).map_err(|m| SimError::failed(Step::Profile, m))?;
        let mut anchors = self.trust.clone();
        let server_scep = format!("{}/scep", self.server.as_str().trim_end_matches('/'));
        for url in [server_scep, profile.scep.url.clone()] {
            for c in self.fetch_ca(&url).await {
                let der = c.to_der().unwrap_or_default();
                if !anchors
                    .iter()
                    .any(|a| a.to_der().unwrap_or_default() == der)
                {
                    anchors.push(c);
                }
            }
        }
        if anchors.is_empty() {
            return Err(SimError::failed(
                Step::Profile,
                "no CA to verify the profile signature with (no --ca-cert, and GetCACert failed)",
            ));
        }
        let (_, signer) = lanyard_pki::verify_cms_attached(der, &anchors).map_err(|e| {
            let names: Vec<String> = anchors
                .iter()
                .map(|a| name_to_string(a.subject_name()))
                .collect();
            SimError::failed(
                Step::Profile,
                format!(
                    "the profile signature does not chain to the CA ({}): {e}",
                    names.join("; ")
                ),
            )
        })?;
        let signer_subject = name_to_string(signer.subject_name());
        self.log(format!(
            "profile: CMS signature by {signer_subject} verified against {}",
            anchors
                .iter()
                .map(|a| name_to_string(a.subject_name()))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        Ok((profile, signer_subject))
    }

    // ---------------------------------------------------------------------------------
    // 6. check-in

    fn user_for(&self, channel: Channel) -> Option<&UserChannel> {
        match channel {
            Channel::Device => None,
            Channel::User => Some(&self.user),
        }
    }

    /// `PUT` a body to the check-in or command URL with the headers a Mac sends on the device
    /// channel: `Content-Type` and `Mdm-Signature` (when `SignMessage`). Returns the status,
    /// content type and body.
    pub async fn put_signed(
        &self,
        step: Step,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, String, Vec<u8>)> {
        self.put_signed_on(step, url, content_type, body, Channel::Device)
            .await
    }

    /// [`SimMac::put_signed`] on a channel. On the user channel a Mac also sends
    /// `Authorization: Bearer` with its access token; on the device channel it does not
    /// (Apple, "Onboarding users with account sign-in": on macOS the token is tied to the
    /// user).
    pub async fn put_signed_on(
        &self,
        step: Step,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        channel: Channel,
    ) -> Result<(StatusCode, String, Vec<u8>)> {
        let resp = self
            .send_signed(step, url, content_type, body, channel)
            .await?;
        parts_of(step, resp).await
    }

    /// Sends one signed device request (see [`SimMac::put_signed_on`]) and returns the
    /// response as it came (headers included).
    pub async fn send_signed(
        &self,
        step: Step,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        channel: Channel,
    ) -> Result<reqwest::Response> {
        let e = self.enrolled(step)?;
        self.send_signed_by(
            step,
            url,
            content_type,
            body,
            (&e.identity_cert, &e.identity_key),
            channel,
        )
        .await
    }

    /// [`SimMac::put_signed`] (device channel) with the `Mdm-Signature` made by this identity.
    async fn put_signed_by(
        &self,
        step: Step,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        cert: &X509,
        key: &PKey<Private>,
    ) -> Result<(StatusCode, String, Vec<u8>)> {
        let resp = self
            .send_signed_by(step, url, content_type, body, (cert, key), Channel::Device)
            .await?;
        parts_of(step, resp).await
    }

    /// Sends one device request signed by `identity`, with the bearer on the user channel.
    async fn send_signed_by(
        &self,
        step: Step,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        identity: (&X509, &PKey<Private>),
        channel: Channel,
    ) -> Result<reqwest::Response> {
        let e = self.enrolled(step)?;
        let client = e.mtls.as_ref().unwrap_or(&self.client);
        let rb = client.put(url).header(CONTENT_TYPE, content_type);
        let rb = e.as_device(rb, step, &body, identity, channel)?;
        rb.body(body).send().await.at(step)
    }

    /// One device request as a Mac makes it: signed, with the user channel's bearer, and
    /// answered the way a Mac answers the server:
    /// - `401` with the `apple-as-web` challenge (user channel): the person signs in again in
    ///   the web view and the request is sent again with the new token; a `401` without that
    ///   challenge is refused;
    /// - `403` `com.apple.unrecognized.device`: the Mac unenrolls (Apple's
    ///   ErrorUnrecognizedDevice) and forgets its enrollment;
    /// - any other non-200 is refused.
    async fn device_request(
        &mut self,
        step: Step,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        channel: Channel,
    ) -> Result<Vec<u8>> {
        let mut reauthenticated = false;
        loop {
            let resp = self
                .send_signed(step, url, content_type, body.clone(), channel)
                .await?;
            let status = resp.status();
            let ct = content_type_of(&resp);
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = resp.bytes().await.at(step)?.to_vec();
            match status {
                StatusCode::OK => return Ok(bytes),
                StatusCode::UNAUTHORIZED => {
                    let Some(header) = challenge else {
                        return Err(SimError::refused(
                            step,
                            401,
                            format!(
                                "401 without an apple-as-web challenge: {}",
                                webauth::body_message(&ct, &bytes)
                            ),
                        ));
                    };
                    if channel != Channel::User || reauthenticated {
                        return Err(SimError::refused(
                            step,
                            401,
                            webauth::body_message(&ct, &bytes),
                        ));
                    }
                    let base = Url::parse(url).at_doing(step, "request URL")?;
                    let sign_in_url = apple_as_web_url(step, &header, &base)?;
                    self.log(format!("{step}: 401 apple-as-web → signing in again"));
                    let token = self.sign_in(&base, sign_in_url).await?;
                    if let Some(e) = self.enrolled.as_mut() {
                        e.access_token = Some(token);
                    }
                    reauthenticated = true;
                }
                StatusCode::FORBIDDEN if is_unrecognized_device(&ct, &bytes) => {
                    self.log(format!(
                        "{step}: 403 com.apple.unrecognized.device → unenrolled"
                    ));
                    self.enrolled = None;
                    self.profiles.clear();
                    return Err(SimError::refused(
                        step,
                        403,
                        format!(
                            "com.apple.unrecognized.device: {}",
                            webauth::body_message(&ct, &bytes)
                        ),
                    ));
                }
                other => {
                    return Err(SimError::refused(
                        step,
                        other.as_u16(),
                        webauth::body_message(&ct, &bytes),
                    ))
                }
            }
        }
    }

    /// Send one check-in message (a plist dictionary) and expect `200`.
    pub async fn check_in(&mut self, step: Step, message: Dictionary) -> Result<Vec<u8>> {
        let url = self.enrolled(step)?.profile.mdm.checkin_url.clone();
        let kind = message
            .get("MessageType")
            .and_then(plist::Value::as_string)
            .unwrap_or("?")
            .to_owned();
        let channel = if message.contains_key("EnrollmentUserID") {
            Channel::User
        } else {
            Channel::Device
        };
        let body = device::to_xml(message).at_doing(step, "plist")?;
        let bytes = self
            .device_request(step, &url, CHECKIN_CONTENT_TYPE, body, channel)
            .await?;
        let label = if step == Step::CheckIn {
            format!("check-in {kind}")
        } else {
            step.to_string()
        };
        self.log(format!("{label}: PUT {url} → 200"));
        Ok(bytes)
    }

    /// Check-in `Authenticate`.
    pub async fn authenticate(&mut self) -> Result<()> {
        let topic = self.enrolled(Step::Authenticate)?.profile.mdm.topic.clone();
        let msg = device::authenticate(&self.facts, &topic, &self.enrollment_id);
        self.check_in(Step::Authenticate, msg).await.map(|_| ())
    }

    /// Check-in `TokenUpdate` on a channel (its push token and magic).
    pub async fn token_update(&mut self, channel: Channel) -> Result<()> {
        let step = match channel {
            Channel::Device => Step::TokenUpdate,
            Channel::User => Step::UserTokenUpdate,
        };
        let topic = self.enrolled(step)?.profile.mdm.topic.clone();
        let push = self.push(channel).clone();
        let msg = device::token_update(
            &topic,
            &self.enrollment_id,
            self.user_for(channel),
            &push.token,
            &push.push_magic,
        );
        self.check_in(step, msg).await.map(|_| ())
    }

    /// Check-in `CheckOut` (the profile was removed); the Mac forgets its enrollment.
    pub async fn check_out(&mut self) -> Result<()> {
        let topic = self.enrolled(Step::CheckIn)?.profile.mdm.topic.clone();
        let msg = device::check_out(&topic, &self.enrollment_id);
        self.check_in(Step::CheckIn, msg).await?;
        self.enrolled = None;
        self.profiles.clear();
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // 7. command channel

    /// Report `Idle` on the device channel; returns the command the server sends, if any.
    pub async fn idle(&mut self) -> Result<Option<ServerCommand>> {
        self.idle_on(Channel::Device).await
    }

    /// Report `Idle` on a channel.
    pub async fn idle_on(&mut self, channel: Channel) -> Result<Option<ServerCommand>> {
        self.report_status(channel, "Idle", None, &Dictionary::new())
            .await
    }

    /// Answer command `uuid` on the device channel with `status` and `result` keys; returns
    /// the next command, if any.
    pub async fn respond(
        &mut self,
        uuid: &str,
        status: CommandStatus,
        result: Dictionary,
    ) -> Result<Option<ServerCommand>> {
        self.respond_on(Channel::Device, uuid, status, result).await
    }

    /// Answer a command on a channel.
    pub async fn respond_on(
        &mut self,
        channel: Channel,
        uuid: &str,
        status: CommandStatus,
        result: Dictionary,
    ) -> Result<Option<ServerCommand>> {
        self.report_status(channel, status.as_str(), Some(uuid), &result)
            .await
    }

    async fn report_status(
        &mut self,
        channel: Channel,
        status: &str,
        uuid: Option<&str>,
        result: &Dictionary,
    ) -> Result<Option<ServerCommand>> {
        let url = self.enrolled(Step::Command)?.profile.mdm.server_url.clone();
        let msg = device::command_report(
            &self.enrollment_id,
            self.user_for(channel),
            status,
            uuid,
            result,
        );
        let body = device::to_xml(msg).at_doing(Step::Command, "plist")?;
        if std::mem::take(&mut self.conditions.lose_next_answer) {
            // The answer never arrives; the Mac keeps the report and sends it again.
            let _lost = self
                .device_request(
                    Step::Command,
                    &url,
                    COMMAND_CONTENT_TYPE,
                    body.clone(),
                    channel,
                )
                .await?;
            self.log(format!(
                "command: the answer to {status} was lost; sending it again"
            ));
        }
        let bytes = self
            .device_request(Step::Command, &url, COMMAND_CONTENT_TYPE, body, channel)
            .await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_command(&bytes)
            .map(Some)
            .map_err(|m| SimError::failed(Step::Command, m))
    }

    /// The built-in responder's answer to `cmd` (see [`crate::commands::builtin_reply`]).
    pub fn builtin_reply(&mut self, cmd: &ServerCommand, channel: Channel) -> Reply {
        let managed = self
            .profile()
            .and_then(|p| p.mdm.assigned_managed_apple_id.clone())
            .unwrap_or_else(|| self.opts.email.clone());
        let mut held = Vec::new();
        if let Some(e) = &self.enrolled {
            held.push(HeldCertificate {
                common_name: common_name(&e.identity_cert),
                der: e.identity_cert.to_der().unwrap_or_default(),
                is_identity: true,
            });
            for der in &e.profile.root_certificates {
                if let Ok(c) = X509::from_der(der) {
                    held.push(HeldCertificate {
                        common_name: common_name(&c),
                        der: der.clone(),
                        is_identity: false,
                    });
                }
            }
        }
        let push_token = self.push(channel).token.clone();
        let ctx = ResponderContext {
            facts: &self.facts,
            channel,
            managed_apple_id: &managed,
            enrollment_id: &self.enrollment_id,
            push_token: &push_token,
            certificates: &held,
        };
        builtin_reply(cmd, &ctx, &mut self.profiles)
    }

    /// Answer a command as a Mac does: an `InstallProfile` of a profile with an MDM payload is
    /// the renewal of the enrollment profile ([`SimMac::install_renewal`]); anything else goes
    /// to the built-in responder ([`SimMac::builtin_reply`]).
    pub async fn handle_command(&mut self, cmd: &ServerCommand, channel: Channel) -> Result<Reply> {
        if cmd.request_type == "DeclarativeManagement" {
            return self.declarative_command(cmd, channel).await;
        }
        if cmd.request_type == "InstallProfile" {
            if let Some(payload) = cmd.command.get("Payload").and_then(plist::Value::as_data) {
                let content = lanyard_pki::verify_cms_attached_untrusted(payload)
                    .map(|(c, _)| c)
                    .unwrap_or_else(|_| payload.to_vec());
                if let Ok(plist::Value::Dictionary(d)) = plist::from_bytes(&content) {
                    if crate::commands::carries_mdm_payload(&d) {
                        let payload = payload.to_vec();
                        return self.install_renewal(&payload, channel).await;
                    }
                }
            }
        }
        Ok(self.builtin_reply(cmd, channel))
    }

    /// Install a profile carrying an MDM payload, as a Mac would: only on the device channel
    /// (schema `com.apple.mdm`: `userchannel: false`), only the enrollment profile renewed (same
    /// `PayloadIdentifier`/`PayloadUUID` of the profile and of its MDM payload: a Mac holds one
    /// MDM payload), signed like the enrollment profile, passing the User Enrollment checks and
    /// the schema's update rules ([`crate::profile::check_mdm_update`]). Then SCEP with the new
    /// payload's challenge, and from then on every request is signed by the new identity. A
    /// refusal or a failed SCEP is an `Error` answer and changes nothing.
    pub async fn install_renewal(&mut self, signed: &[u8], channel: Channel) -> Result<Reply> {
        let refuse = |code: i64, m: String| Ok(Reply::error("MCProfileErrorDomain", code, &m));
        if channel != Channel::Device {
            return refuse(
                1009,
                "an MDM payload installs only on the device channel".into(),
            );
        }
        let installed = self.enrolled(Step::Command)?.profile.clone();
        let profile = match self.read_profile(signed).await {
            Ok((p, _)) => p,
            Err(e) => return refuse(1001, format!("the profile is refused: {e}")),
        };
        if !crate::profile::is_renewal_of(&profile, &installed) {
            return refuse(
                4001,
                format!(
                    "the profile {} carries an MDM payload that is not this Mac's enrollment ({});                      a Mac holds one MDM payload",
                    profile.identifier, installed.identifier
                ),
            );
        }
        if let Err(m) = check_user_enrollment(&profile, &self.opts.email)
            .and_then(|()| crate::profile::check_mdm_update(&profile.mdm, &installed.mdm))
        {
            return refuse(4002, format!("the MDM payload update is rejected: {m}"));
        }
        let scep = match scep_client::enroll(&self.client, &profile.scep).await {
            Ok(s) => s,
            Err(e) => {
                let m = format!("SCEP with the renewal's challenge failed: {e}");
                self.log(format!("renewal: {m}"));
                return Ok(Reply::error("MDMErrorDomain", 12027, &m));
            }
        };
        for line in &scep.log {
            self.steps.push(format!("renewal: {line}"));
        }
        let mtls = self.mtls_client(&profile, &scep.certificate, &scep.key)?;
        let serial = CertInfo::from_x509(&scep.certificate)
            .map(|i| i.serial_hex)
            .unwrap_or_default();
        self.log(format!(
            "renewal: InstallProfile {} (same identifiers, SCEP payload {}) installed; new \
             identity {serial}",
            profile.identifier, profile.scep.payload_uuid
        ));
        let raw = profile.raw.clone();
        let id = profile.identifier.clone();
        let Some(e) = self.enrolled.as_mut() else {
            return Err(SimError::failed(
                Step::Command,
                "the simulated Mac is not enrolled",
            ));
        };
        let old_cert = std::mem::replace(&mut e.identity_cert, scep.certificate);
        let old_key = std::mem::replace(&mut e.identity_key, scep.key);
        e.previous_identity = Some((old_cert, old_key));
        e.profile = profile;
        e.mtls = mtls;
        self.profiles
            .retain(|p| p.identifier() != Some(id.as_str()));
        self.profiles.insert(0, InstalledProfile { profile: raw });
        Ok(Reply::acknowledged(Dictionary::new()))
    }

    /// What the Mac holds through declarative device management.
    pub fn declarative(&self) -> &DeclarativeState {
        &self.declarative
    }

    /// One `DeclarativeManagement` check-in on a channel, answered `200` (else an error as
    /// for any check-in); returns the body.
    pub async fn declarative_checkin(
        &mut self,
        channel: Channel,
        endpoint: &str,
        data: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let msg = device::declarative_management(
            &self.enrollment_id,
            self.user_for(channel),
            endpoint,
            data,
        );
        self.check_in(Step::CheckIn, msg).await
    }

    /// One `DeclarativeManagement` check-in whatever the answer: status, content type, body.
    pub async fn declarative_checkin_raw(
        &self,
        channel: Channel,
        endpoint: &str,
        data: Option<&[u8]>,
    ) -> Result<(StatusCode, String, Vec<u8>)> {
        let url = self
            .enrolled(Step::CheckIn)?
            .profile
            .mdm
            .checkin_url
            .clone();
        let msg = device::declarative_management(
            &self.enrollment_id,
            self.user_for(channel),
            endpoint,
            data,
        );
        let body = device::to_xml(msg).at_doing(Step::CheckIn, "plist")?;
        self.put_signed_on(Step::CheckIn, &url, CHECKIN_CONTENT_TYPE, body, channel)
            .await
    }

    /// The `DeclarativeManagement` command: its `Data` must be a tokens response
    /// (`mdm/commands/declarativemanagement.yaml`); the Mac then synchronises
    /// ([`SimMac::declarative_sync`]). A synchronisation that fails is the command's `Error`.
    async fn declarative_command(
        &mut self,
        cmd: &ServerCommand,
        channel: Channel,
    ) -> Result<Reply> {
        if let Some(data) = cmd.command.get("Data").and_then(plist::Value::as_data) {
            let doc: serde_json::Value = match serde_json::from_slice(data) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Reply::error(
                        "RMErrorDomain",
                        1,
                        &format!("Data is not JSON: {e}"),
                    ))
                }
            };
            if doc
                .get("SyncTokens")
                .and_then(|t| t.get("DeclarationsToken"))
                .and_then(serde_json::Value::as_str)
                .is_none()
            {
                return Ok(Reply::error(
                    "RMErrorDomain",
                    1,
                    "Data is not a tokens response (SyncTokens.DeclarationsToken)",
                ));
            }
        }
        match self.declarative_sync(channel).await {
            Ok(sync) => {
                self.log(format!(
                    "declarative sync: {} fetched, {} removed, {} held",
                    sync.fetched.len(),
                    sync.removed.len(),
                    self.declarative.held.len()
                ));
                Ok(Reply::acknowledged(Dictionary::new()))
            }
            Err(e) => Ok(Reply::error("RMErrorDomain", 2, &e.to_string())),
        }
    }

    /// Synchronises as a Mac does: `tokens`, then `declaration-items`, then each declaration
    /// whose `ServerToken` it does not hold (checked against Apple's schema and macOS User
    /// Enrollment's rule; an asset's data fetched from its `DataURL` with the MDM identity and
    /// checked against its size and hash), drops what the manifest no longer lists, decides
    /// each one's state and sends a full status report of the subscribed items.
    pub async fn declarative_sync(&mut self, channel: Channel) -> Result<DeclarativeSync> {
        let step = Step::CheckIn;
        let tokens = self.declarative_checkin(channel, "tokens", None).await?;
        let tokens: serde_json::Value =
            serde_json::from_slice(&tokens).at_doing(step, "tokens response")?;
        let token = tokens
            .get("SyncTokens")
            .and_then(|t| t.get("DeclarationsToken"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| SimError::failed(step, "the tokens response has no DeclarationsToken"))?
            .to_string();
        let items = self
            .declarative_checkin(channel, "declaration-items", None)
            .await?;
        let items: serde_json::Value =
            serde_json::from_slice(&items).at_doing(step, "declaration-items response")?;
        let (listed, manifest_token) =
            declarative::manifest_items(&items).map_err(|m| SimError::failed(step, m))?;
        if manifest_token != token {
            return Err(SimError::failed(
                step,
                "the manifest's DeclarationsToken is not the tokens response's",
            ));
        }
        let mut sync = DeclarativeSync {
            declarations_token: token.clone(),
            ..Default::default()
        };
        let listed_ids: std::collections::BTreeSet<&str> =
            listed.iter().map(|(_, i, _)| i.as_str()).collect();
        let gone: Vec<String> = self
            .declarative
            .held
            .keys()
            .filter(|k| !listed_ids.contains(k.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.declarative.held.remove(&id);
            self.declarative.asset_data.remove(&id);
            sync.removed.push(id);
        }
        for (kind, id, server_token) in &listed {
            if self
                .declarative
                .held
                .get(id)
                .is_some_and(|h| h.declaration.server_token == *server_token && h.valid == "valid")
            {
                continue;
            }
            let endpoint = format!("declaration/{}/{id}", kind.as_str());
            let body = self.declarative_checkin(channel, &endpoint, None).await?;
            sync.fetched.push(id.clone());
            let doc: serde_json::Value =
                serde_json::from_slice(&body).at_doing(step, "a declaration")?;
            let placeholder = lanyard_proto::declaration::Declaration {
                declaration_type: String::new(),
                identifier: id.clone(),
                server_token: server_token.clone(),
                payload: serde_json::Value::Null,
            };
            let held = match declarative::read_declaration(&doc, *kind, id, server_token) {
                Ok(d) => {
                    let data = if *kind == lanyard_proto::declaration::DeclarationKind::Asset {
                        self.fetch_asset(&d, channel).await
                    } else {
                        Ok(None)
                    };
                    match data {
                        Ok(data) => {
                            if let Some(bytes) = data {
                                self.declarative.asset_data.insert(id.clone(), bytes);
                            }
                            Held::valid(*kind, d)
                        }
                        Err(m) => Held::invalid(*kind, d, "Error.AssetCannotBeDownloaded", &m),
                    }
                }
                Err(m) => {
                    self.log(format!("declarative sync: {id} refused: {m}"));
                    Held::invalid(
                        *kind,
                        placeholder,
                        "Error.ConfigurationCannotBeDeserialized",
                        &m,
                    )
                }
            };
            self.declarative.held.insert(id.clone(), held);
        }
        let fail = self.conditions.fail_declarations.clone();
        declarative::apply(&mut self.declarative.held, &fail);
        self.declarative.declarations_token = Some(token);
        let report = declarative::status_report(&self.facts, &self.declarative.held);
        let bytes = serde_json::to_vec(&report).at_doing(step, "status report")?;
        self.declarative_checkin(channel, "status", Some(&bytes))
            .await?;
        Ok(sync)
    }

    /// A `GET` with MDM semantics (an asset's `Authentication` `MDM`): the `Mdm-Signature` over
    /// the empty body by the identity, and on the user channel the bearer. Returns the status
    /// and body whatever they are.
    pub async fn get_signed(&self, url: &str, channel: Channel) -> Result<(StatusCode, Vec<u8>)> {
        let step = Step::CheckIn;
        let e = self.enrolled(step)?;
        let client = e.mtls.as_ref().unwrap_or(&self.client);
        let identity = (&e.identity_cert, &e.identity_key);
        let rb = e.as_device(client.get(url), step, b"", identity, channel)?;
        let resp = rb.send().await.at(step)?;
        let status = resp.status();
        Ok((status, resp.bytes().await.at(step)?.to_vec()))
    }

    /// An asset's data: fetched from `Reference.DataURL` when the asset has one (with the MDM
    /// identity when `Authentication.Type` is `MDM`, Apple's
    /// `assets/credential.certificate.yaml`), checked against `Size` and `Hash-SHA-256`.
    async fn fetch_asset(
        &mut self,
        d: &lanyard_proto::declaration::Declaration,
        channel: Channel,
    ) -> std::result::Result<Option<Vec<u8>>, String> {
        let Some(reference) = d.payload.get("Reference") else {
            return Ok(None);
        };
        let url = reference
            .get("DataURL")
            .and_then(serde_json::Value::as_str)
            .ok_or("Reference has no DataURL")?;
        if !url.starts_with("https://") {
            return Err(format!("DataURL {url} does not start with https://"));
        }
        let mdm = d
            .payload
            .get("Authentication")
            .and_then(|a| a.get("Type"))
            .and_then(serde_json::Value::as_str)
            == Some("MDM");
        let (status, bytes) = if mdm {
            self.get_signed(url, channel)
                .await
                .map_err(|e| e.to_string())?
        } else {
            let resp = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            (
                status,
                resp.bytes().await.map_err(|e| e.to_string())?.to_vec(),
            )
        };
        if status != StatusCode::OK {
            return Err(format!("GET {url} answered {status}"));
        }
        if let Some(size) = reference.get("Size").and_then(serde_json::Value::as_u64) {
            if size != bytes.len() as u64 {
                return Err(format!("{url}: {} bytes, Size says {size}", bytes.len()));
            }
        }
        if let Some(hash) = reference
            .get("Hash-SHA-256")
            .and_then(serde_json::Value::as_str)
        {
            let got = hex::encode(openssl::sha::sha256(&bytes));
            if !got.eq_ignore_ascii_case(hash) {
                return Err(format!("{url}: the data's SHA-256 is not Hash-SHA-256"));
            }
        }
        self.log(format!(
            "declarative sync: asset {} data fetched ({} bytes)",
            d.identifier,
            bytes.len()
        ));
        Ok(Some(bytes))
    }

    /// The identity the last renewal replaced, if any.
    pub fn previous_identity_certificate(&self) -> Option<&X509> {
        self.enrolled
            .as_ref()
            .and_then(|e| e.previous_identity.as_ref())
            .map(|(c, _)| c)
    }

    /// Report `Idle` on the device channel signed by the identity the last renewal replaced —
    /// what a Mac never does after a renewal; tests use it to see the server retire that
    /// identity.
    pub async fn idle_with_previous_identity(&mut self) -> Result<Option<ServerCommand>> {
        let e = self.enrolled(Step::Command)?;
        let Some((cert, key)) = e.previous_identity.clone() else {
            return Err(SimError::failed(
                Step::Command,
                "no identity was replaced by a renewal",
            ));
        };
        let url = e.profile.mdm.server_url.clone();
        let msg =
            device::command_report(&self.enrollment_id, None, "Idle", None, &Dictionary::new());
        let body = device::to_xml(msg).at_doing(Step::Command, "plist")?;
        let (code, ct, bytes) = self
            .put_signed_by(Step::Command, &url, COMMAND_CONTENT_TYPE, body, &cert, &key)
            .await?;
        command_answer(code, &ct, &bytes)
    }

    /// The TLS client presenting the identity, when the profile has `SignMessage` false.
    fn mtls_client(
        &mut self,
        profile: &EnrollmentProfile,
        cert: &X509,
        key: &PKey<Private>,
    ) -> Result<Option<reqwest::Client>> {
        if profile.mdm.sign_message {
            return Ok(None);
        }
        let mut pem = cert.to_pem().at_doing(Step::Scep, "identity")?;
        pem.extend(
            key.private_key_to_pem_pkcs8()
                .at_doing(Step::Scep, "identity key")?,
        );
        let id = reqwest::Identity::from_pem(&pem).at_doing(Step::Scep, "TLS identity")?;
        self.log(
            "check-in: SignMessage is false, presenting the identity as a TLS client certificate"
                .into(),
        );
        Ok(Some(build_client(&self.opts, &self.trust, Some(id))?))
    }

    /// Poll a channel and answer every queued command as [`SimMac::handle_command`] does, at
    /// most `max` of them. Returns what was answered.
    pub async fn run_commands(
        &mut self,
        channel: Channel,
        max: usize,
    ) -> Result<Vec<HandledCommand>> {
        let mut handled = Vec::new();
        let mut next = self.idle_on(channel).await?;
        while let Some(cmd) = next {
            if handled.len() >= max {
                // Leave it queued: the server sends it again on the next Idle.
                break;
            }
            if let Some(i) = self
                .conditions
                .not_now
                .iter()
                .position(|t| *t == cmd.request_type)
            {
                // Apple, "Handling NotNow status responses": the Mac reports NotNow and polls
                // again by itself when conditions change; the server must not answer with
                // another command.
                self.conditions.not_now.remove(i);
                handled.push(HandledCommand {
                    channel,
                    command_uuid: cmd.uuid.clone(),
                    request_type: cmd.request_type.clone(),
                    status: CommandStatus::NotNow.as_str().to_owned(),
                });
                let after = self
                    .respond_on(channel, &cmd.uuid, CommandStatus::NotNow, Dictionary::new())
                    .await?;
                if let Some(other) = after {
                    return Err(SimError::failed(
                        Step::Command,
                        format!(
                            "the server answered NotNow with another command ({}); a Mac then \
                             stops polling by itself",
                            other.request_type
                        ),
                    ));
                }
                break;
            }
            let reply = self.handle_command(&cmd, channel).await?;
            handled.push(HandledCommand {
                channel,
                command_uuid: cmd.uuid.clone(),
                request_type: cmd.request_type.clone(),
                status: reply.status.as_str().to_owned(),
            });
            next = self
                .respond_on(channel, &cmd.uuid, reply.status, reply.result)
                .await?;
        }
        Ok(handled)
    }
}

/// The command endpoint's answer: `200` with a command or nothing, else a refusal.
fn command_answer(code: StatusCode, ct: &str, bytes: &[u8]) -> Result<Option<ServerCommand>> {
    if code != StatusCode::OK {
        return Err(SimError::refused(
            Step::Command,
            code.as_u16(),
            webauth::body_message(ct, bytes),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_command(bytes)
        .map(Some)
        .map_err(|m| SimError::failed(Step::Command, m))
}

enum EnrollAnswer {
    Challenge(Url),
    Profile(Vec<u8>),
}

fn common_name(c: &X509) -> String {
    c.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_else(|| name_to_string(c.subject_name()))
}

/// The sign-in URL of a `401`'s `apple-as-web` challenge, read strictly as a Mac does
/// (RFC 7235 auth-params; a malformed challenge ends the step), relative to `base`.
fn apple_as_web_url(step: Step, header: &str, base: &Url) -> Result<Url> {
    let challenge = webauth::parse_challenges(header)
        .map_err(|m| {
            SimError::failed(
                step,
                format!("the WWW-Authenticate challenge is not RFC 7235 ({m}): {header}"),
            )
        })?
        .into_iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("Bearer"))
        .ok_or_else(|| {
            SimError::refused(
                step,
                401,
                format!("no Bearer challenge in WWW-Authenticate ({header:?})"),
            )
        })?;
    let method = challenge.params.get("method").cloned().unwrap_or_default();
    if method != "apple-as-web" {
        return Err(SimError::failed(
            step,
            format!("unsupported authentication method {method:?} (want apple-as-web)"),
        ));
    }
    let url = challenge
        .params
        .get("url")
        .ok_or_else(|| SimError::failed(step, "the apple-as-web challenge has no url"))?;
    base.join(url)
        .map_err(|e| SimError::failed(step, format!("sign-in url {url:?}: {e}")))
}

/// Apple's ErrorUnrecognizedDevice: a 403 whose JSON body has `code`
/// `com.apple.unrecognized.device`.
fn is_unrecognized_device(content_type: &str, body: &[u8]) -> bool {
    content_type.starts_with("application/json")
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
            .as_deref()
            == Some("com.apple.unrecognized.device")
}

/// A response's status, content type and body.
async fn parts_of(step: Step, resp: reqwest::Response) -> Result<(StatusCode, String, Vec<u8>)> {
    let status = resp.status();
    let ct = content_type_of(&resp);
    let bytes = resp.bytes().await.at(step)?.to_vec();
    Ok((status, ct, bytes))
}

fn content_type_of(resp: &reqwest::Response) -> String {
    content_type(resp.headers())
}

fn without_query(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

/// Explain an error with its sources (for callers holding other error types).
pub fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_accounts() {
        assert_eq!(short_name_for("Ann.Smith@example.com"), "ann.smith");
        assert_eq!(long_name_for("ann.smith@example.com"), "Ann Smith");
        assert_eq!(long_name_for("@example.com"), "Simulated User");
        assert_eq!("Corporate".parse::<Ownership>(), Ok(Ownership::Corporate));
        assert!("boss".parse::<Ownership>().is_err());
    }

    #[test]
    fn new_checks_options_and_signs_machine_info() {
        let mut o = SimOptions::new("https://127.0.0.1:9", "ann@example.com", "pw");
        o.insecure = true;
        let mac = SimMac::new(o.clone()).unwrap();
        assert_eq!(mac.enrollment_id().len(), 36);
        assert_eq!(mac.enrollment_id(), mac.enrollment_id().to_uppercase());
        assert_ne!(mac.enrollment_id(), mac.enrollment_user_id());
        assert_eq!(mac.push(Channel::Device).token.len(), 32);
        assert!(!format!("{o:?}").contains("\"pw\""));

        let der = mac.signed_machine_info().unwrap();
        let (content, signer) = lanyard_pki::verify_cms_attached_untrusted(&der).unwrap();
        assert_eq!(content, mac.machine_info_plist().unwrap());
        assert_eq!(
            name_to_string(signer.subject_name()),
            "CN=Simulated Mac Device Identity"
        );
        let mi = lanyard_proto::decode_machine_info(&content).unwrap();
        assert_eq!(mi.os_version.as_deref(), Some("15.2"));

        let bad = |f: &dyn Fn(&mut SimOptions)| {
            let mut o = o.clone();
            f(&mut o);
            SimMac::new(o).unwrap_err()
        };
        assert_eq!(bad(&|o| o.server = "ftp://x".into()).step(), Step::Setup);
        assert!(bad(&|o| o.email = "nobody".into())
            .to_string()
            .contains("email"));
        assert!(bad(&|o| o.os_version = "fifteen".into())
            .to_string()
            .contains("OS version"));
        assert!(bad(&|o| {
            o.ca_cert_pem = Some(b"junk".to_vec());
        })
        .to_string()
        .contains("CA certificate"));
    }

    #[tokio::test]
    async fn unreachable_server_fails_at_discovery() {
        // Port 9 on loopback (discard) is closed on test machines: connection refused.
        let mut o = SimOptions::new("https://127.0.0.1:9", "ann@example.com", "pw");
        o.insecure = true;
        let mut mac = SimMac::new(o).unwrap();
        let err = mac.enroll().await.unwrap_err();
        assert_eq!(err.step(), Step::Discovery, "{err}");
        assert!(!mac.is_enrolled());
        assert!(mac.idle().await.is_err());
    }
}
