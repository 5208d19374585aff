//! `p11netdelay`: a TCP proxy on loopback that holds every chunk for a fixed delay in each direction (the benchmark's emulated network between a host and its database).
//!
//! ```text
//! p11netdelay --to HOST:PORT [--listen ADDR] [--delay-ms MS]
//! ```
//!
//! Listens on `--listen` (default `127.0.0.1:0`), prints `listening ADDR`
//! (the port chosen) on its first line, and serves until killed. Each
//! accepted connection gets its own connection to `--to`, made after one
//! emulated round trip (the TCP handshake). Each direction has a reader
//! thread, which stamps every chunk it reads with the time it was read, and a
//! writer thread, which forwards the chunks in order, each once its stamp
//! plus the delay has passed: the link delays, it does not serialise, so
//! chunks in flight overlap as on a wire (no bandwidth limit, no loss). No
//! delay is added beyond the configured one but the scheduler's wake-up.
//! Both sockets run without Nagle's algorithm. An end of stream is passed on
//! after the data before it; a reset closes both sides.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!("usage: p11netdelay --to HOST:PORT [--listen ADDR] [--delay-ms MS]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|x| x == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let to: SocketAddr = match get("--to").map(|t| t.parse()) {
        Some(Ok(a)) => a,
        _ => usage(),
    };
    let listen = get("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let delay_ms: f64 = match get("--delay-ms").map(|d| d.parse()) {
        None => 1.0,
        Some(Ok(d)) if d >= 0.0 => d,
        _ => usage(),
    };
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("p11netdelay: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    match listener.local_addr() {
        Ok(a) => println!("listening {a}"),
        Err(e) => {
            eprintln!("p11netdelay: no local address for {listen}: {e}");
            std::process::exit(1)
        }
    }
    // The benchmark reads the port from the first line.
    let _ = std::io::stdout().flush();
    serve(listener, to, Duration::from_secs_f64(delay_ms / 1000.0));
}

/// Accepts connections for ever, each proxied on its own threads.
fn serve(listener: TcpListener, to: SocketAddr, delay: Duration) {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("p11netdelay: accept failed: {e}");
                continue;
            }
        };
        thread::spawn(move || {
            if let Err(e) = link(client, to, delay) {
                eprintln!("p11netdelay: connection to {to} failed: {e}");
            }
        });
    }
}

/// One proxied connection: the upstream connection after one emulated round
/// trip, then a delayed pump each way.
fn link(client: TcpStream, to: SocketAddr, delay: Duration) -> std::io::Result<()> {
    thread::sleep(delay * 2);
    let upstream = TcpStream::connect(to)?;
    for s in [&client, &upstream] {
        s.set_nodelay(true)?;
    }
    pump(client.try_clone()?, upstream.try_clone()?, delay);
    pump(upstream, client, delay);
    Ok(())
}

/// Forwards what `from` sends to `to`, each chunk `delay` after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_end = from.try_clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping the sender ends the writer once the chunks before the
        // end of stream are out.
    });
    thread::spawn(move || {
        let mut failed = false;
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            // The receiving side is gone: close both so the sender sees it.
            let _ = to.shutdown(Shutdown::Both);
            if let Ok(f) = reader_end {
                let _ = f.shutdown(Shutdown::Both);
            }
        } else {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for c in l.incoming() {
                let mut c = c.unwrap();
                c.set_nodelay(true).unwrap();
                thread::spawn(move || {
                    let mut w = c.try_clone().unwrap();
                    std::io::copy(&mut c, &mut w).ok();
                    w.shutdown(Shutdown::Write).ok();
                });
            }
        });
        addr
    }

    /// The proxy in this process, in front of `to`; returns its address.
    fn proxy(to: SocketAddr, delay: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || serve(l, to, delay));
        addr
    }

    fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Duration {
        let t0 = Instant::now();
        c.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        t0.elapsed()
    }

    #[test]
    fn each_way_is_delayed_by_the_delay_and_not_much_more() {
        let delay = Duration::from_millis(3);
        let p = proxy(echo_server(), delay);
        let mut c = TcpStream::connect(p).unwrap();
        c.set_nodelay(true).unwrap();
        let times: Vec<Duration> = (0..20).map(|i| round_trip(&mut c, &[i; 16])).collect();
        let fastest = *times.iter().min().unwrap();
        assert!(fastest >= delay * 2, "a round trip took {fastest:?}");
        // Scheduler wake-ups only: well under one more delay.
        let mut sorted = times.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        assert!(
            median < delay * 2 + Duration::from_millis(2),
            "round trips {times:?}"
        );
    }

    #[test]
    fn a_stream_keeps_its_order_and_its_end() {
        let p = proxy(echo_server(), Duration::from_millis(1));
        let mut c = TcpStream::connect(p).unwrap();
        let mut r = c.try_clone().unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let to_send = sent.clone();
        let writer = thread::spawn(move || {
            // Many small writes: many chunks in flight at once.
            for piece in to_send.chunks(997) {
                c.write_all(piece).unwrap();
            }
            c.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        // The echo server's end of stream comes through after the data.
        r.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert_eq!(back.len(), sent.len());
        assert!(back == sent, "bytes reordered or changed");
    }

    #[test]
    fn connections_are_delayed_side_by_side_not_one_after_another() {
        let delay = Duration::from_millis(5);
        let p = proxy(echo_server(), delay);
        let t0 = Instant::now();
        let clients: Vec<_> = (0..8u8)
            .map(|i| {
                thread::spawn(move || {
                    let mut c = TcpStream::connect(p).unwrap();
                    c.set_nodelay(true).unwrap();
                    for _ in 0..10 {
                        round_trip(&mut c, &[i; 100]);
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        // 8 connections × (1 handshake + 10 round trips) × 10 ms: 880 ms if
        // serialised, about 110 ms side by side.
        let took = t0.elapsed();
        assert!(took >= delay * 22, "took {took:?}");
        assert!(took < Duration::from_millis(400), "took {took:?}");
    }

    #[test]
    fn a_refused_upstream_closes_the_client() {
        // A port with nothing listening: bind, learn it, close it.
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let p = proxy(dead, Duration::from_millis(1));
        let mut c = TcpStream::connect(p).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        let n = c.read(&mut buf);
        assert!(matches!(n, Ok(0) | Err(_)), "read {n:?}");
        assert!(
            !matches!(&n, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the client was left hanging"
        );
    }
}
