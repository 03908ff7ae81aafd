//! `/backups`: create (enqueue), list, show, delete.

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use cairn_shared::{
    entities::{backup, instance},
    lifecycle,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{BaseUrl, Project, parse_id, valid_description, valid_name};
use crate::{
    AppState,
    auth::{self, Access},
    error::{ApiError, ApiResult},
    extract::JsonBody,
    submit::NewBackup,
    views,
};

/// `POST /backups` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateBody {
    backup: CreateBackup,
}

/// A backup to take.
#[derive(Deserialize, utoipa::ToSchema)]
struct CreateBackup {
    name: String,
    instance: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    incremental: Option<Flag>,
    #[serde(default)]
    description: Option<String>,
}

/// Trove's `incremental` is 0/1; accept booleans too.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Flag {
    Int(u8),
    Bool(bool),
}

impl Flag {
    fn is_set(&self) -> Result<bool, ApiError> {
        match self {
            Self::Int(0) | Self::Bool(false) => Ok(false),
            Self::Int(1) | Self::Bool(true) => Ok(true),
            Self::Int(n) => Err(ApiError::BadRequest(format!("incremental must be 0 or 1, not {n}"))),
        }
    }
}

/// Finds an instance of `project` that has not been deleted.
pub(super) async fn find_instance<C: ConnectionTrait>(db: &C, project: &str, id: Uuid) -> ApiResult<instance::Model> {
    instance::Entity::find_by_id(id)
        .filter(instance::Column::ProjectId.eq(project))
        .filter(instance::Column::Deleted.eq(false))
        .one(db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Instance {id} could not be found")))
}

async fn find_backup<C: ConnectionTrait>(db: &C, project: &str, id: Uuid) -> ApiResult<backup::Model> {
    backup::Entity::find_by_id(id)
        .filter(backup::Column::ProjectId.eq(project))
        .one(db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Backup {id} could not be found")))
}

/// Records a backup (full, or incremental on `parent_id`) and queues it.
#[utoipa::path(post, path = "/backups", tag = "backups", params(("project_id" = String, Path, description = "The project (tenant)")), request_body = CreateBody,
    responses((status = 202, description = "Accepted: the backup, status NEW"), (status = 400, description = "badRequest"),
        (status = 404, description = "itemNotFound: no such instance"),
        (status = 413, description = "overLimit: the project's backup or byte quota is used up, or the body is too large"),
        (status = 422, description = "unprocessableEntity: parent or instance state breaks a rule")))]
pub async fn create(
    State(state): State<AppState>,
    Project(project): Project,
    JsonBody(CreateBody { backup: req }): JsonBody<CreateBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = valid_name("backup name", &req.name)?;
    let description = valid_description(req.description)?;
    let incremental = req.incremental.as_ref().map(Flag::is_set).transpose()?.unwrap_or(false);
    let instance_id = parse_id("Instance", &req.instance)?;
    let parent_id = match req.parent_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(raw.parse::<Uuid>().map_err(|_| {
            ApiError::Unprocessable(format!("parent backup {raw} is not a backup of instance {instance_id}"))
        })?),
    };

    // Recorded with the submissions arriving meanwhile, in one transaction
    // (see `crate::submit`); answered once that has committed.
    let row =
        state.submits.submit(NewBackup { project, instance_id, parent_id, incremental, name, description }).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "backup": views::backup(&row) }))))
}

/// Filters and paging of backup lists.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    instance_id: Option<String>,
    datastore: Option<String>,
    limit: Option<String>,
    marker: Option<String>,
    /// `1`: every project's backups (admin tokens only).
    all_projects: Option<String>,
}

const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 1000;

/// One page of backups of `project`, or of every project when `None`.
async fn list_page(
    state: &AppState,
    project: Option<&str>,
    base: &str,
    path: &str,
    instance: Option<Uuid>,
    q: &ListQuery,
) -> ApiResult<Json<Value>> {
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_LIMIT}")))?,
    };
    let mut query = backup::Entity::find();
    if let Some(project) = project {
        query = query.filter(backup::Column::ProjectId.eq(project));
    }
    if let Some(id) = instance {
        query = query.filter(backup::Column::InstanceId.eq(id));
    }
    if let Some(ds) = q.datastore.as_deref().filter(|d| !d.is_empty()) {
        query = query.filter(backup::Column::DatastoreType.eq(ds));
    }
    if let Some(raw) = q.marker.as_deref().filter(|m| !m.is_empty()) {
        let marker = raw.parse::<Uuid>().ok();
        let marker = match (marker, project) {
            (Some(id), Some(project)) => find_backup(&state.db, project, id).await.ok(),
            (Some(id), None) => backup::Entity::find_by_id(id).one(&state.db).await?,
            (None, _) => None,
        }
        .ok_or_else(|| ApiError::BadRequest(format!("marker {raw} is not a backup of this project")))?;
        query = query.filter(Condition::any().add(backup::Column::Created.lt(marker.created)).add(
            Condition::all().add(backup::Column::Created.eq(marker.created)).add(backup::Column::Id.lt(marker.id)),
        ));
    }
    let mut rows = query
        .order_by_desc(backup::Column::Created)
        .order_by_desc(backup::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let mut body = json!({ "backups": rows.iter().map(views::backup).collect::<Vec<_>>() });
    if more && let Some(last) = rows.last() {
        let mut href = format!("{base}{path}?limit={limit}&marker={}", last.id);
        if let Some(ds) = q.datastore.as_deref().filter(|d| !d.is_empty()) {
            href.push_str(&format!("&datastore={ds}"));
        }
        if let (Some(id), "/backups") = (instance, path) {
            href.push_str(&format!("&instance_id={id}"));
        }
        if project.is_none() {
            href.push_str("&all_projects=1");
        }
        body["links"] = json!([{ "rel": "next", "href": href }]);
    }
    Ok(Json(body))
}

