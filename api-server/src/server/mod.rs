//! The API server: HTTP/1.1 (hyper) over a Unix socket, on its own thread.
//!
//! [`ApiServer::start`] binds the socket (mode 0600; see [`socket`]) in the
//! caller's thread, so errors come back at once, then serves on a thread
//! named `api-server` that runs a current-thread tokio runtime. Each
//! request is decoded by [`crate::routes`] and handed to the
//! [`VmmApi`] on tokio's blocking pool, so a slow VMM call never stalls
//! the accept loop. [`ApiServer::shutdown`] stops accepting, lets requests
//! in flight finish (for a short grace period), removes the socket file
//! and joins the thread.

pub mod socket;

mod http;

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use vmm_api::VmmApi;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`ApiServer::shutdown`] waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Most threads calling into the VMM at once.
const MAX_BLOCKING_THREADS: usize = 4;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A live process answers on the socket.
    #[error("API socket {0} is already in use by a live process")]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("API socket path {0} exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    /// The path could not be examined.
    #[error("Cannot inspect API socket path {path}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A stale socket could not be removed.
    #[error("Cannot remove stale API socket {path}")]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding or placing the socket failed.
    #[error("Cannot create API socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The runtime or the thread could not be started.
    #[error("Cannot start the API server thread")]
    Start(#[source] io::Error),
}

/// A running API server. Dropping it shuts it down too.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    id: socket::FileId,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` and serves `api` on it from a new thread.
    pub fn start(path: impl AsRef<Path>, api: Arc<dyn VmmApi>) -> Result<ApiServer, ServerError> {
        let path = path.as_ref().to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("api-server-vmm")
            .build()
            .map_err(ServerError::Start)?;
        let (listener, id) = socket::bind(&path)?;
        let remove_on_error = |e| {
            socket::remove(&path, id);
            ServerError::Start(e)
        };
        listener.set_nonblocking(true).map_err(remove_on_error)?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("api-server".to_owned())
            .spawn(move || {
                runtime.block_on(serve(listener, api, stopped));
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(remove_on_error)?;
        log::info!("API server listening on {}", path.display());
        Ok(ApiServer {
            path,
            id,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, waits briefly for requests in flight, removes the
    /// socket file and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may have ended already; then there is no one to tell.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("The API server thread panicked");
            }
            socket::remove(&self.path, self.id);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The accept loop.
async fn serve(
    listener: std::os::unix::net::UnixListener,
    api: Arc<dyn VmmApi>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("Cannot use the API socket: {e}");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let api = Arc::clone(&api);
                    let service = service_fn(move |request| {
                        let api = Arc::clone(&api);
                        async move { Ok::<_, Infallible>(http::handle(request, api).await) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            log::debug!("API connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Such as EMFILE: back off instead of spinning.
                    log::warn!("API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("API requests still in flight at shutdown were cut off");
    }
}
