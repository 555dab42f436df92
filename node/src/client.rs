//! The command-line client's connection to one node ("entry peer").
//!
//! The client dials with a fresh, ephemeral identity and the network key,
//! speaks only the control and shard protocols (it never joins Kademlia or
//! the gossip, so it never appears in anyone's membership), and drives its
//! small swarm in a background task. Requests carry a oneshot for the reply;
//! the command queue is bounded.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use dynostore_protocol::wire::{ControlRequest, ControlResponse};

use crate::keys::NetworkKey;
use crate::net::{self, ControlBehaviour};

/// Failures of the client connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot reach the node at {addr}: {reason}")]
    Unreachable { addr: Multiaddr, reason: String },
    #[error(
        "no answer from {addr} within {after:?} (is it running, and is the network key right?)"
    )]
    ConnectTimeout { addr: Multiaddr, after: Duration },
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the connection task stopped")]
    Closed,
    #[error("libp2p set-up failed: {0}")]
    Setup(String),
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    control: ControlBehaviour,
    stream: libp2p_stream::Behaviour,
}

type Reply = oneshot::Sender<Result<ControlResponse, ClientError>>;

struct Request {
    request: ControlRequest,
    reply: Reply,
}

/// A connection to one node.
pub struct Client {
    peer: PeerId,
    /// The user token sent with every request (biscuit bytes).
    token: Option<Vec<u8>>,
    tx: mpsc::Sender<Request>,
    streams: libp2p_stream::Control,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Dials `addr` and waits until the connection is established.
    pub async fn connect(
        addr: Multiaddr,
        network_key: Option<&NetworkKey>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let shaper =
            crate::wan::Shaper::from_env().map_err(|e| ClientError::Setup(e.to_string()))?;
        Self::connect_shaped(addr, network_key, timeout, shaper).await
    }

    /// [`Client::connect`] with the WAN emulation of a client at a given
    /// site (`None`: not shaped, whatever the environment says).
    pub async fn connect_shaped(
        addr: Multiaddr,
        network_key: Option<&NetworkKey>,
        timeout: Duration,
        shaper: Option<std::sync::Arc<crate::wan::Shaper>>,
    ) -> Result<Client, ClientError> {
        let key = Keypair::generate_ed25519();
        let transport = net::transport_with(&key, network_key, shaper)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(|_| transport)
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .with_behaviour(|_| ClientBehaviour {
                control: net::control_behaviour(timeout, false),
                stream: libp2p_stream::Behaviour::new(),
            })
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm
            .dial(addr.clone())
            .map_err(|e| ClientError::Unreachable {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let peer = tokio::time::timeout(timeout, wait_connected(&mut swarm, &addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr: addr.clone(),
                after: timeout,
            })??;
        // Remembered so that streams and requests redial after the idle
        // timeout closed the connection (a long-lived client, the sim).
        swarm.add_peer_address(peer, addr.clone());
        let streams = swarm.behaviour().stream.new_control();
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(drive(swarm, peer, rx));
        Ok(Client {
            peer,
            token: None,
            tx,
            streams,
            task,
        })
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Acts with `token` from now on: on every client request, and around
    /// operator requests (`deny`, `scrub`, `status`) as their admin token.
    pub fn with_token(mut self, token: Option<Vec<u8>>) -> Self {
        self.token = token;
        self
    }

    pub fn token(&self) -> Option<&[u8]> {
        self.token.as_deref()
    }

    /// A handle for opening shard streams to the node (or, through it being
    /// connected, to nothing else: the client knows no other addresses).
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Sends one control request and waits for the answer.
    pub async fn control(&self, request: ControlRequest) -> Result<ControlResponse, ClientError> {
        let request = match (&self.token, request) {
            (
                Some(t),
                r @ (ControlRequest::Deny { .. } | ControlRequest::Scrub | ControlRequest::Status),
            ) => ControlRequest::Operator {
                token: t.clone(),
                request: Box::new(r),
            },
            (_, r) => r,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { request, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }
}

async fn wait_connected(
    swarm: &mut Swarm<ClientBehaviour>,
    addr: &Multiaddr,
) -> Result<PeerId, ClientError> {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(ClientError::Unreachable {
                    addr: addr.clone(),
                    reason: error.to_string(),
                })
            }
            _ => {}
        }
    }
}

async fn drive(mut swarm: Swarm<ClientBehaviour>, peer: PeerId, mut rx: mpsc::Receiver<Request>) {
    let mut pending: HashMap<OutboundRequestId, Reply> = HashMap::new();
    loop {
        tokio::select! {
            req = rx.recv() => match req {
                Some(Request { request, reply }) => {
                    let id = swarm.behaviour_mut().control.send_request(&peer, request);
                    pending.insert(id, reply);
                }
                None => return,
            },
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(ClientBehaviourEvent::Control(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                })) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(ClientBehaviourEvent::Control(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                })) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Err(ClientError::Request { peer, reason: error.to_string() }));
                    }
                }
                _ => {}
            },
        }
    }
}
