//! `/api/v1/push-certificate`: the APNs push certificate, and getting one (the request, its
//! signature by an MDM vendor or the signing service, Apple's certificate for it).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use lanyard_core::push::{PushCertificateInfo, PushCertificateUpload};

use super::{ApiJson, ApiRouter, Authed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(get_push_certificate, put_push_certificate))
        .routes(api_routes!(get_push_request, create_push_request))
        .routes(api_routes!(sign_push_request))
        .routes(api_routes!(send_push_request))
        .routes(api_routes!(decrypt_push_reply))
}

/// The MDM push certificate: topic, expiry and any warning.
#[utoipa::path(get, path = "/api/v1/push-certificate",
    responses((status = 200, body = PushCertificateInfo), (status = 404, body = ErrorBody)))]
async fn get_push_certificate(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<PushCertificateInfo>> {
    s.lanyard
        .push_certificate_info()
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no push certificate has been uploaded"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushCertificateBody {
    /// PKCS#12 file, base64.
    pub pkcs12_base64: Option<String>,
    pub password: Option<String>,
    /// Or PEM certificate and key; `cert_pem` alone is the certificate Apple issued for the
    /// pending request (`POST /api/v1/push-certificate/request`), matched to its key.
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// Accept a topic that differs from the live enrollments' topic.
    #[serde(default)]
    pub force: bool,
}

/// Upload or renew the MDM push certificate (PKCS#12 or PEM).
#[utoipa::path(put, path = "/api/v1/push-certificate", request_body = PushCertificateBody,
    responses((status = 200, body = PushCertificateInfo), (status = 422, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn put_push_certificate(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<PushCertificateBody>,
) -> ApiResult<Json<PushCertificateInfo>> {
    use base64::Engine;
    let info = match (&b.pkcs12_base64, &b.cert_pem, &b.key_pem) {
        (Some(p12), None, None) => {
            let der = base64::engine::general_purpose::STANDARD
                .decode(p12.trim())
                .map_err(|_| ApiError::invalid("pkcs12_base64 is not base64"))?;
            s.lanyard
                .set_push_certificate(
                    &actor,
                    &s.secrets,
                    &PushCertificateUpload::Pkcs12 {
                        der: &der,
                        password: b.password.as_deref().unwrap_or(""),
                    },
                    b.force,
                )
                .await?
        }
        (None, Some(cert), Some(key)) => {
            s.lanyard
                .set_push_certificate(
                    &actor,
                    &s.secrets,
                    &PushCertificateUpload::Pem {
                        cert: cert.as_bytes(),
                        key: key.as_bytes(),
                    },
                    b.force,
                )
                .await?
        }
        (None, Some(cert), None) => {
            s.lanyard
                .complete_push_request(&actor, &s.secrets, cert.as_bytes(), b.force)
                .await?
        }
        _ => {
            return Err(ApiError::invalid(
                "send cert_pem (for the pending request), pkcs12_base64 (+ password), or \
                 cert_pem and key_pem",
            ))
        }
    };
    Ok(Json(info))
}

/// The pending push certificate request: its CSR (PEM) for an MDM vendor to sign.
#[utoipa::path(get, path = "/api/v1/push-certificate/request",
    responses((status = 200, body = lanyard_core::pushcert::PushRequestInfo),
              (status = 404, body = ErrorBody)))]
async fn get_push_request(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
) -> ApiResult<Json<lanyard_core::pushcert::PushRequestInfo>> {
    s.lanyard
        .push_request()
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no push certificate request is pending"))
}

/// Start getting (or renewing) the push certificate: a new push key (sealed) and CSR, kept
/// pending until `PUT /api/v1/push-certificate` with the `cert_pem` Apple issued for it.
#[utoipa::path(post, path = "/api/v1/push-certificate/request",
    responses((status = 201, body = lanyard_core::pushcert::PushRequestInfo),
              (status = 403, body = ErrorBody)))]
