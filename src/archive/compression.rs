//! Compression of the stored archive: choice, parsing, file extension,
//! streaming encoder/decoder and detection from magic bytes.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Buffer size used for the compressed side of the decoders.
const DECODE_BUF: usize = 256 * 1024;

/// Default gzip level: 6 is what `gzip` itself uses.
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// Default zstd level: 1 keeps the backup close to network/disk speed on a
/// single core while still compressing typical volume data well.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// How the stored archive is compressed.
///
/// Serialised in the manifest as `{"algorithm": "zstd", "level": 1}`,
/// `{"algorithm": "gzip", "level": 6}` or `{"algorithm": "none"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase", deny_unknown_fields)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (RFC 1952), level 0..=9.
    Gzip { level: u32 },
    /// Zstandard (RFC 8878), level 1..=22, single-threaded.
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// `--compression` value that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionParseError {
    #[error(
        "unknown compression {0:?}: use one of `zstd`, `gzip` or `none`, \
         optionally with a level such as `zstd:3` or `gzip:9`"
    )]
    UnknownAlgorithm(String),
    #[error("invalid {algorithm} level {level:?}: use an integer from {min} to {max}")]
    BadLevel {
        algorithm: &'static str,
        level: String,
        min: i64,
        max: i64,
    },
    #[error("compression `none` takes no level (got {0:?}): write just `none`")]
    LevelForNone(String),
}

impl Compression {
    /// File name extension including the leading dot: `.tar`, `.tar.gz`, `.tar.zst`.
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::None => ".tar",
            Compression::Gzip { .. } => ".tar.gz",
            Compression::Zstd { .. } => ".tar.zst",
        }
    }

    /// Algorithm name as accepted by [`FromStr`]: `none`, `gzip`, `zstd`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// Wrap `w` in a streaming compressor. The returned [`Encoder`] must be
    /// [`Encoder::finish`]ed: dropping it may lose the trailer and any
    /// error writing it.
    pub fn encoder<W: Write>(self, w: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::None => Encoder::Plain(w),
            Compression::Gzip { level } => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(level.min(9)),
            )),
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(w, level)?;
                // The frame checksum (xxhash64 of the content) makes the
                // decoder itself detect corruption, not only our sha256.
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
        })
    }

    /// Wrap `r` in a streaming decompressor. Multi-member gzip and
    /// multi-frame zstd streams are decoded to their concatenation.
    pub fn decoder<'a, R: Read + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip { .. } => Box::new(flate2::bufread::MultiGzDecoder::new(
                BufReader::with_capacity(DECODE_BUF, r),
            )),
            Compression::Zstd { .. } => Box::new(zstd::stream::read::Decoder::with_buffer(
                BufReader::with_capacity(DECODE_BUF, r),
            )?),
        })
    }

    /// Guess the compression from the first bytes of a stored archive
    /// (pass at least 512 bytes to recognise a plain tar).
    ///
    /// Returns `None` if the bytes match no known format. The level of a
    /// detected gzip/zstd stream is not recorded in the stream, so the
    /// default level is returned; it does not matter for decoding.
    pub fn detect(prefix: &[u8]) -> Option<Compression> {
        // gzip: ID1 ID2 = 0x1f 0x8b (RFC 1952 section 2.3.1).
        if prefix.starts_with(&[0x1f, 0x8b]) {
            return Some(Compression::Gzip {
                level: DEFAULT_GZIP_LEVEL,
            });
        }
        // zstd frame magic 0xFD2FB528, little endian (RFC 8878 section 3.1.1).
        if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Some(Compression::Zstd {
                level: DEFAULT_ZSTD_LEVEL,
            });
        }
        // ustar: "ustar" at offset 257 of the first header, followed by
        // NUL (POSIX) or a space (old GNU "ustar  \0").
        if prefix.len() >= 263 && &prefix[257..262] == b"ustar" {
            return Some(Compression::None);
        }
        // An archive with no entries is just the zero end-of-archive blocks.
        if prefix.len() >= 512 && prefix[..512].iter().all(|&b| b == 0) {
            return Some(Compression::None);
        }
        None
    }
}

impl fmt::Display for Compression {
    /// `none`, `gzip:6`, `zstd:1` — parseable by [`FromStr`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

impl FromStr for Compression {
    type Err = CompressionParseError;

