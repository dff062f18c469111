//! A writer for the `newc` cpio format the kernel unpacks as its initramfs.
//!
//! Entries are written in the order given, with zero timestamps and root ownership, so
//! the same inputs always produce the same archive (and the same image key).

use std::io::{self, Write};

const TRAILER: &str = "TRAILER!!!";

/// Writes an uncompressed newc archive.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len(),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // check
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }

    /// A regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, 0o100000 | (perm & 0o7777), (0, 0), data)
    }

    /// A symbolic link pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, 0o120777, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, 0o020000 | (perm & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, data) triples, the way the kernel does.
    fn parse(mut buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        loop {
            let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
            assert_eq!(&buf[..6], b"070701");
            let mode = hex(&buf[14..22]);
            let size = hex(&buf[54..62]) as usize;
            let namesize = hex(&buf[94..102]) as usize;
            let name = String::from_utf8(buf[110..110 + namesize - 1].to_vec()).unwrap();
            let mut at = 110 + namesize;
            at += (4 - (pos + at) % 4) % 4;
            let data = buf[at..at + size].to_vec();
            at += size;
            at += (4 - (pos + at) % 4) % 4;
            if name == TRAILER {
                return out;
            }
            out.push((name, mode, data));
            pos += at;
            buf = &buf[at..];
        }
    }

    #[test]
    fn round_trip_and_alignment() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin").unwrap();
        w.file("/init", 0o755, b"abc").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "init", "bin/sh", "dev/console"]);
        assert_eq!(entries[1].1, 0o100755);
        assert_eq!(entries[1].2, b"abc");
        assert_eq!(entries[2].2, b"busybox");
        assert_eq!(entries[3].1 & 0o170000, 0o020000);
    }

    #[test]
    fn same_input_same_bytes() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.file("/x", 0o644, b"data").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }
}
