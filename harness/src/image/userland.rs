//! Host programs packed for the guest: a pipeline's userland (dmsetup, lvm,
//! thin-provisioning-tools, mkfs, a vendor's product directory) with the shared
//! libraries `ldd` finds for each ELF file and the dynamic loader, written as a second
//! newc archive. The kernel unpacks concatenated archives in order, so this one is
//! appended to the image's initramfs at boot ([`crate::vm::BootOptions::initrd_extra`])
//! and the image itself stays as it was built. Nothing is fetched: every file comes from
//! the host (packages `blockwitness setup` installed) or from the scenario's directory.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::CpioWriter;

/// Why a userland could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum UserlandError {
    #[error("{program} is not on this host; install it with: apt-get install {package} (or run `blockwitness setup`)")]
    MissingProgram { program: String, package: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run ldd on {path}")]
    Ldd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} needs {library}, which ldd cannot find on this host")]
    LibraryNotFound { path: PathBuf, library: String },
    #[error("guest path {guest} is not absolute")]
    RelativeGuestPath { guest: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UserlandError + '_ {
    move |source| UserlandError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A host file's bytes, with permission bits.
    Host {
        from: PathBuf,
        perm: u32,
    },
    Bytes {
        data: Vec<u8>,
        perm: u32,
    },
    Symlink {
        target: String,
    },
    Dir,
}

/// A set of files for the guest, by guest path.
#[derive(Clone, Debug, Default)]
pub struct Userland {
    entries: BTreeMap<String, Entry>,
}

/// What `ldd` said about one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linkage {
    /// Not a dynamic executable (static, a script, data).
    Static,
    /// The libraries (resolved host paths) and the loader it needs.
    Dynamic(Vec<PathBuf>),
}

/// Parses `ldd` output: `name => /path (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` lines; `linux-vdso.so.1` has no file. A `not found` names the missing
/// library.
pub fn parse_ldd(text: &str) -> Result<Linkage, String> {
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Linkage::Static);
    }
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                return Err(name.trim().to_string());
            }
            let path = rest.split_whitespace().next().unwrap_or("");
            if path.starts_with('/') {
                libs.push(PathBuf::from(path));
            }
        } else if line.starts_with('/') {
            // The loader: `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            if let Some(path) = line.split_whitespace().next() {
                libs.push(PathBuf::from(path));
            }
        }
    }
    Ok(Linkage::Dynamic(libs))
}

