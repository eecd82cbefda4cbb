//! A small tmpfs the test mounts (a disk that can fill up, and grow back), unmounted on
//! drop even when the test fails. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on a fresh directory.
    pub fn mount(mib: u64) -> std::io::Result<Tmpfs> {
        let dir = tempfile::tempdir()?;
        let mut fs = Tmpfs {
            dir,
            mounted: false,
        };
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(fs.dir.path()))?;
        fs.mounted = true;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes its size (`mount -o remount,size=`).
    pub fn resize(&self, mib: u64) -> std::io::Result<()> {
        run(Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path()))
    }

    /// Bytes free on it.
    pub fn free(&self) -> std::io::Result<u64> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.dir.path())
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("df printed no free space"))
    }

    /// Fills it with a file of zeros until only `leave` bytes are free; returns the file.
    pub fn fill_leaving(&self, leave: u64) -> std::io::Result<PathBuf> {
        let file = self.dir.path().join("filler");
        let size = self.free()?.saturating_sub(leave);
        let f = std::fs::File::create(&file)?;
        // tmpfs allocates pages as they are written, not on set_len: write them.
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        w.flush()?;
        Ok(file)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            // Lazy: a process that still has a file open there must not keep it mounted.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn run(cmd: &mut Command) -> std::io::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
