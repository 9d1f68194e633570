//! Arc's JSON result rows: `[v, …]` per row, written straight from Arrow arrays.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int8Array, Int16Array, Int32Array, UInt8Array,
    UInt16Array, UInt32Array,
};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat};

/// Encodes a batch as `,[v,…],[v,…]`: every row is preceded by a comma, so batches can be
/// encoded independently; the caller drops the result's very first byte.
pub fn encode_rows(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.num_rows() * 16 * batch.num_columns());
    let columns: Vec<JsonCell<'_>> = batch.columns().iter().map(JsonCell::new).collect();
    for row in 0..batch.num_rows() {
        out.push(b',');
        out.push(b'[');
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            column.write(&mut out, row);
        }
        out.push(b']');
    }
    out
}

/// A column ready to be written cell by cell, its array already downcast.
enum JsonColumn<'a> {
    Bool(&'a BooleanArray),
    Int64(&'a [i64]),
    Int(&'a dyn Array, fn(&dyn Array, usize) -> i64),
    UInt64(&'a [u64]),
    Float64(&'a [f64]),
    Float32(&'a [f32]),
    Utf8(&'a arrow::array::StringArray),
    Text(&'a ArrayRef),
    /// Raw values and how many nanoseconds one unit is.
    Time(&'a [i64], i64),
    Other(ArrayFormatter<'a>),
}

macro_rules! int_reader {
    ($t:ty) => {
        |a: &dyn Array, i: usize| a.as_any().downcast_ref::<$t>().unwrap().value(i) as i64
    };
}

/// Writes the cells of one column; nulls come from the array's validity bitmap.
struct JsonCell<'a> {
    nulls: Option<arrow::buffer::NullBuffer>,
    column: JsonColumn<'a>,
}

impl<'a> JsonCell<'a> {
    fn new(array: &'a ArrayRef) -> JsonCell<'a> {
        let column = match array.data_type() {
            DataType::Boolean => JsonColumn::Bool(array.as_boolean()),
            DataType::Int8 => JsonColumn::Int(array.as_ref(), int_reader!(Int8Array)),
            DataType::Int16 => JsonColumn::Int(array.as_ref(), int_reader!(Int16Array)),
            DataType::Int32 => JsonColumn::Int(array.as_ref(), int_reader!(Int32Array)),
            DataType::Int64 => JsonColumn::Int64(array.as_primitive::<Int64Type>().values()),
            DataType::UInt8 => JsonColumn::Int(array.as_ref(), int_reader!(UInt8Array)),
            DataType::UInt16 => JsonColumn::Int(array.as_ref(), int_reader!(UInt16Array)),
            DataType::UInt32 => JsonColumn::Int(array.as_ref(), int_reader!(UInt32Array)),
            DataType::UInt64 => JsonColumn::UInt64(array.as_primitive::<UInt64Type>().values()),
            DataType::Float32 => JsonColumn::Float32(array.as_primitive::<Float32Type>().values()),
            DataType::Float64 => JsonColumn::Float64(array.as_primitive::<Float64Type>().values()),
            DataType::Utf8 => JsonColumn::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 | DataType::Utf8View => JsonColumn::Text(array),
            DataType::Timestamp(unit, _) => {
                let (values, nanos_per_unit) = match unit {
                    TimeUnit::Second => (
                        array.as_primitive::<TimestampSecondType>().values(),
                        1_000_000_000,
                    ),
                    TimeUnit::Millisecond => (
                        array.as_primitive::<TimestampMillisecondType>().values(),
                        1_000_000,
                    ),
                    TimeUnit::Microsecond => (
                        array.as_primitive::<TimestampMicrosecondType>().values(),
                        1_000,
                    ),
                    TimeUnit::Nanosecond => {
                        (array.as_primitive::<TimestampNanosecondType>().values(), 1)
                    }
                };
                JsonColumn::Time(values, nanos_per_unit)
            }
            _ => JsonColumn::Other(
                ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                    .expect("every Arrow type has a display form"),
            ),
        };
        JsonCell {
            nulls: array.logical_nulls(),
            column,
        }
    }

    fn write(&self, out: &mut Vec<u8>, row: usize) {
        if self.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
            out.extend_from_slice(b"null");
            return;
        }
        match &self.column {
            JsonColumn::Bool(a) => {
                out.extend_from_slice(if a.value(row) { b"true" } else { b"false" })
            }
            JsonColumn::Int64(values) => write_int(out, values[row]),
            JsonColumn::Int(a, read) => write_int(out, read(*a, row)),
            JsonColumn::UInt64(values) => {
                out.extend_from_slice(itoa::Buffer::new().format(values[row]).as_bytes())
            }
            JsonColumn::Float64(values) => write_float(out, values[row]),
            JsonColumn::Float32(values) => write_float(out, values[row] as f64),
            JsonColumn::Utf8(a) => write_str(out, a.value(row)),
            JsonColumn::Text(a) => {
                let text = match a.data_type() {
                    DataType::LargeUtf8 => a.as_string::<i64>().value(row),
                    _ => a.as_string_view().value(row),
                };
                write_str(out, text)
            }
            JsonColumn::Time(values, nanos_per_unit) => {
                write_timestamp(out, values[row], *nanos_per_unit)
            }
            JsonColumn::Other(formatter) => write_str(out, &formatter.value(row).to_string()),
        }
    }
}

fn write_int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Shortest round-trip form, as Go writes it (whole numbers without a fraction, `1e+21`); NaN and
/// infinities, which JSON cannot hold, as null.
fn write_float(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut buffer = zmij::Buffer::new();
    let text = buffer.format_finite(value);
    out.extend_from_slice(text.strip_suffix(".0").unwrap_or(text).as_bytes());
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    }
}

/// RFC 3339 in UTC with the fraction trimmed of trailing zeros (Go's RFC3339Nano), written
/// without allocating: result sets hold millions of timestamps.
fn write_timestamp(out: &mut Vec<u8>, value: i64, nanos_per_unit: i64) {
    let nanos_total = value as i128 * nanos_per_unit as i128;
    let seconds = nanos_total.div_euclid(1_000_000_000) as i64;
    let nanos = nanos_total.rem_euclid(1_000_000_000) as u32;
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        // Outside four-digit years: rare enough for the general formatter.
        let time = DateTime::from_timestamp(seconds, nanos).expect("in chrono's range");
        out.push(b'"');
        out.extend_from_slice(time.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        out.push(b'"');
        return;
    }
    let mut text = [0u8; 32];
    let digits = |buf: &mut [u8], mut value: u32| {
        for slot in buf.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    text[0] = b'"';
    digits(&mut text[1..5], year as u32);
    text[5] = b'-';
    digits(&mut text[6..8], month);
    text[8] = b'-';
    digits(&mut text[9..11], day);
    text[11] = b'T';
    digits(&mut text[12..14], second_of_day / 3600);
    text[14] = b':';
    digits(&mut text[15..17], second_of_day / 60 % 60);
    text[17] = b':';
    digits(&mut text[18..20], second_of_day % 60);
    let mut len = 20;
    if nanos > 0 {
        text[20] = b'.';
        digits(&mut text[21..30], nanos);
        len = 30;
        while text[len - 1] == b'0' {
            len -= 1;
        }
    }
    text[len] = b'Z';
    text[len + 1] = b'"';
    out.extend_from_slice(&text[..len + 2]);
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_chrono_and_trim_fractions_like_go() {
        let cases = [
            (0i64, 1_000, "\"1970-01-01T00:00:00Z\""),
            (
                1_768_471_200_000_001,
                1_000,
                "\"2026-01-15T10:00:00.000001Z\"",
            ),
            (1_768_471_200_500_000, 1_000, "\"2026-01-15T10:00:00.5Z\""),
            (-1, 1_000, "\"1969-12-31T23:59:59.999999Z\""),
            (951_782_400, 1_000_000_000, "\"2000-02-29T00:00:00Z\""),
        ];
        for (value, nanos_per_unit, expected) in cases {
            let mut out = Vec::new();
            write_timestamp(&mut out, value, nanos_per_unit);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        for seconds in (-5_000_000_000i64..5_000_000_000).step_by(7_777_777) {
            let mut out = Vec::new();
            write_timestamp(&mut out, seconds, 1_000_000_000);
            let chrono = DateTime::from_timestamp(seconds, 0).unwrap();
            let expected = format!(
                "\"{}\"",
                chrono.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            );
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn numbers_and_strings_are_valid_json() {
        let mut out = Vec::new();
        for v in [1.0, -0.5, 1e21, f64::NAN] {
            write_float(&mut out, v);
            out.push(b' ');
        }
        write_str(&mut out, "plain");
        write_str(&mut out, "quo\"te\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1 -0.5 1e+21 null \"plain\"\"quo\\\"te\\n\""
        );
    }
}
