//! Accepts the `:authority` that etcd 3.4's Go client sends.
//!
//! For some commands (`etcdctl endpoint status`, `endpoint hashkv`, `defrag`, ...)
//! etcdctl 3.4 dials a passthrough target and its HTTP/2 requests carry the whole
//! endpoint URL as authority: `:authority: http://10.0.0.1:2379`. etcd's Go server takes
//! that; the `h2` crate under tonic rejects the request as malformed and resets the
//! stream. This adapter sits between the TCP socket and the HTTP/2 server and, in the
//! client-to-server direction only, rewrites such an authority to its `host:port`.
//!
//! Header blocks are HPACK-compressed against a per-connection table, so rewriting one
//! means re-encoding it. The first request of a connection decides: if its authority is
//! fine, the connection is passed through untouched from then on (a gRPC client uses
//! one authority per connection); if not, every header block is decoded and re-encoded
//! with our own encoder, whose table the server's decoder mirrors. Other frames, and
//! connections that are not HTTP/2 at all (HTTP/1 `/health`), pass unchanged.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The server's (h2's default) maximum frame size; re-encoded blocks are split to it.
const MAX_FRAME: usize = 16_384;
/// HPACK's default dynamic table size, which the h2 server keeps.
const TABLE_SIZE: usize = 4096;
/// A header block larger than this is not buffered; the connection is passed through.
const MAX_BLOCK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the client preface; this many bytes matched so far.
    Preface,
    Frames,
    /// Not HTTP/2 (or something we will not touch): bytes go through unchanged.
    Passthrough,
}

/// A client connection whose HTTP/2 request headers are repaired on the way in.
pub struct AuthorityFixingStream<S> {
    inner: S,
    phase: Phase,
    /// Bytes read from the client and not yet processed.
    input: Vec<u8>,
    /// Processed bytes for the server, and how much of them it has taken.
    output: Vec<u8>,
    output_pos: usize,
    decoder: Decoder<'static>,
    encoder: Option<Encoder<'static>>,
    /// A header block waiting for its CONTINUATION frames: stream, END_STREAM, the
    /// original frames' bytes, and the concatenated fragment.
    pending: Option<PendingBlock>,
}

struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    original: Vec<u8>,
    fragment: Vec<u8>,
}

