//! Server side of SPDY/3.1 as spoken by moby/spdystream and k8s.io/apimachinery
//! `pkg/util/httpstream/spdy`, carrying the remotecommand `v4.channel.k8s.io` stream protocol.
//!
//! Frame layouts follow the SPDY/3.1 draft (<https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1/>)
//! and moby/spdystream `spdy/read.go` / `spdy/write.go`, which is what real kubectl binaries
//! run. The client opens one stream per `streamtype` header (`error`, `stdin`, `stdout`,
//! `stderr`, `resize`; client-go `tools/remotecommand/v2.go`/`v3.go`), and the server answers
//! each SYN_STREAM with an empty SYN_REPLY (k8s.io/apimachinery `httpstream/spdy/connection.go`
//! `newSpdyStream` → `stream.SendReply(http.Header{}, false)`).
//!
//! The session ends like this: stdout/stderr data then FIN, the JSON Status on the error stream
//! then FIN, FIN on the remaining streams, GOAWAY, then the write side is shut down and the
//! client is given time to close (so unread client input never turns our close into a TCP reset
//! that would destroy data still in flight).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{
    lost_status, stderr_used, SpdySendFlowControl, TransportEnds, TransportError, TransportOptions,
};
use crate::exec_io::StreamsWanted;

/// Frames carry version 3 (SPDY/3.1 did not change the version field; spdystream writes 3).
const VERSION: u16 = 3;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes (SPDY/3 section 2.4.2).
pub(crate) const RST_PROTOCOL_ERROR: u32 = 1;
pub(crate) const RST_REFUSED_STREAM: u32 = 3;
/// What spdystream's `Stream.Reset` sends (`spdy.Cancel`).
pub(crate) const RST_CANCEL: u32 = 5;

/// SETTINGS_INITIAL_WINDOW_SIZE (SPDY/3 section 2.6.4).
const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// Initial stream and connection window (SPDY/3.1 sections 2.6.8/2.6.9).
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Grant the client window back once this much of it was consumed.
const WINDOW_UPDATE_THRESHOLD: u32 = 32 * 1024;

/// Largest data frame we send: the size of Go's io.Copy buffer, which is what the kubelet's
/// stream writes come in.
pub(crate) const MAX_DATA_FRAME: usize = 32 * 1024;
/// Stop reading the socket while this much stdin waits for the runner. spdystream clients
/// ignore windows, so this (TCP backpressure, as in the real server whose frame workers block on
/// the stream's pipe) is what bounds memory.
const STDIN_BUFFER_LIMIT: usize = 1024 * 1024;
/// Upper bound of a decompressed header block (ours are a few dozen bytes).
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// How long to wait for the client to close after our GOAWAY.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The zlib dictionary for SPDY/3 name/value header blocks (SPDY/3 draft section 2.6.10.1).
/// Copied from moby/spdystream `spdy/dictionary.go` (`headerDictionary`, 1423 bytes, BSD
/// licence of The Go Authors); its Adler-32 is 0xe3c6a7c2.
pub(crate) const HEADER_DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\
    \x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-ch\
    arset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0dacc\
    ept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\
    \x00\x00\x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\
    \x00\x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-le\
    ngth\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent\
    -range\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\
    \x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\
    \x08if-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\
    \x08if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\
    \x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12prox\
    y-authenticate\x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07\
    referer\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\
    \x07trailer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0ause\
    r-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10w\
    ww-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\
    \x00\x06200 OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\
    \x00\x00\x06public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06\
    origin10010120120220520630030230330430530630740240540640740840941041141241341441541641\
    7502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad \
    Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Impl\
    emented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:0\
    0 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gi\
    f,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-ag\
    e=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// Errors of the SPDY framing layer.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid {frame} frame: {reason}")]
    InvalidFrame {
        frame: &'static str,
        reason: &'static str,
    },
    #[error("header block (de)compression failed: {0}")]
    Compression(String),
    #[error("decompressed header block exceeds {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("malformed name/value header block")]
    MalformedHeaderBlock,
    #[error("the client closed the connection")]
    ClientClosed,
}

/// One SPDY/3 frame (only the fields this server uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (id, value) pairs; the per-entry flags are dropped.
    Settings(Vec<(u32, u32)>),
    Ping(u32),
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// Unknown control frame types must be ignored (SPDY/3 section 2.2.1).
    Unknown,
}

/// Compresses name/value header blocks: one zlib stream for the whole connection, primed with
/// [`HEADER_DICTIONARY`], each block ending with a sync flush (SPDY/3 section 2.6.10.1; spdystream
/// `Framer.headerCompressor` + `Flush()`).
pub(crate) struct HeaderCompressor(Compress);

impl HeaderCompressor {
    pub(crate) fn new() -> Result<Self, SpdyError> {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(HEADER_DICTIONARY)
            .map_err(|e| SpdyError::Compression(e.to_string()))?;
        Ok(HeaderCompressor(c))
    }

