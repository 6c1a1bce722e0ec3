//! Length-delimited framing, which every protocol of ours reads peer bytes through: frames read
//! off an arbitrary byte stream under an arbitrary limit stay within it, and writing them back
//! gives exactly the bytes they were read from (a length has one encoding only).
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use playergold_net::framing::{
    FrameError, FrameHeader, MaxFrameSize, framed_len, read_frame, write_frame,
};

/// Frames read per input at most (inputs are small; this only bounds the loop).
const MAX_FRAMES: usize = 1_024;

fuzz_target!(|data: &[u8]| {
    let Some((limit, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    // Limits up to 64 KiB, so both sides of the limit are within reach of small inputs.
    let max = MaxFrameSize::new(u32::from(u16::from_be_bytes(*limit)));
    let mut input = Cursor::new(stream);
    let mut consumed = 0;
    for _ in 0..MAX_FRAMES {
        match block_on(read_frame(&mut input, max)) {
            Ok(frame) => {
                assert!(frame.len() <= max.bytes() as usize);
                let mut written = Cursor::new(Vec::new());
                block_on(write_frame(&mut written, &frame, max)).expect("a read frame writes");
                let written = written.into_inner();
                assert_eq!(written.len(), framed_len(frame.len()));
                assert_eq!(&stream[consumed..consumed + written.len()], &written[..]);
                consumed += written.len();
                assert_eq!(input.position() as usize, consumed);
            }
            Err(FrameError::TooLarge { announced, limit }) => {
                assert!(announced > u64::from(limit));
                // Refused from its header alone: nothing past it was read, and the header was
                // the minimal encoding of what it announced.
                let announced = u32::try_from(announced).expect("a header holds a u32");
                let header = FrameHeader::new(announced);
                let end = consumed + header.as_bytes().len();
                assert_eq!(input.position() as usize, end);
                assert_eq!(&stream[consumed..end], header.as_bytes());
                return;
            }
            Err(_) => return,
        }
    }
});
