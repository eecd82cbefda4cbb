//! What a data directory holds, to show that something left it untouched.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// Every directory and file below `dir`, each file by its size and a hash of its bytes.
/// SQLite's `-shm` files are left out: any reader rebuilds them, so they say nothing
/// about whether the data changed.
pub fn contents(dir: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                out.insert(p, (0, 0));
            } else if !p.to_string_lossy().ends_with("-shm") {
                let bytes = std::fs::read(&p).unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                out.insert(p, (bytes.len() as u64, h.finish()));
            }
        }
    }
    out
}