    fn compress(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        // SPDY/3 section 2.6.10: 32-bit pair count, then 32-bit length-prefixed lowercase names
        // and values.
        let mut raw = BytesMut::new();
        raw.put_u32(len_u32(headers.len())?);
        for (name, value) in headers {
            raw.put_u32(len_u32(name.len())?);
            raw.put_slice(name.to_ascii_lowercase().as_bytes());
            raw.put_u32(len_u32(value.len())?);
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.0.total_in();
            self.0
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            pos += usize::try_from(self.0.total_in() - before)
                .map_err(|_| SpdyError::Compression("counter overflow".into()))?;
            // zlib: the flush is complete once it returns with output space left.
            if pos == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Inflates the peer's header blocks, the mirror of [`HeaderCompressor`]. Every header-carrying
/// frame (SYN_STREAM, SYN_REPLY, HEADERS) must go through it in order, even ignored ones, or the
/// shared zlib context desynchronises.
pub(crate) struct HeaderDecompressor(Decompress);

impl HeaderDecompressor {
    pub(crate) fn new() -> Self {
        HeaderDecompressor(Decompress::new(true))
    }

    fn decompress(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut out = Vec::with_capacity(block.len().saturating_mul(4).clamp(256, 16 * 1024));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlockTooLarge);
                }
                out.reserve(out.len());
            }
            let (before_in, before_out) = (self.0.total_in(), out.len());
            let result = self
                .0
                .decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync);
            let consumed = usize::try_from(self.0.total_in() - before_in)
                .map_err(|_| SpdyError::MalformedHeaderBlock)?;
            pos += consumed;
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if pos == block.len() && out.len() < out.capacity() {
                        break;
                    }
                    if consumed == 0 && out.len() == before_out && out.len() < out.capacity() {
                        return Err(SpdyError::Compression("no progress".into()));
                    }
                }
                // The first block announces the dictionary (FDICT); zlib asks for it.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(HEADER_DICTIONARY)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
        }
        parse_header_block(&out)
    }
}

fn len_u32(len: usize) -> Result<u32, SpdyError> {
    u32::try_from(len).map_err(|_| SpdyError::MalformedHeaderBlock)
}

fn parse_header_block(mut raw: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    fn take<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
        if raw.len() < 4 {
            return Err(SpdyError::MalformedHeaderBlock);
        }
        let len = raw.get_u32() as usize;
        if raw.len() < len {
            return Err(SpdyError::MalformedHeaderBlock);
        }
        let (field, rest) = raw.split_at(len);
        *raw = rest;
        Ok(field)
    }
    if raw.len() < 4 {
        return Err(SpdyError::MalformedHeaderBlock);
    }
    let count = raw.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8_lossy(take(&mut raw)?).to_ascii_lowercase();
        let value = take(&mut raw)?;
        // Several values of one name are joined with NUL (spdystream `headerValueSeparator`).
        for v in value.split(|&b| b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(headers)
}

fn invalid(frame: &'static str, reason: &'static str) -> SpdyError {
    SpdyError::InvalidFrame { frame, reason }
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub(crate) async fn read_frame<R>(
    r: &mut R,
    headers: &mut HeaderDecompressor,
) -> Result<Option<Frame>, SpdyError>
where
    R: AsyncRead + Unpin,
{
    let mut head = [0u8; 8];
    let n = r.read(&mut head).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut head[n..]).await?;
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let fin = flags & FLAG_FIN != 0;

    if first & 0x8000_0000 == 0 {
        // Data frame: 31-bit stream id, flags, 24-bit length (SPDY/3 section 2.2.2).
        return Ok(Some(Frame::Data {
            stream_id: first & 0x7fff_ffff,
            fin,
            data: Bytes::from(payload),
        }));
    }
    // Control frame: version, type, flags, length (SPDY/3 section 2.2.1). Like spdystream,
    // the version is not checked.
    let frame_type = (first & 0xffff) as u16;
    let mut p = &payload[..];
    let frame = match frame_type {
        TYPE_SYN_STREAM => {
            // stream id, associated-to id, 3-bit priority + unused + slot (section 2.6.1).
            if p.len() < 10 {
                return Err(invalid("SYN_STREAM", "too short"));
            }
            let stream_id = p.get_u32() & 0x7fff_ffff;
            p.advance(6);
            Frame::SynStream {
                stream_id,
                fin,
                headers: headers.decompress(p)?,
            }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            if p.len() < 4 {
                return Err(invalid("SYN_REPLY/HEADERS", "too short"));
            }
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let h = headers.decompress(p)?;
            if frame_type == TYPE_SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers: h,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    fin,
                    headers: h,
                }
            }
        }
        TYPE_RST_STREAM => {
            if p.len() < 8 {
                return Err(invalid("RST_STREAM", "too short"));
            }
            Frame::RstStream {
                stream_id: p.get_u32() & 0x7fff_ffff,
                status: p.get_u32(),
            }
        }
        TYPE_SETTINGS => {
            if p.len() < 4 {
                return Err(invalid("SETTINGS", "too short"));
            }
            let count = p.get_u32() as usize;
            if p.len() / 8 < count {
                return Err(invalid("SETTINGS", "truncated entries"));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                // 8-bit flags + 24-bit id, then the 32-bit value (section 2.6.4).
                let id = p.get_u32() & 0x00ff_ffff;
                entries.push((id, p.get_u32()));
            }
            Frame::Settings(entries)
        }
        TYPE_PING => {
            if p.len() < 4 {
                return Err(invalid("PING", "too short"));
            }
            Frame::Ping(p.get_u32())
        }
        TYPE_GOAWAY => {
            // SPDY/3 adds a status code after the last-good-stream-id; SPDY/2 had only the id.
            if p.len() < 4 {
                return Err(invalid("GOAWAY", "too short"));
            }
            let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
            let status = if p.len() >= 4 { p.get_u32() } else { 0 };
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }
        TYPE_WINDOW_UPDATE => {
            if p.len() < 8 {
                return Err(invalid("WINDOW_UPDATE", "too short"));
            }
            Frame::WindowUpdate {
                stream_id: p.get_u32() & 0x7fff_ffff,
                delta: p.get_u32() & 0x7fff_ffff,
            }
        }
        _ => Frame::Unknown,
    };
    Ok(Some(frame))
}

fn control_header(out: &mut BytesMut, frame_type: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    // Lengths here are at most a few KiB (header blocks) or 8 bytes.
    out.put_u32((u32::from(flags) << 24) | (len as u32 & 0x00ff_ffff));
}

fn data_header(stream_id: u32, fin: bool, len: usize) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    h[4..].copy_from_slice(&((u32::from(fin) << 24) | (len as u32 & 0x00ff_ffff)).to_be_bytes());
    h
}

