//! Network policy: which domains a sprite may reach (API.md, Policy).
//!
//! `GET|POST /v1/sprites/{name}/policy/network` carries
//! `{"rules":[{"domain":"x.com"|"*.x.com"|"*","action":"allow"|"deny"} | {"include":"defaults"}]}`.
//!
//! How a name is decided ([`NetworkPolicy::decide`]):
//! - no rules at all: the sprite is unrestricted, every name is allowed;
//! - otherwise the most specific matching rule wins: an exact domain, then the wildcard with
//!   the longest suffix (`*.a.b.com` beats `*.b.com`), then `*`. `*.x.com` matches
//!   `sub.x.com` and deeper names, never `x.com` itself;
//! - at equal specificity `deny` wins, so a user's deny overrides the defaults' allow;
//! - a name no rule matches is denied.
//!
//! Names and domains compare ASCII-case-insensitively and without a trailing dot.
//! `{"include":"defaults"}` stands for one `allow` rule per entry of
//! [`DEFAULT_ALLOWED_DOMAINS`].

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Most rules one policy may have. Wildcards cover many names with one rule, and the DNS
/// forwarder scans every rule for every lookup.
pub const MAX_RULES: usize = 1000;

/// Longest domain name (RFC 1035, without the trailing dot).
pub const MAX_DOMAIN_LENGTH: usize = 253;

/// Longest label of a domain name (RFC 1035).
pub const MAX_LABEL_LENGTH: usize = 63;

/// The only preset `{"include": …}` knows.
pub const DEFAULTS_PRESET: &str = "defaults";

/// What `{"include":"defaults"}` allows: the package registries, source hosts and AI APIs a
/// development box needs to install tools and dependencies, and nothing that serves
/// arbitrary users' content beyond those hosts (no generic object stores or CDNs).
/// Each entry is an `allow` rule; a user's `deny` of the same or a more specific domain
/// still wins.
pub const DEFAULT_ALLOWED_DOMAINS: &[&str] = &[
    // Source hosts (git over HTTPS, release downloads, raw files, GitHub's API).
    "github.com",
    "*.github.com",
    "*.githubusercontent.com",
    "ghcr.io",
    "gitlab.com",
    "*.gitlab.com",
    "bitbucket.org",
    "*.bitbucket.org",
    // Python.
    "pypi.org",
    "files.pythonhosted.org",
    // JavaScript.
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "repo.yarnpkg.com",
    "nodejs.org",
    // Rust (crates and rustup).
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "static.rust-lang.org",
    "sh.rustup.rs",
    // Go (module proxy, checksum database, toolchains).
    "proxy.golang.org",
    "sum.golang.org",
    "go.dev",
    "dl.google.com",
    // Ruby.
    "rubygems.org",
    "index.rubygems.org",
    // Java and Kotlin.
    "repo.maven.apache.org",
    "repo1.maven.org",
    "plugins.gradle.org",
    "services.gradle.org",
    // PHP and .NET.
    "repo.packagist.org",
    "api.nuget.org",
    // Distribution packages (Debian, Ubuntu, Alpine).
    "deb.debian.org",
    "security.debian.org",
    "*.ubuntu.com",
    "dl-cdn.alpinelinux.org",
    // AI APIs.
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
];

/// A network policy document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NetworkPolicy {
    /// Empty: unrestricted.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// One rule: a domain with an action, or a preset to include.
///
/// On the wire a rule is `{"domain":…,"action":…}` or `{"include":…}`; reading anything
/// else (both shapes at once, a domain without an action, an action other than `allow` or
/// `deny`) fails with a message saying what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "WireRule", into = "WireRule")]
pub enum PolicyRule {
    Domain {
        domain: String,
        action: Action,
    },
    Include {
        include: String,
    },
    /// `{"cidr":"10.1.2.0/24","action":"allow"}` (ours): allowed names may resolve into
    /// this private or special-purpose range. Such addresses (private, loopback,
    /// link-local, shared, multicast, reserved, the sprites' own subnet) are never
    /// admitted otherwise, so an allowed name cannot point a sprite at the host's LAN.
    Network {
        cidr: String,
        action: Action,
    },
}

/// What a rule does with the names it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

/// The outcome of [`NetworkPolicy::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl PolicyRule {
    pub fn allow(domain: impl Into<String>) -> Self {
        PolicyRule::Domain {
            domain: domain.into(),
            action: Action::Allow,
        }
    }

    pub fn deny(domain: impl Into<String>) -> Self {
        PolicyRule::Domain {
            domain: domain.into(),
            action: Action::Deny,
        }
    }

    /// `{"cidr":…,"action":"allow"}`.
    pub fn allow_network(cidr: impl Into<String>) -> Self {
        PolicyRule::Network {
            cidr: cidr.into(),
            action: Action::Allow,
        }
    }

    /// `{"include":"defaults"}`.
    pub fn defaults() -> Self {
        PolicyRule::Include {
            include: DEFAULTS_PRESET.to_string(),
        }
    }
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// How specifically a rule matched a name; the derived order is the precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Everything,
    /// A wildcard, by the length of the suffix after `*.`.
    Subdomains(usize),
    Exact,
}

