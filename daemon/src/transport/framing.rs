//! Raft messages on a QUIC stream: each one a 4-byte big-endian length, then the message
//! in raft's protobuf encoding. Many messages go out in one write.

use protobuf::Message as _;
use quinn::RecvStream;
use raft::prelude::Message;

/// Larger frames are refused: a peer cannot make us allocate without bound. Raft
/// messages stay far below this (appends are capped at 1 MiB of entries).
pub const MAX_FRAME: usize = 64 << 20;

/// Appends one framed message to `buf`.
pub fn encode_into(msg: &Message, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    msg.write_to_vec(buf)
        .expect("encoding a raft message into a Vec cannot fail");
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream ended")]
    Closed,
    #[error("read: {0}")]
    Read(String),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("undecodable raft message: {0}")]
    Decode(String),
}

/// Reads the next message; `Closed` at a clean end of stream.
pub async fn read_message(r: &mut RecvStream, buf: &mut Vec<u8>) -> Result<Message, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Read(e.to_string())),
    }
    buf.resize(frame_len(len)?, 0);
    r.read_exact(buf)
        .await
        .map_err(|e| FrameError::Read(e.to_string()))?;
    decode_body(buf)
}

/// The length a frame header announces, refused before anything is allocated for it
/// when past [`MAX_FRAME`].
fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// One frame's body: a raft message.
fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    Message::parse_from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raft::prelude::{Entry, MessageType};

    /// The frames of `bytes` as `read_message` reads them from a stream, each answer in
    /// turn until the first error: `Closed` at a clean end, `Read` for a cut frame.
    fn read_all(mut bytes: &[u8]) -> (Vec<Message>, FrameError) {
        let mut out = Vec::new();
        loop {
            if bytes.is_empty() {
                return (out, FrameError::Closed);
            }
            let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
                return (out, FrameError::Read("finished early".into()));
            };
            let len = match frame_len(*header) {
                Ok(l) => l,
                Err(e) => return (out, e),
            };
            let Some((body, rest)) = rest.split_at_checked(len) else {
                return (out, FrameError::Read("finished early".into()));
            };
            match decode_body(body) {
                Ok(m) => out.push(m),
                Err(e) => return (out, e),
            }
            bytes = rest;
        }
    }

    fn message(kind: i32, term: u64, entries: Vec<Vec<u8>>) -> Message {
        let mut m = Message::default();
        let kinds = [
            MessageType::MsgAppend,
            MessageType::MsgAppendResponse,
            MessageType::MsgRequestVote,
            MessageType::MsgHeartbeat,
            MessageType::MsgReadIndex,
        ];
        m.set_msg_type(kinds[kind as usize % kinds.len()]);
        m.term = term;
        m.from = 1;
        m.to = 2;
        m.entries = entries
            .into_iter()
            .map(|data| Entry {
                data: data.into(),
                ..Default::default()
            })
            .collect();
        m
    }

    proptest! {
        /// Garbage: frames, or one clear error; never a panic, never an allocation past
        /// the limit.
        #[test]
        fn garbage_is_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (_, end) = read_all(&bytes);
            if let FrameError::TooLarge(n) = end {
                prop_assert!(n > MAX_FRAME);
            }
        }

        /// Messages survive framing; the same stream cut anywhere inside a frame is a
        /// read error after the whole frames before the cut.
        #[test]
        fn frames_round_trip_and_a_cut_stream_is_an_error(
            msgs in proptest::collection::vec(
                (0i32..19, any::<u64>(), proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3)),
                1..5,
            ),
            cut in any::<proptest::sample::Index>(),
        ) {
            let msgs: Vec<Message> = msgs.into_iter().map(|(k, t, e)| message(k, t, e)).collect();
            let mut buf = Vec::new();
            let mut ends = Vec::new();
            for m in &msgs {
                encode_into(m, &mut buf);
                ends.push(buf.len());
            }
            let (read, end) = read_all(&buf);
            prop_assert!(matches!(end, FrameError::Closed));
            prop_assert_eq!(&read, &msgs);

            let at = cut.index(buf.len());
            let whole = ends.iter().filter(|e| **e <= at).count();
            let (read, end) = read_all(&buf[..at]);
            prop_assert_eq!(&read[..], &msgs[..whole]);
            if ends.contains(&at) || at == 0 {
                prop_assert!(matches!(end, FrameError::Closed));
            } else {
                prop_assert!(matches!(end, FrameError::Read(_)), "{end:?}");
            }
        }

        /// A header announcing more than the limit is refused as it is read.
        #[test]
        fn oversized_lengths_are_refused(len in (MAX_FRAME as u32 + 1)..=u32::MAX) {
            let err = frame_len(len.to_be_bytes()).unwrap_err();
            prop_assert_eq!(err.to_string(), format!("frame of {len} bytes exceeds the limit"));
        }
    }
}
