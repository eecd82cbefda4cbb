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
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf)
        .await
        .map_err(|e| FrameError::Read(e.to_string()))?;
    Message::parse_from_bytes(buf).map_err(|e| FrameError::Decode(e.to_string()))
}
