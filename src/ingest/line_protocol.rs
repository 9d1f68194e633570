//! InfluxDB line protocol decoder:
//! `measurement[,tag=value…] field=value[,field=value…] [timestamp]`, one point per line.
//!
//! Each line is scanned once into borrowed slices and fully validated before any of it is
//! written, so a line is either stored whole or dropped whole. Invalid lines are dropped
//! silently (InfluxDB and Arc behave the same); only a type conflict between accepted lines
//! fails the request.

use std::borrow::Cow;

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow::error::ArrowError;

use super::DecodeError;
use super::batch::{MeasurementBatch, RowBatcher, Value, checked_time, same_bytes};
use super::names::{MAX_MEASUREMENT_LEN, valid_name_bytes};

/// Unit of the timestamps in a line-protocol body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    /// Parses the `precision` query parameter.
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "ns" | "n" => Some(Precision::Nanoseconds),
            "us" | "u" | "µ" => Some(Precision::Microseconds),
            "ms" => Some(Precision::Milliseconds),
            "s" => Some(Precision::Seconds),
            _ => None,
        }
    }

    /// Stable one-byte code, as stored in the WAL.
    pub fn as_u8(self) -> u8 {
        match self {
            Precision::Nanoseconds => 0,
            Precision::Microseconds => 1,
            Precision::Milliseconds => 2,
            Precision::Seconds => 3,
        }
    }

    /// Inverse of [`Precision::as_u8`].
    pub fn from_u8(code: u8) -> Option<Self> {
        match code {
            0 => Some(Precision::Nanoseconds),
            1 => Some(Precision::Microseconds),
            2 => Some(Precision::Milliseconds),
            3 => Some(Precision::Seconds),
            _ => None,
        }
    }

    /// Epoch µs for a timestamp in this unit; `None` when it is outside the storable range.
    fn to_micros(self, timestamp: i64) -> Option<i64> {
        let micros = match self {
            Precision::Nanoseconds => Some(timestamp.div_euclid(1000)),
            Precision::Microseconds => Some(timestamp),
            Precision::Milliseconds => timestamp.checked_mul(1000),
            Precision::Seconds => timestamp.checked_mul(1_000_000),
        };
        micros.and_then(checked_time)
    }
}

/// Decodes a line-protocol body into one batch per measurement, in order of first
/// appearance. Missing or unusable timestamps become `now_us`.
pub fn parse(
    body: &[u8],
    precision: Precision,
    now_us: i64,
) -> Result<Vec<MeasurementBatch>, DecodeError> {
    // One validation of the whole body: text cut from it at ASCII delimiters is then valid
    // UTF-8 without checking each piece again (which took ~6 % of a line-protocol load).
    let utf8 = if std::str::from_utf8(body).is_ok() {
        Utf8::Valid
    } else {
        Utf8::Unchecked
    };
    let mut rows = RowBatcher::new();
    let mut line = LineParts::default();
    let mut key_buf = Vec::new();
    let mut value_buf = Vec::new();
    // Validating the measurement name once per run of lines that share it.
    let mut last_valid_measurement: Option<&[u8]> = None;
    let mut layouts = Layouts::default();
    let mut layout_values = Vec::new();
    let mut columns = Vec::new();
    let mut accepted = 0usize;
    let to_time = |timestamp: Option<i64>| {
        timestamp
            .and_then(|timestamp| precision.to_micros(timestamp))
            .unwrap_or(now_us)
    };

    let mut rest = body;
    while !rest.is_empty() {
        let text = match find_newline(rest) {
            Some(end) => {
                let text = &rest[..end];
                rest = &rest[end + 1..];
                text
            }
            None => std::mem::take(&mut rest),
        };
        let text = trim(text);
        // Layouts read text without checking it: only a validated body takes them.
        if utf8 == Utf8::Valid
            && let Some((layout, timestamp)) = layouts.read(text, &mut layout_values)
        {
            let mut row = rows.start_row(&layout.measurement, to_time(timestamp));
            for (part, value) in layout.parts.iter().zip(&layout_values) {
                row.set(part.column, *value)?;
            }
            accepted += 1;
            continue;
        }
        if !line.parse(text) {
            continue;
        }
        if last_valid_measurement != Some(line.measurement) {
            if !valid_name_bytes(line.measurement, MAX_MEASUREMENT_LEN) {
                continue;
            }
            last_valid_measurement = Some(line.measurement);
        }
        // Valid names are ASCII, so this never fails.
        let Ok(measurement) = std::str::from_utf8(line.measurement) else {
            continue;
        };

        let mut row = rows.start_row(measurement, to_time(line.timestamp));
        columns.clear();
        for tag in &line.tags {
            let key = tag.key.unescape(KEY_ESCAPES, &mut key_buf, utf8);
            let value = tag.value.unescape(KEY_ESCAPES, &mut value_buf, utf8);
            columns.push(row.tag(&key, &value)?);
        }
        for field in &line.fields {
            let key = field.key.unescape(KEY_ESCAPES, &mut key_buf, utf8);
            let column = match field.value {
                FieldValue::Int(v) => row.field(&key, Value::Int(v))?,
                FieldValue::Float(v) => row.field(&key, Value::Float(v))?,
                FieldValue::Bool(v) => row.field(&key, Value::Bool(v))?,
                FieldValue::Str(text) => {
                    let value = text.unescape(STRING_ESCAPES, &mut value_buf, utf8);
                    row.field(&key, Value::Str(&value))?
                }
            };
            columns.push(column);
        }
        accepted += 1;
        if utf8 == Utf8::Valid {
            layouts.learn(measurement, text, &line, &columns);
        }
    }

    if accepted == 0 {
        return Err(DecodeError::NoValidRecords);
    }
    Ok(rows.finish())
}

/// How many layouts a body keeps: enough for the measurements a Telegraf batch interleaves.
const MAX_LAYOUTS: usize = 8;

/// How many layouts a body learns at most. Learning allocates; a body whose lines keep missing
/// (more layouts than it keeps, rotating) stops paying for it.
const MAX_LEARNED: usize = 4 * MAX_LAYOUTS;

/// The layouts of lines the full parser accepted, for the lines that repeat them.
///
/// A body usually repeats a few layouts (one per measurement and set of keys) line after line.
/// A layout is the bytes in front of each value (`cpu,host=`, ` f0=`, `,f1=`) and the column
/// each value went to. A line that has exactly those bytes in front of values of the same kinds
/// is read by comparing the bytes whole and writing each value straight to its column: the full
/// parser, a left-to-right scanner, would make the same decisions over the same bytes. Anything
/// else (an escaped tag value, a string field, another key or value kind, more fields) goes to
/// the full parser.
#[derive(Debug, Default)]
struct Layouts {
    layouts: Vec<Layout>,
    /// The layout that read the previous line, tried first.
    last: usize,
    /// Where the next layout goes once all places are taken.
    next_slot: usize,
    /// Layouts learned so far in this body.
    learned: usize,
}

#[derive(Debug, PartialEq)]
struct Layout {
    measurement: String,
    parts: Vec<LayoutPart>,
}

#[derive(Debug, PartialEq)]
struct LayoutPart {
    /// The bytes between the previous value (or the line start) and this value.
    prefix: Vec<u8>,
    kind: PartKind,
    column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Tag,
    Int,
    Float,
    Bool,
}

