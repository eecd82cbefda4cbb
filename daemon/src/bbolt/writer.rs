//! Writes a bbolt file in one pass: buckets one after another, each bucket's keys in
//! ascending order, leaf pages as they fill, branch pages when the bucket is finished,
//! the root bucket, an empty freelist and the two meta pages last.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use super::*;

pub struct Writer {
    out: BufWriter<File>,
    path: String,
    next_page: u64,
    /// (name, encoded bucket value) of every finished top-level bucket.
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writer {
    /// Starts a bbolt file in `file` (empty, opened for writing); `path` names it in
    /// errors.
    pub fn new(file: File, path: &str) -> Result<Self, BboltError> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Pages 0 and 1 are the meta pages, written last.
        out.write_all(&[0u8; 2 * PAGE_SIZE])
            .map_err(|e| io(path, e))?;
        Ok(Writer {
            out,
            path: path.to_string(),
            next_page: 2,
            buckets: Vec::new(),
        })
    }

    /// Starts a top-level bucket. Buckets may come in any order; keys within one must
    /// ascend.
    pub fn bucket(&mut self, name: &[u8]) -> BucketWriter<'_> {
        BucketWriter {
            name: name.to_vec(),
            tree: Tree::new(),
            writer: self,
        }
    }

    fn write_page(&mut self, page: &[u8]) -> Result<u64, BboltError> {
        debug_assert_eq!(page.len() % PAGE_SIZE, 0);
        let id = self.next_page;
        self.out.write_all(page).map_err(|e| io(&self.path, e))?;
        self.next_page += (page.len() / PAGE_SIZE) as u64;
        Ok(id)
    }

    /// Writes the root bucket, the freelist and the meta pages, and returns the file,
    /// flushed (not synced) and positioned at its end.
    pub fn finish(mut self) -> Result<File, BboltError> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        let mut root = Tree::new();
        for (name, value) in buckets {
            root.push(&mut self, &name, &value, BUCKET_LEAF)?;
        }
        let root_page = match root.finish(&mut self)? {
            Root::Page(id) => id,
            Root::Empty => self.write_page(&leaf_page(0, &[]).0)?,
        };
        let mut freelist = vec![0u8; PAGE_SIZE];
        let freelist_id = self.next_page;
        put_header(&mut freelist, freelist_id, FREELIST_PAGE, 0, 0);
        self.write_page(&freelist)?;
        let high_water = self.next_page;
        let file = self
            .out
            .into_inner()
            .map_err(|e| io(&self.path, e.into_error()))?;
        for txid in 0..2u64 {
            let mut page = vec![0u8; PAGE_SIZE];
            put_header(&mut page, txid, META_PAGE, 0, 0);
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + META_LEN];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root_page.to_le_bytes());
            m[32..40].copy_from_slice(&freelist_id.to_le_bytes());
            m[40..48].copy_from_slice(&high_water.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..56]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            file.write_all_at(&page, txid * PAGE_SIZE as u64)
                .map_err(|e| io(&self.path, e))?;
        }
        let mut file = file;
        file.seek(SeekFrom::End(0)).map_err(|e| io(&self.path, e))?;
        Ok(file)
    }
}

/// One top-level bucket being written.
pub struct BucketWriter<'w> {
    writer: &'w mut Writer,
    name: Vec<u8>,
    tree: Tree,
}

impl BucketWriter<'_> {
    /// Adds a key; keys must ascend strictly.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BboltError> {
        if self
            .tree
            .last_key
            .as_deref()
            .is_some_and(|last| last >= key)
        {
            return Err(BboltError::Unordered {
                bucket: String::from_utf8_lossy(&self.name).into_owned(),
                key: String::from_utf8_lossy(key).into_owned(),
            });
        }
        self.tree.push(self.writer, key, value, 0)
    }

    /// Writes what is left of the bucket and records it in the root bucket.
    pub fn finish(self) -> Result<(), BboltError> {
        let BucketWriter { writer, name, tree } = self;
        let value = match tree.finish(writer)? {
            // bbolt keeps an empty bucket inline: a zero root and an empty leaf page.
            Root::Empty => {
                let mut v = vec![0u8; 16 + PAGE_HEADER];
                put_header(&mut v[16..], 0, LEAF_PAGE, 0, 0);
                v
            }
            Root::Page(id) => {
                let mut v = vec![0u8; 16];
                v[0..8].copy_from_slice(&id.to_le_bytes());
                v
            }
        };
        writer.buckets.push((name, value));
        Ok(())
    }
}

