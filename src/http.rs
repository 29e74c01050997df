//! A minimal HTTP/1 server, for the devnet's nodes and RPC and for metrics: an accept loop whose
//! connections all end when it is stopped (a stopped node must look like a dead host, not a
//! server finishing its requests).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A response body: whole, or streamed (a shaped link's).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A response.
pub type Reply = Response<Body>;

/// A whole body of `bytes`.
pub fn whole(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).expect("JSON values serialize");
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(whole(body))
        .expect("a valid response")
}

/// A running server; dropping it or calling [`Server::stop`] closes the port and every connection.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `handler` on `addr` (port 0: any free port).
    pub async fn start<H, F>(addr: SocketAddr, handler: H) -> std::io::Result<Server>
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Reply> + Send + 'static,
    {
        Server::start_with(addr, None, handler).await
    }

    /// Serves `handler` on `addr`, its connections' kernel receive buffers set to
    /// `receive_buffer` bytes if given (a shaped link's node: bytes it has not read yet have not
    /// passed its link, and a large buffer would let a client believe they had).
    pub async fn start_with<H, F>(addr: SocketAddr, receive_buffer: Option<u32>, handler: H) -> std::io::Result<Server>
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Reply> + Send + 'static,
    {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = handler.clone();
                        let service = hyper::service::service_fn(move |req| {
                            let handler = handler.clone();
                            async move { Ok::<_, Infallible>(handler(req).await) }
                        });
                        connections.spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    _ = stopped.changed() => break,
                }
            }
            connections.abort_all();
        });
        Ok(Server { addr, stop, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the port and every open connection, and waits until they are gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Reads a request body up to `limit` bytes; `None` if it is longer or broken.
pub async fn body(req: Request<Incoming>, limit: usize) -> Option<Bytes> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    limited.collect().await.ok().map(|c| c.to_bytes())
}
