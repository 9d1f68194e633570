//! Decoded rows as Arrow batches, plus the row-at-a-time builder shared by the line-protocol
//! decoder and the MessagePack row form.

use std::sync::Arc;

use arrow::array::builder::{BooleanBufferBuilder, NullBufferBuilder};
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::DecodeError;

/// The rows one request wrote to one measurement.
#[derive(Debug, Clone)]
pub struct MeasurementBatch {
    pub measurement: String,
    /// Column 0 is `time`: DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    /// non-nullable, epoch µs. Then the other columns sorted by name (byte order), all
    /// nullable. Types are only: Int64, Float64, Utf8, Boolean.
    pub batch: RecordBatch,
    /// Names of the tag columns (Utf8) in this batch, sorted.
    pub tags: Vec<String>,
}

/// The Arrow type of the `time` column.
/// Stored times must be representable in nanoseconds too (about years 1677 to 2262), so every
/// Parquet reader and every time computation downstream can handle them.
pub const TIME_RANGE_US: std::ops::RangeInclusive<i64> = (i64::MIN / 1000)..=(i64::MAX / 1000);

/// `time_us` if it is within [`TIME_RANGE_US`].
pub fn checked_time(time_us: i64) -> Option<i64> {
    TIME_RANGE_US.contains(&time_us).then_some(time_us)
}

pub fn time_data_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A single non-null value on its way into a column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bool(bool),
}

impl Value<'_> {
    pub(crate) fn column_type(self) -> ColumnType {
        match self {
            Value::Int(_) => ColumnType::Int64,
            Value::Float(_) => ColumnType::Float64,
            Value::Str(_) => ColumnType::Utf8,
            Value::Bool(_) => ColumnType::Boolean,
        }
    }
}

/// The column types ingestion produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    Int64,
    Float64,
    Utf8,
    Boolean,
}

impl ColumnType {
    /// The name used in type-conflict errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Utf8 => "string",
            ColumnType::Boolean => "boolean",
        }
    }
}

/// Why a value could not be appended to a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    Conflict {
        column: ColumnType,
        value: ColumnType,
    },
    /// Utf8 offsets are i32, so one column holds at most 2 GiB of string bytes.
    StringOverflow,
}

impl PushError {
    pub(crate) fn into_decode_error(self, measurement: &str, column: &str) -> DecodeError {
        match self {
            PushError::Conflict {
                column: first,
                value: second,
            } => DecodeError::TypeConflict {
                measurement: measurement.to_owned(),
                column: column.to_owned(),
                first: first.name(),
                second: second.name(),
            },
            PushError::StringOverflow => DecodeError::Msgpack(format!(
                "measurement '{measurement}': column '{column}' exceeds 2 GiB of string data"
            )),
        }
    }
}

/// Utf8 values laid out the way Arrow wants them, so finishing is a move, not a copy.
#[derive(Debug)]
struct StringValues {
    offsets: Vec<i32>,
    bytes: Vec<u8>,
}

#[derive(Debug)]
enum Values {
    Int64(Vec<i64>),
    Float64(Vec<f64>),
    Utf8(StringValues),
    Boolean(BooleanBufferBuilder),
}

/// One typed, nullable column under construction.
///
/// Unlike Arrow's builders it can drop its last value, which is how a key repeated within
/// one row ends up with the later value.
#[derive(Debug)]
pub(crate) struct ColumnData {
    values: Values,
    nulls: NullBufferBuilder,
}

impl ColumnData {
    /// `capacity` is a row-count hint; callers bound it by the input size.
    pub(crate) fn with_capacity(column_type: ColumnType, capacity: usize) -> Self {
        let values = match column_type {
            ColumnType::Int64 => Values::Int64(Vec::with_capacity(capacity)),
            ColumnType::Float64 => Values::Float64(Vec::with_capacity(capacity)),
            ColumnType::Utf8 => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Values::Utf8(StringValues {
                    offsets,
                    bytes: Vec::new(),
                })
            }
            ColumnType::Boolean => Values::Boolean(BooleanBufferBuilder::new(capacity)),
        };
        ColumnData {
            values,
            nulls: NullBufferBuilder::new(capacity),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.nulls.len()
    }

