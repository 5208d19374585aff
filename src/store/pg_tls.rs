//! TLS to PostgreSQL (the OpenSSL connector `[store] sslmode` and `ca_file` ask for, and what each connection negotiated) and the server's words in messages.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::{MakeTlsConnector, TlsStream};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

use crate::config::SslMode;

/// The connector handed to every connection of one `Pg`: TLS as the mode
/// asks, and a flag saying whether the last connection made a TLS
/// handshake (under `prefer`, the server decides).
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    /// A CA file was loaded: the server's chain is verified.
    verifying: bool,
    make: MakeTlsConnector,
    used: Arc<AtomicBool>,
}

impl Tls {
    /// The connector for `mode`: the server's certificate checked against
    /// `ca_file` when given (only that CA: not the system's), its name
    /// against the URL's host under `verify-full`. The message of an error
    /// names the key and the fix.
    pub fn new(mode: SslMode, ca_file: Option<&Path>) -> Result<Tls, String> {
        let ssl = |e: openssl::error::ErrorStack| format!("cannot set up TLS (OpenSSL: {e})");
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(ssl)?;
        let verifying = ca_file.is_some() && mode != SslMode::Disable;
        match ca_file {
            Some(file) if mode != SslMode::Disable => {
                let pem = std::fs::read(file).map_err(|e| {
                    format!(
                        "[store] ca_file {}: cannot read it ({e}); give the path of the CA \
                         certificate (PEM) that signed the PostgreSQL server's certificate, \
                         readable by this process",
                        file.display()
                    )
                })?;
                let certs = X509::stack_from_pem(&pem).unwrap_or_default();
                if certs.is_empty() {
                    return Err(format!(
                        "[store] ca_file {} holds no PEM certificate; give the CA certificate \
                         (-----BEGIN CERTIFICATE-----) that signed the PostgreSQL server's \
                         certificate",
                        file.display()
                    ));
                }
                let mut store = X509StoreBuilder::new().map_err(ssl)?;
                for cert in certs {
                    store.add_cert(cert).map_err(ssl)?;
                }
                builder.set_cert_store(store.build());
                builder.set_verify(SslVerifyMode::PEER);
            }
            _ => builder.set_verify(SslVerifyMode::NONE),
        }
        let mut make = MakeTlsConnector::new(builder.build());
        if mode != SslMode::VerifyFull {
            make.set_callback(|c, _| {
                c.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(Tls {
            mode,
            verifying,
            make,
            used: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The mode tokio-postgres negotiates with (verification is the
    /// connector's).
    pub fn negotiation(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Wire;
        match self.mode {
            SslMode::Disable => Wire::Disable,
            SslMode::Prefer => Wire::Prefer,
            _ => Wire::Require,
        }
    }

    /// Forgets what the previous connection negotiated.
    pub fn reset(&self) {
        self.used.store(false, Ordering::SeqCst);
    }

    /// What the connection just opened negotiated, for the log: the second
    /// value says the connection is unencrypted although TLS was possible
    /// (`prefer` against a server without TLS), worth a warning.
    pub fn negotiated(&self) -> (String, bool) {
        let mode = self.mode.name();
        if !self.used.load(Ordering::SeqCst) {
            let quiet = self.mode == SslMode::Disable;
            let why = if quiet {
                "as [store] sslmode = \"disable\" says"
            } else {
                "the server offered no TLS; set [store] sslmode = \"verify-full\" and ca_file to \
                 refuse such a server"
            };
            return (format!("without TLS (sslmode {mode}): {why}"), !quiet);
        }
        let checked = match self.mode {
            SslMode::VerifyFull => "certificate chain and host name verified",
            SslMode::VerifyCa => "certificate chain verified, host name not checked",
            SslMode::Require | SslMode::Prefer if self.verifying => {
                "certificate chain verified ([store] ca_file), host name not checked"
            }
            _ => "certificate not verified",
        };
        (format!("with TLS (sslmode {mode}; {checked})"), false)
    }
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = TlsStream<Socket>;
    type TlsConnect = Recorded;
    type Error = openssl::error::ErrorStack;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Recorded, Self::Error> {
        let inner =
            <MakeTlsConnector as MakeTlsConnect<Socket>>::make_tls_connect(&mut self.make, domain)?;
        Ok(Recorded {
            inner,
            used: self.used.clone(),
        })
    }
}

/// One connection's handshake, noting that it happened.
pub struct Recorded {
    inner: postgres_openssl::TlsConnector,
    used: Arc<AtomicBool>,
}

type Handshake = Pin<
    Box<
        dyn Future<Output = Result<TlsStream<Socket>, Box<dyn std::error::Error + Send + Sync>>>
            + Send,
    >,
>;

impl TlsConnect<Socket> for Recorded {
    type Stream = TlsStream<Socket>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        let used = self.used;
        let handshake = self.inner.connect(stream);
        Box::pin(async move {
            let stream = handshake.await?;
            used.store(true, Ordering::SeqCst);
            Ok(stream)
        })
    }
}

/// A PostgreSQL error in the server's words: SQLSTATE, message, detail and
/// hint for the server's errors; for the others, each cause (refused,
/// timed out, the TLS failure) after tokio-postgres's summary.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// What to check when a connection cannot be opened, by its cause.
pub fn connect_fix(e: &tokio_postgres::Error) -> &'static str {
    if let Some(db) = e.as_db_error() {
        return match db.code().code() {
            "28P01" | "28000" => {
                "check the user and password of [store] url (and the server's pg_hba.conf)"
            }
            "3D000" => "check the database name of [store] url (create the database, then run `p11derive init`)",
            c if c.starts_with("57P") || c == "53300" => {
                "the server is starting, stopping or full; p11derive connects again at the next operation"
            }
            _ => "check [store] url and the server's log",
        };
    }
    let text = describe(e);
    if text.contains("TLS") || text.contains("SSL") || text.contains("certificate") {
        "check [store] sslmode and ca_file against the server's certificate (the CA that signed \
         it; under verify-full, a name or address of [store] url's host in it)"
    } else if text.contains("refused") {
        "check that the server runs and the host and port of [store] url"
    } else if text.contains("timed out") || text.contains("timeout") {
        "the server did not answer in [store] connect_timeout_ms; check that it runs and is \
         reachable"
    } else {
        "check that the server runs, and [store] url"
    }
}
