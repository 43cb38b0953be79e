//! Connections: `--conns` HTTP/2 connections, assigned to the endpoints round-robin;
//! `--target-leader` first asks each endpoint's Maintenance.Status which member leads and keeps
//! only the leader's endpoint. Request loops get [`UnaryConn`]s, watch streams tonic `Channel`s.

use std::future::Future;
use std::time::Duration;

use etcd_proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use tonic::transport::{Channel, Endpoint};

use crate::unary::UnaryConn;

/// `127.0.0.1:2379` or `http://127.0.0.1:2379` becomes a URL tonic can dial.
pub fn endpoint_url(ep: &str) -> String {
    let ep = ep.trim();
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

async fn dial(url: &str, timeout: Duration) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad endpoint {url}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// The endpoint whose member is the Raft leader, by Maintenance.Status.
pub async fn find_leader(urls: &[String], timeout: Duration) -> Result<String, String> {
    for url in urls {
        let Ok(ch) = dial(url, timeout).await else {
            continue;
        };
        let mut mc = MaintenanceClient::new(ch);
        let Ok(Ok(resp)) = tokio::time::timeout(timeout, mc.status(StatusRequest {})).await else {
            continue;
        };
        let resp = resp.into_inner();
        let member = resp.header.map(|h| h.member_id).unwrap_or_default();
        if resp.leader != 0 && resp.leader == member {
            return Ok(url.clone());
        }
    }
    Err(format!("no endpoint in {urls:?} reports itself as leader"))
}

/// The endpoints' URLs, or only the leader's with `target_leader`.
pub async fn resolve(
    endpoints: &[String],
    target_leader: bool,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let urls: Vec<String> = endpoints
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|e| endpoint_url(e))
        .collect();
    if urls.is_empty() {
        return Err("no endpoints given".into());
    }
    if target_leader {
        return Ok(vec![find_leader(&urls, timeout).await?]);
    }
    Ok(urls)
}

/// Opens `conns` tonic channels over `urls`, round-robin.
pub async fn channels(
    urls: &[String],
    conns: usize,
    timeout: Duration,
) -> Result<Vec<Channel>, String> {
    round_robin(urls, conns, |url| async move { dial(&url, timeout).await }).await
}

/// Opens `conns` connections for unary calls over `urls`, round-robin.
pub async fn unary(
    urls: &[String],
    conns: usize,
    timeout: Duration,
) -> Result<Vec<UnaryConn>, String> {
    round_robin(urls, conns, |url| async move {
        UnaryConn::connect(&url, timeout).await
    })
    .await
}

/// `conns` (at least one) connections, the i-th opened by `open` to `urls[i % urls.len()]`.
async fn round_robin<T, Fut>(
    urls: &[String],
    conns: usize,
    open: impl Fn(String) -> Fut,
) -> Result<Vec<T>, String>
where
    Fut: Future<Output = Result<T, String>>,
{
    let mut out = Vec::with_capacity(conns.max(1));
    for i in 0..conns.max(1) {
        out.push(open(urls[i % urls.len()].clone()).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::endpoint_url;

    #[test]
    fn endpoint_urls() {
        assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_url(" http://h:1 "), "http://h:1");
    }
}
