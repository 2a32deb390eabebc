//! One connection's compression: a compressor and a decompressor (zlib-rs through
//! `flate2`), each allocated when first needed and given back when allowed (see the
//! module above), and the message-at-a-time operations the codec calls.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{Params, Settings};

/// What every compressed message ends with once its compressor has flushed (an empty
/// stored block); RFC 7692 removes it on the wire and the receiver puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The most a decompression step adds to its output at a time (the output grows as the
/// data does, not by what a header claims).
const INFLATE_STEP: usize = 64 * 1024;

/// Bytes through one hop's compression, before and after (`holdfast_compressed_bytes_total`
/// and `holdfast_uncompressed_bytes_total`), for what holdfast sends and what it receives.
#[derive(Clone)]
pub struct Counters {
    pub sent_compressed: metrics::Counter,
    pub sent_uncompressed: metrics::Counter,
    pub received_compressed: metrics::Counter,
    pub received_uncompressed: metrics::Counter,
}

impl Default for Counters {
    /// Counters that count nowhere.
    fn default() -> Self {
        Self {
            sent_compressed: metrics::Counter::noop(),
            sent_uncompressed: metrics::Counter::noop(),
            received_compressed: metrics::Counter::noop(),
            received_uncompressed: metrics::Counter::noop(),
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (inflating stopped there).
    TooBig,
    /// It is not a valid deflate stream.
    Corrupt(String),
}

/// See the module documentation.
pub struct Context {
    params: Params,
    level: u8,
    min_size: usize,
    compressor: Option<Box<Compress>>,
    decompressor: Option<Box<Decompress>>,
    /// Used since the last `release_idle`.
    sent: bool,
    counters: Counters,
}

thread_local! {
    /// Contexts for messages compressed or inflated without takeover, by level and window
    /// (decompressors: level 0), shared by this thread's connections.
    static COMPRESSORS: RefCell<Vec<(u8, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSORS: RefCell<Vec<(u8, Decompress)>> = const { RefCell::new(Vec::new()) };
}

impl Context {
    pub fn new(params: Params, settings: &Settings, counters: Counters) -> Self {
        Self {
            params,
            level: settings.level.min(9),
            min_size: settings.min_size,
            compressor: None,
            decompressor: None,
            sent: false,
            counters,
        }
    }

    pub fn params(&self) -> Params {
        self.params
    }

    /// Whether a message of `len` bytes is sent compressed.
    pub fn compresses(&self, len: usize) -> bool {
        len >= self.min_size
    }

    /// Compresses one message (the concatenation of `parts`), appending the payload to send
    /// (RSV1 set) to `out`.
    pub fn compress(&mut self, parts: [&[u8]; 2], out: &mut Vec<u8>) {
        let start = out.len();
        let (level, window) = (self.level, self.params.send_window);
        if self.params.send_takeover {
            let compressor = self
                .compressor
                .get_or_insert_with(|| Box::new(new_compressor(level, window)));
            deflate_into(compressor, parts, out);
            self.sent = true;
        } else {
            COMPRESSORS.with_borrow_mut(|shared| {
                let at = match shared
                    .iter()
                    .position(|(l, w, _)| (*l, *w) == (level, window))
                {
                    Some(at) => at,
                    None => {
                        shared.push((level, window, new_compressor(level, window)));
                        shared.len() - 1
                    }
                };
                let compressor = &mut shared[at].2;
                compressor.reset();
                deflate_into(compressor, parts, out);
            });
        }
        let len = parts[0].len() + parts[1].len();
        self.counters.sent_uncompressed.increment(len as u64);
        self.counters
            .sent_compressed
            .increment((out.len() - start) as u64);
    }

    /// Inflates one message's payload (its frames' payloads joined) into a new buffer of at
    /// most `max` bytes: past that it stops (having inflated at most one byte more).
    pub fn inflate(&mut self, payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        let window = self.params.recv_window;
        if self.params.recv_takeover {
            let decompressor = self
                .decompressor
                .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, window)));
            inflate_message(decompressor, payload, max, &mut out)?;
        } else {
            DECOMPRESSORS.with_borrow_mut(|shared| {
                let at = match shared.iter().position(|(w, _)| *w == window) {
                    Some(at) => at,
                    None => {
                        shared.push((window, Decompress::new_with_window_bits(false, window)));
                        shared.len() - 1
                    }
                };
                let decompressor = &mut shared[at].1;
                decompressor.reset(false);
                inflate_message(decompressor, payload, max, &mut out)
            })?;
        }
        self.counters
            .received_compressed
            .increment(payload.len() as u64);
        self.counters
            .received_uncompressed
            .increment(out.len() as u64);
        Ok(out)
    }

