//! `/instances`: register a volume, restore a backup into a new instance,
//! list, show, delete.

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use cairn_shared::{
    datastore::SERVED,
    entities::{backup, instance},
    lifecycle, outbox,
    status::{BackupStatus, InstanceStatus, JobKind},
    volume,
};
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{BaseUrl, Project, backups::find_instance, parse_id, valid_name};
use crate::{
    AppState,
    auth::{self, Access},
    error::{ApiError, ApiResult},
    extract::JsonBody,
    views,
};

/// `POST /instances` body: register a volume, or restore a backup.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateBody {
    instance: CreateInstance,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateInstance {
    name: String,
    #[serde(default)]
    datastore: Option<DatastoreRef>,
    #[serde(default)]
    volume: Option<VolumeSpec>,
    #[serde(default)]
    flavor_ref: Option<FlavorRef>,
    #[serde(default)]
    restore_point: Option<RestorePoint>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DatastoreRef {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct VolumeSpec {
    #[serde(default)]
    size: Option<i32>,
    #[serde(default)]
    path: Option<String>,
}

/// Trove clients send the flavor as a string, an id or a link.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum FlavorRef {
    Text(String),
    Number(u64),
}

impl FlavorRef {
    fn id(&self) -> String {
        match self {
            Self::Text(t) => t.rsplit('/').next().unwrap_or(t).to_owned(),
            Self::Number(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RestorePoint {
    backup_ref: String,
}

/// Registers a volume instance (200, ACTIVE) or restores a backup into a new
/// instance (200, BUILD, then ACTIVE or ERROR).
#[utoipa::path(post, path = "/instances", tag = "instances", params(("project_id" = String, Path, description = "The project (tenant)")), request_body = CreateBody,
    responses((status = 200, description = "`instance`"), (status = 400, description = "badRequest"),
        (status = 404, description = "itemNotFound: no such backup"),
        (status = 409, description = "conflict: the backup or a link of its chain is not COMPLETED"),
        (status = 422, description = "unprocessableEntity: volume path refused")))]
pub async fn create(
    State(state): State<AppState>,
    Project(project): Project,
    BaseUrl(base): BaseUrl,
    JsonBody(CreateBody { instance: req }): JsonBody<CreateBody>,
) -> ApiResult<Json<Value>> {
    let name = valid_name("instance name", &req.name)?;
    let flavor = req.flavor_ref.as_ref().map_or_else(|| "1".to_owned(), FlavorRef::id);
    let size = req.volume.as_ref().and_then(|v| v.size);
    if size.is_some_and(|s| s <= 0) {
        return Err(ApiError::BadRequest("volume.size must be a positive number of GB".into()));
    }
    let path = req.volume.as_ref().and_then(|v| v.path.clone());
    let row = match req.restore_point {
        Some(point) => restore(&state, project, name, flavor, size, path, &point.backup_ref).await?,
        None => register(&state, project, name, flavor, size, path, req.datastore).await?,
    };
    Ok(Json(json!({ "instance": views::instance(&row, &base) })))
}

fn new_instance(id: Uuid, project: String, name: String, flavor: String, size: Option<i32>) -> instance::ActiveModel {
    let now = Utc::now();
    instance::ActiveModel {
        id: Set(id),
        project_id: Set(project),
        name: Set(name),
        flavor_id: Set(flavor),
        volume_size: Set(size),
        restore_backup_id: Set(None),
        restore_step: Set(None),
        restore_steps: Set(None),
        fail_reason: Set(None),
        lease_owner: Set(None),
        lease_expires: Set(None),
        attempts: Set(0),
        deleted: Set(false),
        created: Set(now),
        updated: Set(now),
        ..Default::default()
    }
}

fn path_in_use(e: sea_orm::DbErr, path: &str) -> ApiError {
    if lifecycle::is_unique_violation(&e) {
        ApiError::Unprocessable(format!("volume path {path:?} already belongs to another instance"))
    } else {
        e.into()
    }
}

async fn register(
    state: &AppState,
    project: String,
    name: String,
    flavor: String,
    size: Option<i32>,
    path: Option<String>,
    datastore: Option<DatastoreRef>,
) -> ApiResult<instance::Model> {
    let kind = datastore.as_ref().and_then(|d| d.kind.clone()).unwrap_or_else(|| "volume".into());
    let Some((kind, version)) = SERVED.iter().find(|(k, _)| *k == kind) else {
        return Err(ApiError::Unprocessable(format!("datastore type {kind:?} is not served here")));
    };
    if let Some(v) = datastore.as_ref().and_then(|d| d.version.as_deref()).filter(|v| v != version) {
        return Err(ApiError::Unprocessable(format!(
            "datastore {kind} has no version {v:?}; this deployment serves {version}"
        )));
    }
    let path = path.ok_or_else(|| ApiError::BadRequest("volume.path is required to register an instance".into()))?;
    let resolved =
        volume::check_registered(&state.volume_roots, &path).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let resolved = resolved.to_string_lossy().into_owned();
    let mut row = new_instance(Uuid::now_v7(), project, name, flavor, size);
    row.status = Set(InstanceStatus::Active.as_str().into());
    row.datastore_type = Set((*kind).into());
    row.datastore_version = Set((*version).into());
    row.volume_path = Set(resolved.clone());
    let row = row.insert(&state.db).await.map_err(|e| path_in_use(e, &resolved))?;
    tracing::info!(instance_id = %row.id, path = %resolved, "instance registered");
    Ok(row)
}

async fn restore(
    state: &AppState,
    project: String,
    name: String,
    flavor: String,
    size: Option<i32>,
    path: Option<String>,
    backup_ref: &str,
) -> ApiResult<instance::Model> {
    let backup_id = parse_id("Backup", backup_ref)?;
    let id = Uuid::now_v7();
    let target = match path {
        Some(p) => {
            volume::check_restore_target(&state.volume_roots, &p).map_err(|e| ApiError::Unprocessable(e.to_string()))?
        }
        None => state.default_volume_dir.join(id.to_string()),
    };
    let target = target.to_string_lossy().into_owned();

    let txn = state.db.begin().await?;
    let chain = lifecycle::chain_of(&txn, backup_id).await?;
    let Some(target_backup) = chain.last().filter(|b| b.id == backup_id && b.project_id == project) else {
        return Err(ApiError::NotFound(format!("Backup {backup_id} could not be found")));
    };
    if target_backup.status != BackupStatus::Completed.as_str() {
        return Err(ApiError::Conflict(format!(
            "backup {backup_id} is {}; only a COMPLETED backup can be restored",
            target_backup.status
        )));
    }
    // Hold the chain against a concurrent delete until this commits.
    let ids: Vec<Uuid> = chain.iter().map(|b| b.id).collect();
    let locked = backup::Entity::find().filter(backup::Column::Id.is_in(ids)).lock_shared().all(&txn).await?;
    for (step, link) in chain.iter().enumerate() {
        let now = locked.iter().find(|b| b.id == link.id).map_or("missing", |b| b.status.as_str());
        if now != BackupStatus::Completed.as_str() {
            return Err(ApiError::Conflict(format!(
                "link {} of the chain (backup {}) is {now}; the chain cannot be restored",
                step + 1,
                link.id
            )));
        }
    }
    if chain.first().is_some_and(|root| root.parent_id.is_some()) {
        return Err(ApiError::Conflict(format!("the chain of backup {backup_id} has lost its root")));
    }
    let mut row = new_instance(id, project, name, flavor, size);
    row.status = Set(InstanceStatus::Build.as_str().into());
    row.datastore_type = Set(target_backup.datastore_type.clone());
    row.datastore_version = Set(target_backup.datastore_version.clone());
    row.volume_path = Set(target.clone());
    row.restore_backup_id = Set(Some(backup_id));
    row.restore_step = Set(Some(0));
    row.restore_steps = Set(Some(chain.len() as i32));
    let row = row.insert(&txn).await.map_err(|e| path_in_use(e, &target))?;
    outbox::enqueue(&txn, JobKind::Restore, row.id).await?;
    txn.commit().await?;
    state.nudge.wake();
    tracing::info!(instance_id = %row.id, backup_id = %backup_id, steps = chain.len(), "restore accepted");
    Ok(row)
}

/// `GET /instances` options.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `1`: every project's instances (admin tokens only).
    all_projects: Option<String>,
}

/// Lists the project's instances; with `all_projects=1` (admin tokens
/// only), every project's, each linked under its own project.
#[utoipa::path(get, path = "/instances", tag = "instances", params(("project_id" = String, Path, description = "The project (tenant)"), ListQuery),
    responses((status = 200, description = "`instances`")))]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Project(project): Project,
    BaseUrl(base): BaseUrl,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let every_project = auth::all_projects(q.all_projects.as_deref(), &access)?;
    let mut query = instance::Entity::find().filter(instance::Column::Deleted.eq(false));
    if !every_project {
        query = query.filter(instance::Column::ProjectId.eq(&project));
    }
    let rows = query.order_by_desc(instance::Column::Created).all(&state.db).await?;
    // `base` ends in the path's project; each instance links under its own.
    let root = base.strip_suffix(project.as_str()).unwrap_or(&base);
    let instances: Vec<Value> = rows.iter().map(|i| views::instance(i, &format!("{root}{}", i.project_id))).collect();
    Ok(Json(json!({ "instances": instances })))
}

