//! The node id and role every log line of a cluster node carries, as the fields of one span
//! that each thread enters when it starts: spawned tasks do not inherit a span, threads do not
//! lose one.

use std::cell::RefCell;
use std::sync::OnceLock;

use tracing::Span;
use tracing::span::Entered;

use crate::config::{Config, NodeRole};

static NODE_SPAN: OnceLock<Span> = OnceLock::new();

thread_local! {
    static ENTERED: RefCell<Option<Entered<'static>>> = const { RefCell::new(None) };
}

/// In a cluster, creates the span that names the node (no-op otherwise, and after the first
/// call).
pub fn init_node_span(config: &Config) {
    if config.cluster.enabled {
        let cluster = &config.cluster;
        NODE_SPAN.get_or_init(
            || tracing::info_span!("node", id = %cluster.node_id, role = cluster.role.as_str()),
        );
    }
}

/// Enters the node's span on this thread until [`exit_node_span`].
pub fn enter_node_span() {
    if let Some(span) = NODE_SPAN.get() {
        ENTERED.with(|entered| *entered.borrow_mut() = Some(span.enter()));
    }
}

pub fn exit_node_span() {
    ENTERED.with(|entered| entered.borrow_mut().take());
}

/// Later log lines name `role` (it changes with promotions and demotions).
pub fn set_role(role: NodeRole) {
    if let Some(span) = NODE_SPAN.get() {
        span.record("role", role.as_str());
    }
}
