//! Recognises queries that need only each series' latest rows, and points their scans at
//! [`RowSet::LatestPerGroup`], which answers from per-file summaries instead of reading files.
//!
//! A scan may read only the latest rows of each group G (rows with equal values in the columns
//! of G) when what sits on it picks, per group of G, rows at the group's latest time. Every such
//! row is the latest of its group within its own file, so it is in that file's summary, and a
//! summary holds nothing the table lacks; the operator then picks the same rows from the
//! smaller input. Filters between the scan and that operator must be deterministic and must not
//! read `time`; the columns they read join G (see [`summary_groups`]). The shapes recognised,
//! each as users write "the last point of every host":
//! - a join of the rows with `SELECT g…, max(time) … GROUP BY g…` on every `g` and on `time`
//!   equal to the maximum (both scans);
//! - an aggregate grouped by columns whose aggregates are all `max(time)`,
//!   `last_value(… ORDER BY time)` or `first_value(… ORDER BY time DESC)` (`DISTINCT ON (g…) …
//!   ORDER BY g…, time DESC` is planned as the latter);
//! - `ORDER BY time DESC LIMIT 1` (`WHERE host = 'h1'`: the last point of one host).
//!
//! Ties at the latest time stay exact: every tied row is in the summaries.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::expr::{AggregateFunction, NullTreatment};
use datafusion::logical_expr::{Aggregate, Expr, Join, JoinType, LogicalPlan, Sort, TableScan};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::table::{MeasurementTable, RowSet};
use crate::buffer::MeasurementKey;

const TIME: &str = "time";

/// The optimizer rule; it runs after DataFusion's own, so it sees joins with their equality
/// keys extracted, limits pushed into sorts and `DISTINCT ON` as an aggregate.
#[derive(Debug)]
pub struct LatestRowsRule;

impl OptimizerRule for LatestRowsRule {
    fn name(&self) -> &str {
        "arcdb_latest_rows"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.transform_down(|node| {
            let Some(group) = latest_group(&node) else {
                return Ok(Transformed::no(node));
            };
            let rewritten = read_latest_rows(node, &group)?;
            // The scans below are rewritten; nothing further down can match again.
            Ok(Transformed::new(
                rewritten.data,
                true,
                TreeNodeRecursion::Jump,
            ))
        })
    }
}

/// Pure: the grouping columns, if `node` needs only the latest rows per group of the scans
/// beneath it.
fn latest_group(node: &LogicalPlan) -> Option<Vec<String>> {
    match node {
        LogicalPlan::Join(join) => joined_to_max(join),
        LogicalPlan::Aggregate(aggregate) => latest_aggregate(aggregate),
        LogicalPlan::Sort(sort) => last_by_time(sort),
        _ => None,
    }
}

/// Points every full scan of a measurement under `node` at its latest rows per `group`.
fn read_latest_rows(node: LogicalPlan, group: &[String]) -> Result<Transformed<LogicalPlan>> {
    node.transform_up(|plan| {
        let scan = match plan {
            LogicalPlan::TableScan(scan) => scan,
            other => return Ok(Transformed::no(other)),
        };
        let provider = source_as_provider(&scan.source)?;
        let Some(table) = provider.downcast_ref::<MeasurementTable>() else {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        };
        let latest = table.latest_per_group(group.to_vec());
        Ok(Transformed::yes(LogicalPlan::TableScan(TableScan {
            source: provider_as_source(Arc::new(latest)),
            ..scan
        })))
    })
}

/// A measurement read through aliases, projections and filters.
struct Chain {
    key: MeasurementKey,
    /// For each output column, the table column it passes on unchanged, if it does.
    sources: Vec<Option<String>>,
    /// Table columns the filters on the way read; `None` if one reads a computed value or is
    /// not deterministic.
    filtered: Option<BTreeSet<String>>,
}

/// Pure: the groups a scan's summaries are kept by: the query's own grouping columns and every
/// column a filter on the way reads, so that each filter keeps or drops whole groups. A row at
/// the latest time of a query group is then at the latest time of the finer group it is in.
/// `None` where a filter reads a computed value or `time`.
fn summary_groups(group: &[String], chains: &[&Chain]) -> Option<Vec<String>> {
    let mut columns: BTreeSet<String> = group.iter().cloned().collect();
    for chain in chains {
        columns.extend(chain.filtered.clone()?);
    }
    (!columns.contains(TIME)).then(|| columns.into_iter().collect())
}

