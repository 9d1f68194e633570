//! MessagePack decoder for `/api/v1/write/msgpack`.
//!
//! The payload is a single item map, an array of item maps, or `{"batch": [items…]}`. An
//! item is columnar (`m` + `columns`, decoded straight into typed columns) or a legacy row
//! (`m`, `t`, `h`, `tags`, `fields` or `f`). Unlike Arc, any invalid item fails the whole
//! request, so a request is never half stored.
//!
//! The reader is a small hand-written one over the body: every length is checked against
//! the bytes that remain before anything is sliced or allocated, and skipping nested values
//! is iterative, so hostile input can neither panic nor exhaust the stack.

use std::borrow::Cow;

use super::DecodeError;
use super::batch::{
    ColumnData, ColumnType, MeasurementBatch, RowBatcher, Value, assemble, checked_time,
};
use super::names::valid_measurement;

/// Decodes a MessagePack write body. Rows without a timestamp get `now_us`.
pub fn decode(body: &[u8], now_us: i64) -> Result<Vec<MeasurementBatch>, DecodeError> {
    if body.is_empty() {
        return Err(no_records());
    }
    let mut reader = Reader::new(body);
    let mut decoder = Decoder::new(now_us);
    match reader.next()? {
        Token::Map(entries) => decoder.top_level_map(&mut reader, entries)?,
        Token::Array(items) => decoder.items(&mut reader, items)?,
        _ => return Err(malformed("payload must be a map or an array of maps")),
    }
    if reader.remaining() > 0 {
        return Err(malformed("trailing bytes after the payload"));
    }
    decoder.finish()
}

fn malformed(reason: impl Into<String>) -> DecodeError {
    DecodeError::Msgpack(reason.into())
}

fn no_records() -> DecodeError {
    malformed("no records")
}

fn truncated() -> DecodeError {
    malformed("unexpected end of data")
}

fn invalid_time(measurement: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidTime {
        measurement: measurement.to_owned(),
        reason: reason.into(),
    }
}

/// One MessagePack value header, or a whole scalar. Arrays and maps carry their element or
/// entry count; their contents follow in the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Token<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    BigUint(u64),
    Float32(f32),
    Float64(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    /// An extension value; its bytes are skipped.
    Ext,
}

/// A cursor over the body. Cloning it remembers a position to come back to.
#[derive(Debug, Clone)]
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    #[inline]
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(truncated());
        }
        let taken = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(taken)
    }

    #[inline]
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    #[inline]
    fn len8(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(self.fixed::<1>()?[0]))
    }

    #[inline]
    fn len16(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.fixed()?)))
    }

    #[inline]
    fn len32(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(u32::from_be_bytes(self.fixed()?)).map_err(|_| truncated())
    }

    /// Every element takes at least one byte, so a count larger than what remains is a lie
    /// that is rejected before anyone sizes a buffer by it.
    #[inline]
    fn array(&self, len: usize) -> Result<Token<'a>, DecodeError> {
        if len > self.remaining() {
            return Err(truncated());
        }
        Ok(Token::Array(len))
    }

    #[inline]
    fn map(&self, len: usize) -> Result<Token<'a>, DecodeError> {
        if len > self.remaining() / 2 {
            return Err(truncated());
        }
        Ok(Token::Map(len))
    }

    /// Skips an extension's type byte and `len` data bytes.
    fn ext(&mut self, len: usize) -> Result<Token<'a>, DecodeError> {
        self.take(len.checked_add(1).ok_or_else(truncated)?)?;
        Ok(Token::Ext)
    }

    #[inline]
    fn next(&mut self) -> Result<Token<'a>, DecodeError> {
        let marker = self.fixed::<1>()?[0];
        Ok(match marker {
            0x00..=0x7f => Token::Int(i64::from(marker)),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f))?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f))?,
            0xa0..=0xbf => Token::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Token::Nil,
            0xc1 => return Err(malformed("reserved marker byte 0xc1")),
            0xc2 => Token::Bool(false),
            0xc3 => Token::Bool(true),
            0xc4 => {
                let len = self.len8()?;
                Token::Bin(self.take(len)?)
            }
            0xc5 => {
                let len = self.len16()?;
                Token::Bin(self.take(len)?)
            }
            0xc6 => {
                let len = self.len32()?;
                Token::Bin(self.take(len)?)
            }
            0xc7 => {
                let len = self.len8()?;
                self.ext(len)?
            }
            0xc8 => {
                let len = self.len16()?;
                self.ext(len)?
            }
            0xc9 => {
                let len = self.len32()?;
                self.ext(len)?
            }
            0xca => Token::Float32(f32::from_be_bytes(self.fixed()?)),
            0xcb => Token::Float64(f64::from_be_bytes(self.fixed()?)),
            0xcc => Token::Int(i64::from(self.fixed::<1>()?[0])),
            0xcd => Token::Int(i64::from(u16::from_be_bytes(self.fixed()?))),
            0xce => Token::Int(i64::from(u32::from_be_bytes(self.fixed()?))),
            0xcf => {
                let value = u64::from_be_bytes(self.fixed()?);
                i64::try_from(value).map_or(Token::BigUint(value), Token::Int)
            }
            0xd0 => Token::Int(i64::from(i8::from_be_bytes(self.fixed()?))),
            0xd1 => Token::Int(i64::from(i16::from_be_bytes(self.fixed()?))),
            0xd2 => Token::Int(i64::from(i32::from_be_bytes(self.fixed()?))),
            0xd3 => Token::Int(i64::from_be_bytes(self.fixed()?)),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let len = self.len8()?;
                Token::Str(self.take(len)?)
            }
            0xda => {
                let len = self.len16()?;
                Token::Str(self.take(len)?)
            }
            0xdb => {
                let len = self.len32()?;
                Token::Str(self.take(len)?)
            }
            0xdc => {
                let len = self.len16()?;
                self.array(len)?
            }
            0xdd => {
                let len = self.len32()?;
                self.array(len)?
            }
            0xde => {
                let len = self.len16()?;
                self.map(len)?
            }
            0xdf => {
                let len = self.len32()?;
                self.map(len)?
            }
            0xe0..=0xff => Token::Int(i64::from(marker as i8)),
        })
    }

    /// Skips `count` whole values, however deeply nested, without recursion.
    fn skip(&mut self, count: usize) -> Result<(), DecodeError> {
        let mut pending = count;
        while pending > 0 {
            pending -= 1;
            match self.next()? {
                Token::Array(len) => pending = pending.saturating_add(len),
                Token::Map(len) => pending = pending.saturating_add(len.saturating_mul(2)),
                _ => {}
            }
            if pending > self.remaining() {
                return Err(truncated());
            }
        }
        Ok(())
    }

    fn skip_value(&mut self) -> Result<(), DecodeError> {
        self.skip(1)
    }

    /// Skips the elements of an array or map whose header `token` was just read.
    fn skip_contents(&mut self, token: Token<'_>) -> Result<(), DecodeError> {
        match token {
            Token::Array(len) => self.skip(len),
            Token::Map(len) => self.skip(len.saturating_mul(2)),
            _ => Ok(()),
        }
    }
}

/// Epoch unit of a timestamp, guessed from its magnitude as Arc does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpochUnit {
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
}

impl EpochUnit {
    fn detect(timestamp: i64) -> Self {
        match timestamp.unsigned_abs() {
            0..10_000_000_000 => EpochUnit::Seconds,
            10_000_000_000..10_000_000_000_000 => EpochUnit::Milliseconds,
            10_000_000_000_000..10_000_000_000_000_000 => EpochUnit::Microseconds,
            _ => EpochUnit::Nanoseconds,
        }
    }

    fn to_micros(self, timestamp: i64) -> Option<i64> {
        let micros = match self {
            EpochUnit::Seconds => timestamp.checked_mul(1_000_000),
            EpochUnit::Milliseconds => timestamp.checked_mul(1000),
            EpochUnit::Microseconds => Some(timestamp),
            EpochUnit::Nanoseconds => Some(timestamp.div_euclid(1000)),
        };
        micros.and_then(checked_time)
    }
}

/// An integer timestamp; anything else is an invalid time.
fn read_epoch(reader: &mut Reader<'_>, measurement: &str) -> Result<i64, DecodeError> {
    match reader.next()? {
        Token::Int(timestamp) => Ok(timestamp),
        Token::BigUint(timestamp) => Err(invalid_time(
            measurement,
            format!("timestamp {timestamp} is out of range"),
        )),
        Token::Nil => Err(invalid_time(measurement, "timestamp is null")),
        _ => Err(invalid_time(measurement, "timestamps must be integers")),
    }
}

