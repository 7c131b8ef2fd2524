//! `/api/v1/audit`: the audit log of every change.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use lanyard_store::{AuditEntry, AuditFilter};

use super::{ApiQuery, ApiRouter, Authed};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new().routes(api_routes!(audit_log))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    /// Return entries older than this id (paging).
    before: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self {
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = [AuditView])))]
async fn audit_log(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditView>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 1000"));
    }
    let entries = s
        .lanyard
        .audit_log(&AuditFilter {
            actor: q.actor,
            action: q.action,
            target: q.target,
            before_id: q.before,
            limit,
        })
        .await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}
