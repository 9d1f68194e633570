//! SQL functions Arc (DuckDB) users write that DataFusion lacks or names differently.

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};

/// Every function to register with a query session.
pub fn arc_functions() -> Vec<ScalarUDF> {
    vec![
        // Same arguments as DuckDB's time_bucket; buckets align to 1970-01-01, which matches
        // DuckDB for every width that divides a day.
        datafusion::functions::datetime::date_bin()
            .as_ref()
            .clone()
            .with_aliases(["time_bucket"]),
        ScalarUDF::new_from_impl(Epoch::new("epoch", None)),
        ScalarUDF::new_from_impl(Epoch::new("epoch_ms", Some(TimeUnit::Millisecond))),
        ScalarUDF::new_from_impl(Epoch::new("epoch_us", Some(TimeUnit::Microsecond))),
        ScalarUDF::new_from_impl(Epoch::new("epoch_ns", Some(TimeUnit::Nanosecond))),
    ]
}

/// DuckDB's `epoch(ts)` (seconds, double) and `epoch_ms|us|ns(ts)` (integers). They are
/// rewritten into casts while the plan is simplified, so they never run themselves.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Epoch {
    name: &'static str,
    /// `None` for fractional seconds.
    unit: Option<TimeUnit>,
    signature: Signature,
}

impl Epoch {
    fn new(name: &'static str, unit: Option<TimeUnit>) -> Epoch {
        Epoch {
            name,
            unit,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

fn cast(expr: Expr, to: DataType) -> Expr {
    Expr::Cast(Cast::new(Box::new(expr), to))
}

impl ScalarUDFImpl for Epoch {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.unit {
            None => DataType::Float64,
            Some(_) => DataType::Int64,
        })
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("{} is rewritten into casts before execution", self.name)
    }

    fn simplify(&self, mut args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let (Some(arg), true) = (args.pop(), args.is_empty()) else {
            return exec_err!("{} takes one timestamp argument", self.name);
        };
        let in_unit = |unit| cast(cast(arg, DataType::Timestamp(unit, None)), DataType::Int64);
        Ok(ExprSimplifyResult::Simplified(match self.unit {
            Some(unit) => in_unit(unit),
            None => cast(in_unit(TimeUnit::Microsecond), DataType::Float64) / lit(1_000_000.0),
        }))
    }
}
