//! permessage-deflate negotiation (RFC 7692 §5, §7.1), as pure functions: holdfast as the
//! server on the client hop (`accept`: the first offer it can honour, or none — never a
//! failed handshake) and as the client on the upstream hop (`offer`, then `check_answer`:
//! an answer that does not fit the offer fails the upstream handshake).
//!
//! The parameter names are the RFC's, so `server_*` always means the server's end of the
//! hop: holdfast's on the client hop, the upstream's on the upstream hop.

use super::{Params, Settings};

pub const EXTENSION: &str = "permessage-deflate";

/// The window bits zlib can compress with; a peer may ask for 8 (RFC 7692 allows it), which
/// holdfast cannot honour as a compressor. As a decompressor it inflates 8 with 9.
const MIN_WINDOW: u8 = 9;
const MAX_WINDOW: u8 = 15;

/// One offer's (or answer's) parameters, parsed and checked for RFC 7692's rules: each at
/// most once, no unknown parameter, window bits 8-15 (`client_max_window_bits` may have no
/// value in an offer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Parameters {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// The extensions in `Sec-WebSocket-Extensions` values, in order: each a name and its
/// parameters (`name[=value]`, a value possibly quoted).
fn extensions<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, Vec<(&'a str, Option<&'a str>)>)> {
    values
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter(|ext| !ext.trim().is_empty())
        .map(|ext| {
            let mut parts = ext.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let params = parts
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim())),
                    None => (p, None),
                })
                .collect();
            (name, params)
        })
}

/// A window-bits value: 8-15, digits only, no leading zero, possibly quoted.
fn window_bits(value: &str) -> Option<u8> {
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    if value.is_empty()
        || value.len() > 2
        || value.starts_with('0')
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    value
        .parse()
        .ok()
        .filter(|bits| (8..=MAX_WINDOW).contains(bits))
}

/// Checks one permessage-deflate element's parameters; `None` if any breaks RFC 7692.
/// `answer`: the server's response, where `client_max_window_bits` needs a value.
fn parameters(params: &[(&str, Option<&str>)], answer: bool) -> Option<Parameters> {
    let mut p = Parameters::default();
    for (name, value) in params {
        let twice = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                std::mem::replace(&mut p.server_no_context_takeover, true)
            }
            "client_no_context_takeover" if value.is_none() => {
                std::mem::replace(&mut p.client_no_context_takeover, true)
            }
            "server_max_window_bits" => p
                .server_max_window_bits
                .replace(window_bits((*value)?)?)
                .is_some(),
            "client_max_window_bits" => {
                let bits = match value {
                    Some(v) => Some(window_bits(v)?),
                    None if answer => return None,
                    None => None,
                };
                p.client_max_window_bits.replace(bits).is_some()
            }
            _ => return None,
        };
        if twice {
            return None;
        }
    }
    Some(p)
}

/// Holdfast as the server: the first permessage-deflate offer in `values` it can honour
/// under `settings`, as the response header's value and the parameters it uses. `None`:
/// no such offer (the handshake goes on without compression).
///
/// | offer                              | holdfast                                       |
/// |------------------------------------|------------------------------------------------|
/// | any unknown or repeated parameter  | declines that offer                            |
/// | `server_max_window_bits=8`         | declines it (zlib cannot compress with 8)      |
/// | `server_max_window_bits=N`         | compresses with min(N, its own), answers it    |
/// | `server_no_context_takeover`       | resets its compressor per message, answers it  |
/// | `client_max_window_bits` (no value)| answers its own `client_max_window_bits` if < 15 |
/// | `client_max_window_bits=N`         | answers min(N, its own)                        |
/// | no `client_max_window_bits`        | expects windows up to 15 (it may not ask less) |
/// | `client_no_context_takeover`       | answers it; so does its own setting, unasked   |
pub fn accept<'a>(
    values: impl IntoIterator<Item = &'a str>,
    settings: &Settings,
) -> Option<(String, Params)> {
    extensions(values)
        .filter(|(name, _)| name.eq_ignore_ascii_case(EXTENSION))
        .find_map(|(_, params)| accept_one(&parameters(&params, false)?, settings))
}

