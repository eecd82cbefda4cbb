//! Raft snapshots between peers: the MsgSnapshot (without data), then the snapshot
//! file's length and bytes, on a stream of their own. The file is read and written in
//! chunks, never held whole in memory.

use std::sync::Arc;
use std::time::Duration;

use raft::prelude::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Inner, Link, STREAM_SNAPSHOT, framing, hex};

const CHUNK: usize = 256 * 1024;
/// quinn stream priority of snapshot streams; higher values are sent first.
const SNAPSHOT_PRIORITY: i32 = -1;
/// How long a snapshot may wait for a connection to its peer.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Streams the snapshot that `msg` names (its data is the local file path), then tells
/// Raft whether it arrived.
pub(super) async fn send(inner: Arc<Inner>, link: Arc<Link>, msg: Message) {
    let to = msg.to;
    let ok = match send_inner(&link, msg).await {
        Ok(bytes) => {
            tracing::info!(peer = %hex(to), bytes, "sent snapshot");
            true
        }
        Err(e) => {
            tracing::warn!(peer = %hex(to), error = %e, "failed to send snapshot");
            false
        }
    };
    if let Some(node) = inner.node.get() {
        node.report_snapshot(to, ok);
    }
}

async fn send_inner(link: &Link, mut msg: Message) -> Result<u64, String> {
    let path = String::from_utf8(msg.get_snapshot().data.to_vec()).map_err(|e| e.to_string())?;
    msg.mut_snapshot().data = Default::default();
    let mut conns = link.conn.subscribe();
    let conn = tokio::time::timeout(CONNECT_WAIT, conns.wait_for(|c| c.is_some()))
        .await
        .map_err(|_| "no connection to the peer".to_string())?
        .map_err(|e| e.to_string())?
        .clone()
        .expect("waited for a connection");
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().await.map_err(|e| e.to_string())?.len();
    let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
    // Below the Raft message stream (priority 0): a snapshot of many megabytes must not
    // delay heartbeats and appends queued behind it on the same connection.
    let _ = stream.set_priority(SNAPSHOT_PRIORITY);
    let mut head = vec![STREAM_SNAPSHOT];
    framing::encode_into(&msg, &mut head);
    head.extend_from_slice(&len.to_be_bytes());
    stream.write_all(&head).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{path} shrank while being sent"));
        }
        stream
            .write_all(&buf[..n])
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    stream.finish().map_err(|e| e.to_string())?;
    // Done when the peer has read everything (it stops the stream after writing).
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.stopped()).await;
    Ok(sent)
}

/// Receives a snapshot into a file and hands the message, now naming that file, to
/// the node.
pub(super) async fn receive(inner: Arc<Inner>, peer: u64, mut stream: quinn::RecvStream) {
    match receive_inner(&inner, peer, &mut stream).await {
        Ok(msg) => {
            if let Some(node) = inner.node.get() {
                node.step(msg);
            }
        }
        Err(e) => tracing::warn!(peer = %hex(peer), error = %e, "failed to receive snapshot"),
    }
    let _ = stream.stop(0u32.into());
}

async fn receive_inner(
    inner: &Inner,
    peer: u64,
    stream: &mut quinn::RecvStream,
) -> Result<Message, String> {
    let mut buf = Vec::new();
    let mut msg = framing::read_message(stream, &mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if msg.from != peer || msg.to != inner.local_id {
        return Err("snapshot with foreign addresses".into());
    }
    let mut len = [0u8; 8];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| e.to_string())?;
    let len = u64::from_be_bytes(len);
    tokio::fs::create_dir_all(&inner.snapshot_dir)
        .await
        .map_err(|e| e.to_string())?;
    let index = msg.get_snapshot().get_metadata().index;
    // A file of its own per transfer: the leader may send the same snapshot again (a
    // joining member's probe answered late), and the second must not overwrite the
    // first while the node installs it.
    static TRANSFER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let transfer = TRANSFER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = inner
        .snapshot_dir
        .join(format!("incoming-{index:016x}-{peer:x}-{transfer}.db"));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut chunk = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < len {
        let want = (len - got).min(CHUNK as u64) as usize;
        stream
            .read_exact(&mut chunk[..want])
            .await
            .map_err(|e| e.to_string())?;
        file.write_all(&chunk[..want])
            .await
            .map_err(|e| e.to_string())?;
        got += want as u64;
    }
    file.sync_all().await.map_err(|e| e.to_string())?;
    tracing::info!(peer = %hex(peer), index, bytes = len, "received snapshot");
    msg.mut_snapshot().data = path.to_string_lossy().into_owned().into_bytes().into();
    Ok(msg)
}
