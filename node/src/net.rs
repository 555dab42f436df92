//! libp2p plumbing shared by the node and the command-line client:
//! transports, the control-protocol codec, and framing on raw streams.
//!
//! Transport: TCP, then Noise (whose prologue, in a private network, is
//! derived from the network key: see `keys`), then Yamux. Without a key,
//! QUIC is offered as well. QUIC's handshake is its own TLS and cannot
//! carry the key, so QUIC is never used in a private network: a QUIC
//! listener would be a door the key does not lock.
//!
//! Every read from the network goes through [`read_frame`] or the control
//! codec, which check the length prefix against the message's limit before
//! reading or allocating anything.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::{noise, tcp, yamux, PeerId, StreamProtocol};
use tokio::sync::oneshot;

use crate::keys::NetworkKey;
use crate::wan::{self, Compat, Shaper};
use dynostore_protocol::wire::{
    ControlRequest, ControlResponse, WireMessage, CLIENT_PROTOCOL, CONTROL_PROTOCOL, SHARD_PROTOCOL,
};

/// Problems building the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("noise configuration failed: {0}")]
    Noise(#[from] noise::Error),
    #[error(transparent)]
    Wan(#[from] crate::wan::WanError),
}

/// The authenticated, multiplexed transport for a client: shaped by the
/// WAN matrix of [`crate::wan::WAN_ENV`] when that is set.
pub fn transport(
    key: &Keypair,
    network_key: Option<&NetworkKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let shaper = crate::wan::Shaper::from_env()?;
    transport_with(key, network_key, shaper)
}

/// The authenticated, multiplexed transport; with a shaper, the TCP
/// connections it dials are shaped ([`crate::wan`]) and QUIC is off.
pub fn transport_with(
    key: &Keypair,
    network_key: Option<&NetworkKey>,
    shaper: Option<Arc<Shaper>>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let tcp_cfg = tcp::Config::default().nodelay(true);
    let mut noise = noise::Config::new(key)?;
    if let Some(nk) = network_key {
        noise = noise.with_prologue(nk.noise_prologue());
    }
    let shaped = shaper.is_some();
    let tcp = tcp::tokio::Transport::new(tcp_cfg)
        .map(move |s, endpoint| match (&shaper, endpoint) {
            (Some(sh), ConnectedPoint::Dialer { address, .. }) => Compat(sh.wrap(s.0, &address)),
            _ => Compat(wan::Either::Plain(s.0)),
        })
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    if network_key.is_some() || shaped {
        return Ok(tcp);
    }
    let quic = libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    Ok(tcp
        .or_transport(quic)
        .map(|either, _| match either {
            Either::Left(out) | Either::Right(out) => out,
        })
        .boxed())
}

pub const fn shard_protocol() -> StreamProtocol {
    StreamProtocol::new(SHARD_PROTOCOL)
}

pub const fn client_protocol() -> StreamProtocol {
    StreamProtocol::new(CLIENT_PROTOCOL)
}

pub const fn control_protocol() -> StreamProtocol {
    StreamProtocol::new(CONTROL_PROTOCOL)
}

/// Request-response over the control protocol with our framing and limits.
pub fn control_behaviour(timeout: Duration, serve: bool) -> ControlBehaviour {
    let support = if serve {
        ProtocolSupport::Full
    } else {
        ProtocolSupport::Outbound
    };
    request_response::Behaviour::with_codec(
        ControlCodec,
        [(control_protocol(), support)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(256),
    )
}

pub type ControlBehaviour = request_response::Behaviour<ControlCodec>;

/// The control codec: one frame each way, see [`read_frame`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlCodec;

impl request_response::Codec for ControlCodec {
    type Protocol = StreamProtocol;
    type Request = ControlRequest;
    type Response = ControlResponse;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ControlRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ControlResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: ControlRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: ControlResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// Reads one `[len][CBOR]` frame, refusing a length above the message's limit
/// before reading the body.
pub async fn read_frame<M: WireMessage, T: AsyncRead + Unpin>(io: &mut T) -> io::Result<M> {
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let len = M::frame_len(prefix).map_err(invalid)?;
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    M::decode(&body).map_err(invalid)
}

/// Writes one frame (does not flush or close).
pub async fn write_frame<M: WireMessage, T: AsyncWrite + Unpin>(
    io: &mut T,
    msg: &M,
) -> io::Result<()> {
    io.write_all(&msg.to_frame()).await
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads exactly `len` bytes of a shard body.
pub async fn read_body<T: AsyncRead + Unpin>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Converts between the protocol's `NodeId` and libp2p's `PeerId`.
pub fn node_id(peer: &PeerId) -> dynostore_protocol::NodeId {
    // A PeerId is a multihash of at most 64 bytes; from_bytes only refuses
    // empty or longer input, which a PeerId never is.
    match dynostore_protocol::NodeId::from_bytes(peer.to_bytes()) {
        Ok(id) => id,
        Err(e) => unreachable!("a PeerId is 1..=64 bytes: {e}"),
    }
}

/// The `PeerId` of a node ID, if it is one.
pub fn peer_id(node: &dynostore_protocol::NodeId) -> Option<PeerId> {
    PeerId::from_bytes(node.as_bytes()).ok()
}

/// What the node's tasks ask of the event loop, which owns the swarm.
pub(crate) enum Command {
    Publish(Vec<u8>),
    Respond {
        channel: ResponseChannel<ControlResponse>,
        response: ControlResponse,
    },
    Request {
        peer: PeerId,
        request: ControlRequest,
        reply: oneshot::Sender<Result<ControlResponse, String>>,
    },
}