fn accept_one(offer: &Parameters, settings: &Settings) -> Option<(String, Params)> {
    let mut response = String::from(EXTENSION);
    let send_window = match offer.server_max_window_bits {
        Some(n) if n < MIN_WINDOW => return None,
        Some(n) => {
            let bits = n.min(settings.server_max_window_bits);
            response.push_str(&format!("; server_max_window_bits={bits}"));
            bits
        }
        None => settings.server_max_window_bits,
    };
    let send_takeover = !(offer.server_no_context_takeover || settings.server_no_context_takeover);
    if !send_takeover {
        response.push_str("; server_no_context_takeover");
    }
    let recv_window = match offer.client_max_window_bits {
        None => MAX_WINDOW,
        Some(offered) => {
            let bits = offered
                .unwrap_or(MAX_WINDOW)
                .min(settings.client_max_window_bits);
            if bits < MAX_WINDOW || offered.is_some() {
                response.push_str(&format!("; client_max_window_bits={bits}"));
            }
            bits
        }
    };
    let recv_takeover = !(offer.client_no_context_takeover || settings.client_no_context_takeover);
    if !recv_takeover {
        response.push_str("; client_no_context_takeover");
    }
    Some((
        response,
        Params {
            send_window,
            send_takeover,
            recv_window: recv_window.max(MIN_WINDOW),
            recv_takeover,
        },
    ))
}

/// Holdfast as the client: the offer it sends the upstream under `settings`.
pub fn offer(settings: &Settings) -> String {
    let mut offer = String::from(EXTENSION);
    if settings.server_max_window_bits < MAX_WINDOW {
        offer.push_str(&format!(
            "; server_max_window_bits={}",
            settings.server_max_window_bits
        ));
    }
    if settings.server_no_context_takeover {
        offer.push_str("; server_no_context_takeover");
    }
    if settings.client_no_context_takeover {
        offer.push_str("; client_no_context_takeover");
    }
    // Always offered: holdfast can compress with any window the upstream asks for. An
    // answer of 8 is honoured with a 9-bit compressor: zlib never refers further back than
    // the window less its lookahead (512 - 262 bytes), which fits in 256.
    offer.push_str("; client_max_window_bits");
    if settings.client_max_window_bits < MAX_WINDOW {
        offer.push_str(&format!("={}", settings.client_max_window_bits));
    }
    offer
}

