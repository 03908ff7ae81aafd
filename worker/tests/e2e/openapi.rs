//! The OpenAPI document at `/openapi.json` matches the routes both ways:
//! every route of DESIGN.md §5 is documented, and every documented route is
//! served (not the fallback, not 405).

use std::collections::BTreeSet;

use cairn_testkit::spawn_app;
use reqwest::Method;
use serde_json::Value;

const P: &str = "/v1.0/{project_id}";

fn contract() -> BTreeSet<(String, String)> {
    let routes = [
        ("get", "/backups"),
        ("post", "/backups"),
        ("get", "/backups/{backup_id}"),
        ("delete", "/backups/{backup_id}"),
        ("post", "/backups/{backup_id}/action"),
        ("get", "/instances"),
        ("post", "/instances"),
        ("get", "/instances/{instance_id}"),
        ("delete", "/instances/{instance_id}"),
        ("get", "/instances/{instance_id}/backups"),
        ("get", "/flavors"),
        ("get", "/flavors/{flavor_id}"),
        ("get", "/datastores"),
    ];
    let mut set: BTreeSet<_> = routes.iter().map(|(m, p)| (m.to_string(), format!("{P}{p}"))).collect();
    set.insert(("get".into(), "/".into()));
    set.insert(("get".into(), "/openapi.json".into()));
    set
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app(0).await;
    let root = app.base.trim_end_matches("/v1.0").to_owned();
    let doc: Value = app.client.get(format!("{root}/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if let Some(op) = item.get(method) {
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
                documented.insert((method.to_owned(), path.clone()));
            }
        }
    }
    assert_eq!(documented, contract(), "the document and the contract disagree");

    // The same document from the library, for tools that do not run a server.
    assert_eq!(serde_json::to_value(cairn_api::openapi()).unwrap(), doc);

    for (method, path) in &documented {
        let concrete = path
            .replace("{project_id}", &app.project)
            .replace("{backup_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{instance_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{flavor_id}", "6");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let resp = app.client.request(m, format!("{root}{concrete}")).body("{}").send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(status.as_u16(), 405, "{method} {path} is documented but not routed");
        assert_ne!(body["itemNotFound"]["message"], "no such resource", "{method} {path} fell through to the fallback");
    }
    // And an undocumented path is the fallback's 404 in the fault shape.
    let resp = app.client.get(format!("{root}/v1.0/{}/nothing-here", app.project)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}