impl Layouts {
    /// Reads `line` with the first layout it repeats into `values` (one per part), with its
    /// timestamp.
    fn read<'a>(
        &mut self,
        line: &'a [u8],
        values: &mut Vec<Value<'a>>,
    ) -> Option<(&Layout, Option<i64>)> {
        let count = self.layouts.len();
        for k in 0..count {
            let index = (self.last + k) % count;
            if let Some(timestamp) = self.layouts[index].read(line, values) {
                self.last = index;
                return Some((&self.layouts[index], timestamp));
            }
        }
        None
    }

    /// Keeps the layout of `line`, which the full parser read into `parts` and wrote to
    /// `columns` (tags, then fields), unless it has parts a layout cannot read.
    fn learn(
        &mut self,
        measurement: &str,
        line: &[u8],
        parts: &LineParts,
        columns: &[Option<usize>],
    ) {
        if self.learned == MAX_LEARNED {
            return;
        }
        let tags = parts.tags.iter().map(|tag| {
            let kind = (!tag.value.has_backslash).then_some(PartKind::Tag);
            (kind, tag.span)
        });
        let fields = parts.fields.iter().map(|field| {
            let kind = match field.value {
                FieldValue::Int(_) => Some(PartKind::Int),
                FieldValue::Float(_) => Some(PartKind::Float),
                FieldValue::Bool(_) => Some(PartKind::Bool),
                FieldValue::Str(_) => None,
            };
            (kind, field.span)
        });
        let mut layout = Layout {
            measurement: measurement.to_owned(),
            parts: Vec::with_capacity(columns.len()),
        };
        let mut previous_end = 0;
        for ((kind, (start, end)), column) in tags.chain(fields).zip(columns) {
            let (Some(kind), Some(column)) = (kind, *column) else {
                return;
            };
            layout.parts.push(LayoutPart {
                prefix: line[previous_end..start].to_vec(),
                kind,
                column,
            });
            previous_end = end;
        }
        if self.layouts.contains(&layout) {
            return;
        }
        self.learned += 1;
        if self.layouts.len() < MAX_LAYOUTS {
            self.layouts.push(layout);
        } else {
            self.layouts[self.next_slot] = layout;
            self.next_slot = (self.next_slot + 1) % MAX_LAYOUTS;
        }
    }
}

impl Layout {
    /// `line`'s values and timestamp if it repeats this layout.
    #[inline]
    fn read<'a>(&self, line: &'a [u8], values: &mut Vec<Value<'a>>) -> Option<Option<i64>> {
        values.clear();
        let mut i = 0;
        for part in &self.parts {
            let prefix_end = i + part.prefix.len();
            if !same_bytes(line.get(i..prefix_end)?, &part.prefix) {
                return None;
            }
            i = prefix_end;
            let start = i;
            if part.kind == PartKind::Tag {
                while i < line.len() {
                    match line[i] {
                        b',' | b' ' => break,
                        b'\\' => return None,
                        _ => i += 1,
                    }
                }
                if i == start {
                    return None;
                }
                // SAFETY: the caller's body is valid UTF-8 and the value is cut at ASCII bytes
                // (see `Utf8::text`).
                values.push(Value::Str(unsafe {
                    std::str::from_utf8_unchecked(&line[start..i])
                }));
                continue;
            }
            if part.kind == PartKind::Float
                && let Some((value, end)) = scan_plain_decimal(line, start)
            {
                values.push(Value::Float(value));
                i = end;
                continue;
            }
            while i < line.len() && line[i] != b',' && line[i] != b' ' {
                i += 1;
            }
            let value = match (part.kind, classify_bare_value(&line[start..i])?) {
                (PartKind::Int, FieldValue::Int(v)) => Value::Int(v),
                (PartKind::Float, FieldValue::Float(v)) => Value::Float(v),
                (PartKind::Bool, FieldValue::Bool(v)) => Value::Bool(v),
                _ => return None,
            };
            values.push(value);
        }
        // More fields than the layout has.
        if line.get(i) == Some(&b',') {
            return None;
        }
        Some(timestamp_from(line, i))
    }
}

/// Characters a backslash escapes in tag keys, tag values and field keys.
const KEY_ESCAPES: &[u8] = b", =";
/// Characters a backslash escapes in quoted string field values.
const STRING_ESCAPES: &[u8] = b"\"\\";

/// Whether the body was checked to be valid UTF-8 as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Utf8 {
    Valid,
    /// Not valid: each piece is checked, and invalid sequences are replaced.
    Unchecked,
}

impl Utf8 {
    /// `bytes` as text. With [`Utf8::Valid`], `bytes` must be cut from the validated body at
    /// ASCII bytes (or be such a piece with ASCII bytes removed).
    fn text(self, bytes: &[u8]) -> Cow<'_, str> {
        match self {
            // SAFETY: the body is valid UTF-8, and ASCII bytes never occur inside a multi-byte
            // sequence, so a piece that starts and ends at ASCII positions (with some ASCII
            // bytes taken out) is valid UTF-8 too.
            Utf8::Valid => Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) }),
            Utf8::Unchecked => String::from_utf8_lossy(bytes),
        }
    }
}

/// Raw bytes of a name or value, still escaped.
#[derive(Debug, Clone, Copy)]
struct Text<'a> {
    raw: &'a [u8],
    has_backslash: bool,
}

impl<'a> Text<'a> {
    /// The text with `\x` turned into `x` for each `x` in `escapes`; invalid UTF-8 is
    /// replaced. Borrows from the body unless there was something to unescape.
    fn unescape<'s>(self, escapes: &[u8], buf: &'s mut Vec<u8>, utf8: Utf8) -> Cow<'s, str>
    where
        'a: 's,
    {
        if !self.has_backslash {
            return utf8.text(self.raw);
        }
        buf.clear();
        let raw = self.raw;
        let mut i = 0;
        while i < raw.len() {
            // Pairs here mirror the scanner, which always treats `\` plus the next byte as
            // one unit.
            if raw[i] == b'\\' && i + 1 < raw.len() {
                let next = raw[i + 1];
                if !escapes.contains(&next) {
                    buf.push(b'\\');
                }
                buf.push(next);
                i += 2;
            } else {
                buf.push(raw[i]);
                i += 1;
            }
        }
        utf8.text(buf)
    }
}

#[derive(Debug, Clone, Copy)]
struct RawTag<'a> {
    key: Text<'a>,
    value: Text<'a>,
    /// Where the value is in the (trimmed) line.
    span: (usize, usize),
}

#[derive(Debug, Clone, Copy)]
enum FieldValue<'a> {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A quoted string (with string escapes) or a bare value that is not a number or bool.
    Str(Text<'a>),
}

#[derive(Debug, Clone, Copy)]
struct RawField<'a> {
    key: Text<'a>,
    value: FieldValue<'a>,
    /// Where the value is in the (trimmed) line.
    span: (usize, usize),
}

/// One line split into its parts; the vectors are reused from line to line.
#[derive(Debug, Default)]
struct LineParts<'a> {
    measurement: &'a [u8],
    /// Stored tags (keys starting with `_` are left out).
    tags: Vec<RawTag<'a>>,
    /// Stored fields (keys starting with `_` are left out).
    fields: Vec<RawField<'a>>,
    /// `None` when missing or not an i64.
    timestamp: Option<i64>,
}

impl<'a> LineParts<'a> {
    /// Splits `line` (trimmed); false when it is blank, a comment or invalid. Measurement name
    /// rules are checked by the caller.
    fn parse(&mut self, line: &'a [u8]) -> bool {
        self.tags.clear();
        self.fields.clear();
        self.parse_parts(line).is_some()
    }

    fn parse_parts(&mut self, line: &'a [u8]) -> Option<()> {
        if line.first().is_none_or(|&b| b == b'#') {
            return None;
        }
        let len = line.len();
        // A backslash in the measurement can only produce characters the name rules reject,
        // so the name ends at the first comma or space regardless.
        let mut i = line
            .iter()
            .position(|&b| b == b',' || b == b' ')
            .unwrap_or(len);
        self.measurement = &line[..i];

        while i < len && line[i] == b',' {
            let (key, key_end) = scan_key(line, i + 1)?;
            let (value, value_end) = scan_tag_value(line, key_end + 1);
            if key.raw.is_empty() || value.raw.is_empty() || key.raw == b"time" {
                return None;
            }
            if key.raw[0] != b'_' {
                let span = (key_end + 1, value_end);
                self.tags.push(RawTag { key, value, span });
            }
            i = value_end;
        }

        i = skip_spaces(line, i);
        if i == len {
            return None;
        }
        loop {
            let (key, key_end) = scan_key(line, i)?;
            if key.raw.is_empty() || key.raw == b"time" {
                return None;
            }
            let (value, value_end) = scan_field_value(line, key_end + 1)?;
            if key.raw[0] != b'_' {
                let span = (key_end + 1, value_end);
                self.fields.push(RawField { key, value, span });
            }
            i = value_end;
            if i < len && line[i] == b',' {
                i += 1;
            } else {
                break;
            }
        }
        if self.fields.is_empty() {
            return None;
        }

        self.timestamp = timestamp_from(line, i);
        Some(())
    }
}

