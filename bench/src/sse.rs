//! A light subscriber to a server-sent-events stream, for live-stock's 10,000 of them: a
//! raw HTTP/1.1 `GET` over one loopback TCP connection, the chunked body decoded in place,
//! and each event's bytes handed to the caller. It keeps a few KiB per subscriber, where an
//! HTTP client library keeps a connection pool entry, a body channel and buffers of its own.

use std::{io, net::SocketAddr, ops::ControlFlow};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Bytes read from the socket at a time: a product event is about 350.
const READ_BYTES: usize = 2048;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An open event stream.
pub struct SseStream {
    /// The connection.
    tcp: TcpStream,
    /// How the body is framed, and where its decoding stands.
    body: Body,
    /// Decoded body bytes after the last complete event.
    pending: Vec<u8>,
}

/// How a response body is framed.
enum Body {
    /// `Transfer-Encoding: chunked`, and where the decoder stands.
    Chunked(Chunk),
    /// Until the connection closes.
    UntilClose,
}

/// Where a chunked-body decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In a chunk's size line: the size so far, and whether an extension (`;…`) began.
    Size { size: usize, extension: bool },
    /// In a chunk's data: how many bytes are left.
    Data(usize),
    /// After a chunk's data, before its line end.
    DataEnd,
    /// The last chunk came: the body is over.
    Done,
}

impl Chunk {
    /// The state before a body's first chunk.
    const START: Self = Self::Size {
        size: 0,
        extension: false,
    };

    /// Decodes `input`, appending the data it carries to `out`.
    fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !input.is_empty() {
            if let Self::Data(left) = *self {
                let take = left.min(input.len());
                out.extend_from_slice(&input[..take]);
                input = &input[take..];
                *self = if take == left {
                    Self::DataEnd
                } else {
                    Self::Data(left - take)
                };
                continue;
            }
            *self = self.after(input[0])?;
            input = &input[1..];
        }
        Ok(())
    }

    /// The state after one framing byte (a size line's, a data end's, or a trailer's).
    fn after(self, byte: u8) -> io::Result<Self> {
        let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body");
        Ok(match (self, byte) {
            (Self::Size { size: 0, .. }, b'\n') => Self::Done,
            (Self::Size { size, .. }, b'\n') => Self::Data(size),
            (Self::Size { size, .. }, b';') => Self::Size {
                size,
                extension: true,
            },
            (
                Self::Size {
                    extension: true, ..
                },
                _,
            )
            | (Self::Size { .. }, b'\r') => self,
            (Self::Size { size, .. }, _) => {
                let digit = char::from(byte).to_digit(16).ok_or_else(malformed)?;
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit as usize))
                    .ok_or_else(malformed)?;
                Self::Size {
                    size,
                    extension: false,
                }
            }
            (Self::DataEnd, b'\r') => self,
            (Self::DataEnd, b'\n') => Self::START,
            (Self::DataEnd, _) => return Err(malformed()),
            // Trailers after the last chunk are ignored; data never reaches here.
            (Self::Done | Self::Data(_), _) => self,
        })
    }
}

impl SseStream {
    /// Sends `GET path` to `addr` and reads the response head, which must be a 200 with
    /// `text/event-stream`.
    pub async fn open(addr: SocketAddr, path: &str) -> anyhow::Result<Self> {
        let mut tcp = TcpStream::connect(addr).await.context("connect")?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .context("send the request")?;
        let mut head = Vec::with_capacity(READ_BYTES);
        let end = loop {
            if let Some(end) = find(&head, b"\r\n\r\n") {
                break end;
            }
            if head.len() > MAX_HEAD_BYTES {
                bail!("a response head over {MAX_HEAD_BYTES} bytes");
            }
            head.reserve(READ_BYTES);
            if tcp.read_buf(&mut head).await.context("read the head")? == 0 {
                bail!("the connection closed before the response head");
            }
        };
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        let status = text.lines().next().unwrap_or_default();
        if !status.starts_with("http/1.1 200") {
            bail!("answered `{status}`");
        }
        let header = |name: &str, value: &str| {
            text.lines()
                .skip(1)
                .any(|l| l.starts_with(name) && l.contains(value))
        };
        if !header("content-type:", "text/event-stream") {
            bail!("the answer is not text/event-stream");
        }
        let body = if header("transfer-encoding:", "chunked") {
            Body::Chunked(Chunk::START)
        } else {
            Body::UntilClose
        };
        let mut stream = Self {
            tcp,
            body,
            pending: Vec::new(),
        };
        stream.feed(&head[end + 4..])?;
        Ok(stream)
    }

    /// Hands each event (its `event:` and `data:` lines; comment lines are left out) to
    /// `on_event` until it breaks: `Ok(true)`; `Ok(false)` when the stream ended first.
    pub async fn each_event(
        &mut self,
        mut on_event: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> io::Result<bool> {
        let mut buf = [0; READ_BYTES];
        loop {
            if self.take_events(&mut on_event).is_break() {
                return Ok(true);
            }
            if matches!(self.body, Body::Chunked(Chunk::Done)) {
                return Ok(false);
            }
            let n = self.tcp.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            self.feed(&buf[..n])?;
        }
    }

    /// Decodes body bytes read from the socket into `pending`.
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.body {
            Body::Chunked(chunk) => chunk.decode(bytes, &mut self.pending),
            Body::UntilClose => {
                self.pending.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Hands every complete event in `pending` to `on_event`, until it breaks.
    fn take_events(
        &mut self,
        on_event: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut start = 0;
        let mut flow = ControlFlow::Continue(());
        while flow.is_continue()
            && let Some(len) = find(&self.pending[start..], b"\n\n")
        {
            let event = &self.pending[start..start + len];
            start += len + 2;
            if !event.starts_with(b":") {
                flow = on_event(event);
            }
        }
        self.pending.drain(..start);
        flow
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `parts` one after another, as reads would deliver them.
    fn decode(parts: &[&[u8]]) -> (Vec<u8>, Chunk) {
        let (mut chunk, mut out) = (Chunk::START, Vec::new());
        for part in parts {
            chunk.decode(part, &mut out).expect("well-formed");
        }
        (out, chunk)
    }

    #[test]
    fn a_chunked_body_decodes_whatever_the_reads_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\n, abcdefghijklmnopqrstuvwx\r\n0\r\n\r\n";
        let whole = decode(&[body]);
        assert_eq!(whole.0, b"hello, abcdefghijklmnopqrstuvwx");
        assert_eq!(whole.1, Chunk::Done);
        for at in 0..body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(decode(&[a, b]), whole, "split at {at}");
        }
    }

    #[test]
    fn a_chunk_size_that_is_not_hex_is_an_error() {
        let (mut chunk, mut out) = (Chunk::START, Vec::new());
        assert!(chunk.decode(b"zz\r\n", &mut out).is_err());
    }
}