/// Lists the project's backups, newest first; with `all_projects=1` (admin
/// tokens only), every project's.
#[utoipa::path(get, path = "/backups", tag = "backups", params(("project_id" = String, Path, description = "The project (tenant)"), ListQuery),
    responses((status = 200, description = "`backups`, and `links` with `rel: next` while more remain"),
        (status = 400, description = "badRequest: bad limit or marker")))]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Project(project): Project,
    BaseUrl(base): BaseUrl,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let scope = if auth::all_projects(q.all_projects.as_deref(), &access)? { None } else { Some(project.as_str()) };
    let instance = match q.instance_id.as_deref().filter(|i| !i.is_empty()) {
        Some(raw) => {
            let id = parse_id("Instance", raw)?;
            match scope {
                Some(project) => Some(find_instance(&state.db, project, id).await?.id),
                None => Some(
                    instance::Entity::find_by_id(id)
                        .one(&state.db)
                        .await?
                        .ok_or_else(|| ApiError::NotFound(format!("Instance {id} could not be found")))?
                        .id,
                ),
            }
        }
        None => None,
    };
    list_page(&state, scope, &base, "/backups", instance, &q).await
}

/// Lists one instance's backups, newest first.
#[utoipa::path(get, path = "/instances/{instance_id}/backups", tag = "backups",
    params(("project_id" = String, Path, description = "The project (tenant)"), ("instance_id" = String, Path, description = "The instance"), ListQuery),
    responses((status = 200, description = "`backups`"), (status = 404, description = "itemNotFound")))]
pub async fn list_of_instance(
    State(state): State<AppState>,
    Project(project): Project,
    BaseUrl(base): BaseUrl,
    Path((_, instance_id)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let inst = find_instance(&state.db, &project, parse_id("Instance", &instance_id)?).await?;
    let path = format!("/instances/{}/backups", inst.id);
    list_page(&state, Some(&project), &base, &path, Some(inst.id), &q).await
}

/// Shows a backup, with `progress` while it runs.
#[utoipa::path(get, path = "/backups/{backup_id}", tag = "backups",
    params(("project_id" = String, Path, description = "The project (tenant)"), ("backup_id" = String, Path, description = "The backup")),
    responses((status = 200, description = "`backup`"), (status = 404, description = "itemNotFound")))]
pub async fn show(
    State(state): State<AppState>,
    Project(project): Project,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let b = find_backup(&state.db, &project, parse_id("Backup", &id)?).await?;
    Ok(Json(json!({ "backup": views::backup(&b) })))
}

/// Deletes a backup and all its descendants, with their stored objects.
#[utoipa::path(delete, path = "/backups/{backup_id}", tag = "backups",
    params(("project_id" = String, Path, description = "The project (tenant)"), ("backup_id" = String, Path, description = "The backup")),
    responses((status = 202, description = "Accepted"), (status = 404, description = "itemNotFound"),
        (status = 422, description = "unprocessableEntity: a descendant is running or a restore reads the chain")))]
pub async fn delete(
    State(state): State<AppState>,
    Project(project): Project,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = parse_id("Backup", &id)?;
    let txn = state.db.begin().await?;
    find_backup(&txn, &project, id).await?;
    let ids =
        lifecycle::begin_delete(&txn, id).await?.map_err(|refused| ApiError::Unprocessable(refused.to_string()))?;
    txn.commit().await?;
    state.nudge.wake();
    tracing::info!(backup_id = %id, backups = ids.len(), "delete accepted");
    Ok(StatusCode::ACCEPTED)
}

/// `POST /backups/{id}/action` body: one action, `{"verify": {}}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActionBody {
    /// Re-read every stored object of the backup and check its checksum.
    Verify(VerifyOptions),
}

/// `verify` takes no options (`{}`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyOptions {}

/// Runs an action on a backup. `verify` re-reads the stored objects and
/// checks every checksum; its result appears as the backup's `verify`.
#[utoipa::path(post, path = "/backups/{backup_id}/action", tag = "backups",
    params(("project_id" = String, Path, description = "The project (tenant)"),
        ("backup_id" = String, Path, description = "The backup")),
    request_body = ActionBody,
    responses((status = 202, description = "Accepted: the backup, verify RUNNING"),
        (status = 400, description = "badRequest: unknown action"), (status = 404, description = "itemNotFound"),
        (status = 409, description = "conflict: only a COMPLETED backup can be verified")))]
pub async fn action(
    State(state): State<AppState>,
    Project(project): Project,
    Path((_, id)): Path<(String, String)>,
    JsonBody(ActionBody::Verify(VerifyOptions {})): JsonBody<ActionBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = parse_id("Backup", &id)?;
    let txn = state.db.begin().await?;
    let b = find_backup(&txn, &project, id).await?;
    if !lifecycle::begin_verify(&txn, id).await? {
        return Err(ApiError::Conflict(format!(
            "backup {id} is {}; only a COMPLETED backup can be verified",
            b.status
        )));
    }
    txn.commit().await?;
    state.nudge.wake();
    tracing::info!(backup_id = %id, instance_id = %b.instance_id, "verify accepted");
    let b = find_backup(&state.db, &project, id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "backup": views::backup(&b) }))))
}
