//! Length-delimited framing for our own protocols.
//!
//! ```text
//!   frame = varint(len) ‖ payload[len]        varint: unsigned LEB128, 1–5 bytes, minimal
//!
//!   read_frame:  header byte by byte ─▶ len > max? ─▶ TooLarge (nothing more read)
//!                                   └─ overlong / non-minimal / > u32 ─▶ BadHeader
//!                                   └─ allocate len, read payload ─▶ Ok(payload)
//! ```
//!
//! The length is an unsigned LEB128 varint (the multiformats `unsigned-varint` that libp2p's own
//! protocols use): 1 byte for frames under 128 bytes, 2 under 16 KiB. Most of our frames are
//! announcements and requests of a few bytes, where a fixed 4-byte length was 40% of the frame.
//! Only the minimal encoding of a length is accepted, so a frame has exactly one byte form.
//! Every protocol states its largest frame as a [`MaxFrameSize`] constant; a frame that announces
//! a larger length is refused right after its header is read, before any buffer is allocated, so
//! a peer cannot make us reserve memory it never sends.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most bytes a frame header takes (the varint of `u32::MAX`).
pub const MAX_FRAME_HEADER_LEN: usize = 5;

/// The largest payload one frame of a protocol may carry, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaxFrameSize(u32);

impl MaxFrameSize {
    /// A limit of `bytes` payload bytes.
    pub const fn new(bytes: u32) -> Self {
        Self(bytes)
    }

    /// The limit in bytes.
    pub const fn bytes(self) -> u32 {
        self.0
    }
}

/// The header of a frame: the varint of its payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    bytes: [u8; MAX_FRAME_HEADER_LEN],
    len: u8,
}

impl FrameHeader {
    /// The header of a frame of `payload_len` bytes.
    pub const fn new(payload_len: u32) -> Self {
        let mut bytes = [0u8; MAX_FRAME_HEADER_LEN];
        let mut value = payload_len;
        let mut len = 0;
        loop {
            // The low 7 bits; the cast keeps exactly them.
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                bytes[len] = low;
                len += 1;
                break;
            }
            bytes[len] = low | 0x80;
            len += 1;
        }
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The header's bytes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Bytes a frame of `payload_len` payload bytes takes on the wire, header included.
pub const fn framed_len(payload_len: usize) -> usize {
    let header = if payload_len < 1 << 7 {
        1
    } else if payload_len < 1 << 14 {
        2
    } else if payload_len < 1 << 21 {
        3
    } else if payload_len < 1 << 28 {
        4
    } else {
        5
    };
    header + payload_len
}

/// Errors while reading or writing a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame larger than the protocol allows; it was not read.
    #[error("frame of {announced} bytes exceeds the protocol limit of {limit} bytes")]
    TooLarge {
        /// Length announced in the header.
        announced: u64,
        /// The protocol's limit.
        limit: u32,
    },
    /// The header is not the minimal varint of a length that fits in 32 bits.
    #[error("malformed frame header (a length must be a minimal varint of at most 5 bytes)")]
    BadHeader,
    /// The stream failed or ended in the middle of a frame.
    #[error("stream error while framing: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the peer sent something no honest implementation sends (as opposed to a stream
    /// that failed or ended).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, FrameError::TooLarge { .. } | FrameError::BadHeader)
    }
}

impl From<FrameError> for std::io::Error {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::Io(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// Reads a frame header: a minimal varint of at most [`MAX_FRAME_HEADER_LEN`] bytes whose value
/// fits in a `u32`.
async fn read_header<R>(io: &mut R) -> Result<u32, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut value: u64 = 0;
    for i in 0..MAX_FRAME_HEADER_LEN {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        let byte = byte[0];
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after others is a non-minimal encoding.
            if byte == 0 && i > 0 {
                return Err(FrameError::BadHeader);
            }
            return u32::try_from(value).map_err(|_| FrameError::BadHeader);
        }
    }
    Err(FrameError::BadHeader)
}

/// Reads one frame, refusing (without allocating) any frame longer than `max`.
pub async fn read_frame<R>(io: &mut R, max: MaxFrameSize) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let len = read_header(io).await?;
    if len > max.bytes() {
        return Err(FrameError::TooLarge {
            announced: u64::from(len),
            limit: max.bytes(),
        });
    }
    // `len <= max <= u32::MAX`, which fits in usize on every platform we build for (>= 32 bits).
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await?;
    Ok(payload)
}

/// One whole frame, header and payload, ready to be written; a payload over `max` is refused.
pub fn encode_frame(payload: &[u8], max: MaxFrameSize) -> Result<Vec<u8>, FrameError> {
    let len = checked_len(payload, max)?;
    let header = FrameHeader::new(len);
    let mut frame = Vec::with_capacity(header.as_bytes().len() + payload.len());
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

fn checked_len(payload: &[u8], max: MaxFrameSize) -> Result<u32, FrameError> {
    u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= max.bytes())
        .ok_or(FrameError::TooLarge {
            announced: payload.len() as u64,
            limit: max.bytes(),
        })
}