fn chain(plan: &LogicalPlan) -> Option<Chain> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source).ok()?;
            let table = provider.downcast_ref::<MeasurementTable>()?;
            if scan.fetch.is_some() || *table.row_set() != RowSet::All {
                return None;
            }
            let mut filtered = Some(BTreeSet::new());
            for filter in &scan.filters {
                add_filter_columns(&mut filtered, filter, |c| Some(c.name.clone()));
            }
            Some(Chain {
                key: table.key().clone(),
                sources: scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| Some(f.name().clone()))
                    .collect(),
                filtered,
            })
        }
        LogicalPlan::SubqueryAlias(alias) => chain(&alias.input),
        LogicalPlan::Projection(projection) => {
            let inner = chain(&projection.input)?;
            let sources = projection
                .expr
                .iter()
                .map(|e| passed_on(e, &projection.input, &inner.sources))
                .collect();
            Some(Chain { sources, ..inner })
        }
        LogicalPlan::Filter(filter) => {
            let mut inner = chain(&filter.input)?;
            let sources = inner.sources.clone();
            add_filter_columns(&mut inner.filtered, &filter.predicate, |c| {
                source_of(c, &filter.input, &sources)
            });
            Some(inner)
        }
        _ => None,
    }
}

fn add_filter_columns(
    filtered: &mut Option<BTreeSet<String>>,
    predicate: &Expr,
    source: impl Fn(&Column) -> Option<String>,
) {
    if predicate.is_volatile() {
        *filtered = None;
    }
    for column in predicate.column_refs() {
        match (source(column), filtered.as_mut()) {
            (Some(name), Some(columns)) => {
                columns.insert(name);
            }
            _ => *filtered = None,
        }
    }
}

/// The table column a column of `input`'s output carries, if it carries one unchanged.
fn source_of(column: &Column, input: &LogicalPlan, sources: &[Option<String>]) -> Option<String> {
    let index = input.schema().index_of_column(column).ok()?;
    sources.get(index).cloned().flatten()
}

/// The table column `expr` (over `input`) passes on unchanged, if it is one, maybe renamed.
fn passed_on(expr: &Expr, input: &LogicalPlan, sources: &[Option<String>]) -> Option<String> {
    match expr {
        Expr::Alias(alias) => passed_on(&alias.expr, input, sources),
        Expr::Column(column) => source_of(column, input, sources),
        _ => None,
    }
}

/// Grouping columns of an aggregate over a chain, all plain table columns other than `time`.
fn grouping(aggregate: &Aggregate) -> Option<(Chain, Vec<String>)> {
    let input = chain(&aggregate.input)?;
    let group = aggregate
        .group_expr
        .iter()
        .map(|e| passed_on(e, &aggregate.input, &input.sources).filter(|c| c.as_str() != TIME))
        .collect::<Option<Vec<_>>>()?;
    Some((input, group))
}

fn latest_aggregate(aggregate: &Aggregate) -> Option<Vec<String>> {
    let (input, group) = grouping(aggregate)?;
    let latest = aggregate
        .aggr_expr
        .iter()
        .all(|e| picks_latest(e, &aggregate.input, &input.sources, &group));
    if !latest {
        return None;
    }
    summary_groups(&group, &[&input])
}

/// Whether an aggregate's value is taken from a row at its group's latest time.
fn picks_latest(
    expr: &Expr,
    input: &LogicalPlan,
    sources: &[Option<String>],
    group: &[String],
) -> bool {
    let function = match expr {
        Expr::Alias(alias) => return picks_latest(&alias.expr, input, sources, group),
        Expr::AggregateFunction(function) => function,
        _ => return false,
    };
    let AggregateFunction { func, params } = function;
    if params.distinct
        || params.filter.is_some()
        || params.null_treatment == Some(NullTreatment::IgnoreNulls)
    {
        return false;
    }
    let is_time = |e: &Expr| passed_on(e, input, sources).as_deref() == Some(TIME);
    let descending = match func.name() {
        "max" => {
            return params.order_by.is_empty()
                && params.args.len() == 1
                && is_time(&params.args[0]);
        }
        "first_value" => true,
        "last_value" => false,
        _ => return false,
    };
    // Sorting on a grouping column changes nothing within a group; then `time` must decide.
    params
        .order_by
        .iter()
        .find(|sort| {
            passed_on(&sort.expr, input, sources).is_none_or(|column| !group.contains(&column))
        })
        .is_some_and(|sort| is_time(&sort.expr) && sort.asc != descending)
}