fn epoch_to_micros(unit: EpochUnit, timestamp: i64, measurement: &str) -> Result<i64, DecodeError> {
    unit.to_micros(timestamp).ok_or_else(|| {
        invalid_time(
            measurement,
            format!("timestamp {timestamp} is out of range"),
        )
    })
}

/// A map key or column name.
fn read_name<'a>(reader: &mut Reader<'a>, measurement: &str) -> Result<Cow<'a, str>, DecodeError> {
    match reader.next()? {
        Token::Str(name) | Token::Bin(name) if !name.is_empty() => {
            Ok(String::from_utf8_lossy(name))
        }
        _ => Err(malformed(format!(
            "measurement '{measurement}': column names must be non-empty strings"
        ))),
    }
}

fn read_measurement(reader: &mut Reader<'_>) -> Result<String, DecodeError> {
    let name = match reader.next()? {
        Token::Str(name) | Token::Bin(name) => String::from_utf8_lossy(name).into_owned(),
        Token::Int(n) => format!("measurement_{n}"),
        Token::BigUint(n) => format!("measurement_{n}"),
        _ => return Err(malformed("'m' must be a string or an integer")),
    };
    if !valid_measurement(&name) {
        return Err(DecodeError::InvalidMeasurement(name));
    }
    Ok(name)
}

/// A columnar item's `columns` map; `None` when it holds no rows.
fn decode_columns(
    reader: &mut Reader<'_>,
    measurement: &str,
    now_us: i64,
) -> Result<Option<MeasurementBatch>, DecodeError> {
    let Token::Map(entries) = reader.next()? else {
        return Err(malformed(format!(
            "measurement '{measurement}': 'columns' must be a map"
        )));
    };
    let mut row_count = None;
    let mut time = None;
    let mut columns: Vec<(String, ColumnData)> = Vec::new();
    for _ in 0..entries {
        let name = read_name(reader, measurement)?;
        if name.starts_with('_') {
            reader.skip_value()?;
            continue;
        }
        let Token::Array(len) = reader.next()? else {
            return Err(malformed(format!(
                "measurement '{measurement}': column '{name}' must be an array"
            )));
        };
        let expected = *row_count.get_or_insert(len);
        if len != expected {
            return Err(DecodeError::UnequalColumns {
                measurement: measurement.to_owned(),
                column: name.into_owned(),
                expected,
                found: len,
            });
        }
        if name == "time" {
            time = Some(decode_time_column(reader, len, measurement)?);
            continue;
        }
        let data = decode_value_column(reader, len, measurement, &name)?;
        // A repeated key replaces the earlier column, as in any map.
        match columns.iter_mut().find(|(existing, _)| *existing == name) {
            Some(column) => column.1 = data,
            None => columns.push((name.into_owned(), data)),
        }
    }

    let rows = row_count.unwrap_or(0);
    if rows == 0 {
        return Ok(None);
    }
    let time = time.unwrap_or_else(|| vec![now_us; rows]);
    let columns = columns
        .into_iter()
        .map(|(name, data)| (name, data.finish()))
        .collect();
    Ok(Some(assemble(
        measurement.to_owned(),
        time,
        columns,
        Vec::new(),
    )))
}

/// The `time` column: the first value's magnitude picks the unit for all of them.
fn decode_time_column(
    reader: &mut Reader<'_>,
    len: usize,
    measurement: &str,
) -> Result<Vec<i64>, DecodeError> {
    let mut times = Vec::with_capacity(len);
    let mut unit = None;
    for _ in 0..len {
        let timestamp = read_epoch(reader, measurement)?;
        let unit = *unit.get_or_insert_with(|| EpochUnit::detect(timestamp));
        times.push(epoch_to_micros(unit, timestamp, measurement)?);
    }
    Ok(times)
}

/// A value column, typed by its first non-null value; all-null columns become strings.
fn decode_value_column(
    reader: &mut Reader<'_>,
    len: usize,
    measurement: &str,
    name: &str,
) -> Result<ColumnData, DecodeError> {
    let mut leading_nulls = 0;
    let mut data: Option<ColumnData> = None;
    for _ in 0..len {
        let text;
        let value = match reader.next()? {
            Token::Nil => {
                match &mut data {
                    Some(data) => data.push_null(),
                    None => leading_nulls += 1,
                }
                continue;
            }
            Token::Float64(v) => Value::Float(v),
            Token::Float32(v) => Value::Float(f64::from(v)),
            Token::Int(v) => Value::Int(v),
            Token::Str(bytes) | Token::Bin(bytes) => {
                text = String::from_utf8_lossy(bytes);
                Value::Str(&text)
            }
            Token::Bool(v) => Value::Bool(v),
            Token::BigUint(v) => {
                return Err(malformed(format!(
                    "measurement '{measurement}': column '{name}': integer {v} does not fit in int64"
                )));
            }
            Token::Array(_) | Token::Map(_) | Token::Ext => {
                return Err(malformed(format!(
                    "measurement '{measurement}': column '{name}' holds a nested or extension value"
                )));
            }
        };
        let column = data.get_or_insert_with(|| {
            let mut column = ColumnData::with_capacity(value.column_type(), len);
            column.push_nulls(leading_nulls);
            column
        });
        column
            .push(value)
            .map_err(|e| e.into_decode_error(measurement, name))?;
    }
    Ok(data.unwrap_or_else(|| {
        let mut column = ColumnData::with_capacity(ColumnType::Utf8, len);
        column.push_nulls(len);
        column
    }))
}

/// A field value of a legacy row.
#[derive(Debug, Clone)]
enum Scalar<'a> {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Cow<'a, str>),
}

impl Scalar<'_> {
    fn as_value(&self) -> Value<'_> {
        match self {
            Scalar::Int(v) => Value::Int(*v),
            Scalar::Float(v) => Value::Float(*v),
            Scalar::Bool(v) => Value::Bool(*v),
            Scalar::Str(v) => Value::Str(v),
        }
    }
}

/// A row field value; `None` for nil (the field is absent).
fn read_scalar<'a>(
    reader: &mut Reader<'a>,
    measurement: &str,
    name: &str,
) -> Result<Option<Scalar<'a>>, DecodeError> {
    Ok(Some(match reader.next()? {
        Token::Nil => return Ok(None),
        Token::Int(v) => Scalar::Int(v),
        Token::Float32(v) => Scalar::Float(f64::from(v)),
        Token::Float64(v) => Scalar::Float(v),
        Token::Bool(v) => Scalar::Bool(v),
        Token::Str(bytes) | Token::Bin(bytes) => Scalar::Str(String::from_utf8_lossy(bytes)),
        Token::BigUint(v) => {
            return Err(malformed(format!(
                "measurement '{measurement}': field '{name}': integer {v} does not fit in int64"
            )));
        }
        Token::Array(_) | Token::Map(_) | Token::Ext => {
            return Err(malformed(format!(
                "measurement '{measurement}': field '{name}' holds a nested or extension value"
            )));
        }
    }))
}

/// A tag value as text; `None` for nil (the tag is absent).
fn read_tag_value<'a>(
    reader: &mut Reader<'a>,
    measurement: &str,
    name: &str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    Ok(Some(match reader.next()? {
        Token::Nil => return Ok(None),
        Token::Str(bytes) | Token::Bin(bytes) => String::from_utf8_lossy(bytes),
        Token::Int(v) => v.to_string().into(),
        Token::BigUint(v) => v.to_string().into(),
        Token::Float32(v) => v.to_string().into(),
        Token::Float64(v) => v.to_string().into(),
        Token::Bool(v) => v.to_string().into(),
        Token::Array(_) | Token::Map(_) | Token::Ext => {
            return Err(malformed(format!(
                "measurement '{measurement}': tag '{name}' holds a nested or extension value"
            )));
        }
    }))
}

/// Where one item's parts sit in the body, gathered in a single pass over its map so keys
/// may come in any order.
#[derive(Debug, Default)]
struct ItemParts<'a> {
    measurement: Option<String>,
    columns: Option<Columns<'a>>,
    time: Option<Reader<'a>>,
    host: Option<Reader<'a>>,
    fields: Option<Reader<'a>>,
    field_list: Option<Reader<'a>>,
    tags: Option<Reader<'a>>,
    batch: Option<Reader<'a>>,
    /// The first error met while decoding a value. It is held rather than returned so a
    /// top-level map can still turn out to be a `batch` wrapper, whose other keys don't count.
    error: Option<DecodeError>,
}

