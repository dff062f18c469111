//! One backend's life: open the layers and the history, serve the control socket, wait
//! (with a deadline) for QEMU to connect, serve until the connection ends or a shutdown
//! is asked for, then finish the history.

use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::BlkBackend;
use crate::engine::{Clock, Engine, EngineConfig, FinishError};
use crate::hash::{BLOCK_SIZE, SECTOR_SIZE};
use crate::history::{End, EndReason, Header, HistoryError, HistoryWriter, FORMAT_VERSION};
use crate::layers::{LayerError, LiveLayers};
use crate::schedule::Schedule;

/// The most queues a backend offers (one vring thread each; vhost-user-backend's
/// thread masks are 64 bits).
pub const MAX_QUEUES: u16 = 64;

/// What `bw-disk serve` is given.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub image: PathBuf,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub history: PathBuf,
    pub state_dir: PathBuf,
    pub serial: String,
    pub max_queues: u16,
    pub schedule: Option<Schedule>,
    pub connect_timeout: Duration,
}

/// Why a backend could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid option: {0}")]
    Invalid(String),
    #[error("the layers")]
    Layers(#[from] LayerError),
    #[error("the history")]
    History(#[from] HistoryError),
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user: {0}")]
    Daemon(String),
    #[error("QEMU did not connect to {socket} within {timeout:?}")]
    NeverConnected { socket: PathBuf, timeout: Duration },
    #[error("finishing the run")]
    Finish(#[from] FinishError),
}

/// How the wait for QEMU ended.
enum Wait {
    Connected,
    Shutdown,
    Timeout,
}

/// Polls the listening socket until a connection is pending, a shutdown is asked for,
/// or the deadline passes.
fn wait_for_connection(listener: &Listener, shutdown: &AtomicBool, timeout: Duration) -> Wait {
    let deadline = Instant::now() + timeout;
    loop {
        if shutdown.load(Ordering::SeqCst) {
            return Wait::Shutdown;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Wait::Timeout;
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let slice = left.min(Duration::from_millis(100)).as_millis() as libc::c_int;
        // SAFETY: one pollfd we own, for the listener's descriptor.
        let n = unsafe { libc::poll(&mut pfd, 1, slice) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            return Wait::Connected;
        }
    }
}

/// Serves one disk until QEMU disconnects or a shutdown is asked for; returns the
/// history's end record.
pub fn serve(opts: &ServeOptions) -> Result<End, ServeError> {
    if opts.max_queues == 0 || opts.max_queues > MAX_QUEUES {
        return Err(ServeError::Invalid(format!(
            "--max-queues {} is not in 1..={MAX_QUEUES}",
            opts.max_queues
        )));
    }
    if opts.serial.len() > 20 {
        return Err(ServeError::Invalid(format!(
            "--serial {:?} is longer than the 20 bytes virtio-blk carries",
            opts.serial
        )));
    }
    if let Some(s) = opts.schedule {
        if s.max_delay_us > crate::faults::MAX_LATENCY_US {
            return Err(ServeError::Invalid(format!(
                "--schedule-max-delay-us {} is above {}",
                s.max_delay_us,
                crate::faults::MAX_LATENCY_US
            )));
        }
    }
    let layers = LiveLayers::create(&opts.image, &opts.state_dir)?;
    let (clock, wall, mono) = Clock::start();
    let header = Header {
        format_version: FORMAT_VERSION,
        block_size: BLOCK_SIZE,
        sector_size: SECTOR_SIZE,
        disk_bytes: layers.stack().disk_bytes(),
        hash: "xxh3-128".into(),
        origin_wall_ns: wall,
        origin_monotonic_ns: mono,
        serial: opts.serial.clone(),
        image: std::fs::canonicalize(&opts.image).unwrap_or(opts.image.clone()),
        max_queues: opts.max_queues,
        schedule: opts.schedule,
        writer: format!("bw-disk {}", env!("CARGO_PKG_VERSION")),
    };
    let history = HistoryWriter::create(&opts.history, &header)?;
    let engine = Engine::start(
        EngineConfig {
            serial: opts.serial.clone(),
            max_queues: opts.max_queues,
            schedule: opts.schedule,
        },
        clock,
        layers,
        history,
    );

    // A shutdown before QEMU connects stops the wait; after, it ends the connection.
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle: Arc<Mutex<Option<ShutdownHandle>>> = Arc::default();
    let on_shutdown = {
        let (shutdown, handle) = (shutdown.clone(), handle.clone());
        Arc::new(move || {
            shutdown.store(true, Ordering::SeqCst);
            if let Some(h) = handle.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                h.shutdown();
            }
        })
    };
    let _ = std::fs::remove_file(&opts.control);
    let control = UnixListener::bind(&opts.control).map_err(|source| ServeError::Listen {
        path: opts.control.clone(),
        source,
    })?;
    crate::control::spawn(control, engine.clone(), on_shutdown);

    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
    let backend = BlkBackend::new(engine.clone(), mem.clone(), opts.max_queues);
    let mut daemon = VhostUserDaemon::new("bw-disk".into(), backend, mem)
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
    let mut listener = Listener::new(&opts.socket, true).map_err(|e| ServeError::Listen {
        path: opts.socket.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    log::info!(
        "serving {} ({} bytes) on {}",
        opts.image.display(),
        engine.limits().capacity_bytes,
        opts.socket.display()
    );
    match wait_for_connection(&listener, &shutdown, opts.connect_timeout) {
        Wait::Connected => {}
        Wait::Shutdown => {
            engine.note("shut down before QEMU connected");
            return Ok(engine.finish(EndReason::Shutdown)?);
        }
        Wait::Timeout => {
            engine.note("QEMU never connected");
            engine.finish(EndReason::NeverConnected)?;
            return Err(ServeError::NeverConnected {
                socket: opts.socket.clone(),
                timeout: opts.connect_timeout,
            });
        }
    }
    daemon
        .start(&mut listener)
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
    engine.set_connected(true);
    engine.note("vhost-user connected");
    log::info!("QEMU connected");
    *handle.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
    if shutdown.load(Ordering::SeqCst) {
        daemon.request_shutdown();
    }
    let result = daemon.wait();
    engine.set_connected(false);
    let reason = if shutdown.load(Ordering::SeqCst) {
        EndReason::Shutdown
    } else {
        match &result {
            Ok(()) => EndReason::Disconnected,
            Err(e) => {
                // QEMU going away mid-message is a disconnect too; say what it was.
                log::warn!("vhost-user connection ended: {e}");
                engine.note(format!("vhost-user connection ended: {e}"));
                EndReason::Disconnected
            }
        }
    };
    log::info!("connection ended ({reason:?}); finishing the history");
    Ok(engine.finish(reason)?)
}