/// What a column of the `max(time)` side of a join carries.
#[derive(Debug, Clone, PartialEq)]
enum Carried {
    Group(String),
    MaxTime,
    Other,
}

/// The columns of a `SELECT g…, max(time) … GROUP BY g…` plan (maybe aliased and renamed), its
/// grouping columns and the measurement it reads.
fn max_time_per_group(plan: &LogicalPlan) -> Option<(Vec<Carried>, Vec<String>, Chain)> {
    match plan {
        LogicalPlan::SubqueryAlias(alias) => max_time_per_group(&alias.input),
        LogicalPlan::Projection(projection) => {
            let (inner, group, input) = max_time_per_group(&projection.input)?;
            let carried = projection
                .expr
                .iter()
                .map(|e| {
                    let mut e = e;
                    while let Expr::Alias(alias) = e {
                        e = &alias.expr;
                    }
                    let Expr::Column(column) = e else {
                        return Carried::Other;
                    };
                    projection
                        .input
                        .schema()
                        .index_of_column(column)
                        .ok()
                        .and_then(|i| inner.get(i).cloned())
                        .unwrap_or(Carried::Other)
                })
                .collect();
            Some((carried, group, input))
        }
        LogicalPlan::Aggregate(aggregate) => {
            let (input, group) = grouping(aggregate)?;
            let all_max_time = aggregate.aggr_expr.iter().all(|e| {
                let mut e = e;
                while let Expr::Alias(alias) = e {
                    e = &alias.expr;
                }
                matches!(e, Expr::AggregateFunction(f) if f.func.name() == "max")
                    && picks_latest(e, &aggregate.input, &input.sources, &group)
            });
            if !all_max_time {
                return None;
            }
            let carried = group
                .iter()
                .map(|g| Carried::Group(g.clone()))
                .chain(aggregate.aggr_expr.iter().map(|_| Carried::MaxTime))
                .collect();
            Some((carried, group, input))
        }
        _ => None,
    }
}

fn joined_to_max(join: &Join) -> Option<Vec<String>> {
    if join.join_type != JoinType::Inner || join.filter.is_some() {
        return None;
    }
    let pairs: Vec<(&Expr, &Expr)> = join.on.iter().map(|(l, r)| (l, r)).collect();
    let swapped: Vec<(&Expr, &Expr)> = join.on.iter().map(|(l, r)| (r, l)).collect();
    rows_at_max(&join.left, &join.right, &pairs)
        .or_else(|| rows_at_max(&join.right, &join.left, &swapped))
}

/// Rows of `rows_side` joined to `max_side`'s `max(time)` per group on every grouping column
/// and on `time`.
fn rows_at_max(
    rows_side: &LogicalPlan,
    max_side: &LogicalPlan,
    on: &[(&Expr, &Expr)],
) -> Option<Vec<String>> {
    let rows = chain(rows_side)?;
    let (carried, group, max_input) = max_time_per_group(max_side)?;
    if rows.key != max_input.key {
        return None;
    }
    let mut joined_groups = BTreeSet::new();
    let mut joined_time = false;
    for (row_expr, max_expr) in on {
        let (Expr::Column(row_column), Expr::Column(max_column)) = (row_expr, max_expr) else {
            return None;
        };
        let source = source_of(row_column, rows_side, &rows.sources)?;
        let index = max_side.schema().index_of_column(max_column).ok()?;
        match carried.get(index)? {
            Carried::Group(g) if *g == source => {
                joined_groups.insert(source);
            }
            Carried::MaxTime if source == TIME => joined_time = true,
            _ => return None,
        }
    }
    if !joined_time || !group.iter().all(|g| joined_groups.contains(g)) {
        return None;
    }
    summary_groups(&group, &[&rows, &max_input])
}

/// `ORDER BY time DESC LIMIT 1`: the latest row of the rows the filters keep.
fn last_by_time(sort: &Sort) -> Option<Vec<String>> {
    if sort.fetch != Some(1) {
        return None;
    }
    let input = chain(&sort.input)?;
    let first = sort.expr.first()?;
    let by_time_desc =
        !first.asc && passed_on(&first.expr, &sort.input, &input.sources).as_deref() == Some(TIME);
    let group: Vec<String> = input.filtered?.into_iter().collect();
    (by_time_desc && !group.iter().any(|c| c == TIME)).then_some(group)
}
