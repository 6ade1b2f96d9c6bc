//! The unit every transport carries, and its byte encoding.
//!
//! A frame is `[protocol version: u8][postcard header][payload bytes]`. The
//! payload is left as raw bytes so higher layers choose their own encoding and
//! decoding a frame never copies it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::NodeId;

/// The wire protocol version; a peer speaking another one is refused.
/// 2: allocations carry their number (the fencing token of durable entities).
/// 3: user messages between regions on their own channel, encoded inline.
pub const PROTOCOL_VERSION: u8 = 3;

/// Which subsystem an envelope is for; each has its own inbox on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Channel(pub u16);

impl Channel {
    /// SWIM membership traffic.
    pub const MEMBERSHIP: Channel = Channel(0);
}

/// A message between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// Subsystem.
    pub channel: Channel,
    /// The subsystem's own bytes.
    pub payload: Bytes,
}

#[derive(Serialize, Deserialize)]
struct Header {
    from: NodeId,
    to: NodeId,
    channel: Channel,
}

/// Why bytes off the wire are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame has no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {found} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// The header could not be decoded.
    #[error("undecodable envelope header: {0}")]
    Header(postcard::Error),
    /// The frame is larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Frame size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// The most bytes a header takes (three varints: two `u64`, one `u16`).
const HEADER_MAX: usize = 24;

/// Writes a frame's version byte and header into `buf`; the payload goes
/// right after them, so a payload can be encoded straight into its frame.
pub(crate) fn put_header(buf: &mut BytesMut, from: NodeId, to: NodeId, channel: Channel) {
    // Postcard's form of `Header`, written byte by byte: on every frame,
    // and a few bytes, which a call to memcpy would cost more than.
    buf.reserve(1 + HEADER_MAX);
    buf.put_u8(PROTOCOL_VERSION);
    put_varint(buf, from.0);
    put_varint(buf, to.0);
    put_varint(buf, u64::from(channel.0));
}

/// Postcard's varint: seven bits a byte, low bits first, the high bit set
/// on every byte but the last.
fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// A postcard serializer writing into a `BytesMut`, for payloads encoded in
/// place: `postcard::serialize_with_flavor(&value, BytesFlavor(buf))`.
pub struct BytesFlavor<'a>(pub &'a mut BytesMut);

impl postcard::ser_flavors::Flavor for BytesFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most pieces are a few bytes (an id, a short string): copied
        // inline rather than through a call to memcpy.
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &byte in data {
                self.0.put_u8(byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl Envelope {
    /// Encodes the envelope as one frame.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(1 + HEADER_MAX + self.payload.len());
        put_header(&mut buf, self.from, self.to, self.channel);
        buf.extend_from_slice(&self.payload);
        buf.freeze()
    }

    /// Decodes one frame; never panics, whatever the bytes.
    pub fn decode(frame: Bytes) -> Result<Self, FrameError> {
        let (&version, rest) = frame.split_first().ok_or(FrameError::Empty)?;
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let (header, payload) =
            postcard::take_from_bytes::<Header>(rest).map_err(FrameError::Header)?;
        // Advanced in place: `slice` would add a reference to the buffer
        // and the frame's drop take it away again (two atomic operations
        // per frame on the connection's task).
        let header_len = frame.len() - payload.len();
        let mut payload = frame;
        payload.advance(header_len);
        Ok(Self {
            from: header.from,
            to: header.to,
            channel: header.channel,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope {
            from: NodeId(3),
            to: NodeId(70_000),
            channel: Channel(9),
            payload: Bytes::from_static(b"hello"),
        };
        let frame = e.encode();
        assert_eq!(frame[0], PROTOCOL_VERSION);
        assert_eq!(Envelope::decode(frame).unwrap(), e);
    }

    #[test]
    fn the_largest_header_fits() {
        let e = Envelope {
            from: NodeId(u64::MAX),
            to: NodeId(u64::MAX),
            channel: Channel(u16::MAX),
            payload: Bytes::from_static(b"x"),
        };
        assert_eq!(Envelope::decode(e.encode()).unwrap(), e);
    }

    #[test]
    fn the_header_written_by_hand_is_postcards() {
        for (from, to, channel) in [
            (0, 0, 0),
            (1, 127, 128),
            (300, 16_384, 1_000),
            (u64::MAX, u64::MAX - 1, u16::MAX),
        ] {
            let (from, to, channel) = (NodeId(from), NodeId(to), Channel(channel));
            let mut buf = BytesMut::new();
            put_header(&mut buf, from, to, channel);
            let expected = postcard::to_stdvec(&Header { from, to, channel }).unwrap();
            assert_eq!(buf[0], PROTOCOL_VERSION);
            assert_eq!(&buf[1..], &expected[..], "{from:?} {to:?} {channel:?}");
        }
    }

    #[test]
    fn typed_errors() {
        assert_eq!(Envelope::decode(Bytes::new()), Err(FrameError::Empty));
        assert_eq!(
            Envelope::decode(Bytes::from_static(&[9, 1, 2, 3])),
            Err(FrameError::UnsupportedVersion { found: 9 })
        );
        assert!(matches!(
            Envelope::decode(Bytes::from_static(&[PROTOCOL_VERSION, 0xff])),
            Err(FrameError::Header(_))
        ));
    }
}
