//! TLS handshakes, recognised from the first bytes an application sends and receives on a
//! connection, whatever its TLS library.
//!
//! The kernel copies the first bytes of each of a connection's first sends and receives, only if
//! its very first byte starts a TLS handshake record (see `observer_common::tls_capture`). Here
//! those chunks are cut into TLS records (5-byte headers), the ClientHello and ServerHello are
//! parsed with `tls-parser`, and each connection's handshake gets one [`Outcome`]:
//!
//! - started: the ClientHello (SNI, whether resumption was offered);
//! - resumed: TLS 1.3, the ServerHello accepts a pre-shared key; TLS 1.2 and older, it echoes the
//!   client's non-empty session id;
//! - completed: TLS 1.3, the client's first encrypted record after the ServerHello (its Finished);
//!   TLS 1.2, both sides' ChangeCipherSpec;
//! - failed: an alert record before completion (a plaintext alert, or in TLS 1.3 an encrypted
//!   record of exactly an alert's size, 19 bytes, from the client), or the connection closing
//!   before the handshake completed.
//!
//! Pure: chunks in, outcomes out; unit-tested on real handshake bytes.

use std::collections::BTreeMap;

use crate::lifetime::{Durations, HandshakeBounds};
use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake, TlsVersion, parse_tls_record_header};

/// TLS record content types.
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// An encrypted TLS 1.3 alert: 2 bytes of alert, 1 of inner content type, a 16-byte AEAD tag.
const ENCRYPTED_ALERT_LEN: u16 = 19;
/// A record larger than this cannot be TLS (2^14 + 2048 of expansion at most, RFC 8446).
const MAX_RECORD: u16 = (1 << 14) + 2048;
/// `ServerHello.random` of a HelloRetryRequest (RFC 8446, 4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91, 0xC2, 0xA2, 0x11,
    0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// Which way a chunk went, seen from the socket's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Send,
    Recv,
}

impl Dir {
    fn index(self) -> usize {
        self as usize
    }
}

/// The first bytes of one send or receive.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub ts_ns: u64,
    pub sk: u64,
    pub dir: Dir,
    /// Bytes the call moved; `data` holds the first of them.
    pub len: u32,
    pub data: Vec<u8>,
}

/// The result of one connection's handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub server_name: Option<String>,
    /// "TLS1.3", "TLS1.2"...; None if no ServerHello was seen.
    pub version: Option<&'static str>,
    /// The client offered to resume a session (session id, ticket or pre-shared key).
    pub resumption_offered: bool,
    pub resumed: bool,
    pub failed: bool,
    /// From the ClientHello to the handshake's completion (None if it did not complete).
    pub duration_ns: Option<u64>,
}

/// Cuts one direction's bytes into records.
#[derive(Clone, Debug, Default)]
struct Records {
    /// The header being assembled, or the whole record when its body is wanted.
    buf: Vec<u8>,
    /// Body bytes still to skip.
    skip: usize,
    /// Keep the body of the next record (the ClientHello or ServerHello).
    want_body: bool,
    /// Bytes went missing where a header was: the rest of this direction cannot be read.
    lost: bool,
}

/// One record: its type, length, and its body when it was wanted.
#[derive(Clone, Debug)]
struct Record {
    kind: u8,
    len: u16,
    body: Option<Vec<u8>>,
}

