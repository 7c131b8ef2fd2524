//! `lanyard serve`: first-start set-up (data directory, secret key, CA, TLS certificate, first
//! administrator), then the HTTP server over rustls with graceful shutdown, under the connection
//! limits of [`crate::connections`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum_server::accept::DefaultAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use lanyard_core::enrollment::{DevicePki, DeviceUrls, EnrollmentService};
use lanyard_core::mdm::MdmService;
use lanyard_core::push::{ExpiryWatch, PushJob};
use lanyard_core::Lanyard;
use lanyard_pki::SecretBox;
use lanyard_store::PkiMaterial;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ServeConfig, TlsMode};
use crate::connections::{self, Guard, Limits};
use crate::settings::{AbmSettings, GlobalSettings};
use crate::setup;

pub async fn run(data: &GlobalSettings, serve: ServeConfig, abm: &AbmSettings) -> Result<()> {
    let s = &serve.settings;
    if s.scep_allow_des {
        lanyard_pki::scep::allow_legacy_des().context("cannot enable single-DES SCEP")?;
        tracing::warn!("SCEP accepts single-DES request envelopes (--scep-allow-des)");
    }
    let opened = setup::open_store(data, setup::Migrations::Apply).await?;
    let lanyard = opened.lanyard;
    let secrets = setup::secret_box(data, &lanyard).await?;
    let device_pki = lanyard.load_device_pki(&secrets, &s.organization).await?;
    export_ca(data, device_pki.ca_cert_pem())?;
    // The expiry mark warned about here is not warned about again by the periodic check.
    let mut expiry_watch = ExpiryWatch::default();
    match lanyard.push_certificate_info().await {
        Ok(Some(info)) => match &info.warning {
            Some(w) => {
                expiry_watch.observe(Some(info.days_left));
                tracing::warn!(topic = %info.topic, days_left = info.days_left, "{w}")
            }
            None => tracing::info!(
                topic = %info.topic,
                days_left = info.days_left,
                "APNs push certificate; new enrollments get its topic"
            ),
        },
        Ok(None) => tracing::warn!(
            "no APNs push certificate: enrollment is closed (service discovery and the \
             enrollment URL refuse every device) until one is uploaded with `lanyard push-cert \
             upload`"
        ),
        Err(e) => tracing::warn!(error = %e.chain(), "the APNs push certificate cannot be read"),
    }
    if let Some((name, password)) = lanyard.bootstrap_first_admin().await? {
        // Printed once, to the terminal, never to the log.
        println!(
            "\n  First start: created administrator `{name}` with one-time password:\n\n      \
             {password}\n\n  Sign in and change it (lanyard admin set-password {name}).\n"
        );
    }

    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    tokio::spawn(watch_push_expiry(lanyard.clone(), expiry_watch));

    let handle = axum_server::Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone()));
    let listener = std::net::TcpListener::bind(s.listen)
        .with_context(|| format!("cannot listen on {}", s.listen))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let scheme = match serve.tls {
        TlsMode::BehindProxy => "http",
        _ => "https",
    };
    let public = s
        .public_url
        .as_ref()
        .map(|u| u.to_string())
        .unwrap_or_else(|| format!("{scheme}://{bound}"));
    let device_pki = Arc::new(device_pki);
    // The push job is given to the domain once; every queued command is then followed by a
    // push (unless the caller asks otherwise).
    let push_service = Arc::new(setup::push_service(data, &lanyard, &secrets)?);
    let pusher = PushJob::start(Arc::clone(&push_service));
    // Pushes that another process (or this one, before a restart) was asked for and never sent.
    PushJob::start_sweep(push_service, s.push_sweep_interval);
    let lanyard = lanyard.with_pusher(Arc::new(pusher));
    let mdm = MdmService::new(lanyard.clone(), Arc::clone(&device_pki));
    let enrollment = EnrollmentService::new(
        lanyard.clone(),
        Arc::clone(&device_pki),
        DeviceUrls::new(&public),
        s.organization.clone(),
    )
    .with_identity_policy(serve.identity)
    .with_self_issued_tls(matches!(serve.tls, TlsMode::SelfIssued));
    tracing::info!(
        lifetime_secs = serve.identity.lifetime.as_secs(),
        renewal_window_secs = serve.identity.renewal_window.as_secs(),
        every_secs = s.identity_renewal_interval.as_secs(),
        "device identity certificates: lifetime, renewal window, renewal job interval"
    );
    enrollment.start_identity_renewal_job(s.identity_renewal_interval);
    let oidc = oidc_sign_ins(&serve, &lanyard, &secrets, &public)?;
    let headers = lanyard_http::ResponseHeaders::with_hsts_max_age(serve.hsts_max_age);
    let metrics = lanyard_http::MetricsEndpoint {
        handle: metrics,
        token: match &s.metrics_token_file {
            Some(path) => Some(metrics_token(path)?),
            None => None,
        },
    };
    let limits = Limits {
        max_connections: connections::effective_max_connections(
            serve.limits.max_connections,
            connections::open_file_limit(),
        ),
        ..serve.limits
    };
    let main_metrics = match s.metrics_listen {
        None => Some(metrics),
        Some(addr) => {
            serve_metrics(addr, metrics, headers.clone(), handle.clone(), limits)?;
            None
        }
    };
    let app = lanyard_http::router(lanyard_http::AppState::new(lanyard_http::Services {
        lanyard: lanyard.clone(),
        enrollment,
        oidc_start_limiter: Default::default(),
        trusted_proxies: lanyard_http::client::TrustedProxies::new(s.trusted_proxy.clone()),
        oidc,
        mdm,
        declarations: lanyard_core::declarations::DeclarationService::new(
            lanyard.clone(),
            secrets.clone(),
            &public,
        ),
        secrets: secrets.clone(),
        abm: abm_service(&lanyard, &secrets, abm, &public)?,
        metrics: main_metrics,
        health: lanyard_http::HealthSettings {
            data_dir: data.data_dir.clone(),
            min_free_bytes: serve.min_free_bytes(),
        },
        headers,
        signing_service: Arc::new(
            lanyard_core::pushcert::signing_service(&data.signing_service_url)
                .context("--signing-service-url")?,
        ),
    }));
    tokio::spawn(prune_leftovers(lanyard.clone()));
    println!(
        "lanyard listening on {scheme}://{bound} (public URL {public}; database {})",
        opened.backend_name
    );
    tracing::info!(%bound, %public, database = opened.backend_name, "listening");
    if matches!(serve.tls, TlsMode::BehindProxy) && s.trusted_proxy.is_empty() {
        tracing::warn!(
            "--behind-proxy without --trusted-proxy: every client's address is the proxy's, so \
             sign-in throttling counts all clients as one address; give the proxy's address \
             with --trusted-proxy"
        );
    }

    tracing::info!(
        header_read_timeout_s = limits.header_read.as_secs(),
        idle_timeout_s = limits.idle.as_secs(),
        body_read_timeout_s = limits.body_read.as_secs(),
        max_connections = limits.max_connections,
        "connection limits"
    );
    let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    match &serve.tls {
        TlsMode::BehindProxy => {
            axum_server::from_tcp(listener)?
                .acceptor(Guard::new(DefaultAcceptor::new(), limits))
                .handle(handle)
                .serve(service)
                .await?
        }
        mode => {
            let tls = tls_config(&lanyard, &secrets, &device_pki, &serve, mode, bound.ip()).await?;
            // The handshake counts against the first request's header-read time.
            let tls = RustlsAcceptor::new(tls).handshake_timeout(limits.header_read);
            axum_server::from_tcp(listener)?
                .acceptor(Guard::new(tls, limits))
                .handle(handle)
                .serve(service)
                .await?
        }
    }
    lanyard.store().close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The `/metrics` bearer token from its file: private to its owner, not empty.
