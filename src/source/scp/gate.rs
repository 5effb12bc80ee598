//! The door before the association: what a connection must show before it may wait for a slot.
//!
//! A caller has [`acse_timeout`] to send the header of an A-ASSOCIATE-RQ (DCMTK calls this
//! the ACSE timeout). Looking at the header with `peek` leaves the bytes for dicom-ul to read
//! as usual. A connection that says nothing in time is closed without ever holding an
//! association slot; one that opens with another PDU type, or announces a request longer
//! than any real one, gets an A-ABORT at once (PS3.8 §9.3.8), before anything is allocated
//! for it.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The longest A-ASSOCIATE-RQ accepted. A request with 128 presentation contexts of 20
/// transfer syntaxes each (far beyond any modality's) is about 60 KiB.
pub(crate) const MAX_REQUEST: u32 = 64 * 1024;

/// How long a new connection has to send its A-ASSOCIATE-RQ's header: at most 10 s, less
/// when the profile's `dicom.timeout_s` is shorter.
pub(crate) fn acse_timeout(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(10))
}

/// A-ABORT reasons given by the service provider (PS3.8 Table 9-26).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AbortReason {
    UnrecognizedPdu = 1,
    UnexpectedPdu = 2,
    InvalidParameter = 6,
}

/// Why a connection was closed at the door.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Nothing (or less than a PDU header) arrived in time, or the peer closed.
    Silent,
    /// Answered with an A-ABORT for this reason.
    Aborted(AbortReason, String),
}

/// Waits for the first PDU header and judges it; `Ok` leaves every byte unread.
pub(crate) async fn first_pdu(socket: &mut TcpStream, within: Duration) -> Result<(), Refused> {
    let mut header = [0u8; 6];
    let seen = tokio::time::timeout(within, async {
        loop {
            match socket.peek(&mut header).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= header.len() => return true,
                // Part of a header: the rest is on its way (or is a trickle the timeout ends).
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    if seen != Ok(true) {
        return Err(Refused::Silent);
    }
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    let refusal = match header[0] {
        0x01 if length > MAX_REQUEST => Some((
            AbortReason::InvalidParameter,
            format!("an A-ASSOCIATE-RQ of {length} bytes (at most {MAX_REQUEST})"),
        )),
        0x01 => None,
        t @ 0x02..=0x07 => Some((
            AbortReason::UnexpectedPdu,
            format!("a PDU of type {t:#04x} before any association"),
        )),
        t => Some((
            AbortReason::UnrecognizedPdu,
            format!("no DICOM PDU (first byte {t:#04x})"),
        )),
    };
    match refusal {
        None => Ok(()),
        Some((reason, why)) => {
            send_abort(socket, reason).await;
            Err(Refused::Aborted(reason, why))
        }
    }
}

/// Writes an A-ABORT from the service provider and shuts the connection down; errors are
/// ignored (the peer may already be gone).
pub(crate) async fn send_abort(socket: &mut TcpStream, reason: AbortReason) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        socket.write_all(&abort_pdu(reason)).await?;
        socket.shutdown().await
    })
    .await;
}

/// The 10 bytes of an A-ABORT PDU with source "service provider" (2).
pub(crate) fn abort_pdu(reason: AbortReason) -> [u8; 10] {
    [0x07, 0, 0, 0, 0, 4, 0, 0, 2, reason as u8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn judged(bytes: &'static [u8], within: Duration) -> (Result<(), Refused>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(bytes).await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut answer)).await;
            answer
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let verdict = first_pdu(&mut s, within).await;
        drop(s);
        (verdict, client.await.unwrap())
    }

    #[tokio::test]
    async fn a_request_header_passes_and_its_bytes_stay_unread() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[1, 0, 0, 0, 0, 68, 0, 1]).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        assert_eq!(first_pdu(&mut s, Duration::from_secs(2)).await, Ok(()));
        let mut again = [0u8; 8];
        s.read_exact(&mut again).await.unwrap();
        assert_eq!(again, [1, 0, 0, 0, 0, 68, 0, 1]);
    }

    #[tokio::test]
    async fn other_pdus_oversized_requests_and_garbage_get_an_abort() {
        let (v, answer) = judged(
            &[4, 0, 0, 0, 0, 6, 0, 0, 0, 2, 1, 3],
            Duration::from_secs(2),
        )
        .await;
        assert!(
            matches!(v, Err(Refused::Aborted(AbortReason::UnexpectedPdu, _))),
            "{v:?}"
        );
        assert_eq!(answer, abort_pdu(AbortReason::UnexpectedPdu));

        let (v, answer) = judged(&[1, 0, 0xff, 0xff, 0xff, 0xf0], Duration::from_secs(2)).await;
        assert!(
            matches!(v, Err(Refused::Aborted(AbortReason::InvalidParameter, _))),
            "{v:?}"
        );
        assert_eq!(answer, abort_pdu(AbortReason::InvalidParameter));

        let (v, answer) = judged(b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(2)).await;
        assert!(
            matches!(v, Err(Refused::Aborted(AbortReason::UnrecognizedPdu, _))),
            "{v:?}"
        );
        assert_eq!(answer, abort_pdu(AbortReason::UnrecognizedPdu));
    }

    #[tokio::test]
    async fn half_a_header_is_silence_once_the_time_is_up() {
        let (v, answer) = judged(&[1, 0, 0], Duration::from_millis(300)).await;
        assert_eq!(v, Err(Refused::Silent));
        assert!(answer.is_empty());
    }
}
