//! The static catalog: API versions, flavors and datastores. Trove's client
//! looks a flavor up before it creates an instance, so a small fixed list
//! answers it; cairn itself has no use for flavors.

use axum::{Json, extract::Path};
use cairn_shared::datastore::SERVED;
use serde_json::{Value, json};

use super::{BaseUrl, Project};
use crate::error::{ApiError, ApiResult};

const FLAVORS: &[(&str, &str, u32, u32)] =
    &[("1", "tiny", 512, 1), ("2", "small", 2048, 1), ("6", "medium", 4096, 2), ("10", "large", 8192, 4)];

fn flavor_view(base: &str, (id, name, ram, vcpus): (&str, &str, u32, u32)) -> Value {
    json!({
        "id": id, "str_id": id, "name": name, "ram": ram, "vcpus": vcpus, "disk": null,
        "links": [{ "rel": "self", "href": format!("{base}/flavors/{id}") }],
    })
}

/// The static flavor list (Trove's client looks one up before a restore).
#[utoipa::path(get, path = "/flavors", tag = "catalog", params(("project_id" = String, Path, description = "The project (tenant)")), responses((status = 200, description = "`flavors`")))]
pub async fn flavors(_: Project, BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "flavors": FLAVORS.iter().map(|f| flavor_view(&base, *f)).collect::<Vec<_>>() }))
}

/// One flavor.
#[utoipa::path(get, path = "/flavors/{flavor_id}", tag = "catalog",
    params(("project_id" = String, Path, description = "The project (tenant)"), ("flavor_id" = String, Path, description = "The flavor")),
    responses((status = 200, description = "`flavor`"), (status = 404, description = "itemNotFound")))]
pub async fn flavor(
    _: Project,
    BaseUrl(base): BaseUrl,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let f = FLAVORS
        .iter()
        .find(|f| f.0 == id)
        .ok_or_else(|| ApiError::NotFound(format!("Flavor {id} could not be found")))?;
    Ok(Json(json!({ "flavor": flavor_view(&base, *f) })))
}

/// The datastore types this deployment serves.
#[utoipa::path(get, path = "/datastores", tag = "catalog", params(("project_id" = String, Path, description = "The project (tenant)")), responses((status = 200, description = "`datastores`")))]
pub async fn datastores(_: Project) -> Json<Value> {
    let list: Vec<Value> = SERVED
        .iter()
        .map(|(kind, version)| {
            json!({
                "id": kind, "name": kind, "default_version": version, "links": [],
                "versions": [{ "id": version, "name": version, "active": 1, "links": [] }],
            })
        })
        .collect();
    Json(json!({ "datastores": list }))
}

/// The API versions.
#[utoipa::path(get, path = "/", tag = "catalog", responses((status = 200, description = "`versions`")))]
pub async fn versions() -> Json<Value> {
    Json(json!({ "versions": [{ "id": "v1.0", "status": "CURRENT", "links": [] }] }))
}