fn metrics_token(path: &std::path::Path) -> Result<String> {
    let token = setup::read_private(path, "the metrics token file")?
        .trim()
        .to_string();
    if token.is_empty() {
        anyhow::bail!("the metrics token file {} is empty", path.display());
    }
    Ok(token)
}

/// Serves `/metrics` alone on its own address (plain HTTP), under the same connection limits,
/// stopping with the main server.
fn serve_metrics(
    addr: std::net::SocketAddr,
    endpoint: lanyard_http::MetricsEndpoint,
    headers: lanyard_http::ResponseHeaders,
    handle: axum_server::Handle<std::net::SocketAddr>,
    limits: Limits,
) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on --metrics-listen {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    println!("lanyard metrics on http://{bound}/metrics");
    tracing::info!(%bound, "serving /metrics on its own address");
    let app = lanyard_http::metrics_router(endpoint, headers);
    let server = axum_server::from_tcp(listener)?;
    tokio::spawn(async move {
        if let Err(e) = server
            .acceptor(Guard::new(DefaultAcceptor::new(), limits))
            .handle(handle)
            .serve(app.into_make_service())
            .await
        {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

/// The ABM service, with its periodic sync job unless `--no-abm-sync`.
fn abm_service(
    lanyard: &lanyard_core::Lanyard,
    secrets: &SecretBox,
    abm: &AbmSettings,
    public: &str,
) -> Result<lanyard_core::abm::AbmService> {
    let svc = lanyard_core::abm::AbmService::new(
        lanyard.clone(),
        secrets.clone(),
        abm.settings(Some(public))?,
    );
    if !abm.no_abm_sync {
        svc.start_sync_job(std::time::Duration::from_secs(abm.abm_sync_interval * 60));
    }
    Ok(svc)
}

/// The OpenID Connect relying party, trusting `--oidc-ca-cert` besides the system roots.
fn oidc_sign_ins(
    serve: &ServeConfig,
    lanyard: &Lanyard,
    secrets: &SecretBox,
    public: &str,
) -> Result<lanyard_core::identity_providers::OidcSignIns> {
    let extra = match &serve.settings.oidc_ca_cert {
        Some(p) => Some(
            std::fs::read(p)
                .with_context(|| format!("cannot read --oidc-ca-cert {}", p.display()))?,
        ),
        None => None,
    };
    let rp = lanyard_oidc::Oidc::new(extra.as_deref()).context("--oidc-ca-cert")?;
    Ok(lanyard_core::identity_providers::OidcSignIns::new(
        lanyard.clone(),
        Arc::new(rp),
        secrets.clone(),
        public,
    ))
}

/// Writes the CA certificate (public) to the data directory for clients such as `curl --cacert`.
fn export_ca(data: &GlobalSettings, ca_cert_pem: &str) -> Result<()> {
    let path = data.data_dir.join("ca.pem");
    std::fs::write(&path, ca_cert_pem).with_context(|| format!("cannot write {}", path.display()))
}

async fn tls_config(
    lanyard: &Lanyard,
    secrets: &SecretBox,
    pki: &DevicePki,
    serve: &ServeConfig,
    mode: &TlsMode,
    bound_ip: IpAddr,
) -> Result<RustlsConfig> {
    let (cert_pem, key_pem) = match mode {
        TlsMode::Files { cert, key } => (
            std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?,
        ),
        _ => self_issued(lanyard, secrets, pki, serve, bound_ip).await?,
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("the TLS certificate file is not PEM")?;
    if certs.is_empty() {
        anyhow::bail!("the TLS certificate file holds no certificate");
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            anyhow::bail!("the TLS key file holds no private key")
        }
        Err(e) => return Err(e).context("the TLS key file is not PEM"),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// The TLS certificate for the public host, issued by our CA once and kept (sealed) in the
/// database so every server process serves the same one.
async fn self_issued(
    lanyard: &Lanyard,
    secrets: &SecretBox,
    pki: &DevicePki,
    serve: &ServeConfig,
    bound_ip: IpAddr,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut dns = vec!["localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse()?, "::1".parse()?];
    if let Some(host) = serve.settings.public_url.as_ref().and_then(|u| u.host()) {
        match host {
            url::Host::Domain(d) => dns.push(d.to_string()),
            url::Host::Ipv4(a) => ips.push(IpAddr::V4(a)),
            url::Host::Ipv6(a) => ips.push(IpAddr::V6(a)),
        }
    }
    if !bound_ip.is_unspecified() {
        ips.push(bound_ip);
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    let ip_text: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    let name = format!("tls:{}|{}", dns.join(","), ip_text.join(","));
    let context = format!("lanyard:pki:{name}");
    let store = lanyard.store();
    if store.get_pki(&name).await?.is_none() {
        let issued = pki.keys()?.ca.issue_tls_server(&dns, &ips)?;
        let sealed = secrets.seal(issued.key_pem.as_bytes(), context.as_bytes())?;
        store
            .insert_pki_if_absent(&PkiMaterial {
                name: name.clone(),
                cert_pem: format!("{}{}", issued.cert_pem, pki.ca_cert_pem()),
                key_sealed: sealed,
                created_at: lanyard_store::now(),
            })
            .await?;
        tracing::info!(dns = ?dns, ips = ?ip_text, "issued a TLS server certificate from the Lanyard CA");
    }
    let m = store
        .get_pki(&name)
        .await?
        .context("the TLS certificate vanished from the database")?;
    let key = secrets
        .open(&m.key_sealed, context.as_bytes())
        .map_err(|_| anyhow::anyhow!("the stored TLS key cannot be opened with this secret key"))?;
    // Read without OpenSSL, which a start does not otherwise need (see `DevicePki`).
    let not_after = CertificateDer::pem_slice_iter(m.cert_pem.as_bytes())
        .next()
        .and_then(|der| der.ok())
        .and_then(|der| lanyard_pki::not_after_of_der(&der).ok());
    if let Some(not_after) = not_after {
        let days_left = (not_after - chrono::Utc::now().timestamp()) / 86_400;
        if days_left < 30 {
            tracing::warn!(days_left, "the self-issued TLS certificate expires soon");
        }
    }
    Ok((m.cert_pem.into_bytes(), key))
}

/// How often `serve` checks the push certificate's expiry.
const PUSH_EXPIRY_CHECK: Duration = Duration::from_secs(3600);

/// Sets the push certificate expiry gauge now and every hour, and logs each expiry mark
/// (30, 14, 7, 1 days) once when it is reached.
async fn watch_push_expiry(lanyard: Lanyard, mut watch: ExpiryWatch) {
    let mut tick = tokio::time::interval(PUSH_EXPIRY_CHECK);
    loop {
        tick.tick().await;
        lanyard.check_push_expiry(&mut watch).await;
    }
}

/// Hourly hygiene: expired sign-in flows, access tokens, never-completed enrollments, command
/// results past their retention; and enrollments silent for longer than `inactive-after-days`
/// are marked inactive.
async fn prune_leftovers(lanyard: Lanyard) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match lanyard
            .store()
            .prune_enrollment_leftovers(lanyard_store::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned expired enrollment leftovers"),
            Err(e) => tracing::warn!(error = %e, "pruning enrollment leftovers failed"),
        }
        match lanyard
            .mark_inactive_enrollments(lanyard_store::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(enrollments = n, "marked silent enrollments inactive"),
            Err(e) => {
                tracing::warn!(error = %e.chain(), "marking silent enrollments inactive failed")
            }
        }
        let before = lanyard_store::now()
            - chrono::Duration::days(lanyard_core::commands::RESULT_RETENTION_DAYS);
        match lanyard.store().prune_command_results(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned old command results"),
            Err(e) => tracing::warn!(error = %e, "pruning command results failed"),
        }
        match lanyard
            .store()
            .prune_sign_in_throttle(lanyard_store::now(), lanyard_core::sign_in::policy().window)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned settled sign-in throttle keys"),
            Err(e) => tracing::warn!(error = %e, "pruning sign-in throttle keys failed"),
        }
        if let Err(e) = lanyard
            .store()
            .prune_oidc_sign_ins(lanyard_store::now())
            .await
        {
            tracing::warn!(error = %e, "pruning OpenID Connect sign-ins failed");
        }
    }
}

async fn shutdown_on_signal(handle: axum_server::Handle<std::net::SocketAddr>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight (up to 10 s)");
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
}
