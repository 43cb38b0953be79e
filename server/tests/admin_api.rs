//! The REST admin API (`/admin/v1`) and the dashboard, over real HTTP against real members:
//! every route's success, its refusal of bad input and of calls without a credential (with
//! nothing changed), unknown members (404), removing the last voter (409), auth-on behaviour,
//! and the OpenAPI document against what the router serves. (`admin.rs` covers the gRPC
//! `pgraftpb.Admin` service.)

mod common;

use clap::Parser;
use common::{free_port, TestNode};
use etcd_proto::authpb::{permission::Type, Permission};
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmType, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
    AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
};
use pgraft_server::{Config, Node};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token";

struct Api {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    body: Value,
    bytes: Vec<u8>,
    content_type: String,
}

impl Api {
    fn new(addr: std::net::SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn of(n: &TestNode) -> Api {
        Api::new(n.node.as_ref().unwrap().client_addrs[0])
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = resp.bytes().await.expect("body").to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            bytes,
            content_type,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, None).await
    }

    /// A call with the admin token.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(&format!("Bearer {TOKEN}")), body)
            .await
    }
}

/// An error answer: the status, and the JSON error shape.
fn refused(a: &Answer, status: StatusCode) {
    assert_eq!(a.status, status, "{:?}", a.body);
    assert!(a.body["error"].is_string(), "{:?}", a.body);
    assert!(a.body["code"].is_string(), "{:?}", a.body);
    assert!(a.content_type.starts_with("application/json"));
}

async fn with_token() -> TestNode {
    TestNode::start_with(&["--admin-token", TOKEN]).await
}

