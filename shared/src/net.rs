//! Which webhook targets are allowed: the SSRF guard shared by the catalog and the dispatcher.
//!
//! The catalog refuses URLs whose host is a forbidden address or name; the
//! dispatcher applies the same rules to every address a name resolves to, and
//! connects only to an address it checked.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::Serialize;

/// The networks webhooks may not reach, minus the operator's exemptions.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    allowed: Vec<IpNet>,
}

impl TargetPolicy {
    /// A policy that exempts `allowed` (from `ANIKA_ALLOWED_TARGET_NETS`) from the block.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// `Err(reason)` when `ip` may not be contacted.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let canonical = ip.to_canonical();
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return Ok(());
        }
        match blocked_reason(ip) {
            Some(reason) => Err(format!("{ip} is {reason}")),
            None => Ok(()),
        }
    }

    /// `Err(reason)` when a host name is one that always points inside.
    pub fn check_name(&self, host: &str) -> Result<(), String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let loopback_name = host == "localhost" || host.ends_with(".localhost");
        if loopback_name {
            return if self.check_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).is_ok() {
                Ok(())
            } else {
                Err(format!("`{host}` is a loopback name"))
            };
        }
        let internal = [
            "metadata",
            "metadata.google.internal",
            "instance-data",
            "instance-data.ec2.internal",
        ];
        if internal.contains(&host.as_str())
            || host.ends_with(".internal")
            || host.ends_with(".local")
        {
            return Err(format!("`{host}` is an internal name"));
        }
        if !host.contains('.') {
            return Err(format!("`{host}` is not a fully qualified domain name"));
        }
        Ok(())
    }
}

fn v4(net: &str) -> IpNet {
    net.parse().expect("static CIDR")
}

/// Why an address is never a legitimate public webhook target, if it is not.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => blocked_v4(ip),
        IpAddr::V6(ip) => blocked_v6(ip),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let table: [(&str, &'static str); 16] = [
        ("0.0.0.0/8", "in 'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "a private address (10.0.0.0/8)"),
        (
            "100.64.0.0/10",
            "a carrier-grade NAT address (100.64.0.0/10)",
        ),
        ("127.0.0.0/8", "a loopback address"),
        (
            "169.254.0.0/16",
            "a link-local or cloud metadata address (169.254.0.0/16)",
        ),
        ("172.16.0.0/12", "a private address (172.16.0.0/12)"),
        ("192.0.0.0/24", "an IETF protocol address (192.0.0.0/24)"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address (192.168.0.0/16)"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("255.255.255.255/32", "the broadcast address"),
    ];
    table
        .iter()
        .find(|(net, _)| v4(net).contains(&IpAddr::V4(ip)))
        .map(|(_, reason)| *reason)
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.to_ipv4_mapped().is_some() {
        return Some("an IPv4-mapped IPv6 address");
    }
    let table: [(&str, &'static str); 12] = [
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("::/96", "an IPv4-compatible IPv6 address"),
        ("64:ff9b::/96", "a NAT64 address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo address"),
        ("2001:db8::/32", "a documentation address"),
        ("2002::/16", "a 6to4 address"),
        ("fc00::/7", "a unique local address (fc00::/7)"),
        ("fe80::/10", "a link-local address"),
        ("ff00::/8", "a multicast address"),
    ];
    table
        .iter()
        .find(|(net, _)| v4(net).contains(&IpAddr::V6(ip)))
        .map(|(_, reason)| *reason)
}

fn check_host(url: &url::Url, policy: &TargetPolicy) -> Result<(), String> {
    match url.host() {
        None => Err("the URL has no host".into()),
        Some(url::Host::Ipv4(ip)) => policy.check_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => policy.check_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => policy.check_name(name),
    }
}

/// An http(s) URL whose host passed the [`TargetPolicy`] when it was parsed.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    /// Parses and checks a webhook URL; the error says what is wrong with it.
    pub fn parse(text: &str, policy: &TargetPolicy) -> Result<Self, String> {
        if text.len() > 2048 {
            return Err("a URL has at most 2048 characters".into());
        }
        // The WHATWG parser would silently drop these; a URL that needs them is a mistake.
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("a URL must not contain whitespace or control characters".into());
        }
        let mut url = url::Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the scheme must be http or https, not `{}`",
                url.scheme()
            ));
        }
        check_host(&url, policy)?;
        url.set_fragment(None);
        Ok(Self(url))
    }

    /// Checks the host against `policy` again, without parsing the URL again
    /// (cheap enough for every delivery).
    pub fn check_host(&self, policy: &TargetPolicy) -> Result<(), String> {
        check_host(&self.0, policy)
    }

    /// The URL.
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<WebhookUrl> for String {
    fn from(value: WebhookUrl) -> Self {
        value.0.into()
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials in the user-info part never reach a log.
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Cannot fail: a URL with a password has a host.
            let _ = shown.set_password(Some("***"));
        }
        write!(f, "WebhookUrl({shown})")
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        WebhookUrl::parse(url, &TargetPolicy::default()).expect_err(url)
    }

    #[test]
    fn public_https_urls_pass() {
        for url in [
            "https://bank.example.com/hooks",
            "http://93.184.216.34:8080/x?y=1",
            "https://[2606:4700::1111]/",
        ] {
            assert!(
                WebhookUrl::parse(url, &TargetPolicy::default()).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn every_blocked_form_is_refused() {
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://10.1.2.3/",
            "http://172.20.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:8.8.8.8]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:7f00:1::]/",
            "http://[ff02::1]/",
            "http://localhost/",
            "http://api.localhost/",
            "http://metadata.google.internal/",
            "http://printer.local/",
            "http://intranet/",
            "https://example.com/\u{0}",
            " https://example.com/",
        ] {
            let reason = refused(url);
            assert!(!reason.is_empty(), "{url}");
        }
    }

    #[test]
    fn allowed_nets_exempt_their_addresses_only() {
        let policy = TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(WebhookUrl::parse("http://127.0.0.1:9000/hook", &policy).is_ok());
        assert!(WebhookUrl::parse("http://localhost:9000/hook", &policy).is_ok());
        assert!(WebhookUrl::parse("http://[::ffff:127.0.0.1]/", &policy).is_ok());
        assert!(WebhookUrl::parse("http://10.0.0.1/", &policy).is_err());
    }

    #[test]
    fn credentials_are_hidden_when_printed() {
        let url = WebhookUrl::parse("https://u:pw@example.com/", &TargetPolicy::default()).unwrap();
        assert!(!format!("{url:?}").contains("pw"));
    }
}