    /// Accepts `none`, `gzip`, `zstd`, `gzip:N`, `zstd:N` (also `=` or `-`
    /// as separator), case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, level) = match lower.find([':', '=', '-']) {
            Some(i) => (&lower[..i], Some(lower[i + 1..].trim())),
            None => (lower.as_str(), None),
        };
        match name {
            "none" | "tar" => match level {
                None => Ok(Compression::None),
                Some(l) => Err(CompressionParseError::LevelForNone(l.to_string())),
            },
            "gzip" | "gz" => {
                let level = match level {
                    None => DEFAULT_GZIP_LEVEL,
                    Some(l) => l.parse::<u32>().ok().filter(|v| *v <= 9).ok_or_else(|| {
                        CompressionParseError::BadLevel {
                            algorithm: "gzip",
                            level: l.to_string(),
                            min: 0,
                            max: 9,
                        }
                    })?,
                };
                Ok(Compression::Gzip { level })
            }
            "zstd" | "zst" => {
                let level = match level {
                    None => DEFAULT_ZSTD_LEVEL,
                    Some(l) => l
                        .parse::<i32>()
                        .ok()
                        .filter(|v| (1..=22).contains(v))
                        .ok_or_else(|| CompressionParseError::BadLevel {
                            algorithm: "zstd",
                            level: l.to_string(),
                            min: 1,
                            max: 22,
                        })?,
                };
                Ok(Compression::Zstd { level })
            }
            _ => Err(CompressionParseError::UnknownAlgorithm(s.to_string())),
        }
    }
}

/// A streaming compressor returned by [`Compression::encoder`].
///
/// Call [`Encoder::finish`] to write the trailer and get the inner writer
/// back; errors there are real (e.g. disk full while writing the trailer).
pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Flush all pending compressed data and the format trailer, returning
    /// the inner writer (not flushed itself beyond what the encoder wrote).
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.write_all(buf),
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (s, c) in [
            ("none", Compression::None),
            ("gzip", Compression::Gzip { level: 6 }),
            ("GZIP:9", Compression::Gzip { level: 9 }),
            ("zstd", Compression::Zstd { level: 1 }),
            ("zstd=19", Compression::Zstd { level: 19 }),
            ("zstd-3", Compression::Zstd { level: 3 }),
        ] {
            assert_eq!(s.parse::<Compression>().unwrap(), c, "{s}");
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
        }
        assert!(matches!(
            "lz4".parse::<Compression>(),
            Err(CompressionParseError::UnknownAlgorithm(_))
        ));
        assert!(matches!(
            "gzip:10".parse::<Compression>(),
            Err(CompressionParseError::BadLevel { .. })
        ));
        assert!(matches!(
            "zstd:0".parse::<Compression>(),
            Err(CompressionParseError::BadLevel { .. })
        ));
        assert!(matches!(
            "none:1".parse::<Compression>(),
            Err(CompressionParseError::LevelForNone(_))
        ));
        let msg = "lz4".parse::<Compression>().unwrap_err().to_string();
        assert!(msg.contains("zstd"), "{msg}");
    }

    #[test]
    fn extensions() {
        assert_eq!(Compression::None.extension(), ".tar");
        assert_eq!(Compression::Gzip { level: 1 }.extension(), ".tar.gz");
        assert_eq!(Compression::Zstd { level: 1 }.extension(), ".tar.zst");
    }

    #[test]
    fn encode_decode_and_detect() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for c in [
            Compression::None,
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 3 },
        ] {
            let mut enc = c.encoder(Vec::new()).unwrap();
            enc.write_all(&data).unwrap();
            let stored = enc.finish().unwrap();
            let mut out = Vec::new();
            c.decoder(&stored[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{c}");
            if c != Compression::None {
                assert_eq!(
                    Compression::detect(&stored).map(|d| d.algorithm()),
                    Some(c.algorithm())
                );
            }
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_cksum();
        tar.append_data(&mut h, "x", io::empty()).unwrap();
        let tar = tar.into_inner().unwrap();
        assert_eq!(Compression::detect(&tar), Some(Compression::None));
        assert_eq!(Compression::detect(&[0u8; 1024]), Some(Compression::None));
        assert_eq!(Compression::detect(b"hello world"), None);
    }

    #[test]
    fn serde_shape() {
        let j = serde_json::to_string(&Compression::Zstd { level: 1 }).unwrap();
        assert_eq!(j, r#"{"algorithm":"zstd","level":1}"#);
        let j = serde_json::to_string(&Compression::None).unwrap();
        assert_eq!(j, r#"{"algorithm":"none"}"#);
        assert!(serde_json::from_str::<Compression>(r#"{"algorithm":"gzip","levl":1}"#).is_err());
    }
}