#[derive(Debug)]
enum Columns<'a> {
    /// Decoded during the pass because `m` came first (the usual order, and the fast one).
    Decoded(Option<MeasurementBatch>),
    /// Seen before `m`; decoded once the name is known.
    Deferred(Reader<'a>),
}

impl<'a> ItemParts<'a> {
    /// Keeps `error` and moves `reader` past the value that started at `value_start`.
    fn hold_error(
        &mut self,
        error: DecodeError,
        value_start: Reader<'a>,
        reader: &mut Reader<'a>,
    ) -> Result<(), DecodeError> {
        self.error.get_or_insert(error);
        *reader = value_start;
        reader.skip_value()
    }
}

/// Where a batch in the output comes from, in payload order.
#[derive(Debug)]
enum Output {
    Columnar(MeasurementBatch),
    /// The row table with this index in the row batcher.
    Rows(usize),
}

struct Decoder<'a> {
    now_us: i64,
    rows: RowBatcher,
    outputs: Vec<Output>,
    /// Reused across legacy rows.
    row_tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    row_fields: Vec<(Cow<'a, str>, Scalar<'a>)>,
}

impl<'a> Decoder<'a> {
    fn new(now_us: i64) -> Self {
        Decoder {
            now_us,
            rows: RowBatcher::new(),
            outputs: Vec::new(),
            row_tags: Vec::new(),
            row_fields: Vec::new(),
        }
    }

    /// A top-level map is either one item or a `{"batch": [...]}` wrapper.
    fn top_level_map(
        &mut self,
        reader: &mut Reader<'a>,
        entries: usize,
    ) -> Result<(), DecodeError> {
        let parts = self.scan_item(reader, entries)?;
        let Some(mut batch) = parts.batch else {
            return self.finish_item(parts);
        };
        match batch.next()? {
            Token::Array(items) => self.items(&mut batch, items),
            _ => Err(malformed("'batch' must be an array of maps")),
        }
    }

    /// Array items that are not maps are skipped.
    fn items(&mut self, reader: &mut Reader<'a>, count: usize) -> Result<(), DecodeError> {
        for _ in 0..count {
            match reader.next()? {
                Token::Map(entries) => {
                    let parts = self.scan_item(reader, entries)?;
                    self.finish_item(parts)?;
                }
                other => reader.skip_contents(other)?,
            }
        }
        Ok(())
    }

