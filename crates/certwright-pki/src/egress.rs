//! Where a backend may connect: the egress policy the controller applies to the issuers a
//! tenant writes.
//!
//! A namespaced issuer's URLs (and its Kerberos KDC) are chosen by whoever may write in
//! its namespace. Without a policy, that person could make the controller connect to the
//! API server, the cloud metadata service, its own loopback or anything else it can
//! reach. [`EgressPolicy`] names what is refused (always loopback, link-local,
//! unspecified and multicast addresses; and whatever the controller adds: the API
//! server's and its own addresses) and, optionally, the only hosts and networks that may
//! be reached. Names are resolved once and the resolved address is what is checked and
//! connected to, so a name that resolves differently later (DNS rebinding) gains nothing.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Hosts and networks a backend may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// When not empty, only these host names (`pki.corp.example`, or `*.corp.example`
    /// for any name under it) and networks may be reached.
    allow_hosts: Vec<String>,
    allow_nets: Vec<IpNet>,
    /// Never reached, whatever is allowed.
    deny_nets: Vec<IpNet>,
}

/// Networks no issuer a tenant writes may reach: this host (loopback), link-local
/// (which holds the cloud metadata services, 169.254.169.254 and fd00:ec2::254 aside),
/// the unspecified address (which connects to this host), multicast and broadcast.
const ALWAYS_DENIED: &[&str] = &[
    "127.0.0.0/8",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::1/128",
    "::/128",
    "fe80::/10",
    "ff00::/8",
    // AWS's IPv6 instance metadata and EKS Pod Identity; Alibaba's and Azure's metadata
    // and wire server, outside link-local.
    "fd00:ec2::/32",
    "100.100.100.200/32",
    "168.63.129.16/32",
];

/// Why a connection is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The host as the configuration names it.
    pub host: String,
    /// The address it resolved to, when it was resolved.
    pub addr: Option<IpAddr>,
    /// What rule refused it.
    pub why: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(addr) if addr.to_string() != self.host => write!(
                f,
                "the egress policy refuses {} ({addr}): {}",
                self.host, self.why
            ),
            _ => write!(f, "the egress policy refuses {}: {}", self.host, self.why),
        }
    }
}

impl std::error::Error for Refused {}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_hosts: Vec::new(),
            allow_nets: Vec::new(),
            deny_nets: ALWAYS_DENIED
                .iter()
                .filter_map(|net| net.parse().ok())
                .collect(),
        }
    }
}

impl EgressPolicy {
    /// The policy with its fixed denials only: loopback, link-local, unspecified,
    /// multicast, broadcast.
    pub fn new() -> Self {
        EgressPolicy::default()
    }

    /// Allows a host name (`pki.corp.example`), every name under a domain
    /// (`*.corp.example`), an address or a network (`10.20.0.0/16`). Once anything is
    /// allowed, nothing else is.
    ///
    /// # Errors
    /// A sentence saying why `entry` is neither a host pattern nor a network.
    pub fn allow(mut self, entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        if let Some(net) = parse_net(entry) {
            self.allow_nets.push(net);
            return Ok(self);
        }
        let host = entry.strip_prefix("*.").unwrap_or(entry);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "{entry:?} is neither a host name, *.domain, an address nor a CIDR network"
            ));
        }
        self.allow_hosts.push(entry.to_ascii_lowercase());
        Ok(self)
    }

    /// Refuses an address or a network (`10.96.0.1`, `10.0.0.0/8`) besides the fixed
    /// denials.
    ///
    /// # Errors
    /// A sentence saying why `entry` is not an address or a network.
    pub fn deny(mut self, entry: &str) -> Result<Self, String> {
        let net = parse_net(entry.trim())
            .ok_or_else(|| format!("{entry:?} is not an address or a CIDR network"))?;
        self.deny_nets.push(net);
        Ok(self)
    }

    /// Refuses one address (the API server's, the controller's own).
    pub fn deny_addr(mut self, addr: IpAddr) -> Self {
        self.deny_nets.push(IpNet::from(canonical(addr)));
        self
    }

    /// Whether `host`, resolved to `addr`, may be reached.
    ///
    /// # Errors
    /// [`Refused`], naming the rule.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Refused> {
        let addr = canonical(addr);
        let refuse = |why: String| Refused {
            host: host.to_string(),
            addr: Some(addr),
            why,
        };
        if let Some(net) = self.deny_nets.iter().find(|net| net.contains(&addr)) {
            return Err(refuse(format!("{net} is not reachable from issuers")));
        }
        if self.allow_hosts.is_empty() && self.allow_nets.is_empty() {
            return Ok(());
        }
        let host_allowed = self.allow_hosts.iter().any(|pattern| {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == *pattern,
            }
        });
        if host_allowed || self.allow_nets.iter().any(|net| net.contains(&addr)) {
            return Ok(());
        }
        Err(refuse(
            "not among the hosts and networks issuers may reach (--egress-allow)".to_string(),
        ))
    }

    /// What can be decided from the configuration alone, before any name is resolved:
    /// an address written as the host, and names that always mean this host or the
    /// cluster's API server. For the webhook, which resolves nothing.
    ///
    /// # Errors
    /// [`Refused`], naming the rule.
    pub fn check_static(&self, host: &str) -> Result<(), Refused> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(addr) = bare.parse::<IpAddr>() {
            return self.check(bare, addr).map_err(|mut refused| {
                refused.addr = None;
                refused
            });
        }
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        let local = name == "localhost" || name.ends_with(".localhost");
        let api_server = name == "kubernetes"
            || name == "kubernetes.default"
            || name.starts_with("kubernetes.default.svc");
        let metadata = name == "metadata.google.internal" || name == "metadata";
        if local || api_server || metadata {
            return Err(Refused {
                host: host.to_string(),
                addr: None,
                why: "names this host, the cluster's API server or a metadata service".to_string(),
            });
        }
        // With only host names allowed, a name can be judged without resolving it.
        let named = self
            .allow_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => name.ends_with(&format!(".{domain}")),
                None => name == *pattern,
            });
        if !self.allow_hosts.is_empty() && self.allow_nets.is_empty() && !named {
            return Err(Refused {
                host: host.to_string(),
                addr: None,
                why: "not among the hosts issuers may reach (--egress-allow)".to_string(),
            });
        }
        Ok(())
    }
}