    /// Gives back the compressor if nothing was compressed since the last call (the
    /// session calls this on its keepalive tick); true if it did. The decompressor stays:
    /// the peer may still refer to what it holds.
    pub fn release_idle(&mut self) -> bool {
        if std::mem::take(&mut self.sent) {
            return false;
        }
        self.compressor.take().is_some()
    }

    /// Whether a compressor is allocated (for tests and the benchmark's accounting).
    pub fn holds_compressor(&self) -> bool {
        self.compressor.is_some()
    }
}

fn new_compressor(level: u8, window: u8) -> Compress {
    Compress::new_with_window_bits(Compression::new(u32::from(level)), false, window)
}

/// Deflates `parts` as one message with a sync flush, appending to `out` without the tail.
fn deflate_into(compressor: &mut Compress, parts: [&[u8]; 2], out: &mut Vec<u8>) {
    let start = out.len();
    for (i, part) in parts.into_iter().enumerate() {
        let flush = if i == 1 {
            FlushCompress::Sync
        } else {
            FlushCompress::None
        };
        let mut input = part;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(input.len() / 2 + 64);
            }
            let before = compressor.total_in();
            compressor
                .compress_vec(input, out, flush)
                .expect("deflate with valid arguments cannot fail");
            input = &input[(compressor.total_in() - before) as usize..];
            // Done when the input is in and the output had room left (all is flushed).
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
    }
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

/// Inflates a message: its payload, then the tail RFC 7692 removed.
fn inflate_message(
    decompressor: &mut Decompress,
    payload: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    // The peer may end its deflate stream (a final block) within the payload or just
    // before the tail (a level-0 `Z_FINISH` ends on an empty stored block): either way the
    // next message starts a new stream.
    let ended = inflate_into(decompressor, payload, max, out)?
        || inflate_into(decompressor, &TAIL, max, out)?;
    if ended {
        decompressor.reset(false);
    }
    // A message may be kept (held, replayed, unacknowledged): it must not pin the room it
    // was inflated into.
    if out.capacity() > out.len() + out.len() / 8 + 64 {
        out.shrink_to_fit();
    }
    Ok(())
}