impl NetworkPolicy {
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        NetworkPolicy { rules }
    }

    /// Whether any rule exists; without rules every name is allowed.
    pub fn restricted(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Checks every rule: the count, each domain's syntax and each include's preset.
    /// Actions were already checked when the policy was read.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules {
                count: self.rules.len(),
            });
        }
        for (index, rule) in self.rules.iter().enumerate() {
            match rule {
                PolicyRule::Domain { domain, .. } => {
                    validate_domain(domain).map_err(|error| PolicyError::Domain { index, error })?
                }
                PolicyRule::Include { include } if include != DEFAULTS_PRESET => {
                    return Err(PolicyError::UnknownInclude {
                        index,
                        include: include.clone(),
                    })
                }
                PolicyRule::Include { .. } => {}
                PolicyRule::Network { cidr, action } => {
                    parse_cidr(cidr).map_err(|reason| PolicyError::Network {
                        index,
                        cidr: cidr.clone(),
                        reason,
                    })?;
                    if *action != Action::Allow {
                        return Err(PolicyError::NetworkDeny {
                            index,
                            cidr: cidr.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether an `allow` network rule covers `address` (answers in private and other
    /// special ranges are admitted only then).
    pub fn names_network(&self, address: std::net::Ipv4Addr) -> bool {
        self.rules.iter().any(|rule| match rule {
            PolicyRule::Network {
                cidr,
                action: Action::Allow,
            } => parse_cidr(cidr).is_ok_and(|(network, bits)| in_network(address, network, bits)),
            _ => false,
        })
    }

    /// Every domain rule in force, with `{"include":"defaults"}` expanded (once, however
    /// often it appears). Unknown includes stand for nothing.
    pub fn domain_rules(&self) -> impl Iterator<Item = (&str, Action)> + '_ {
        let defaults = self.rules.iter().any(
            |rule| matches!(rule, PolicyRule::Include { include } if include == DEFAULTS_PRESET),
        );
        let explicit = self.rules.iter().filter_map(|rule| match rule {
            PolicyRule::Domain { domain, action } => Some((domain.as_str(), *action)),
            PolicyRule::Include { .. } | PolicyRule::Network { .. } => None,
        });
        let preset = DEFAULT_ALLOWED_DOMAINS
            .iter()
            .filter(move |_| defaults)
            .map(|domain| (*domain, Action::Allow));
        explicit.chain(preset)
    }

    /// Decides whether the sprite may reach `name` (see the module docs for the rules).
    pub fn decide(&self, name: &str) -> Decision {
        if !self.restricted() {
            return Decision::Allow;
        }
        let name = without_trailing_dot(name);
        let mut best: Option<(Specificity, Action)> = None;
        for (domain, action) in self.domain_rules() {
            let Some(specificity) = specificity(domain, name) else {
                continue;
            };
            best = match best {
                Some((held, _)) if held > specificity => best,
                Some((held, Action::Deny)) if held == specificity => best,
                _ => Some((specificity, action)),
            };
        }
        match best {
            Some((_, Action::Allow)) => Decision::Allow,
            Some((_, Action::Deny)) | None => Decision::Deny,
        }
    }
}

/// How `domain` (a rule) matches `name` (already without its trailing dot), if it does.
fn specificity(domain: &str, name: &str) -> Option<Specificity> {
    let domain = without_trailing_dot(domain);
    if domain == "*" {
        return Some(Specificity::Everything);
    }
    if let Some(suffix) = domain.strip_prefix("*.") {
        let (name, suffix) = (name.as_bytes(), suffix.as_bytes());
        let matches = name.len() > suffix.len() + 1
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            && name[name.len() - suffix.len() - 1] == b'.';
        return matches.then_some(Specificity::Subdomains(suffix.len()));
    }
    domain
        .eq_ignore_ascii_case(name)
        .then_some(Specificity::Exact)
}

/// Parses an IPv4 CIDR (`10.1.2.0/24`): its network address must be the network's own.
pub fn parse_cidr(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (address, bits) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not address/prefix, as in 10.1.2.0/24"))?;
    let address: std::net::Ipv4Addr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
    let bits: u8 = bits
        .parse()
        .ok()
        .filter(|bits| *bits <= 32)
        .ok_or_else(|| format!("{bits:?} is not a prefix length from 0 to 32"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    if u32::from(address) & !mask != 0 {
        return Err(format!(
            "{address} is not the network address of /{bits}; write {}/{bits}",
            std::net::Ipv4Addr::from(u32::from(address) & mask)
        ));
    }
    Ok((address, bits))
}

/// Whether `address` is in `network/bits`.
pub fn in_network(address: std::net::Ipv4Addr, network: std::net::Ipv4Addr, bits: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    u32::from(address) & mask == u32::from(network) & mask
}

/// Ranges a DNS answer never admits unless a network rule names them: "this network",
/// private (RFC 1918), shared (CGNAT, RFC 6598), loopback, link-local, IETF protocol
/// assignments, multicast, reserved and broadcast.
pub const SPECIAL_NETWORKS: [(std::net::Ipv4Addr, u8); 10] = [
    (std::net::Ipv4Addr::new(0, 0, 0, 0), 8),
    (std::net::Ipv4Addr::new(10, 0, 0, 0), 8),
    (std::net::Ipv4Addr::new(100, 64, 0, 0), 10),
    (std::net::Ipv4Addr::new(127, 0, 0, 0), 8),
    (std::net::Ipv4Addr::new(169, 254, 0, 0), 16),
    (std::net::Ipv4Addr::new(172, 16, 0, 0), 12),
    (std::net::Ipv4Addr::new(192, 0, 0, 0), 24),
    (std::net::Ipv4Addr::new(192, 168, 0, 0), 16),
    (std::net::Ipv4Addr::new(224, 0, 0, 0), 4),
    (std::net::Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Whether `address` is in one of [`SPECIAL_NETWORKS`].
pub fn is_special(address: std::net::Ipv4Addr) -> bool {
    SPECIAL_NETWORKS
        .iter()
        .any(|&(network, bits)| in_network(address, network, bits))
}

fn without_trailing_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy has {count} rules; at most {MAX_RULES} are allowed (one wildcard such as *.example.com covers many names)")]
    TooManyRules { count: usize },
    #[error("rules[{index}]: {error}")]
    Domain { index: usize, error: DomainError },
    #[error(
        "rules[{index}]: include {include:?} is not a known preset; the only one is \"defaults\""
    )]
    UnknownInclude { index: usize, include: String },
    #[error("rules[{index}]: cidr {cidr:?}: {reason}")]
    Network {
        index: usize,
        cidr: String,
        reason: String,
    },
    #[error("rules[{index}]: a cidr rule ({cidr}) can only allow: ranges nothing allows are never reached")]
    NetworkDeny { index: usize, cidr: String },
}

/// Why a rule's domain was refused. Where the text looks like a URL or `host:port`, the
/// message names the host to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("domain is empty; write a name such as example.com, *.example.com or *")]
    Empty,
    #[error("domain {domain:?} is a URL; write the host name only: {host}")]
    Scheme { domain: String, host: String },
    #[error("domain {domain:?} has a path; write the host name only: {host}")]
    Path { domain: String, host: String },
    #[error("domain {domain:?} has a port; a rule covers every port, so write {host}")]
    Port { domain: String, host: String },
    #[error("{domain:?} is an IP address; rules match the names a sprite looks up, so write a domain such as example.com")]
    IpAddress { domain: String },
    #[error("domain {domain:?} has a wildcard in the wrong place; a wildcard can only be the whole first label, as in *.example.com, or the whole domain, *")]
    Wildcard { domain: String },
    #[error(
        "domain {domain:?} is {length} characters long; at most {MAX_DOMAIN_LENGTH} are allowed"
    )]
    TooLong { domain: String, length: usize },
    #[error("domain {domain:?} has an empty label; separate labels by single dots, as in api.example.com")]
    EmptyLabel { domain: String },
    #[error("domain {domain:?} has a label of {length} characters; at most {MAX_LABEL_LENGTH} are allowed")]
    LabelTooLong { domain: String, length: usize },
    #[error("domain {domain:?} has the character {character:?}; use letters, digits, - and _ (an international name in its xn-- form)")]
    BadCharacter { domain: String, character: char },
    #[error("domain {domain:?} has a label starting or ending with -")]
    EdgeHyphen { domain: String },
    #[error("domain {domain:?} ends in a numeric label, which no top-level domain is; write a domain such as example.com")]
    NumericTopLevel { domain: String },
}

/// Checks a rule's domain: `*`, `*.example.com` or `example.com`, in any case, with an
/// optional trailing dot; no scheme, port, path, IP address, or wildcard elsewhere.
pub fn validate_domain(domain: &str) -> Result<(), DomainError> {
    let owned = || domain.to_string();
    if domain.is_empty() || domain == "." {
        return Err(DomainError::Empty);
    }
    if domain.contains("://") {
        return Err(DomainError::Scheme {
            domain: owned(),
            host: host_of(domain),
        });
    }
    if domain.contains(['/', '?', '#']) {
        return Err(DomainError::Path {
            domain: owned(),
            host: host_of(domain),
        });
    }
    if domain
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err(DomainError::IpAddress { domain: owned() });
    }
    if domain.contains(':') {
        let host = host_of(domain);
        if host.parse::<IpAddr>().is_ok() {
            return Err(DomainError::IpAddress { domain: owned() });
        }
        return Err(DomainError::Port {
            domain: owned(),
            host,
        });
    }
    let name = without_trailing_dot(domain);
    if name == "*" {
        return Ok(());
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.contains('*') {
        return Err(DomainError::Wildcard { domain: owned() });
    }
    if name.len() > MAX_DOMAIN_LENGTH {
        return Err(DomainError::TooLong {
            domain: owned(),
            length: name.len(),
        });
    }
    for label in body.split('.') {
        if label.is_empty() {
            return Err(DomainError::EmptyLabel { domain: owned() });
        }
        if let Some(character) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(DomainError::BadCharacter {
                domain: owned(),
                character,
            });
        }
        if label.len() > MAX_LABEL_LENGTH {
            return Err(DomainError::LabelTooLong {
                domain: owned(),
                length: label.len(),
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::EdgeHyphen { domain: owned() });
        }
    }
    let top_level = body.rsplit('.').next().unwrap_or(body);
    if top_level.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::NumericTopLevel { domain: owned() });
    }
    Ok(())
}

/// The host part of something written like a URL or `host:port`, lowercased, for the
/// "write this instead" part of a message.
fn host_of(text: &str) -> String {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let rest = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = match rest.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => rest.split(':').next().unwrap_or_default(),
    };
    host.to_ascii_lowercase()
}

