//! The MessagePack query response: Arc's column-major envelope
//! `{success, columns, types, data, row_count, execution_time_ms, timestamp}`.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Writes MessagePack values (big-endian, smallest encodings).
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn map_header(&mut self, len: usize) {
        self.header(len, 0x80, 15, 0xde, 0xdf);
    }

    pub fn array_header(&mut self, len: usize) {
        self.header(len, 0x90, 15, 0xdc, 0xdd);
    }

    fn header(&mut self, len: usize, fix: u8, fix_max: usize, marker16: u8, marker32: u8) {
        if len <= fix_max {
            self.out.push(fix | len as u8);
        } else if len <= u16::MAX as usize {
            self.out.push(marker16);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(marker32);
            self.out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }

    pub fn str(&mut self, text: &str) {
        let len = text.len();
        if len <= 31 {
            self.out.push(0xa0 | len as u8);
        } else if len <= u8::MAX as usize {
            self.out.extend_from_slice(&[0xd9, len as u8]);
        } else if len <= u16::MAX as usize {
            self.out.push(0xda);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0xdb);
            self.out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        self.out.extend_from_slice(text.as_bytes());
    }

    pub fn nil(&mut self) {
        self.out.push(0xc0);
    }

    pub fn bool(&mut self, value: bool) {
        self.out.push(if value { 0xc3 } else { 0xc2 });
    }

    pub fn int(&mut self, value: i64) {
        if (0..=127).contains(&value) || (-32..0).contains(&value) {
            self.out.push(value as u8);
        } else {
            self.out.push(0xd3);
            self.out.extend_from_slice(&value.to_be_bytes());
        }
    }

    pub fn uint(&mut self, value: u64) {
        if value <= 127 {
            self.out.push(value as u8);
        } else {
            self.out.push(0xcf);
            self.out.extend_from_slice(&value.to_be_bytes());
        }
    }

    pub fn float(&mut self, value: f64) {
        self.out.push(0xcb);
        self.out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Arc's name for a column type.
pub fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "utf8".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Null => "null".into(),
        DataType::Timestamp(unit, _) => format!(
            "timestamp[{}]",
            match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            }
        ),
        DataType::Struct(_) => "struct".into(),
        DataType::List(_) | DataType::LargeList(_) => "list".into(),
        DataType::Map(..) => "map".into(),
        other => format!("unknown:{other}"),
    }
}

/// Writes one column's values from every batch as a MessagePack array. Timestamps are integers
/// in the unit their type names; types without a MessagePack form are written as text.
pub fn write_column(writer: &mut Writer, batches: &[RecordBatch], column: usize) {
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    writer.array_header(rows);
    for batch in batches {
        write_values(writer, batch.column(column));
    }
}

fn write_values(writer: &mut Writer, array: &ArrayRef) {
    macro_rules! each {
        ($typed:expr, $write:expr) => {{
            let typed = $typed;
            for i in 0..array.len() {
                if array.is_null(i) {
                    writer.nil();
                } else {
                    $write(&mut *writer, typed.value(i));
                }
            }
        }};
    }
    match array.data_type() {
        DataType::Boolean => each!(array.as_boolean(), |w: &mut Writer, v| w.bool(v)),
        DataType::Int8 => each!(array.as_primitive::<Int8Type>(), |w: &mut Writer, v| w
            .int(v as i64)),
        DataType::Int16 => each!(array.as_primitive::<Int16Type>(), |w: &mut Writer, v| w
            .int(v as i64)),
        DataType::Int32 => each!(array.as_primitive::<Int32Type>(), |w: &mut Writer, v| w
            .int(v as i64)),
        DataType::Int64 => each!(array.as_primitive::<Int64Type>(), |w: &mut Writer, v| w
            .int(v)),
        DataType::UInt8 => each!(array.as_primitive::<UInt8Type>(), |w: &mut Writer, v| w
            .uint(v as u64)),
        DataType::UInt16 => each!(array.as_primitive::<UInt16Type>(), |w: &mut Writer, v| w
            .uint(v as u64)),
        DataType::UInt32 => each!(array.as_primitive::<UInt32Type>(), |w: &mut Writer, v| w
            .uint(v as u64)),
        DataType::UInt64 => each!(array.as_primitive::<UInt64Type>(), |w: &mut Writer, v| w
            .uint(v)),
        DataType::Float32 => each!(array.as_primitive::<Float32Type>(), |w: &mut Writer, v| w
            .float(v as f64)),
        DataType::Float64 => each!(array.as_primitive::<Float64Type>(), |w: &mut Writer, v| w
            .float(v)),
        DataType::Utf8 => each!(array.as_string::<i32>(), |w: &mut Writer, v| w.str(v)),
        DataType::LargeUtf8 => each!(array.as_string::<i64>(), |w: &mut Writer, v| w.str(v)),
        DataType::Utf8View => each!(array.as_string_view(), |w: &mut Writer, v| w.str(v)),
        DataType::Timestamp(..) => {
            let raw =
                arrow::compute::cast(array, &DataType::Int64).expect("timestamps cast to i64");
            each!(raw.as_primitive::<Int64Type>(), |w: &mut Writer, v| w
                .int(v))
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                .expect("every Arrow type has a display form");
            for i in 0..array.len() {
                if array.is_null(i) {
                    writer.nil();
                } else {
                    writer.str(&formatter.value(i).to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn writes_values_that_a_decoder_reads_back() {
        let mut writer = Writer::default();
        writer.map_header(2);
        writer.str("n");
        writer.array_header(5);
        for v in [0, 127, -32, -33, i64::MAX] {
            writer.int(v);
        }
        writer.str(&"k".repeat(40));
        let batch = RecordBatch::try_from_iter([(
            "v",
            Arc::new(arrow::array::Float64Array::from(vec![Some(1.5), None])) as ArrayRef,
        )])
        .unwrap();
        write_column(&mut writer, &[batch], 0);

        let value = rmpv::decode::read_value(&mut &writer.out[..]).unwrap();
        let map = value.as_map().unwrap();
        let ints: Vec<i64> = map[0]
            .1
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ints, vec![0, 127, -32, -33, i64::MAX]);
        assert_eq!(map[1].0.as_str().unwrap().len(), 40);
        assert_eq!(map[1].1.as_array().unwrap()[0].as_f64(), Some(1.5));
        assert!(map[1].1.as_array().unwrap()[1].is_nil());
        assert_eq!(
            type_name(&DataType::Timestamp(TimeUnit::Microsecond, None)),
            "timestamp[us]"
        );
    }
}