    fn scan_item(
        &self,
        reader: &mut Reader<'a>,
        entries: usize,
    ) -> Result<ItemParts<'a>, DecodeError> {
        let mut parts = ItemParts::default();
        for _ in 0..entries {
            let key = match reader.next()? {
                Token::Str(key) | Token::Bin(key) => key,
                other => {
                    reader.skip_contents(other)?;
                    reader.skip_value()?;
                    continue;
                }
            };
            let value_start = reader.clone();
            let slot = match key {
                b"m" => {
                    match read_measurement(reader) {
                        Ok(measurement) => parts.measurement = Some(measurement),
                        Err(error) => parts.hold_error(error, value_start, reader)?,
                    }
                    continue;
                }
                b"columns" => {
                    match (&parts.measurement, &parts.error) {
                        (Some(measurement), None) => {
                            match decode_columns(reader, measurement, self.now_us) {
                                Ok(batch) => parts.columns = Some(Columns::Decoded(batch)),
                                Err(error) => parts.hold_error(error, value_start, reader)?,
                            }
                        }
                        _ => {
                            parts.columns = Some(Columns::Deferred(value_start));
                            reader.skip_value()?;
                        }
                    }
                    continue;
                }
                b"t" => &mut parts.time,
                b"h" => &mut parts.host,
                b"fields" => &mut parts.fields,
                b"f" => &mut parts.field_list,
                b"tags" => &mut parts.tags,
                b"batch" => &mut parts.batch,
                _ => {
                    reader.skip_value()?;
                    continue;
                }
            };
            *slot = Some(value_start);
            reader.skip_value()?;
        }
        Ok(parts)
    }

    fn finish_item(&mut self, mut parts: ItemParts<'a>) -> Result<(), DecodeError> {
        if let Some(error) = parts.error.take() {
            return Err(error);
        }
        let Some(measurement) = parts.measurement.take() else {
            return Err(malformed("item has no 'm' (measurement)"));
        };
        let batch = match parts.columns.take() {
            None => return self.row(&measurement, &parts),
            Some(Columns::Deferred(mut at)) => decode_columns(&mut at, &measurement, self.now_us)?,
            Some(Columns::Decoded(batch)) => batch,
        };
        if let Some(batch) = batch {
            self.outputs.push(Output::Columnar(batch));
        }
        Ok(())
    }

    /// A legacy row item.
    fn row(&mut self, measurement: &str, parts: &ItemParts<'a>) -> Result<(), DecodeError> {
        if parts.fields.is_none() && parts.field_list.is_none() {
            return Err(malformed(format!(
                "measurement '{measurement}': item has neither 'columns' nor 'fields'"
            )));
        }
        let time = match parts.time.clone() {
            Some(mut at) => {
                let timestamp = read_epoch(&mut at, measurement)?;
                epoch_to_micros(EpochUnit::detect(timestamp), timestamp, measurement)?
            }
            None => self.now_us,
        };
        let host: Cow<'_, str> = match parts.host.clone() {
            None => "unknown".into(),
            Some(mut at) => match at.next()? {
                Token::Str(bytes) | Token::Bin(bytes) => String::from_utf8_lossy(bytes),
                Token::Int(n) => format!("host_{n}").into(),
                Token::BigUint(n) => format!("host_{n}").into(),
                Token::Nil => "unknown".into(),
                _ => return Err(malformed("'h' must be a string or an integer")),
            },
        };

        self.row_tags.clear();
        if let Some(mut at) = parts.tags.clone() {
            match at.next()? {
                Token::Nil => {}
                Token::Map(entries) => {
                    for _ in 0..entries {
                        let key = read_name(&mut at, measurement)?;
                        if let Some(value) = read_tag_value(&mut at, measurement, &key)? {
                            self.row_tags.push((key, value));
                        }
                    }
                }
                _ => return Err(malformed("'tags' must be a map")),
            }
        }

        self.row_fields.clear();
        if let Some(mut at) = parts.fields.clone() {
            match at.next()? {
                Token::Nil => {}
                Token::Map(entries) => {
                    for _ in 0..entries {
                        let key = read_name(&mut at, measurement)?;
                        if let Some(value) = read_scalar(&mut at, measurement, &key)? {
                            self.row_fields.push((key, value));
                        }
                    }
                }
                _ => return Err(malformed("'fields' must be a map")),
            }
        } else if let Some(mut at) = parts.field_list.clone() {
            match at.next()? {
                Token::Nil => {}
                Token::Array(len) => {
                    for index in 0..len {
                        let key = format!("field_{index}");
                        if let Some(value) = read_scalar(&mut at, measurement, &key)? {
                            self.row_fields.push((key.into(), value));
                        }
                    }
                }
                _ => return Err(malformed("'f' must be an array")),
            }
        }

        let reserved = self
            .row_tags
            .iter()
            .map(|(key, _)| key)
            .chain(self.row_fields.iter().map(|(key, _)| key))
            .any(|key| key == "time");
        if reserved {
            return Err(malformed(format!(
                "measurement '{measurement}': 'time' cannot be a tag or field name"
            )));
        }

        let tables_before = self.rows.table_count();
        let mut row = self.rows.start_row(measurement, time);
        // Tags are written after `h`, so an explicit `host` tag wins.
        row.tag("host", &host)?;
        for (key, value) in &self.row_tags {
            row.tag(key, value)?;
        }
        for (key, value) in &self.row_fields {
            row.field(key, value.as_value())?;
        }
        if self.rows.table_count() > tables_before {
            self.outputs.push(Output::Rows(tables_before));
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<MeasurementBatch>, DecodeError> {
        if self.outputs.is_empty() {
            return Err(no_records());
        }
        let mut tables: Vec<Option<MeasurementBatch>> =
            self.rows.finish().into_iter().map(Some).collect();
        Ok(self
            .outputs
            .into_iter()
            .filter_map(|output| match output {
                Output::Columnar(batch) => Some(batch),
                Output::Rows(table) => tables.get_mut(table).and_then(Option::take),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::datatypes::DataType;
    use proptest::prelude::*;
    use rmpv::Value as Mp;

    use super::*;
    use crate::ingest::batch::test_support::{Cell, column, column_names, data_type, times};

    const NOW: i64 = 1_700_000_000_123_456;

    fn encode(value: &Mp) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    fn map(entries: Vec<(&str, Mp)>) -> Mp {
        Mp::Map(entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect())
    }

    fn ints(values: &[i64]) -> Mp {
        Mp::Array(values.iter().map(|&v| Mp::from(v)).collect())
    }

    fn columnar(measurement: &str, columns: Vec<(&str, Mp)>) -> Mp {
        map(vec![
            ("m", Mp::from(measurement)),
            ("columns", map(columns)),
        ])
    }

    fn decode_value(value: &Mp) -> Result<Vec<MeasurementBatch>, DecodeError> {
        decode(&encode(value), NOW)
    }

    fn single(value: &Mp) -> MeasurementBatch {
        let mut batches = decode_value(value).unwrap();
        assert_eq!(batches.len(), 1, "{batches:?}");
        batches.remove(0)
    }

    fn s(text: &str) -> Option<Cell> {
        Some(Cell::Str(text.into()))
    }

    fn f(v: f64) -> Option<Cell> {
        Some(Cell::Float(v))
    }

    fn i(v: i64) -> Option<Cell> {
        Some(Cell::Int(v))
    }

    #[test]
    fn reader_understands_every_marker() {
        let cases: Vec<(Vec<u8>, Token<'static>)> = vec![
            (vec![0x05], Token::Int(5)),
            (vec![0xff], Token::Int(-1)),
            (vec![0xe0], Token::Int(-32)),
            (vec![0xc0], Token::Nil),
            (vec![0xc2], Token::Bool(false)),
            (vec![0xc3], Token::Bool(true)),
            (vec![0xcc, 0xff], Token::Int(255)),
            (vec![0xcd, 0x01, 0x00], Token::Int(256)),
            (
                vec![0xce, 0xff, 0xff, 0xff, 0xff],
                Token::Int(u32::MAX.into()),
            ),
            (
                vec![0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Token::Int(i64::MAX),
            ),
            (
                vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Token::BigUint(u64::MAX),
            ),
            (vec![0xd0, 0x80], Token::Int(-128)),
            (vec![0xd1, 0x80, 0x00], Token::Int(-32768)),
            (
                vec![0xd2, 0x80, 0x00, 0x00, 0x00],
                Token::Int(i32::MIN.into()),
            ),
            (vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], Token::Int(i64::MIN)),
            (vec![0xca, 0x3f, 0xc0, 0x00, 0x00], Token::Float32(1.5)),
            (
                vec![0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0],
                Token::Float64(1.5),
            ),
            (vec![0xa2, b'h', b'i'], Token::Str(b"hi")),
            (vec![0xd9, 0x02, b'h', b'i'], Token::Str(b"hi")),
            (vec![0xda, 0x00, 0x02, b'h', b'i'], Token::Str(b"hi")),
            (vec![0xdb, 0, 0, 0, 0x02, b'h', b'i'], Token::Str(b"hi")),
            (vec![0xc4, 0x01, 0xff], Token::Bin(b"\xff")),
            (vec![0xc5, 0x00, 0x01, 0xff], Token::Bin(b"\xff")),
            (vec![0xc6, 0, 0, 0, 0x01, 0xff], Token::Bin(b"\xff")),
            (vec![0x92, 0x01, 0x02], Token::Array(2)),
            (vec![0xdc, 0x00, 0x01, 0x01], Token::Array(1)),
            (vec![0xdd, 0, 0, 0, 0x01, 0x01], Token::Array(1)),
            (vec![0x81, 0x01, 0x02], Token::Map(1)),
            (vec![0xde, 0x00, 0x01, 0x01, 0x02], Token::Map(1)),
            (vec![0xdf, 0, 0, 0, 0x01, 0x01, 0x02], Token::Map(1)),
            (vec![0xd4, 0x01, 0xaa], Token::Ext),
            (vec![0xd5, 0x01, 0xaa, 0xbb], Token::Ext),
            (vec![0xd6, 0x01, 1, 2, 3, 4], Token::Ext),
            (vec![0xd7, 0x01, 1, 2, 3, 4, 5, 6, 7, 8], Token::Ext),
            ([vec![0xd8, 0x01], vec![0; 16]].concat(), Token::Ext),
            (vec![0xc7, 0x02, 0x01, 0xaa, 0xbb], Token::Ext),
            (vec![0xc8, 0x00, 0x01, 0x01, 0xaa], Token::Ext),
            (vec![0xc9, 0, 0, 0, 0x01, 0x01, 0xaa], Token::Ext),
        ];
        for (bytes, expected) in cases {
            let mut reader = Reader::new(&bytes);
            assert_eq!(reader.next().unwrap(), expected, "{bytes:02x?}");
            let consumed_all = reader.remaining() == 0;
            let is_container = matches!(expected, Token::Array(_) | Token::Map(_));
            assert!(consumed_all || is_container, "{bytes:02x?}");
            let mut skipper = Reader::new(&bytes);
            skipper.skip_value().unwrap();
            assert_eq!(skipper.remaining(), 0, "{bytes:02x?}");
        }
    }

    #[test]
    fn reader_rejects_truncation_lies_and_the_reserved_marker() {
        for bytes in [
            &[0xc1][..],
            &[0xcb, 0x00],
            &[0xa3, b'a'],
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0xc9, 0xff, 0xff, 0xff, 0xff],
            &[0x92, 0x01],
        ] {
            assert!(Reader::new(bytes).skip_value().is_err(), "{bytes:02x?}");
            assert!(matches!(decode(bytes, NOW), Err(DecodeError::Msgpack(_))));
        }
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let depth = 200_000;
        let mut body = vec![0x82, 0xa1, b'm', 0xa1, b'x', 0xa5];
        body.extend_from_slice(b"extra");
        body.extend(std::iter::repeat_n(0x91, depth));
        body.push(0xc0);
        // `m` is valid but there is neither `columns` nor `fields`: the item is rejected
        // only after the deep value was skipped.
        let err = decode(&body, NOW).unwrap_err();
        assert!(
            matches!(err, DecodeError::Msgpack(ref m) if m.contains("neither")),
            "{err:?}"
        );
    }

    #[test]
    fn columnar_types_nulls_and_conversions() {
        let value = columnar(
            "sensors",
            vec![
                ("time", ints(&[1_700_000_000, 1_700_000_001, 1_700_000_002])),
                (
                    "count",
                    Mp::Array(vec![Mp::from(1), Mp::from(u64::MAX >> 1), Mp::Nil]),
                ),
                (
                    "temp",
                    Mp::Array(vec![Mp::F32(1.5), Mp::from(2), Mp::F64(-0.25)]),
                ),
                (
                    "host",
                    Mp::Array(vec![Mp::Nil, Mp::from("a"), Mp::from("b")]),
                ),
                (
                    "raw",
                    Mp::Array(vec![
                        Mp::Binary(b"ok".to_vec()),
                        Mp::Binary(b"\xffx".to_vec()),
                        Mp::Nil,
                    ]),
                ),
                (
                    "ok",
                    Mp::Array(vec![Mp::from(true), Mp::Nil, Mp::from(false)]),
                ),
                ("nothing", Mp::Array(vec![Mp::Nil, Mp::Nil, Mp::Nil])),
                ("_internal", Mp::Array(vec![Mp::from(1)])),
            ],
        );
        let batch = single(&value);
        assert_eq!(batch.measurement, "sensors");
        assert!(batch.tags.is_empty());
        assert_eq!(
            times(&batch),
            [
                1_700_000_000_000_000,
                1_700_000_001_000_000,
                1_700_000_002_000_000
            ]
        );
        assert_eq!(
            column_names(&batch),
            ["count", "host", "nothing", "ok", "raw", "temp"]
        );
        assert_eq!(column(&batch, "count"), [i(1), i(i64::MAX), None]);
        assert_eq!(column(&batch, "temp"), [f(1.5), f(2.0), f(-0.25)]);
        assert_eq!(column(&batch, "host"), [None, s("a"), s("b")]);
        assert_eq!(column(&batch, "raw"), [s("ok"), s("\u{fffd}x"), None]);
        assert_eq!(
            column(&batch, "ok"),
            [Some(Cell::Bool(true)), None, Some(Cell::Bool(false))]
        );
        assert_eq!(column(&batch, "nothing"), [None, None, None]);
        assert_eq!(data_type(&batch, "nothing"), DataType::Utf8);
        assert_eq!(data_type(&batch, "count"), DataType::Int64);
        assert_eq!(data_type(&batch, "temp"), DataType::Float64);
        assert_eq!(data_type(&batch, "ok"), DataType::Boolean);
    }

    #[test]
    fn time_unit_is_detected_from_the_first_value() {
        let out_of_range = columnar(
            "m",
            vec![("time", ints(&[9_999_999_999])), ("v", ints(&[1]))],
        );
        assert!(matches!(
            decode_value(&out_of_range),
            Err(DecodeError::InvalidTime { .. })
        ));
        let cases = [
            (
                vec![9_000_000_000, 5],
                vec![9_000_000_000_000_000, 5_000_000],
            ),
            (vec![10_000_000_000, 7], vec![10_000_000_000_000, 7_000]),
            (
                vec![1_700_000_000_000, 1],
                vec![1_700_000_000_000_000, 1_000],
            ),
            (
                vec![1_700_000_000_000_000, 3],
                vec![1_700_000_000_000_000, 3],
            ),
            (
                vec![1_700_000_000_000_000_999, 1_999],
                vec![1_700_000_000_000_000, 1],
            ),
            (
                vec![-10_000_000_000_000_000, -1],
                vec![-10_000_000_000_000, -1],
            ),
            (vec![0, -2], vec![0, -2_000_000]),
        ];
        for (raw, expected) in cases {
            let value = columnar("m", vec![("time", ints(&raw)), ("v", ints(&[1, 2]))]);
            assert_eq!(times(&single(&value)), expected, "{raw:?}");
        }
    }

    #[test]
    fn invalid_time_columns_are_rejected() {
        let cases = [
            Mp::Array(vec![Mp::Nil, Mp::from(1)]),
            Mp::Array(vec![Mp::from("2024-01-01"), Mp::from(1)]),
            Mp::Array(vec![Mp::F64(1.5), Mp::from(1)]),
            Mp::Array(vec![Mp::from(1), Mp::Nil]),
            Mp::Array(vec![Mp::from(u64::MAX), Mp::from(1)]),
            // Seconds, detected from the first value, overflow for the second.
            Mp::Array(vec![Mp::from(1), Mp::from(i64::MAX)]),
        ];
        for time in cases {
            let value = columnar("m", vec![("time", time.clone()), ("v", ints(&[1, 2]))]);
            let err = decode_value(&value).unwrap_err();
            assert!(
                matches!(err, DecodeError::InvalidTime { ref measurement, .. } if measurement == "m"),
                "{time:?}: {err:?}"
            );
        }
    }

    #[test]
    fn missing_time_uses_now() {
        let batch = single(&columnar("m", vec![("v", ints(&[1, 2, 3]))]));
        assert_eq!(times(&batch), [NOW; 3]);
    }

    #[test]
    fn unequal_columns_are_rejected() {
        let value = columnar(
            "m",
            vec![
                ("time", ints(&[1, 2])),
                ("a", ints(&[1, 2])),
                ("b", ints(&[1])),
            ],
        );
        assert_eq!(
            decode_value(&value).unwrap_err(),
            DecodeError::UnequalColumns {
                measurement: "m".into(),
                column: "b".into(),
                expected: 2,
                found: 1,
            }
        );
    }

    #[test]
    fn columnar_type_conflicts() {
        let cases = [
            (vec![Mp::from(1), Mp::F64(1.5)], "int64", "float64"),
            (vec![Mp::Nil, Mp::from("x"), Mp::from(1)], "string", "int64"),
            (vec![Mp::from(true), Mp::from(1)], "boolean", "int64"),
            (vec![Mp::F64(1.0), Mp::from("x")], "float64", "string"),
        ];
        for (values, first, second) in cases {
            let value = columnar("m", vec![("v", Mp::Array(values))]);
            assert_eq!(
                decode_value(&value).unwrap_err(),
                DecodeError::TypeConflict {
                    measurement: "m".into(),
                    column: "v".into(),
                    first,
                    second,
                }
            );
        }
    }

    #[test]
    fn unsupported_column_values_are_rejected() {
        for values in [
            vec![Mp::from(u64::MAX)],
            vec![Mp::Array(vec![])],
            vec![Mp::Map(vec![])],
            vec![Mp::Ext(1, vec![0])],
        ] {
            let value = columnar("m", vec![("v", Mp::Array(values))]);
            assert!(matches!(decode_value(&value), Err(DecodeError::Msgpack(_))));
        }
        let not_an_array = columnar("m", vec![("v", Mp::from(1))]);
        assert!(matches!(
            decode_value(&not_an_array),
            Err(DecodeError::Msgpack(_))
        ));
        let not_a_map = map(vec![("m", Mp::from("m")), ("columns", ints(&[1]))]);
        assert!(matches!(
            decode_value(&not_a_map),
            Err(DecodeError::Msgpack(_))
        ));
        let integer_name = map(vec![
            ("m", Mp::from("m")),
            ("columns", Mp::Map(vec![(Mp::from(1), ints(&[1]))])),
        ]);
        assert!(matches!(
            decode_value(&integer_name),
            Err(DecodeError::Msgpack(_))
        ));
    }

    #[test]
    fn measurement_names() {
        let batch = single(&map(vec![
            ("m", Mp::from(42)),
            ("columns", map(vec![("v", ints(&[1]))])),
        ]));
        assert_eq!(batch.measurement, "measurement_42");
        for bad in ["", "1abc", "has space", "_x", "dot.ted"] {
            assert_eq!(
                decode_value(&columnar(bad, vec![("v", ints(&[1]))])).unwrap_err(),
                DecodeError::InvalidMeasurement(bad.into())
            );
        }
        let missing = map(vec![("columns", map(vec![("v", ints(&[1]))]))]);
        assert!(matches!(
            decode_value(&missing),
            Err(DecodeError::Msgpack(_))
        ));
        let wrong_type = map(vec![("m", Mp::F64(1.0)), ("columns", map(vec![]))]);
        assert!(matches!(
            decode_value(&wrong_type),
            Err(DecodeError::Msgpack(_))
        ));
    }

    #[test]
    fn keys_may_come_in_any_order() {
        let value = map(vec![
            ("extra", Mp::Ext(5, vec![1, 2, 3])),
            ("columns", map(vec![("v", ints(&[1, 2]))])),
            ("m", Mp::from("late")),
        ]);
        let batch = single(&value);
        assert_eq!(batch.measurement, "late");
        assert_eq!(column(&batch, "v"), [i(1), i(2)]);
    }

    #[test]
    fn zero_row_items_are_skipped_and_nothing_decodable_is_an_error() {
        let empty = columnar("m", vec![("time", ints(&[])), ("v", ints(&[]))]);
        let no_columns = columnar("m", vec![]);
        let full = columnar("full", vec![("v", ints(&[1]))]);
        let batches =
            decode_value(&Mp::Array(vec![empty.clone(), full, no_columns.clone()])).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].measurement, "full");

        let no_records = DecodeError::Msgpack("no records".into());
        for value in [
            empty,
            no_columns,
            Mp::Array(vec![]),
            Mp::Array(vec![Mp::from(1), Mp::from("x"), ints(&[1, 2])]),
            map(vec![("batch", Mp::Array(vec![]))]),
        ] {
            assert_eq!(decode_value(&value).unwrap_err(), no_records, "{value:?}");
        }
        assert_eq!(decode(b"", NOW).unwrap_err(), no_records);
    }

    #[test]
    fn payload_shapes() {
        let a = columnar("a", vec![("v", ints(&[1]))]);
        let b = columnar("b", vec![("v", ints(&[2]))]);
        let names = |batches: Vec<MeasurementBatch>| -> Vec<String> {
            batches.into_iter().map(|b| b.measurement).collect()
        };
        assert_eq!(names(decode_value(&a).unwrap()), ["a"]);
        assert_eq!(
            names(decode_value(&Mp::Array(vec![a.clone(), Mp::Nil, b.clone()])).unwrap()),
            ["a", "b"]
        );
        let wrapped = map(vec![
            ("batch", Mp::Array(vec![b.clone(), a.clone()])),
            ("note", Mp::from("ignored")),
        ]);
        assert_eq!(names(decode_value(&wrapped).unwrap()), ["b", "a"]);
        // Keys beside `batch` are ignored, even ones that would be invalid in an item.
        let wrapped = map(vec![
            ("m", Mp::from("not valid")),
            ("columns", Mp::from(1)),
            ("batch", Mp::Array(vec![a.clone()])),
        ]);
        assert_eq!(names(decode_value(&wrapped).unwrap()), ["a"]);
        let bad_batch = map(vec![("batch", Mp::from(1))]);
        assert!(matches!(
            decode_value(&bad_batch),
            Err(DecodeError::Msgpack(_))
        ));
        assert!(matches!(
            decode_value(&Mp::from("x")),
            Err(DecodeError::Msgpack(_))
        ));
        let mut trailing = encode(&a);
        trailing.push(0xc0);
        assert!(matches!(
            decode(&trailing, NOW),
            Err(DecodeError::Msgpack(_))
        ));
    }

    #[test]
    fn one_invalid_item_fails_the_request() {
        let good = columnar("a", vec![("v", ints(&[1]))]);
        let bad = columnar("b", vec![("v", ints(&[1])), ("w", ints(&[1, 2]))]);
        assert!(matches!(
            decode_value(&Mp::Array(vec![good, bad])),
            Err(DecodeError::UnequalColumns { .. })
        ));
    }

    #[test]
    fn row_form() {
        let value = Mp::Array(vec![
            map(vec![
                ("m", Mp::from("cpu")),
                ("t", Mp::from(1_700_000_000_000i64)),
                ("h", Mp::from("server01")),
                (
                    "tags",
                    map(vec![
                        ("region", Mp::from("eu")),
                        ("rack", Mp::from(7)),
                        ("ratio", Mp::F64(2.0)),
                        ("half", Mp::F64(0.5)),
                        ("on", Mp::from(true)),
                        ("none", Mp::Nil),
                    ]),
                ),
                (
                    "fields",
                    map(vec![("usage", Mp::F64(12.5)), ("n", Mp::from(3))]),
                ),
            ]),
            map(vec![
                ("m", Mp::from("cpu")),
                ("h", Mp::from(12)),
                (
                    "fields",
                    map(vec![("usage", Mp::from(4)), ("gone", Mp::Nil)]),
                ),
            ]),
            map(vec![
                ("m", Mp::from("cpu")),
                ("t", Mp::from(5)),
                ("f", Mp::Array(vec![Mp::from(1), Mp::Nil, Mp::from("x")])),
            ]),
        ]);
        let batch = single(&value);
        assert_eq!(batch.measurement, "cpu");
        assert_eq!(
            batch.tags,
            ["half", "host", "on", "rack", "ratio", "region"]
        );
        assert_eq!(times(&batch), [1_700_000_000_000_000, NOW, 5_000_000]);
        assert_eq!(
            column(&batch, "host"),
            [s("server01"), s("host_12"), s("unknown")]
        );
        assert_eq!(column(&batch, "region"), [s("eu"), None, None]);
        assert_eq!(column(&batch, "rack"), [s("7"), None, None]);
        assert_eq!(column(&batch, "ratio"), [s("2"), None, None]);
        assert_eq!(column(&batch, "half"), [s("0.5"), None, None]);
        assert_eq!(column(&batch, "on"), [s("true"), None, None]);
        assert_eq!(column(&batch, "usage"), [f(12.5), f(4.0), None]);
        assert_eq!(column(&batch, "n"), [i(3), None, None]);
        assert_eq!(column(&batch, "field_0"), [None, None, i(1)]);
        assert_eq!(column(&batch, "field_2"), [None, None, s("x")]);
        assert_eq!(
            column_names(&batch),
            [
                "field_0", "field_2", "half", "host", "n", "on", "rack", "ratio", "region", "usage"
            ]
        );
    }

    #[test]
    fn row_field_named_like_a_tag_is_renamed_and_tags_override_h() {
        let batch = single(&map(vec![
            ("m", Mp::from("m")),
            ("h", Mp::from("from-h")),
            ("tags", map(vec![("host", Mp::from("from-tags"))])),
            (
                "fields",
                map(vec![("host", Mp::from(1)), ("_hidden", Mp::from(2))]),
            ),
        ]));
        assert_eq!(column_names(&batch), ["host", "host_value"]);
        assert_eq!(column(&batch, "host"), [s("from-tags")]);
        assert_eq!(column(&batch, "host_value"), [i(1)]);
    }

    #[test]
    fn invalid_rows_are_rejected() {
        let row = |entries: Vec<(&str, Mp)>| {
            let mut all = vec![("m", Mp::from("m"))];
            all.extend(entries);
            map(all)
        };
        let fields = || ("fields", map(vec![("v", Mp::from(1))]));
        let cases = [
            row(vec![("h", Mp::from("x"))]),
            row(vec![("fields", map(vec![("time", Mp::from(1))]))]),
            row(vec![fields(), ("tags", map(vec![("time", Mp::from("x"))]))]),
            row(vec![("fields", Mp::from(1))]),
            row(vec![("f", map(vec![]))]),
            row(vec![fields(), ("tags", ints(&[1]))]),
            row(vec![fields(), ("h", Mp::F64(1.0))]),
            row(vec![("fields", map(vec![("v", Mp::Array(vec![]))]))]),
            row(vec![("fields", map(vec![("v", Mp::from(u64::MAX))]))]),
            row(vec![fields(), ("tags", map(vec![("k", Mp::Map(vec![]))]))]),
        ];
        for value in cases {
            assert!(
                matches!(decode_value(&value), Err(DecodeError::Msgpack(_))),
                "{value:?}"
            );
        }
        for t in [Mp::from("now"), Mp::Nil, Mp::F64(1.0), Mp::from(u64::MAX)] {
            let value = row(vec![fields(), ("t", t.clone())]);
            assert!(
                matches!(decode_value(&value), Err(DecodeError::InvalidTime { .. })),
                "{t:?}"
            );
        }
        let conflict = Mp::Array(vec![
            row(vec![("fields", map(vec![("v", Mp::from(1))]))]),
            row(vec![("fields", map(vec![("v", Mp::from("x"))]))]),
        ]);
        assert!(matches!(
            decode_value(&conflict),
            Err(DecodeError::TypeConflict { .. })
        ));
    }

    #[test]
    fn rows_are_grouped_per_measurement_between_columnar_items() {
        let row = |m: &str, v: i64| {
            map(vec![
                ("m", Mp::from(m)),
                ("fields", map(vec![("v", Mp::from(v))])),
            ])
        };
        let value = Mp::Array(vec![
            row("r1", 1),
            columnar("c1", vec![("v", ints(&[1]))]),
            row("r2", 2),
            row("r1", 3),
            columnar("r1", vec![("v", ints(&[9]))]),
        ]);
        let batches = decode_value(&value).unwrap();
        let summary: Vec<(String, usize)> = batches
            .iter()
            .map(|b| (b.measurement.clone(), b.batch.num_rows()))
            .collect();
        assert_eq!(
            summary,
            [
                ("r1".to_owned(), 2),
                ("c1".to_owned(), 1),
                ("r2".to_owned(), 1),
                ("r1".to_owned(), 1),
            ]
        );
        assert_eq!(batches[0].tags, ["host"]);
        assert!(batches[3].tags.is_empty());
    }

    // ---- property tests ----

    /// A timestamp from any of the magnitude bands that select an epoch unit.
    fn epoch() -> impl Strategy<Value = i64> {
        prop_oneof![
            // Each band stays inside the storable range once converted to µs.
            -9_000_000_000i64..9_000_000_000,
            10_000_000_000i64..9_000_000_000_000,
            10_000_000_000_000i64..9_000_000_000_000_000,
            10_000_000_000_000_000i64..=i64::MAX,
            i64::MIN..=-10_000_000_000_000_000i64,
        ]
    }

    /// Expected µs, written out independently of the decoder's own helper.
    fn expected_micros(first: i64, value: i64) -> i64 {
        let magnitude = first.unsigned_abs();
        if magnitude < 10_000_000_000 {
            value * 1_000_000
        } else if magnitude < 10_000_000_000_000 {
            value * 1000
        } else if magnitude < 10_000_000_000_000_000 {
            value
        } else {
            value.div_euclid(1000)
        }
    }

    #[derive(Debug, Clone)]
    enum GenColumn {
        Ints(Vec<Option<i64>>),
        /// Encoded as float64, float32 (when exact) or integers; the first non-null value is
        /// always a float so the column is Float64.
        Floats(Vec<Option<(f64, u8)>>),
        Strings(Vec<Option<Result<String, Vec<u8>>>>),
        Bools(Vec<Option<bool>>),
    }

    impl GenColumn {
        fn encode(&self) -> Mp {
            match self {
                GenColumn::Ints(values) => {
                    Mp::Array(values.iter().map(|v| v.map_or(Mp::Nil, Mp::from)).collect())
                }
                GenColumn::Floats(values) => {
                    let mut seen_float = false;
                    Mp::Array(
                        values
                            .iter()
                            .map(|v| match v {
                                None => Mp::Nil,
                                Some((v, form)) => {
                                    let as_int = *form == 2
                                        && seen_float
                                        && v.fract() == 0.0
                                        && v.abs() < 1e15;
                                    seen_float = true;
                                    if as_int {
                                        Mp::from(*v as i64)
                                    } else if *form == 1 && f64::from(*v as f32) == *v {
                                        Mp::F32(*v as f32)
                                    } else {
                                        Mp::F64(*v)
                                    }
                                }
                            })
                            .collect(),
                    )
                }
                GenColumn::Strings(values) => Mp::Array(
                    values
                        .iter()
                        .map(|v| match v {
                            None => Mp::Nil,
                            Some(Ok(text)) => Mp::from(text.as_str()),
                            Some(Err(bytes)) => Mp::Binary(bytes.clone()),
                        })
                        .collect(),
                ),
                GenColumn::Bools(values) => {
                    Mp::Array(values.iter().map(|v| v.map_or(Mp::Nil, Mp::from)).collect())
                }
            }
        }

        fn expected(&self) -> (DataType, Vec<Option<Cell>>) {
            let cells: Vec<Option<Cell>> = match self {
                GenColumn::Ints(values) => values.iter().map(|v| v.map(Cell::Int)).collect(),
                GenColumn::Floats(values) => values
                    .iter()
                    .map(|v| v.map(|(v, _)| Cell::Float(v)))
                    .collect(),
                GenColumn::Strings(values) => values
                    .iter()
                    .map(|v| {
                        v.as_ref().map(|v| match v {
                            Ok(text) => Cell::Str(text.clone()),
                            Err(bytes) => Cell::Str(String::from_utf8_lossy(bytes).into_owned()),
                        })
                    })
                    .collect(),
                GenColumn::Bools(values) => values.iter().map(|v| v.map(Cell::Bool)).collect(),
            };
            let data_type = match (self, cells.iter().all(Option::is_none)) {
                (_, true) | (GenColumn::Strings(_), false) => DataType::Utf8,
                (GenColumn::Ints(_), false) => DataType::Int64,
                (GenColumn::Floats(_), false) => DataType::Float64,
                (GenColumn::Bools(_), false) => DataType::Boolean,
            };
            (data_type, cells)
        }
    }

    fn gen_column(rows: usize) -> impl Strategy<Value = GenColumn> {
        use prop::collection::vec;
        use prop::option::of;
        let float = prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL;
        let text = prop_oneof![
            any::<String>().prop_map(Ok),
            vec(any::<u8>(), 0..8).prop_map(Err),
        ];
        prop_oneof![
            vec(of(any::<i64>()), rows).prop_map(GenColumn::Ints),
            vec(of((float, 0u8..3)), rows).prop_map(GenColumn::Floats),
            vec(of(text), rows).prop_map(GenColumn::Strings),
            vec(of(any::<bool>()), rows).prop_map(GenColumn::Bools),
        ]
    }

    #[derive(Debug, Clone)]
    struct GenColumnar {
        measurement: String,
        time: Option<Vec<i64>>,
        columns: BTreeMap<String, GenColumn>,
        measurement_last: bool,
    }

    fn gen_columnar() -> impl Strategy<Value = GenColumnar> {
        (0usize..12).prop_flat_map(|rows| {
            (
                "[A-Za-z][A-Za-z0-9_-]{0,10}",
                prop::option::of((
                    epoch(),
                    // Small enough to stay storable in whatever unit the first value picks.
                    prop::collection::vec(-9_000_000_000i64..9_000_000_000, rows),
                )),
                prop::collection::btree_map("c[a-z0-9_]{0,5}", gen_column(rows), 0..5),
                any::<bool>(),
            )
                .prop_map(move |(measurement, time, columns, measurement_last)| {
                    let time = time.map(|(first, mut rest)| {
                        if let Some(slot) = rest.first_mut() {
                            *slot = first;
                        }
                        rest
                    });
                    GenColumnar {
                        measurement,
                        time,
                        columns,
                        measurement_last,
                    }
                })
        })
    }

    impl GenColumnar {
        fn rows(&self) -> usize {
            self.time
                .as_ref()
                .map(Vec::len)
                .or_else(|| self.columns.values().next().map(|c| c.expected().1.len()))
                .unwrap_or(0)
        }

        fn encode(&self) -> Mp {
            let mut columns = vec![(Mp::from("_ignored"), Mp::Array(vec![Mp::Ext(3, vec![1])]))];
            if let Some(time) = &self.time {
                columns.push((Mp::from("time"), ints(time)));
            }
            for (name, column) in &self.columns {
                columns.push((Mp::from(name.as_str()), column.encode()));
            }
            let mut entries = vec![
                (Mp::from("columns"), Mp::Map(columns)),
                (Mp::from("unknown"), Mp::from(1)),
            ];
            let measurement = (Mp::from("m"), Mp::from(self.measurement.as_str()));
            if self.measurement_last {
                entries.push(measurement);
            } else {
                entries.insert(0, measurement);
            }
            Mp::Map(entries)
        }

        fn check(&self, batch: &MeasurementBatch) -> Result<(), TestCaseError> {
            prop_assert_eq!(&batch.measurement, &self.measurement);
            prop_assert!(batch.tags.is_empty());
            let expected_times: Vec<i64> = match &self.time {
                Some(time) => time.iter().map(|&t| expected_micros(time[0], t)).collect(),
                None => vec![NOW; self.rows()],
            };
            prop_assert_eq!(times(batch), expected_times);
            let names: Vec<String> = self.columns.keys().cloned().collect();
            prop_assert_eq!(column_names(batch), names);
            for (name, generated) in &self.columns {
                let (expected_type, cells) = generated.expected();
                prop_assert_eq!(data_type(batch, name), expected_type);
                prop_assert_eq!(column(batch, name), cells);
            }
            Ok(())
        }
    }

    #[derive(Debug, Clone)]
    enum GenTag {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }

    #[derive(Debug, Clone)]
    enum GenFields {
        /// Keys start with their type: `i…` int, `f…` float, `s…` string, `b…` bool.
        Map(BTreeMap<String, Option<Cell>>),
        /// Positions are typed: int, float, string, bool.
        List(Vec<Option<Cell>>),
    }

    #[derive(Debug, Clone)]
    struct GenRow {
        measurement: &'static str,
        t: Option<i64>,
        host: Option<Result<String, i64>>,
        tags: BTreeMap<String, GenTag>,
        fields: GenFields,
    }

    fn typed_cell(kind: usize) -> BoxedStrategy<Cell> {
        match kind {
            0 => any::<i64>().prop_map(Cell::Int).boxed(),
            1 => (prop::num::f64::NORMAL | prop::num::f64::ZERO)
                .prop_map(Cell::Float)
                .boxed(),
            2 => any::<String>().prop_map(Cell::Str).boxed(),
            _ => any::<bool>().prop_map(Cell::Bool).boxed(),
        }
    }

    fn gen_row() -> impl Strategy<Value = GenRow> {
        let field_map = prop::collection::btree_map((0usize..4, "[a-z0-9]{0,4}"), Just(()), 0..4)
            .prop_flat_map(|keys| {
                keys.into_keys()
                    .map(|(kind, suffix)| {
                        let name = format!("{}{suffix}", ["i", "f", "s", "b"][kind]);
                        (Just(name), prop::option::of(typed_cell(kind)))
                    })
                    .collect::<Vec<_>>()
            })
            .prop_map(|fields| GenFields::Map(fields.into_iter().collect()));
        let field_list = (0usize..5)
            .prop_flat_map(|len| {
                (0..len)
                    .map(|index| prop::option::of(typed_cell(index % 4)))
                    .collect::<Vec<_>>()
            })
            .prop_map(GenFields::List);
        (
            prop::sample::select(vec!["cpu", "mem", "disk"]),
            prop::option::of(epoch()),
            prop::option::of(prop_oneof![
                any::<String>().prop_map(Ok),
                any::<i64>().prop_map(Err),
            ]),
            prop::collection::btree_map(
                "k[a-z]{0,4}",
                prop_oneof![
                    any::<String>().prop_map(GenTag::Str),
                    any::<i64>().prop_map(GenTag::Int),
                    any::<f64>().prop_map(GenTag::Float),
                    any::<bool>().prop_map(GenTag::Bool),
                ],
                0..3,
            ),
            prop_oneof![field_map, field_list],
        )
            .prop_map(|(measurement, t, host, tags, fields)| GenRow {
                measurement,
                t,
                host,
                tags,
                fields,
            })
    }

    fn cell_to_mp(cell: &Option<Cell>) -> Mp {
        match cell {
            None => Mp::Nil,
            Some(Cell::Int(v)) => Mp::from(*v),
            Some(Cell::Float(v)) => Mp::F64(*v),
            Some(Cell::Str(v)) => Mp::from(v.as_str()),
            Some(Cell::Bool(v)) => Mp::from(*v),
        }
    }

    impl GenRow {
        fn encode(&self) -> Mp {
            let mut entries = vec![("m", Mp::from(self.measurement))];
            if let Some(t) = self.t {
                entries.push(("t", Mp::from(t)));
            }
            match &self.host {
                Some(Ok(host)) => entries.push(("h", Mp::from(host.as_str()))),
                Some(Err(n)) => entries.push(("h", Mp::from(*n))),
                None => {}
            }
            let tags = self
                .tags
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        GenTag::Str(v) => Mp::from(v.as_str()),
                        GenTag::Int(v) => Mp::from(*v),
                        GenTag::Float(v) => Mp::F64(*v),
                        GenTag::Bool(v) => Mp::from(*v),
                    };
                    (Mp::from(k.as_str()), value)
                })
                .collect();
            entries.push(("tags", Mp::Map(tags)));
            match &self.fields {
                GenFields::Map(fields) => entries.push((
                    "fields",
                    Mp::Map(
                        fields
                            .iter()
                            .map(|(k, v)| (Mp::from(k.as_str()), cell_to_mp(v)))
                            .collect(),
                    ),
                )),
                GenFields::List(fields) => {
                    entries.push(("f", Mp::Array(fields.iter().map(cell_to_mp).collect())))
                }
            }
            // Rows are maps too: put `m` last half of the time to exercise key order.
            if self.tags.len() % 2 == 1 {
                entries.rotate_left(1);
            }
            map(entries)
        }

        /// Column name → value for this row.
        fn expected(&self) -> BTreeMap<String, Cell> {
            let mut cells = BTreeMap::new();
            let host = match &self.host {
                Some(Ok(host)) => host.clone(),
                Some(Err(n)) => format!("host_{n}"),
                None => "unknown".into(),
            };
            cells.insert("host".to_owned(), Cell::Str(host));
            for (k, v) in &self.tags {
                let text = match v {
                    GenTag::Str(v) => v.clone(),
                    GenTag::Int(v) => v.to_string(),
                    GenTag::Float(v) => v.to_string(),
                    GenTag::Bool(v) => v.to_string(),
                };
                cells.insert(k.clone(), Cell::Str(text));
            }
            let fields: Vec<(String, &Option<Cell>)> = match &self.fields {
                GenFields::Map(fields) => fields.iter().map(|(k, v)| (k.clone(), v)).collect(),
                GenFields::List(fields) => fields
                    .iter()
                    .enumerate()
                    .map(|(index, v)| (format!("field_{index}"), v))
                    .collect(),
            };
            for (name, value) in fields {
                if let Some(value) = value {
                    cells.insert(name, value.clone());
                }
            }
            cells
        }
    }

    #[derive(Debug, Clone)]
    enum GenItem {
        Columnar(GenColumnar),
        Row(GenRow),
    }

    fn gen_payload() -> impl Strategy<Value = (Vec<GenItem>, u8)> {
        (
            prop::collection::vec(
                prop_oneof![
                    gen_columnar().prop_map(GenItem::Columnar),
                    gen_row().prop_map(GenItem::Row),
                ],
                1..8,
            ),
            0u8..3,
        )
    }

    /// Arbitrary MessagePack trees whose map keys are mostly ones the decoder looks for.
    fn any_msgpack() -> impl Strategy<Value = Mp> {
        let leaf = prop_oneof![
            Just(Mp::Nil),
            any::<bool>().prop_map(Mp::from),
            any::<i64>().prop_map(Mp::from),
            any::<u64>().prop_map(Mp::from),
            any::<f32>().prop_map(Mp::F32),
            any::<f64>().prop_map(Mp::F64),
            "[a-z_]{0,6}".prop_map(|s| Mp::from(s.as_str())),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(Mp::Binary),
            (any::<i8>(), prop::collection::vec(any::<u8>(), 0..4))
                .prop_map(|(t, d)| Mp::Ext(t, d)),
        ];
        let key = prop_oneof![
            prop::sample::select(vec![
                "m", "columns", "time", "t", "h", "fields", "f", "tags", "batch", "_x", "v",
            ])
            .prop_map(Mp::from),
            any::<i64>().prop_map(Mp::from),
        ];
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Mp::Array),
                prop::collection::vec((key.clone(), inner), 0..6).prop_map(Mp::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&body, NOW);
        }

        #[test]
        fn arbitrary_msgpack_never_panics(value in any_msgpack()) {
            let body = encode(&value);
            if let Ok(batches) = decode(&body, NOW) {
                prop_assert!(!batches.is_empty());
            }
            // Cut short anywhere, a valid encoding must fail cleanly.
            for len in 0..body.len() {
                prop_assert!(decode(&body[..len], NOW).is_err());
            }
        }

        #[test]
        fn round_trip((items, shape) in gen_payload()) {
            let encoded: Vec<Mp> = items
                .iter()
                .map(|item| match item {
                    GenItem::Columnar(item) => item.encode(),
                    GenItem::Row(row) => row.encode(),
                })
                .collect();
            let payload = match shape {
                0 if encoded.len() == 1 => encoded[0].clone(),
                1 => map(vec![("batch", Mp::Array(encoded))]),
                _ => Mp::Array(encoded),
            };
            let result = decode(&encode(&payload), NOW);

            // Expected outputs in payload order; row items grouped per measurement.
            enum Expected<'g> {
                Columnar(&'g GenColumnar),
                Rows(&'static str),
            }
            let mut expected = Vec::new();
            let mut row_measurements = Vec::new();
            for item in &items {
                match item {
                    GenItem::Columnar(item) if item.rows() > 0 => {
                        expected.push(Expected::Columnar(item))
                    }
                    GenItem::Columnar(_) => {}
                    GenItem::Row(row) => {
                        if !row_measurements.contains(&row.measurement) {
                            row_measurements.push(row.measurement);
                            expected.push(Expected::Rows(row.measurement));
                        }
                    }
                }
            }
            if expected.is_empty() {
                prop_assert_eq!(result.unwrap_err(), DecodeError::Msgpack("no records".into()));
                return Ok(());
            }
            let batches = result.unwrap();
            prop_assert_eq!(batches.len(), expected.len());
            for (batch, expected) in batches.iter().zip(&expected) {
                match expected {
                    Expected::Columnar(item) => item.check(batch)?,
                    Expected::Rows(measurement) => {
                        let rows: Vec<&GenRow> = items
                            .iter()
                            .filter_map(|item| match item {
                                GenItem::Row(row) if row.measurement == *measurement => Some(row),
                                _ => None,
                            })
                            .collect();
                        prop_assert_eq!(&batch.measurement, measurement);
                        let expected_times: Vec<i64> = rows
                            .iter()
                            .map(|row| row.t.map_or(NOW, |t| expected_micros(t, t)))
                            .collect();
                        prop_assert_eq!(times(batch), expected_times);
                        let mut columns: BTreeMap<String, Vec<Option<Cell>>> = BTreeMap::new();
                        let mut tags = vec!["host".to_owned()];
                        for (index, row) in rows.iter().enumerate() {
                            for (name, cell) in row.expected() {
                                columns.entry(name).or_insert_with(|| vec![None; rows.len()])
                                    [index] = Some(cell);
                            }
                            tags.extend(row.tags.keys().cloned());
                        }
                        tags.sort();
                        tags.dedup();
                        prop_assert_eq!(&batch.tags, &tags);
                        let names: Vec<String> = columns.keys().cloned().collect();
                        prop_assert_eq!(column_names(batch), names);
                        for (name, cells) in &columns {
                            prop_assert_eq!(&column(batch, name), cells, "column {}", name);
                        }
                    }
                }
            }
        }
    }
}