/// Shows an instance, with `restore` step k of N while it is restored.
#[utoipa::path(get, path = "/instances/{instance_id}", tag = "instances",
    params(("project_id" = String, Path, description = "The project (tenant)"), ("instance_id" = String, Path, description = "The instance")),
    responses((status = 200, description = "`instance`"), (status = 404, description = "itemNotFound")))]
pub async fn show(
    State(state): State<AppState>,
    Project(project): Project,
    BaseUrl(base): BaseUrl,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let row = find_instance(&state.db, &project, parse_id("Instance", &id)?).await?;
    Ok(Json(json!({ "instance": views::instance(&row, &base) })))
}

/// Forgets an instance. Its backups stay (as in Trove), and so does its data
/// on disk: a registered volume is the user's, and a restored one is left for
/// the operator to remove.
#[utoipa::path(delete, path = "/instances/{instance_id}", tag = "instances",
    params(("project_id" = String, Path, description = "The project (tenant)"), ("instance_id" = String, Path, description = "The instance")),
    responses((status = 202, description = "Accepted"), (status = 404, description = "itemNotFound"),
        (status = 422, description = "unprocessableEntity: the instance is being restored")))]
pub async fn delete(
    State(state): State<AppState>,
    Project(project): Project,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = parse_id("Instance", &id)?;
    let row = find_instance(&state.db, &project, id).await?;
    let res = instance::Entity::update_many()
        .col_expr(instance::Column::Deleted, true.into())
        .col_expr(instance::Column::Updated, Utc::now().into())
        .filter(instance::Column::Id.eq(row.id))
        .filter(instance::Column::Status.ne(InstanceStatus::Build.as_str()))
        .exec(&state.db)
        .await?;
    if res.rows_affected == 0 {
        return Err(ApiError::Unprocessable(format!(
            "instance {id} is being restored; delete it once it is ACTIVE or ERROR"
        )));
    }
    tracing::info!(instance_id = %id, "instance deleted");
    Ok(StatusCode::ACCEPTED)
}