impl Records {
    /// Feed the captured bytes of a call that moved `len` bytes; records completed are appended
    /// to `out`.
    fn feed(&mut self, data: &[u8], len: usize, out: &mut Vec<Record>) {
        if self.lost {
            return;
        }
        let mut i = 0;
        while i < data.len() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() - i);
                self.skip -= n;
                i += n;
                continue;
            }
            if self.buf.len() < 5 {
                let n = (5 - self.buf.len()).min(data.len() - i);
                self.buf.extend_from_slice(&data[i..i + n]);
                i += n;
                if self.buf.len() < 5 {
                    continue;
                }
                let Ok((_, h)) = parse_tls_record_header(&self.buf) else {
                    self.lost = true;
                    return;
                };
                if h.len > MAX_RECORD || !(CHANGE_CIPHER_SPEC..=APPLICATION_DATA).contains(&h.record_type.0) {
                    self.lost = true;
                    return;
                }
                if !self.want_body || h.record_type.0 != HANDSHAKE {
                    out.push(Record { kind: h.record_type.0, len: h.len, body: None });
                    self.skip = h.len as usize;
                    self.buf.clear();
                }
                continue;
            }
            // Assembling a wanted record.
            let (kind, total) = (self.buf[0], 5 + u16::from_be_bytes([self.buf[3], self.buf[4]]) as usize);
            let n = (total - self.buf.len()).min(data.len() - i);
            self.buf.extend_from_slice(&data[i..i + n]);
            i += n;
            if self.buf.len() == total {
                let body = self.buf.split_off(5);
                out.push(Record { kind, len: body.len() as u16, body: Some(body) });
                self.buf.clear();
                self.want_body = false;
            }
        }
        // The part of the call that was not copied.
        let missing = len.saturating_sub(data.len());
        if missing > 0 {
            if self.skip >= missing {
                self.skip -= missing;
            } else {
                self.lost = true;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the ClientHello (the connection's first record).
    ClientHello,
    ServerHello,
    /// After the ServerHello: waiting for the end of the handshake.
    Finishing,
    Done,
    /// Not TLS after all, or unreadable: nothing is reported.
    Ignored,
}

/// One connection's handshake, as its chunks arrive.
#[derive(Clone, Debug)]
pub struct Conn {
    phase: Phase,
    /// The direction the ClientHello went (Send: this socket is the client).
    client: Dir,
    records: [Records; 2],
    started_ns: u64,
    server_name: Option<String>,
    session_id: Vec<u8>,
    resumption_offered: bool,
    version: Option<&'static str>,
    tls13: bool,
    resumed: bool,
    /// TLS 1.2: ChangeCipherSpec seen from the client, from the server.
    ccs: [bool; 2],
    /// Runs of client chunks (a run ends when the other side sends).
    client_runs: u32,
    last_dir: Option<Dir>,
    /// Client runs that carried only handshake records (see [`Conn::handshake_runs`]).
    handshake_runs: u32,
    /// The handshake ended inside a client run that may still carry application data.
    completed_in_client_run: bool,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            phase: Phase::ClientHello,
            client: Dir::Send,
            records: [
                Records { want_body: true, ..Records::default() },
                Records { want_body: true, ..Records::default() },
            ],
            started_ns: 0,
            server_name: None,
            session_id: Vec::new(),
            resumption_offered: false,
            version: None,
            tls13: false,
            resumed: false,
            ccs: [false; 2],
            client_runs: 0,
            last_dir: None,
            handshake_runs: 0,
            completed_in_client_run: false,
        }
    }
}

impl Conn {
    /// Take one chunk; returns the outcome when the handshake just completed or failed.
    pub fn feed(&mut self, chunk: &Chunk) -> Option<Outcome> {
        if self.phase == Phase::Ignored {
            return None;
        }
        let d = chunk.dir;
        if self.last_dir.is_none() {
            // The connection's first bytes are the ClientHello.
            self.client = d;
        }
        if self.last_dir != Some(d) {
            if d == self.client {
                self.client_runs += 1;
            } else if self.completed_in_client_run {
                // The client run that completed the handshake ended there: all handshake.
                self.handshake_runs += 1;
                self.completed_in_client_run = false;
            }
            self.last_dir = Some(d);
        }
        let mut recs = Vec::new();
        if self.phase == Phase::Done {
            if self.completed_in_client_run && d == self.client {
                // A new record from the client in the run that completed the handshake is
                // application data (the rest of its Finished record is not).
                self.records[d.index()].feed(&chunk.data, chunk.len as usize, &mut recs);
                if !recs.is_empty() || self.records[d.index()].lost {
                    self.completed_in_client_run = false;
                }
            }
            return None;
        }
        self.records[d.index()].feed(&chunk.data, chunk.len as usize, &mut recs);
        let mut outcome = None;
        for r in recs {
            if self.phase == Phase::Done {
                if d == self.client {
                    // Another record after the one that completed the handshake.
                    self.completed_in_client_run = false;
                }
                break;
            }
            if let Some(o) = self.on_record(d, &r, chunk.ts_ns) {
                outcome = Some(o);
            }
        }
        if self.phase == Phase::ClientHello && self.records[d.index()].lost {
            self.phase = Phase::Ignored;
        }
        outcome
    }

