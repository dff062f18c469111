//! The control socket's server side: one thread accepts, one thread per connection
//! reads request lines and answers each.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use crate::engine::Engine;
use crate::protocol::{
    ArmReply, ControlOp, ControlRequest, ControlResponse, PingReply, ReleaseReply, ShutdownReply,
    MAX_LINE,
};

/// Called after a shutdown request has been answered.
pub type OnShutdown = Arc<dyn Fn() + Send + Sync>;

/// Serves the control socket in the background.
pub fn spawn(listener: UnixListener, engine: Arc<Engine>, on_shutdown: OnShutdown) {
    std::thread::Builder::new()
        .name("bw-disk-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let engine = engine.clone();
                        let on_shutdown = on_shutdown.clone();
                        let _ = std::thread::Builder::new()
                            .name("bw-disk-control-conn".into())
                            .spawn(move || connection(stream, &engine, &on_shutdown));
                    }
                    Err(e) => log::warn!("control socket: accept failed: {e}"),
                }
            }
        })
        .expect("spawn the control thread");
}

fn connection(stream: UnixStream, engine: &Arc<Engine>, on_shutdown: &OnShutdown) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (response, shutdown) = if line.len() > MAX_LINE {
            // Too long: answer, then drop the connection (the rest of the line would
            // read as garbage).
            let r = ControlResponse {
                id: None,
                ok: None,
                err: Some(format!("request line longer than {MAX_LINE} bytes")),
            };
            let _ = writeln!(out, "{}", serde_json::to_string(&r).expect("serialises"));
            return;
        } else {
            answer(&line, engine)
        };
        let text = serde_json::to_string(&response).expect("a response serialises");
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return;
        }
        if shutdown {
            on_shutdown();
            return;
        }
    }
}

/// Answers one request line; true when it was a shutdown.
pub fn answer(line: &[u8], engine: &Engine) -> (ControlResponse, bool) {
    let req: ControlRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return (
                ControlResponse {
                    id: None,
                    ok: None,
                    err: Some(format!("bad request: {e}")),
                },
                false,
            )
        }
    };
    let to = |v: Result<serde_json::Value, String>| match v {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let mut shutdown = false;
    let (ok, err) = match &req.op {
        ControlOp::Instant { label } => to(engine
            .instant(label)
            .map(|r| json(&r))
            .map_err(|e| crate::error_chain(&e))),
        ControlOp::Arm { fault } => to(engine
            .arm(fault.clone())
            .map(|fault| json(&ArmReply { fault }))
            .map_err(|e| e.to_string())),
        ControlOp::Release { fault } => to(engine
            .release(*fault)
            .map(|released| {
                json(&ReleaseReply {
                    fault: *fault,
                    released,
                })
            })
            .map_err(|e| e.to_string())),
        ControlOp::Stats => to(Ok(json(&engine.stats()))),
        ControlOp::Ping => {
            let s = engine.stats();
            to(Ok(json(&PingReply {
                uptime_ns: s.uptime_ns,
                connected: s.connected,
            })))
        }
        ControlOp::Shutdown => {
            shutdown = true;
            to(Ok(json(&ShutdownReply {
                history: engine.history_path().to_path_buf(),
            })))
        }
    };
    (
        ControlResponse {
            id: Some(req.id),
            ok,
            err,
        },
        shutdown,
    )
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("a reply serialises")
}
