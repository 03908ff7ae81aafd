//! Tenancy: tokens, and no crossing between projects.
//!
//! The foreign-token walk takes its routes from `/openapi.json`, so a route
//! added later is walked too, or the walk fails and asks for its case.

use std::{collections::BTreeSet, time::Duration};

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use cairn_testkit::{AppOptions, TestApp, assert_fault, client_with_token, spawn_app, spawn_app_with};

const P: &str = "/v1.0/{project_id}";

/// Everything a request could change, as one string: every backup and
/// instance row (all columns) and how many outbox entries were ever
/// written (the relay deletes published ones; the sequence never goes back).
async fn state_of_everything(app: &TestApp) -> String {
    let sql = "SELECT concat_ws('|',
            (SELECT string_agg(b::text, ',' ORDER BY b.id) FROM backups b),
            (SELECT string_agg(i::text, ',' ORDER BY i.id) FROM instances i),
            (SELECT last_value FROM outbox_id_seq)::text) AS s";
    let row = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<String>("", "s").unwrap()
}

async fn send(client: &reqwest::Client, method: Method, url: &str, body: Option<&Value>) -> (StatusCode, Value) {
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The routes of the OpenAPI document under `/v1.0/{project_id}`, as
/// (method, path after the project).
async fn project_routes(app: &TestApp) -> BTreeSet<(String, String)> {
    let root = app.base.trim_end_matches("/v1.0");
    let doc: Value = app.anonymous().get(format!("{root}/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(rest) = path.strip_prefix(P) else { continue };
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                routes.insert((method.to_owned(), rest.to_owned()));
            }
        }
    }
    assert!(routes.len() >= 13, "the document lists too few routes: {routes:?}");
    routes
}

/// Project A's objects that the walk aims at.
struct Victim {
    instance: String,
    backup: String,
}

/// `path` with A's ids in it; panics on a placeholder the walk does not know.
fn concrete(path: &str, victim: &Victim) -> String {
    let filled = path
        .replace("{backup_id}", &victim.backup)
        .replace("{instance_id}", &victim.instance)
        .replace("{flavor_id}", "6");
    assert!(!filled.contains('{'), "the foreign-token walk does not know a placeholder of {path}: add it");
    filled
}

/// The body a route is walked with: every reference in it points at A.
fn body_for(method: &str, path: &str, victim: &Victim) -> Option<Value> {
    match (method, path) {
        ("post", "/backups") => {
            Some(json!({"backup": {"name": "stolen", "instance": victim.instance, "parent_id": victim.backup}}))
        }
        ("post", "/instances") => {
            Some(json!({"instance": {"name": "stolen", "restorePoint": {"backupRef": victim.backup}}}))
        }
        ("post", "/backups/{backup_id}/action") => Some(json!({"verify": {}})),
        ("post" | "put" | "patch", _) => panic!("no foreign-token case for {method} {path}: add its body to the walk"),
        _ => None,
    }
}

