//! Routes under `/v1.0/{project_id}` (DESIGN.md §5).

mod backups;
mod catalog;
mod instances;

use axum::{
    Router,
    extract::FromRequestParts,
    http::{header::HOST, request::Parts},
    routing::get,
};

use crate::{AppState, error::ApiError};

pub fn routes() -> Router<AppState> {
    let project = Router::new()
        .route("/backups", get(backups::list).post(backups::create))
        .route("/backups/{backup_id}", get(backups::show).delete(backups::delete))
        .route("/instances", get(instances::list).post(instances::create))
        .route("/instances/{instance_id}", get(instances::show).delete(instances::delete))
        .route("/instances/{instance_id}/backups", get(backups::list_of_instance))
        .route("/flavors", get(catalog::flavors))
        .route("/flavors/{flavor_id}", get(catalog::flavor))
        .route("/datastores", get(catalog::datastores));
    Router::new()
        .nest("/v1.0/{project_id}", project)
        .route("/", get(catalog::versions))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
}

/// Largest name or description, in characters.
const MAX_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 1024;

/// Checks a user-given name.
fn valid_name(what: &str, name: &str) -> Result<String, ApiError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(ApiError::BadRequest(format!("{what} must not be empty")));
    }
    if trimmed.chars().count() > MAX_NAME {
        return Err(ApiError::BadRequest(format!("{what} is longer than {MAX_NAME} characters")));
    }
    Ok(trimmed.to_owned())
}

fn valid_description(description: Option<String>) -> Result<Option<String>, ApiError> {
    match description {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => {
            Err(ApiError::BadRequest(format!("description is longer than {MAX_DESCRIPTION} characters")))
        }
        other => Ok(other),
    }
}

/// The project in the path, validated.
pub struct Project(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Project {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw): axum::extract::Path<std::collections::HashMap<String, String>> =
            axum::extract::Path::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let project_id = raw.get("project_id").cloned().unwrap_or_default();
        if project_id.is_empty()
            || project_id.len() > 64
            || !project_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::BadRequest("project id must be 1-64 letters, digits, '-' or '_'".into()));
        }
        Ok(Self(project_id))
    }
}

/// `http://<host>/v1.0/<project>`, for links.
pub struct BaseUrl(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Project(project) = Project::from_request_parts(parts, state).await?;
        let host = parts.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        Ok(Self(format!("http://{host}/v1.0/{project}")))
    }
}

/// Parses an id from the path; anything that is not a UUID names nothing.
fn parse_id(what: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(format!("{what} {raw} could not be found")))
}
