//! A minimal reader and writer of bbolt files: the single-file B+tree store etcd keeps
//! its backend in (`member/snap/db`) and streams as a snapshot. qetcd needs it only to
//! write a backup once and to read one once, so this is not a database: no transactions,
//! no free-page reuse, no in-place updates.
//!
//! Why not the `bbolt-rs` crate: its library depends, unconditionally, on a command-line
//! parser, a fake-data generator, a random-number generator, a temp-file crate and a
//! dozen more, and it is a full read-write engine built on `unsafe` memory maps. The
//! part qetcd needs, the page layout, is small and fixed (bbolt has kept file format 2
//! since boltdb), and is checked against etcd's own tools by the process-level tests.
//!
//! The layout, all integers little-endian (what bbolt writes on the machines qetcd
//! runs on):
//!
//! - every page starts with a 16-byte header: page id (u64), flags (u16: branch 0x01,
//!   leaf 0x02, meta 0x04, freelist 0x10), element count (u16), overflow (u32: how many
//!   further pages the page spans);
//! - pages 0 and 1 are meta pages: magic `0xED0CDAED`, version 2, page size, flags, the
//!   root bucket (root page, sequence), the freelist page, the high-water page id, the
//!   transaction id and an FNV-1a 64 checksum of the fields before it. Readers take the
//!   valid one with the higher transaction id;
//! - a leaf page holds `count` 16-byte elements (flags, offset of the data from the
//!   element, key size, value size) followed by the keys and values; a branch page holds
//!   16-byte elements (offset, key size, child page id) followed by the first key of
//!   each child;
//! - a bucket is a value (flagged 0x01) in its parent bucket: its root page id and
//!   sequence, and if the root id is 0 the bucket's single leaf page inline after them.
//!   The top-level buckets are the values of the root bucket.

mod reader;
mod writer;

pub use reader::{Bucket, Reader};
pub use writer::{BucketWriter, Writer};

/// The page size qetcd writes (Linux's page size, which bbolt uses by default).
pub const PAGE_SIZE: usize = 4096;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_LEN: usize = 64;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;

/// Leaf element flag: the value is a nested bucket.
const BUCKET_LEAF: u32 = 0x01;

/// Why a file could not be read or written as a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a bbolt database: {reason}")]
    NotBbolt { path: String, reason: String },
    #[error("{path} is truncated: {reason}")]
    Truncated { path: String, reason: String },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "{path}: the sha256 at its end does not match its content (the snapshot is corrupt or incomplete)"
    )]
    WrongSha256 { path: String },
    #[error("bbolt writer: key {key:?} is not after the previous key of bucket {bucket:?}")]
    Unordered { bucket: String, key: String },
}

/// FNV-1a, 64 bits: what bbolt checksums its meta pages with.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests;
