//! The TLS parameters of a database URL (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, Prisma's
//! `sslaccept`): gathered, checked together, and their PEM files read when the URL is.

use std::fmt;

use super::{Backend, ConfigError};

/// libpq's `sslmode`s that use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Encrypt when the server offers it; the certificate is not checked.
    Prefer,
    /// Encrypt; the certificate is not checked.
    Require,
    /// Encrypt; the certificate must lead to a trusted root.
    VerifyCa,
    /// Encrypt; the certificate must lead to a trusted root and name the host.
    VerifyFull,
}

/// TLS to the server (PostgreSQL, MySQL or MariaDB) as the URL asks for it, the files already read.
#[derive(Clone, PartialEq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    /// `sslrootcert`'s certificates (PEM); `None`: the public roots.
    pub(crate) root_pem: Option<Vec<u8>>,
    /// `sslcert` and `sslkey` (PEM).
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("sslrootcert", &self.root_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// The TLS parameters of a URL, gathered before they are checked together.
#[derive(Default)]
pub(super) struct TlsParameters {
    mode: Option<Option<SslMode>>,
    accept: Option<SslMode>,
    root: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

impl TlsParameters {
    /// Takes `key` when it is a TLS parameter for `backend`: `Ok(false)` leaves it to the
    /// caller.
    pub(super) fn read(
        &mut self,
        key: &str,
        value: &str,
        backend: Backend,
    ) -> Result<bool, ConfigError> {
        match key {
            "sslmode" if backend != Backend::Sqlite => {
                self.mode = Some(match value {
                    "disable" => None,
                    "prefer" => Some(SslMode::Prefer),
                    "require" => Some(SslMode::Require),
                    "verify-ca" => Some(SslMode::VerifyCa),
                    "verify-full" => Some(SslMode::VerifyFull),
                    _ => {
                        return Err(ConfigError::new(
                            "sslmode",
                            "must be disable, prefer, require, verify-ca or verify-full",
                        ))
                    }
                });
            }
            "sslaccept" if backend != Backend::Sqlite => {
                self.accept = Some(match value {
                    "strict" => SslMode::VerifyFull,
                    "accept_invalid_certs" => SslMode::Require,
                    _ => {
                        return Err(ConfigError::new(
                            "sslaccept",
                            "must be strict or accept_invalid_certs",
                        ))
                    }
                });
            }
            "sslrootcert" if backend != Backend::Sqlite => {
                self.root = Some(read_pem("sslrootcert", value)?);
            }
            "sslcert" if backend == Backend::Postgres => {
                self.cert = Some(read_pem("sslcert", value)?);
            }
            // Prisma's MySQL `sslcert` is the server's certificate (or its CA): a root.
            "sslcert" if backend == Backend::Mysql => {
                self.root = Some(read_pem("sslcert", value)?);
            }
            "sslkey" if backend == Backend::Postgres => {
                self.key = Some(read_pem("sslkey", value)?);
            }
            "sslidentity" | "sslpassword" if backend != Backend::Sqlite => {
                return Err(ConfigError::new(
                if key == "sslidentity" { "sslidentity" } else { "sslpassword" },
                "PKCS#12 identities and encrypted keys are not supported (PostgreSQL: give sslcert and sslkey as PEM files)",
            ));
            }
            tls_parameter if TLS_PARAMETERS.contains(&tls_parameter) => {
                return Err(ConfigError::new(
                "url",
                format!("parameter `{tls_parameter}` is for PostgreSQL (MySQL: sslmode, sslaccept, sslrootcert or Prisma's sslcert)"),
            ));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The settings, and the `sslmode` the driver is given (it knows disable, prefer and
    /// require; the verification is ballast's).
    pub(super) fn settings(
        self,
        backend: Backend,
    ) -> Result<(Option<TlsSettings>, Option<&'static str>), ConfigError> {
        let asked = match (self.mode, self.accept) {
            // Prisma: `sslaccept` says how a TLS connection checks the server.
            (Some(Some(mode)), Some(accept)) if mode != SslMode::Prefer => Some(accept),
            (None, Some(accept)) => Some(accept),
            (Some(mode), _) => mode,
            (None, None) => None,
        };
        let client = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new("sslkey", "is missing: sslcert needs it"))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("sslcert", "is missing: sslkey needs it"))
            }
        };
        // mysql_async cannot fall back from TLS to plain text: MySQL's `prefer` is plain text.
        let asked = asked.filter(|mode| backend == Backend::Postgres || *mode != SslMode::Prefer);
        let driver_mode = |mode: &'static str| (backend == Backend::Postgres).then_some(mode);
        let Some(mode) = asked else {
            if client.is_some() || self.root.is_some() {
                return Err(ConfigError::new(
                    "sslmode",
                    "certificates are given but sslmode is not set: say require, verify-ca or verify-full",
                ));
            }
            // `disable`, or nothing: plain text (libpq would prefer TLS; ballast asks for it).
            let driver = self.mode.and_then(|_| driver_mode("sslmode=disable"));
            return Ok((None, driver));
        };
        if !cfg!(feature = "tls") {
            if mode == SslMode::Prefer {
                // As libpq against a server without TLS: plain text.
                return Ok((None, driver_mode("sslmode=prefer")));
            }
            return Err(ConfigError::new(
                "sslmode",
                "TLS needs ballast-pool's `tls` feature (ballast: `tls`), which this build does not have",
            ));
        }
        let driver = if mode == SslMode::Prefer {
            "sslmode=prefer"
        } else {
            "sslmode=require"
        };
        Ok((
            Some(TlsSettings {
                mode,
                root_pem: self.root,
                client,
            }),
            driver_mode(driver),
        ))
    }
}

/// Reads a PEM file a TLS parameter names; a file that cannot be read, or holds no PEM, fails
/// at startup with the parameter's name.
fn read_pem(setting: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|error| ConfigError::new(setting, format!("cannot read {path}: {error}")))?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(ConfigError::new(
            setting,
            format!("{path} holds no PEM data"),
        ));
    }
    Ok(bytes)
}

/// Every TLS parameter's name: one given for a backend that does not take it is refused by name.
const TLS_PARAMETERS: [&str; 6] = [
    "sslcert",
    "sslidentity",
    "sslpassword",
    "sslaccept",
    "sslrootcert",
    "sslkey",
];
