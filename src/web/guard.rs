//! Every connection to the page bounded in number and in patience.
//!
//! Why: axum's server accepts as many connections as come and waits on each for as long as
//! it takes (hyper's header timeout needs a timer axum does not give it). A client that
//! connects and says nothing, or opens `/events` and stops reading (its window full, hyper's
//! write waiting), then holds its connection — and its file descriptor, and up to hyper's
//! buffers — forever. Enough of them and the daemon runs out of descriptors for its spool and
//! its outbox, and memory past its plan: the findings page would be a way to stop the
//! pipeline from the clinic's network.
//!
//! So: at most [`connections`] at once (the next waits in the kernel's backlog until one
//! closes), and a connection on which no byte has moved either way for `web.idle_timeout_s`
//! is closed. A live page is never that idle: its event stream sends a keep-alive comment
//! every third of that time ([`keep_alive`]). Progress in either direction counts, because a
//! page reading its event stream sends nothing after its request, and hyper keeps a read
//! pending on it all the while.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::board::Web;

/// Connections beyond one per page: a page load's parallel requests (a browser opens up to 6
/// per host) and overlays fetched while the event streams stay open.
pub const PAGE_LOADS: usize = 8;

/// The connections the page holds at most.
pub fn connections(web: &Web) -> usize {
    web.max_clients + PAGE_LOADS
}

/// How often an event stream sends a keep-alive: a third of the idle timeout, at most 15 s,
/// so that a page with nothing new to show is never taken for an idle connection.
pub fn keep_alive(idle: Duration) -> Duration {
    (idle / 3).clamp(Duration::from_millis(100), Duration::from_secs(15))
}

/// A listener whose connections are [`Watched`]: it takes a connection only while fewer than
/// its limit are open.
pub struct Guarded<L> {
    inner: L,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl<L> Guarded<L> {
    pub fn new(inner: L, max_connections: usize, idle: Duration) -> Self {
        Guarded {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            idle,
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Guarded<L> {
    type Io = Watched<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed while the listener lives.
            Err(_) => std::future::pending().await,
        };
        let (io, addr) = self.inner.accept().await;
        (Watched::new(io, permit, self.idle), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once no byte has moved either way for its idle
/// time (hyper then closes it), and gives its place back when dropped.
pub struct Watched<T> {
    io: T,
    _place: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Watched<T> {
    fn new(io: T, place: OwnedSemaphorePermit, idle: Duration) -> Self {
        Watched {
            io,
            _place: place,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// One rule for every operation: a result that moved bytes (`progress`) resets the
    /// deadline; a pending one also waits on the deadline and times out once it is past
    /// (polling the deadline with the operation's context wakes this connection's task when
    /// it passes, though the I/O itself never would).
    fn watch<R>(
        &mut self,
        r: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
        progress: impl FnOnce(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(Ok(v)) => {
                if progress(&v) {
                    self.moved();
                }
                Poll::Ready(Ok(v))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no byte moved either way for web.idle_timeout_s",
                ))),
                Poll::Pending => Poll::Pending,
            },
            failed => failed,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let grew = buf.filled().len() > before;
        this.watch(r, cx, |()| grew)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(r, cx, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(r, cx, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(r, cx, |()| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(r, cx, |()| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(idle: Duration) -> (Watched<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let place = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        (Watched::new(server, place, idle), client)
    }

    #[tokio::test]
    async fn a_client_that_says_nothing_is_timed_out() {
        let (mut server, _client) = pair(Duration::from_millis(300)).await;
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_page_that_stops_reading_is_timed_out_once_its_buffers_are_full() {
        let (mut server, _client) = pair(Duration::from_millis(300)).await;
        let chunk = vec![7u8; 64 << 10];
        let mut sent = 0usize;
        let err = loop {
            match server.write(&chunk).await {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
            assert!(sent < 1 << 30, "the writes never blocked");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(sent > 0, "the socket buffers took something first");
    }

    #[tokio::test]
    async fn bytes_moving_either_way_keep_a_connection_open() {
        let (mut server, mut client) = pair(Duration::from_millis(300)).await;
        let mut buf = [0u8; 1];
        // Ten reads, each 100 ms apart: 1 s in all, three idle times over.
        for i in 0..10u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(&[i]).await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf[0], i);
        }
        // And writes alone keep it too, a read pending all the while (as hyper holds one).
        let (mut reading, mut writing) = tokio::io::split(server);
        let pending_read = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            reading.read(&mut buf).await
        });
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writing.write_all(b"k").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
        }
        assert!(
            !pending_read.is_finished(),
            "the read timed out while writes moved"
        );
        pending_read.abort();
    }

    #[tokio::test]
    async fn no_more_connections_than_the_limit_are_taken_and_a_closed_one_frees_its_place() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut guarded = Guarded::new(listener, 2, Duration::from_secs(60));
        let _clients: Vec<TcpStream> =
            futures_util::future::join_all((0..3).map(|_| TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let (first, _) = guarded.accept().await;
        let (_second, _) = guarded.accept().await;
        let third = tokio::time::timeout(Duration::from_millis(300), guarded.accept()).await;
        assert!(third.is_err(), "a third connection was taken with two open");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), guarded.accept()).await;
        assert!(
            third.is_ok(),
            "the closed connection's place was not given back"
        );
    }
}