    #[inline]
    pub(crate) fn push(&mut self, value: Value<'_>) -> Result<(), PushError> {
        match (&mut self.values, value) {
            (Values::Float64(values), Value::Float(v)) => values.push(v),
            (Values::Float64(values), Value::Int(v)) => values.push(v as f64),
            (Values::Int64(values), Value::Int(v)) => values.push(v),
            (Values::Utf8(values), Value::Str(v)) => {
                let end = values.bytes.len() + v.len();
                let end = i32::try_from(end).map_err(|_| PushError::StringOverflow)?;
                values.bytes.extend_from_slice(v.as_bytes());
                values.offsets.push(end);
            }
            (Values::Boolean(values), Value::Bool(v)) => values.append(v),
            (values, value) => {
                return Err(PushError::Conflict {
                    column: values_type(values),
                    value: value.column_type(),
                });
            }
        }
        self.nulls.append_non_null();
        Ok(())
    }

    #[inline]
    pub(crate) fn push_null(&mut self) {
        self.push_nulls(1);
    }

    pub(crate) fn push_nulls(&mut self, count: usize) {
        match &mut self.values {
            Values::Int64(values) => values.resize(values.len() + count, 0),
            Values::Float64(values) => values.resize(values.len() + count, 0.0),
            Values::Utf8(values) => {
                let end = values.offsets.last().copied().unwrap_or(0);
                values.offsets.resize(values.offsets.len() + count, end);
            }
            Values::Boolean(values) => values.append_n(count, false),
        }
        self.nulls.append_n_nulls(count);
    }

    /// Drops the last value, if any.
    fn pop(&mut self) {
        let Some(new_len) = self.len().checked_sub(1) else {
            return;
        };
        match &mut self.values {
            Values::Int64(values) => values.truncate(new_len),
            Values::Float64(values) => values.truncate(new_len),
            Values::Utf8(values) => {
                values.offsets.truncate(new_len + 1);
                let end = values.offsets.last().copied().unwrap_or(0);
                values.bytes.truncate(end as usize);
            }
            Values::Boolean(values) => values.truncate(new_len),
        }
        self.nulls.truncate(new_len);
    }

    pub(crate) fn finish(mut self) -> ArrayRef {
        let nulls = self.nulls.finish();
        match self.values {
            Values::Int64(values) => Arc::new(Int64Array::new(ScalarBuffer::from(values), nulls)),
            Values::Float64(values) => {
                Arc::new(Float64Array::new(ScalarBuffer::from(values), nulls))
            }
            Values::Utf8(values) => Arc::new(StringArray::new(
                OffsetBuffer::new(ScalarBuffer::from(values.offsets)),
                Buffer::from_vec(values.bytes),
                nulls,
            )),
            Values::Boolean(mut values) => Arc::new(BooleanArray::new(values.finish(), nulls)),
        }
    }
}

fn values_type(values: &Values) -> ColumnType {
    match values {
        Values::Int64(_) => ColumnType::Int64,
        Values::Float64(_) => ColumnType::Float64,
        Values::Utf8(_) => ColumnType::Utf8,
        Values::Boolean(_) => ColumnType::Boolean,
    }
}

/// Builds the batch: `time` first, then `columns` sorted by name.
///
/// Every array in `columns` must have `time.len()` rows and column names must be unique and
/// differ from `time`; the decoders guarantee both.
pub(crate) fn assemble(
    measurement: String,
    time: Vec<i64>,
    mut columns: Vec<(String, ArrayRef)>,
    mut tags: Vec<String>,
) -> MeasurementBatch {
    columns.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    tags.sort_unstable();
    let mut fields = Vec::with_capacity(columns.len() + 1);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len() + 1);
    fields.push(Field::new("time", time_data_type(), false));
    arrays.push(Arc::new(
        TimestampMicrosecondArray::new(ScalarBuffer::from(time), None).with_timezone("UTC"),
    ));
    for (name, array) in columns {
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .expect("decoders pad every column to the row count and derive fields from the arrays");
    MeasurementBatch {
        measurement,
        batch,
        tags,
    }
}

/// Row-at-a-time accumulation of one request's rows, grouped by measurement.
///
/// Columns are padded with nulls lazily: a column only catches up to the current row when
/// it next receives a value, and all columns are padded to the row count when finishing.
#[derive(Debug, Default)]
pub(crate) struct RowBatcher {
    tables: Vec<Table>,
    /// Index of the table the previous row went to; consecutive rows usually share it.
    current: usize,
    /// Reused buffer for `<field>_value` names.
    renamed: String,
}

