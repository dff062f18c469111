//! Byte-stream connections for the wire protocol: unix sockets, TCP, and character
//! devices such as a virtio-serial port (`/dev/vportNpM`). Owns address syntax
//! (`unix:/path`, `tcp:host:port`, `dev:/dev/vport0p3`), connecting, listening and
//! deadline-bounded reads and writes.
//!
//! Every descriptor is non-blocking and every wait goes through `poll(2)` with a deadline,
//! so no caller can block forever on a peer that stopped answering.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Where to connect or listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:/path/to/socket`
    Unix(PathBuf),
    /// `tcp:host:port`
    Tcp(String),
    /// `dev:/dev/vport0p3`: a character device; connect only.
    Dev(PathBuf),
}

impl FromStr for Address {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| TransportError::BadAddress {
            input: s.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("expected unix:PATH, tcp:HOST:PORT or dev:PATH"))?;
        if rest.is_empty() {
            return Err(bad("nothing after the scheme"));
        }
        match scheme {
            "unix" => Ok(Address::Unix(PathBuf::from(rest))),
            "dev" => Ok(Address::Dev(PathBuf::from(rest))),
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("tcp address needs HOST:PORT"))?;
                if host.is_empty() {
                    return Err(bad("tcp address has an empty host"));
                }
                port.parse::<u16>()
                    .map_err(|_| bad("tcp port is not a number in 0..=65535"))?;
                Ok(Address::Tcp(rest.to_string()))
            }
            _ => Err(bad("unknown scheme; expected unix, tcp or dev")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(hp) => write!(f, "tcp:{hp}"),
            Address::Dev(p) => write!(f, "dev:{}", p.display()),
        }
    }
}

/// A transport failure, with the peer or address it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("bad transport address {input:?}: {why}")]
    BadAddress { input: String, why: String },
    #[error("connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} on {peer}")]
    Io {
        op: &'static str,
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} on {peer} timed out after {waited:?}")]
    Timeout {
        op: &'static str,
        peer: String,
        waited: Duration,
    },
    #[error("{peer} closed the connection")]
    Closed { peer: String },
    #[error("the host side of {addr} did not connect within {waited:?}")]
    HostNotConnected { addr: String, waited: Duration },
    /// The peer's bytes (or the peer's report of ours) failed a checksum: the stream
    /// can no longer be trusted, so the connection is given up.
    #[error("stream with {peer} damaged in transit: {what}")]
    Damaged { peer: String, what: String },
}

impl TransportError {
    /// Whether this is a lost connection (worth a reconnect) rather than a setup error.
    pub fn is_disconnect(&self) -> bool {
        match self {
            TransportError::Closed { .. }
            | TransportError::Timeout { .. }
            | TransportError::Damaged { .. } => true,
            TransportError::Io { source, .. } => is_disconnect_io(source),
            TransportError::Connect { .. }
            | TransportError::HostNotConnected { .. }
            | TransportError::BadAddress { .. }
            | TransportError::Listen { .. } => false,
        }
    }
}

fn is_disconnect_io(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE)
            | Some(libc::ECONNRESET)
            | Some(libc::ECONNABORTED)
            | Some(libc::ENOTCONN)
            | Some(libc::ETIMEDOUT)
            | Some(libc::EIO)
            | Some(libc::ENODEV)
            | Some(libc::ESHUTDOWN)
    ) || matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

enum Inner {
    Unix(UnixStream),
    Tcp(TcpStream),
    Dev(File),
}

/// Readiness reported by [`Conn::poll`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error condition: the next read returns EOF or the error.
    pub hangup: bool,
}

