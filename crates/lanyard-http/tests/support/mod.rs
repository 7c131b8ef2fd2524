//! The HTTP surface in process: the production router over a real SQLite store in a temporary
//! directory, driven with `oneshot` requests (no TLS, no sockets). The real-binary tests in
//! `crates/lanyard/tests` cover what needs a process (TLS, the CLI, restarts); these cover the
//! routes' answers quickly.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use lanyard_core::enrollment::{DeviceUrls, EnrollmentService};
use lanyard_core::mdm::MdmService;
use lanyard_core::{Actor, Lanyard};
use lanyard_http::{AppState, Services};
use lanyard_pki::SecretBox;
use lanyard_store::{SqliteStore, Store};
use serde_json::Value;
use tower::ServiceExt as _;

/// The address requests appear to come from.
pub const CLIENT: &str = "192.0.2.10:40000";

/// The app with an administrator and an API token for it.
pub struct TestApp {
    pub router: Router,
    pub lanyard: Lanyard,
    pub secrets: SecretBox,
    /// A bearer token of the first administrator (`admin`).
    pub token: String,
    /// The first administrator's password (for portal sign-ins).
    pub admin_password: String,
    _dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestApp {
    /// A fresh app: a migrated SQLite database, a new secret key and CA, the first
    /// administrator and an API token for it.
    pub async fn new() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/lanyard.db", dir.path().display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let lanyard = Lanyard::new(store);
        let secrets = SecretBox::new(SecretBox::generate_key());
        let pki = Arc::new(
            lanyard
                .load_device_pki(&secrets, "Lanyard Test")
                .await
                .unwrap(),
        );
        let public = "https://mdm.example.com";
        let (admin, admin_password) = lanyard.bootstrap_first_admin().await.unwrap().unwrap();
        let (_, token) = lanyard
            .create_api_token(&Actor::system(), &admin, "test", None)
            .await
            .unwrap();
        let rp = lanyard_oidc::Oidc::new(None).unwrap();
        let state = AppState::new(Services {
            lanyard: lanyard.clone(),
            enrollment: EnrollmentService::new(
                lanyard.clone(),
                Arc::clone(&pki),
                DeviceUrls::new(public),
                "Lanyard Test".into(),
            ),
            oidc_start_limiter: Default::default(),
            trusted_proxies: lanyard_http::client::TrustedProxies::new(Vec::new()),
            oidc: lanyard_core::identity_providers::OidcSignIns::new(
                lanyard.clone(),
                Arc::new(rp),
                secrets.clone(),
                public,
            ),
            mdm: MdmService::new(lanyard.clone(), Arc::clone(&pki)),
            declarations: lanyard_core::declarations::DeclarationService::new(
                lanyard.clone(),
                secrets.clone(),
                public,
            ),
            secrets: secrets.clone(),
            abm: lanyard_core::abm::AbmService::new(
                lanyard.clone(),
                secrets.clone(),
                Default::default(),
            ),
            metrics: None,
            health: lanyard_http::HealthSettings {
                data_dir: dir.path().to_path_buf(),
                min_free_bytes: 0,
            },
            headers: Default::default(),
            signing_service: Arc::new(
                lanyard_core::pushcert::signing_service("http://127.0.0.1:9").unwrap(),
            ),
        });
        TestApp {
            router: lanyard_http::router(state),
            lanyard,
            secrets,
            token,
            admin_password,
            _dir: dir,
        }
    }

    /// One request through the router, as if from [`CLIENT`].
    pub async fn send(&self, mut req: Request<Body>) -> Answer {
        let peer: SocketAddr = CLIENT.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes().to_vec(),
        }
    }

    /// A portal page, as the first administrator signed in to the portal.
    pub async fn portal_page(&self, path: &str) -> Answer {
        let grant = self
            .lanyard
            .admin_sign_in("admin", &self.admin_password, None)
            .await
            .unwrap();
        let req = Request::builder()
            .uri(path)
            .header(
                header::COOKIE,
                format!("{}={}", lanyard_http::auth::SESSION_COOKIE, grant.secret),
            )
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    /// An admin API request with the administrator's token; `body` is sent as JSON.
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(b.body(body).unwrap()).await
    }
}