impl<S> AuthorityFixingStream<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFixingStream {
            inner,
            phase: Phase::Preface,
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            decoder: Decoder::new(),
            encoder: None,
            pending: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.output_pos == self.output.len() {
            self.output.clear();
            self.output_pos = 0;
        }
        self.output.extend_from_slice(bytes);
    }

    fn pass_everything(&mut self) {
        self.phase = Phase::Passthrough;
        if let Some(p) = self.pending.take() {
            self.emit(&p.original);
        }
        let rest = std::mem::take(&mut self.input);
        self.emit(&rest);
    }

    /// Moves whatever can be processed from `input` to `output`.
    fn process(&mut self) {
        if self.phase == Phase::Preface {
            let n = self.input.len().min(PREFACE.len());
            if self.input[..n] != PREFACE[..n] {
                self.pass_everything();
                return;
            }
            if n < PREFACE.len() {
                return;
            }
            self.emit(PREFACE);
            self.input.drain(..PREFACE.len());
            self.phase = Phase::Frames;
        }
        if self.phase == Phase::Passthrough {
            self.pass_everything();
            return;
        }
        let mut at = 0;
        while self.input.len() - at >= FRAME_HEADER_LEN {
            let h = &self.input[at..at + FRAME_HEADER_LEN];
            let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            if self.input.len() - at < FRAME_HEADER_LEN + len {
                break;
            }
            let frame_type = h[3];
            let end = at + FRAME_HEADER_LEN + len;
            if frame_type == TYPE_HEADERS || frame_type == TYPE_CONTINUATION {
                let frame = self.input[at..end].to_vec();
                if !self.header_frame(&frame) {
                    self.input.drain(..end);
                    self.pass_everything();
                    return;
                }
            } else {
                // Split borrow: copy the frame out of `input` into `output`.
                let (input, output) = (&self.input, &mut self.output);
                if self.output_pos == output.len() {
                    output.clear();
                    self.output_pos = 0;
                }
                output.extend_from_slice(&input[at..end]);
            }
            at = end;
            if self.phase == Phase::Passthrough {
                self.input.drain(..at);
                self.pass_everything();
                return;
            }
        }
        self.input.drain(..at);
    }

    /// Handles one HEADERS or CONTINUATION frame; false if the connection should no
    /// longer be touched (something we do not understand — the server will judge it).
    fn header_frame(&mut self, frame: &[u8]) -> bool {
        let frame_type = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER_LEN..];
        if frame_type == TYPE_HEADERS {
            if self.pending.is_some() {
                return false;
            }
            if flags & FLAG_PADDED != 0 {
                let Some((&pad, rest)) = payload.split_first() else {
                    return false;
                };
                if pad as usize > rest.len() {
                    return false;
                }
                payload = &rest[..rest.len() - pad as usize];
            }
            if flags & FLAG_PRIORITY != 0 {
                if payload.len() < 5 {
                    return false;
                }
                payload = &payload[5..];
            }
            self.pending = Some(PendingBlock {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                original: frame.to_vec(),
                fragment: payload.to_vec(),
            });
        } else {
            match &mut self.pending {
                Some(p) if p.stream_id == stream_id && p.fragment.len() < MAX_BLOCK => {
                    p.original.extend_from_slice(frame);
                    p.fragment.extend_from_slice(payload);
                }
                _ => return false,
            }
        }
        if flags & FLAG_END_HEADERS == 0 {
            return true;
        }
        let block = self
            .pending
            .take()
            .expect("a pending block was just filled");
        let Ok(mut headers) = self.decoder.decode(&block.fragment) else {
            self.emit(&block.original);
            return false;
        };
        let mut changed = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() != b":authority" {
                continue;
            }
            if let Some(fixed) = authority_of_url(value) {
                *value = fixed;
                changed = true;
            }
        }
        if !changed && self.encoder.is_none() {
            self.emit(&block.original);
            // A gRPC client uses one authority per connection: if the first request
            // needs no repair, none will, and the rest of the connection goes through
            // untouched (decoding every header block would cost a fifth of a busy
            // member's CPU).
            self.phase = Phase::Passthrough;
            return true;
        }
        let mut encoded = Vec::new();
        let encoder = self.encoder.get_or_insert_with(|| {
            // Pin the server's table size to what our encoder assumes.
            let _ = loona_hpack::encoder::encode_integer_into(TABLE_SIZE, 5, 0x20, &mut encoded);
            let mut e = Encoder::new();
            e.set_max_table_size(TABLE_SIZE);
            e
        });
        encoder
            .encode_into(
                headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                &mut encoded,
            )
            .expect("writing to a Vec cannot fail");
        self.emit_header_block(block.stream_id, block.end_stream, &encoded);
        true
    }

    fn emit_header_block(&mut self, stream_id: u32, end_stream: bool, block: &[u8]) {
        let mut chunks = block.chunks(MAX_FRAME).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            let frame_type = if first {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let mut flags = 0;
            if first && end_stream {
                flags |= FLAG_END_STREAM;
            }
            if last {
                flags |= FLAG_END_HEADERS;
            }
            let len = chunk.len();
            let mut header = [0u8; FRAME_HEADER_LEN];
            header[0] = (len >> 16) as u8;
            header[1] = (len >> 8) as u8;
            header[2] = len as u8;
            header[3] = frame_type;
            header[4] = flags;
            header[5..].copy_from_slice(&stream_id.to_be_bytes());
            self.emit(&header);
            self.emit(chunk);
            first = false;
            if last {
                break;
            }
        }
    }
}

