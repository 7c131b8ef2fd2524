//! Upload forms (multipart): [`ChangeUpload`], the multipart twin of [`super::ChangeForm`], for
//! the pages that take a file (the APNs certificate, ABM token files).

use std::marker::PhantomData;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use axum::response::Response;

use super::{message_page, session, Session};
use crate::AppState;

/// The page of an upload form, as its refusals name it.
pub(crate) trait UploadPage {
    /// Where the form is, such as "the ABM page".
    const NAME: &'static str;
    /// The refusal of a file larger than the route allows.
    const TOO_LARGE: &'static str;
}

/// A signed-in administrator's upload form that changes something: the live session, the
/// form's fields, and its CSRF token checked; or the page to answer with instead. It reads the
/// body, so it is the handler's last argument.
pub(crate) struct ChangeUpload<P> {
    pub sess: Session,
    pub fields: UploadFields,
    page: PhantomData<P>,
}

impl<P: UploadPage> FromRequest<AppState> for ChangeUpload<P> {
    type Rejection = Response;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let multipart = Multipart::from_request(req, s).await;
        let sess = session(s, &headers, true).await?;
        let fields = read_fields::<P>(&sess, multipart).await?;
        sess.check_csrf(&fields.text("csrf"))?;
        Ok(ChangeUpload {
            sess,
            fields,
            page: PhantomData,
        })
    }
}

/// A multipart form's fields, in order (a name may repeat).
pub(crate) struct UploadFields(Vec<(String, Vec<u8>)>);

impl UploadFields {
    /// The first field of this name; empty when absent.
    pub fn first(&self, name: &str) -> &[u8] {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default()
    }

    /// The first field of this name as text.
    pub fn text(&self, name: &str) -> String {
        String::from_utf8_lossy(self.first(name)).into_owned()
    }

    /// Every field of this name, in order.
    pub fn all(&self, name: &str) -> Vec<&[u8]> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

async fn read_fields<P: UploadPage>(
    sess: &Session,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<UploadFields, Response> {
    let refuse =
        |status: StatusCode, text: &str| message_page(Some(sess), status, "Not uploaded", text);
    let Ok(mut mp) = multipart else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("The upload could not be read; use the form on {}.", P::NAME),
        ));
    };
    let mut fields = Vec::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let (status, text) = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    (StatusCode::PAYLOAD_TOO_LARGE, P::TOO_LARGE)
                } else {
                    (StatusCode::BAD_REQUEST, "The upload could not be read.")
                };
                return Err(refuse(status, text));
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let Ok(bytes) = field.bytes().await else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "The upload could not be read.",
            ));
        };
        fields.push((name, bytes.to_vec()));
    }
    Ok(UploadFields(fields))
}