/// Serialises `frame` onto `out`, compressing header blocks with `headers`.
pub(crate) fn encode_frame(
    frame: &Frame,
    headers: &mut HeaderCompressor,
    out: &mut BytesMut,
) -> Result<(), SpdyError> {
    let flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            headers: h,
        } => {
            let block = headers.compress(h)?;
            control_header(out, TYPE_SYN_STREAM, flag(*fin), 10 + block.len());
            out.put_u32(*stream_id);
            out.put_u32(0); // associated-to-stream-id
            out.put_u16(0); // priority 0 (highest), slot 0
            out.put_slice(&block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            headers: h,
        }
        | Frame::Headers {
            stream_id,
            fin,
            headers: h,
        } => {
            let frame_type = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let block = headers.compress(h)?;
            control_header(out, frame_type, flag(*fin), 4 + block.len());
            out.put_u32(*stream_id);
            out.put_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            control_header(out, TYPE_RST_STREAM, 0, 8);
            out.put_u32(*stream_id);
            out.put_u32(*status);
        }
        Frame::Settings(entries) => {
            control_header(out, TYPE_SETTINGS, 0, 4 + 8 * entries.len());
            out.put_u32(len_u32(entries.len())?);
            for (id, value) in entries {
                out.put_u32(id & 0x00ff_ffff);
                out.put_u32(*value);
            }
        }
        // spdystream rejects PING/GOAWAY/WINDOW_UPDATE with flags, and GOAWAY/WINDOW_UPDATE
        // whose length is not 8 (`spdy/read.go`).
        Frame::Ping(id) => {
            control_header(out, TYPE_PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control_header(out, TYPE_GOAWAY, 0, 8);
            out.put_u32(*last_good_stream_id);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
            out.put_u32(*stream_id);
            out.put_u32(*delta);
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            out.put_slice(&data_header(*stream_id, *fin, data.len()));
            out.put_slice(data);
        }
        Frame::Unknown => {}
    }
    Ok(())
}

/// Sets the session up and waits (at most the stream creation timeout) until the client has
/// opened every stream the exec needs, like the kubelet's `waitForStreams`
/// (k8s.io/kubelet `pkg/cri/streaming/remotecommand/httpstream.go`).
pub(crate) async fn start<IO>(
    io: IO,
    wanted: StreamsWanted,
    options: TransportOptions,
    ends: TransportEnds,
) -> Result<(), TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(serve(
        io,
        wanted,
        options.spdy_send_flow_control,
        ends,
        ready_tx,
    ));
    match tokio::time::timeout(options.stream_creation_timeout, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(TransportError::ClosedBeforeReady(
            "SPDY session ended".into(),
        )),
        Err(_) => {
            // Dropping the session closes the connection, as the kubelet does.
            task.abort();
            Err(TransportError::StreamCreationTimeout)
        }
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Inbound = mpsc::Receiver<Result<Frame, SpdyError>>;

/// What woke the session loop up.
enum Event {
    Frame(Option<Result<Frame, SpdyError>>),
    StdinForwarded(usize),
    StdinUnwanted(usize),
    Stdout(Option<Bytes>),
    Stderr(Option<Bytes>),
    Status(serde_json::Value),
}

async fn serve<IO>(
    io: IO,
    wanted: StreamsWanted,
    flow: SpdySendFlowControl,
    ends: TransportEnds,
    ready_tx: oneshot::Sender<Result<(), TransportError>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    // The reader decodes frames (and owns the inbound zlib context) independently of the writer,
    // so a blocked write never stops us from seeing WINDOW_UPDATEs, and vice versa.
    let (frames_tx, mut frames_rx) = mpsc::channel(64);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(read_half, frames_tx)));
    let compressor = match HeaderCompressor::new() {
        Ok(c) => c,
        Err(e) => {
            let _ = ready_tx.send(Err(e.into()));
            return;
        }
    };
    let mut session = Session {
        w: BufWriter::with_capacity(64 * 1024, write_half),
        compressor,
        scratch: BytesMut::new(),
        want_stdin: wanted.stdin,
        want_resize: wanted.tty,
        enforce: flow == SpdySendFlowControl::Enforce,
        ready_tx: Some(ready_tx),
        last_client_stream: 0,
        goaway_received: false,
        other_open: Vec::new(),
        // The error stream always exists (kubelet: "count the streams client asked for, starting
        // with 1").
        error: Outbound::new(None, true),
        stdout: Outbound::new(ends.stdout, wanted.stdout),
        stderr: Outbound::new(ends.stderr, stderr_used(wanted)),
        stdin_id: None,
        resize_id: None,
        stdin_tx: ends.stdin,
        stdin_buf: VecDeque::new(),
        stdin_buffered: 0,
        stdin_fin: false,
        stdin_unacked: 0,
        conn_unacked: 0,
        conn_window: DEFAULT_WINDOW,
        initial_window: DEFAULT_WINDOW,
        status_rx: Some(ends.status),
    };
    if let Err(e) = session.run(&mut frames_rx).await {
        match session.ready_tx.take() {
            Some(tx) => {
                let _ = tx.send(Err(e.into()));
            }
            None => debug!(error = %e, "SPDY exec session ended early"),
        }
    }
}

