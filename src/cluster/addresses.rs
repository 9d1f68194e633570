//! The names and addresses a node announces and listens on.

use std::net::IpAddr;

use crate::config::ClusterConfig;

/// `<hostname>-<pid>`, Arc's default node name.
pub(super) fn default_node_name() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// The IP a `[host]:port` listen address names, unless it is empty or unspecified.
pub(super) fn specific_ip(addr: &str) -> Option<IpAddr> {
    let (host, _) = addr.rsplit_once(':')?;
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    (!ip.is_unspecified()).then_some(ip)
}

/// The coordinator address peers dial: `advertise_addr`, else `coordinator_addr` when it names
/// a host, else this machine's host name with the coordinator port (`:9000` in the seeds).
pub(super) fn advertised_coordinator(config: &ClusterConfig, host_name: &str) -> String {
    if !config.advertise_addr.is_empty() {
        return config.advertise_addr.clone();
    }
    let Some((host, port)) = config.coordinator_addr.rsplit_once(':') else {
        return config.coordinator_addr.clone();
    };
    let ip = host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    if host.is_empty() || ip.is_some_and(|ip| ip.is_unspecified()) {
        format!("{host_name}:{port}")
    } else {
        config.coordinator_addr.clone()
    }
}

/// The HTTP API address peers forward client requests to: `api_advertise_addr`, else the bound
/// address when it names an interface, else the host peers reach the coordinator port on, with
/// the API port.
pub fn api_address(config: &ClusterConfig, bound: std::net::SocketAddr) -> String {
    if !config.api_advertise_addr.is_empty() {
        return config.api_advertise_addr.clone();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let coordinator = advertised_coordinator(config, &host_name());
    let host = coordinator
        .rsplit_once(':')
        .map_or(coordinator.as_str(), |(host, _)| host);
    format!("{host}:{}", bound.port())
}

pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

pub(super) fn listen_addr(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("", port)) => format!("0.0.0.0:{port}"),
        _ => addr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_and_source_addresses_come_from_the_coordinator_address() {
        assert_eq!(listen_addr(":9000"), "0.0.0.0:9000");
        assert_eq!(listen_addr("127.0.0.2:9000"), "127.0.0.2:9000");
        assert_eq!(specific_ip("127.0.0.2:9000"), Some([127, 0, 0, 2].into()));
        assert_eq!(specific_ip(":9000"), None);
        assert_eq!(specific_ip("0.0.0.0:9000"), None);
        assert_eq!(specific_ip("[::1]:9000"), Some("::1".parse().unwrap()));
    }

    #[test]
    fn peers_are_told_a_dialable_coordinator_address() {
        let config = |coordinator: &str, advertise: &str| ClusterConfig {
            coordinator_addr: coordinator.into(),
            advertise_addr: advertise.into(),
            ..ClusterConfig::default()
        };
        let advertised = |c: ClusterConfig| advertised_coordinator(&c, "arc-writer");
        assert_eq!(advertised(config(":9000", "")), "arc-writer:9000");
        assert_eq!(advertised(config("0.0.0.0:9000", "")), "arc-writer:9000");
        assert_eq!(advertised(config("[::]:9000", "")), "arc-writer:9000");
        assert_eq!(advertised(config("10.0.1.10:9000", "")), "10.0.1.10:9000");
        assert_eq!(advertised(config("node-1:9000", "")), "node-1:9000");
        assert_eq!(advertised(config(":9000", "lb:19000")), "lb:19000");
        let bound = |addr: &str| addr.parse().unwrap();
        assert_eq!(
            api_address(&config("10.0.1.10:9000", ""), bound("0.0.0.0:8000")),
            "10.0.1.10:8000"
        );
        assert_eq!(
            api_address(&config(":9000", ""), bound("127.0.0.1:8001")),
            "127.0.0.1:8001"
        );
        let behind_proxy = ClusterConfig {
            api_advertise_addr: "127.0.0.1:18001".into(),
            ..config(":9000", "")
        };
        assert_eq!(
            api_address(&behind_proxy, bound("127.0.0.1:8001")),
            "127.0.0.1:18001"
        );
    }
}