/// The timestamp after the field set ending at `i`: `None` when missing or not an i64.
#[inline]
fn timestamp_from(line: &[u8], i: usize) -> Option<i64> {
    let i = skip_spaces(line, i);
    // Usually the rest of the line is the timestamp's digits, with nothing to look for.
    if let Some(value) = short_digits_value(&line[i..]) {
        return i64::try_from(value).ok();
    }
    let end = line[i..]
        .iter()
        .position(|&b| b == b' ')
        .map_or(line.len(), |p| i + p);
    match parse_integer(&line[i..end]) {
        IntLiteral::Value(timestamp) => Some(timestamp),
        IntLiteral::Overflow | IntLiteral::Malformed => None,
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &line[start..end]
}

fn skip_spaces(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && line[i] == b' ' {
        i += 1;
    }
    i
}

/// A tag or field key starting at `start`: returns it and the index of its `=`, or `None`
/// when a comma, space or the end of the line comes first.
#[inline]
fn scan_key(line: &[u8], start: usize) -> Option<(Text<'_>, usize)> {
    let mut has_backslash = false;
    let mut i = start;
    while i < line.len() {
        match line[i] {
            b'=' => {
                let key = Text {
                    raw: &line[start..i],
                    has_backslash,
                };
                return Some((key, i));
            }
            b',' | b' ' => return None,
            b'\\' => {
                has_backslash = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// A tag value starting at `start`, ending at an unescaped comma or space or the line end.
#[inline]
fn scan_tag_value(line: &[u8], start: usize) -> (Text<'_>, usize) {
    let mut has_backslash = false;
    let mut i = start;
    while i < line.len() {
        match line[i] {
            b',' | b' ' => break,
            b'\\' => {
                has_backslash = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    let end = i.min(line.len());
    let value = Text {
        raw: &line[start..end],
        has_backslash,
    };
    (value, end)
}

/// A field value starting at `start` and the index just past it; `None` for an empty value,
/// an unterminated string, junk after a closing quote, or an out-of-range integer.
#[inline]
fn scan_field_value(line: &[u8], start: usize) -> Option<(FieldValue<'_>, usize)> {
    if line.get(start) == Some(&b'"') {
        let mut has_backslash = false;
        let mut i = start + 1;
        loop {
            match line.get(i)? {
                b'"' => break,
                b'\\' => {
                    has_backslash = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        let text = Text {
            raw: &line[start + 1..i],
            has_backslash,
        };
        let end = i + 1;
        if end < line.len() && line[end] != b',' && line[end] != b' ' {
            return None;
        }
        return Some((FieldValue::Str(text), end));
    }
    if let Some((value, end)) = scan_plain_decimal(line, start) {
        return Some((FieldValue::Float(value), end));
    }
    let end = line
        .get(start..)?
        .iter()
        .position(|&b| b == b',' || b == b' ')
        .map_or(line.len(), |p| start + p);
    let value = classify_bare_value(&line[start..end])?;
    Some((value, end))
}

/// Types an unquoted field value; `None` when it is empty or an integer out of range.
#[inline]
fn classify_bare_value(raw: &[u8]) -> Option<FieldValue<'_>> {
    let (&last, body) = raw.split_last()?;
    // Most values are numbers: only a value starting like a boolean is compared with them.
    if matches!(raw[0], b't' | b'T' | b'f' | b'F') {
        match raw {
            b"t" | b"T" | b"true" | b"True" | b"TRUE" => return Some(FieldValue::Bool(true)),
            b"f" | b"F" | b"false" | b"False" | b"FALSE" => return Some(FieldValue::Bool(false)),
            _ => {}
        }
    }
    let integer = match last {
        b'i' => parse_integer(body),
        b'u' => parse_unsigned(body),
        _ => IntLiteral::Malformed,
    };
    match integer {
        IntLiteral::Value(v) => return Some(FieldValue::Int(v)),
        IntLiteral::Overflow => return None,
        IntLiteral::Malformed => {}
    }
    if let Some(v) = parse_float(raw) {
        return Some(FieldValue::Float(v));
    }
    Some(FieldValue::Str(Text {
        raw,
        has_backslash: false,
    }))
}

/// Outcome of reading a decimal integer literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntLiteral {
    Value(i64),
    /// Looks like an integer but does not fit in an i64.
    Overflow,
    Malformed,
}

/// `[+-]?[0-9]+` as an i64.
fn parse_integer(text: &[u8]) -> IntLiteral {
    let (negative, digits) = match text.split_first() {
        Some((b'-', digits)) => (true, digits),
        Some((b'+', digits)) => (false, digits),
        _ => (false, text),
    };
    let magnitude = match parse_digits(digits) {
        Digits::Value(magnitude) => magnitude,
        Digits::Overflow => return IntLiteral::Overflow,
        Digits::Malformed => return IntLiteral::Malformed,
    };
    // i64::MIN's magnitude is one more than i64::MAX.
    let limit = i64::MAX as u64 + u64::from(negative);
    if magnitude > limit {
        return IntLiteral::Overflow;
    }
    IntLiteral::Value(if negative {
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    })
}

/// `[0-9]+` as an unsigned integer that must also fit in an i64 (the column type).
fn parse_unsigned(digits: &[u8]) -> IntLiteral {
    match parse_digits(digits) {
        Digits::Value(value) => {
            i64::try_from(value).map_or(IntLiteral::Overflow, IntLiteral::Value)
        }
        Digits::Overflow => IntLiteral::Overflow,
        Digits::Malformed => IntLiteral::Malformed,
    }
}

enum Digits {
    Value(u64),
    Overflow,
    Malformed,
}

/// `[0-9]+` as a u64. Up to nineteen digits (a timestamp in nanoseconds) are read a word at a
/// time; longer ones by `lexical-core`.
#[inline]
fn parse_digits(digits: &[u8]) -> Digits {
    if let Some(value) = short_digits_value(digits) {
        return Digits::Value(value);
    }
    // The parser would also take a sign; only digits are an integer here.
    if !digits.first().is_some_and(u8::is_ascii_digit) {
        return Digits::Malformed;
    }
    match lexical_core::parse::<u64>(digits) {
        Ok(value) => Digits::Value(value),
        // Too large, but only if every byte is a digit: otherwise it is no integer at all.
        Err(lexical_core::Error::Overflow(_)) if digits.iter().all(u8::is_ascii_digit) => {
            Digits::Overflow
        }
        Err(_) => Digits::Malformed,
    }
}

/// The value of `bytes` when they are 1 to 19 ASCII digits (which always fit a u64), eight
/// at a time.
#[inline]
fn short_digits_value(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    let (words, tail) = bytes.as_chunks::<8>();
    let mut value = 0u64;
    for word in words {
        value = value * 100_000_000 + eight_digits(u64::from_le_bytes(*word))?;
    }
    for &byte in tail {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + u64::from(digit);
    }
    Some(value)
}

/// The value of eight ASCII digits read as a little-endian word (first digit in the lowest
/// byte), or `None` when a byte is not a digit.
#[inline]
fn eight_digits(word: u64) -> Option<u64> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let digits = word.wrapping_sub(ZEROS);
    // A byte below `0` wraps to a high bit; one above `9` reaches it when 0x76 is added. The
    // lowest byte that is not a digit always shows; borrows and carries start only there.
    if (digits | digits.wrapping_add(0x7676_7676_7676_7676)) & HIGHS != 0 {
        return None;
    }
    // Pairs, then fours, then all eight: each step joins neighbouring lanes.
    let pairs = (digits * 10 + (digits >> 8)) & 0x00FF_00FF_00FF_00FF;
    let fours = (pairs * 100 + (pairs >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((fours * 10_000 + (fours >> 32)) & 0xFFFF_FFFF)
}

/// A plain decimal (`-?[0-9]+(\.[0-9]+)?`, at most 15 digits) starting at `start` and ending at
/// `,`, ` ` or the end of `line`, read in the same pass that finds its end: its value and end.
/// `None` for anything else (exponents, suffixes, booleans, longer numbers), which
/// [`classify_bare_value`] reads.
#[inline]
fn scan_plain_decimal(line: &[u8], start: usize) -> Option<(f64, usize)> {
    /// Powers of ten up to 10^15, each exact in an f64.
    const TENS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let negative = line.get(start) == Some(&b'-');
    let digits_start = start + usize::from(negative);
    let mut i = digits_start;
    let mut mantissa = 0u64;
    let mut dot = None;
    while let Some(&byte) = line.get(i) {
        let digit = byte.wrapping_sub(b'0');
        if digit <= 9 {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
        } else if byte == b'.' && dot.is_none() && i > digits_start {
            dot = Some(i);
        } else if byte == b',' || byte == b' ' {
            break;
        } else {
            return None;
        }
        i += 1;
    }
    let digits = i - digits_start - usize::from(dot.is_some());
    let fraction_digits = dot.map_or(0, |dot| i - dot - 1);
    if digits == 0 || digits > 15 || (dot.is_some() && fraction_digits == 0) {
        return None;
    }
    // Under 10^15 the mantissa is exact in an f64, and so is the power of ten: one division of
    // exact operands is the correctly rounded value, as a full parser gives.
    let magnitude = mantissa as f64 / TENS[fraction_digits];
    Some((if negative { -magnitude } else { magnitude }, i))
}

/// A finite float, or `None` (infinities and NaN count as text).
#[inline]
fn parse_float(raw: &[u8]) -> Option<f64> {
    // From the bytes, without a UTF-8 check first; float parsing was ~8 % of a line-protocol
    // load's profile with the standard library's parser.
    let value: f64 = fast_float2::parse(raw).ok()?;
    value.is_finite().then_some(value)
}

/// Position of the first `\n`, comparing eight bytes at a time.
fn find_newline(haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NEWLINES: u64 = ONES * b'\n' as u64;
    let (words, tail) = haystack.as_chunks::<8>();
    for (index, word) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*word) ^ NEWLINES;
        // Sets the high bit of each zero byte of `x` (the lowest one is exact, which is all
        // that trailing_zeros looks at).
        let zero_bytes = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero_bytes != 0 {
            return Some(index * 8 + (zero_bytes.trailing_zeros() / 8) as usize);
        }
    }
    tail.iter()
        .position(|&b| b == b'\n')
        .map(|p| words.len() * 8 + p)
}

/// Appends `batch` to `out` as line protocol with µs timestamps, for writes arcdb makes itself
/// (continuous-query results). The `tags` columns become tags (as text; a null or empty value is
/// left out), the others fields; a row's time is its `time` column or `default_time_us`. A row
/// with no usable field (all null, or NaN/infinite) is skipped. Returns the rows written.
pub fn encode_batch(
    measurement: &str,
    batch: &RecordBatch,
    tags: &[String],
    default_time_us: i64,
    out: &mut String,
) -> Result<usize, ArrowError> {
    use std::fmt::Write;

    let times = match batch.column_by_name("time") {
        Some(column) => Some(
            cast(
                column,
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            )?
            .as_primitive::<TimestampMicrosecondType>()
            .clone(),
        ),
        None => None,
    };
    let mut tag_columns = Vec::new();
    let mut fields = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let name = field.name();
        if name == "time" {
            continue;
        }
        if tags.contains(name) {
            tag_columns.push((escape(name, b",= "), cast(column, &DataType::Utf8)?));
            continue;
        }
        let value = match column.data_type() {
            DataType::Boolean => FieldColumn::Bool(column.as_boolean().clone()),
            t if t.is_integer() => FieldColumn::Int(
                cast(column, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            t if t.is_floating()
                || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
            {
                FieldColumn::Float(
                    cast(column, &DataType::Float64)?
                        .as_primitive::<Float64Type>()
                        .clone(),
                )
            }
            _ => FieldColumn::Str(cast(column, &DataType::Utf8)?.as_string::<i32>().clone()),
        };
        fields.push((escape(name, b",= "), value));
    }
    let measurement = escape(measurement, b", ");
    let mut written = 0;
    let mut line = String::new();
    for row in 0..batch.num_rows() {
        line.clear();
        line.push_str(&measurement);
        for (key, values) in &tag_columns {
            let values = values.as_string::<i32>();
            if values.is_valid(row) && !values.value(row).is_empty() {
                let _ = write!(line, ",{key}={}", escape(values.value(row), b",= "));
            }
        }
        let mut separator = ' ';
        for (key, values) in &fields {
            let start = line.len();
            let _ = write!(line, "{separator}{key}=");
            let wrote = match values {
                FieldColumn::Bool(v) => v.is_valid(row) && write!(line, "{}", v.value(row)).is_ok(),
                FieldColumn::Int(v) => v.is_valid(row) && write!(line, "{}i", v.value(row)).is_ok(),
                FieldColumn::Float(v) => {
                    v.is_valid(row)
                        && v.value(row).is_finite()
                        && write!(line, "{}", v.value(row)).is_ok()
                }
                FieldColumn::Str(v) => {
                    v.is_valid(row)
                        && write!(line, "\"{}\"", escape_string_field(v.value(row))).is_ok()
                }
            };
            if wrote {
                separator = ',';
            } else {
                line.truncate(start);
            }
        }
        if separator == ' ' {
            continue;
        }
        let time = times
            .as_ref()
            .filter(|t| t.is_valid(row))
            .map_or(default_time_us, |t| t.value(row));
        let _ = writeln!(line, " {time}");
        out.push_str(&line);
        written += 1;
    }
    Ok(written)
}

enum FieldColumn {
    Bool(BooleanArray),
    Int(Int64Array),
    Float(Float64Array),
    Str(StringArray),
}

/// Backslash-escapes `special` bytes (all ASCII); a line break, which would end the line,
/// becomes a space.
fn escape(text: &str, special: &[u8]) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' || c == '\r' {
            escaped.push(' ');
            continue;
        }
        if c.is_ascii() && special.contains(&(c as u8)) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn escape_string_field(text: &str) -> String {
    escape(text, b"\"\\")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::datatypes::DataType;
    use proptest::prelude::*;

    use super::*;
    use crate::ingest::batch::test_support::{Cell, column, column_names, data_type, times};

    const NOW: i64 = 1_700_000_000_123_456;

    #[test]
    fn encoded_batches_parse_back_to_the_same_rows() {
        use arrow::array::{ArrayRef, TimestampMicrosecondArray};
        use std::sync::Arc;

        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "time",
                Arc::new(TimestampMicrosecondArray::from(vec![10, 20, 30]).with_timezone("UTC")),
            ),
            (
                "host",
                Arc::new(StringArray::from(vec![Some("a b,c"), None, Some("")])),
            ),
            (
                "avg",
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    Some(f64::NAN),
                    Some(2.0),
                ])),
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(3), None, Some(-4)])),
            ),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("say \"hi\"\\"), None, None])),
            ),
            (
                "up",
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            ),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut body = String::new();
        let rows = encode_batch("cpu_1m", &batch, &["host".to_string()], 0, &mut body).unwrap();
        assert_eq!(rows, 2, "the row with no usable field is skipped: {body}");
        let parsed = parse(body.as_bytes(), Precision::Microseconds, NOW).unwrap();
        assert_eq!(parsed.len(), 1, "{body}");
        let batch = &parsed[0];
        assert_eq!(batch.measurement, "cpu_1m");
        assert_eq!(batch.tags, vec!["host".to_string()]);
        assert_eq!(times(batch), vec![10, 30]);
        assert_eq!(
            column(batch, "host"),
            vec![Some(Cell::Str("a b,c".into())), None]
        );
        assert_eq!(
            column(batch, "avg"),
            vec![Some(Cell::Float(1.5)), Some(Cell::Float(2.0))]
        );
        assert_eq!(
            column(batch, "n"),
            vec![Some(Cell::Int(3)), Some(Cell::Int(-4))]
        );
        assert_eq!(
            column(batch, "note"),
            vec![Some(Cell::Str("say \"hi\"\\".into())), None]
        );
        assert_eq!(
            column(batch, "up"),
            vec![Some(Cell::Bool(true)), Some(Cell::Bool(false))]
        );

        let untimed = RecordBatch::try_from_iter(vec![(
            "v",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
        .unwrap();
        let mut body = String::new();
        encode_batch("m", &untimed, &[], 77, &mut body).unwrap();
        assert_eq!(body, "m v=1i 77\n");
    }

    fn parse_ns(body: &str) -> Result<Vec<MeasurementBatch>, DecodeError> {
        parse(body.as_bytes(), Precision::Nanoseconds, NOW)
    }

    fn single(body: &str) -> MeasurementBatch {
        let mut batches = parse_ns(body).unwrap();
        assert_eq!(batches.len(), 1, "{batches:?}");
        batches.remove(0)
    }

    fn s(text: &str) -> Option<Cell> {
        Some(Cell::Str(text.into()))
    }

    #[test]
    fn parses_a_typical_line() {
        let batch = single(
            "cpu,host=server01,region=us-west usage_idle=12.5,usage_user=3.25,count=7i,ok=t,msg=\"hi\" 1700000000000000000",
        );
        assert_eq!(batch.measurement, "cpu");
        assert_eq!(batch.tags, ["host", "region"]);
        assert_eq!(times(&batch), [1_700_000_000_000_000]);
        assert_eq!(
            column_names(&batch),
            [
                "count",
                "host",
                "msg",
                "ok",
                "region",
                "usage_idle",
                "usage_user"
            ]
        );
        assert_eq!(column(&batch, "host"), [s("server01")]);
        assert_eq!(column(&batch, "region"), [s("us-west")]);
        assert_eq!(column(&batch, "usage_idle"), [Some(Cell::Float(12.5))]);
        assert_eq!(column(&batch, "count"), [Some(Cell::Int(7))]);
        assert_eq!(column(&batch, "ok"), [Some(Cell::Bool(true))]);
        assert_eq!(column(&batch, "msg"), [s("hi")]);
        assert_eq!(data_type(&batch, "host"), DataType::Utf8);
    }

    #[test]
    fn precision_names_and_codes() {
        for (text, precision) in [
            ("ns", Precision::Nanoseconds),
            ("n", Precision::Nanoseconds),
            ("us", Precision::Microseconds),
            ("u", Precision::Microseconds),
            ("µ", Precision::Microseconds),
            ("ms", Precision::Milliseconds),
            ("s", Precision::Seconds),
        ] {
            assert_eq!(Precision::parse(text), Some(precision), "{text}");
        }
        for text in ["", "NS", "m", "h", "sec", "µs"] {
            assert_eq!(Precision::parse(text), None, "{text}");
        }
        for code in 0..=255u8 {
            match Precision::from_u8(code) {
                Some(precision) => assert_eq!(precision.as_u8(), code),
                None => assert!(code > 3),
            }
        }
        assert_eq!(Precision::default(), Precision::Nanoseconds);
    }

    #[test]
    fn timestamps_are_converted_to_microseconds_by_precision() {
        let cases = [
            (
                Precision::Nanoseconds,
                "1700000000123456789",
                1_700_000_000_123_456,
            ),
            (Precision::Nanoseconds, "-1", -1),
            (Precision::Nanoseconds, "-1000", -1),
            (Precision::Nanoseconds, "-1001", -2),
            (
                Precision::Microseconds,
                "1700000000123456",
                1_700_000_000_123_456,
            ),
            (
                Precision::Milliseconds,
                "1700000000123",
                1_700_000_000_123_000,
            ),
            (Precision::Seconds, "1700000000", 1_700_000_000_000_000),
            (Precision::Seconds, "-5", -5_000_000),
            (Precision::Seconds, "+5", 5_000_000),
        ];
        for (precision, timestamp, expected) in cases {
            let body = format!("m v=1 {timestamp}");
            let batches = parse(body.as_bytes(), precision, NOW).unwrap();
            assert_eq!(times(&batches[0]), [expected], "{precision:?} {timestamp}");
        }
    }

    #[test]
    fn missing_unparseable_or_overflowing_timestamps_become_now() {
        let cases = [
            (Precision::Nanoseconds, "m v=1"),
            (Precision::Nanoseconds, "m v=1   "),
            (Precision::Nanoseconds, "m v=1 abc"),
            (Precision::Nanoseconds, "m v=1 12x"),
            (Precision::Nanoseconds, "m v=1 99999999999999999999"),
            (Precision::Milliseconds, "m v=1 9223372036854775807"),
            (Precision::Seconds, "m v=1 -9223372036854775"),
        ];
        for (precision, body) in cases {
            let batches = parse(body.as_bytes(), precision, NOW).unwrap();
            assert_eq!(times(&batches[0]), [NOW], "{body}");
        }
        // Anything after the timestamp is ignored.
        assert_eq!(times(&single("m v=1 5000 trailing")), [5]);
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_tolerated() {
        let body = "# comment\r\n\r\n  \nm v=1 1000\r\n   # indented comment\n\tm v=2 2000\r\n";
        let batch = single(body);
        assert_eq!(times(&batch), [1, 2]);
        assert_eq!(
            column(&batch, "v"),
            [Some(Cell::Float(1.0)), Some(Cell::Float(2.0))]
        );
    }

    #[test]
    fn field_value_types() {
        let body = "m a=1i,b=-9223372036854775808i,c=18u,d=9223372036854775807u,e=1.5,f=-2,g=1e3,h=.5,i=abc,j=1.5i,k=-3u,l=inf,m=NaN,n=0x10";
        let batch = single(body);
        let expect = [
            ("a", Cell::Int(1)),
            ("b", Cell::Int(i64::MIN)),
            ("c", Cell::Int(18)),
            ("d", Cell::Int(i64::MAX)),
            ("e", Cell::Float(1.5)),
            ("f", Cell::Float(-2.0)),
            ("g", Cell::Float(1000.0)),
            ("h", Cell::Float(0.5)),
            ("i", Cell::Str("abc".into())),
            ("j", Cell::Str("1.5i".into())),
            ("k", Cell::Str("-3u".into())),
            ("l", Cell::Str("inf".into())),
            ("m", Cell::Str("NaN".into())),
            ("n", Cell::Str("0x10".into())),
        ];
        for (name, cell) in expect {
            assert_eq!(column(&batch, name), [Some(cell)], "{name}");
        }
    }

    #[test]
    fn boolean_spellings() {
        let trues = ["t", "T", "true", "True", "TRUE"];
        let falses = ["f", "F", "false", "False", "FALSE"];
        for (spellings, expected) in [(trues, true), (falses, false)] {
            for spelling in spellings {
                let batch = single(&format!("m v={spelling}"));
                assert_eq!(
                    column(&batch, "v"),
                    [Some(Cell::Bool(expected))],
                    "{spelling}"
                );
            }
        }
        assert_eq!(column(&single("m v=tRUE"), "v"), [s("tRUE")]);
    }

    #[test]
    fn out_of_range_integers_drop_the_line() {
        for body in [
            "m v=9223372036854775808u",
            "m v=99999999999999999999u",
            "m v=9223372036854775808i",
            "m v=-9223372036854775809i",
            "m v=123456789012345678901234i",
            "m v=18446744073709551616u",
        ] {
            assert_eq!(
                parse_ns(body).unwrap_err(),
                DecodeError::NoValidRecords,
                "{body}"
            );
        }
        let batch = single("m v=9223372036854775808u\nm v=1i");
        assert_eq!(column(&batch, "v"), [Some(Cell::Int(1))]);
    }

    #[test]
    fn integer_literals_at_every_length_and_with_leading_zeros() {
        let mut cases = vec![
            ("0".to_owned(), IntLiteral::Value(0)),
            ("-0".to_owned(), IntLiteral::Value(0)),
            ("+7".to_owned(), IntLiteral::Value(7)),
            (
                "0000000000000000000000042".to_owned(),
                IntLiteral::Value(42),
            ),
            (
                "-00000000000000000000009223372036854775808".to_owned(),
                IntLiteral::Value(i64::MIN),
            ),
            ("1234567890123456789012".to_owned(), IntLiteral::Overflow),
            ("12345678901234567890x".to_owned(), IntLiteral::Malformed),
            ("12a".to_owned(), IntLiteral::Malformed),
            ("".to_owned(), IntLiteral::Malformed),
            ("-".to_owned(), IntLiteral::Malformed),
            ("--1".to_owned(), IntLiteral::Malformed),
        ];
        // Every length up to i64's, against the standard parser.
        let mut digits = String::new();
        for d in (1..=19).map(|n| char::from(b'0' + (n % 10) as u8)) {
            digits.push(d);
            let expected = digits
                .parse::<i64>()
                .map_or(IntLiteral::Overflow, IntLiteral::Value);
            cases.push((digits.clone(), expected));
            cases.push((
                format!("-{digits}"),
                IntLiteral::Value(-digits.parse::<i64>().unwrap()),
            ));
        }
        for (text, expected) in cases {
            assert_eq!(parse_integer(text.as_bytes()), expected, "{text:?}");
        }
        assert_eq!(
            parse_unsigned(b"9223372036854775807"),
            IntLiteral::Value(i64::MAX)
        );
        assert_eq!(parse_unsigned(b"-1"), IntLiteral::Malformed);
    }

    #[test]
    fn escapes_in_keys_tag_values_and_strings() {
        let body = r#"m,tag\ key=a\,b\=c\ d,k=x\y field\,key\==1i,s="say \"hi\" \\ \n",bare=x\y"#;
        let batch = single(body);
        assert_eq!(batch.tags, ["k", "tag key"]);
        assert_eq!(column(&batch, "tag key"), [s("a,b=c d")]);
        assert_eq!(column(&batch, "k"), [s(r"x\y")]);
        assert_eq!(column(&batch, "field,key="), [Some(Cell::Int(1))]);
        assert_eq!(column(&batch, "s"), [s(r#"say "hi" \ \n"#)]);
        assert_eq!(column(&batch, "bare"), [s(r"x\y")]);
    }

    #[test]
    fn strings_may_contain_separators() {
        let batch = single(r#"m s="a, b=c d",v=1i 1000"#);
        assert_eq!(column(&batch, "s"), [s("a, b=c d")]);
        assert_eq!(times(&batch), [1]);
        assert_eq!(column(&single(r#"m s="""#), "s"), [s("")]);
    }

    #[test]
    fn invalid_lines_are_dropped_silently() {
        let invalid = [
            "m",
            "m ",
            "m,host=a",
            "m v",
            "m v=",
            "m =1",
            "m v=1,",
            "m v=1,,w=2",
            "m,host= v=1",
            "m,=a v=1",
            "m,host v=1",
            "m,host=a, v=1",
            "m s=\"unterminated",
            "m s=\"abc\\\"",
            "m s=\"a\"b",
            "m time=1",
            "m,time=a v=1",
            "1m v=1",
            "_m v=1",
            "m.x v=1",
            "m\\ x v=1",
            "m\\,x v=1",
            ",host=a v=1",
            " v=1",
            "m _hidden=1",
        ];
        for line in invalid {
            assert_eq!(
                parse_ns(line).unwrap_err(),
                DecodeError::NoValidRecords,
                "{line:?}"
            );
            let body = format!("{line}\nm good=1i\n");
            let batch = single(&body);
            assert_eq!(times(&batch).len(), 1, "{line:?}");
            assert_eq!(column_names(&batch), ["good"], "{line:?}");
        }
        let long_name = "m".repeat(129);
        assert_eq!(
            parse_ns(&format!("{long_name} v=1")).unwrap_err(),
            DecodeError::NoValidRecords
        );
        assert_eq!(
            single(&format!("{} v=1", "m".repeat(128)))
                .measurement
                .len(),
            128
        );
    }

    #[test]
    fn empty_or_comment_only_bodies_have_no_valid_records() {
        for body in ["", "\n\n", "# only a comment\n", "   \r\n"] {
            assert_eq!(parse_ns(body).unwrap_err(), DecodeError::NoValidRecords);
        }
    }

    #[test]
    fn a_field_named_like_a_tag_is_renamed() {
        let batch = single("m,host=a host=1i,v=2i");
        assert_eq!(column_names(&batch), ["host", "host_value", "v"]);
        assert_eq!(column(&batch, "host"), [s("a")]);
        assert_eq!(column(&batch, "host_value"), [Some(Cell::Int(1))]);
    }

    #[test]
    fn underscore_columns_are_ignored() {
        let batch = single("m,_tag=x,host=a _f=1,v=2");
        assert_eq!(column_names(&batch), ["host", "v"]);
        assert_eq!(batch.tags, ["host"]);
    }

    #[test]
    fn missing_columns_are_null_padded() {
        let batch = single("m,a=x v=1i 1000\nm w=2i 2000\nm,b=y v=3i 3000");
        assert_eq!(column(&batch, "a"), [s("x"), None, None]);
        assert_eq!(column(&batch, "b"), [None, None, s("y")]);
        assert_eq!(
            column(&batch, "v"),
            [Some(Cell::Int(1)), None, Some(Cell::Int(3))]
        );
        assert_eq!(column(&batch, "w"), [None, Some(Cell::Int(2)), None]);
        assert_eq!(batch.tags, ["a", "b"]);
    }

    #[test]
    fn type_conflicts_fail_the_request() {
        assert_eq!(
            parse_ns("m v=1i\nm v=\"x\"").unwrap_err(),
            DecodeError::TypeConflict {
                measurement: "m".into(),
                column: "v".into(),
                first: "int64",
                second: "string",
            }
        );
        assert!(matches!(
            parse_ns("m v=1i\nm v=1.5").unwrap_err(),
            DecodeError::TypeConflict { .. }
        ));
        // An integer joining a float column is converted.
        let batch = single("m v=1.5\nm v=2i");
        assert_eq!(
            column(&batch, "v"),
            [Some(Cell::Float(1.5)), Some(Cell::Float(2.0))]
        );
    }

    #[test]
    fn measurements_come_out_in_order_of_first_appearance() {
        let batches = parse_ns("b v=1\na v=2\nb v=3\nc v=4").unwrap();
        let names: Vec<_> = batches.iter().map(|b| b.measurement.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(times(&batches[0]).len(), 2);
    }

    #[test]
    fn multibyte_text_next_to_escapes_stays_whole() {
        let body = "m,t\\ é=ü\\,x s=\"a\\\\é\\\"b\",k\\é=1i";
        let batch = single(body);
        assert_eq!(column(&batch, "t é"), [s("ü,x")]);
        assert_eq!(column(&batch, "s"), [s("a\\é\"b")]);
        assert_eq!(column(&batch, "k\\é"), [Some(Cell::Int(1))]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let body = b"m,t\xff=v\xfe s=\"a\xffb\",k\xff=1i";
        let batch = &parse(body, Precision::Nanoseconds, NOW).unwrap()[0];
        assert_eq!(column(batch, "t\u{fffd}"), [s("v\u{fffd}")]);
        assert_eq!(column(batch, "s"), [s("a\u{fffd}b")]);
        assert_eq!(column(batch, "k\u{fffd}"), [Some(Cell::Int(1))]);
        // The same invalid key on a second line lands in the same column.
        let body = b"m k\xff=1i\nm k\xff=2i";
        let batch = &parse(body, Precision::Nanoseconds, NOW).unwrap()[0];
        assert_eq!(
            column(batch, "k\u{fffd}"),
            [Some(Cell::Int(1)), Some(Cell::Int(2))]
        );
    }

    #[test]
    fn a_repeated_field_keeps_the_last_value() {
        let batch = single("m v=1i,v=2i");
        assert_eq!(column(&batch, "v"), [Some(Cell::Int(2))]);
    }

    #[test]
    fn find_newline_matches_a_plain_search() {
        let mut text = vec![b'a'; 40];
        assert_eq!(find_newline(&text), None);
        for position in 0..40 {
            text[position] = b'\n';
            assert_eq!(find_newline(&text), Some(position));
            text[position] = 0x8a;
            assert_eq!(find_newline(&text), None);
            text[position] = b'a';
        }
        assert_eq!(find_newline(b"\x0b\n"), Some(1));
        assert_eq!(find_newline(b"\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\n"), Some(8));
    }

    // ---- property tests ----

    #[derive(Debug, Clone)]
    enum GenValue {
        Int(i64),
        Uint(u64),
        Float(f64),
        Bool(bool, &'static str),
        Str(String),
    }

    impl GenValue {
        fn encode(&self) -> String {
            match self {
                GenValue::Int(v) => format!("{v}i"),
                GenValue::Uint(v) => format!("{v}u"),
                GenValue::Float(v) => format!("{v:?}"),
                GenValue::Bool(_, spelling) => (*spelling).to_owned(),
                GenValue::Str(v) => format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
            }
        }

        fn expected(&self) -> Cell {
            match self {
                GenValue::Int(v) => Cell::Int(*v),
                GenValue::Uint(v) => Cell::Int(*v as i64),
                GenValue::Float(v) => Cell::Float(*v),
                GenValue::Bool(v, _) => Cell::Bool(*v),
                GenValue::Str(v) => Cell::Str(v.clone()),
            }
        }
    }

    #[derive(Debug, Clone)]
    struct GenRow {
        measurement: &'static str,
        tags: BTreeMap<String, String>,
        fields: BTreeMap<String, GenValue>,
        timestamp: Option<i64>,
    }

    /// Names and values without backslashes or newlines, but with every separator.
    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9 ,=\"#éß\u{1F600}\t-]{1,8}"
    }

    fn escape_key(text: &str) -> String {
        let mut out = String::new();
        for c in text.chars() {
            if matches!(c, ',' | '=' | ' ') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    /// Field types follow the key's prefix so rows never conflict.
    fn field() -> impl Strategy<Value = (String, GenValue)> {
        let bool_value = prop::sample::select(vec![
            (true, "t"),
            (true, "T"),
            (true, "true"),
            (true, "True"),
            (true, "TRUE"),
            (false, "f"),
            (false, "F"),
            (false, "false"),
            (false, "False"),
            (false, "FALSE"),
        ]);
        prop_oneof![
            (text(), any::<i64>()).prop_map(|(k, v)| (format!("i{k}"), GenValue::Int(v))),
            (text(), 0..=i64::MAX as u64).prop_map(|(k, v)| (format!("u{k}"), GenValue::Uint(v))),
            (
                text(),
                prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL
            )
                .prop_map(|(k, v)| (format!("f{k}"), GenValue::Float(v))),
            (text(), bool_value)
                .prop_map(|(k, (v, spelling))| (format!("b{k}"), GenValue::Bool(v, spelling))),
            (text(), "(?s)[^\n]{0,12}").prop_map(|(k, v)| (format!("s{k}"), GenValue::Str(v))),
        ]
    }

    fn row() -> impl Strategy<Value = GenRow> {
        (
            prop::sample::select(vec!["cpu", "mem", "disk_io", "Net-2"]),
            // Tag keys start with `k`, field keys never do, so nothing gets renamed.
            prop::collection::btree_map(text().prop_map(|k| format!("k{k}")), text(), 0..3),
            prop::collection::vec(field(), 1..4),
            prop::option::of(-9_000_000_000_000i64..9_000_000_000_000),
        )
            .prop_map(|(measurement, tags, fields, timestamp)| GenRow {
                measurement,
                tags,
                fields: fields.into_iter().collect(),
                timestamp,
            })
    }

    fn precision() -> impl Strategy<Value = Precision> {
        prop::sample::select(vec![
            Precision::Nanoseconds,
            Precision::Microseconds,
            Precision::Milliseconds,
            Precision::Seconds,
        ])
    }

    fn encode_row(row: &GenRow, crlf: bool) -> String {
        let mut line = row.measurement.to_owned();
        for (k, v) in &row.tags {
            line.push_str(&format!(",{}={}", escape_key(k), escape_key(v)));
        }
        line.push(' ');
        let fields: Vec<String> = row
            .fields
            .iter()
            .map(|(k, v)| format!("{}={}", escape_key(k), v.encode()))
            .collect();
        line.push_str(&fields.join(","));
        if let Some(timestamp) = row.timestamp {
            line.push_str(&format!(" {timestamp}"));
        }
        line.push_str(if crlf { "\r\n" } else { "\n" });
        line
    }

    #[test]
    fn lines_that_repeat_a_layout_with_a_difference_are_read_in_full() {
        let body = concat!(
            "m,host=a f=1.5,n=1i 1000\n",
            "m,host=b f=2.5,n=2i 2000\n",
            // An escaped tag value, a string, an integer in the float column, one more field,
            // a field named like the tag, and a line that is dropped.
            "m,host=c\\ d f=3.5,n=3i 3000\n",
            "m,host=e f=\"x\",n=4i 4000\n",
            "m,host=f f=6i,n=6i 6000\n",
            "m,host=g f=7.5,n=7i,extra=t 7000\n",
            "m,host=h f=8.5,host=1i 8000\n",
            "m,host= f=9.5,n=9i 9000\n",
        );
        let error = parse_ns(body).unwrap_err();
        assert_eq!(
            error,
            DecodeError::TypeConflict {
                measurement: "m".into(),
                column: "f".into(),
                first: "float64",
                second: "string",
            }
        );
        let without_string = body.replace("f=\"x\"", "f=4.5");
        let batch = single(&without_string);
        assert_eq!(times(&batch), [1, 2, 3, 4, 6, 7, 8]);
        assert_eq!(
            column(&batch, "host"),
            [s("a"), s("b"), s("c d"), s("e"), s("f"), s("g"), s("h")]
        );
        assert_eq!(
            column(&batch, "f"),
            [1.5, 2.5, 3.5, 4.5, 6.0, 7.5, 8.5].map(|v| Some(Cell::Float(v)))
        );
        assert_eq!(
            column(&batch, "extra"),
            [None, None, None, None, None, Some(Cell::Bool(true)), None]
        );
        assert_eq!(
            column(&batch, "host_value"),
            [None, None, None, None, None, None, Some(Cell::Int(1))]
        );
    }

    #[test]
    fn a_body_rotating_through_more_layouts_than_kept_stops_learning() {
        let lines: Vec<String> = (0..MAX_LEARNED + 8)
            .map(|n| format!("m{n},host=a f=1.5 1000"))
            .collect();
        let mut layouts = Layouts::default();
        let mut parts = LineParts::default();
        for (n, line) in lines.iter().enumerate() {
            assert!(parts.parse(line.as_bytes()));
            let before = format!("{:?}", layouts.layouts);
            layouts.learn(
                &format!("m{n}"),
                line.as_bytes(),
                &parts,
                &[Some(0), Some(1)],
            );
            let changed = before != format!("{:?}", layouts.layouts);
            assert_eq!(changed, n < MAX_LEARNED, "line {n}");
        }
        assert_eq!(layouts.layouts.len(), MAX_LAYOUTS);

        // Whatever layouts are kept, every line is read as the full parser reads it.
        let body: String = lines
            .iter()
            .cycle()
            .take(3 * lines.len())
            .map(|l| format!("{l}\n"))
            .collect();
        let batches = parse_ns(&body).unwrap();
        assert_eq!(batches.len(), lines.len());
        for batch in &batches {
            assert_eq!(times(batch), [1, 1, 1]);
            assert_eq!(column(batch, "host"), [s("a"), s("a"), s("a")]);
        }
    }

    /// A line as pieces, so that the next line can change one of them.
    #[derive(Debug, Clone)]
    struct LinePieces {
        measurement: &'static str,
        tags: Vec<(&'static str, &'static str)>,
        fields: Vec<(&'static str, &'static str)>,
        timestamp: &'static str,
        end: &'static str,
    }

    impl LinePieces {
        fn text(&self) -> String {
            let mut line = self.measurement.to_owned();
            for (key, value) in &self.tags {
                line.push_str(&format!(",{key}={value}"));
            }
            let fields: Vec<String> = self
                .fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{line} {}{}{}", fields.join(","), self.timestamp, self.end)
        }
    }

    const TAG_VALUES: &[&str] = &["a", "b", "a\\ b", "a\\,b", "", "x=y", "\"q\"", "é"];
    const FIELD_VALUES: &[&str] = &[
        "5i",
        "-7i",
        "1.5",
        "2",
        "t",
        "FALSE",
        "\"a,b\"",
        "\"\"",
        "abc",
        "9u",
        "",
        "1e400",
        "99999999999999999999i",
        "1.5,",
        "2 3",
    ];
    const TIMESTAMPS: &[&str] = &["", " 123", " 1700000000000000000", " abc", "  5 x"];

    /// Escapes, strings, other value kinds, keys that are dropped, renamed or repeated, missing
    /// or junk timestamps, invalid lines.
    fn line_pieces() -> impl Strategy<Value = LinePieces> {
        let tag_key = prop::sample::select(vec!["host", "dc", "_x", "f0"]);
        let field_key = prop::sample::select(vec!["f0", "f1", "host", "_y", "f\\ 2"]);
        (
            prop::sample::select(vec!["cpu", "mem", "c\\,pu"]),
            prop::collection::vec((tag_key, prop::sample::select(TAG_VALUES)), 0..3),
            prop::collection::vec((field_key, prop::sample::select(FIELD_VALUES)), 0..4),
            prop::sample::select(TIMESTAMPS),
            prop::sample::select(vec!["", "\r", " "]),
        )
            .prop_map(|(measurement, tags, fields, timestamp, end)| LinePieces {
                measurement,
                tags,
                fields,
                timestamp,
                end,
            })
    }

    /// How a line differs from the one before it.
    #[derive(Debug, Clone)]
    enum Change {
        Same,
        TagValue(usize, &'static str),
        FieldValue(usize, &'static str),
        Timestamp(&'static str),
        Other(LinePieces),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            2 => Just(Change::Same),
            2 => (any::<usize>(), prop::sample::select(TAG_VALUES))
                .prop_map(|(i, v)| Change::TagValue(i, v)),
            3 => (any::<usize>(), prop::sample::select(FIELD_VALUES))
                .prop_map(|(i, v)| Change::FieldValue(i, v)),
            1 => prop::sample::select(TIMESTAMPS).prop_map(Change::Timestamp),
            1 => line_pieces().prop_map(Change::Other),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A body with a line of invalid UTF-8 is read without layouts; otherwise the same
        /// body must give the same batches or the same error.
        #[test]
        fn repeated_layouts_read_like_the_full_parser(
            first in line_pieces(),
            changes in prop::collection::vec(change(), 0..40),
        ) {
            let mut body = first.text() + "\n";
            let mut line = first;
            for change in changes {
                match change {
                    Change::Same => {}
                    Change::TagValue(i, v) if !line.tags.is_empty() => {
                        let n = line.tags.len();
                        line.tags[i % n].1 = v;
                    }
                    Change::FieldValue(i, v) if !line.fields.is_empty() => {
                        let n = line.fields.len();
                        line.fields[i % n].1 = v;
                    }
                    Change::TagValue(..) | Change::FieldValue(..) => {}
                    Change::Timestamp(t) => line.timestamp = t,
                    Change::Other(other) => line = other,
                }
                body.push_str(&line.text());
                body.push('\n');
            }
            let mut without_layouts = body.clone().into_bytes();
            without_layouts.extend_from_slice(b"\xff\n");
            let with = parse(body.as_bytes(), Precision::Nanoseconds, NOW);
            let without = parse(&without_layouts, Precision::Nanoseconds, NOW);
            match (with, without) {
                (Ok(with), Ok(without)) => {
                    prop_assert_eq!(with.len(), without.len());
                    for (a, b) in with.iter().zip(&without) {
                        prop_assert_eq!(&a.measurement, &b.measurement);
                        prop_assert_eq!(&a.tags, &b.tags);
                        prop_assert_eq!(&a.batch, &b.batch, "{}", body);
                    }
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{:?} vs {:?} for {}", a.map(|_| ()), b.map(|_| ()), body),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn digit_words_read_like_the_standard_parser(
            bytes in prop::collection::vec(
                prop_oneof![4 => b'0'..=b'9', 1 => any::<u8>()],
                0..24,
            ),
        ) {
            let all_digits = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
            let expected = (all_digits && bytes.len() <= 19)
                .then(|| std::str::from_utf8(&bytes).unwrap().parse::<u64>().unwrap());
            prop_assert_eq!(short_digits_value(&bytes), expected);
        }

        #[test]
        fn plain_decimals_read_like_the_standard_float_parser(
            text in "-?[0-9]{1,17}(\\.[0-9]{1,17})?|[-0-9.e]{0,8}",
            end in prop_oneof![Just(""), Just(","), Just(" "), Just("i")],
        ) {
            let line = format!("{text}{end}");
            let (sign, unsigned) = text.strip_prefix('-').map_or(("", text.as_str()), |t| ("-", t));
            let parts: Vec<&str> = unsigned.split('.').collect();
            let plain = parts.len() <= 2
                && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && unsigned.len() - (parts.len() - 1) <= 15;
            match scan_plain_decimal(line.as_bytes(), 0) {
                Some((value, stop)) => {
                    prop_assert!(plain && end != "i", "{sign}{unsigned}");
                    prop_assert_eq!(stop, text.len());
                    prop_assert_eq!(value.to_bits(), text.parse::<f64>().unwrap().to_bits());
                }
                None => prop_assert!(!plain || end == "i", "{line} not read"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body, Precision::Nanoseconds, NOW);
        }

        #[test]
        fn line_protocol_like_text_never_panics(
            body in "[a-c ,=\"\\\\#_\n\r\t0-9.iutfe+-]{0,200}",
            precision in precision(),
        ) {
            if let Ok(batches) = parse(body.as_bytes(), precision, NOW) {
                for batch in batches {
                    prop_assert!(batch.batch.num_rows() > 0);
                }
            }
        }

        #[test]
        fn round_trip(
            rows in prop::collection::vec(row(), 1..20),
            precision in precision(),
            crlf in any::<bool>(),
        ) {
            let mut body = String::from("# generated\n");
            for row in &rows {
                body.push_str(&encode_row(row, crlf));
            }
            let batches = parse(body.as_bytes(), precision, NOW).unwrap();

            let mut order: Vec<&str> = Vec::new();
            for row in &rows {
                if !order.contains(&row.measurement) {
                    order.push(row.measurement);
                }
            }
            prop_assert_eq!(batches.len(), order.len());
            for (batch, measurement) in batches.iter().zip(order) {
                prop_assert_eq!(&batch.measurement, measurement);
                let rows: Vec<&GenRow> =
                    rows.iter().filter(|r| r.measurement == measurement).collect();
                let expected_times: Vec<i64> = rows
                    .iter()
                    .map(|r| r.timestamp.and_then(|t| precision.to_micros(t)).unwrap_or(NOW))
                    .collect();
                prop_assert_eq!(times(batch), expected_times);

                let mut expected: BTreeMap<String, Vec<Option<Cell>>> = BTreeMap::new();
                let mut tags: Vec<String> = Vec::new();
                for (index, row) in rows.iter().enumerate() {
                    let cells = row
                        .tags
                        .iter()
                        .map(|(k, v)| (k, Cell::Str(v.clone())))
                        .chain(row.fields.iter().map(|(k, v)| (k, v.expected())));
                    for (key, cell) in cells {
                        expected.entry(key.clone()).or_insert_with(|| vec![None; rows.len()])
                            [index] = Some(cell);
                    }
                    tags.extend(row.tags.keys().cloned());
                }
                tags.sort();
                tags.dedup();
                prop_assert_eq!(&batch.tags, &tags);
                let names: Vec<String> = expected.keys().cloned().collect();
                prop_assert_eq!(column_names(batch), names);
                for (name, cells) in &expected {
                    prop_assert_eq!(&column(batch, name), cells, "column {}", name);
                }
            }
        }
    }
}
