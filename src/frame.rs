//! Checksummed record framing shared by the WAL segments and the meta command log.
//!
//! A record is `len: u32 LE | crc32c: u32 LE | seq: u64 LE | payload[len]`, the checksum covering
//! `seq` and the payload. Readers stop at the first record that is incomplete or fails its
//! checksum and report where the valid prefix ends, so a torn tail can be cut off.

/// Bytes before the payload of every record.
pub const RECORD_HEADER_LEN: usize = 16;

/// Appends one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, payload_parts: &[&[u8]]) {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).expect("record payload larger than 4 GiB");
    let seq_bytes = seq.to_le_bytes();
    let mut crc = crc32c::crc32c(&seq_bytes);
    for part in payload_parts {
        crc = crc32c::crc32c_append(crc, part);
    }
    out.reserve(RECORD_HEADER_LEN + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    for part in payload_parts {
        out.extend_from_slice(part);
    }
}

/// Iterates over the valid records of a buffer. After the iterator returns `None`,
/// [`RecordReader::valid_len`] is the length of the intact prefix and
/// [`RecordReader::is_torn`] tells whether anything followed it.
pub struct RecordReader<'a> {
    data: &'a [u8],
    pos: usize,
    torn: bool,
}

impl<'a> RecordReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            torn: false,
        }
    }

    pub fn valid_len(&self) -> usize {
        self.pos
    }

    pub fn is_torn(&self) -> bool {
        self.torn
    }
}

impl<'a> Iterator for RecordReader<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.torn {
            return None;
        }
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
            self.torn = true;
            return None;
        };
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let seq_bytes = &header[8..16];
        let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
            self.torn = true;
            return None;
        };
        let actual = crc32c::crc32c_append(crc32c::crc32c(seq_bytes), payload);
        if actual != crc || (len == 0 && crc == 0) {
            self.torn = true;
            return None;
        }
        self.pos += RECORD_HEADER_LEN + len;
        Some((u64::from_le_bytes(seq_bytes.try_into().unwrap()), payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_and_detects_torn_tail() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, &[b"hello", b" world"]);
        encode_record(&mut buf, 8, &[b""]);
        let intact = buf.len();
        encode_record(&mut buf, 9, &[b"cut short"]);
        buf.truncate(buf.len() - 3);

        let mut reader = RecordReader::new(&buf);
        assert_eq!(reader.next(), Some((7, &b"hello world"[..])));
        assert_eq!(reader.next(), Some((8, &b""[..])));
        assert_eq!(reader.next(), None);
        assert!(reader.is_torn());
        assert_eq!(reader.valid_len(), intact);
    }

    #[test]
    fn rejects_corrupted_payload_and_zero_fill() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, &[b"abc"]);
        let first = buf.len();
        encode_record(&mut buf, 2, &[b"def"]);
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        let mut reader = RecordReader::new(&buf);
        assert!(reader.next().is_some());
        assert!(reader.next().is_none());
        assert_eq!(reader.valid_len(), first);

        let zeros = vec![0u8; 64];
        let mut reader = RecordReader::new(&zeros);
        assert!(reader.next().is_none());
        assert!(reader.is_torn());
        assert_eq!(reader.valid_len(), 0);
    }
}
