//! Loading kernel modules with their dependencies, without modprobe.
//!
//! The image build writes `/lib/modules/<release>/modules.dep` for the modules it packed;
//! loading a module loads what it depends on first (depth first), each once, by
//! `finit_module`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {0:?} is not in this image's modules.dep")]
    Unknown(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading {path} failed")]
    Load {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("module parameters contain a NUL byte")]
    BadParams,
    #[error("dependency cycle through {0}")]
    Cycle(String),
}

/// The parsed `modules.dep`: module name → (path relative to the modules dir, deps).
#[derive(Debug, Default)]
pub struct DepTable {
    root: PathBuf,
    entries: BTreeMap<String, (String, Vec<String>)>,
}

/// `ext4`, `virtio-blk` and `virtio_blk.ko` all name the same module.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.strip_suffix(".xz").unwrap_or(base);
    let base = base.strip_suffix(".ko").unwrap_or(base);
    base.replace('-', "_")
}

impl DepTable {
    /// Parses modules.dep text; `root` is the directory its paths are relative to.
    pub fn parse(root: &Path, text: &str) -> DepTable {
        let mut entries = BTreeMap::new();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            entries.insert(module_name(module), (module.trim().to_string(), deps));
        }
        DepTable {
            root: root.to_path_buf(),
            entries,
        }
    }

    /// Reads `<root>/modules.dep`.
    pub fn load(root: &Path) -> Result<DepTable, ModuleError> {
        let path = root.join("modules.dep");
        let text = std::fs::read_to_string(&path).map_err(|source| ModuleError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(DepTable::parse(root, &text))
    }

    /// The path (relative to the modules dir) and dependency names of a module.
    pub fn entry(&self, name: &str) -> Option<(&str, &[String])> {
        self.entries
            .get(&module_name(name))
            .map(|(path, deps)| (path.as_str(), deps.as_slice()))
    }

    /// Every module this image can load.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The modules to load for `name`, dependencies first, `name` last.
    pub fn load_order(&self, name: &str) -> Result<Vec<(String, PathBuf)>, ModuleError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        self.visit(&module_name(name), &mut order, &mut done, &mut visiting)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        order: &mut Vec<(String, PathBuf)>,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_string()) {
            return Err(ModuleError::Cycle(name.to_string()));
        }
        let (path, deps) = self
            .entries
            .get(name)
            .ok_or_else(|| ModuleError::Unknown(name.to_string()))?;
        for dep in deps {
            self.visit(dep, order, done, visiting)?;
        }
        visiting.remove(name);
        done.insert(name.to_string());
        order.push((name.to_string(), self.root.join(path)));
        Ok(())
    }
}

/// Loads one module file. A module that is already loaded counts as loaded.
pub fn insmod(path: &Path, params: &str) -> Result<(), ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let params = CString::new(params).map_err(|_| ModuleError::BadParams)?;
    // SAFETY: finit_module reads the open fd and the NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(ModuleError::Load {
                path: path.to_path_buf(),
                source: err,
            });
        }
    }
    Ok(())
}

/// Loads `name` and its dependencies; returns the modules loaded, in order.
pub fn load_with_deps(table: &DepTable, name: &str) -> Result<Vec<String>, ModuleError> {
    let order = table.load_order(name)?;
    for (_, path) in &order {
        insmod(path, "")?;
    }
    Ok(order.into_iter().map(|(n, _)| n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
";

    #[test]
    fn dependencies_come_first_and_once() {
        let t = DepTable::parse(Path::new("/lib/modules/x"), DEP);
        let order: Vec<String> = t
            .load_order("ext4")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(order, ["crc16", "mbcache", "jbd2", "ext4"]);
        let (_, path) = t.load_order("virtio-blk").unwrap().pop().unwrap();
        assert_eq!(
            path,
            Path::new("/lib/modules/x/kernel/drivers/block/virtio_blk.ko")
        );
    }

    #[test]
    fn unknown_modules_and_cycles_are_errors() {
        let t = DepTable::parse(Path::new("/"), "a.ko: b.ko\nb.ko: a.ko\n");
        assert!(matches!(t.load_order("a"), Err(ModuleError::Cycle(_))));
        assert!(matches!(t.load_order("zz"), Err(ModuleError::Unknown(_))));
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(module_name("kernel/fs/xfs/xfs.ko.xz"), "xfs");
        assert_eq!(module_name("dm-snapshot"), "dm_snapshot");
    }
}