/// A rule as it is on the wire: any of the three fields, absent ones left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
struct WireRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    include: Option<String>,
}

/// Why a rule could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleShapeError {
    #[error("a rule is either {{\"domain\":…,\"action\":…}} or {{\"include\":\"defaults\"}}, not both; split it into two rules")]
    Both,
    #[error("a rule needs a domain and an action, or an include, as in {{\"domain\":\"example.com\",\"action\":\"allow\"}} or {{\"include\":\"defaults\"}}")]
    Neither,
    #[error(
        "the rule for domain {0:?} has no action; add \"action\":\"allow\" or \"action\":\"deny\""
    )]
    MissingAction(String),
    #[error(
        "the rule with action {0:?} has no domain; add a domain such as \"domain\":\"example.com\""
    )]
    MissingDomain(String),
    #[error("action {0:?} is not valid; use \"allow\" or \"deny\"")]
    BadAction(String),
}

impl TryFrom<WireRule> for PolicyRule {
    type Error = RuleShapeError;

    fn try_from(wire: WireRule) -> Result<Self, RuleShapeError> {
        if let Some(cidr) = wire.cidr {
            return match (wire.domain, wire.action, wire.include) {
                (None, Some(action), None) => Ok(PolicyRule::Network {
                    cidr,
                    action: parse_action(action)?,
                }),
                (None, None, None) => Err(RuleShapeError::MissingAction(cidr)),
                _ => Err(RuleShapeError::Both),
            };
        }
        match (wire.domain, wire.action, wire.include) {
            (None, None, Some(include)) => Ok(PolicyRule::Include { include }),
            (Some(domain), Some(action), None) => Ok(PolicyRule::Domain {
                domain,
                action: parse_action(action)?,
            }),
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(RuleShapeError::Both),
            (None, None, None) => Err(RuleShapeError::Neither),
            (Some(domain), None, None) => Err(RuleShapeError::MissingAction(domain)),
            (None, Some(action), None) => Err(RuleShapeError::MissingDomain(action)),
        }
    }
}

