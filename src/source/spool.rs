//! The DICOM spool: every object the C-STORE SCP receives is written here — to a temporary
//! name, synced, renamed, and the rename synced — **before** the SCP answers success, so an
//! acknowledged image survives a crash or a power cut. The spool folder is then processed
//! like an inbox (renames in are what the watcher sees); whatever is in it at start-up is
//! processed first.
//!
//! Objects arrive as P-DATA fragments and are streamed to disk, never held whole in memory.
//! The limits (`max_bytes` for the folder, `max_object` for one object, and the disk itself)
//! refuse an object with [`SpoolError`], which the SCP turns into an out-of-resources status.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({used} of {max} bytes in use)")]
    Full { used: u64, max: u64 },
    #[error("the object is larger than the {max} bytes allowed (dicom.max_object_mib)")]
    TooLarge { max: u64 },
    #[error("cannot write to the spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// How often (in bytes received) an incoming object re-checks the spool's use.
const CHECK_EVERY: u64 = 1 << 20;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    max_object: u64,
    counter: AtomicU64,
}

impl Spool {
    /// Opens the spool folder, creating it; temporary files left by an interrupted receive
    /// (never acknowledged) are removed.
    pub fn open(dir: &Path, max_bytes: u64, max_object: u64) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".rx-") && name.ends_with(".tmp") {
                warn!(file = %path.display(), "removing an object whose receive was interrupted (it was never acknowledged)");
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            max_object,
            counter: AtomicU64::new(0),
        })
    }

    /// The largest object accepted (`dicom.max_object_mib`).
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the spool's files take now, including objects being received.
    pub fn usage(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
        let path = path.to_owned();
        move |source| SpoolError::Io { path, source }
    }

    /// Starts receiving an object: a temporary file holding the Part 10 header built from
    /// the C-STORE request and the presentation context's transfer syntax.
    /// The object holds the spool (an `Arc`), so that it can move to the thread that writes
    /// it.
    pub fn begin(
        self: &Arc<Self>,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
    ) -> Result<Incoming, SpoolError> {
        let used = self.usage();
        if used >= self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
            });
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".rx-{}-{n}.tmp", std::process::id()));
        let file = File::create(&tmp).map_err(self.io(&tmp))?;
        let mut incoming = Incoming {
            spool: self.clone(),
            tmp,
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            bytes: 0,
            checked_at: 0,
            used_at_start: used,
            n,
        };
        let meta = dicom_object::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(sop_instance)
            .transfer_syntax(transfer_syntax)
            .implementation_class_uid(crate::dicom::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::dicom::IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(|e| SpoolError::Io {
                path: incoming.tmp.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            })?;
        let mut header = Vec::with_capacity(512);
        header.extend_from_slice(&[0u8; 128]);
        header.extend_from_slice(b"DICM");
        meta.write(&mut header).map_err(|e| SpoolError::Io {
            path: incoming.tmp.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        incoming.write(&header)?;
        Ok(incoming)
    }
}

/// An object being received. Dropped without [`Incoming::commit`], its file is removed.
pub struct Incoming {
    spool: Arc<Spool>,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    bytes: u64,
    checked_at: u64,
    used_at_start: u64,
    n: u64,
}

impl Incoming {
    /// Appends a fragment of the data set.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.bytes += data.len() as u64;
        if self.bytes > self.spool.max_object {
            return Err(SpoolError::TooLarge {
                max: self.spool.max_object,
            });
        }
        if self.bytes - self.checked_at >= CHECK_EVERY {
            self.checked_at = self.bytes;
            // Others receive at the same time: look at the folder again.
            self.used_at_start = self.spool.usage().saturating_sub(self.bytes);
        }
        if self.used_at_start + self.bytes > self.spool.max_bytes {
            return Err(SpoolError::Full {
                used: self.used_at_start + self.bytes,
                max: self.spool.max_bytes,
            });
        }
        let file = self.file.as_mut().expect("open until commit");
        file.write_all(data).map_err(self.spool.io(&self.tmp))
    }

    /// Makes the object durable under its final name and returns that name. Only after
    /// this may the SCP answer success.
    pub fn commit(mut self) -> Result<PathBuf, SpoolError> {
        let file = self.file.take().expect("open until commit");
        let file = file.into_inner().map_err(|e| SpoolError::Io {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(self.spool.io(&self.tmp))?;
        drop(file);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // Named by arrival, never by anything inside the object: names reach the logs.
        let name = format!("{millis:015}-{}-{:06}.dcm", std::process::id(), self.n);
        let dest = self.spool.dir.join(name);
        std::fs::rename(&self.tmp, &dest).map_err(self.spool.io(&self.tmp))?;
        let synced = File::open(&self.spool.dir).and_then(|d| d.sync_all());
        if let Err(source) = synced {
            // The name may not be durable: do not claim the object is kept.
            let _ = std::fs::remove_file(&dest);
            return Err(SpoolError::Io {
                path: self.spool.dir.clone(),
                source,
            });
        }
        self.tmp = PathBuf::new();
        Ok(dest)
    }

    /// Bytes received so far, header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn an_object_is_durable_under_its_own_name_and_limits_refuse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".rx-1-0.tmp"), b"interrupted").unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 100_000, 50_000).unwrap());
        assert!(
            !dir.path().join(".rx-1-0.tmp").exists(),
            "stale receives are removed"
        );
        let mut rx = spool.begin(CR, "1.2.3", EXPLICIT_LE).unwrap();
        rx.write(&[1, 2, 3, 4]).unwrap();
        let path = rx.commit().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[128..132], b"DICM");
        assert!(bytes.ends_with(&[1, 2, 3, 4]));
        assert!(path.extension().is_some_and(|e| e == "dcm"));

        let mut big = spool.begin(CR, "1.2.4", EXPLICIT_LE).unwrap();
        let e = big.write(&[0; 60_000]).unwrap_err();
        assert!(matches!(e, SpoolError::TooLarge { .. }), "{e}");
        drop(big);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "a refused object leaves nothing behind");

        let small = Arc::new(Spool::open(dir.path(), 400, 50_000).unwrap());
        let e = small.begin(CR, "1.2.5", EXPLICIT_LE).err().unwrap();
        assert!(matches!(e, SpoolError::Full { .. }), "{e}");
    }
}