/// Whether a file starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The libraries an ELF file needs, by `ldd`.
pub fn libraries(path: &Path) -> Result<Vec<PathBuf>, UserlandError> {
    if !is_elf(path) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .map_err(|source| UserlandError::Ldd {
            path: path.to_path_buf(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match parse_ldd(&text) {
        Ok(Linkage::Static) => Ok(Vec::new()),
        Ok(Linkage::Dynamic(libs)) => Ok(libs),
        Err(library) => Err(UserlandError::LibraryNotFound {
            path: path.to_path_buf(),
            library,
        }),
    }
}

impl Userland {
    pub fn new() -> Userland {
        Userland::default()
    }

    /// Nothing to pack.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn put(&mut self, guest: &str, entry: Entry) -> Result<(), UserlandError> {
        if !guest.starts_with('/') {
            return Err(UserlandError::RelativeGuestPath {
                guest: guest.to_string(),
            });
        }
        // Every parent directory, so the archive unpacks on its own.
        let mut at = String::new();
        let parts: Vec<&str> = guest.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            at.push('/');
            at.push_str(part);
            self.entries.entry(at.clone()).or_insert(Entry::Dir);
        }
        self.entries.insert(guest.to_string(), entry);
        Ok(())
    }

    /// A host file at `guest`, with the libraries it needs (when it is an ELF file) at
    /// their host paths.
    pub fn program(&mut self, host: &Path, guest: &str) -> Result<(), UserlandError> {
        let meta = std::fs::metadata(host).map_err(io_err(host))?;
        use std::os::unix::fs::PermissionsExt;
        let perm = meta.permissions().mode() & 0o7777;
        for lib in libraries(host)? {
            let lib_guest = lib.display().to_string();
            if !self.entries.contains_key(&lib_guest) {
                self.put(
                    &lib_guest,
                    Entry::Host {
                        from: lib.clone(),
                        perm: 0o755,
                    },
                )?;
            }
        }
        self.put(
            guest,
            Entry::Host {
                from: host.to_path_buf(),
                perm,
            },
        )
    }

    /// A host program found on the host's PATH (or /sbin, /usr/sbin), packed at the same
    /// path in the guest. `package` names what provides it, for the error.
    pub fn host_program(&mut self, name: &str, package: &str) -> Result<PathBuf, UserlandError> {
        let found = find_program(name).ok_or_else(|| UserlandError::MissingProgram {
            program: name.to_string(),
            package: package.to_string(),
        })?;
        let guest = found.display().to_string();
        self.program(&found, &guest)?;
        Ok(found)
    }

    /// A file with the given contents.
    pub fn bytes(&mut self, guest: &str, data: &[u8], perm: u32) -> Result<(), UserlandError> {
        self.put(
            guest,
            Entry::Bytes {
                data: data.to_vec(),
                perm,
            },
        )
    }

    /// A symbolic link.
    pub fn symlink(&mut self, guest: &str, target: &str) -> Result<(), UserlandError> {
        self.put(
            guest,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Every file of host directory `dir` under `guest` (symlinks kept as links), each ELF
    /// file with its libraries.
    pub fn tree(&mut self, dir: &Path, guest: &str) -> Result<(), UserlandError> {
        let mut stack = vec![(dir.to_path_buf(), guest.trim_end_matches('/').to_string())];
        self.put(guest.trim_end_matches('/'), Entry::Dir)?;
        while let Some((host, at)) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&host)
                .map_err(io_err(&host))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_err(&host))?;
            names.sort_by_key(|e| e.file_name());
            for e in names {
                let path = e.path();
                let name = format!("{at}/{}", e.file_name().to_string_lossy());
                let kind = e.file_type().map_err(io_err(&path))?;
                if kind.is_symlink() {
                    let target = std::fs::read_link(&path).map_err(io_err(&path))?;
                    self.symlink(&name, &target.display().to_string())?;
                } else if kind.is_dir() {
                    self.put(&name, Entry::Dir)?;
                    stack.push((path, name));
                } else if kind.is_file() {
                    self.program(&path, &name)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the archive. Directories first, then everything else in path order.
    pub fn write(&self, out: &Path) -> Result<(), UserlandError> {
        let file = std::fs::File::create(out).map_err(io_err(out))?;
        let mut w = CpioWriter::new(BufWriter::new(file));
        for (path, entry) in &self.entries {
            if *entry == Entry::Dir {
                w.dir(path).map_err(io_err(out))?;
            }
        }
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir => {}
                Entry::Host { from, perm } => {
                    let data = std::fs::read(from).map_err(io_err(from))?;
                    w.file(path, *perm, &data).map_err(io_err(out))?;
                }
                Entry::Bytes { data, perm } => w.file(path, *perm, data).map_err(io_err(out))?,
                Entry::Symlink { target } => w.symlink(path, target).map_err(io_err(out))?,
            }
        }
        w.finish().map_err(io_err(out))?;
        Ok(())
    }
}

/// A program on this host: PATH, then the sbin directories (a non-root PATH lacks them).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_read() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibdevmapper.so.1.02.1 => /lib/x86_64-linux-gnu/libdevmapper.so.1.02.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(text),
            Ok(Linkage::Dynamic(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libdevmapper.so.1.02.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]))
        );
        assert_eq!(
            parse_ldd("\tnot a dynamic executable\n"),
            Ok(Linkage::Static)
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n"),
            Err("libfoo.so.1".to_string())
        );
    }

    #[test]
    fn a_host_program_brings_its_libraries_and_parents() {
        let Some(sh) = find_program("ls") else { return };
        let mut u = Userland::new();
        u.program(&sh, "/opt/x/ls").unwrap();
        assert!(u.entries.contains_key("/opt"));
        assert!(u.entries.contains_key("/opt/x"));
        assert!(
            u.entries.keys().any(|k| k.contains("libc.so")),
            "{:?}",
            u.entries.keys()
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("u.cpio");
        u.write(&out).unwrap();
        let data = std::fs::read(&out).unwrap();
        assert!(data.starts_with(b"070701"));
        assert!(u.bytes("relative", b"", 0o644).is_err());
    }
}