/// Inflates `input` onto `out`, which never grows past `max + 1` bytes. True if the deflate
/// stream ended (a final block).
fn inflate_into(
    decompressor: &mut Decompress,
    mut input: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<bool, InflateError> {
    loop {
        // Room for about what the input may inflate to, then doubling: a small message takes
        // a small buffer (the output is zeroed before zlib writes it).
        let room = (max + 1).saturating_sub(out.len());
        let guess = (input.len() * 4).max(out.len()).max(256);
        let step = room.min(guess.min(INFLATE_STEP)).max(1);
        let len = out.len();
        out.resize(len + step, 0);
        let (in_before, out_before) = (decompressor.total_in(), decompressor.total_out());
        let status = decompressor.decompress(input, &mut out[len..], FlushDecompress::Sync);
        let produced = (decompressor.total_out() - out_before) as usize;
        let consumed = (decompressor.total_in() - in_before) as usize;
        out.truncate(len + produced);
        input = &input[consumed..];
        let status = status.map_err(|e| InflateError::Corrupt(e.to_string()))?;
        if out.len() > max {
            return Err(InflateError::TooBig);
        }
        match status {
            Status::StreamEnd => return Ok(true),
            // Everything is in and the output was not full: nothing more is pending.
            _ if input.is_empty() && produced < step => return Ok(false),
            // No progress with input left: the data cannot go on.
            Status::BufError if consumed == 0 && produced == 0 => {
                return Err(InflateError::Corrupt("deflate data cannot continue".into()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(params: Params) -> Context {
        Context::new(params, &Settings::default(), Counters::default())
    }

    fn takeover() -> Params {
        Params {
            send_window: 15,
            send_takeover: true,
            recv_window: 15,
            recv_takeover: true,
        }
    }

    fn json(i: usize) -> Vec<u8> {
        format!(
            r#"{{"type":"tick","symbol":"ABC","price":{i},"volume":{},"exchange":"NASDAQ"}}"#,
            i * 7
        )
        .into_bytes()
    }

    #[test]
    fn messages_round_trip_with_and_without_takeover() {
        // A sender without takeover is fine for a receiver with it; not the other way.
        for (send_takeover, recv_takeover) in [(true, true), (false, false), (false, true)] {
            let params = Params {
                send_takeover,
                recv_takeover,
                ..takeover()
            };
            let (mut sender, mut receiver) = (context(params), context(params));
            let mut sizes = Vec::new();
            for i in 0..50 {
                let message = json(i);
                let mut wire = Vec::new();
                sender.compress([b"d", &message], &mut wire);
                assert!(!wire.ends_with(&TAIL));
                let back = receiver.inflate(&wire, 1 << 20).unwrap();
                assert_eq!(&back[..1], b"d");
                assert_eq!(&back[1..], &message[..]);
                sizes.push(wire.len());
            }
            // With takeover, later messages refer to earlier ones and shrink.
            assert_eq!(sizes[49] < sizes[0] / 2, send_takeover, "{sizes:?}");
        }
    }

    #[test]
    fn an_empty_message_and_a_large_one() {
        let mut c = context(takeover());
        let mut wire = Vec::new();
        c.compress([b"", b""], &mut wire);
        assert_eq!(c.inflate(&wire, 10).unwrap(), b"");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        wire.clear();
        c.compress([b"", &big], &mut wire);
        assert_eq!(c.inflate(&wire, big.len()).unwrap(), big);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut sender = context(takeover());
        let zeros = vec![0u8; 8 << 20];
        let mut wire = Vec::new();
        sender.compress([b"", &zeros], &mut wire);
        assert!(wire.len() < 16 << 10, "{}", wire.len());
        let mut receiver = context(takeover());
        assert_eq!(receiver.inflate(&wire, 1 << 20), Err(InflateError::TooBig));
        // Exactly at the limit is fine.
        let mut receiver = context(takeover());
        assert_eq!(receiver.inflate(&wire, 8 << 20).unwrap().len(), 8 << 20);
    }

    #[test]
    fn an_inflated_message_holds_no_more_memory_than_its_size() {
        let (mut sender, mut receiver) = (context(takeover()), context(takeover()));
        for size in [100usize, 5_000, 200_000] {
            let message: Vec<u8> = (0..size).map(|i| (i % 7) as u8).collect();
            let mut wire = Vec::new();
            sender.compress([b"", &message], &mut wire);
            let back = receiver.inflate(&wire, 1 << 20).unwrap();
            assert_eq!(back, message);
            assert!(
                back.capacity() <= size + size / 8 + 64,
                "{size}: {}",
                back.capacity()
            );
        }
    }

    #[test]
    fn a_stream_that_ends_just_before_the_tail_starts_again_with_the_next_message() {
        // A level-0 Z_FINISH of an empty message: 01 00 00 ff ff, sent without the tail.
        let mut finisher = Compress::new_with_window_bits(Compression::new(0), false, 15);
        let mut ended = Vec::with_capacity(64);
        finisher
            .compress_vec(b"", &mut ended, FlushCompress::Finish)
            .unwrap();
        assert_eq!(ended, [0x01, 0x00, 0x00, 0xff, 0xff]);
        ended.truncate(1);
        let mut receiver = context(takeover());
        assert_eq!(receiver.inflate(&ended, 1 << 20).unwrap(), b"");
        // The sender's next message starts a new stream; it must arrive whole.
        let mut wire = Vec::new();
        context(takeover()).compress([b"", &json(3)], &mut wire);
        assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), json(3));
    }

    #[test]
    fn corrupt_data_is_an_error_not_a_panic() {
        let mut c = context(takeover());
        for garbage in [
            &[0xffu8, 0xff, 0xff][..],
            &[0x07],
            &[0x03, 0x00, 0x00, 0xff],
        ] {
            let mut fresh = context(takeover());
            let _ = fresh.inflate(garbage, 1 << 20);
        }
        assert!(matches!(
            c.inflate(&[0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn an_idle_compressor_is_given_back_and_the_stream_goes_on() {
        let (mut sender, mut receiver) = (context(takeover()), context(takeover()));
        let mut send = |sender: &mut Context, i| {
            let mut wire = Vec::new();
            sender.compress([b"", &json(i)], &mut wire);
            assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), json(i));
        };
        send(&mut sender, 0);
        sender.release_idle();
        assert!(sender.holds_compressor(), "used since the last tick");
        sender.release_idle();
        assert!(!sender.holds_compressor());
        // A fresh compressor's messages still inflate on the peer's old context.
        send(&mut sender, 1);
        send(&mut sender, 2);
    }
}
