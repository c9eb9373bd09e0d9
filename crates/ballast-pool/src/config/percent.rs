//! Percent-encoding in database URLs: decoded strictly, as libpq does (a malformed escape or
//! `%00` is refused naming the setting), and written back for the driver.

use std::fmt::Write;

use super::ConfigError;

/// Percent-decodes a part of a URI as libpq does: a `%` must start two hex digits, and `%00` is
/// refused. The error names `setting` and the malformed escape, never the rest of the value (it
/// may be a password).
pub(crate) fn decode(setting: &'static str, text: &str) -> Result<String, ConfigError> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let escape = &text[i..text.len().min(i + 3)];
        let value = match (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (Some(high), Some(low)) => (high * 16 + low) as u8,
            _ => {
                let shown: String = escape.chars().take(3).collect();
                return Err(ConfigError::new(
                    setting,
                    format!("has an invalid percent-encoded token {shown:?}: `%` must start two hex digits"),
                ));
            }
        };
        if value == 0 {
            return Err(ConfigError::new(setting, "contains %00, a NUL character"));
        }
        out.push(value);
        i += 3;
    }
    String::from_utf8(out)
        .map_err(|_| ConfigError::new(setting, "is not UTF-8 once percent-decoded"))
}

/// Percent-decodes the value of the URL parameter `key`; an error names the parameter.
pub(crate) fn decode_param(key: &str, value: &str) -> Result<String, ConfigError> {
    const NAMED: [&str; 17] = [
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "application_name",
        "options",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "schema",
        "target_session_attrs",
        "load_balance_hosts",
        "socket",
        "pgbouncer",
    ];
    match NAMED.iter().find(|name| **name == key) {
        Some(name) => decode(name, value),
        None => decode("url", value).map_err(|error| {
            ConfigError::new(
                "url",
                format!("parameter `{}` {}", ballast_core::redact(key), error.reason),
            )
        }),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters: tokio-postgres splits host
/// and port lists before it decodes, so an encoded `,` or `:` stays part of a name.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}