pub(crate) async fn read_frames<R>(r: R, tx: mpsc::Sender<Result<Frame, SpdyError>>)
where
    R: AsyncRead + Unpin,
{
    let mut r = tokio::io::BufReader::with_capacity(64 * 1024, r);
    let mut headers = HeaderDecompressor::new();
    loop {
        match read_frame(&mut r, &mut headers).await {
            Ok(Some(frame)) => {
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// A stream the server writes to (stdout, stderr, error).
struct Outbound {
    wanted: bool,
    id: Option<u32>,
    rx: Option<mpsc::Receiver<Bytes>>,
    pending: VecDeque<Bytes>,
    /// Send window (SPDY/3.1 section 2.6.8); may go negative after a SETTINGS change.
    window: i64,
    /// No more data will be queued.
    eof: bool,
    /// FIN sent, or the client reset the stream.
    finished: bool,
}

impl Outbound {
    fn new(rx: Option<mpsc::Receiver<Bytes>>, wanted: bool) -> Self {
        Outbound {
            wanted,
            id: None,
            eof: rx.is_none() && !wanted,
            rx,
            pending: VecDeque::new(),
            window: DEFAULT_WINDOW,
            finished: false,
        }
    }

    fn done(&self) -> bool {
        self.finished || (self.id.is_none() && self.eof)
    }

    fn reset(&mut self) {
        self.finished = true;
        self.eof = true;
        self.pending.clear();
        // Dropping the receiver makes the runner's sends fail: the client is gone.
        self.rx = None;
    }
}

struct Session<W> {
    w: BufWriter<W>,
    compressor: HeaderCompressor,
    scratch: BytesMut,
    want_stdin: bool,
    want_resize: bool,
    enforce: bool,
    ready_tx: Option<oneshot::Sender<Result<(), TransportError>>>,
    last_client_stream: u32,
    goaway_received: bool,
    /// Client streams we do not write to (stdin, resize, unexpected); FIN'd at the end.
    other_open: Vec<u32>,
    error: Outbound,
    stdout: Outbound,
    stderr: Outbound,
    stdin_id: Option<u32>,
    resize_id: Option<u32>,
    stdin_tx: Option<mpsc::Sender<Bytes>>,
    stdin_buf: VecDeque<Bytes>,
    stdin_buffered: usize,
    stdin_fin: bool,
    stdin_unacked: u32,
    conn_unacked: u32,
    conn_window: i64,
    initial_window: i64,
    status_rx: Option<oneshot::Receiver<serde_json::Value>>,
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn reserve(
    tx: &Option<mpsc::Sender<Bytes>>,
) -> Result<mpsc::Permit<'_, Bytes>, mpsc::error::SendError<()>> {
    match tx {
        Some(tx) => tx.reserve().await,
        None => std::future::pending().await,
    }
}

async fn recv_status(
    rx: &mut Option<oneshot::Receiver<serde_json::Value>>,
) -> Result<serde_json::Value, oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    stream_id: u32,
    fin: bool,
    data: &[u8],
) -> std::io::Result<()> {
    w.write_all(&data_header(stream_id, fin, data.len()))
        .await?;
    w.write_all(data).await
}

/// Sends what `ob` has queued, as far as the windows allow when enforcing them, then its FIN.
async fn pump<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    ob: &mut Outbound,
    conn_window: &mut i64,
    enforce: bool,
) -> std::io::Result<()> {
    let Some(id) = ob.id else { return Ok(()) };
    if ob.finished {
        return Ok(());
    }
    while let Some(front) = ob.pending.front_mut() {
        let mut n = front.len().min(MAX_DATA_FRAME);
        if enforce {
            let window = ob.window.min(*conn_window);
            if window <= 0 {
                return Ok(());
            }
            n = n.min(usize::try_from(window).unwrap_or(usize::MAX));
        }
        let chunk = front.split_to(n);
        if front.is_empty() {
            ob.pending.pop_front();
        }
        ob.window -= n as i64;
        *conn_window -= n as i64;
        write_data(w, id, false, &chunk).await?;
    }
    if ob.eof {
        write_data(w, id, true, &[]).await?;
        ob.finished = true;
    }
    Ok(())
}

impl<W: AsyncWrite + Unpin> Session<W> {
    async fn run(&mut self, frames: &mut Inbound) -> Result<(), SpdyError> {
        loop {
            if self.stdin_fin && self.stdin_buf.is_empty() {
                self.stdin_tx = None; // EOF for the runner
            }
            pump(
                &mut self.w,
                &mut self.stdout,
                &mut self.conn_window,
                self.enforce,
            )
            .await?;
            pump(
                &mut self.w,
                &mut self.stderr,
                &mut self.conn_window,
                self.enforce,
            )
            .await?;
            // The status goes last, after stdout/stderr are complete.
            if self.stdout.done() && self.stderr.done() {
                pump(
                    &mut self.w,
                    &mut self.error,
                    &mut self.conn_window,
                    self.enforce,
                )
                .await?;
            }
            if self.status_rx.is_none() && self.error.done() {
                return self.finish(frames).await;
            }
            self.w.flush().await?;

            let ready = self.ready_tx.is_none();
            let stdin_room = self.stdin_buffered < STDIN_BUFFER_LIMIT;
            let take_stdout = ready && self.stdout.pending.is_empty();
            let take_stderr = ready && self.stderr.pending.is_empty();
            // Branch futures borrow fields of `self`; the event is handled after they are gone.
            let event = tokio::select! {
                frame = frames.recv(), if stdin_room => Event::Frame(frame),
                permit = reserve(&self.stdin_tx), if !self.stdin_buf.is_empty() => {
                    let chunk = self.stdin_buf.pop_front().unwrap_or_default();
                    self.stdin_buffered -= chunk.len();
                    let len = chunk.len();
                    match permit {
                        Ok(permit) => {
                            permit.send(chunk);
                            Event::StdinForwarded(len)
                        }
                        Err(_) => Event::StdinUnwanted(len),
                    }
                },
                chunk = recv(&mut self.stdout.rx), if take_stdout => Event::Stdout(chunk),
                chunk = recv(&mut self.stderr.rx), if take_stderr => Event::Stderr(chunk),
                status = recv_status(&mut self.status_rx), if ready => {
                    Event::Status(status.unwrap_or_else(|_| lost_status()))
                },
            };
            match event {
                Event::Frame(Some(Ok(frame))) => self.on_frame(frame).await?,
                Event::Frame(Some(Err(e))) => return Err(e),
                Event::Frame(None) => return Err(SpdyError::ClientClosed),
                Event::StdinForwarded(len) => self.credit_stdin(len).await?,
                Event::StdinUnwanted(len) => {
                    // The runner no longer reads stdin: discard (but still credit) the rest.
                    self.stdin_tx = None;
                    let rest: usize = self.stdin_buf.drain(..).map(|c| c.len()).sum();
                    self.stdin_buffered = 0;
                    self.credit_stdin(len + rest).await?;
                }
                Event::Stdout(Some(chunk)) => self.stdout.pending.push_back(chunk),
                Event::Stdout(None) => {
                    self.stdout.rx = None;
                    self.stdout.eof = true;
                }
                Event::Stderr(Some(chunk)) => self.stderr.pending.push_back(chunk),
                Event::Stderr(None) => {
                    self.stderr.rx = None;
                    self.stderr.eof = true;
                }
                Event::Status(status) => self.on_status(status),
            }
        }
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), SpdyError> {
        self.scratch.clear();
        encode_frame(frame, &mut self.compressor, &mut self.scratch)?;
        self.w.write_all(&self.scratch).await?;
        Ok(())
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), SpdyError> {
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
            } => self.on_syn_stream(stream_id, fin, &headers).await?,
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let len = data.len();
                let is_stdin = Some(stream_id) == self.stdin_id;
                if is_stdin && self.stdin_tx.is_some() && !self.stdin_fin {
                    if len > 0 {
                        self.stdin_buffered += len;
                        self.stdin_buf.push_back(data);
                    }
                    // Credited once the runner takes it (see `run`).
                } else {
                    // resize (ExecIo has no resize), error, unknown or unwanted stdin: discard.
                    self.credit(stream_id, len).await?;
                }
                if is_stdin && fin {
                    self.stdin_fin = true;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                for ob in [&mut self.stdout, &mut self.stderr, &mut self.error] {
                    if ob.id == Some(stream_id) {
                        ob.reset();
                    }
                }
                if self.stdin_id == Some(stream_id) {
                    self.stdin_fin = true;
                }
                self.other_open.retain(|&id| id != stream_id);
            }
            Frame::Settings(entries) => {
                for (id, value) in entries {
                    // A new initial window adjusts every open stream by the difference
                    // (SPDY/3.1 section 2.6.8).
                    if id == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = i64::from(value) - self.initial_window;
                        self.initial_window = i64::from(value);
                        for ob in [&mut self.stdout, &mut self.stderr, &mut self.error] {
                            ob.window += delta;
                        }
                    }
                }
            }
            // Echo pings the client started (odd ids); even ids would answer our own pings,
            // which we never send (spdystream `handlePingFrame`).
            Frame::Ping(id) => {
                if !id.is_multiple_of(2) {
                    self.send(&Frame::Ping(id)).await?;
                }
            }
            Frame::GoAway { .. } => self.goaway_received = true,
            Frame::WindowUpdate { stream_id, delta } => {
                let delta = i64::from(delta);
                if stream_id == 0 {
                    self.conn_window += delta; // SPDY/3.1 connection-level window
                } else {
                    for ob in [&mut self.stdout, &mut self.stderr, &mut self.error] {
                        if ob.id == Some(stream_id) {
                            ob.window += delta;
                        }
                    }
                }
            }
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown => {}
        }
        Ok(())
    }

    async fn on_syn_stream(
        &mut self,
        stream_id: u32,
        fin: bool,
        headers: &[(String, String)],
    ) -> Result<(), SpdyError> {
        // spdystream `checkStreamFrame`/`validateStreamId`: client ids are odd and increasing;
        // after a GOAWAY new streams are refused.
        if self.goaway_received
            || stream_id.is_multiple_of(2)
            || stream_id <= self.last_client_stream
        {
            let status = if self.goaway_received {
                RST_REFUSED_STREAM
            } else {
                RST_PROTOCOL_ERROR
            };
            return self.send(&Frame::RstStream { stream_id, status }).await;
        }
        self.last_client_stream = stream_id;
        self.send(&Frame::SynReply {
            stream_id,
            fin: false,
            headers: Vec::new(),
        })
        .await?;

        // `api.StreamType` = "streamtype"; values `api.StreamTypeError` etc.
        let stream_type = headers
            .iter()
            .find(|(name, _)| name == "streamtype")
            .map(|(_, value)| value.as_str());
        let slot = match stream_type {
            Some("error") => Some(&mut self.error),
            Some("stdout") => Some(&mut self.stdout),
            Some("stderr") => Some(&mut self.stderr),
            _ => None,
        };
        match slot {
            Some(ob) if ob.wanted && ob.id.is_none() => ob.id = Some(stream_id),
            _ => {
                if stream_type == Some("stdin") && self.stdin_id.is_none() {
                    self.stdin_id = Some(stream_id);
                    self.stdin_fin = fin;
                } else if stream_type == Some("resize") && self.resize_id.is_none() {
                    self.resize_id = Some(stream_id);
                } else {
                    debug!(?stream_type, stream_id, "unexpected SPDY exec stream");
                }
                self.other_open.push(stream_id);
            }
        }

        // With a TTY the resize stream is expected too, as in the kubelet (`expectedStreams++`
        // when `opts.TTY && handler.supportsTerminalResizing()`): kubectl creates it last and
        // waits for its SYN_REPLY, so a session that could end before then would fail kubectl.
        let all_open = self.error.id.is_some()
            && (!self.want_stdin || self.stdin_id.is_some())
            && (!self.want_resize || self.resize_id.is_some())
            && (!self.stdout.wanted || self.stdout.id.is_some())
            && (!self.stderr.wanted || self.stderr.id.is_some());
        if all_open {
            if let Some(tx) = self.ready_tx.take() {
                // The replies must be on the wire before the session counts as ready.
                self.w.flush().await?;
                let _ = tx.send(Ok(()));
            }
        }
        Ok(())
    }

    /// Credits consumed stdin back to the client (stream and connection windows).
    async fn credit_stdin(&mut self, len: usize) -> Result<(), SpdyError> {
        let Some(id) = self.stdin_id else {
            return Ok(());
        };
        self.stdin_unacked = self.stdin_unacked.saturating_add(len_u32(len)?);
        if self.stdin_unacked >= WINDOW_UPDATE_THRESHOLD && !self.stdin_fin {
            let delta = std::mem::take(&mut self.stdin_unacked);
            self.send(&Frame::WindowUpdate {
                stream_id: id,
                delta,
            })
            .await?;
        }
        self.credit_connection(len).await
    }

    /// Credits discarded data at once.
    async fn credit(&mut self, stream_id: u32, len: usize) -> Result<(), SpdyError> {
        if len == 0 {
            return Ok(());
        }
        self.send(&Frame::WindowUpdate {
            stream_id,
            delta: len_u32(len)?,
        })
        .await?;
        self.credit_connection(len).await
    }

    async fn credit_connection(&mut self, len: usize) -> Result<(), SpdyError> {
        self.conn_unacked = self.conn_unacked.saturating_add(len_u32(len)?);
        if self.conn_unacked >= WINDOW_UPDATE_THRESHOLD {
            let delta = std::mem::take(&mut self.conn_unacked);
            self.send(&Frame::WindowUpdate {
                stream_id: 0,
                delta,
            })
            .await?;
        }
        Ok(())
    }

    fn on_status(&mut self, status: serde_json::Value) {
        self.status_rx = None;
        // The runner sends all its output before the status: take what is still queued.
        for ob in [&mut self.stdout, &mut self.stderr] {
            if let Some(mut rx) = ob.rx.take() {
                while let Ok(chunk) = rx.try_recv() {
                    if !ob.finished {
                        ob.pending.push_back(chunk);
                    }
                }
            }
            ob.eof = true;
        }
        let json = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
        if !self.error.finished {
            self.error.pending.push_back(Bytes::from(json));
        }
        self.error.eof = true;
    }

    /// FIN on the remaining streams, GOAWAY, shut the write side, wait for the client to close.
    async fn finish(&mut self, frames: &mut Inbound) -> Result<(), SpdyError> {
        self.stdin_tx = None;
        for id in std::mem::take(&mut self.other_open) {
            write_data(&mut self.w, id, true, &[]).await?;
        }
        // spdystream `Connection.Close`: GOAWAY with the last stream id received, status OK.
        self.send(&Frame::GoAway {
            last_good_stream_id: self.last_client_stream,
            status: 0,
        })
        .await?;
        self.w.flush().await?;
        let _ = self.w.shutdown().await;
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, frames.recv()).await {}
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{HashMap, HashSet};

    use tokio::io::{DuplexStream, WriteHalf};

    use super::*;
    use crate::exec_io::ExecIo;
    use crate::exec_transport::{accept_with_options, Negotiated, V4_CHANNEL_PROTOCOL};

    const SPDY: Negotiated = Negotiated::Spdy {
        protocol_version: V4_CHANNEL_PROTOCOL,
    };

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(HEADER_DICTIONARY.len(), 1423);
        assert!(HEADER_DICTIONARY.starts_with(b"\0\0\0\x07options"));
        assert!(HEADER_DICTIONARY.ends_with(b",*,enq=0."));
        let mut d = Decompress::new(true);
        // A stream announcing the dictionary carries its Adler-32 (RFC 1950 DICTID).
        let block = hex("78f9e3c6a7c202a62346703a2b294a4dcc851625acc525c03c01000000ffff");
        let err = d
            .decompress_vec(&block, &mut Vec::with_capacity(64), FlushDecompress::Sync)
            .unwrap_err();
        assert_eq!(err.needs_dictionary(), Some(0xe3c6a7c2));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn inflates_blocks_from_another_zlib() {
        // Produced by CPython's zlib (`compressobj(level=9, zdict=<this dictionary>)`, one
        // Z_SYNC_FLUSH per block, one stream for both), i.e. what any standard zlib peer sends.
        let mut d = HeaderDecompressor::new();
        let first = d
            .decompress(&hex(
                "78f9e3c6a7c202a62346703a2b294a4dcc851625acc525c03c01000000ffff",
            ))
            .unwrap();
        assert_eq!(first, vec![("streamtype".into(), "stdin".into())]);
        let second = d
            .decompress(&hex("02651c0c2960624ec90797d18c15e022942109000000ffff"))
            .unwrap();
        assert_eq!(
            second,
            vec![
                ("streamtype".to_string(), "stdout".to_string()),
                ("x".into(), "a".into()),
                ("x".into(), "b".into()),
            ]
        );
    }

    #[test]
    fn header_blocks_round_trip_over_one_zlib_stream() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        for i in 0..50 {
            let h = vec![
                ("streamtype".to_string(), format!("stdout{i}")),
                ("Port".to_string(), "8080".to_string()),
            ];
            let block = c.compress(&h).unwrap();
            let got = d.decompress(&block).unwrap();
            assert_eq!(got[0], h[0]);
            assert_eq!(got[1], ("port".to_string(), "8080".to_string()));
        }
    }

    /// Echoes stdin to stdout, adds `extra` bytes of stdout and a stderr line, reports success.
    async fn echo_runner(io: ExecIo, extra: usize) {
        let ExecIo {
            stdin,
            stdout,
            stderr,
            status,
        } = io;
        let (mut stdin, stdout) = (stdin.unwrap(), stdout.unwrap());
        while let Some(chunk) = stdin.recv().await {
            if stdout.send(chunk).await.is_err() {
                return;
            }
        }
        for _ in 0..extra / 1000 {
            if stdout.send(Bytes::from(vec![b'x'; 1000])).await.is_err() {
                return;
            }
        }
        if let Some(stderr) = stderr {
            let _ = stderr.send(Bytes::from_static(b"bye\n")).await;
        }
        let _ = status.send(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"
        }));
    }

    /// A minimal SPDY client (exec's and port-forward's tests): frames are read by a task into
    /// an unbounded queue (so the server never blocks on us), written from the test body.
    pub(crate) struct Client {
        _reader: AbortOnDrop,
        w: WriteHalf<DuplexStream>,
        compressor: HeaderCompressor,
        frames: mpsc::UnboundedReceiver<Frame>,
    }

    impl Client {
        pub(crate) fn new(io: DuplexStream) -> Self {
            let (mut r, w) = tokio::io::split(io);
            let (tx, frames) = mpsc::unbounded_channel();
            let reader = tokio::spawn(async move {
                let mut headers = HeaderDecompressor::new();
                while let Ok(Some(frame)) = read_frame(&mut r, &mut headers).await {
                    if tx.send(frame).is_err() {
                        return;
                    }
                }
            });
            Client {
                _reader: AbortOnDrop(reader),
                w,
                compressor: HeaderCompressor::new().unwrap(),
                frames,
            }
        }

        pub(crate) async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            encode_frame(&frame, &mut self.compressor, &mut out).unwrap();
            self.w.write_all(&out).await.unwrap();
        }

        /// The next frame; `None` once the server closed the connection.
        pub(crate) async fn next(&mut self) -> Option<Frame> {
            tokio::time::timeout(Duration::from_secs(20), self.frames.recv())
                .await
                .expect("timed out waiting for a frame")
        }

        async fn open(&mut self, stream_id: u32, stream_type: &str) {
            self.open_with(stream_id, &[("streamtype", stream_type)])
                .await;
        }

        /// Opens a stream with these headers (SYN_STREAM).
        pub(crate) async fn open_with(&mut self, stream_id: u32, headers: &[(&str, &str)]) {
            let headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.send(Frame::SynStream {
                stream_id,
                fin: false,
                headers,
            })
            .await;
        }
    }

    /// Runs a full exec: 1 MiB of stdin echoed back plus 200 kB more stdout.
    async fn exchange(flow: SpdySendFlowControl) {
        const STDIN: usize = 1024 * 1024;
        const EXTRA: usize = 200_000;
        let enforce = flow == SpdySendFlowControl::Enforce;
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let wanted = StreamsWanted {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let options = TransportOptions {
            spdy_send_flow_control: flow,
            ..TransportOptions::default()
        };
        let server = tokio::spawn(async move {
            let io = accept_with_options(server_io, &SPDY, wanted, options)
                .await
                .unwrap();
            echo_runner(io, EXTRA).await;
        });

        let mut c = Client::new(client_io);
        // What a flow-controlling client may send first; spdystream sends neither.
        if enforce {
            c.send(Frame::Settings(vec![(SETTINGS_INITIAL_WINDOW_SIZE, 65536)]))
                .await;
        }
        c.send(Frame::Ping(1)).await;
        // client-go v4 creates error, stdin, stdout, stderr, in that order.
        for (id, ty) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
            c.open(id, ty).await;
        }

        let input: Vec<u8> = (0..STDIN as u32).map(|i| (i % 253) as u8).collect();
        let (mut sent, mut stdin_window, mut conn_send_window) = (0usize, 65536i64, 65536i64);
        let mut replies = HashSet::new();
        let mut received: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut recv_window: HashMap<u32, i64> = HashMap::new();
        let mut unacked: HashMap<u32, i64> = HashMap::new();
        let mut conn_recv_window = 65536i64;
        let mut conn_unacked = 0i64;
        let (mut fins, mut order) = (HashSet::new(), Vec::new());
        let (mut pinged, mut window_updates, mut goaway) = (false, 0, false);

        while !goaway {
            // Like kubectl, send stdin only once every stream was answered.
            while replies.len() == 4 && sent < input.len() {
                let mut n = (input.len() - sent).min(16 * 1024);
                if enforce {
                    let window = stdin_window.min(conn_send_window);
                    if window <= 0 {
                        break;
                    }
                    n = n.min(window as usize);
                }
                c.send(Frame::Data {
                    stream_id: 3,
                    fin: sent + n == input.len(),
                    data: Bytes::copy_from_slice(&input[sent..sent + n]),
                })
                .await;
                sent += n;
                stdin_window -= n as i64;
                conn_send_window -= n as i64;
            }
            match c.next().await.expect("server closed before GOAWAY") {
                Frame::SynReply { stream_id, .. } => assert!(replies.insert(stream_id)),
                Frame::Ping(1) => pinged = true,
                Frame::WindowUpdate { stream_id, delta } => {
                    window_updates += 1;
                    match stream_id {
                        0 => conn_send_window += i64::from(delta),
                        3 => stdin_window += i64::from(delta),
                        other => panic!("window update for stream {other}"),
                    }
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    assert!(!fins.contains(&stream_id), "data after FIN");
                    let len = data.len() as i64;
                    if enforce {
                        let window = recv_window.entry(stream_id).or_insert(65536);
                        *window -= len;
                        conn_recv_window -= len;
                        assert!(*window >= 0, "server overran the window of {stream_id}");
                        assert!(
                            conn_recv_window >= 0,
                            "server overran the connection window"
                        );
                        // Grant it back once half is used, like a real flow-controlling peer.
                        let u = unacked.entry(stream_id).or_default();
                        *u += len;
                        if *u >= 32 * 1024 {
                            let delta = std::mem::take(u);
                            *window += delta;
                            c.send(Frame::WindowUpdate {
                                stream_id,
                                delta: delta as u32,
                            })
                            .await;
                        }
                        conn_unacked += len;
                        if conn_unacked >= 32 * 1024 {
                            conn_recv_window += conn_unacked;
                            c.send(Frame::WindowUpdate {
                                stream_id: 0,
                                delta: std::mem::take(&mut conn_unacked) as u32,
                            })
                            .await;
                        }
                    }
                    received
                        .entry(stream_id)
                        .or_default()
                        .extend_from_slice(&data);
                    if fin {
                        fins.insert(stream_id);
                        order.push(stream_id);
                    }
                }
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                } => {
                    assert_eq!((last_good_stream_id, status), (7, 0));
                    goaway = true;
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }

        assert!(pinged, "PING was not echoed");
        assert_eq!(sent, input.len());
        let stdout = received.remove(&5).unwrap_or_default();
        assert_eq!(stdout.len(), STDIN + EXTRA);
        assert!(
            stdout[..STDIN] == input[..],
            "stdout is not the echoed stdin"
        );
        assert_eq!(received.remove(&7).unwrap_or_default(), b"bye\n");
        let status: serde_json::Value =
            serde_json::from_slice(&received.remove(&1).unwrap_or_default()).unwrap();
        assert_eq!(status["status"], "Success");
        // stdout/stderr complete before the status; every stream is closed by us.
        assert_eq!(fins, HashSet::from([1, 3, 5, 7]));
        let pos = |id| order.iter().position(|&x| x == id).unwrap();
        assert!(pos(5) < pos(1) && pos(7) < pos(1));
        if enforce {
            assert!(window_updates > 0, "stdin window was never granted back");
        }
        // Our close: the server sees EOF and ends.
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn exec_round_trip_like_spdystream() {
        exchange(SpdySendFlowControl::Ignore).await;
    }

    #[tokio::test]
    async fn exec_round_trip_with_flow_control() {
        exchange(SpdySendFlowControl::Enforce).await;
    }

    #[tokio::test]
    async fn tty_session_waits_for_resize_and_ends_cleanly() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let wanted = StreamsWanted {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        };
        let mut server = tokio::spawn(async move {
            accept_with_options(server_io, &SPDY, wanted, TransportOptions::default()).await
        });
        let mut c = Client::new(client_io);
        for (id, ty) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
            c.open(id, ty).await;
        }
        // Not ready before kubectl's last stream, resize.
        let early = tokio::time::timeout(Duration::from_millis(200), &mut server).await;
        assert!(early.is_err(), "ready before the resize stream was opened");
        c.open(7, "resize").await;
        let io = server.await.unwrap().unwrap();
        assert!(io.stderr.is_none(), "no stderr with a tty");
        // kubectl writes JSON terminal sizes on the resize stream; they are dropped.
        c.send(Frame::Data {
            stream_id: 7,
            fin: false,
            data: Bytes::from_static(br#"{"Width":80,"Height":24}"#),
        })
        .await;
        let ExecIo { stdout, status, .. } = io;
        stdout
            .unwrap()
            .send(Bytes::from_static(b"$ "))
            .await
            .unwrap();
        let _ =
            status.send(serde_json::json!({"kind": "Status", "status": "Failure", "code": 500}));

        let (mut fins, mut stdout, mut error) = (HashSet::new(), Vec::new(), Vec::new());
        loop {
            match c.next().await.expect("closed before GOAWAY") {
                Frame::GoAway { .. } => break,
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    match stream_id {
                        5 => stdout.extend_from_slice(&data),
                        1 => error.extend_from_slice(&data),
                        _ => assert!(data.is_empty()),
                    }
                    if fin {
                        fins.insert(stream_id);
                    }
                }
                Frame::SynReply { .. } | Frame::WindowUpdate { .. } => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
        assert_eq!(stdout, b"$ ");
        let status: serde_json::Value = serde_json::from_slice(&error).unwrap();
        assert_eq!(status["code"], 500);
        assert_eq!(fins, HashSet::from([1, 3, 5, 7]));
        // After GOAWAY the server shuts its side down.
        assert!(c.next().await.is_none());
    }

    #[tokio::test]
    async fn missing_streams_time_out() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let wanted = StreamsWanted {
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let options = TransportOptions {
            stream_creation_timeout: Duration::from_millis(300),
            ..TransportOptions::default()
        };
        let server =
            tokio::spawn(
                async move { accept_with_options(server_io, &SPDY, wanted, options).await },
            );
        let mut c = Client::new(client_io);
        c.open(1, "error").await;
        c.open(3, "stdout").await; // never opens stderr
        let err = server.await.unwrap().err().unwrap();
        assert!(
            matches!(err, TransportError::StreamCreationTimeout),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "timed out waiting for client to create streams"
        );
        // The connection is closed after the replies.
        let mut replies = 0;
        while let Some(frame) = c.next().await {
            assert!(matches!(frame, Frame::SynReply { .. }));
            replies += 1;
        }
        assert_eq!(replies, 2);
    }

    #[tokio::test]
    async fn client_disconnect_fails_runner_sends() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let wanted = StreamsWanted {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let server = tokio::spawn(async move {
            accept_with_options(server_io, &SPDY, wanted, TransportOptions::default()).await
        });
        let mut c = Client::new(client_io);
        for (id, ty) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
            c.open(id, ty).await;
        }
        let io = server.await.unwrap().unwrap();
        drop(c);
        let (mut stdin, stdout) = (io.stdin.unwrap(), io.stdout.unwrap());
        let eof = tokio::time::timeout(Duration::from_secs(5), stdin.recv()).await;
        assert!(eof.unwrap().is_none());
        let failed = tokio::time::timeout(Duration::from_secs(5), async {
            while stdout.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            failed.is_ok(),
            "stdout sends kept succeeding after disconnect"
        );
    }
}