fn parse_action(action: String) -> Result<Action, RuleShapeError> {
    match action.as_str() {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        _ => Err(RuleShapeError::BadAction(action)),
    }
}

impl From<PolicyRule> for WireRule {
    fn from(rule: PolicyRule) -> Self {
        match rule {
            PolicyRule::Domain { domain, action } => WireRule {
                domain: Some(domain),
                action: Some(action.as_str().to_string()),
                ..WireRule::default()
            },
            PolicyRule::Include { include } => WireRule {
                include: Some(include),
                ..WireRule::default()
            },
            PolicyRule::Network { cidr, action } => WireRule {
                cidr: Some(cidr),
                action: Some(action.as_str().to_string()),
                ..WireRule::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(rules: Vec<PolicyRule>) -> NetworkPolicy {
        NetworkPolicy::new(rules)
    }

    fn parse(json: &str) -> Result<NetworkPolicy, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn wire_format_round_trips_exactly() {
        let json = r#"{"rules":[{"domain":"github.com","action":"allow"},{"domain":"*.evil.com","action":"deny"},{"include":"defaults"},{"domain":"*","action":"deny"}]}"#;
        let policy = parse(json).expect("parse");
        assert_eq!(
            policy.rules,
            vec![
                PolicyRule::allow("github.com"),
                PolicyRule::deny("*.evil.com"),
                PolicyRule::defaults(),
                PolicyRule::deny("*"),
            ]
        );
        assert_eq!(serde_json::to_string(&policy).expect("json"), json);
        assert_eq!(
            serde_json::to_string(&NetworkPolicy::default()).expect("json"),
            r#"{"rules":[]}"#
        );
    }

    #[test]
    fn network_rules_name_private_ranges_a_name_may_resolve_into() {
        let policy = parse(
            r#"{"rules":[{"domain":"intranet.test","action":"allow"},{"cidr":"10.1.0.0/16","action":"allow"}]}"#,
        )
        .expect("parse");
        assert!(policy.validate().is_ok());
        assert!(policy.names_network("10.1.2.3".parse().expect("ip")));
        assert!(!policy.names_network("10.2.0.1".parse().expect("ip")));
        assert_eq!(
            serde_json::to_string(&policy).expect("json"),
            r#"{"rules":[{"domain":"intranet.test","action":"allow"},{"cidr":"10.1.0.0/16","action":"allow"}]}"#
        );
        let bad = |json: &str| {
            parse(json)
                .map_err(|e| e.to_string())
                .and_then(|p| p.validate().map_err(|e| e.to_string()))
                .expect_err("refused")
        };
        assert!(
            bad(r#"{"rules":[{"cidr":"10.1.2.3/16","action":"allow"}]}"#).contains("10.1.0.0/16")
        );
        assert!(bad(r#"{"rules":[{"cidr":"10.1.0.0/33","action":"allow"}]}"#).contains("prefix"));
        assert!(bad(r#"{"rules":[{"cidr":"10.1.0.0/16","action":"deny"}]}"#).contains("only allow"));
        assert!(bad(r#"{"rules":[{"cidr":"10.1.0.0/16"}]}"#).contains("no action"));
        assert!(
            bad(r#"{"rules":[{"cidr":"10.1.0.0/16","domain":"a.com","action":"allow"}]}"#)
                .contains("not both")
        );
        for special in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "172.20.0.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.1.2.3",
            "255.255.255.255",
        ] {
            assert!(is_special(special.parse().expect("ip")), "{special}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "198.18.0.1"] {
            assert!(!is_special(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn reads_what_the_python_sdk_sends() {
        // The SDK drops fields that are None; an explicit null reads the same as absent,
        // and an empty body or empty rules mean unrestricted.
        let policy = parse(r#"{"rules":[{"domain":"a.com","action":"deny","include":null}]}"#)
            .expect("parse");
        assert_eq!(policy.rules, vec![PolicyRule::deny("a.com")]);
        assert!(!parse("{}").expect("parse").restricted());
        assert!(!parse(r#"{"rules":[]}"#).expect("parse").restricted());
        // Fields we do not know are ignored, so a newer client still gets through.
        let policy = parse(r#"{"rules":[{"include":"defaults","comment":"x"}]}"#).expect("parse");
        assert_eq!(policy.rules, vec![PolicyRule::defaults()]);
    }

    #[test]
    fn badly_shaped_rules_say_what_to_write() {
        let cases = [
            (
                r#"{"rules":[{"domain":"a.com","action":"allow","include":"defaults"}]}"#,
                "not both",
            ),
            (r#"{"rules":[{}]}"#, "needs a domain and an action"),
            (r#"{"rules":[{"domain":"a.com"}]}"#, "has no action"),
            (r#"{"rules":[{"action":"allow"}]}"#, "has no domain"),
            (
                r#"{"rules":[{"domain":"a.com","action":"permit"}]}"#,
                r#"action "permit" is not valid; use "allow" or "deny""#,
            ),
            (
                r#"{"rules":[{"domain":"a.com","action":"ALLOW"}]}"#,
                "is not valid",
            ),
        ];
        for (json, expected) in cases {
            let error = parse(json).expect_err(json).to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn accepts_the_three_domain_forms() {
        for domain in [
            "*",
            "*.",
            "example.com",
            "EXAMPLE.Com",
            "example.com.",
            "*.example.com",
            "*.Example.COM.",
            "a-b.c_d.example",
            "localhost",
            "xn--bcher-kva.example",
            "*.com",
            "1password.com",
            &format!("{}.com", "a".repeat(63)),
        ] {
            assert_eq!(validate_domain(domain), Ok(()), "{domain}");
        }
    }

    #[test]
    fn refuses_bad_domains_and_names_the_fix() {
        let cases: &[(&str, &str)] = &[
            ("", "domain is empty"),
            (".", "domain is empty"),
            (
                "https://GitHub.com/org/repo",
                "is a URL; write the host name only: github.com",
            ),
            (
                "http://user@x.com:8080/",
                "is a URL; write the host name only: x.com",
            ),
            ("x.com/path", "has a path; write the host name only: x.com"),
            ("x.com?q=1", "has a path"),
            (
                "x.com:443",
                "has a port; a rule covers every port, so write x.com",
            ),
            ("*.x.com:443", "so write *.x.com"),
            ("10.0.0.1", "is an IP address"),
            ("::1", "is an IP address"),
            ("[2001:db8::1]", "is an IP address"),
            ("[2001:db8::1]:443", "is an IP address"),
            ("10.0.0.300", "ends in a numeric label"),
            ("*example.com", "wildcard in the wrong place"),
            ("a.*.com", "wildcard in the wrong place"),
            ("*.*.com", "wildcard in the wrong place"),
            ("example.*", "wildcard in the wrong place"),
            ("**", "wildcard in the wrong place"),
            ("a..com", "empty label"),
            (".a.com", "empty label"),
            ("a b.com", "the character ' '"),
            (" a.com", "the character ' '"),
            ("bücher.de", "the character 'ü'"),
            ("-a.com", "starting or ending with -"),
            ("a-.com", "starting or ending with -"),
        ];
        for (domain, expected) in cases {
            let error = validate_domain(domain).expect_err(domain).to_string();
            assert!(error.contains(expected), "{domain}: {error}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            validate_domain(&long_label),
            Err(DomainError::LabelTooLong { length: 64, .. })
        ));
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert!(matches!(
            validate_domain(&long_name),
            Err(DomainError::TooLong { length: 259, .. })
        ));
    }

    #[test]
    fn validate_checks_count_domains_and_includes_with_the_rule_index() {
        assert_eq!(NetworkPolicy::default().validate(), Ok(()));
        let good = policy(vec![PolicyRule::defaults(), PolicyRule::allow("*.a.com")]);
        assert_eq!(good.validate(), Ok(()));

        let bad_domain = policy(vec![
            PolicyRule::allow("a.com"),
            PolicyRule::deny("https://b.com"),
        ]);
        let error = bad_domain.validate().expect_err("bad domain");
        assert!(matches!(error, PolicyError::Domain { index: 1, .. }));
        assert!(error
            .to_string()
            .starts_with("rules[1]: domain \"https://b.com\""));

        let bad_include = policy(vec![PolicyRule::Include {
            include: "everything".into(),
        }]);
        assert_eq!(
            bad_include.validate().expect_err("include").to_string(),
            "rules[0]: include \"everything\" is not a known preset; the only one is \"defaults\""
        );

        let at_limit = policy(vec![PolicyRule::allow("a.com"); MAX_RULES]);
        assert_eq!(at_limit.validate(), Ok(()));
        let over = policy(vec![PolicyRule::allow("a.com"); MAX_RULES + 1]);
        assert_eq!(
            over.validate(),
            Err(PolicyError::TooManyRules {
                count: MAX_RULES + 1
            })
        );
    }

    #[test]
    fn every_default_is_a_valid_allow_rule_and_listed_once() {
        for domain in DEFAULT_ALLOWED_DOMAINS {
            assert_eq!(validate_domain(domain), Ok(()), "{domain}");
            assert_eq!(domain.to_ascii_lowercase(), *domain);
        }
        let mut sorted = DEFAULT_ALLOWED_DOMAINS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DEFAULT_ALLOWED_DOMAINS.len());
    }

    #[test]
    fn no_rules_allows_everything() {
        let open = NetworkPolicy::default();
        assert!(!open.restricted());
        for name in ["example.com", "", ".", "anything.at.all."] {
            assert_eq!(open.decide(name), Decision::Allow, "{name}");
        }
    }

    #[test]
    fn unmatched_names_are_denied() {
        let only = policy(vec![PolicyRule::allow("allowed.test")]);
        assert!(only.restricted());
        assert_eq!(only.decide("allowed.test"), Decision::Allow);
        assert_eq!(only.decide("denied.test"), Decision::Deny);
        assert_eq!(only.decide("sub.allowed.test"), Decision::Deny);
        assert_eq!(only.decide("test"), Decision::Deny);
        assert_eq!(only.decide(""), Decision::Deny);
    }

    #[test]
    fn names_compare_without_case_or_trailing_dot() {
        let rules = policy(vec![
            PolicyRule::allow("Example.COM."),
            PolicyRule::allow("*.Sub.Example.net"),
        ]);
        for name in [
            "example.com",
            "EXAMPLE.com.",
            "a.sub.example.NET",
            "A.SUB.EXAMPLE.NET.",
        ] {
            assert_eq!(rules.decide(name), Decision::Allow, "{name}");
        }
        assert_eq!(rules.decide("example.com.."), Decision::Deny);
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let rules = policy(vec![PolicyRule::allow("*.x.com")]);
        assert_eq!(rules.decide("sub.x.com"), Decision::Allow);
        assert_eq!(rules.decide("a.b.c.x.com"), Decision::Allow);
        assert_eq!(rules.decide("x.com"), Decision::Deny);
        assert_eq!(rules.decide("evilx.com"), Decision::Deny);
        assert_eq!(rules.decide("x.com.evil.net"), Decision::Deny);
        assert_eq!(rules.decide(".x.com"), Decision::Deny);
    }

    #[test]
    fn the_most_specific_rule_wins_whatever_the_order() {
        let rules = vec![
            PolicyRule::deny("*"),
            PolicyRule::allow("*.b.com"),
            PolicyRule::deny("*.a.b.com"),
            PolicyRule::allow("ok.a.b.com"),
            PolicyRule::allow("*.c.com"),
        ];
        let cases = [
            ("other.org", Decision::Deny),
            ("x.b.com", Decision::Allow),
            ("b.com", Decision::Deny),
            ("x.a.b.com", Decision::Deny),
            ("a.b.com", Decision::Allow),
            ("ok.a.b.com", Decision::Allow),
            ("deep.ok.a.b.com", Decision::Deny),
            ("y.c.com", Decision::Allow),
        ];
        let mut reversed = rules.clone();
        reversed.reverse();
        for rules in [policy(rules), policy(reversed)] {
            for (name, expected) in cases {
                assert_eq!(rules.decide(name), expected, "{name} under {rules:?}");
            }
        }
    }

    #[test]
    fn a_blocklist_is_star_allow_plus_denies() {
        let rules = policy(vec![
            PolicyRule::allow("*"),
            PolicyRule::deny("evil.com"),
            PolicyRule::deny("*.evil.com"),
        ]);
        assert_eq!(rules.decide("good.org"), Decision::Allow);
        assert_eq!(rules.decide("evil.com"), Decision::Deny);
        assert_eq!(rules.decide("cdn.evil.com"), Decision::Deny);
    }

    #[test]
    fn deny_wins_at_equal_specificity() {
        for rules in [
            vec![PolicyRule::allow("a.com"), PolicyRule::deny("A.com.")],
            vec![PolicyRule::deny("a.com"), PolicyRule::allow("a.com")],
        ] {
            assert_eq!(policy(rules).decide("a.com"), Decision::Deny);
        }
        let wildcards = policy(vec![
            PolicyRule::deny("*.a.com"),
            PolicyRule::allow("*.a.com"),
        ]);
        assert_eq!(wildcards.decide("x.a.com"), Decision::Deny);
        let stars = policy(vec![PolicyRule::allow("*"), PolicyRule::deny("*")]);
        assert_eq!(stars.decide("x.a.com"), Decision::Deny);
    }

    #[test]
    fn defaults_expand_to_the_preset_and_a_users_deny_overrides_them() {
        let defaults = policy(vec![PolicyRule::defaults()]);
        assert!(defaults.restricted());
        for name in [
            "github.com",
            "api.github.com",
            "objects.githubusercontent.com",
            "pypi.org",
            "files.pythonhosted.org",
            "registry.npmjs.org",
            "crates.io",
            "static.crates.io",
            "index.crates.io",
            "deb.debian.org",
            "security.debian.org",
            "archive.ubuntu.com",
            "proxy.golang.org",
            "sum.golang.org",
            "rubygems.org",
            "api.anthropic.com",
            "api.openai.com",
        ] {
            assert_eq!(defaults.decide(name), Decision::Allow, "{name}");
        }
        for name in [
            "example.com",
            "githubusercontent.com",
            "ubuntu.com",
            "evil.org",
        ] {
            assert_eq!(defaults.decide(name), Decision::Deny, "{name}");
        }
        assert_eq!(
            defaults.domain_rules().count(),
            DEFAULT_ALLOWED_DOMAINS.len()
        );

        let twice = policy(vec![PolicyRule::defaults(), PolicyRule::defaults()]);
        assert_eq!(twice.domain_rules().count(), DEFAULT_ALLOWED_DOMAINS.len());

        let overridden = policy(vec![
            PolicyRule::defaults(),
            PolicyRule::deny("github.com"),
            PolicyRule::deny("*.githubusercontent.com"),
            PolicyRule::allow("example.com"),
        ]);
        assert_eq!(overridden.decide("github.com"), Decision::Deny);
        assert_eq!(
            overridden.decide("raw.githubusercontent.com"),
            Decision::Deny
        );
        assert_eq!(overridden.decide("api.github.com"), Decision::Allow);
        assert_eq!(overridden.decide("example.com"), Decision::Allow);
    }

    #[test]
    fn an_unknown_include_stands_for_nothing() {
        let rules = policy(vec![PolicyRule::Include {
            include: "everything".into(),
        }]);
        assert!(rules.restricted());
        assert_eq!(rules.domain_rules().count(), 0);
        assert_eq!(rules.decide("github.com"), Decision::Deny);
    }

    fn rule_strategy() -> impl Strategy<Value = PolicyRule> {
        let domain = prop_oneof![
            Just("*".to_string()),
            "[a-c]{1,2}(\\.[a-c]{1,2}){0,2}",
            "\\*\\.[a-c]{1,2}(\\.[a-c]{1,2}){0,2}",
        ];
        prop_oneof![
            (domain.clone()).prop_map(PolicyRule::allow),
            domain.prop_map(PolicyRule::deny),
            Just(PolicyRule::defaults()),
        ]
    }

    proptest! {
        #[test]
        fn decide_never_panics_and_ignores_case_and_trailing_dot(
            rules in proptest::collection::vec(rule_strategy(), 0..8),
            name in "[a-cA-C.\\u{e9}]{0,10}",
        ) {
            let policy = NetworkPolicy::new(rules);
            let decision = policy.decide(&name);
            prop_assert_eq!(policy.decide(&name.to_ascii_uppercase()), decision);
            if !name.ends_with('.') {
                prop_assert_eq!(policy.decide(&format!("{name}.")), decision);
            }
        }

        #[test]
        fn rules_round_trip(rules in proptest::collection::vec(rule_strategy(), 0..8)) {
            let policy = NetworkPolicy::new(rules);
            let json = serde_json::to_string(&policy).expect("json");
            let back: NetworkPolicy = serde_json::from_str(&json).expect("parse");
            prop_assert_eq!(back, policy);
        }

        #[test]
        fn validate_domain_never_panics(domain in "\\PC{0,40}") {
            let _ = validate_domain(&domain);
        }
    }
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use crate::fuzz::{budget, fuzz};

    /// Policy documents as a client posts them: reading, validating and deciding never
    /// panic, and a valid policy survives a round trip unchanged.
    #[test]
    fn fuzz_policy_json() {
        let seeds: &[&[u8]] = &[
            br#"{"rules":[{"domain":"github.com","action":"allow"},{"include":"defaults"}]}"#,
            br#"{"rules":[{"domain":"*.x.com","action":"deny"},{"domain":"*","action":"allow"}]}"#,
            br#"{"rules":[{"cidr":"10.1.0.0/16","action":"allow"}]}"#,
            br#"{"rules":[]}"#,
        ];
        let dictionary: &[&[u8]] = &[
            b"\"domain\"",
            b"\"cidr\"",
            b"\"action\"",
            b"\"allow\"",
            b"\"deny\"",
            b"*.",
            b"/32",
            b"\"include\"",
        ];
        fuzz("policy json", budget(), seeds, dictionary, |input| {
            let Ok(policy) = serde_json::from_slice::<NetworkPolicy>(input) else {
                return;
            };
            if policy.validate().is_ok() {
                for name in ["github.com", "a.x.com", "x.com", "", "."] {
                    let _ = policy.decide(name);
                }
                let _ = policy.names_network(std::net::Ipv4Addr::new(10, 1, 2, 3));
                let json = serde_json::to_vec(&policy).expect("encode");
                let again: NetworkPolicy = serde_json::from_slice(&json).expect("decode");
                assert_eq!(again, policy);
            }
        });
    }
}

/// `GET|POST /v1/sprites/{name}/policy/resources`: a sprite's limits. A POST changes
/// the fields it names, live for a running sprite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryPolicy {
    pub limit_mb: u64,
    /// Growing the limit by itself under pressure: not done here (always false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuPolicy {
    pub cpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskPolicy {
    pub storage_gb: u64,
}

/// `GET|POST|DELETE /v1/sprites/{name}/policy/privileges`, as the JS SDK types it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivilegesPolicy {
    /// `""`, `minimal`, `standard` or `privileged`; sprites here run `standard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privileges: Option<bool>,
}

impl PrivilegesPolicy {
    /// The one profile this daemon runs sprites with (docs/threat-model.md).
    pub fn standard() -> PrivilegesPolicy {
        PrivilegesPolicy {
            profile: Some("standard".into()),
            devices: Some(Vec::new()),
            no_new_privileges: Some(false),
        }
    }

    /// Accepts a request that asks for what sprites have; explains anything else.
    pub fn check(&self) -> Result<(), String> {
        let profile = self.profile.as_deref().unwrap_or("");
        if !["", "standard"].contains(&profile) {
            return Err(format!(
                "profile {profile:?} is not available: every sprite here runs the standard profile (its own user, pid, mount and network namespaces, seccomp, no host devices; docs/threat-model.md); rootless containers inside are the daemon setting nested_containers"
            ));
        }
        if self.devices.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err("devices: host devices are not passed into sprites; ask for none".into());
        }
        if self.no_new_privileges == Some(true) {
            return Err(
                "no_new_privileges: sprites keep sudo (setuid) inside; it cannot be set here"
                    .into(),
            );
        }
        Ok(())
    }
}
