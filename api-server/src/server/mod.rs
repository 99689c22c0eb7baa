//! The API server: HTTP/1.1 (hyper) over a Unix socket, on its own thread.
//!
//! [`ApiServer::start`] binds the socket (mode 0600; see [`socket`]) in the
//! caller's thread, so errors come back at once, then serves on a thread
//! named `api-server` that runs a current-thread tokio runtime. Each
//! request is decoded by [`crate::routes`] and handed to the
//! [`VmmApi`] on tokio's blocking pool, so a slow VMM call never stalls
//! the accept loop. [`ApiServer::shutdown`] stops accepting, lets requests
//! in flight finish (for a short grace period), removes the socket file
//! and joins the thread. Responses are written so that Cloud Hypervisor's
//! `ch-remote` reads them (status line, header case, ASCII bodies: see
//! `wire`).

pub mod socket;

mod http;
mod wire;

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
    /// The path is longer than a Unix socket address can hold.
    #[error(
        "API socket path {path} is {length} bytes long; Unix sockets take at most {} bytes",
        socket::MAX_SOCKET_PATH
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        length: usize,
    },
    /// An inherited descriptor is not a listening Unix stream socket.
    #[error("API socket fd {fd} cannot be used: {reason}")]
    InheritedFd {
        /// The descriptor.
        fd: i32,
        /// What is wrong with it.
        reason: String,
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
    /// The socket file we created and remove at shutdown; `None` for an
    /// inherited socket, which its owner removes.
    created: Option<(PathBuf, socket::FileId)>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` and serves `api` on it from a new thread.
    pub fn start(path: impl AsRef<Path>, api: Arc<dyn VmmApi>) -> Result<ApiServer, ServerError> {
        let path = path.as_ref().to_owned();
        let runtime = runtime()?;
        let (listener, id) = socket::bind(&path)?;
        let server = Self::serve_on(runtime, listener, Some((path.clone(), id)), api);
        if server.is_err() {
            socket::remove(&path, id);
        } else {
            log::info!("API server listening on {}", path.display());
        }
        server
    }

    /// Serves `api` on an inherited listening Unix socket, descriptor `fd`
    /// (socket activation; see [`socket::listener_from_fd`]). The socket
    /// file, if any, is left alone at shutdown.
    pub fn start_on_fd(fd: i32, api: Arc<dyn VmmApi>) -> Result<ApiServer, ServerError> {
        let runtime = runtime()?;
        let listener = socket::listener_from_fd(fd)?;
        let server = Self::serve_on(runtime, listener, None, api)?;
        log::info!("API server listening on inherited fd {fd}");
        Ok(server)
    }

    fn serve_on(
        runtime: tokio::runtime::Runtime,
        listener: std::os::unix::net::UnixListener,
        created: Option<(PathBuf, socket::FileId)>,
        api: Arc<dyn VmmApi>,
    ) -> Result<ApiServer, ServerError> {
        listener.set_nonblocking(true).map_err(ServerError::Start)?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("api-server".to_owned())
            .spawn(move || {
                runtime.block_on(serve(listener, api, stopped));
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(ServerError::Start)?;
        Ok(ApiServer {
            created,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The socket path, unless the socket was inherited.
    pub fn path(&self) -> Option<&Path> {
        self.created.as_ref().map(|(path, _)| path.as_path())
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
            if let Some((path, id)) = &self.created {
                socket::remove(path, *id);
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ServerError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("api-server-vmm")
        .build()
        .map_err(ServerError::Start)
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
                        // `Content-Length`, as Cloud Hypervisor's client looks for it.
                        .title_case_headers(true)
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
