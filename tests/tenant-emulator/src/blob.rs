//! File content of any size: small files stay in memory; an upload that grows past
//! [`SPILL_AT`] streams into a file in the state directory. Either way a running SHA-256 is
//! kept, so tests compare a 10 GiB file's hash without reading it back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Uploads larger than this go to disk.
pub const SPILL_AT: usize = 64 * 1024 * 1024;

/// A file's bytes as stored.
#[derive(Clone, Debug)]
pub enum Content {
    /// In memory.
    Mem(Bytes),
    /// In a file of the state directory.
    Disk(Arc<Spilled>),
}

/// A spilled file; deleted with its last [`Content`].
#[derive(Debug)]
pub struct Spilled {
    pub path: PathBuf,
    pub len: u64,
    pub sha256: [u8; 32],
}

impl Drop for Spilled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Default for Content {
    fn default() -> Self {
        Content::Mem(Bytes::new())
    }
}

impl From<Bytes> for Content {
    fn from(b: Bytes) -> Self {
        Content::Mem(b)
    }
}

impl From<Vec<u8>> for Content {
    fn from(v: Vec<u8>) -> Self {
        Content::Mem(Bytes::from(v))
    }
}

impl Content {
    pub fn len(&self) -> usize {
        match self {
            Content::Mem(b) => b.len(),
            Content::Disk(s) => s.len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes (read from disk for a spilled file: only for files a test can hold).
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Content::Mem(b) => b.to_vec(),
            Content::Disk(s) => std::fs::read(&s.path).unwrap_or_default(),
        }
    }

    /// Hex SHA-256 of the bytes.
    pub fn sha256_hex(&self) -> String {
        match self {
            Content::Mem(b) => hex::encode(Sha256::digest(b)),
            Content::Disk(s) => hex::encode(s.sha256),
        }
    }

    /// Writes the content to `target` (a hard link for a spilled file: no second copy).
    pub fn write_to(&self, target: &Path) -> std::io::Result<()> {
        // Never write through an existing name: it may be a link to a spilled file.
        let _ = std::fs::remove_file(target);
        match self {
            Content::Mem(b) => std::fs::write(target, b),
            Content::Disk(s) => std::fs::hard_link(&s.path, target)
                .or_else(|_| std::fs::copy(&s.path, target).map(|_| ())),
        }
    }
}

/// An upload in progress: appends chunks, spilling to `dir` once large.
pub struct Spool {
    dir: PathBuf,
    mem: Vec<u8>,
    file: Option<(std::fs::File, PathBuf)>,
    len: u64,
    sha: Sha256,
}

impl Spool {
    pub fn new(dir: &Path) -> Self {
        Spool {
            dir: dir.to_path_buf(),
            mem: Vec::new(),
            file: None,
            len: 0,
            sha: Sha256::new(),
        }
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
        if self.file.is_none() && self.mem.len() + bytes.len() > SPILL_AT {
            std::fs::create_dir_all(&self.dir)?;
            let path = self
                .dir
                .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some((f, path));
        }
        match &mut self.file {
            Some((f, _)) => f.write_all(bytes),
            None => {
                self.mem.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    pub fn finish(mut self) -> Content {
        match self.file.take() {
            None => Content::Mem(Bytes::from(std::mem::take(&mut self.mem))),
            Some((f, path)) => {
                drop(f);
                Content::Disk(Arc::new(Spilled {
                    path,
                    len: self.len,
                    sha256: std::mem::take(&mut self.sha).finalize().into(),
                }))
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // A cancelled or abandoned upload leaves nothing on disk (a finished one moved its file
        // into a `Spilled`, which took the path).
        if let Some((_, path)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_uploads_spill_and_keep_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path());
        let block = vec![7u8; 1024 * 1024];
        let mut h = Sha256::new();
        for _ in 0..(SPILL_AT / block.len() + 2) {
            s.append(&block).unwrap();
            h.update(&block);
        }
        let c = s.finish();
        assert!(matches!(c, Content::Disk(_)));
        assert_eq!(c.len(), SPILL_AT + 2 * block.len());
        assert_eq!(c.sha256_hex(), hex::encode(h.finalize()));
        let target = dir.path().join("copy");
        c.write_to(&target).unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().len(), c.len() as u64);
        let Content::Disk(sp) = &c else {
            unreachable!()
        };
        let path = sp.path.clone();
        drop(c);
        assert!(!path.exists());
    }
}
