//! Length-delimited framing for our own protocols.
//!
//! A frame is a 4-byte big-endian length followed by that many payload bytes. Every protocol
//! states its largest frame as a [`MaxFrameSize`] constant; a frame that announces a larger
//! length is refused right after its 4-byte header is read, before any buffer is allocated, so a
//! peer cannot make us reserve memory it never sends.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes in a frame header (a big-endian `u32` length).
pub const FRAME_HEADER_LEN: usize = 4;

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
    /// The stream failed or ended in the middle of a frame.
    #[error("stream error while framing: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for std::io::Error {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::Io(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// Reads one frame, refusing (without allocating) any frame longer than `max`.
pub async fn read_frame<R>(io: &mut R, max: MaxFrameSize) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    io.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header);
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

/// Writes one frame; a payload over `max` is refused before anything is written.
pub async fn write_frame<W>(io: &mut W, payload: &[u8], max: MaxFrameSize) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
{
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= max.bytes())
        .ok_or(FrameError::TooLarge {
            announced: payload.len() as u64,
            limit: max.bytes(),
        })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(payload).await?;
    io.flush().await?;
    Ok(())
}

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
        let mut buf = Cursor::new(u32::MAX.to_be_bytes().to_vec());
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
        let mut bytes = 8u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let mut buf = Cursor::new(bytes);
        assert!(matches!(
            block_on(read_frame(&mut buf, LIMIT)),
            Err(FrameError::Io(_))
        ));
    }
}
