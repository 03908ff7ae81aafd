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

use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, error::ApiError};

/// Every route with its OpenAPI description: a route is registered and
/// documented by the same line, so the document cannot miss one.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let project = OpenApiRouter::new()
        .routes(routes!(backups::list, backups::create))
        .routes(routes!(backups::show, backups::delete))
        .routes(routes!(backups::action))
        .routes(routes!(instances::list, instances::create))
        .routes(routes!(instances::show, instances::delete))
        .routes(routes!(backups::list_of_instance))
        .routes(routes!(catalog::flavors))
        .routes(routes!(catalog::flavor))
        .routes(routes!(catalog::datastores));
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v1.0/{project_id}", project)
        .routes(routes!(catalog::versions))
        .split_for_parts();
    document_authentication(&mut doc);
    doc.paths.paths.insert(
        "/openapi.json".into(),
        utoipa::openapi::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .response("200", utoipa::openapi::Response::new("The OpenAPI document")),
        ),
    );
    let served = doc.clone();
    let router = router
        .route("/openapi.json", get(move || async move { axum::Json(served) }))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) });
    (router, doc)
}

/// Adds the `X-Auth-Token` scheme to the document, and to every project
/// route its requirement and its 401/403 answers (see [`crate::auth`]).
fn document_authentication(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        Response,
        security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme},
    };
    doc.components.get_or_insert_with(Default::default).add_security_scheme(
        "token",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            crate::auth::TOKEN_HEADER_NAME,
            "A token from `cairn-api token create`, as `cairn-<id>-<secret>`",
        ))),
    );
    for (_, item) in doc.paths.paths.iter_mut().filter(|(path, _)| path.starts_with("/v1.0/")) {
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            op.security = Some(vec![SecurityRequirement::new::<_, _, String>("token", [])]);
            let responses = &mut op.responses.responses;
            responses.insert(
                "401".into(),
                Response::new("unauthorized: no token, or a malformed, unknown, wrong or revoked one").into(),
            );
            responses.insert("403".into(), Response::new("forbidden: the token is not for this project").into());
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(info(title = "cairn", description = "Incremental backups with Trove's v1.0 API"))]
struct ApiDoc;

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
