//! Discovery tokens from the operator's side: create one on a running discovery service
//! and ask how many members registered under one, through the same clients the
//! members use (so what `provision` makes is what a member will read).
//!
//! Why here and not in `provision`: the key layout, the v2 keys API and the v3 client
//! settings belong to the discovery protocols; `provision` only decides when to call.

use super::grpc_client;
use super::http_client::Client;
use super::v2::{join_path, parse_discovery_url};
use super::v3::{members_prefix, size_key};
use crate::config::DiscoveryClient;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// What a discovery token lives on.
#[derive(Debug, Clone)]
pub enum Service {
    /// v2 keys API; `url` is the token's full discovery URL (`--discovery`).
    V2 { url: String },
    /// v3 cluster; `token` under `/_etcd/registry/`.
    V3 {
        endpoints: Vec<String>,
        client: Box<DiscoveryClient>,
        token: String,
    },
}

/// The v2 discovery URL of `token` on the v2 keys API at `endpoint` (a client URL),
/// under etcd's convention prefix.
pub fn v2_url(endpoint: &str, token: &str) -> String {
    format!(
        "{}/v2/keys/_etcd/registry/{token}",
        endpoint.trim_end_matches('/')
    )
}

fn on_runtime<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f)
}

/// Creates the token's size key, create-only: an existing token is never overwritten.
/// Blocking.
pub fn create(service: &Service, size: u32) -> Result<(), String> {
    on_runtime(async {
        match service {
            Service::V2 { url } => {
                let u = parse_discovery_url(url).map_err(|e| e.to_string())?;
                let client = Client::new(&u, None).map_err(|e| e.0)?;
                let key = join_path(&[u.path(), "_config", "size"]);
                let form = format!("value={size}");
                let resp = client
                    .request(
                        http::Method::PUT,
                        &format!("{key}?prevExist=false"),
                        Some(form),
                        Some(std::time::Duration::from_secs(5)),
                    )
                    .await
                    .map_err(|e| format!("cannot reach {}: {e}", client.origin()))?;
                match resp.status {
                    200 | 201 => Ok(()),
                    412 => Err(format!("token {url} exists already")),
                    404 => Err(format!(
                        "{} does not serve the v2 keys API (start it with --enable-v2)",
                        client.origin()
                    )),
                    s => Err(format!(
                        "{} answered {s}: {}",
                        client.origin(),
                        String::from_utf8_lossy(&resp.body).trim()
                    )),
                }
            }
            Service::V3 {
                endpoints,
                client,
                token,
            } => {
                let conn = grpc_client::connect(endpoints, 0, client).await?;
                let key = size_key(token).into_bytes();
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Create as i32,
                        key: key.clone(),
                        target_union: Some(TargetUnion::CreateRevision(0)),
                        range_end: vec![],
                    }],
                    success: vec![RequestOp {
                        request: Some(OpRequest::RequestPut(PutRequest {
                            key,
                            value: size.to_string().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                };
                let resp = KvClient::new(conn.channel.clone())
                    .txn(conn.request(txn))
                    .await
                    .map_err(|s| format!("{}: {}", conn.endpoint, s.message()))?
                    .into_inner();
                if resp.succeeded {
                    Ok(())
                } else {
                    Err(format!("token {token} exists already"))
                }
            }
        }
    })
}

/// How many members registered under the token: `None` when the token does not exist
/// (no size key). Blocking.
pub fn registrations(service: &Service) -> Result<Option<usize>, String> {
    on_runtime(async {
        match service {
            Service::V2 { url } => {
                let u = parse_discovery_url(url).map_err(|e| e.to_string())?;
                let client = Client::new(&u, None).map_err(|e| e.0)?;
                let dir = join_path(&[u.path()]);
                let get = |path: String| {
                    let client = &client;
                    async move {
                        client
                            .request(
                                http::Method::GET,
                                &format!("{path}?quorum=false&recursive=false&sorted=false"),
                                None,
                                Some(std::time::Duration::from_secs(5)),
                            )
                            .await
                            .map_err(|e| format!("cannot reach {}: {e}", client.origin()))
                    }
                };
                let size = get(join_path(&[&dir, "_config", "size"])).await?;
                if size.status == 404 {
                    return Ok(None);
                }
                let listing = get(dir).await?;
                let v: serde_json::Value = serde_json::from_slice(&listing.body)
                    .map_err(|_| format!("{url} is not a v2 keys API directory"))?;
                Ok(Some(v["node"]["nodes"].as_array().map_or(0, |n| {
                    n.iter().filter(|n| n["dir"] != true).count()
                })))
            }
            Service::V3 {
                endpoints,
                client,
                token,
            } => {
                let conn = grpc_client::connect(endpoints, 0, client).await?;
                let mut kv = KvClient::new(conn.channel.clone());
                let size = kv
                    .range(conn.request(RangeRequest {
                        key: size_key(token).into_bytes(),
                        count_only: true,
                        ..Default::default()
                    }))
                    .await
                    .map_err(|s| format!("{}: {}", conn.endpoint, s.message()))?
                    .into_inner();
                if size.count == 0 {
                    return Ok(None);
                }
                let prefix = format!("{}/", members_prefix(token)).into_bytes();
                let mut end = prefix.clone();
                *end.last_mut().expect("non-empty") += 1;
                let members = kv
                    .range(conn.request(RangeRequest {
                        key: prefix,
                        range_end: end,
                        count_only: true,
                        ..Default::default()
                    }))
                    .await
                    .map_err(|s| format!("{}: {}", conn.endpoint, s.message()))?
                    .into_inner();
                Ok(Some(members.count as usize))
            }
        }
    })
}

/// A fresh random token: 32 hex digits, as discovery.etcd.io makes them.
pub fn new_token() -> Result<String, String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness available".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_fresh() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(
            v2_url("http://10.0.0.5:2379/", "abc"),
            "http://10.0.0.5:2379/v2/keys/_etcd/registry/abc"
        );
    }
}
