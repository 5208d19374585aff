//! The HTTP side of `p11derive metrics --listen`: one request per
//! connection, `Connection: close`, nothing but what a Prometheus scrape
//! needs. Written here rather than taken from a crate because a scrape
//! endpoint must stay up beside clients that connect and say nothing, or
//! send a header without end: every connection has a read deadline, a
//! request head is at most `MAX_HEAD` bytes, and at most `MAX_OPEN`
//! connections are served at once (more are closed at once).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The longest request head (request line and headers) read.
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once.
const MAX_OPEN: usize = 32;
/// How long a client may take to send its request head.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// How long writing an answer may take.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// A request as the handler sees it.
pub struct Request {
    pub method: String,
    /// The path, without a query.
    pub path: String,
    /// The `Accept` header ("" when absent).
    pub accept: String,
}

/// An answer: status, content type, body, and `Allow` for a 405.
pub struct Response {
    pub code: u16,
    pub content_type: String,
    pub body: String,
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn text(code: u16, body: &str) -> Response {
        Response {
            code,
            content_type: "text/plain; charset=utf-8".into(),
            body: body.into(),
            allow: None,
        }
    }
}

/// Accepts connections on `listener` for ever, each answered on a thread
/// of its own by `handle`.
pub fn serve<F>(listener: TcpListener, handle: F)
where
    F: Fn(&Request) -> Response + Sync,
{
    let open = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if open.fetch_add(1, Ordering::AcqRel) >= MAX_OPEN {
                open.fetch_sub(1, Ordering::AcqRel);
                drop(conn);
                continue;
            }
            let (open, handle) = (&open, &handle);
            let spawned = std::thread::Builder::new()
                .name("p11derive-http".into())
                .spawn_scoped(scope, move || {
                    answer(conn, handle);
                    open.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    });
}

/// Reads one request head from `conn` and writes `handle`'s answer.
fn answer<F>(mut conn: TcpStream, handle: &F)
where
    F: Fn(&Request) -> Response,
{
    let _ = conn.set_read_timeout(Some(READ_DEADLINE));
    let _ = conn.set_write_timeout(Some(WRITE_DEADLINE));
    let (response, head_only) = match read_head(&mut conn) {
        Ok(Some(request)) => (handle(&request), request.method == "HEAD"),
        Ok(None) => (Response::text(431, "request header too large\n"), false),
        Err(_) => return,
    };
    let _ = write_response(&mut conn, &response, head_only);
}

/// The request line and the `Accept` header; `None` when the head is longer
/// than `MAX_HEAD`. A client that goes quiet or closes early is an error.
fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_string();
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Ok(Some(Request {
        method,
        path,
        accept,
    }))
}

/// Writes `r`; for `HEAD` (`head_only`) the same header fields as a `GET`
/// gets, its `Content-Length` included (RFC 9110, 9.3.2), and no body.
fn write_response(conn: &mut impl Write, r: &Response, head_only: bool) -> std::io::Result<()> {
    let reason = match r.code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.code,
        r.content_type,
        r.body.len()
    );
    if let Some(allow) = r.allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if !head_only {
        conn.write_all(r.body.as_bytes())?;
    }
    conn.flush()
}
