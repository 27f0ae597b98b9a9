//! The `[alerts] webhook` URL, checked when the configuration is read.

use hyper::Uri;
use std::fmt;

/// A `[alerts] webhook` URL: `http://HOST[:PORT][/PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address to connect to (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// The URL as logged: scheme and authority, the path (which may carry a token) elided.
    shown: String,
}

impl WebhookUrl {
    /// Parses and checks a webhook URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        // Errors name the URL without its path and credentials, which may carry a token.
        let shown = redact(text);
        let uri: Uri = text.parse().map_err(|err| {
            format!("{shown:?} is not a URL ({err}); expected http://HOST:PORT/PATH")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                "{shown:?}: https is not supported; give an http:// URL (a local relay can add TLS)"
            ))
            }
            _ => {
                return Err(format!(
                    "{shown:?}: expected an http:// URL, such as http://127.0.0.1:9000/limiter"
                ))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{shown:?}: no host; expected http://HOST:PORT/PATH"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{shown:?}: user information in the URL is not supported"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!(
                "{shown:?}: no host; expected http://HOST:PORT/PATH"
            ));
        }
        // What follows the last colon, unless that colon is inside an IPv6 address.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, port)) if !port.contains(']') => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("{shown:?}: {port:?} is not a port (1 to 65535)"))?,
            _ => 80,
        };
        Ok(WebhookUrl {
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            shown,
        })
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `http://user:secret@host:9000/hook?token=x` → `http://host:9000/…`: what may be logged of a
/// URL.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let elided = if end < rest.len() && &rest[end..] != "/" {
        "/…"
    } else {
        ""
    };
    format!("{scheme}{host}{elided}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_must_be_http_with_a_host() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/limiter?x=1").unwrap();
        assert_eq!(
            (
                url.host.as_str(),
                url.port,
                url.authority.as_str(),
                url.path.as_str()
            ),
            ("127.0.0.1", 9000, "127.0.0.1:9000", "/limiter?x=1")
        );
        let url = WebhookUrl::parse("http://alerts.example").unwrap();
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        let url = WebhookUrl::parse("http://[2001:2::1]:8080/hook").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("2001:2::1", 8080));
        for (bad, why) in [
            ("https://127.0.0.1:9000/x", "https is not supported"),
            ("ftp://127.0.0.1/x", "http://"),
            ("127.0.0.1:9000", "http://"),
            ("/limiter", "http://"),
            ("http://", "not a URL"),
            ("http://127.0.0.1:0/x", "\"0\" is not a port"),
            ("http://127.0.0.1:99999/x", "\"99999\" is not a port"),
            ("http://127.0.0.1:/x", "\"\" is not a port"),
            ("http://user:pw@127.0.0.1/x", "user information"),
            ("not a url", "not a URL"),
        ] {
            let err = WebhookUrl::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_webhook_url_is_shown_without_its_path_or_credentials() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/hook/s3cr3t?token=t0k3n").unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:9000/…");
        let err = WebhookUrl::parse("http://user:s3cr3t@127.0.0.1/x?token=t0k3n").unwrap_err();
        assert!(!err.contains("s3cr3t") && !err.contains("t0k3n"), "{err}");
        let err = WebhookUrl::parse("https://127.0.0.1/hook/s3cr3t").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert_eq!(redact("http://alerts.example"), "http://alerts.example");
    }
}