/// Writes one frame; a payload over `max` is refused before anything is written.
pub async fn write_frame<W>(io: &mut W, payload: &[u8], max: MaxFrameSize) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
{
    if payload.len() <= COALESCE_BYTES {
        // One write: the multiplexer sends header and payload in one frame (and one TLS
        // record), so the peer never holds a header while the payload is still on its way.
        io.write_all(&encode_frame(payload, max)?).await?;
    } else {
        let len = checked_len(payload, max)?;
        io.write_all(FrameHeader::new(len).as_bytes()).await?;
        io.write_all(payload).await?;
    }
    io.flush().await?;
    Ok(())
}

/// Payloads up to this size are copied behind their header and written at once; larger ones
/// span several multiplexer frames anyway and are written after their header without a copy.
const COALESCE_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any byte stream yields a frame within the limit or an error, never a panic.
        #[test]
        fn reading_arbitrary_bytes_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = Cursor::new(bytes);
            if let Ok(frame) = block_on(read_frame(&mut buf, LIMIT)) {
                prop_assert!(frame.len() <= LIMIT.bytes() as usize);
            }
        }

        #[test]
        fn frames_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..=16)) {
            let mut buf = Cursor::new(Vec::new());
            block_on(write_frame(&mut buf, &payload, LIMIT)).expect("fits");
            buf.set_position(0);
            prop_assert_eq!(block_on(read_frame(&mut buf, LIMIT)).expect("frame"), payload);
        }

        /// A frame encoded whole is the bytes `write_frame` writes, and reads back.
        #[test]
        fn encoded_frames_are_written_frames(payload in proptest::collection::vec(any::<u8>(), 0..=16)) {
            let frame = encode_frame(&payload, LIMIT).expect("fits");
            prop_assert_eq!(frame.len(), framed_len(payload.len()));
            let mut written = Cursor::new(Vec::new());
            block_on(write_frame(&mut written, &payload, LIMIT)).expect("fits");
            prop_assert_eq!(&frame, written.get_ref());
            let mut buf = Cursor::new(frame);
            prop_assert_eq!(block_on(read_frame(&mut buf, LIMIT)).expect("frame"), payload);
        }
    }

    #[test]
    fn a_payload_over_the_limit_is_not_encoded() {
        assert!(matches!(
            encode_frame(&[0; 17], LIMIT),
            Err(FrameError::TooLarge {
                announced: 17,
                limit: 16
            })
        ));
    }

    const LIMIT: MaxFrameSize = MaxFrameSize::new(16);

    #[test]
    fn round_trip() {
        let mut buf = Cursor::new(Vec::new());
        block_on(write_frame(&mut buf, b"hello", LIMIT)).expect("fits");
        buf.set_position(0);
        assert_eq!(
            block_on(read_frame(&mut buf, LIMIT)).expect("frame"),
            b"hello"
        );
    }

    #[test]
    fn oversized_frame_refused_before_allocation() {
        // Announces 4 GiB - 1 and sends nothing else: must fail on the header alone.
        let mut buf = Cursor::new(FrameHeader::new(u32::MAX).as_bytes().to_vec());
        match block_on(read_frame(&mut buf, LIMIT)) {
            Err(FrameError::TooLarge { announced, limit }) => {
                assert_eq!(announced, u64::from(u32::MAX));
                assert_eq!(limit, 16);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn oversized_write_refused() {
        let mut buf = Cursor::new(Vec::new());
        let err = block_on(write_frame(&mut buf, &[0; 17], LIMIT)).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(buf.get_ref().is_empty());
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut bytes = FrameHeader::new(8).as_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let mut buf = Cursor::new(bytes);
        assert!(matches!(
            block_on(read_frame(&mut buf, LIMIT)),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn headers_are_minimal_varints() {
        for (len, bytes) in [
            (0u32, &[0x00][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let header = FrameHeader::new(len);
            assert_eq!(header.as_bytes(), bytes, "{len}");
            assert_eq!(framed_len(len as usize), bytes.len() + len as usize);
            let mut buf = Cursor::new(bytes.to_vec());
            assert_eq!(block_on(read_header(&mut buf)).expect("valid"), len);
        }
    }

    #[test]
    fn malformed_headers_are_refused_without_reading_on() {
        for bytes in [
            // Non-minimal: 1 in two bytes, 0 in two bytes.
            &[0x81, 0x00][..],
            &[0x80, 0x00],
            // Over 32 bits.
            &[0xff, 0xff, 0xff, 0xff, 0x1f],
            // Six bytes.
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        ] {
            let mut stream = bytes.to_vec();
            stream.extend_from_slice(&[0u8; 64]);
            let mut buf = Cursor::new(stream);
            let err = block_on(read_frame(&mut buf, LIMIT)).expect_err("malformed");
            assert!(matches!(err, FrameError::BadHeader), "{bytes:?}: {err:?}");
            assert!(err.is_peer_fault());
            assert!(buf.position() as usize <= MAX_FRAME_HEADER_LEN);
        }
    }
}