enum Root {
    Empty,
    Page(u64),
}

/// A B+tree built bottom-up: the current leaf's elements, and the first key and page of
/// every leaf written so far.
struct Tree {
    leaf: Vec<(Vec<u8>, Vec<u8>, u32)>,
    leaf_bytes: usize,
    children: Vec<(Vec<u8>, u64)>,
    last_key: Option<Vec<u8>>,
}

impl Tree {
    fn new() -> Self {
        Tree {
            leaf: Vec::new(),
            leaf_bytes: PAGE_HEADER,
            children: Vec::new(),
            last_key: None,
        }
    }

    fn push(
        &mut self,
        w: &mut Writer,
        key: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), BboltError> {
        let size = ELEMENT + key.len() + value.len();
        if !self.leaf.is_empty() && self.leaf_bytes + size > PAGE_SIZE {
            self.flush_leaf(w)?;
        }
        self.leaf_bytes += size;
        self.leaf.push((key.to_vec(), value.to_vec(), flags));
        self.last_key = Some(key.to_vec());
        Ok(())
    }

    fn flush_leaf(&mut self, w: &mut Writer) -> Result<(), BboltError> {
        let (page, _) = leaf_page(w.next_page, &self.leaf);
        let first = self.leaf[0].0.clone();
        let id = w.write_page(&page)?;
        self.children.push((first, id));
        self.leaf.clear();
        self.leaf_bytes = PAGE_HEADER;
        Ok(())
    }

    fn finish(mut self, w: &mut Writer) -> Result<Root, BboltError> {
        if !self.leaf.is_empty() {
            self.flush_leaf(w)?;
        }
        let mut level = std::mem::take(&mut self.children);
        if level.is_empty() {
            return Ok(Root::Empty);
        }
        while level.len() > 1 {
            let mut parents = Vec::new();
            let mut group: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut bytes = PAGE_HEADER;
            for child in level {
                let size = ELEMENT + child.0.len();
                if !group.is_empty() && bytes + size > PAGE_SIZE {
                    let first = group[0].0.clone();
                    let id = w.write_page(&branch_page(w.next_page, &group))?;
                    parents.push((first, id));
                    group.clear();
                    bytes = PAGE_HEADER;
                }
                bytes += size;
                group.push(child);
            }
            let first = group[0].0.clone();
            let id = w.write_page(&branch_page(w.next_page, &group))?;
            parents.push((first, id));
            level = parents;
        }
        Ok(Root::Page(level[0].1))
    }
}

fn put_header(page: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    page[0..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&count.to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

/// A page buffer of whole pages big enough for `used` bytes, and its overflow count.
fn page_buffer(used: usize) -> (Vec<u8>, u32) {
    let pages = used.div_ceil(PAGE_SIZE).max(1);
    (vec![0u8; pages * PAGE_SIZE], (pages - 1) as u32)
}

/// Encodes a leaf page; returns it and its total size in bytes.
pub(super) fn leaf_page(id: u64, elems: &[(Vec<u8>, Vec<u8>, u32)]) -> (Vec<u8>, usize) {
    let used = PAGE_HEADER
        + elems
            .iter()
            .map(|(k, v, _)| ELEMENT + k.len() + v.len())
            .sum::<usize>();
    let (mut page, overflow) = page_buffer(used);
    put_header(&mut page, id, LEAF_PAGE, elems.len() as u16, overflow);
    let mut data = PAGE_HEADER + elems.len() * ELEMENT;
    for (i, (k, v, flags)) in elems.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        page[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&((data - at) as u32).to_le_bytes());
        page[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
        page[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
        page[data..data + k.len()].copy_from_slice(k);
        data += k.len();
        page[data..data + v.len()].copy_from_slice(v);
        data += v.len();
    }
    (page, used)
}

fn branch_page(id: u64, children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let used = PAGE_HEADER
        + children
            .iter()
            .map(|(k, _)| ELEMENT + k.len())
            .sum::<usize>();
    let (mut page, overflow) = page_buffer(used);
    put_header(&mut page, id, BRANCH_PAGE, children.len() as u16, overflow);
    let mut data = PAGE_HEADER + children.len() * ELEMENT;
    for (i, (k, child)) in children.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        page[at..at + 4].copy_from_slice(&((data - at) as u32).to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
        page[data..data + k.len()].copy_from_slice(k);
        data += k.len();
    }
    page
}

fn io(path: &str, source: std::io::Error) -> BboltError {
    BboltError::Io {
        path: path.to_string(),
        source,
    }
}
