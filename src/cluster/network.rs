//! Node-to-node transport: signed JSON requests over HTTP to each node's coordinator port, and
//! openraft's network traits on top of them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::peer_auth::PeerAuth;
use super::types::{NodeInfo, RaftId, TypeConfig};

pub const RAFT_APPEND_PATH: &str = "/internal/raft/append";
pub const RAFT_VOTE_PATH: &str = "/internal/raft/vote";
pub const RAFT_SNAPSHOT_PATH: &str = "/internal/raft/snapshot";

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection was made: the peer cannot have seen the request.
    #[error("cannot connect to peer {addr}: {message}")]
    NotConnected { addr: String, message: String },
    /// The request may or may not have reached the peer.
    #[error("peer {addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    #[error("peer {addr} answered {status}: {body}")]
    Refused {
        addr: String,
        status: u16,
        body: String,
    },
}

/// Sends signed requests to peers' coordinator ports.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    auth: Arc<PeerAuth>,
}

impl PeerClient {
    /// `source_ip`: the address outgoing connections leave from (the coordinator's listen
    /// address when it names one), so peers see traffic from the interface this node serves on.
    pub fn new(auth: Arc<PeerAuth>, source_ip: Option<IpAddr>) -> PeerClient {
        let http = reqwest::Client::builder()
            .local_address(source_ip)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("the HTTP client builds");
        PeerClient { http, auth }
    }

    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let unreachable = |message: String| PeerError::Unreachable {
            addr: addr.to_owned(),
            message,
        };
        let response = self
            .signed_post(addr, path, request)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PeerError::NotConnected {
                        addr: addr.to_owned(),
                        message: e.to_string(),
                    }
                } else {
                    unreachable(e.to_string())
                }
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(PeerError::Refused {
                addr: addr.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| unreachable(format!("bad answer: {e}")))
    }

    fn signed_post<Req: Serialize>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
    ) -> reqwest::RequestBuilder {
        let body = serde_json::to_vec(request).expect("peer requests serialize");
        let signed = self.auth.sign(path, &body, chrono::Utc::now().timestamp());
        let mut builder = self
            .http
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json");
        for (name, value) in signed.pairs() {
            builder = builder.header(name, value);
        }
        builder.body(body)
    }

    /// Sends a signed request whose answer is a long-lived stream: `timeout` bounds the wait for
    /// the answer's headers, the caller bounds the wait for each part of its body.
    pub async fn open<Req: Serialize>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<reqwest::Response, PeerError> {
        let sent = self.signed_post(addr, path, request).send();
        let response = match tokio::time::timeout(timeout, sent).await {
            Err(_) => {
                return Err(PeerError::Unreachable {
                    addr: addr.to_owned(),
                    message: format!("no answer within {} ms", timeout.as_millis()),
                });
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(PeerError::NotConnected {
                    addr: addr.to_owned(),
                    message: e.to_string(),
                });
            }
            Ok(Err(e)) => {
                return Err(PeerError::Unreachable {
                    addr: addr.to_owned(),
                    message: e.to_string(),
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(PeerError::Refused {
                addr: addr.to_owned(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(response)
    }

    /// The plain HTTP client, for forwarding client requests to peers' API ports.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Creates a connection per Raft peer.
pub struct RaftPeers {
    pub client: PeerClient,
}

pub struct RaftPeer {
    client: PeerClient,
    target: RaftId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for RaftPeers {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: RaftId, node: &NodeInfo) -> RaftPeer {
        RaftPeer {
            client: self.client.clone(),
            target,
            addr: node.coordinator_addr.clone(),
        }
    }
}

impl RaftPeer {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<RaftId, NodeInfo, RaftError<RaftId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<RaftId, E>> = self
            .client
            .call(&self.addr, path, request, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RPCError<RaftId, NodeInfo, RaftError<RaftId>>> {
        self.rpc(RAFT_APPEND_PATH, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftId>,
        RPCError<RaftId, NodeInfo, RaftError<RaftId, InstallSnapshotError>>,
    > {
        self.rpc(RAFT_SNAPSHOT_PATH, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RPCError<RaftId, NodeInfo, RaftError<RaftId>>> {
        self.rpc(RAFT_VOTE_PATH, &rpc, &option).await
    }
}
