//! The **ceiling server**: `PUT /mdm/command` answered without a store, for `lanyard-bench
//! --ceiling`. It runs the same request path as `lanyard serve` up to the store — and nothing of
//! the store — so the benchmark's figures for the real server can be read as a share of what
//! the request path itself costs:
//!
//! - TLS: rustls with the ring provider through `axum-server`'s acceptor, TLS 1.2/1.3, ALPN
//!   `h2` and `http/1.1`, a certificate issued by the given CA (as `lanyard serve` sets it up);
//! - HTTP: hyper and axum, the body read with a limit;
//! - the `Mdm-Signature` check: `lanyard_pki::SignerCache`, the type the server's device service
//!   uses, trusting the same kind of CA (first contact in full, then cached);
//! - the report: `lanyard_proto::decode_command_report`, as the device service decodes it;
//! - the answer: a command plist encoded once (the server, too, answers with the bytes it stored
//!   when the command was queued), `commands_per_device` times per device (counted by the
//!   device's `UDID`/`EnrollmentID` in a locked map), then an empty `200`.
//!
//! Left out, besides the store: `lanyard serve`'s middleware (request ids and spans, response
//! headers, metrics, the NUL refusal, timeouts, the connection limits), the identity binding
//! and the recording of the result. Development only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use lanyard_pki::{Ca, SignerCache};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest command report read (the server's limit for `/mdm/command` is of this order).
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// What the ceiling server answers with.
pub struct CeilingOptions {
    /// The CA the devices' identities and the server's TLS certificate come from.
    pub ca: Ca,
    /// The command every answer carries (an encoded command plist).
    pub command: Vec<u8>,
    /// Commands handed to each device before it is answered with an empty `200`.
    pub commands_per_device: u64,
}

struct Ceiling {
    signers: SignerCache,
    command: Bytes,
    per_device: u64,
    given: Mutex<HashMap<String, u64>>,
}

/// Serves the ceiling on `listener` (already bound) until the process is stopped.
pub async fn serve(listener: TcpListener, opts: CeilingOptions) -> Result<()> {
    let issued = opts
        .ca
        .issue_tls_server(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
    let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("the TLS certificate")?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).context("the TLS key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let state = Arc::new(Ceiling {
        signers: SignerCache::new(
            opts.ca.certificate().clone(),
            lanyard_pki::SIGNER_CACHE_DEFAULT_CAPACITY,
        ),
        command: Bytes::from(opts.command),
        per_device: opts.commands_per_device,
        given: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route(
            "/mdm/command",
            put(command).layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(state);
    listener.set_nonblocking(true)?;
    let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(Arc::new(config)));
    axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await?;
    Ok(())
}

async fn command(State(c): State<Arc<Ceiling>>, headers: HeaderMap, body: Bytes) -> Response {
    match answer(&c, &headers, &body) {
        Ok(Some(cmd)) => (
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            cmd,
        )
            .into_response(),
        Ok(None) => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    }
}

fn answer(c: &Ceiling, headers: &HeaderMap, body: &[u8]) -> Result<Option<Bytes>> {
    let sig = headers
        .get("Mdm-Signature")
        .ok_or_else(|| anyhow!("no Mdm-Signature"))?;
    c.signers.verify(sig.as_bytes(), body)?;
    let report = lanyard_proto::decode_command_report(body)?;
    let mut given = c
        .given
        .lock()
        .map_err(|_| anyhow!("the ceiling's count is poisoned"))?;
    let n = given
        .entry(report.enrollment.device_id().to_owned())
        .or_insert(0);
    if *n >= c.per_device {
        return Ok(None);
    }
    *n += 1;
    Ok(Some(c.command.clone()))
}