/// One open connection. Non-blocking underneath; the methods take deadlines.
pub struct Conn {
    inner: Inner,
    peer: String,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        match &self.inner {
            Inner::Unix(s) => s.as_raw_fd(),
            Inner::Tcp(s) => s.as_raw_fd(),
            Inner::Dev(f) => f.as_raw_fd(),
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// poll(2) on one descriptor; `None` timeout waits without limit.
pub fn poll_fd(fd: RawFd, read: bool, write: bool, timeout: Option<Duration>) -> io::Result<Ready> {
    let mut events = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = match timeout {
        None => -1,
        // Round up so a short remaining time does not become a busy loop of 0 ms polls.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let re = pfd.revents;
        return Ok(Ready {
            readable: re & libc::POLLIN != 0,
            writable: re & libc::POLLOUT != 0,
            hangup: re & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        });
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl Conn {
    /// Connects to `addr`, giving up after `timeout`. For a character device this opens
    /// it and waits until the host side is connected (virtio-serial reports a missing
    /// host as POLLHUP).
    pub fn connect(addr: &Address, timeout: Duration) -> Result<Conn, TransportError> {
        let deadline = Instant::now() + timeout;
        let cerr = |source: io::Error| TransportError::Connect {
            addr: addr.to_string(),
            source,
        };
        let inner = match addr {
            Address::Unix(p) => Inner::Unix(UnixStream::connect(p).map_err(cerr)?),
            Address::Tcp(hp) => {
                let addrs: Vec<_> = hp.to_socket_addrs().map_err(cerr)?.collect();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(
                        &a,
                        remaining(deadline).max(Duration::from_millis(1)),
                    ) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or_else(|| cerr(last))?;
                s.set_nodelay(true).map_err(cerr)?;
                Inner::Tcp(s)
            }
            Address::Dev(p) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
                    .open(p)
                    .map_err(cerr)?;
                let start = Instant::now();
                loop {
                    let r = poll_fd(f.as_raw_fd(), false, true, Some(Duration::from_millis(50)))
                        .map_err(cerr)?;
                    if r.writable && !r.hangup {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(TransportError::HostNotConnected {
                            addr: addr.to_string(),
                            waited: start.elapsed(),
                        });
                    }
                    if r.hangup {
                        // POLLHUP returns at once: sleep instead of spinning.
                        std::thread::sleep(Duration::from_millis(50).min(remaining(deadline)));
                    }
                }
                Inner::Dev(f)
            }
        };
        let c = Conn {
            inner,
            peer: addr.to_string(),
        };
        set_nonblocking(c.as_raw_fd()).map_err(cerr)?;
        Ok(c)
    }

    /// Wraps an already connected unix stream (e.g. one end of a socketpair or an
    /// accepted connection).
    pub fn from_unix(s: UnixStream, peer: impl Into<String>) -> io::Result<Conn> {
        s.set_nonblocking(true)?;
        Ok(Conn {
            inner: Inner::Unix(s),
            peer: peer.into(),
        })
    }

    /// Wraps an already connected TCP stream.
    pub fn from_tcp(s: TcpStream, peer: impl Into<String>) -> io::Result<Conn> {
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        Ok(Conn {
            inner: Inner::Tcp(s),
            peer: peer.into(),
        })
    }

    /// Who is at the other end (for messages).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> TransportError {
        TransportError::Io {
            op,
            peer: self.peer.clone(),
            source,
        }
    }

    /// One non-blocking read: `Ok(None)` would block, `Ok(Some(0))` is end of stream.
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, TransportError> {
        loop {
            let r = match &mut self.inner {
                Inner::Unix(s) => s.read(buf),
                Inner::Tcp(s) => s.read(buf),
                Inner::Dev(f) => f.read(buf),
            };
            return match r {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(self.io_err("read", e)),
            };
        }
    }

    /// One non-blocking write: returns the bytes written, 0 when it would block.
    pub fn try_write(&mut self, buf: &[u8]) -> Result<usize, TransportError> {
        loop {
            let r = match &mut self.inner {
                Inner::Unix(s) => s.write(buf),
                Inner::Tcp(s) => s.write(buf),
                Inner::Dev(f) => f.write(buf),
            };
            return match r {
                Ok(0) if !buf.is_empty() => Err(TransportError::Closed {
                    peer: self.peer.clone(),
                }),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(self.io_err("write", e)),
            };
        }
    }

    /// Waits until readable and/or writable, or `timeout` passes (then all flags false).
    pub fn poll(
        &self,
        read: bool,
        write: bool,
        timeout: Option<Duration>,
    ) -> Result<Ready, TransportError> {
        poll_fd(self.as_raw_fd(), read, write, timeout).map_err(|e| self.io_err("poll", e))
    }

    /// Reads at least one byte before `deadline`; `Ok(0)` is end of stream.
    pub fn read_some(
        &mut self,
        buf: &mut [u8],
        deadline: Instant,
    ) -> Result<usize, TransportError> {
        let start = Instant::now();
        loop {
            if let Some(n) = self.try_read(buf)? {
                return Ok(n);
            }
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(TransportError::Timeout {
                    op: "read",
                    peer: self.peer.clone(),
                    waited: start.elapsed(),
                });
            }
            self.poll(true, false, Some(left))?;
        }
    }

    /// Writes all of `buf` before `deadline`.
    pub fn write_all(&mut self, mut buf: &[u8], deadline: Instant) -> Result<(), TransportError> {
        let start = Instant::now();
        while !buf.is_empty() {
            let n = self.try_write(buf)?;
            if n > 0 {
                buf = &buf[n..];
                continue;
            }
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(TransportError::Timeout {
                    op: "write",
                    peer: self.peer.clone(),
                    waited: start.elapsed(),
                });
            }
            let r = self.poll(false, true, Some(left))?;
            if r.hangup && !r.writable {
                return Err(TransportError::Closed {
                    peer: self.peer.clone(),
                });
            }
        }
        Ok(())
    }

