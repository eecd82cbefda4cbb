//! etcd's URL grammar for URL-list flags, and the text form etcd gives URLs.

use url::Url;

/// A URL as etcd (Go's `url.URL.String()`) prints it: `http://10.0.0.1:2380`, with no
/// trailing slash and the port always written (the `url` crate would drop a scheme's
/// default port). This form is what member IDs hash and what members report.
pub fn url_string(u: &Url) -> String {
    match (u.scheme(), u.host_str()) {
        ("http" | "https", Some(host)) => format!("{}://{}:{}", u.scheme(), host, port(u)),
        _ => u.as_str().to_string(),
    }
}

/// Parses a comma-separated URL list as etcd's `types.NewURLs` does: each must be
/// `http`, `https`, `unix` or `unixs`; http(s) ones need `host:port` and no path.
/// Duplicates are dropped and the list is sorted by text.
pub fn parse_url_list(value: &str) -> Result<Vec<Url>, String> {
    let mut out: Vec<Url> = Vec::new();
    for raw in value.split(',') {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let u = parse_one(raw)?;
        if !out.iter().any(|o| url_string(o) == url_string(&u)) {
            out.push(u);
        }
    }
    out.sort_by_key(url_string);
    Ok(out)
}

fn parse_one(raw: &str) -> Result<Url, String> {
    let u = Url::parse(raw).map_err(|e| format!("parse {raw:?}: {e}"))?;
    match u.scheme() {
        "http" | "https" => {}
        "unix" | "unixs" => return Ok(u),
        _ => {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {raw}"
            ));
        }
    }
    // Go's url keeps the port exactly as written; `url` drops a scheme's default port,
    // so check the text for the host:port form.
    let after_scheme = &raw[raw.find("://").map_or(0, |i| i + 3)..];
    let host_port = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    if !has_port(host_port) {
        return Err(format!(
            "URL address does not have the form \"host:port\": {raw}"
        ));
    }
    if after_scheme.len() > host_port.len() {
        return Err(format!("URL must not contain a path: {raw}"));
    }
    Ok(u)
}

fn has_port(host_port: &str) -> bool {
    let (host, port) = match host_port.rsplit_once(':') {
        Some(hp) => hp,
        None => return false,
    };
    if host.starts_with('[') != host.ends_with(']') {
        return false;
    }
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
}

/// The port of an http(s) URL, including a scheme's default one written out.
pub fn port(u: &Url) -> u16 {
    u.port_or_known_default().unwrap_or(0)
}

/// etcd's rule for listen URLs: an IP literal or `localhost` (unix sockets exempt).
pub fn check_bind_url(u: &Url) -> Result<(), String> {
    if matches!(u.scheme(), "unix" | "unixs") {
        return Ok(());
    }
    match u.host() {
        Some(url::Host::Ipv4(_)) | Some(url::Host::Ipv6(_)) => Ok(()),
        Some(url::Host::Domain("localhost")) => Ok(()),
        _ => Err(format!(
            "expected IP in URL for binding ({})",
            url_string(u)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_errors_name_the_url() {
        assert_eq!(
            parse_url_list("ftp://1.2.3.4:5").unwrap_err(),
            "URL scheme must be http, https, unix, or unixs: ftp://1.2.3.4:5"
        );
        assert_eq!(
            parse_url_list("http://1.2.3.4").unwrap_err(),
            "URL address does not have the form \"host:port\": http://1.2.3.4"
        );
        assert_eq!(
            parse_url_list("http://10.0.0.1:2380/").unwrap_err(),
            "URL must not contain a path: http://10.0.0.1:2380/"
        );
    }

    #[test]
    fn lists_are_deduplicated_sorted_and_printed_like_go() {
        let l = parse_url_list("http://b:2,http://a:1,http://b:2").unwrap();
        let s: Vec<String> = l.iter().map(url_string).collect();
        assert_eq!(s, ["http://a:1", "http://b:2"]);
        let l = parse_url_list("https://[::1]:443").unwrap();
        assert_eq!(url_string(&l[0]), "https://[::1]:443");
        assert_eq!(port(&l[0]), 443);
    }

    #[test]
    fn bind_urls_must_be_ips() {
        let ok = parse_url_list("http://127.0.0.1:1,http://localhost:2,http://[::1]:3").unwrap();
        assert!(ok.iter().all(|u| check_bind_url(u).is_ok()));
        let bad = parse_url_list("http://myhost:2380").unwrap();
        assert_eq!(
            check_bind_url(&bad[0]).unwrap_err(),
            "expected IP in URL for binding (http://myhost:2380)"
        );
    }
}
