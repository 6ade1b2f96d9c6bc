//! The decoders that read bytes from the network, as plain functions a
//! fuzzer can call (feature `fuzzing`): each takes whatever bytes arrived
//! and must answer with a typed error, never a panic, and never allocate
//! more than the bytes justify. Crates above add their own
//! ([`Decoder`] is the shared shape); the workspace's `tests/decoders.rs`
//! and `cargo xtask fuzz` run them all.

use bytes::{Bytes, BytesMut};
use foca::Codec;
use tokio_util::codec::Decoder as _;

use crate::membership::identity::MemberId;
use crate::transport::frame_codec::FrameCodec;
use crate::transport::tcp::{handshake_hello, handshake_reply};
use crate::{Channel, Envelope, NodeAddr, NodeId};

/// One decoder: its name, the function, and valid inputs to mutate from.
#[derive(Clone)]
pub struct Decoder {
    /// What it decodes, for reports.
    pub name: &'static str,
    /// Decodes `bytes`; an error is a description of why they were refused.
    pub decode: fn(&[u8]) -> Result<(), String>,
    /// Valid encodings (a fuzzer mutates these as well as random bytes).
    pub samples: Vec<Vec<u8>>,
}

/// The cluster crate's network decoders.
pub fn decoders() -> Vec<Decoder> {
    vec![
        Decoder {
            name: "tcp frame stream",
            decode: frame_stream,
            samples: vec![framed(&[b"hello", b""]), framed(&[&[7u8; 40]])],
        },
        Decoder {
            name: "handshake hello",
            decode: |b| handshake_hello(b).map(|_| ()),
            samples: vec![postcard_of(&(
                crate::PROTOCOL_VERSION,
                "cluster",
                3u64,
                "10.0.0.3:7000",
            ))],
        },
        Decoder {
            name: "handshake reply",
            decode: |b| handshake_reply(b).map(|_| ()).map_err(|e| e.to_string()),
            samples: vec![vec![0], postcard_of(&(1u8, "handshake refused"))],
        },
        Decoder {
            name: "envelope",
            decode: |b| {
                Envelope::decode(Bytes::copy_from_slice(b))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            samples: vec![
                Envelope {
                    from: NodeId(1),
                    to: NodeId(2),
                    channel: Channel(9),
                    payload: Bytes::from_static(b"payload"),
                }
                .encode()
                .to_vec(),
            ],
        },
        Decoder {
            name: "membership packet",
            decode: membership_packet,
            samples: vec![membership_sample()],
        },
    ]
}

fn postcard_of<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_default()
}

fn framed(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// A byte stream through the TCP frame codec (4 KiB limit, as before a
/// handshake), each frame then decoded as an envelope, until the first
/// error (where the connection would be closed).
fn frame_stream(bytes: &[u8]) -> Result<(), String> {
    let mut codec = FrameCodec::new(4096);
    let mut buf = BytesMut::from(bytes);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                Envelope::decode(frame.freeze()).map_err(|e| e.to_string())?;
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What foca reads from a packet: a header, then members until the end.
fn membership_packet(bytes: &[u8]) -> Result<(), String> {
    let mut codec = foca::PostcardCodec;
    let mut buf = bytes;
    Codec::<MemberId>::decode_header(&mut codec, &mut buf).map_err(|e| e.to_string())?;
    while !buf.is_empty() {
        Codec::<MemberId>::decode_member(&mut codec, &mut buf).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn membership_sample() -> Vec<u8> {
    let member = |n: u64| MemberId {
        node: NodeId(n),
        addr: NodeAddr(format!("10.0.0.{n}:7000")),
        generation: n,
    };
    let header = foca::Header {
        src: member(1),
        src_incarnation: 0,
        dst: member(2),
        message: foca::Message::Ping(7),
    };
    let mut codec = foca::PostcardCodec;
    let mut out = Vec::new();
    if codec.encode_header(&header, &mut out).is_err() {
        return out;
    }
    let _ = codec.encode_member(
        &foca::Member::new(member(3), 1, foca::State::Alive),
        &mut out,
    );
    out
}
