//! Waking devices: the MDM push certificate (uploaded by the administrator, kept sealed in the
//! database; its topic is the topic of every enrollment profile, and without it Lanyard
//! enrolls nothing) and the push service that
//! sends `{"mdm": PushMagic}` through `lanyard_apple::apns`, with retries and back-off for
//! `429`/`5xx`, dropping tokens APNs calls unregistered, and recording each enrollment's push
//! state. Queueing never waits for pushing: the push job runs beside it.

use std::sync::Arc;

use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};
use utoipa::ToSchema;

use lanyard_apple::apns::{
    ApnsClient, ApnsOptions, PushCertificate, PushCertificateSummary, PushOutcome, PushTarget,
};
use lanyard_pki::SecretBox;
use lanyard_store::{Audit, PkiMaterial};

use crate::commands::PushRequester;
use crate::{Actor, CoreError, Lanyard, Result};

/// The push certificate's row in the PKI table.
pub const APNS_CERT_NAME: &str = "apns";
/// Warn when the push certificate expires within this many days (the first of
/// [`EXPIRY_THRESHOLDS`]).
pub const EXPIRY_WARNING_DAYS: i64 = EXPIRY_THRESHOLDS[0];
/// The days-left marks at which Lanyard warns that the push certificate expires: once when
/// each is crossed (log), and for as long as the tightest one is crossed (portal, API, CLI).
pub const EXPIRY_THRESHOLDS: [i64; 4] = [30, 14, 7, 1];
/// The `/metrics` gauge of the push certificate's days left (negative once expired).
pub const EXPIRY_GAUGE: &str = "lanyard_push_certificate_expires_in_days";

/// The tightest expiry mark `days_left` has reached (`days_left <= mark`), or `None` while
/// more than 30 days are left. An expired certificate has reached every mark (1).
pub fn expiry_threshold(days_left: i64) -> Option<i64> {
    EXPIRY_THRESHOLDS
        .iter()
        .rev()
        .copied()
        .find(|mark| days_left <= *mark)
}

/// Remembers the last expiry mark warned about, so a periodic check logs each mark once
/// (per process: a restart warns again about the mark already reached).
#[derive(Debug, Default)]
pub struct ExpiryWatch {
    warned: Option<i64>,
}

impl ExpiryWatch {
    /// The mark to warn about now, given the days left of the current certificate (`None`:
    /// no certificate). A mark is returned once; a renewed certificate (a looser mark, or
    /// none) starts over.
    pub fn observe(&mut self, days_left: Option<i64>) -> Option<i64> {
        let mark = days_left.and_then(expiry_threshold);
        let warn = mark.filter(|m| self.warned != Some(*m));
        self.warned = mark;
        warn
    }
}

/// Sets the `/metrics` gauge of the push certificate's days left.
pub fn record_push_expiry(info: &PushCertificateInfo) {
    metrics::gauge!(EXPIRY_GAUGE).set(info.days_left as f64);
}
/// Attempts per push before giving up on a retryable failure.
pub const MAX_ATTEMPTS: u32 = 4;

pub(crate) fn seal_context() -> &'static [u8] {
    b"lanyard:pki:apns"
}

/// What the API and CLI show about the push certificate.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PushCertificateInfo {
    pub topic: String,
    pub subject: String,
    pub issuer: String,
    pub sha256: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub days_left: i64,
    /// Set when the certificate expires within 30 days (the first expiry mark) or has expired.
    pub warning: Option<String>,
}

pub(crate) fn info(cert: &PushCertificateSummary) -> PushCertificateInfo {
    let days_left = cert.days_left();
    PushCertificateInfo {
        topic: cert.topic().to_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sha256: cert.sha256().to_string(),
        not_after: chrono::DateTime::from_timestamp(cert.not_after(), 0).unwrap_or_default(),
        days_left,
        warning: expiry_threshold(days_left).map(|_| {
            if days_left < 0 {
                "the push certificate has expired: devices cannot be woken; renew it with the \
                 same topic"
                    .to_string()
            } else {
                format!(
                    "the push certificate expires in {days_left} days; renew it with the same \
                     topic before then"
                )
            }
        }),
    }
}

