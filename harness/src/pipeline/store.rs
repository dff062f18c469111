//! The harness's own backup store, for pipelines whose product has no target of its own
//! (dm-snapshot, LVM) or that hand their backup to the harness (an external product's
//! `stream` or `copy`): one image file per volume and generation, written as
//! `gen-NNNNNN.img.partial` and renamed into place only when the generation is
//! committed, so a failed backup leaves the previous generations as they were.

use std::path::{Path, PathBuf};

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
#[error("backup store: {what} {path}")]
pub struct StoreError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Generations by volume under one directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    fn stem(&self, volume: &str, generation: u32) -> PathBuf {
        self.dir
            .join(volume)
            .join(format!("gen-{generation:06}.img"))
    }

    /// Where a generation is written before it is committed.
    pub fn partial(&self, volume: &str, generation: u32) -> PathBuf {
        self.stem(volume, generation).with_extension("img.partial")
    }

    /// A committed generation's image.
    pub fn committed(&self, volume: &str, generation: u32) -> Option<PathBuf> {
        let p = self.stem(volume, generation);
        p.is_file().then_some(p)
    }

    /// The newest committed generation before `generation`.
    pub fn previous(&self, volume: &str, generation: u32) -> Option<(u32, PathBuf)> {
        (1..generation)
            .rev()
            .find_map(|g| self.committed(volume, g).map(|p| (g, p)))
    }

    /// Makes the partial file: a sparse image of `size` bytes, or a copy of `base`.
    pub fn begin(
        &self,
        volume: &str,
        generation: u32,
        size: u64,
        base: Option<&Path>,
    ) -> Result<PathBuf, StoreError> {
        let path = self.partial(volume, generation);
        let dir = path.parent().expect("a stored image has a directory");
        std::fs::create_dir_all(dir).map_err(err("creating", dir))?;
        match base {
            Some(b) => {
                std::fs::copy(b, &path)
                    .map_err(err("copying the previous generation to", &path))?;
            }
            None => {
                let f = std::fs::File::create(&path).map_err(err("creating", &path))?;
                f.set_len(size).map_err(err("sizing", &path))?;
            }
        }
        Ok(path)
    }

    /// Renames the partial file into place.
    pub fn commit(&self, volume: &str, generation: u32) -> Result<PathBuf, StoreError> {
        let from = self.partial(volume, generation);
        let to = self.stem(volume, generation);
        std::fs::rename(&from, &to).map_err(err("committing", &to))?;
        Ok(to)
    }

    /// Drops an uncommitted generation.
    pub fn discard(&self, volume: &str, generation: u32) {
        let _ = std::fs::remove_file(self.partial(volume, generation));
    }

    /// Commits a copy of `image` (a target disk after a `copy`) as a generation.
    pub fn commit_copy(
        &self,
        volume: &str,
        generation: u32,
        image: &Path,
    ) -> Result<PathBuf, StoreError> {
        let path = self.partial(volume, generation);
        let dir = path.parent().expect("a stored image has a directory");
        std::fs::create_dir_all(dir).map_err(err("creating", dir))?;
        std::fs::copy(image, &path).map_err(err("copying the target disk to", &path))?;
        self.commit(volume, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_exists_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let p = s.begin("v", 1, 8192, None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
        assert!(s.committed("v", 1).is_none());
        let c = s.commit("v", 1).unwrap();
        assert_eq!(s.committed("v", 1), Some(c.clone()));
        s.begin("v", 2, 0, Some(&c)).unwrap();
        s.discard("v", 2);
        assert!(s.committed("v", 2).is_none());
        assert_eq!(s.previous("v", 3).map(|(g, _)| g), Some(1));
    }
}