#[derive(Debug)]
struct Table {
    measurement: String,
    time: Vec<i64>,
    /// In order of first appearance; sorted only when finishing.
    columns: Vec<Column>,
    /// Where the next key of the current row is expected, since rows tend to repeat the
    /// previous row's key order.
    next_hint: usize,
}

#[derive(Debug)]
struct Column {
    name: String,
    is_tag: bool,
    /// The last row that set this column as a tag, to spot fields named like a tag.
    tag_row: Option<usize>,
    data: ColumnData,
}

impl Column {
    /// Sets this column's value for `row`, replacing a value set earlier in the same row.
    #[inline]
    fn set(&mut self, row: usize, value: Value<'_>) -> Result<(), PushError> {
        let len = self.data.len();
        if len > row {
            self.data.pop();
        } else if len < row {
            self.data.push_nulls(row - len);
        }
        self.data.push(value)
    }
}

/// `a == b` for the short names every row repeats (measurements, columns).
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// `a == b` for short byte strings that every row repeats, comparing words instead of calling
/// `memcmp` for each (those calls were ~6 % of a line-protocol load).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    // Two overlapping words cover every byte of a name of one to two words.
    fn words<const N: usize>(s: &[u8]) -> ([u8; N], [u8; N]) {
        let head = s[..N].try_into().expect("N bytes");
        let tail = s[s.len() - N..].try_into().expect("N bytes");
        (head, tail)
    }
    match len {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => words::<4>(a) == words::<4>(b),
        8..=16 => words::<8>(a) == words::<8>(b),
        _ => a == b,
    }
}

impl Table {
    #[inline]
    fn find(&mut self, name: &str) -> Option<usize> {
        let hinted = self.next_hint;
        let found = match self.columns.get(hinted) {
            Some(column) if same_name(&column.name, name) => Some(hinted),
            _ => self
                .columns
                .iter()
                .position(|column| same_name(&column.name, name)),
        };
        if let Some(index) = found {
            self.next_hint = index + 1;
        }
        found
    }

    fn add_column(&mut self, name: &str, is_tag: bool, column_type: ColumnType) -> usize {
        self.columns.push(Column {
            name: name.to_owned(),
            is_tag,
            tag_row: None,
            data: ColumnData::with_capacity(column_type, self.time.capacity()),
        });
        self.next_hint = self.columns.len();
        self.columns.len() - 1
    }

    fn finish(self) -> MeasurementBatch {
        let rows = self.time.len();
        let mut tags = Vec::new();
        let mut columns = Vec::with_capacity(self.columns.len());
        for mut column in self.columns {
            let missing = rows - column.data.len();
            column.data.push_nulls(missing);
            if column.is_tag {
                tags.push(column.name.clone());
            }
            columns.push((column.name, column.data.finish()));
        }
        assemble(self.measurement, self.time, columns, tags)
    }
}

impl RowBatcher {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// How many distinct measurements have received rows so far; a new measurement's table
    /// gets the next index, which is also its position in [`RowBatcher::finish`]'s output.
    pub(crate) fn table_count(&self) -> usize {
        self.tables.len()
    }

    /// Starts a new row. `measurement` must already be validated by the caller.
    ///
    /// Tags must be written before fields, so a field can tell it shares a tag's name.
    pub(crate) fn start_row(&mut self, measurement: &str, time: i64) -> RowWriter<'_> {
        let index = match self.tables.get(self.current) {
            Some(table) if same_name(&table.measurement, measurement) => self.current,
            _ => match self
                .tables
                .iter()
                .position(|table| table.measurement == measurement)
            {
                Some(index) => index,
                None => {
                    self.tables.push(Table {
                        measurement: measurement.to_owned(),
                        time: Vec::new(),
                        columns: Vec::new(),
                        next_hint: 0,
                    });
                    self.tables.len() - 1
                }
            },
        };
        self.current = index;
        let table = &mut self.tables[index];
        table.time.push(time);
        table.next_hint = 0;
        RowWriter {
            row: table.time.len() - 1,
            table,
            renamed: &mut self.renamed,
        }
    }

    /// One batch per measurement, in order of first appearance.
    pub(crate) fn finish(self) -> Vec<MeasurementBatch> {
        self.tables.into_iter().map(Table::finish).collect()
    }
}

/// Writes the tags and fields of one row. Keys starting with `_` are dropped; callers reject
/// keys named `time` before writing anything.
pub(crate) struct RowWriter<'b> {
    table: &'b mut Table,
    row: usize,
    renamed: &'b mut String,
}