/// Holdfast as the client: what the upstream's answer to `offer(settings)` means. No
/// extension header: no compression. An answer that is not one permessage-deflate element
/// within the offer is an error (the upstream handshake fails with it).
pub fn check_answer<'a>(
    values: impl IntoIterator<Item = &'a str>,
    settings: &Settings,
) -> Result<Option<Params>, String> {
    let mut answered = extensions(values);
    let Some((name, params)) = answered.next() else {
        return Ok(None);
    };
    if answered.next().is_some() {
        return Err("more than one extension in the answer; holdfast offered one".into());
    }
    if !name.eq_ignore_ascii_case(EXTENSION) {
        return Err(format!("extension {name:?} was not offered"));
    }
    let answer = parameters(&params, true)
        .ok_or_else(|| format!("malformed {EXTENSION} answer: {params:?}"))?;
    // The upstream's window: at most what was asked. An answer without it did not take
    // up the request, so holdfast inflates with a 15-bit window (which reads any stream).
    let recv_window = match answer.server_max_window_bits {
        Some(n) if n > settings.server_max_window_bits => {
            return Err(format!(
                "server_max_window_bits={n} is more than the {} offered",
                settings.server_max_window_bits
            ));
        }
        Some(n) => n,
        None => MAX_WINDOW,
    };
    if settings.server_no_context_takeover && !answer.server_no_context_takeover {
        return Err("server_no_context_takeover was asked for and not answered".into());
    }
    let send_window = match answer.client_max_window_bits {
        Some(Some(n)) if n > settings.client_max_window_bits => {
            return Err(format!(
                "client_max_window_bits={n} is more than the {} offered",
                settings.client_max_window_bits
            ));
        }
        Some(Some(n)) => n,
        _ => settings.client_max_window_bits,
    };
    Ok(Some(Params {
        send_window: send_window.max(MIN_WINDOW),
        send_takeover: !(answer.client_no_context_takeover || settings.client_no_context_takeover),
        recv_window: recv_window.max(MIN_WINDOW),
        recv_takeover: !answer.server_no_context_takeover,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer, the settings, and the response header and parameters expected.
    type AcceptRow<'a> = (&'a str, &'a Settings, Option<(&'a str, Params)>);
    /// An answer, the settings, and what it means (`Err(())`: the handshake fails).
    type AnswerRow<'a> = (&'a [&'a str], &'a Settings, Result<Option<Params>, ()>);

    fn settings() -> Settings {
        Settings::default()
    }

    fn with(f: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = settings();
        f(&mut s);
        s
    }

    fn accepted(offer: &str, s: &Settings) -> Option<(String, Params)> {
        accept([offer], s)
    }

    fn params(
        send_window: u8,
        send_takeover: bool,
        recv_window: u8,
        recv_takeover: bool,
    ) -> Params {
        Params {
            send_window,
            send_takeover,
            recv_window,
            recv_takeover,
        }
    }

    #[test]
    fn server_side_decision_table() {
        let d = settings();
        let small = with(|s| {
            s.server_max_window_bits = 10;
            s.client_max_window_bits = 11;
        });
        let no_takeover = with(|s| {
            s.server_no_context_takeover = true;
            s.client_no_context_takeover = true;
        });
        #[rustfmt::skip]
        let table: &[AcceptRow] = &[
            // Firefox: bare offer.
            ("permessage-deflate", &d, Some(("permessage-deflate", params(15, true, 15, true)))),
            // Chrome: client_max_window_bits without a value.
            ("permessage-deflate; client_max_window_bits", &d,
                Some(("permessage-deflate", params(15, true, 15, true)))),
            ("permessage-deflate; client_max_window_bits", &small,
                Some(("permessage-deflate; client_max_window_bits=11", params(10, true, 11, true)))),
            // A client that cannot take a smaller window still gets compression (15).
            ("permessage-deflate", &small, Some(("permessage-deflate", params(10, true, 15, true)))),
            ("permessage-deflate; client_max_window_bits=9", &d,
                Some(("permessage-deflate; client_max_window_bits=9", params(15, true, 9, true)))),
            ("permessage-deflate; client_max_window_bits=8", &d,
                Some(("permessage-deflate; client_max_window_bits=8", params(15, true, 9, true)))),
            ("permessage-deflate; server_max_window_bits=12", &d,
                Some(("permessage-deflate; server_max_window_bits=12", params(12, true, 15, true)))),
            ("permessage-deflate; server_max_window_bits=12", &small,
                Some(("permessage-deflate; server_max_window_bits=10", params(10, true, 15, true)))),
            ("permessage-deflate; server_max_window_bits=\"12\"", &d,
                Some(("permessage-deflate; server_max_window_bits=12", params(12, true, 15, true)))),
            ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", &d,
                Some(("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                      params(15, false, 15, false)))),
            // holdfast's own no-takeover settings are answered unasked.
            ("permessage-deflate", &no_takeover,
                Some(("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                      params(15, false, 15, false)))),
            // Offers holdfast cannot honour: declined, never a failed handshake.
            ("permessage-deflate; server_max_window_bits=8", &d, None),
            ("permessage-deflate; server_max_window_bits", &d, None),
            ("permessage-deflate; server_max_window_bits=16", &d, None),
            ("permessage-deflate; server_max_window_bits=010", &d, None),
            ("permessage-deflate; server_max_window_bits=09", &d, None),
            ("permessage-deflate; server_max_window_bits=\"12", &d, None),
            ("permessage-deflate; client_max_window_bits=7", &d, None),
            ("permessage-deflate; client_max_window_bits=abc", &d, None),
            ("permessage-deflate; server_no_context_takeover=1", &d, None),
            ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", &d, None),
            ("permessage-deflate; client_max_window_bits; client_max_window_bits=10", &d, None),
            ("permessage-deflate; mystery", &d, None),
            ("x-webkit-deflate-frame", &d, None),
            ("", &d, None),
            (";;;", &d, None),
            // Several offers: the first acceptable one wins.
            ("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits", &d,
                Some(("permessage-deflate", params(15, true, 15, true)))),
            ("foo, permessage-deflate; server_max_window_bits=11, permessage-deflate", &d,
                Some(("permessage-deflate; server_max_window_bits=11", params(11, true, 15, true)))),
            ("PerMessage-Deflate; Client_Max_Window_Bits", &d,
                Some(("permessage-deflate", params(15, true, 15, true)))),
        ];
        for (offer, settings, expected) in table {
            let got = accepted(offer, settings);
            let expected = expected.map(|(h, p)| (h.to_owned(), p));
            assert_eq!(got, expected, "offer {offer:?}");
        }
        // Offers in separate header lines count in order too.
        let got = accept(["permessage-deflate; bogus", "permessage-deflate"], &d);
        assert_eq!(got.map(|(h, _)| h).as_deref(), Some("permessage-deflate"));
    }

    #[test]
    fn upstream_offers_and_answers() {
        let d = settings();
        assert_eq!(offer(&d), "permessage-deflate; client_max_window_bits");
        let small = with(|s| {
            s.server_max_window_bits = 10;
            s.client_max_window_bits = 12;
            s.server_no_context_takeover = true;
        });
        assert_eq!(
            offer(&small),
            "permessage-deflate; server_max_window_bits=10; server_no_context_takeover; client_max_window_bits=12"
        );
        #[rustfmt::skip]
        let table: &[AnswerRow] = &[
            (&[], &d, Ok(None)),
            (&["permessage-deflate"], &d, Ok(Some(params(15, true, 15, true)))),
            (&["permessage-deflate; client_max_window_bits=10"], &d, Ok(Some(params(10, true, 15, true)))),
            (&["permessage-deflate; server_max_window_bits=9"], &d, Ok(Some(params(15, true, 9, true)))),
            // The server may add no-context-takeover on either side unasked.
            (&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"], &d,
                Ok(Some(params(15, false, 15, false)))),
            (&["permessage-deflate; server_no_context_takeover; server_max_window_bits=10"], &small,
                Ok(Some(params(12, true, 10, false)))),
            // Asked for a smaller upstream window and not answered: inflate with 15.
            (&["permessage-deflate; server_no_context_takeover"], &small, Ok(Some(params(12, true, 15, false)))),
            (&["permessage-deflate; client_max_window_bits=08"], &d, Err(())),
            // Errors: more than offered, not offered, malformed.
            (&["permessage-deflate; server_max_window_bits=12"], &small, Err(())),
            (&["permessage-deflate; server_max_window_bits=10"], &small, Err(())),
            (&["permessage-deflate; client_max_window_bits=13; server_no_context_takeover"], &small, Err(())),
            (&["permessage-deflate; client_max_window_bits"], &d, Err(())),
            (&["permessage-deflate; x=1"], &d, Err(())),
            (&["x-webkit-deflate-frame"], &d, Err(())),
            (&["permessage-deflate, permessage-deflate"], &d, Err(())),
        ];
        for (answer, settings, expected) in table {
            let got = check_answer(answer.iter().copied(), settings).map_err(|_| ());
            assert_eq!(&got, expected, "answer {answer:?}");
        }
    }
}