/// `http://host:port[/...]` → `host:port`; anything else is left alone.
fn authority_of_url(value: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(value).ok()?;
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    (!host.is_empty()).then(|| host.as_bytes().to_vec())
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixingStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.output_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_pos);
                buf.put_slice(&this.output[this.output_pos..this.output_pos + n]);
                this.output_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.phase == Phase::Passthrough && this.input.is_empty() {
                // Nothing of ours left: read straight into the caller's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // End of stream: hand over anything incomplete as it is.
                this.pass_everything();
                if this.output_pos == this.output.len() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.input.extend_from_slice(rb.filled());
            this.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixingStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFixingStream<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![
            (payload.len() >> 16) as u8,
            (payload.len() >> 8) as u8,
            payload.len() as u8,
            frame_type,
            flags,
        ];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Parses frames back out and decodes their header blocks like the server would.
    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    fn server_view(bytes: &[u8]) -> (Vec<HeaderList>, Vec<Vec<u8>>) {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let (mut blocks, mut data) = (Vec::new(), Vec::new());
        let mut fragment = Vec::new();
        while !rest.is_empty() {
            let len = (rest[0] as usize) << 16 | (rest[1] as usize) << 8 | rest[2] as usize;
            let (t, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + len];
            match t {
                TYPE_HEADERS | TYPE_CONTINUATION => {
                    fragment.extend_from_slice(payload);
                    if flags & FLAG_END_HEADERS != 0 {
                        blocks.push(decoder.decode(&fragment).unwrap());
                        fragment.clear();
                    }
                }
                _ => data.push(payload.to_vec()),
            }
            rest = &rest[9 + len..];
        }
        (blocks, data)
    }

    async fn through_adapter(input: Vec<u8>) -> Vec<u8> {
        // Feed in small pieces to exercise partial frames.
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut fixed = AuthorityFixingStream::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    fn request_headers(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    #[tokio::test]
    async fn rewrites_url_authority_and_keeps_everything_else() {
        let mut client_encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = request_headers("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status");
        let block = client_encoder.encode(first.iter().map(|(n, v)| (&n[..], &v[..])));
        // Split the first block over HEADERS + CONTINUATION.
        let (a, b) = block.split_at(block.len() / 2);
        input.extend(frame(TYPE_HEADERS, 0, 1, a));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"grpc-payload"));
        // The second request reuses the client's table (indexed authority).
        let second = request_headers("http://127.0.0.1:2379", "/etcdserverpb.KV/Range");
        let block = client_encoder.encode(second.iter().map(|(n, v)| (&n[..], &v[..])));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &block));

        let (blocks, data) = server_view(&through_adapter(input).await);
        assert_eq!(blocks.len(), 2);
        for (got, sent) in blocks.iter().zip([&first, &second]) {
            let mut expected = (*sent).clone();
            expected[3].1 = b"127.0.0.1:2379".to_vec();
            assert_eq!(got, &expected);
        }
        assert_eq!(data, vec![Vec::new(), b"grpc-payload".to_vec()]);
    }

    #[tokio::test]
    async fn leaves_proper_requests_byte_for_byte() {
        let mut client_encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        for stream in [1u32, 3, 5] {
            let h = request_headers("127.0.0.1:2379", "/etcdserverpb.KV/Put");
            let block = client_encoder.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"x"));
        }
        assert_eq!(through_adapter(input.clone()).await, input);
    }

    #[tokio::test]
    async fn http1_passes_through() {
        let req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
        assert_eq!(through_adapter(req.clone()).await, req);
    }

    #[test]
    fn authority_forms() {
        assert_eq!(
            authority_of_url(b"http://10.0.0.1:2379"),
            Some(b"10.0.0.1:2379".to_vec())
        );
        assert_eq!(authority_of_url(b"https://h:1/x"), Some(b"h:1".to_vec()));
        assert_eq!(authority_of_url(b"10.0.0.1:2379"), None);
    }
}