async fn create_push_request(
    State(s): State<AppState>,
    Authed(actor): Authed,
) -> ApiResult<(StatusCode, Json<lanyard_core::pushcert::PushRequestInfo>)> {
    let r = s
        .lanyard
        .create_push_request(&actor, &s.secrets, None)
        .await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// An MDM vendor identity, handed over for one signature and never stored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VendorBody {
    /// The MDM CSR signing (vendor) certificate and its key: a PKCS#12 file, base64.
    pub pkcs12_base64: String,
    pub password: String,
    /// Apple's certificates above the vendor certificate: the WWDR intermediate and the
    /// Apple root, each PEM (or base64 of DER, as Apple's `.cer` files are).
    pub apple_certificates: Vec<String>,
}

/// The request file for Apple's Push Certificates Portal.
#[derive(Serialize, ToSchema)]
pub struct RequestFile {
    /// Base64 of the push certificate request plist: upload it at
    /// <https://identity.apple.com>.
    pub upload_file: String,
}

/// Sign the pending request with an MDM vendor certificate (stored nowhere): the request
/// file for Apple's Push Certificates Portal.
#[utoipa::path(post, path = "/api/v1/push-certificate/request/sign", request_body = VendorBody,
    responses((status = 200, body = RequestFile), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn sign_push_request(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<VendorBody>,
) -> ApiResult<Json<RequestFile>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pkcs12 = b64
        .decode(b.pkcs12_base64.trim())
        .map_err(|_| ApiError::invalid("pkcs12_base64 is not base64"))?;
    let apple = b
        .apple_certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.trim_start().starts_with("-----BEGIN") {
                Ok(c.as_bytes().to_vec())
            } else {
                b64.decode(c.trim()).map_err(|_| {
                    ApiError::invalid(format!(
                        "apple_certificates[{i}] is neither PEM nor base64 of DER"
                    ))
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&[u8]> = apple.iter().map(Vec::as_slice).collect();
    let signer = lanyard_core::pushcert::vendor_signer(&pkcs12, &b.password, &refs)?;
    let upload_file = s.lanyard.sign_push_request(&actor, &signer).await?;
    Ok(Json(RequestFile { upload_file }))
}

/// A request to the CSR signing service, for operators without their own vendor
/// certificate.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningServiceBody {
    /// Where the service emails the signed request (encrypted to a key Lanyard keeps).
    pub email: String,
    /// The service's API key; used for this request only, never stored or logged.
    pub api_key: String,
}

/// Start getting (or renewing) the push certificate through the CSR signing service
/// (`--signing-service-url`): a new push key and CSR go to the service, which emails the
/// signed request, encrypted; `POST /api/v1/push-certificate/request/decrypt` reads it.
/// Nothing is kept pending unless the service accepts the request.
#[utoipa::path(post, path = "/api/v1/push-certificate/request/signing-service",
    request_body = SigningServiceBody,
    responses((status = 201, body = lanyard_core::pushcert::PushRequestInfo),
              (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn send_push_request(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<SigningServiceBody>,
) -> ApiResult<(StatusCode, Json<lanyard_core::pushcert::PushRequestInfo>)> {
    let r = s
        .lanyard
        .request_push_signing(&actor, &s.secrets, &s.signing_service, &b.email, &b.api_key)
        .await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// The signing service's emailed reply.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyBody {
    /// The content of the emailed `*.plist.b64.p7` attachment (hex text).
    pub reply: String,
}

/// Decrypt the signing service's emailed reply to the pending request: the request file
/// for Apple's Push Certificates Portal. Stores nothing.
#[utoipa::path(post, path = "/api/v1/push-certificate/request/decrypt", request_body = ReplyBody,
    responses((status = 200, body = RequestFile), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn decrypt_push_reply(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<ReplyBody>,
) -> ApiResult<Json<RequestFile>> {
    let upload_file = s
        .lanyard
        .decrypt_push_reply(&actor, &s.secrets, b.reply.as_bytes())
        .await?;
    Ok(Json(RequestFile { upload_file }))
}
