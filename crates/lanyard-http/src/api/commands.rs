//! `/api/v1/commands`: queueing MDM commands and following them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use lanyard_core::commands::{CommandChannel, CommandSpec, CommandTarget, CommandView, Queued};

use super::{ApiJson, ApiPath, ApiRouter, Authed};
use crate::error::{ApiResult, ErrorBody};
use crate::AppState;

pub(super) fn routes<R: ApiRouter>() -> R {
    R::new()
        .routes(api_routes!(send_command))
        .routes(api_routes!(command_status))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendCommand {
    pub target: CommandTarget,
    pub command: CommandSpec,
    /// `device` (default) or `user`.
    #[serde(default)]
    pub channel: CommandChannel,
    /// Wake the devices by APNs after queueing (default true).
    #[serde(default = "yes")]
    pub push: bool,
}

fn yes() -> bool {
    true
}

/// Queue a command for one device, a list, or every device matching a filter. Commands that
/// User Enrollment forbids are refused with the reason (422) and nothing is queued.
#[utoipa::path(post, path = "/api/v1/commands", request_body = SendCommand,
    responses((status = 202, body = Queued), (status = 422, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn send_command(
    State(s): State<AppState>,
    Authed(actor): Authed,
    ApiJson(b): ApiJson<SendCommand>,
) -> ApiResult<(StatusCode, Json<Queued>)> {
    let q = s
        .lanyard
        .enqueue_command_on(&actor, &b.target, b.channel, &b.command, b.push)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(q)))
}

/// A command's state on each of its targets.
#[utoipa::path(get, path = "/api/v1/commands/{uuid}", params(("uuid" = String, Path)),
    responses((status = 200, body = [CommandView]), (status = 404, body = ErrorBody)))]
async fn command_status(
    State(s): State<AppState>,
    Authed(_viewer): Authed,
    ApiPath(uuid): ApiPath<String>,
) -> ApiResult<Json<Vec<CommandView>>> {
    Ok(Json(s.lanyard.command_targets(&uuid).await?))
}
