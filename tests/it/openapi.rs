//! CONTRACT §9, `GET /api/v1/openapi.json`: the document is checked against
//! the router itself (`oneshot`, a real database, no Samba call that matters):
//! every documented operation is served, with the token exactly where the
//! document says; every route the router serves (but the status page's) is
//! documented; the routes the contract names are there; every `$ref` resolves.

use crate::operator::Api;
use axum::Router;
use axum::http::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;

/// The routes CONTRACT §4 and §9 name.
const CONTRACT_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/coordinator/runs"),
    ("GET", "/api/v1/coordinator/runs"),
    ("GET", "/api/v1/coordinator/runs/{run_id}"),
    ("GET", "/api/v1/coordinator/files"),
    ("GET", "/api/v1/coordinator/files/{id}"),
    ("POST", "/api/v1/coordinator/files/{id}/retry"),
    ("POST", "/api/v1/coordinator/files/{id}/resolve"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
];

/// Routes that are not part of the API document: the status page.
const STATUS_PAGE: &[&str] = &["/", "/assets/status.js", "/assets/status.css"];

/// Documented in `src/http/openapi.rs`, served by a route registered in
/// another module (the metrics module): not probed while the router has no
/// such route at all (before that module is merged), probed like any other
/// once it has.
const ROUTED_ELSEWHERE: &[&str] = &["/metrics"];

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

/// `(METHOD, path)` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item").keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// The paths the router serves, read from its `Debug` (axum lists its
/// routes' paths there; the fallback router's are left out). Checked to
/// hold `/healthz`, so a change of that format fails the test rather than
/// emptying the list.
fn routed_paths(router: &Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let start = debug.find("path_router").expect("a path_router in Debug");
    let end = debug
        .find("fallback_router")
        .expect("a fallback_router in Debug");
    let mut paths = BTreeSet::new();
    for quoted in debug[start..end].split('"').skip(1).step_by(2) {
        if quoted.starts_with('/') {
            paths.insert(quoted.to_string());
        }
    }
    assert!(
        paths.contains("/healthz") && paths.contains("/api/v1/coordinator/runs"),
        "the router's Debug no longer lists its paths: {paths:?}"
    );
    paths
}

/// Every `"$ref"` in `v`, with where it is.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref"
                    && let Some(r) = v.as_str()
                {
                    out.push((at.to_string(), r.to_string()));
                }
                refs(v, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn is_secured(doc: &Value, method: &str, path: &str) -> bool {
    let op = &doc["paths"][path][method.to_lowercase()];
    match op["security"].as_array() {
        None => false,
        Some(reqs) => {
            assert!(
                reqs.iter().all(|r| r.get("bearer").is_some()),
                "{method} {path}: unknown security {reqs:?}"
            );
            !reqs.is_empty()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_the_router_serves() {
    let api = Api::new().await;
    let (status, bytes) = api.send("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "{bytes:?}");
    let doc: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let ops = operations(&doc);

    for (method, path) in CONTRACT_ROUTES {
        assert!(
            ops.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not documented; documented: {ops:?}"
        );
    }

    // Every route the router serves is documented (a route added with a
    // plain `.route()` is not).
    let routed = routed_paths(&api.router);
    let documented: BTreeSet<&str> = ops.iter().map(|(_, p)| p.as_str()).collect();
    for path in &routed {
        assert!(
            STATUS_PAGE.contains(&path.as_str()) || documented.contains(path.as_str()),
            "{path} is served but not in the document"
        );
    }

    // Every documented operation is served, and no undocumented method of a
    // documented path is. Path parameters get values that do not parse and
    // bodies an unknown field, so no handler does anything (400 at most).
    let token = api.token.clone();
    for path in &documented {
        if ROUTED_ELSEWHERE.contains(path) && !routed.contains(*path) {
            continue;
        }
        let uri = path
            .replace("{run_id}", "not-a-uuid")
            .replace("{id}", "not-an-id")
            .replace("{name}", "no-such-token");
        for method in METHODS {
            let is_documented = ops.contains(&(method.to_string(), path.to_string()));
            let body = (*method != "GET").then_some(r#"{"unknown_probe_field": true}"#);
            let (status, bytes) = api.send(method, &uri, Some(&token), body).await;
            if !is_documented {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented: {bytes:?}"
                );
                continue;
            }
            // A 404 of the route's own (no such token) is an answer; the
            // router's "no such route" is not.
            let no_route = status == StatusCode::NOT_FOUND
                && serde_json::from_slice::<Value>(&bytes)
                    .is_ok_and(|v| v["message"] == "no such route");
            assert!(
                !no_route && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but answers {status}: {bytes:?}"
            );

            // The token is asked for exactly where the document says.
            let secured = is_secured(&doc, method, path);
            let needs_token = path.starts_with("/api/") && *path != "/api/v1/openapi.json";
            assert_eq!(
                secured, needs_token,
                "{method} {path}: security in the document"
            );
            let (status, bytes) = api.send(method, &uri, None, body).await;
            if secured {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path}: {bytes:?}"
                );
            } else {
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path}: {bytes:?}"
                );
            }
        }
    }
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer")),
        "{scheme}"
    );

    // Structurally sound: every `$ref` resolves inside the document.
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    assert!(found.len() > 10, "hardly any $ref: {found:?}");
    for (at, r) in &found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: $ref {r} is not local"));
        assert!(
            pointer.starts_with("/components/") && doc.pointer(pointer).is_some(),
            "{at}: $ref {r} resolves to nothing"
        );
    }
    let run_body = &doc["paths"]["/api/v1/coordinator/runs"]["post"]["requestBody"];
    assert_eq!(run_body["required"], Value::Bool(false), "{run_body}");
    // The error body and the types a reader needs most are components.
    for schema in [
        "ErrorBody",
        "RunReport",
        "Summary",
        "FileView",
        "FileStatus",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "no component {schema}"
        );
    }
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error", "message"]));
    assert!(error["properties"]["run_id"].is_object(), "{error}");
    assert!(
        doc["components"]["schemas"]["FileStatus"]["pattern"]
            .as_str()
            .is_some_and(|p| p.contains("itm_failed") && p.contains("ops_")),
        "{}",
        doc["components"]["schemas"]["FileStatus"]
    );
    api.finish().await;
}
