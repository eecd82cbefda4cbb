//! `Maintenance.Snapshot`: the member's state as an etcd snapshot (see
//! [`crate::etcd_backup::save`]), streamed in chunks as etcd streams it.
//!
//! The file is built on a blocking worker from one read transaction of a read-only
//! connection: the Raft thread never waits for it, and writes go on while it is built.
//! It is then read out by another blocking worker into a bounded channel, so a slow
//! client holds back the reading of the file, not memory.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::ApiContext;
use crate::error::RequestError;
use crate::etcd_backup::save::{CLUSTER_VERSION, write_snapshot};
use crate::proto::etcdserverpb::SnapshotResponse;

/// Bytes per message, as etcd sends them.
const CHUNK: usize = 32 * 1024;
/// Messages read ahead of the client.
const QUEUE: usize = 16;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

pub async fn stream(ctx: &Arc<ApiContext>) -> Result<Response<SnapshotStream>, Status> {
    let dir = ctx
        .readers
        .path()
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let snapshot = ctx
        .read(move |conn| {
            write_snapshot(conn, &dir).map_err(|e| RequestError::Internal(format!("snapshot: {e}")))
        })
        .await?;
    tracing::info!(
        revision = snapshot.revision,
        revisions = snapshot.keys,
        bytes = snapshot.size,
        took = ?started.elapsed(),
        "made a snapshot for a client; sending it"
    );
    let header = ctx.header(snapshot.revision);
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let size = snapshot.size;
    let mut file = snapshot.file;
    tokio::task::spawn_blocking(move || {
        let mut sent = 0u64;
        let mut header = Some(header);
        while sent < size {
            let mut blob = vec![0u8; CHUNK.min((size - sent) as usize)];
            let msg = match file.read_exact(&mut blob) {
                Ok(()) => {
                    sent += blob.len() as u64;
                    Ok(SnapshotResponse {
                        header: header.take(),
                        remaining_bytes: size - sent,
                        blob,
                        // etcd 3.6 repeats the storage version in every message.
                        version: CLUSTER_VERSION.to_string(),
                    })
                }
                Err(e) => Err(Status::internal(format!("snapshot: reading it back: {e}"))),
            };
            let failed = msg.is_err();
            if tx.blocking_send(msg).is_err() || failed {
                // The client went away (or the file could not be read): stop.
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}