/// The push certificate as uploaded: PKCS#12 with its password, or PEM certificate and key.
pub enum PushCertificateUpload<'a> {
    Pkcs12 { der: &'a [u8], password: &'a str },
    Pem { cert: &'a [u8], key: &'a [u8] },
}

fn parse_upload(upload: &PushCertificateUpload<'_>) -> Result<PushCertificate> {
    let parsed = match upload {
        PushCertificateUpload::Pkcs12 { der, password } => {
            PushCertificate::from_pkcs12(der, password)
        }
        PushCertificateUpload::Pem { cert, key } => PushCertificate::from_pem(cert, key),
    };
    parsed.map_err(|e| CoreError::Invalid(format!("push certificate: {e}")))
}

/// The private key of an upload, as PEM, to keep sealed.
fn upload_key_pem(upload: &PushCertificateUpload<'_>) -> Result<String> {
    let bad = |e: lanyard_pki::PkiError| CoreError::Invalid(format!("push certificate key: {e}"));
    let key = match upload {
        PushCertificateUpload::Pem { key, .. } => {
            lanyard_pki::private_key_from_pem(key).map_err(bad)?
        }
        PushCertificateUpload::Pkcs12 { der, password } => lanyard_pki::read_pkcs12(der, password)
            .map_err(bad)?
            .key
            .ok_or_else(|| CoreError::Invalid("the PKCS#12 file holds no key".into()))?,
    };
    lanyard_pki::private_key_pem(&key).map_err(bad)
}

impl Lanyard {
    /// Stores (or renews) the MDM push certificate. Refuses an expired one, and — unless
    /// `force` — one whose topic differs from the topic live enrollments were issued with
    /// (those devices would no longer accept pushes).
    pub async fn set_push_certificate(
        &self,
        actor: &Actor,
        secrets: &SecretBox,
        upload: &PushCertificateUpload<'_>,
        force: bool,
    ) -> Result<PushCertificateInfo> {
        actor.require_write()?;
        let cert = parse_upload(upload)?;
        self.check_push_replacement(&cert, force).await?;
        let key_pem = upload_key_pem(upload)?;
        let sealed = secrets.seal(key_pem.as_bytes(), seal_context())?;
        let cert_pem = cert
            .cert_pem()
            .map_err(|e| CoreError::failed("encoding the push certificate", e))?;
        let shown = info(cert.summary());
        self.store
            .put_pki(
                &PkiMaterial {
                    name: APNS_CERT_NAME.into(),
                    cert_pem,
                    key_sealed: sealed,
                    created_at: lanyard_store::now(),
                },
                &Audit::new(
                    &actor.name,
                    "push_certificate.upload",
                    cert.topic(),
                    json!({"sha256": shown.sha256, "not_after": shown.not_after}),
                ),
            )
            .await?;
        record_push_expiry(&shown);
        Ok(shown)
    }

    /// The APNs topic every enrollment profile carries: the topic of the uploaded MDM push
    /// certificate, or `None` while there is none — and then Lanyard enrolls nothing. Apple's
    /// schema for `com.apple.mdm` says the certificate that sends the pushes "must have the same
    /// topic in its subject", and that on a profile update the topic "must not change", so a
    /// Mac enrolled under any other topic could never be woken and would have to re-enroll.
    /// Read from the certificate alone (no key needed).
    pub async fn push_topic(&self) -> Result<Option<String>> {
        Ok(self
            .push_certificate_summary()
            .await?
            .map(|s| s.topic().to_string()))
    }

    /// What the stored push certificate says of itself, read without opening its key (the
    /// key was checked against it on upload; pushing opens it).
    pub async fn push_certificate_summary(&self) -> Result<Option<PushCertificateSummary>> {
        let Some(m) = self.store.get_pki(APNS_CERT_NAME).await? else {
            return Ok(None);
        };
        PushCertificateSummary::from_pem(m.cert_pem.as_bytes())
            .map(Some)
            .map_err(|e| CoreError::failed("reading the stored push certificate", e))
    }

