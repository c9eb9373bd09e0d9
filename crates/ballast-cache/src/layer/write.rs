//! What a successful unsafe request makes stale (RFC 9111 §4.4).

use crate::store::ResponseCache;

/// What a successful unsafe request makes stale (RFC 9111 §4.4): its target's path, and the
/// paths its response's `Location` and `Content-Location` name on the same host.
#[derive(Debug)]
pub(super) struct WriteInvalidation {
    host: Option<String>,
    path: String,
}

impl WriteInvalidation {
    pub(super) fn of(parts: &http::request::Parts) -> Self {
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
            .map(str::to_owned);
        WriteInvalidation {
            host,
            path: parts.uri.path().to_owned(),
        }
    }

    /// Invalidates the target and the same-origin `Location`/`Content-Location` paths of a
    /// response with `headers`. Every stored variant and query of those paths goes: invalidating
    /// more than the target URI is allowed, and cheaper than telling queries apart.
    pub(super) fn apply(self, cache: &ResponseCache, headers: &http::HeaderMap) {
        cache.invalidate_paths_now(self.paths(headers));
    }

    /// The paths [`apply`](Self::apply) invalidates.
    fn paths(self, headers: &http::HeaderMap) -> Vec<String> {
        let mut paths = vec![self.path];
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(uri) = headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<http::Uri>().ok())
            else {
                continue;
            };
            let same_origin = match uri.authority() {
                None => true,
                Some(authority) => self.host.as_deref() == Some(authority.as_str()),
            };
            if same_origin && uri.path().starts_with('/') && !paths.iter().any(|p| p == uri.path())
            {
                paths.push(uri.path().to_owned());
            }
        }
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(uri: &str, host: Option<&str>) -> WriteInvalidation {
        let mut request = http::Request::post(uri);
        if let Some(host) = host {
            request = request.header(http::header::HOST, host);
        }
        WriteInvalidation::of(&request.body(()).unwrap().into_parts().0)
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_target_and_same_origin_locations_are_invalidated() {
        let paths = write("/items", Some("shop.example")).paths(&headers(&[
            ("location", "/items/7"),
            ("content-location", "http://shop.example/items/7/view"),
        ]));
        assert_eq!(paths, ["/items", "/items/7", "/items/7/view"]);
    }

    #[test]
    fn another_hosts_location_is_left_alone_and_nothing_twice() {
        let paths = write("http://shop.example/items", None).paths(&headers(&[
            ("location", "http://elsewhere.example/items/7"),
            ("content-location", "/items"),
        ]));
        assert_eq!(paths, ["/items"]);
        // Without a Host header or an absolute target, only relative locations are same-origin.
        let paths = write("/items", None).paths(&headers(&[
            ("location", "http://shop.example/items/7"),
            ("content-location", "not a uri at all"),
        ]));
        assert_eq!(paths, ["/items"]);
    }
}