async fn member_id(api: &Api) -> String {
    api.get("/admin/v1/cluster").await.body["member_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn value_of(api: &Api, key: &str) -> Option<String> {
    let a = api.get(&format!("/admin/v1/kv?prefix={key}&limit=1")).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.body["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| kv["value"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_served_route_and_each_answers() {
    let n = with_token().await;
    let api = Api::of(&n);
    let a = api.get("/admin/v1/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, item) in a.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served = pgraft_server::api::admin::served_routes();
    served.sort();
    assert_eq!(served, documented);
    // Each documented route is answered by the live router (not the 404 fallback, not 405).
    for (method, path) in &documented {
        let p = path.replace("{id}", "1");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let a = api.call(m, &p, None, None).await;
        assert!(
            a.status != StatusCode::NOT_FOUND || a.body["code"] == "not_found",
            "{method} {path}: {:?}",
            a.status
        );
        assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(!a.status.is_server_error(), "{method} {path}: {:?}", a.body);
    }
    // An unknown method on a known path: a JSON 405.
    refused(
        &api.call(Method::PATCH, "/admin/v1/kv", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_open_and_describe_the_member() {
    let n = TestNode::start().await;
    let api = Api::of(&n);
    let o = api.get("/admin/v1/cluster").await;
    assert_eq!(o.status, StatusCode::OK, "{:?}", o.body);
    let id = o.body["member_id"].as_str().unwrap();
    assert_eq!(o.body["leader"], id);
    assert_eq!(o.body["admin_token_configured"], false);
    assert_eq!(o.body["auth_enabled"], false);
    let ms = o.body["members"].as_array().unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["id"], id);
    assert_eq!(ms[0]["role"], "leader");
    assert_eq!(ms[0]["healthy"], true);
    assert!(ms[0]["term"].as_u64().unwrap() >= 1);
    assert!(ms[0]["applied_index"].as_u64().unwrap() >= 1);
    assert!(ms[0]["db_size"].as_i64().unwrap() > 0);
    assert_eq!(ms[0]["version"], "3.5.0");

    let m = api.get("/admin/v1/members").await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.body["members"][0]["id"], id);
    assert_eq!(m.body["members"][0]["name"], "t1");

    let h = api.get("/admin/v1/leader/history").await;
    assert_eq!(h.status, StatusCode::OK);
    let changes = h.body["changes"].as_array().unwrap();
    assert_eq!(changes.last().unwrap()["to"], id, "{:?}", h.body);
    assert!(h.body["elections"].as_u64().unwrap() >= 1);

    let al = api.get("/admin/v1/alarms").await;
    assert_eq!(al.status, StatusCode::OK);
    assert_eq!(al.body["alarms"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_credential_are_refused_and_change_nothing() {
    let n = with_token().await;
    let api = Api::of(&n);
    n.put("k", "before").await;
    let rev = n.rev().await;
    let id = member_id(&api).await;
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::PUT,
            "/admin/v1/kv".into(),
            Some(json!({"key": "k", "value": "after"})),
        ),
        (Method::DELETE, "/admin/v1/kv?key=k".into(), None),
        (
            Method::POST,
            "/admin/v1/compaction".into(),
            Some(json!({"revision": rev})),
        ),
        (
            Method::POST,
            "/admin/v1/members".into(),
            Some(json!({"peer_urls": ["http://127.0.0.1:1"], "learner": true})),
        ),
        (Method::DELETE, format!("/admin/v1/members/{id}"), None),
        (
            Method::POST,
            format!("/admin/v1/members/{id}/promote"),
            None,
        ),
        (
            Method::POST,
            "/admin/v1/leader".into(),
            Some(json!({"target": id})),
        ),
        (Method::DELETE, "/admin/v1/alarms".into(), None),
        (Method::GET, "/admin/v1/snapshot".into(), None),
    ];
    for (m, path, body) in &calls {
        for auth in [None, Some("Bearer wrong-token"), Some("")] {
            let a = api.call(m.clone(), path, auth, body.clone()).await;
            refused(&a, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(value_of(&api, "k").await.as_deref(), Some("before"));
    assert_eq!(n.rev().await, rev);
    let members = api.get("/admin/v1/members").await;
    assert_eq!(members.body["members"].as_array().unwrap().len(), 1);

    // A member started without --admin-token refuses writes whatever is sent.
    let open = TestNode::start().await;
    let api = Api::of(&open);
    let a = api
        .admin(
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "k", "value": "v"})),
        )
        .await;
    refused(&a, StatusCode::FORBIDDEN);
    assert!(a.body["error"].as_str().unwrap().contains("--admin-token"));
    assert_eq!(value_of(&api, "k").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_written_browsed_by_page_and_revision_and_deleted() {
    let n = with_token().await;
    let api = Api::of(&n);
    for i in 0..5 {
        let a = api
            .admin(
                Method::PUT,
                "/admin/v1/kv",
                Some(json!({"key": format!("p/{i}"), "value": format!("v{i}")})),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert!(a.body["revision"].as_i64().unwrap() > 1);
    }
    n.put("q", "outside").await;
    // JSON whatever the content type says (`curl -d` sends a form type).
    let form = api
        .http
        .put(format!("{}/admin/v1/kv", api.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"key":"r","value":"curl"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    assert_eq!(value_of(&api, "r").await.as_deref(), Some("curl"));
    // A binary key and value travel as base64.
    let a = api
        .admin(
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key_b64": "cC//", "value_b64": "/wA="})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let old_rev = api
        .admin(
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "p/0", "value": "new"})),
        )
        .await
        .body["revision"]
        .as_i64()
        .unwrap()
        - 1;

    // Pages of two, following `next`, at one revision.
    let mut keys = Vec::new();
    let mut start: Option<String> = None;
    let mut rev = 0;
    loop {
        let mut path = "/admin/v1/kv?prefix=p/&limit=2".to_string();
        if let Some(s) = &start {
            path += &format!("&start_b64={}", urlencode(s));
        }
        if rev != 0 {
            path += &format!("&revision={rev}");
        }
        let page = api.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        rev = page.body["revision"].as_i64().unwrap();
        for kv in page.body["kvs"].as_array().unwrap() {
            keys.push((
                kv["key"].as_str().unwrap().to_string(),
                kv["key_encoding"].as_str().unwrap().to_string(),
            ));
        }
        if page.body["more"] == false {
            assert!(page.body["next_b64"].is_null());
            break;
        }
        start = Some(page.body["next_b64"].as_str().unwrap().to_string());
    }
    let names: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    assert_eq!(names, ["p/0", "p/1", "p/2", "p/3", "p/4", "cC//"]);
    assert_eq!(keys[5].1, "base64");

    // Values: text, or base64 when not UTF-8; keys only leaves them out.
    let all = api.get("/admin/v1/kv?prefix=p").await;
    let kvs = all.body["kvs"].as_array().unwrap();
    assert_eq!(kvs[0]["value"], "new");
    assert_eq!(kvs[0]["value_encoding"], "utf8");
    let bin = kvs.iter().find(|kv| kv["key"] == "cC//").unwrap();
    assert_eq!(
        (bin["value"].as_str(), bin["value_encoding"].as_str()),
        (Some("/wA="), Some("base64"))
    );
    let keys_only = api.get("/admin/v1/kv?prefix=p&keys_only=true").await;
    assert!(keys_only.body["kvs"][0]["value"].is_null());
    // At an older revision, the older value.
    let old = api
        .get(&format!("/admin/v1/kv?prefix=p/0&revision={old_rev}"))
        .await;
    assert_eq!(old.body["kvs"][0]["value"], "v0", "{:?}", old.body);

    // Delete one key, then the rest of the prefix.
    let d = api
        .admin(Method::DELETE, "/admin/v1/kv?key=p/1", None)
        .await;
    assert_eq!(
        (d.status, d.body["deleted"].as_i64()),
        (StatusCode::OK, Some(1))
    );
    let d = api
        .admin(Method::DELETE, "/admin/v1/kv?key=p/&with_prefix=true", None)
        .await;
    // p/0, p/2, p/3, p/4 and the binary p/\xff.
    assert_eq!(d.body["deleted"].as_i64(), Some(5));
    let left = api.get("/admin/v1/kv?prefix=p").await;
    assert_eq!(
        left.body["kvs"].as_array().unwrap().len(),
        0,
        "{:?}",
        left.body
    );
    assert_eq!(value_of(&api, "q").await.as_deref(), Some("outside"));

    // Compaction: then the old revision is gone.
    let c = api
        .admin(
            Method::POST,
            "/admin/v1/compaction",
            Some(json!({"revision": old_rev + 1, "physical": true})),
        )
        .await;
    assert_eq!(c.status, StatusCode::OK, "{:?}", c.body);
    refused(
        &api.get(&format!("/admin/v1/kv?revision={old_rev}")).await,
        StatusCode::BAD_REQUEST,
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_400_and_changes_nothing() {
    let n = with_token().await;
    let api = Api::of(&n);
    n.put("k", "v").await;
    let rev = n.rev().await;
    let bad: Vec<(Method, &str, Option<Value>)> = vec![
        (
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"value": "no key"})),
        ),
        (Method::PUT, "/admin/v1/kv", Some(json!({"key": "k"}))),
        (
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "", "value": "x"})),
        ),
        (
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "k", "key_b64": "aw==", "value": "x"})),
        ),
        (
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key_b64": "!!", "value": "x"})),
        ),
        (
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "k", "value": "x", "lease": "zz"})),
        ),
        (
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "k", "value": "x", "extra": 1})),
        ),
        (Method::PUT, "/admin/v1/kv", Some(json!([1, 2]))),
        (Method::DELETE, "/admin/v1/kv", None),
        (
            Method::POST,
            "/admin/v1/compaction",
            Some(json!({"revision": 0})),
        ),
        (
            Method::POST,
            "/admin/v1/compaction",
            Some(json!({"revision": rev + 100})),
        ),
        (
            Method::POST,
            "/admin/v1/compaction",
            Some(json!({"revision": "x"})),
        ),
        (
            Method::POST,
            "/admin/v1/members",
            Some(json!({"peer_urls": []})),
        ),
        (
            Method::POST,
            "/admin/v1/members",
            Some(json!({"peer_urls": ["not a url"]})),
        ),
        (Method::DELETE, "/admin/v1/members/xyz", None),
        (Method::DELETE, "/admin/v1/members/0", None),
        (
            Method::POST,
            "/admin/v1/members/11112222333344445/promote",
            None,
        ),
        (
            Method::POST,
            "/admin/v1/leader",
            Some(json!({"target": "not hex"})),
        ),
        (Method::POST, "/admin/v1/leader", Some(json!({}))),
        (Method::DELETE, "/admin/v1/alarms?alarm=BOGUS", None),
        (Method::DELETE, "/admin/v1/alarms?member_id=-1", None),
        (Method::GET, "/admin/v1/kv?limit=0", None),
        (Method::GET, "/admin/v1/kv?limit=1001", None),
        (Method::GET, "/admin/v1/kv?limit=x", None),
        (Method::GET, "/admin/v1/kv?revision=-1", None),
        (Method::GET, "/admin/v1/kv?revision=999999", None),
        (Method::GET, "/admin/v1/kv?prefix=a&start=b", None),
        (Method::GET, "/admin/v1/kv?prefix_b64=%21", None),
        (Method::GET, "/admin/v1/kv?unknown=1", None),
    ];
    for (m, path, body) in bad {
        let a = api.admin(m.clone(), path, body.clone()).await;
        refused(&a, StatusCode::BAD_REQUEST);
        let _ = (m, path);
    }
    // Not JSON at all.
    let a = api
        .http
        .put(format!("{}/admin/v1/kv", api.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body("{\"key\":")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::BAD_REQUEST);
    // No body at all.
    refused(
        &api.admin(Method::POST, "/admin/v1/compaction", None).await,
        StatusCode::BAD_REQUEST,
    );
    // Too large for any put.
    let huge = "x".repeat(4 << 20);
    refused(
        &api.admin(
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "k", "value": huge})),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert_eq!(n.rev().await, rev);
    assert_eq!(value_of(&api, "k").await.as_deref(), Some("v"));
    assert_eq!(
        api.get("/admin/v1/members").await.body["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_members_are_404_and_the_last_voter_stays() {
    let n = with_token().await;
    let api = Api::of(&n);
    let id = member_id(&api).await;
    refused(
        &api.admin(Method::DELETE, "/admin/v1/members/abc123", None)
            .await,
        StatusCode::NOT_FOUND,
    );
    refused(
        &api.admin(Method::POST, "/admin/v1/members/abc123/promote", None)
            .await,
        StatusCode::NOT_FOUND,
    );
    refused(
        &api.admin(
            Method::POST,
            "/admin/v1/leader",
            Some(json!({"target": "abc123"})),
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    let a = api
        .admin(Method::DELETE, &format!("/admin/v1/members/{id}"), None)
        .await;
    refused(&a, StatusCode::CONFLICT);
    let m = api.get("/admin/v1/members").await;
    assert_eq!(m.body["members"][0]["id"], id.as_str());
    // Transferring to itself (the leader) is a no-op success.
    let t = api
        .admin(
            Method::POST,
            "/admin/v1/leader",
            Some(json!({"target": id})),
        )
        .await;
    assert_eq!(
        (t.status, t.body["leader"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_only_when_ready_and_removed() {
    let n = with_token().await;
    let api = Api::of(&n);
    let peer = format!("http://127.0.0.1:{}", free_port());
    let a = api
        .admin(
            Method::POST,
            "/admin/v1/members",
            Some(json!({"peer_urls": [peer], "learner": true})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let new_id = a.body["member"]["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["member"]["is_learner"], true);
    assert_eq!(a.body["members"].as_array().unwrap().len(), 2);
    // The same URL again conflicts; a second learner is over etcd's limit.
    let again = api
        .admin(
            Method::POST,
            "/admin/v1/members",
            Some(json!({"peer_urls": [peer], "learner": true})),
        )
        .await;
    refused(&again, StatusCode::CONFLICT);
    // Never started: not caught up, so not promoted.
    let p = api
        .admin(
            Method::POST,
            &format!("/admin/v1/members/{new_id}/promote"),
            None,
        )
        .await;
    refused(&p, StatusCode::CONFLICT);
    // The overview lists it, not reachable.
    let o = api.get("/admin/v1/cluster").await;
    let m = o.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == new_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (m["healthy"].as_bool(), m["reachable"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(m["role"], "unknown");
    let r = api
        .admin(Method::DELETE, &format!("/admin/v1/members/{new_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["members"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_listed_and_disarmed() {
    let n = with_token().await;
    let api = Api::of(&n);
    let id = n.node.as_ref().unwrap().server.member_id();
    n.maintenance()
        .alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap();
    let a = api.get("/admin/v1/alarms").await;
    assert_eq!(
        a.body["alarms"],
        json!([{"member_id": format!("{id:x}"), "alarm": "NOSPACE"}])
    );
    refused(
        &api.call(Method::DELETE, "/admin/v1/alarms", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
    );
    assert_eq!(
        api.get("/admin/v1/alarms").await.body["alarms"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Only CORRUPT: the NOSPACE stays.
    let d = api
        .admin(Method::DELETE, "/admin/v1/alarms?alarm=corrupt", None)
        .await;
    assert_eq!(
        d.body["alarms"].as_array().unwrap().len(),
        1,
        "{:?}",
        d.body
    );
    let d = api
        .admin(
            Method::DELETE,
            &format!("/admin/v1/alarms?member_id={id:x}"),
            None,
        )
        .await;
    assert_eq!(d.status, StatusCode::OK, "{:?}", d.body);
    assert_eq!(d.body["alarms"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_downloads_etcds_file() {
    let n = with_token().await;
    let api = Api::of(&n);
    for i in 0..50 {
        n.put(&format!("s/{i}"), &"x".repeat(1000)).await;
    }
    let a = api.admin(Method::GET, "/admin/v1/snapshot", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type, "application/octet-stream");
    // etcd's snapshot file: the data, then the SHA-256 of the data.
    let (data, sum) = a.bytes.split_at(a.bytes.len() - 32);
    assert!(data.len() > 50_000);
    assert_eq!(Sha256::digest(data).as_slice(), sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_is_served_from_the_binary() {
    let n = TestNode::start().await;
    let api = Api::of(&n);
    for path in ["/", "/ui/"] {
        let a = api.get(path).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.content_type.starts_with("text/html"));
        let html = String::from_utf8(a.bytes).unwrap();
        assert!(html.contains("<title>pgraft dashboard</title>"));
        assert!(html.contains("viewport"), "readable on a phone");
        assert!(
            !html.contains("https://") && !html.contains("//cdn"),
            "nothing from elsewhere"
        );
    }
    let js = api.get("/ui/app.js").await;
    assert!(js.content_type.starts_with("text/javascript"));
    let js = String::from_utf8(js.bytes).unwrap();
    assert!(js.contains("/admin/v1/cluster") && !js.contains("innerHTML"));
    assert!(api
        .get("/ui/style.css")
        .await
        .content_type
        .starts_with("text/css"));
    assert_eq!(api.get("/ui/nope.js").await.status, StatusCode::NOT_FOUND);
}

const AUTH_ARGS: &[&str] = &["--bcrypt-cost=4", "--admin-token", TOKEN];

/// root, and alice with READWRITE on `a/`; auth enabled. Returns root's and alice's tokens.
async fn enable_auth(n: &TestNode) -> (String, String) {
    let mut a = AuthClient::new(n.channel.clone());
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        a.user_add(AuthUserAddRequest {
            name: name.into(),
            password: pw.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for role in ["root", "app"] {
        a.role_add(AuthRoleAddRequest { name: role.into() })
            .await
            .unwrap();
    }
    a.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(Permission {
            perm_type: Type::Readwrite as i32,
            key: b"a/".to_vec(),
            range_end: b"a0".to_vec(),
        }),
    })
    .await
    .unwrap();
    for (user, role) in [("root", "root"), ("alice", "app")] {
        a.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    n.put("b", "secret").await;
    a.auth_enable(AuthEnableRequest {}).await.unwrap();
    let mut tokens = Vec::new();
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        tokens.push(
            a.authenticate(AuthenticateRequest {
                name: name.into(),
                password: pw.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token,
        );
    }
    (tokens[0].clone(), tokens[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_auth_on_calls_run_as_the_tokens_user() {
    let n = TestNode::start_with(AUTH_ARGS).await;
    let api = Api::of(&n);
    let (root, alice) = enable_auth(&n).await;
    // Reads need a token now; the admin token is no etcd token.
    refused(
        &api.get("/admin/v1/cluster").await,
        StatusCode::UNAUTHORIZED,
    );
    refused(&api.get("/admin/v1/kv").await, StatusCode::UNAUTHORIZED);
    refused(
        &api.admin(
            Method::PUT,
            "/admin/v1/kv",
            Some(json!({"key": "a/1", "value": "x"})),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    );
    refused(
        &api.call(Method::GET, "/admin/v1/cluster", Some("not-a-token"), None)
            .await,
        StatusCode::UNAUTHORIZED,
    );
    let o = api
        .call(Method::GET, "/admin/v1/cluster", Some(&alice), None)
        .await;
    assert_eq!(o.status, StatusCode::OK);
    assert_eq!(o.body["auth_enabled"], true);
    // alice: her keys, not others', and no cluster changes.
    let put = api
        .call(
            Method::PUT,
            "/admin/v1/kv",
            Some(&alice),
            Some(json!({"key": "a/1", "value": "x"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    refused(
        &api.call(
            Method::PUT,
            "/admin/v1/kv",
            Some(&alice),
            Some(json!({"key": "b", "value": "x"})),
        )
        .await,
        StatusCode::FORBIDDEN,
    );
    refused(
        &api.call(Method::GET, "/admin/v1/kv?prefix=b", Some(&alice), None)
            .await,
        StatusCode::FORBIDDEN,
    );
    let page = api
        .call(
            Method::GET,
            "/admin/v1/kv?prefix=a/",
            Some(&format!("Bearer {alice}")),
            None,
        )
        .await;
    assert_eq!(page.body["kvs"][0]["value"], "x");
    let id = member_id_as(&api, &root).await;
    refused(
        &api.call(
            Method::DELETE,
            &format!("/admin/v1/members/{id}"),
            Some(&alice),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
    );
    refused(
        &api.call(Method::GET, "/admin/v1/snapshot", Some(&alice), None)
            .await,
        StatusCode::FORBIDDEN,
    );
    // root may.
    let s = api
        .call(Method::GET, "/admin/v1/snapshot", Some(&root), None)
        .await;
    assert_eq!(s.status, StatusCode::OK);
    let b = api
        .call(Method::GET, "/admin/v1/kv?prefix=b", Some(&root), None)
        .await;
    assert_eq!(b.body["kvs"][0]["value"], "secret");
}

async fn member_id_as(api: &Api, token: &str) -> String {
    api.call(Method::GET, "/admin/v1/cluster", Some(token), None)
        .await
        .body["member_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn cluster_config(dir: &Path, name: &str, client: u16, peer: u16, cluster: &str) -> Config {
    Config::parse_from([
        "pgraftd".to_string(),
        format!("--name={name}"),
        format!("--data-dir={}", dir.display()),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster={cluster}"),
        "--heartbeat-interval=50".into(),
        "--election-timeout=500".into(),
        format!("--admin-token={TOKEN}"),
    ])
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_overview_transfer_through_a_follower_and_a_dead_member() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let cfg = cluster_config(
            &dir.path().join(format!("m{i}")),
            &format!("m{i}"),
            *c,
            *p,
            &cluster,
        );
        nodes.push(Some(Node::start(cfg).await.expect("member starts")));
    }
    let apis: Vec<Api> = nodes
        .iter()
        .map(|n| Api::new(n.as_ref().unwrap().client_addrs[0]))
        .collect();
    // Every member answers and a leader has every follower's progress.
    wait_for(
        "3 healthy members and a leader",
        Duration::from_secs(15),
        || async {
            let o = apis[0].get("/admin/v1/cluster").await.body;
            let ms = o["members"].as_array().cloned().unwrap_or_default();
            ms.len() == 3
                && ms
                    .iter()
                    .all(|m| m["healthy"] == true && !m["name"].as_str().unwrap_or("").is_empty())
                && ms.iter().filter(|m| m["role"] == "leader").count() == 1
                && ms.iter().filter(|m| m["progress"].is_object()).count() == 2
        },
    )
    .await;
    let o = apis[0].get("/admin/v1/cluster").await.body;
    let leader = o["leader"].as_str().unwrap().to_string();
    let ms = o["members"].as_array().unwrap();
    let follower_idx = (0..3)
        .find(|i| {
            nodes[*i].as_ref().unwrap().server.member_id()
                != u64::from_str_radix(&leader, 16).unwrap()
        })
        .unwrap();
    let target = ms
        .iter()
        .find(|m| {
            m["id"] != leader.as_str()
                && m["id"]
                    != format!(
                        "{:x}",
                        nodes[follower_idx].as_ref().unwrap().server.member_id()
                    )
                    .as_str()
        })
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Through a follower that is not the target: forwarded to the leader.
    let t = apis[follower_idx]
        .admin(
            Method::POST,
            "/admin/v1/leader",
            Some(json!({"target": target})),
        )
        .await;
    assert_eq!(t.status, StatusCode::OK, "{:?}", t.body);
    wait_for(
        "the new leader seen everywhere",
        Duration::from_secs(5),
        || async {
            let mut all = true;
            for api in &apis {
                all &= api.get("/admin/v1/cluster").await.body["leader"] == target.as_str();
            }
            all
        },
    )
    .await;
    let h = apis[follower_idx]
        .get("/admin/v1/leader/history")
        .await
        .body;
    assert_eq!(
        h["changes"].as_array().unwrap().last().unwrap()["to"],
        target.as_str(),
        "{h:?}"
    );
    // Without a credential a follower forwards nothing.
    refused(
        &apis[follower_idx]
            .call(
                Method::POST,
                "/admin/v1/leader",
                None,
                Some(json!({"target": leader})),
            )
            .await,
        StatusCode::UNAUTHORIZED,
    );

    // Stop a member that is not asked: it shows unhealthy and unreachable within 5 s.
    let asked = (0..3).find(|i| *i != follower_idx).unwrap();
    let victim = 3 - asked - follower_idx;
    let victim_id = format!("{:x}", nodes[victim].as_ref().unwrap().server.member_id());
    nodes[victim].take().unwrap().stop().await;
    let start = Instant::now();
    wait_for(
        "the stopped member unhealthy",
        Duration::from_secs(5),
        || async {
            let o = apis[asked].get("/admin/v1/cluster").await.body;
            o["members"].as_array().is_some_and(|ms| {
                ms.iter().any(|m| {
                    m["id"] == victim_id.as_str()
                        && m["healthy"] == false
                        && m["reachable"] == false
                })
            })
        },
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(5));
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_values_stops_at_its_byte_budget() {
    let n = with_token().await;
    let api = Api::of(&n);
    for i in 0..4 {
        n.put(&format!("big/{i}"), &"v".repeat(600 * 1024)).await;
    }
    let mut seen = Vec::new();
    let mut path = "/admin/v1/kv?prefix=big/".to_string();
    loop {
        let page = api.get(&path).await;
        assert_eq!(page.status, StatusCode::OK);
        let kvs = page.body["kvs"].as_array().unwrap();
        // 1 MiB of values per page, one value past it at most.
        assert!(!kvs.is_empty() && kvs.len() <= 2, "{}", kvs.len());
        seen.extend(kvs.iter().map(|kv| kv["key"].as_str().unwrap().to_string()));
        if page.body["more"] == false {
            break;
        }
        path = format!(
            "/admin/v1/kv?prefix=big/&start={}&revision={}",
            page.body["next"].as_str().unwrap(),
            page.body["revision"]
        );
    }
    assert_eq!(seen, ["big/0", "big/1", "big/2", "big/3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_voter_stays_without_the_strict_reconfig_check_too() {
    let n = TestNode::start_with(&["--admin-token", TOKEN, "--strict-reconfig-check=false"]).await;
    let api = Api::of(&n);
    let id = member_id(&api).await;
    let start = Instant::now();
    let a = api
        .admin(Method::DELETE, &format!("/admin/v1/members/{id}"), None)
        .await;
    refused(&a, StatusCode::CONFLICT);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "answered at once, not after a timeout"
    );
    let m = api.get("/admin/v1/members").await;
    assert_eq!(m.body["members"][0]["id"], id.as_str());
}
