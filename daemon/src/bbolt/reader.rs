//! Reads a bbolt file written by etcd (or by [`super::Writer`]): its top-level buckets
//! and their keys in order. Every page reference and element is bounds-checked against
//! the file, so a truncated or damaged file is an error naming it, never a panic.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;

/// Deepest B+tree accepted: a real bbolt tree of any size is far shallower, so deeper
/// means a page cycle in a damaged file.
const MAX_DEPTH: usize = 32;

/// What a walk hands each leaf element: key, value, element flags.
type Visit<'a> = dyn FnMut(&[u8], &[u8], u32) -> Result<(), BboltError> + 'a;

pub struct Reader {
    file: File,
    path: String,
    page_size: usize,
    /// Bytes of the file that are the database (a trailing sha256 excluded).
    len: u64,
    high_water: u64,
    root: u64,
}

/// Where a bucket's tree is: a root page, or the bucket's only leaf page inline in its
/// parent.
#[derive(Debug, Clone)]
pub enum Bucket {
    Page(u64),
    Inline(Vec<u8>),
}

impl Reader {
    /// Opens `path` and checks its meta pages. A file whose size is a whole number of
    /// 512-byte blocks plus 32 bytes is taken, as etcd takes it, to be a snapshot with a
    /// sha256 of the rest appended; that sha256 must match.
    pub fn open(path: &Path) -> Result<Reader, BboltError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| BboltError::Io {
            path: name.clone(),
            source: e,
        })?;
        let mut len = file
            .metadata()
            .map_err(|e| BboltError::Io {
                path: name.clone(),
                source: e,
            })?
            .len();
        if len % 512 == 32 {
            len -= 32;
            verify_sha256(&file, &name, len)?;
        }
        let not_bbolt = |reason: String| BboltError::NotBbolt {
            path: name.clone(),
            reason,
        };
        if len < (PAGE_HEADER + META_LEN) as u64 {
            return Err(not_bbolt(format!("only {len} bytes long")));
        }
        let mut first = vec![0u8; PAGE_HEADER + META_LEN];
        file.read_exact_at(&mut first, 0)
            .map_err(|e| BboltError::Io {
                path: name.clone(),
                source: e,
            })?;
        let meta0 = parse_meta(&first[PAGE_HEADER..]);
        // The second meta page is one page further; its size comes from the first, or,
        // if the first is damaged, is bbolt's default.
        let page_size = match &meta0 {
            Ok(m) => m.page_size,
            Err(_) => PAGE_SIZE,
        };
        let mut second = vec![0u8; PAGE_HEADER + META_LEN];
        let meta1 = match file.read_exact_at(&mut second, page_size as u64) {
            Ok(()) => parse_meta(&second[PAGE_HEADER..]),
            Err(_) => Err("no second meta page".to_string()),
        };
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(e), Err(_)) => return Err(not_bbolt(e)),
        };
        if meta.page_size < 512 || !meta.page_size.is_power_of_two() {
            return Err(not_bbolt(format!("page size {}", meta.page_size)));
        }
        let reader = Reader {
            file,
            path: name,
            page_size: meta.page_size,
            len,
            high_water: meta.high_water,
            root: meta.root,
        };
        let needed = meta.high_water.saturating_mul(meta.page_size as u64);
        if needed > len {
            return Err(BboltError::Truncated {
                path: reader.path.clone(),
                reason: format!(
                    "it holds {} pages of {} bytes ({needed} bytes) but is {len} bytes long",
                    meta.high_water, meta.page_size
                ),
            });
        }
        Ok(reader)
    }

    /// The top-level buckets, by name, in name order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, Bucket)>, BboltError> {
        let mut out = Vec::new();
        self.walk(&Bucket::Page(self.root), &mut |k, v, flags| {
            if flags & BUCKET_LEAF != 0 {
                out.push((k.to_vec(), self.bucket_value(k, v)?));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>, BboltError> {
        Ok(self
            .buckets()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b))
    }

    /// Every key and value of `bucket` in key order (nested buckets skipped), handed to
    /// `visit`, whose error stops the walk.
    pub fn for_each<E: From<BboltError>>(
        &self,
        bucket: &Bucket,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut failed = None;
        let walked = self.walk(bucket, &mut |k, v, flags| {
            if flags & BUCKET_LEAF == 0
                && let Err(e) = visit(k, v)
            {
                failed = Some(e);
                return Err(self.corrupt("stopped".into()));
            }
            Ok(())
        });
        if let Some(e) = failed {
            return Err(e);
        }
        walked.map_err(E::from)
    }

    fn bucket_value(&self, name: &[u8], v: &[u8]) -> Result<Bucket, BboltError> {
        if v.len() < 16 {
            return Err(self.corrupt(format!(
                "bucket {:?} has a {}-byte header",
                String::from_utf8_lossy(name),
                v.len()
            )));
        }
        let root = u64_at(v, 0);
        Ok(if root == 0 {
            Bucket::Inline(v[16..].to_vec())
        } else {
            Bucket::Page(root)
        })
    }

    fn walk(&self, bucket: &Bucket, visit: &mut Visit<'_>) -> Result<(), BboltError> {
        match bucket {
            Bucket::Inline(page) => self.walk_page(page, 0, visit),
            Bucket::Page(id) => self.walk_id(*id, 0, visit),
        }
    }

    fn walk_id(&self, id: u64, depth: usize, visit: &mut Visit<'_>) -> Result<(), BboltError> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt(format!("B+tree deeper than {MAX_DEPTH} at page {id}")));
        }
        let page = self.page(id)?;
        self.walk_page(&page, depth, visit)
    }

    fn walk_page(
        &self,
        page: &[u8],
        depth: usize,
        visit: &mut Visit<'_>,
    ) -> Result<(), BboltError> {
        if page.len() < PAGE_HEADER {
            return Err(self.corrupt("a page shorter than its header".into()));
        }
        let flags = u16_at(page, 8);
        let count = u16_at(page, 10) as usize;
        let id = u64_at(page, 0);
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(self.corrupt(format!("page {id} has more elements than fit")));
        }
        let slice = |at: usize, len: usize| -> Result<&[u8], BboltError> {
            page.get(at..at.saturating_add(len))
                .ok_or_else(|| self.corrupt(format!("page {id}: an element points past the page")))
        };
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            match flags {
                LEAF_PAGE => {
                    let eflags = u32_at(page, at);
                    let pos = at + u32_at(page, at + 4) as usize;
                    let ksize = u32_at(page, at + 8) as usize;
                    let vsize = u32_at(page, at + 12) as usize;
                    let key = slice(pos, ksize)?;
                    let value = slice(pos + ksize, vsize)?;
                    visit(key, value, eflags)?;
                }
                BRANCH_PAGE => {
                    let child = u64_at(page, at + 8);
                    self.walk_id(child, depth + 1, visit)?;
                }
                other => {
                    return Err(self.corrupt(format!(
                        "page {id} has flags {other:#x} where a leaf or branch page belongs"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, BboltError> {
        if id < 2 || id >= self.high_water {
            return Err(self.corrupt(format!(
                "a reference to page {id}, outside the {} pages it holds",
                self.high_water
            )));
        }
        let start = id * self.page_size as u64;
        let mut header = [0u8; PAGE_HEADER];
        self.read_at(&mut header, start)?;
        if u64_at(&header, 0) != id {
            return Err(self.corrupt(format!("page {id} says it is page {}", u64_at(&header, 0))));
        }
        let pages = u64::from(u32_at(&header, 12)) + 1;
        let bytes = pages * self.page_size as u64;
        if start + bytes > self.len {
            return Err(BboltError::Truncated {
                path: self.path.clone(),
                reason: format!("page {id} ends past the end of the file"),
            });
        }
        let mut page = vec![0u8; bytes as usize];
        self.read_at(&mut page, start)?;
        Ok(page)
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<(), BboltError> {
        if at + buf.len() as u64 > self.len {
            return Err(BboltError::Truncated {
                path: self.path.clone(),
                reason: format!("a page at byte {at} ends past the end of the file"),
            });
        }
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| BboltError::Io {
                path: self.path.clone(),
                source: e,
            })
    }

    fn corrupt(&self, reason: String) -> BboltError {
        BboltError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

struct Meta {
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn parse_meta(m: &[u8]) -> Result<Meta, String> {
    if u32_at(m, 0) != MAGIC {
        return Err("no bbolt magic number at its start".into());
    }
    if u32_at(m, 4) != VERSION {
        return Err(format!("bbolt file format {} (2 expected)", u32_at(m, 4)));
    }
    if fnv1a64(&m[..56]) != u64_at(m, 56) {
        return Err("the meta page checksum does not match".into());
    }
    Ok(Meta {
        page_size: u32_at(m, 8) as usize,
        root: u64_at(m, 16),
        high_water: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

fn verify_sha256(file: &File, path: &str, len: u64) -> Result<(), BboltError> {
    let io = |e| BboltError::Io {
        path: path.to_string(),
        source: e,
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        file.read_exact_at(&mut buf[..n], at).map_err(io)?;
        ctx.update(&buf[..n]);
        at += n as u64;
    }
    let mut trailer = [0u8; 32];
    file.read_exact_at(&mut trailer, len).map_err(io)?;
    if ctx.finish().as_ref() != trailer {
        return Err(BboltError::WrongSha256 {
            path: path.to_string(),
        });
    }
    Ok(())
}