    /// The stored push certificate, if any.
    pub async fn push_certificate(&self, secrets: &SecretBox) -> Result<Option<PushCertificate>> {
        let Some(m) = self.store.get_pki(APNS_CERT_NAME).await? else {
            return Ok(None);
        };
        let key = secrets
            .open(&m.key_sealed, seal_context())
            .map_err(|e| CoreError::failed("opening the push key", e))?;
        PushCertificate::from_pem(m.cert_pem.as_bytes(), &key)
            .map(Some)
            .map_err(|e| CoreError::failed("reading the stored push certificate", e))
    }

    /// What the API, portal, CLI and start-up log show of the stored push certificate.
    pub async fn push_certificate_info(&self) -> Result<Option<PushCertificateInfo>> {
        Ok(self.push_certificate_summary().await?.as_ref().map(info))
    }

    /// The periodic expiry check of `serve`: sets the `/metrics` gauge and logs a warning
    /// when the certificate reaches an expiry mark that `watch` has not warned about yet.
    pub async fn check_push_expiry(&self, watch: &mut ExpiryWatch) {
        match self.push_certificate_info().await {
            Ok(current) => {
                if let Some(i) = &current {
                    record_push_expiry(i);
                }
                if let (Some(mark), Some(i)) = (
                    watch.observe(current.as_ref().map(|i| i.days_left)),
                    &current,
                ) {
                    tracing::warn!(
                        topic = %i.topic,
                        days_left = i.days_left,
                        mark,
                        "{}",
                        i.warning.as_deref().unwrap_or("the push certificate expires soon")
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e.chain(), "the push certificate cannot be read"),
        }
    }
}

/// How a batch of pushes went.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PushReport {
    pub requested: usize,
    pub delivered: usize,
    pub unregistered: usize,
    pub failed: usize,
    /// Enrollments without a push token (not enrolled yet, checked out, or token dropped).
    pub not_reachable: usize,
}

/// Sends pushes with the stored certificate; rebuilds its client when the certificate changes.
pub struct PushService {
    lanyard: Lanyard,
    secrets: SecretBox,
    apns_url: String,
    options: ApnsOptions,
    client: Mutex<Option<(String, ApnsClient)>>,
}

fn outcome_label(o: &PushOutcome) -> String {
    match o {
        PushOutcome::Delivered { .. } => "delivered".into(),
        PushOutcome::Unregistered { .. } => "unregistered".into(),
        PushOutcome::BadToken { reason } => format!("bad token: {reason}"),
        PushOutcome::RateLimited { .. } => "rate limited".into(),
        PushOutcome::ServerError { status, reason } => format!("APNs {status}: {reason}"),
        PushOutcome::Certificate { reason } => format!("certificate refused: {reason}"),
        PushOutcome::Rejected { status, reason } => format!("rejected {status}: {reason}"),
        PushOutcome::Transport(e) => format!("transport: {e}"),
    }
}

impl PushService {
    pub fn new(
        lanyard: Lanyard,
        secrets: SecretBox,
        apns_url: String,
        options: ApnsOptions,
    ) -> Self {
        Self {
            lanyard,
            secrets,
            apns_url,
            options,
            client: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<ApnsClient> {
        let Some(m) = self.lanyard.store().get_pki(APNS_CERT_NAME).await? else {
            return Err(CoreError::Invalid(
                "no push certificate: upload one with `lanyard push-cert upload`".into(),
            ));
        };
        let fingerprint = lanyard_pki::sha256_fingerprint(m.cert_pem.as_bytes());
        let mut slot = self.client.lock().await;
        if let Some((fp, c)) = slot.as_ref() {
            if *fp == fingerprint {
                return Ok(c.clone());
            }
        }
        let cert = self
            .lanyard
            .push_certificate(&self.secrets)
            .await?
            .ok_or_else(|| CoreError::Internal("push certificate vanished".into()))?;
        if cert.days_left() < 0 {
            return Err(CoreError::Invalid(
                "the push certificate has expired; renew it".into(),
            ));
        }
        let c = ApnsClient::new(&self.apns_url, &cert, self.options.clone())
            .map_err(|e| CoreError::Invalid(format!("APNs client: {e}")))?;
        *slot = Some((fingerprint, c.clone()));
        Ok(c)
    }

    /// Pushes to these enrollments now, retrying retryable failures with back-off, then marks
    /// their push requests made until now as done (see [`PushJob::start_sweep`]). A push that
    /// could not be tried at all (no usable certificate) leaves the requests pending.
    pub async fn push(&self, enrollment_ids: &[String]) -> Result<PushReport> {
        let started = lanyard_store::now();
        let report = self.push_once(enrollment_ids).await?;
        self.lanyard
            .store()
            .finish_push_requests(enrollment_ids, started)
            .await?;
        Ok(report)
    }

    async fn push_once(&self, enrollment_ids: &[String]) -> Result<PushReport> {
        let store = self.lanyard.store();
        let targets = store.push_targets(enrollment_ids).await?;
        let mut report = PushReport {
            requested: enrollment_ids.len(),
            not_reachable: enrollment_ids.len().saturating_sub(
                targets
                    .iter()
                    .filter(|t| t.channel == lanyard_store::Channel::Device)
                    .count(),
            ),
            ..Default::default()
        };
        if targets.is_empty() {
            return Ok(report);
        }
        let client = self.client().await?;
        let mut pending = targets;
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let batch: Vec<PushTarget> = pending
                .iter()
                .map(|t| PushTarget::new(t.push_token.clone(), t.push_magic.clone()))
                .collect();
            let outcomes = client.push_many(&batch).await;
            let mut retry = Vec::new();
            let mut delay = std::time::Duration::ZERO;
            let now = lanyard_store::now();
            let mut records = Vec::new();
            for (t, o) in pending.into_iter().zip(outcomes) {
                if o.is_retryable() && attempt < MAX_ATTEMPTS {
                    if let Some(d) = o.retry_delay(attempt) {
                        delay = delay.max(d);
                    }
                    retry.push(t);
                    continue;
                }
                let label = outcome_label(&o);
                let delivered = matches!(o, PushOutcome::Delivered { .. });
                records.push(lanyard_store::PushRecord {
                    enrollment_id: t.enrollment_id.clone(),
                    channel: t.channel,
                    status: label.clone(),
                    drop_token: o.token_is_dead(),
                    release_not_now: delivered,
                });
                match &o {
                    PushOutcome::Delivered { .. } => report.delivered += 1,
                    PushOutcome::Unregistered { .. } => report.unregistered += 1,
                    _ => {
                        report.failed += 1;
                        tracing::warn!(enrollment = %t.enrollment_id, outcome = %label, "push failed");
                    }
                }
            }
            // One transaction for the whole batch's bookkeeping.
            store.record_pushes(&records, now).await?;
            if !retry.is_empty() {
                tokio::time::sleep(delay).await;
            }
            pending = retry;
        }
        metrics::counter!("lanyard_pushes_total", "outcome" => "delivered")
            .increment(report.delivered as u64);
        metrics::counter!("lanyard_pushes_total", "outcome" => "failed")
            .increment((report.failed + report.unregistered) as u64);
        Ok(report)
    }
}

/// The push job: queueing hands enrollment ids to it and returns at once.
///
/// Queueing a command with a push also records the request in the database, in the same
/// transaction (`push_requested_at`); a push clears it. So a push asked of a process that stops
/// before sending it (a crash, a SIGKILL, a restart) is not lost: the sweep of any server
/// process on the same database sends it ([`PushJob::start_sweep`]).
#[derive(Clone)]
pub struct PushJob {
    tx: mpsc::UnboundedSender<Vec<String>>,
}

/// Enrollments claimed per sweep round.
const SWEEP_BATCH: i64 = 10_000;

/// How long a sweep's claim on a push request lasts: long enough for a batch with its
/// retries, short enough that another process soon takes over from one that stopped.
pub fn sweep_claim(every: std::time::Duration) -> std::time::Duration {
    (every * 4).max(std::time::Duration::from_secs(5))
}

impl PushRequester for PushJob {
    fn request_push(&self, enrollment_ids: Vec<String>) {
        if self.tx.send(enrollment_ids).is_err() {
            tracing::warn!("the push job has stopped; devices will pick commands up later");
        }
    }
}

impl PushJob {
    /// Starts the job on the current runtime. Requests that arrive while a batch is being
    /// pushed are merged into the next batch.
    pub fn start(service: Arc<PushService>) -> PushJob {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<String>>();
        tokio::spawn(async move {
            while let Some(mut ids) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    ids.extend(more);
                    if ids.len() >= 100_000 {
                        break;
                    }
                }
                ids.sort();
                ids.dedup();
                match service.push(&ids).await {
                    Ok(r) => tracing::info!(
                        requested = r.requested,
                        delivered = r.delivered,
                        unregistered = r.unregistered,
                        failed = r.failed,
                        not_reachable = r.not_reachable,
                        "push batch done"
                    ),
                    Err(e) => tracing::warn!(error = %e.chain(), "push batch failed"),
                }
            }
        });
        PushJob { tx }
    }

