//! `bw-target export`: a committed generation as a raw image, to a file (sparse, written
//! under a temporary name and renamed) or to a stream.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::store::{io_err, sparse_copy, Store, StoreError};

/// Copies generation `generation` of `volume` to `out` (replacing it atomically).
/// Returns the image size.
pub fn export_to_file(
    store: &Store,
    volume: &str,
    generation: u32,
    out: &Path,
) -> Result<u64, StoreError> {
    let (paths, size) = committed(store, volume, generation)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let f = sparse_copy(&paths.img, &tmp)?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    std::fs::rename(&tmp, out).map_err(io_err("rename into place", out))?;
    Ok(size)
}

/// Streams generation `generation` of `volume` to `w` (every byte, holes as zeros).
pub fn export_to_writer(
    store: &Store,
    volume: &str,
    generation: u32,
    w: &mut dyn Write,
) -> Result<u64, StoreError> {
    let (paths, size) = committed(store, volume, generation)?;
    let f = File::open(&paths.img).map_err(io_err("open", &paths.img))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], off)
            .map_err(io_err("read", &paths.img))?;
        w.write_all(&buf[..n]).map_err(|source| StoreError::Io {
            op: "write export stream",
            path: "-".into(),
            source,
        })?;
        off += n as u64;
    }
    w.flush().map_err(|source| StoreError::Io {
        op: "flush export stream",
        path: "-".into(),
        source,
    })?;
    Ok(size)
}

fn committed(
    store: &Store,
    volume: &str,
    generation: u32,
) -> Result<(super::store::GenPaths, u64), StoreError> {
    let m = store
        .manifest(volume, generation)?
        .ok_or_else(|| StoreError::NoGeneration {
            volume: volume.to_string(),
            generation,
        })?;
    let paths = store.paths(volume, generation)?;
    let len = std::fs::metadata(&paths.img)
        .map_err(io_err("stat", &paths.img))?
        .len();
    if len != m.volume_size {
        return Err(StoreError::Io {
            op: "check size of",
            path: paths.img.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("image is {len} bytes, manifest says {}", m.volume_size),
            ),
        });
    }
    Ok((paths, len))
}
