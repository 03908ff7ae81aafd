//! Who may call what: the `X-Auth-Token` check in front of every route.
//!
//! - `/` (the version document) and `/openapi.json` are public: they
//!   describe the API and hold no project's data, and clients fetch them
//!   before they have a token.
//! - Everything else needs a valid token ([`tokens`](crate::tokens)). None,
//!   or a malformed, unknown, wrong or revoked one: 401 `unauthorized`.
//! - A project token used on another project's path (`/v1.0/<other>/...`):
//!   403 `forbidden`, for the project as a whole. Inside its own project a
//!   token cannot reach another project's objects either: every query of
//!   the handlers is scoped by the path's project, so a foreign id looks
//!   like one that does not exist (404).
//! - An admin token may use any project's path, and list across projects
//!   with `?all_projects=1` (Trove's policy for admins).
//!
//! With `CAIRN_AUTH=none` every request is let through as an admin; the API
//! refuses that mode unless it listens on loopback.
//!
//! The token is read here and nowhere else. It is never logged (the HTTP
//! trace records method, path and status, not headers) and no error
//! message repeats it.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use cairn_shared::config::AuthMode;

use crate::{AppState, error::ApiError, tokens};

/// The header OpenStack clients send with `--os-auth-type admin_token`.
pub const TOKEN_HEADER: &str = "x-auth-token";
/// The same, as documents spell it.
pub const TOKEN_HEADER_NAME: &str = "X-Auth-Token";

/// Paths anyone may read.
const PUBLIC: &[&str] = &["/", "/openapi.json"];

/// What the request was let through as, for handlers that care (lists with
/// `all_projects`). Present on every request that reached a handler.
#[derive(Debug, Clone)]
pub enum Access {
    /// `CAIRN_AUTH=none`: no token asked, everything allowed.
    Open,
    /// A valid token.
    Token(tokens::Caller),
}

impl Access {
    /// May list across projects.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Open => true,
            Self::Token(caller) => caller.admin,
        }
    }
}

/// The middleware: authenticates, checks the path's project, and leaves an
/// [`Access`] in the request's extensions.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if PUBLIC.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let access = match state.auth {
        AuthMode::None => Access::Open,
        AuthMode::Token => match authorize(&state, req.headers().get(TOKEN_HEADER).cloned(), req.uri().path()).await {
            Ok(caller) => Access::Token(caller),
            Err(refused) => return refused.into_response(),
        },
    };
    req.extensions_mut().insert(access);
    next.run(req).await
}

/// The caller `presented` stands for, if it may use `path`. (Takes the parts
/// it needs rather than the request, whose body cannot be shared across an
/// await.)
async fn authorize(
    state: &AppState,
    presented: Option<axum::http::HeaderValue>,
    path: &str,
) -> Result<tokens::Caller, ApiError> {
    let Some(presented) = presented else {
        return Err(ApiError::Unauthorized("this request needs a token in the X-Auth-Token header".into()));
    };
    let invalid =
        || ApiError::Unauthorized("the token in X-Auth-Token is not valid (unknown, wrong or revoked)".into());
    let presented = presented.to_str().map_err(|_| invalid())?;
    let caller = state.tokens.authenticate(&state.db, presented.trim()).await?.ok_or_else(invalid)?;
    if let Some(project) = path_project(path)
        && project != caller.project
        && !caller.admin
    {
        tracing::info!(token_id = %caller.token_id, token_project = %caller.project, "refused a foreign project");
        return Err(ApiError::Forbidden(format!("this token does not grant access to project {project}")));
    }
    Ok(caller)
}

/// The `<project>` of `/v1.0/<project>/...`, as written in the path.
fn path_project(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1.0/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Reads Trove's `all_projects` flag: only an admin may set it.
pub fn all_projects(flag: Option<&str>, access: &Access) -> Result<bool, ApiError> {
    let set = match flag.map(str::trim) {
        None | Some("" | "0" | "false" | "False") => false,
        Some("1" | "true" | "True") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("all_projects must be 0 or 1, not {other:?}"))),
    };
    if set && !access.is_admin() {
        return Err(ApiError::Forbidden("only an admin token may list all projects (all_projects)".into()));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_is_the_segment_after_the_version() {
        assert_eq!(path_project("/v1.0/p1/backups"), Some("p1"));
        assert_eq!(path_project("/v1.0/p1"), Some("p1"));
        assert_eq!(path_project("/v1.0/"), Some(""));
        assert_eq!(path_project("/other"), None);
    }

    #[test]
    fn only_admins_list_all_projects() {
        let user = Access::Token(tokens::Caller { token_id: uuid::Uuid::nil(), project: "p".into(), admin: false });
        assert!(!all_projects(None, &user).unwrap());
        assert!(!all_projects(Some("0"), &user).unwrap());
        assert!(matches!(all_projects(Some("1"), &user), Err(ApiError::Forbidden(_))));
        assert!(all_projects(Some("1"), &Access::Open).unwrap());
        assert!(matches!(all_projects(Some("yes"), &Access::Open), Err(ApiError::BadRequest(_))));
    }
}
