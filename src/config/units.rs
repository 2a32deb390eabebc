//! Parsing of the values written as text in `proxy.toml`: durations (`"250ms"`, `"5s"`,
//! `"2m"`), sizes (`"64KiB"`, `"16MiB"`, or a plain integer of bytes), upstream endpoints
//! (`"ws://host:port"`) and token sources (`"query:<name>"`).

use std::time::Duration;

use super::raw::RawSize;
use super::{Endpoint, TokenSource};

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h 30m"`, `"0s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.chars().all(|c| c.is_ascii_digit()) && !trimmed.is_empty() {
        return Err(format!(
            "`{text}` has no unit; write e.g. \"{trimmed}s\" or \"{trimmed}ms\""
        ));
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"250ms\", \"5s\", \"2m\"")
    })
}

/// Parses a size in bytes: an integer, or a number with a unit
/// (B, KiB, MiB, GiB binary; KB, MB, GB decimal). Units are case-insensitive.
pub fn parse_size(raw: &RawSize) -> Result<u64, String> {
    let text = match raw {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!("`{text}` is not a size; write bytes as an integer or e.g. \"64KiB\", \"16MiB\"")
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Formats a byte count the way an operator would write it in the config.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

pub fn endpoint(text: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL; write e.g. \"ws://127.0.0.1:9000\""))?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("`{text}` must start with ws:// or wss://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{text}` has a path; endpoints are origins (scheme, host, port) and the client's path is forwarded as is"
        ));
    }
    Ok(Endpoint {
        secure,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: uri.port_u16().unwrap_or(if secure { 443 } else { 80 }),
    })
}

pub fn token_source(text: &str) -> Result<Option<TokenSource>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let (kind, name) = text.split_once(':').unwrap_or((text, ""));
    if name.is_empty() {
        return Err(format!(
            "`{text}` must be \"\", \"header:authorization\", \"query:<name>\" or \"cookie:<name>\""
        ));
    }
    match kind {
        "header" if name.eq_ignore_ascii_case("authorization") => {
            Ok(Some(TokenSource::Header(name.to_ascii_lowercase())))
        }
        "header" => Err(format!(
            "`{text}`: only the Authorization header (a Bearer token) is supported"
        )),
        "query" => Ok(Some(TokenSource::Query(name.to_owned()))),
        "cookie" => Ok(Some(TokenSource::Cookie(name.to_owned()))),
        _ => Err(format!(
            "`{text}` must be \"\", \"header:authorization\", \"query:<name>\" or \"cookie:<name>\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        let t = |s: &str| parse_size(&RawSize::Text(s.into()));
        assert_eq!(t("64KiB"), Ok(65_536));
        assert_eq!(t("16MiB"), Ok(16 << 20));
        assert_eq!(t("1mib"), Ok(1 << 20));
        assert_eq!(t("1000"), Ok(1000));
        assert_eq!(t("2KB"), Ok(2000));
        assert_eq!(parse_size(&RawSize::Bytes(12)), Ok(12));
        assert!(t("lots").is_err());
        assert!(t("5 parsecs").is_err());
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(1000), "1000");
    }
}