    /// Every `every`, sends the pushes that were requested more than `every` ago and are still
    /// pending: those whose requesting process stopped before sending them, or whose push could
    /// not be tried. Each is claimed for [`sweep_claim`] first, so that several server
    /// processes on one database do not push the same device twice.
    pub fn start_sweep(
        service: Arc<PushService>,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = service.sweep(every).await {
                    tracing::warn!(error = %e.chain(), "push sweep failed");
                }
            }
        })
    }
}

impl PushService {
    /// One round of the sweep (see [`PushJob::start_sweep`]); returns how many enrollments it
    /// pushed to.
    pub async fn sweep(&self, every: std::time::Duration) -> Result<usize> {
        let span = |d: std::time::Duration| {
            chrono::Duration::from_std(d)
                .map_err(|e| CoreError::Invalid(format!("push sweep interval: {e}")))
        };
        let claim = span(sweep_claim(every))?;
        let every = span(every)?;
        let mut total = 0;
        loop {
            let now = lanyard_store::now();
            let ids = self
                .lanyard
                .store()
                .claim_push_requests(now - every, now + claim, now, SWEEP_BATCH)
                .await?;
            if ids.is_empty() {
                return Ok(total);
            }
            let n = ids.len();
            let r = self.push(&ids).await?;
            tracing::info!(
                requested = r.requested,
                delivered = r.delivered,
                failed = r.failed,
                "push sweep: sent pushes another process or an earlier attempt left pending"
            );
            total += n;
            if n < SWEEP_BATCH as usize {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::{expiry_threshold, ExpiryWatch};

    #[test]
    fn days_left_to_the_tightest_mark_reached() {
        for (days, mark) in [
            (400, None),
            (31, None),
            (30, Some(30)),
            (15, Some(30)),
            (14, Some(14)),
            (8, Some(14)),
            (7, Some(7)),
            (2, Some(7)),
            (1, Some(1)),
            (0, Some(1)),
            (-5, Some(1)),
        ] {
            assert_eq!(expiry_threshold(days), mark, "{days} days left");
        }
    }

    #[test]
    fn each_mark_is_warned_once_and_a_renewal_starts_over() {
        let mut w = ExpiryWatch::default();
        let seen: Vec<Option<i64>> = [
            Some(40),
            Some(30),
            Some(29),
            Some(20),
            Some(14),
            Some(13),
            Some(6),
            Some(6),
            Some(1),
            Some(0),
            Some(-1),
        ]
        .into_iter()
        .map(|d| w.observe(d))
        .collect();
        assert_eq!(
            seen,
            vec![
                None,
                Some(30),
                None,
                None,
                Some(14),
                None,
                Some(7),
                None,
                Some(1),
                None,
                None
            ]
        );
        // Renewed: a year left, nothing to warn about; the next approach warns again.
        assert_eq!(w.observe(Some(365)), None);
        assert_eq!(w.observe(Some(30)), Some(30));
        // Removed certificate: nothing; a new one inside a mark is warned about.
        assert_eq!(w.observe(None), None);
        assert_eq!(w.observe(Some(10)), Some(14));
    }
}