impl RowWriter<'_> {
    /// Returns the column written, `None` when the key is dropped.
    pub(crate) fn tag(&mut self, key: &str, value: &str) -> Result<Option<usize>, DecodeError> {
        if key.starts_with('_') {
            return Ok(None);
        }
        let index = match self.table.find(key) {
            Some(index) => index,
            None => self.table.add_column(key, true, ColumnType::Utf8),
        };
        let column = &mut self.table.columns[index];
        column.is_tag = true;
        column.tag_row = Some(self.row);
        column
            .set(self.row, Value::Str(value))
            .map_err(|e| e.into_decode_error(&self.table.measurement, key))?;
        Ok(Some(index))
    }

    /// Returns the column written (`<key>_value` when a tag of this row has the key), `None`
    /// when the key is dropped.
    #[inline]
    pub(crate) fn field(
        &mut self,
        key: &str,
        value: Value<'_>,
    ) -> Result<Option<usize>, DecodeError> {
        if key.starts_with('_') {
            return Ok(None);
        }
        let mut name = key;
        let mut index = self.table.find(key);
        if let Some(found) = index
            && self.table.columns[found].tag_row == Some(self.row)
        {
            self.renamed.clear();
            self.renamed.push_str(key);
            self.renamed.push_str("_value");
            name = self.renamed.as_str();
            index = self.table.find(name);
        }
        let index = match index {
            Some(index) => index,
            None => self.table.add_column(name, false, value.column_type()),
        };
        self.table.columns[index]
            .set(self.row, value)
            .map_err(|e| e.into_decode_error(&self.table.measurement, name))?;
        Ok(Some(index))
    }

    /// Writes `value` to `column`, a column an earlier row of this measurement was written to
    /// by [`RowWriter::tag`] or [`RowWriter::field`], as that call would for this row.
    #[inline]
    pub(crate) fn set(&mut self, column: usize, value: Value<'_>) -> Result<(), DecodeError> {
        let column = &mut self.table.columns[column];
        column
            .set(self.row, value)
            .map_err(|e| e.into_decode_error(&self.table.measurement, &column.name))
    }
}