    /// Shuts both directions of a socket down (a no-op for devices, which close on drop).
    pub fn shutdown(&self) {
        // Errors are irrelevant here: the connection is being abandoned either way.
        match &self.inner {
            Inner::Unix(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Inner::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Inner::Dev(_) => {}
        }
    }
}

enum ListenerInner {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// A listening socket (unix or TCP) whose accept takes a timeout.
pub struct Listener {
    inner: ListenerInner,
    address: Address,
}

impl Listener {
    /// Binds `addr`. A stale unix socket file at the path is replaced.
    pub fn bind(addr: &Address) -> Result<Listener, TransportError> {
        let lerr = |source: io::Error| TransportError::Listen {
            addr: addr.to_string(),
            source,
        };
        let (inner, address) = match addr {
            Address::Unix(p) => {
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    if m.file_type().is_socket() {
                        // Nobody answering on it means it is left over from a dead server.
                        if UnixStream::connect(p).is_ok() {
                            return Err(lerr(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                "another server is listening on this socket",
                            )));
                        }
                        std::fs::remove_file(p).map_err(lerr)?;
                    }
                }
                let l = UnixListener::bind(p).map_err(lerr)?;
                l.set_nonblocking(true).map_err(lerr)?;
                (ListenerInner::Unix(l, p.clone()), addr.clone())
            }
            Address::Tcp(hp) => {
                let l = TcpListener::bind(hp.as_str()).map_err(lerr)?;
                l.set_nonblocking(true).map_err(lerr)?;
                let local = l.local_addr().map_err(lerr)?;
                (ListenerInner::Tcp(l), Address::Tcp(local.to_string()))
            }
            Address::Dev(_) => {
                return Err(lerr(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a character device cannot listen; connect to it instead",
                )))
            }
        };
        Ok(Listener { inner, address })
    }

    /// The bound address (for TCP with port 0, the real port).
    pub fn address(&self) -> &Address {
        &self.address
    }

    fn fd(&self) -> RawFd {
        match &self.inner {
            ListenerInner::Unix(l, _) => l.as_raw_fd(),
            ListenerInner::Tcp(l) => l.as_raw_fd(),
        }
    }

    /// Accepts one connection, or `Ok(None)` after `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<Conn>, TransportError> {
        let lerr = |source: io::Error| TransportError::Listen {
            addr: self.address.to_string(),
            source,
        };
        let r = poll_fd(self.fd(), true, false, Some(timeout)).map_err(lerr)?;
        if !r.readable {
            return Ok(None);
        }
        let res = match &self.inner {
            ListenerInner::Unix(l, p) => l
                .accept()
                .and_then(|(s, _)| Conn::from_unix(s, format!("unix:{} (accepted)", p.display()))),
            ListenerInner::Tcp(l) => l
                .accept()
                .and_then(|(s, peer)| Conn::from_tcp(s, format!("tcp:{peer}"))),
        };
        match res {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            // The peer gave up between poll and accept: not a listener failure.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(None),
            Err(e) => Err(lerr(e)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenerInner::Unix(_, p) = &self.inner {
            // Best effort: a leftover socket file is replaced by the next bind anyway.
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_syntax() {
        let cases: &[(&str, Option<Address>)] = &[
            (
                "unix:/tmp/x.sock",
                Some(Address::Unix("/tmp/x.sock".into())),
            ),
            (
                "tcp:127.0.0.1:7000",
                Some(Address::Tcp("127.0.0.1:7000".into())),
            ),
            ("tcp:[::1]:7000", Some(Address::Tcp("[::1]:7000".into()))),
            (
                "dev:/dev/vport0p3",
                Some(Address::Dev("/dev/vport0p3".into())),
            ),
            ("tcp:host", None),
            ("tcp::80", None),
            ("tcp:h:99999", None),
            ("ftp:/x", None),
            ("unix:", None),
            ("/tmp/x", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<Address>().ok();
            assert_eq!(&got, want, "{input}");
            if let Some(a) = got {
                assert_eq!(a.to_string(), *input);
            }
        }
    }

    #[test]
    fn unix_roundtrip_with_deadlines() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::Unix(dir.path().join("s"));
        let l = Listener::bind(&addr).unwrap();
        assert!(l
            .accept_timeout(Duration::from_millis(10))
            .unwrap()
            .is_none());
        let mut c = Conn::connect(&addr, Duration::from_secs(1)).unwrap();
        let mut s = l.accept_timeout(Duration::from_secs(1)).unwrap().unwrap();
        let dl = Instant::now() + Duration::from_secs(1);
        c.write_all(b"hello", dl).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read_some(&mut buf, dl).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let e = s
            .read_some(&mut buf, Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
        assert!(e.is_disconnect());
        drop(c);
        assert_eq!(s.read_some(&mut buf, dl).unwrap(), 0);
        // A second bind on a live socket is refused; after drop the path is reusable.
        assert!(Listener::bind(&addr).is_err());
        drop(l);
        Listener::bind(&addr).unwrap();
    }

    /// A pty in raw mode stands in for a virtio-serial port: open by path, non-blocking
    /// reads and writes with deadlines.
    #[test]
    fn character_device_connects_by_path() {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: out-pointers to locals; null termios and winsize are allowed.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                name.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: `slave` is an open tty; the termios struct is initialised by tcgetattr.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave, &mut t), 0);
            libc::cfmakeraw(&mut t);
            assert_eq!(libc::tcsetattr(slave, libc::TCSANOW, &t), 0);
        }
        // SAFETY: openpty wrote a NUL-terminated path into `name`.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let addr: Address = format!("dev:{path}").parse().unwrap();
        let mut c = Conn::connect(&addr, Duration::from_secs(1)).unwrap();
        let dl = Instant::now() + Duration::from_secs(2);
        c.write_all(&[0u8, 1, 2, 255, b'\n', 3], dl).unwrap();
        let mut got = [0u8; 6];
        let mut n = 0;
        while n < 6 {
            // SAFETY: reading into the unfilled tail of a local buffer.
            let r = unsafe { libc::read(master, got[n..].as_mut_ptr().cast(), 6 - n) };
            assert!(r > 0, "read master: {}", io::Error::last_os_error());
            n += r as usize;
        }
        assert_eq!(got, [0u8, 1, 2, 255, b'\n', 3], "bytes must pass unchanged");
        // SAFETY: writing a local buffer to the master.
        assert_eq!(
            unsafe { libc::write(master, b"pong".as_ptr().cast(), 4) },
            4
        );
        let mut buf = [0u8; 8];
        let mut have = 0;
        while have < 4 {
            have += c.read_some(&mut buf[have..], dl).unwrap();
        }
        assert_eq!(&buf[..4], b"pong");
        drop(c);
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(slave);
            libc::close(master);
        }
    }

    #[test]
    fn tcp_port_zero_reports_the_real_port() {
        let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
        let Address::Tcp(hp) = l.address() else {
            panic!("not tcp")
        };
        assert!(!hp.ends_with(":0"), "{hp}");
        let _c = Conn::connect(l.address(), Duration::from_secs(1)).unwrap();
        assert!(l.accept_timeout(Duration::from_secs(1)).unwrap().is_some());
    }
}