    fn on_record(&mut self, d: Dir, r: &Record, ts_ns: u64) -> Option<Outcome> {
        let from_client = d == self.client;
        match self.phase {
            Phase::ClientHello => {
                let Some(hello) = r.body.as_deref().and_then(client_hello) else {
                    self.phase = Phase::Ignored;
                    return None;
                };
                self.started_ns = ts_ns;
                self.server_name = hello.server_name;
                self.resumption_offered = hello.resumption_offered;
                self.session_id = hello.session_id;
                self.phase = Phase::ServerHello;
                None
            }
            Phase::ServerHello if from_client => {
                if r.kind == ALERT {
                    return Some(self.finish(true, ts_ns));
                }
                None
            }
            Phase::ServerHello => match r.kind {
                ALERT => Some(self.finish(true, ts_ns)),
                HANDSHAKE => {
                    let Some(hello) = r.body.as_deref().and_then(server_hello) else {
                        // Unreadable: count it without details.
                        self.phase = Phase::Finishing;
                        return None;
                    };
                    if hello.retry {
                        // HelloRetryRequest: a second ClientHello and ServerHello follow.
                        self.records[d.index()].want_body = true;
                        return None;
                    }
                    self.version = Some(hello.version);
                    self.tls13 = hello.version == "TLS1.3";
                    self.resumed = if self.tls13 {
                        hello.psk_accepted
                    } else {
                        !self.session_id.is_empty() && hello.session_id == self.session_id
                    };
                    self.phase = Phase::Finishing;
                    None
                }
                _ => None,
            },
            Phase::Finishing => match (r.kind, from_client) {
                (ALERT, _) => Some(self.finish(true, ts_ns)),
                (APPLICATION_DATA, true) if self.tls13 || self.version.is_none() => {
                    let failed = r.len == ENCRYPTED_ALERT_LEN;
                    Some(self.finish(failed, ts_ns))
                }
                (CHANGE_CIPHER_SPEC, _) if !self.tls13 => {
                    self.ccs[usize::from(!from_client)] = true;
                    if self.ccs == [true, true] {
                        return Some(self.finish(false, ts_ns));
                    }
                    None
                }
                _ => None,
            },
            Phase::Done | Phase::Ignored => None,
        }
    }

    fn finish(&mut self, failed: bool, ts_ns: u64) -> Outcome {
        self.phase = Phase::Done;
        // Client runs before this one carried only the handshake; the current one too, unless
        // it is the client's and goes on with application data (decided by the next chunks).
        let current_is_client = self.last_dir == Some(self.client);
        self.handshake_runs = if current_is_client { self.client_runs.saturating_sub(1) } else { self.client_runs };
        self.completed_in_client_run = current_is_client && !failed;
        Outcome {
            server_name: self.server_name.clone(),
            version: self.version,
            resumption_offered: self.resumption_offered,
            resumed: self.resumed && !failed,
            failed,
            duration_ns: (!failed).then(|| ts_ns.saturating_sub(self.started_ns)),
        }
    }

    /// The connection closed: a handshake still under way failed.
    pub fn close(&mut self, ts_ns: u64) -> Option<Outcome> {
        match self.phase {
            Phase::ServerHello | Phase::Finishing => Some(self.finish(true, ts_ns)),
            _ => None,
        }
    }

    /// Whether a handshake was seen at all (a ClientHello).
    #[cfg(test)]
    pub fn is_tls(&self) -> bool {
        !matches!(self.phase, Phase::ClientHello | Phase::Ignored)
    }

    /// Exchanges of the client that were handshake, not requests: the number to take off the
    /// connection's request count.
    pub fn handshake_runs(&self) -> u32 {
        if self.phase != Phase::Done {
            return 0;
        }
        self.handshake_runs
    }
}

struct ClientHello {
    server_name: Option<String>,
    session_id: Vec<u8>,
    resumption_offered: bool,
}