#[tokio::test]
async fn a_foreign_token_reaches_nothing_on_any_route() {
    let app = spawn_app(1).await;
    let dir = app.volumes().join("a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data"), b"project A's data").unwrap();
    let instance = app.register("a", &dir).await;
    let backup = app.backup_completed(&instance, "full", None).await["id"].as_str().unwrap().to_owned();
    let victim = Victim { instance, backup };

    // Project B: a token of its own, and an instance of its own.
    let intruder_project = format!("{}-b", app.project);
    let intruder = client_with_token(&app.token_for(&intruder_project, false).await);
    let b_dir = app.volumes().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let (status, body) = send(
        &intruder,
        Method::POST,
        &app.url_for(&intruder_project, "/instances"),
        Some(&json!({"instance": {"name": "b", "datastore": {"type": "volume"}, "volume": {"path": b_dir}}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let b_instance = body["instance"]["id"].as_str().unwrap().to_owned();
    let before = state_of_everything(&app).await;

    let routes = project_routes(&app).await;
    for (method, path) in &routes {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let rest = concrete(path, &victim);
        let body = body_for(method, path, &victim);
        let what = format!("{method} {path}");

        // On A's path, B's token is refused for the project as a whole.
        let (status, reply) = send(&intruder, m.clone(), &app.url(&rest), body.as_ref()).await;
        assert_fault(status, &reply, 403, "forbidden");
        assert!(!reply.to_string().contains(&victim.backup), "{what}: {reply}");

        // On B's own path, A's objects do not exist: B gets exactly the
        // answer it gets for ids that name nothing.
        let (status, reply) = send(&intruder, m.clone(), &app.url_for(&intruder_project, &rest), body.as_ref()).await;
        let nobody = Victim { instance: uuid::Uuid::new_v4().to_string(), backup: uuid::Uuid::new_v4().to_string() };
        let (nobody_status, nobody_reply) = send(
            &intruder,
            m,
            &app.url_for(&intruder_project, &concrete(path, &nobody)),
            body_for(method, path, &nobody).as_ref(),
        )
        .await;
        let as_if_nobody = nobody_reply
            .to_string()
            .replace(&nobody.backup, &victim.backup)
            .replace(&nobody.instance, &victim.instance);
        assert_eq!((status, reply.to_string()), (nobody_status, as_if_nobody), "{what}: A's ids are told apart");
        match (method.as_str(), path.as_str()) {
            (_, p) if p.contains("{backup_id}") || p.contains("{instance_id}") => {
                assert_fault(status, &reply, 404, "itemNotFound");
            }
            ("post", "/backups" | "/instances") => assert_fault(status, &reply, 404, "itemNotFound"),
            ("get", _) => {
                assert_eq!(status, StatusCode::OK, "{what}: {reply}");
                let text = reply.to_string();
                assert!(
                    !text.contains(&victim.backup) && !text.contains(&victim.instance),
                    "{what} on B's path lists one of A's objects: {reply}"
                );
            }
            _ => panic!("no foreign-token expectation for {what}: add one"),
        }
    }

    // References from B's own objects to A's: a parent of A's, incremental
    // (which must not find A's backups), filters and markers.
    let backups = app.url_for(&intruder_project, "/backups");
    let (status, reply) = send(
        &intruder,
        Method::POST,
        &backups,
        Some(&json!({"backup": {"name": "x", "instance": b_instance, "parent_id": victim.backup}})),
    )
    .await;
    assert_fault(status, &reply, 422, "unprocessableEntity");
    let (status, reply) =
        send(&intruder, Method::GET, &format!("{backups}?instance_id={}", victim.instance), None).await;
    assert_fault(status, &reply, 404, "itemNotFound");
    let (status, reply) = send(&intruder, Method::GET, &format!("{backups}?marker={}", victim.backup), None).await;
    assert_fault(status, &reply, 400, "badRequest");
    // A project token may not list all projects, not even its own path.
    let (status, reply) = send(&intruder, Method::GET, &format!("{backups}?all_projects=1"), None).await;
    assert_fault(status, &reply, 403, "forbidden");
    assert_eq!(state_of_everything(&app).await, before, "a foreign request changed something");

    // Incremental on B's instance finds no parent: it is a full backup.
    let (status, reply) = send(
        &intruder,
        Method::POST,
        &backups,
        Some(&json!({"backup": {"name": "inc", "instance": b_instance, "incremental": 1}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(reply["backup"]["parent_id"], Value::Null, "{reply}");

    // A still sees all its own objects.
    let (status, reply) = app.get(&format!("/backups/{}", victim.backup)).await;
    assert_eq!((status, reply["backup"]["status"].as_str()), (StatusCode::OK, Some("COMPLETED")), "{reply}");
}

#[tokio::test]
async fn an_admin_token_lists_across_projects() {
    let app = spawn_app(0).await;
    let a = app.register("a", &app.volumes().join("a")).await;
    let a_backup = app.backup(&a, "a-full", None).await["id"].as_str().unwrap().to_owned();
    let other = format!("{}-o", app.project);
    let other_client = client_with_token(&app.token_for(&other, false).await);
    let o_dir = app.volumes().join("o");
    std::fs::create_dir_all(&o_dir).unwrap();
    let (_, o) = send(
        &other_client,
        Method::POST,
        &app.url_for(&other, "/instances"),
        Some(&json!({"instance": {"name": "o", "datastore": {"type": "volume"}, "volume": {"path": o_dir}}})),
    )
    .await;
    let o = o["instance"]["id"].as_str().unwrap().to_owned();
    let (status, o_backup) = send(
        &other_client,
        Method::POST,
        &app.url_for(&other, "/backups"),
        Some(&json!({"backup": {"name": "o-full", "instance": o}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{o_backup}");
    let o_backup = o_backup["backup"]["id"].as_str().unwrap().to_owned();

    let admin = client_with_token(&app.token_for("operators", true).await);
    let ids = |list: &Value, key: &str| -> BTreeSet<String> {
        list[key].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
    };
    // all_projects: both projects' backups and instances, each instance
    // linked under its own project.
    let (status, list) = send(&admin, Method::GET, &app.url_for("operators", "/backups?all_projects=1"), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(ids(&list, "backups"), BTreeSet::from([a_backup.clone(), o_backup.clone()]));
    let (_, list) = send(&admin, Method::GET, &app.url_for("operators", "/instances?all_projects=1"), None).await;
    assert_eq!(ids(&list, "instances"), BTreeSet::from([a.clone(), o.clone()]));
    for inst in list["instances"].as_array().unwrap() {
        let project = if inst["id"] == a.as_str() { &app.project } else { &other };
        let href = inst["links"][0]["href"].as_str().unwrap();
        assert!(href.contains(&format!("/v1.0/{project}/instances/")), "{href}");
    }
    // Without the flag: only the path's project.
    let (_, list) = send(&admin, Method::GET, &app.url_for(&other, "/backups"), None).await;
    assert_eq!(ids(&list, "backups"), BTreeSet::from([o_backup.clone()]));
    // Paging across projects keeps the flag in its link.
    let (_, page) = send(&admin, Method::GET, &app.url_for("operators", "/backups?all_projects=1&limit=1"), None).await;
    assert!(page["links"][0]["href"].as_str().unwrap().contains("all_projects=1"), "{page}");
    // An admin may use another project's path, e.g. to show its backup.
    let (status, shown) = send(&admin, Method::GET, &app.url(&format!("/backups/{a_backup}")), None).await;
    assert_eq!((status, shown["backup"]["id"].as_str()), (StatusCode::OK, Some(a_backup.as_str())), "{shown}");
    // A's own token may not list all projects.
    let (status, reply) = app.get("/backups?all_projects=1").await;
    assert_fault(status, &reply, 403, "forbidden");
}

/// The API trusts a verified token for `CAIRN_TOKEN_CACHE_SECONDS`: a
/// revoked token works until its cached verification expires, then is 401;
/// a wrong secret for a cached token's id is never let through.
#[tokio::test]
async fn a_revoked_token_stops_working_once_its_cached_verification_expires() {
    let ttl = Duration::from_millis(1500);
    let app = spawn_app_with(0, AppOptions::default().token_cache(ttl)).await;
    let token = app.token_for(&app.project, false).await;
    let url = app.url("/backups");
    let (status, _) = send(&client_with_token(&token), Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    let id = token.split('-').nth(1).unwrap().parse::<uuid::Uuid>().unwrap();
    cairn_api::tokens::revoke(&app.db, id).await.unwrap();
    let revoked_at = std::time::Instant::now();
    let wrong_secret = format!("{}-{}", token.rsplit_once('-').unwrap().0, "0".repeat(64));
    let (status, reply) = send(&client_with_token(&wrong_secret), Method::GET, &url, None).await;
    assert_fault(status, &reply, 401, "unauthorized");
    let (status, _) = send(&client_with_token(&token), Method::GET, &url, None).await;
    if revoked_at.elapsed() < ttl / 2 {
        assert_eq!(status, StatusCode::OK, "a cached verification is trusted until it expires");
    }
    tokio::time::sleep(ttl).await;
    let (status, reply) = send(&client_with_token(&token), Method::GET, &url, None).await;
    assert_fault(status, &reply, 401, "unauthorized");
}

#[tokio::test]
async fn no_token_a_wrong_one_or_a_revoked_one_is_401_on_every_route() {
    // Without the token cache a revocation takes effect at once (with it,
    // within the cache's time: see the next test).
    let app = spawn_app_with(0, AppOptions::default().token_cache(Duration::ZERO)).await;
    let routes = project_routes(&app).await;
    let victim = Victim { instance: uuid::Uuid::new_v4().to_string(), backup: uuid::Uuid::new_v4().to_string() };

    let revoked = app.token_for(&app.project, false).await;
    let (status, _) = send(&client_with_token(&revoked), Method::GET, &app.url("/backups"), None).await;
    assert_eq!(status, StatusCode::OK, "the token works before it is revoked");
    let id = revoked.split('-').nth(1).unwrap().parse::<uuid::Uuid>().unwrap();
    cairn_api::tokens::revoke(&app.db, id).await.unwrap();
    // The right id with a wrong secret, and a token of no known shape.
    let wrong_secret = format!("{}-{}", revoked.rsplit_once('-').unwrap().0, "0".repeat(64));
    let garbage = "cairn-garbage-5e8d2a9f".to_owned();
    let presented = [revoked.clone(), wrong_secret.clone(), garbage.clone()];
    let before = state_of_everything(&app).await;

    let mut clients = vec![("no token", app.anonymous())];
    clients.extend(presented.iter().map(|t| ("bad token", client_with_token(t))));
    for (method, path) in &routes {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = body_for(method, path, &victim);
        for (which, client) in &clients {
            let (status, reply) = send(client, m.clone(), &app.url(&concrete(path, &victim)), body.as_ref()).await;
            assert_fault(status, &reply, 401, "unauthorized");
            let text = reply.to_string();
            for secret in &presented {
                let secret_part = secret.rsplit('-').next().unwrap();
                assert!(!text.contains(secret_part), "{which}: {method} {path} echoes the token: {text}");
            }
        }
    }
    assert_eq!(state_of_everything(&app).await, before);

    // The documents that describe the API are public.
    let root = app.base.trim_end_matches("/v1.0");
    for public in ["/", "/openapi.json"] {
        let resp = app.anonymous().get(format!("{root}{public}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{public}");
    }
    // The document declares the scheme and the 401 of a project route.
    let doc: Value = app.anonymous().get(format!("{root}/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["token"]["name"], "X-Auth-Token", "{}", doc["components"]);
    assert!(doc["paths"]["/v1.0/{project_id}/backups"]["get"]["responses"]["401"].is_object());
    // Unknown paths need a token too.
    let (status, reply) = send(&app.anonymous(), Method::GET, &format!("{root}/elsewhere"), None).await;
    assert_fault(status, &reply, 401, "unauthorized");
}

#[tokio::test]
async fn oversized_bodies_and_names_are_refused_and_change_nothing() {
    let app = spawn_app(0).await;
    let a = app.register("a", &app.volumes().join("a")).await;
    let before = state_of_everything(&app).await;

    // 64 KiB is the most a body may hold.
    let padding = "x".repeat(64 * 1024);
    let huge = json!({"backup": {"name": "big", "instance": a, "description": padding}}).to_string();
    let (status, reply) = app.post_raw("/backups", huge.clone()).await;
    assert_fault(status, &reply, 413, "overLimit");
    // Without a token, the body is not even read: 401 first.
    let resp = app
        .anonymous()
        .post(app.url("/backups"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    for (body, what) in [
        (json!({"backup": {"name": "n".repeat(256), "instance": a}}), "backup name"),
        (json!({"backup": {"name": "ok", "instance": a, "description": "d".repeat(1025)}}), "description"),
        (
            json!({"instance": {"name": "n".repeat(256), "datastore": {"type": "volume"}, "volume": {"path": "/x"}}}),
            "instance name",
        ),
    ] {
        let path = if body.get("backup").is_some() { "/backups" } else { "/instances" };
        let (status, reply) = app.post(path, &body).await;
        assert_fault(status, &reply, 400, "badRequest");
        assert!(reply["badRequest"]["message"].as_str().unwrap().contains(what), "{reply}");
    }
    assert_eq!(state_of_everything(&app).await, before);

    // The limits themselves are allowed (multi-byte characters count once).
    let name = "é".repeat(255);
    let (status, reply) =
        app.post("/backups", &json!({"backup": {"name": name, "instance": a, "description": "d".repeat(1024)}})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(reply["backup"]["name"].as_str().unwrap().chars().count(), 255);
}