/// An IPv6 address that carries an IPv4 one is checked as the IPv4 address it reaches:
/// mapped (`::ffff:127.0.0.1`), compatible (`::127.0.0.1`), NAT64 (`64:ff9b::/96`,
/// `64:ff9b:1::/48`) and 6to4 (`2002::/16`).
fn canonical(addr: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = addr else {
        return addr;
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return IpAddr::V4(mapped);
    }
    let v4 = |hi: u16, lo: u16| {
        IpAddr::V4(std::net::Ipv4Addr::from(
            (u32::from(hi) << 16) | u32::from(lo),
        ))
    };
    match v6.segments() {
        // Compatible (deprecated), but not :: and ::1, which are IPv6's own.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => v4(hi, lo),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x64, 0xff9b, 1, _, _, _, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => addr,
    }
}

fn parse_net(entry: &str) -> Option<IpNet> {
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|net| net.trunc())
}

/// The [`Refused`] inside an error chain, if a policy refused the connection.
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(refused) = io.get_ref().and_then(|i| i.downcast_ref::<Refused>())
        {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn this_host_link_local_and_metadata_are_always_refused() {
        let policy = EgressPolicy::new();
        for addr in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "224.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "100.100.100.200",
            "168.63.129.16",
        ] {
            let refused = policy.check("x", ip(addr)).expect_err(addr);
            assert!(
                refused.to_string().contains("egress policy refuses"),
                "{refused}"
            );
        }
        for addr in ["10.1.2.3", "192.0.2.7", "2001:db8::1", "172.16.0.1"] {
            assert_eq!(policy.check("pki", ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn added_denials_and_an_allow_list() {
        let policy = EgressPolicy::new()
            .deny("10.96.0.0/12")
            .expect("cidr")
            .deny_addr(ip("10.0.0.5"))
            .allow("*.corp.example")
            .expect("domain")
            .allow("192.0.2.0/24")
            .expect("cidr");
        assert!(policy.check("kubernetes", ip("10.96.0.1")).is_err());
        assert!(policy.check("pod", ip("10.0.0.5")).is_err());
        assert_eq!(policy.check("pki.corp.example", ip("10.1.1.1")), Ok(()));
        assert_eq!(policy.check("PKI.Corp.Example.", ip("10.1.1.1")), Ok(()));
        assert!(policy.check("corp.example.evil", ip("10.1.1.1")).is_err());
        assert!(policy.check("evilcorp.example", ip("10.1.1.1")).is_err());
        assert_eq!(policy.check("anything", ip("192.0.2.9")), Ok(()));
        // A denial wins over an allowed name.
        assert!(policy.check("pki.corp.example", ip("127.0.0.1")).is_err());
        assert!(EgressPolicy::new().allow("not a host!").is_err());
        assert!(EgressPolicy::new().deny("pki.corp.example").is_err());
    }

    #[test]
    fn static_checks_need_no_resolver() {
        let policy = EgressPolicy::new();
        for host in [
            "127.0.0.1",
            "[::1]",
            "169.254.169.254",
            "localhost",
            "api.localhost",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "metadata.google.internal",
        ] {
            assert!(policy.check_static(host).is_err(), "{host}");
        }
        for host in ["pki.corp.example", "10.1.2.3"] {
            assert_eq!(policy.check_static(host), Ok(()), "{host}");
        }
        let named = EgressPolicy::new().allow("*.corp.example").expect("domain");
        assert_eq!(named.check_static("pki.corp.example"), Ok(()));
        assert!(named.check_static("pki.other.example").is_err());
        assert!(named.check_static("10.1.2.3").is_err());
    }
}
