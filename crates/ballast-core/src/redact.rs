//! Removing connection URLs and passwords from text before it is shown or logged.

use std::borrow::Cow;

/// What replaces a removed secret.
const REDACTED: &str = "[redacted]";

/// Keys whose values are secrets in `key=value` connection strings (libpq, MySQL, ODBC).
const SECRET_KEYS: [&str; 3] = ["password", "passwd", "pwd"];

/// Removes connection URLs and `password=...` values from `text`.
///
/// Any `scheme://...` run (up to white space or a quote) becomes `scheme://[redacted]`: a URL may
/// carry a password in its user info or its query, and its host and port are internal too. A
/// `password=`, `passwd=` or `pwd=` value (any case, as in libpq and ODBC connection strings)
/// becomes `[redacted]`. Text with neither is returned as it is, without copying.
///
/// ```
/// use ballast_core::redact;
///
/// assert_eq!(
///     redact("cannot connect to postgres://app:s3cret@db:5432/prod: refused"),
///     "cannot connect to postgres://[redacted] refused",
/// );
/// assert_eq!(redact("host=db user=app password=s3cret"), "host=db user=app password=[redacted]");
/// assert_eq!(redact("nothing secret"), "nothing secret");
/// ```
pub fn redact(text: &str) -> Cow<'_, str> {
    let urls = redact_urls(text);
    match redact_key_values(&urls) {
        Cow::Borrowed(_) => urls,
        Cow::Owned(owned) => Cow::Owned(owned),
    }
}

/// Whether `c` ends the URL or value being removed.
fn ends_secret(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

fn redact_urls(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find("://") else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut next = Some(first);
    while let Some(at) = next {
        let after = &rest[at + 3..];
        let end = after.find(ends_secret).unwrap_or(after.len());
        out.push_str(&rest[..at + 3]);
        out.push_str(REDACTED);
        rest = &after[end..];
        next = rest.find("://");
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn redact_key_values(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    for key in SECRET_KEYS {
        let mut from = 0;
        while let Some(found) = lower[from..].find(key) {
            let start = from + found;
            from = start + key.len();
            // Only a whole key: `mypassword=` is not `password=`, but `;password=` is.
            let whole_word = start == 0 || !lower.as_bytes()[start - 1].is_ascii_alphanumeric();
            let rest = &lower[from..];
            let value_start = rest.len() - rest.trim_start().len();
            if !whole_word || !rest[value_start..].starts_with(['=', ':']) {
                continue;
            }
            let after_sign = from + value_start + 1;
            let value = text[after_sign..].trim_start();
            let mut value_begin = text.len() - value.len();
            let value_end = match value.chars().next() {
                // A quoted value (`password='two words'`) runs to its closing quote.
                Some(quote @ ('\'' | '"')) => {
                    value_begin += 1;
                    value[1..]
                        .find(quote)
                        .map_or(text.len(), |end| value_begin + end)
                }
                _ => value
                    .find(|c: char| ends_secret(c) || matches!(c, '&' | ';' | ','))
                    .map_or(text.len(), |end| value_begin + end),
            };
            if value_end > value_begin {
                cuts.push((value_begin, value_end));
            }
        }
    }
    if cuts.is_empty() {
        return Cow::Borrowed(text);
    }
    cuts.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in cuts {
        if start < copied {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn removes_urls_of_every_scheme() {
        let cases = [
            ("postgres://u:p@h:5432/d", "postgres://[redacted]"),
            (
                "postgresql://u:p@h/d?sslmode=require",
                "postgresql://[redacted]",
            ),
            (
                "mysql://root:p@127.0.0.1:3306/test x",
                "mysql://[redacted] x",
            ),
            (
                "url \"mysql://a:b@c/d\" bad",
                "url \"mysql://[redacted]\" bad",
            ),
            (
                "a postgres://x b redis://y c",
                "a postgres://[redacted] b redis://[redacted] c",
            ),
            ("ends with ://", "ends with ://[redacted]"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "{input}");
        }
    }

    #[test]
    fn removes_password_values() {
        let cases = [
            ("password=s3cret host=h", "password=[redacted] host=h"),
            ("PASSWORD = s3cret", "PASSWORD = [redacted]"),
            ("user=u;Pwd=s3cret;host=h", "user=u;Pwd=[redacted];host=h"),
            ("passwd: s3cret", "passwd: [redacted]"),
            ("password='s3 cret' x", "password='[redacted]' x"),
            ("pwd=\"unterminated", "pwd=\"[redacted]"),
            ("mypassword=kept", "mypassword=kept"),
            (
                "password authentication failed for user \"app\"",
                "password authentication failed for user \"app\"",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "{input}");
        }
    }

    #[test]
    fn leaves_clean_text_borrowed() {
        assert!(matches!(
            redact("connection refused"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for input in [
            "://",
            "password=",
            "password",
            "ñ://ñ password=ñ",
            "a=b&pwd=",
            "x://\u{0}",
        ] {
            let _ = redact(input);
        }
    }
}