/// Helpers for tests across the ingest module: read decoded batches back as plain values.
#[cfg(test)]
pub(crate) mod test_support {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};

    use super::MeasurementBatch;

    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Cell {
        Int(i64),
        Float(f64),
        Str(String),
        Bool(bool),
    }

    pub(crate) fn times(batch: &MeasurementBatch) -> Vec<i64> {
        let array = batch.batch.column(0);
        assert_eq!(array.data_type(), &super::time_data_type());
        assert_eq!(array.null_count(), 0);
        array
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    }

    /// Column names after `time`, in batch order.
    pub(crate) fn column_names(batch: &MeasurementBatch) -> Vec<String> {
        let schema = batch.batch.schema();
        assert_eq!(schema.field(0).name(), "time");
        schema.fields()[1..]
            .iter()
            .map(|field| field.name().clone())
            .collect()
    }

    pub(crate) fn column(batch: &MeasurementBatch, name: &str) -> Vec<Option<Cell>> {
        let array = batch
            .batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"));
        (0..array.len())
            .map(|row| {
                if array.is_null(row) {
                    return None;
                }
                Some(match array.data_type() {
                    DataType::Int64 => Cell::Int(array.as_primitive::<Int64Type>().value(row)),
                    DataType::Float64 => {
                        Cell::Float(array.as_primitive::<Float64Type>().value(row))
                    }
                    DataType::Utf8 => Cell::Str(array.as_string::<i32>().value(row).to_owned()),
                    DataType::Boolean => Cell::Bool(array.as_boolean().value(row)),
                    other => panic!("unexpected column type {other}"),
                })
            })
            .collect()
    }

    pub(crate) fn data_type(batch: &MeasurementBatch, name: &str) -> DataType {
        batch
            .batch
            .schema()
            .field_with_name(name)
            .unwrap_or_else(|_| panic!("no column {name}"))
            .data_type()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Cell, column, column_names, data_type, times};
    use super::*;

    #[test]
    fn same_name_agrees_with_equality_at_every_length_and_position() {
        for len in 0..=20 {
            let name: String = (0..len).map(|i| char::from(b'a' + i as u8)).collect();
            assert!(same_name(&name, &name.clone()), "{name}");
            assert!(!same_name(&name, &format!("{name}x")), "{name}");
            for position in 0..len {
                let mut other = name.clone().into_bytes();
                other[position] = b'_';
                let other = String::from_utf8(other).unwrap();
                assert!(!same_name(&name, &other), "{name} vs {other}");
            }
        }
    }

    #[test]
    fn rows_become_sorted_columns_with_time_first_and_nulls_for_missing_values() {
        let mut rows = RowBatcher::new();
        let mut row = rows.start_row("cpu", 10);
        row.tag("host", "a").unwrap();
        row.field("usage", Value::Float(1.5)).unwrap();
        row.field("count", Value::Int(3)).unwrap();
        let mut row = rows.start_row("cpu", 20);
        row.field("ok", Value::Bool(true)).unwrap();
        let mut row = rows.start_row("cpu", 30);
        row.tag("host", "b").unwrap();
        row.field("usage", Value::Float(2.5)).unwrap();

        let batches = rows.finish();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.measurement, "cpu");
        assert_eq!(batch.tags, ["host"]);
        assert_eq!(times(batch), [10, 20, 30]);
        assert_eq!(column_names(batch), ["count", "host", "ok", "usage"]);
        assert_eq!(column(batch, "count"), [Some(Cell::Int(3)), None, None]);
        assert_eq!(
            column(batch, "host"),
            [
                Some(Cell::Str("a".into())),
                None,
                Some(Cell::Str("b".into()))
            ]
        );
        assert_eq!(column(batch, "ok"), [None, Some(Cell::Bool(true)), None]);
        assert_eq!(
            column(batch, "usage"),
            [Some(Cell::Float(1.5)), None, Some(Cell::Float(2.5))]
        );
        let schema = batch.batch.schema();
        assert!(!schema.field(0).is_nullable());
        assert!(schema.fields()[1..].iter().all(|f| f.is_nullable()));
        assert_eq!(data_type(batch, "count"), DataType::Int64);
        assert_eq!(data_type(batch, "ok"), DataType::Boolean);
    }

    #[test]
    fn measurements_are_grouped_in_order_of_first_appearance() {
        let mut rows = RowBatcher::new();
        for (measurement, time) in [("mem", 1), ("cpu", 2), ("mem", 3), ("disk", 4), ("cpu", 5)] {
            rows.start_row(measurement, time)
                .field("v", Value::Int(time))
                .unwrap();
        }
        assert_eq!(rows.table_count(), 3);
        let batches = rows.finish();
        let names: Vec<_> = batches.iter().map(|b| b.measurement.as_str()).collect();
        assert_eq!(names, ["mem", "cpu", "disk"]);
        assert_eq!(times(&batches[0]), [1, 3]);
        assert_eq!(times(&batches[1]), [2, 5]);
        assert_eq!(times(&batches[2]), [4]);
    }

    #[test]
    fn int_into_float_column_converts() {
        let mut rows = RowBatcher::new();
        rows.start_row("m", 1)
            .field("v", Value::Float(0.5))
            .unwrap();
        rows.start_row("m", 2).field("v", Value::Int(2)).unwrap();
        let batch = &rows.finish()[0];
        assert_eq!(
            column(batch, "v"),
            [Some(Cell::Float(0.5)), Some(Cell::Float(2.0))]
        );
    }

    #[test]
    fn float_into_int_column_is_a_type_conflict() {
        let mut rows = RowBatcher::new();
        rows.start_row("m", 1).field("v", Value::Int(1)).unwrap();
        let err = rows
            .start_row("m", 2)
            .field("v", Value::Float(1.5))
            .unwrap_err();
        assert_eq!(
            err,
            DecodeError::TypeConflict {
                measurement: "m".into(),
                column: "v".into(),
                first: "int64",
                second: "float64",
            }
        );
    }

    #[test]
    fn every_other_mismatch_is_a_type_conflict() {
        let values = [
            Value::Int(1),
            Value::Float(1.0),
            Value::Str("x"),
            Value::Bool(true),
        ];
        for first in values {
            for second in values {
                let mut rows = RowBatcher::new();
                rows.start_row("m", 1).field("v", first).unwrap();
                let result = rows.start_row("m", 2).field("v", second);
                let compatible = first.column_type() == second.column_type()
                    || matches!((first, second), (Value::Float(_), Value::Int(_)));
                match result {
                    Ok(_) => assert!(compatible, "{first:?} then {second:?}"),
                    Err(DecodeError::TypeConflict {
                        first: a,
                        second: b,
                        ..
                    }) => {
                        assert!(!compatible);
                        assert_eq!(a, first.column_type().name());
                        assert_eq!(b, second.column_type().name());
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_field_named_like_a_tag_of_the_same_row_is_renamed() {
        let mut rows = RowBatcher::new();
        let mut row = rows.start_row("m", 1);
        row.tag("host", "a").unwrap();
        row.field("host", Value::Int(7)).unwrap();
        // Without a `host` tag in the row, the field writes to the string column `host`.
        let mut row = rows.start_row("m", 2);
        row.field("host", Value::Str("b")).unwrap();
        let batch = &rows.finish()[0];
        assert_eq!(column_names(batch), ["host", "host_value"]);
        assert_eq!(batch.tags, ["host"]);
        assert_eq!(
            column(batch, "host"),
            [Some(Cell::Str("a".into())), Some(Cell::Str("b".into()))]
        );
        assert_eq!(column(batch, "host_value"), [Some(Cell::Int(7)), None]);
    }

    #[test]
    fn a_tag_on_an_existing_non_string_field_is_a_type_conflict() {
        let mut rows = RowBatcher::new();
        rows.start_row("m", 1)
            .field("region", Value::Int(1))
            .unwrap();
        let err = rows.start_row("m", 2).tag("region", "eu").unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TypeConflict {
                first: "int64",
                second: "string",
                ..
            }
        ));
    }

    #[test]
    fn a_key_repeated_in_one_row_keeps_the_later_value() {
        let mut rows = RowBatcher::new();
        let mut row = rows.start_row("m", 1);
        row.tag("t", "first").unwrap();
        row.tag("t", "second").unwrap();
        row.field("s", Value::Str("long first value")).unwrap();
        row.field("s", Value::Str("x")).unwrap();
        row.field("b", Value::Bool(true)).unwrap();
        row.field("b", Value::Bool(false)).unwrap();
        row.field("f", Value::Float(1.0)).unwrap();
        row.field("f", Value::Int(2)).unwrap();
        let mut row = rows.start_row("m", 2);
        row.field("s", Value::Str("y")).unwrap();
        let batch = &rows.finish()[0];
        assert_eq!(column(batch, "t"), [Some(Cell::Str("second".into())), None]);
        assert_eq!(
            column(batch, "s"),
            [Some(Cell::Str("x".into())), Some(Cell::Str("y".into()))]
        );
        assert_eq!(column(batch, "b"), [Some(Cell::Bool(false)), None]);
        assert_eq!(column(batch, "f"), [Some(Cell::Float(2.0)), None]);
    }

    #[test]
    fn underscore_keys_are_ignored() {
        let mut rows = RowBatcher::new();
        let mut row = rows.start_row("m", 1);
        row.tag("_tag", "x").unwrap();
        row.field("_field", Value::Int(1)).unwrap();
        row.field("v", Value::Int(1)).unwrap();
        let batch = &rows.finish()[0];
        assert_eq!(column_names(batch), ["v"]);
        assert!(batch.tags.is_empty());
    }

    #[test]
    fn columns_first_seen_late_are_padded_with_leading_nulls() {
        let mut rows = RowBatcher::new();
        for time in 0..5 {
            let mut row = rows.start_row("m", time);
            row.field("a", Value::Int(time)).unwrap();
            if time == 3 {
                row.field("late", Value::Str("x")).unwrap();
                row.field("flag", Value::Bool(true)).unwrap();
            }
        }
        let batch = &rows.finish()[0];
        assert_eq!(
            column(batch, "late"),
            [None, None, None, Some(Cell::Str("x".into())), None]
        );
        assert_eq!(
            column(batch, "flag"),
            [None, None, None, Some(Cell::Bool(true)), None]
        );
    }

    #[test]
    fn assemble_sorts_by_byte_order() {
        let columns = ["b", "B", "a", "_x"]
            .into_iter()
            .map(|name| {
                let mut data = ColumnData::with_capacity(ColumnType::Int64, 1);
                data.push(Value::Int(1)).unwrap();
                (name.to_owned(), data.finish())
            })
            .collect();
        let batch = assemble("m".into(), vec![5], columns, vec!["b".into(), "B".into()]);
        assert_eq!(column_names(&batch), ["B", "_x", "a", "b"]);
        assert_eq!(batch.tags, ["B", "b"]);
    }
}