fn client_hello(body: &[u8]) -> Option<ClientHello> {
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) =
        tls_parser::parse_tls_message_handshake(body)
    else {
        return None;
    };
    let session_id = ch.session_id.unwrap_or_default().to_vec();
    let mut hello = ClientHello { server_name: None, resumption_offered: false, session_id };
    let exts = ch.ext.and_then(|e| tls_parser::parse_tls_client_hello_extensions(e).ok()).map(|(_, v)| v);
    let mut tls13 = false;
    let (mut ticket, mut psk) = (false, false);
    for ext in exts.unwrap_or_default() {
        match ext {
            TlsExtension::SNI(names) => {
                hello.server_name = names
                    .iter()
                    .find(|(t, _)| t.0 == 0)
                    .and_then(|(_, n)| std::str::from_utf8(n).ok())
                    .map(|s| s.to_ascii_lowercase());
            }
            TlsExtension::SessionTicket(t) if !t.is_empty() => ticket = true,
            TlsExtension::PreSharedKey(_) => psk = true,
            TlsExtension::SupportedVersions(v) => tls13 = v.contains(&TlsVersion::Tls13),
            _ => {}
        }
    }
    // A TLS 1.3 client sends a random session id for middlebox compatibility: there only a
    // pre-shared key (or a TLS 1.2 ticket) offers resumption.
    hello.resumption_offered = psk || ticket || (!tls13 && !hello.session_id.is_empty());
    Some(hello)
}

struct ServerHello {
    version: &'static str,
    session_id: Vec<u8>,
    psk_accepted: bool,
    retry: bool,
}

fn server_hello(body: &[u8]) -> Option<ServerHello> {
    let (_, msg) = tls_parser::parse_tls_message_handshake(body).ok()?;
    let TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)) = msg else { return None };
    let mut hello = ServerHello {
        version: version_name(sh.version),
        session_id: sh.session_id.unwrap_or_default().to_vec(),
        psk_accepted: false,
        retry: sh.random == HELLO_RETRY_RANDOM,
    };
    let exts = sh.ext.and_then(|e| tls_parser::parse_tls_server_hello_extensions(e).ok()).map(|(_, v)| v);
    for ext in exts.unwrap_or_default() {
        match ext {
            TlsExtension::SupportedVersions(v) if !v.is_empty() => hello.version = version_name(v[0]),
            TlsExtension::PreSharedKey(_) => hello.psk_accepted = true,
            _ => {}
        }
    }
    Some(hello)
}

fn version_name(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls13 => "TLS1.3",
        TlsVersion::Tls12 => "TLS1.2",
        TlsVersion::Tls11 => "TLS1.1",
        TlsVersion::Tls10 => "TLS1.0",
        TlsVersion::Ssl30 => "SSL3.0",
        _ => "other",
    }
}

/// Handshake counts, for one peer or one server name of a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub handshakes: u64,
    pub resumed: u64,
    pub failed: u64,
}

impl Counts {
    pub fn merge(&mut self, o: &Counts) {
        self.handshakes += o.handshakes;
        self.resumed += o.resumed;
        self.failed += o.failed;
    }

    fn add(&mut self, o: &Outcome) {
        self.handshakes += 1;
        self.resumed += u64::from(o.resumed);
        self.failed += u64::from(o.failed);
    }
}

/// TLS figures of one peer.
#[derive(Clone, Debug, Default)]
pub struct TlsStats {
    pub counts: Counts,
    /// By SNI server name ("" when the client sent none).
    pub server_names: BTreeMap<String, Counts>,
    /// By negotiated version.
    pub versions: BTreeMap<&'static str, u64>,
    pub durations: Durations<HandshakeBounds>,
}

impl TlsStats {
    pub fn add(&mut self, o: &Outcome) {
        self.counts.add(o);
        self.server_names.entry(o.server_name.clone().unwrap_or_default()).or_default().add(o);
        if let Some(v) = o.version {
            *self.versions.entry(v).or_default() += 1;
        }
        if let Some(ns) = o.duration_ns {
            self.durations.observe_ns(ns);
        }
    }

    pub fn merge(&mut self, o: &TlsStats) {
        self.counts.merge(&o.counts);
        for (name, c) in &o.server_names {
            self.server_names.entry(name.clone()).or_default().merge(c);
        }
        for (v, n) in &o.versions {
            *self.versions.entry(v).or_default() += n;
        }
        self.durations.merge(&o.durations);
    }
}

#[cfg(test)]
pub(crate) mod tests;
