//! Worker threads and their control channel: one named thread per listener set,
//! told what to do over a crossbeam channel and woken with a mio::Waker.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Interest, Poll, Token, Waker};

use super::error::StartError;
use super::listen::listener_token;

/// Token of the waker that the control plane uses to interrupt `poll`.
pub const WAKER_TOKEN: Token = Token(usize::MAX - 1);

/// A message from the control plane to a worker. What a reload carries is the
/// worker's business (the proxy sends its new plan; the origin has none).
pub enum Control<U> {
    /// Close everything and return from the loop.
    Shutdown,
    /// Serve new requests with this configuration (a reload).
    Reload(U),
}

impl<U> Control<U> {
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Control::Shutdown)
    }
}

/// Where to send a worker control messages; sending wakes it.
pub struct ControlHandle<U> {
    control: Sender<Control<U>>,
    waker: Arc<Waker>,
}

impl<U> Clone for ControlHandle<U> {
    fn clone(&self) -> Self {
        ControlHandle {
            control: self.control.clone(),
            waker: Arc::clone(&self.waker),
        }
    }
}

impl<U> ControlHandle<U> {
    /// Send `message` and wake the worker. A worker that has exited has dropped its
    /// receiver: then nothing happens.
    pub fn send(&self, message: Control<U>) {
        let _ = self.control.send(message);
        let _ = self.waker.wake();
    }
}

/// What a worker thread starts with.
pub struct WorkerContext<U> {
    pub id: usize,
    pub poll: Poll,
    pub listeners: Vec<TcpListener>,
    pub control: Receiver<Control<U>>,
}

impl<U> WorkerContext<U> {
    /// Register the listeners (readable, edge-triggered, once for their lifetime).
    pub fn register_listeners(&mut self) -> io::Result<()> {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            self.poll
                .registry()
                .register(l, listener_token(i), Interest::READABLE)?;
        }
        Ok(())
    }
}

struct WorkerHandle<U> {
    control: ControlHandle<U>,
    thread: Option<JoinHandle<()>>,
}

/// A set of running worker threads; dropping it shuts them down and joins them.
pub struct Workers<U> {
    handles: Vec<WorkerHandle<U>>,
}

impl<U> Workers<U> {
    /// Start one named thread per listener set, each running `run`.
    pub fn spawn<F>(
        name: &str,
        listeners: Vec<Vec<TcpListener>>,
        run: F,
    ) -> Result<Workers<U>, StartError>
    where
        F: Fn(WorkerContext<U>) + Send + Sync + 'static,
        U: Send + 'static,
    {
        let run = Arc::new(run);
        let mut workers = Workers {
            handles: Vec::new(),
        };
        for (id, listeners) in listeners.into_iter().enumerate() {
            let poll = Poll::new().map_err(StartError::Poll)?;
            let waker =
                Arc::new(Waker::new(poll.registry(), WAKER_TOKEN).map_err(StartError::Poll)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let ctx = WorkerContext {
                id,
                poll,
                listeners,
                control: rx,
            };
            let run = Arc::clone(&run);
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{id}"))
                .spawn(move || run(ctx))
                .map_err(StartError::Spawn)?;
            workers.handles.push(WorkerHandle {
                control: ControlHandle { control: tx, waker },
                thread: Some(thread),
            });
        }
        Ok(workers)
    }

    /// Where to send each worker control messages.
    pub fn controls(&self) -> Vec<ControlHandle<U>> {
        self.handles.iter().map(|h| h.control.clone()).collect()
    }

    /// Tell every worker to stop, then wait for them.
    pub fn shutdown(&mut self) {
        for h in &self.handles {
            h.control.send(Control::Shutdown);
        }
        for h in &mut self.handles {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl<U> Drop for Workers<U> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
