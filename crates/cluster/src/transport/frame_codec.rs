//! Length-prefixed frames (a 4-byte big-endian length, then the bytes;
//! the wire format of tokio-util's `LengthDelimitedCodec` defaults) whose
//! memory grows only as bytes arrive. `LengthDelimitedCodec` reserves the
//! whole announced frame as soon as it reads the length prefix, so a
//! stranger announcing 4 MiB frames on many connections could make a node
//! allocate 4 MiB each without sending them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

const HEADER: usize = 4;

/// Frames of at most `max` bytes; the limit can change on a live
/// connection (small before the handshake, full after it).
#[derive(Debug, Clone)]
pub(crate) struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    pub(crate) fn new(max: usize) -> Self {
        Self { max }
    }

    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes announced, the limit is {}", self.max),
            ));
        }
        if src.len() < HEADER + len {
            // No reservation: the buffer grows with the bytes that arrive.
            return Ok(None);
        }
        src.advance(HEADER);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|n| *n as usize <= self.max)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("frame of {} bytes, the limit is {}", frame.len(), self.max),
                )
            })?;
        dst.reserve(HEADER + frame.len());
        dst.put_u32(len);
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut codec = FrameCodec::new(16);
        let mut wire = BytesMut::new();
        codec
            .encode(Bytes::from_static(b"hello"), &mut wire)
            .expect("fits");
        codec
            .encode(Bytes::from_static(b""), &mut wire)
            .expect("fits");
        let bytes = wire.freeze();
        let mut src = BytesMut::new();
        let mut frames = Vec::new();
        for b in bytes.iter() {
            src.put_u8(*b);
            while let Some(frame) = codec.decode(&mut src).expect("valid") {
                frames.push(frame);
            }
        }
        assert_eq!(frames, vec![BytesMut::from(&b"hello"[..]), BytesMut::new()]);
    }

    #[test]
    fn an_announced_length_reserves_nothing_and_an_oversized_one_is_refused() {
        let mut codec = FrameCodec::new(4 * 1024 * 1024);
        let mut src = BytesMut::with_capacity(8);
        src.put_u32(4 * 1024 * 1024);
        src.put_u8(1);
        assert!(codec.decode(&mut src).expect("valid so far").is_none());
        assert!(src.capacity() < 1024, "reserved {} bytes", src.capacity());
        codec.set_max(4096);
        let error = codec.decode(&mut src).expect_err("over the limit");
        assert!(error.to_string().contains("4194304"), "{error}");
    }
}
