//! Validation of `backends_dns` and the `[dns]` section.

use std::net::SocketAddr;

use toml::Spanned;

use super::error::Source;
use super::parse::millis;
use super::schema::RawDns;
use super::{ConfigError, Dns, DnsName};

/// `"_http._tcp.api.internal"` (SRV) or `"api.internal:8080"` (A records).
pub(super) fn backends_dns(src: &Source<'_>, v: &Spanned<String>) -> Result<DnsName, ConfigError> {
    let text = v.get_ref().trim();
    let bad = |why: &str| {
        src.at(
            v,
            format!(
                "listener.backends_dns = {:?}: {why} (e.g. \"_http._tcp.api.internal\" for SRV records or \"api.internal:8080\" for A records)",
                v.get_ref()
            ),
        )
    };
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port after ':' is not 1-65535"))?;
            (host, Some(port))
        }
        None => (text, None),
    };
    check_name(host).map_err(|why| bad(&why))?;
    match port {
        Some(port) => Ok(DnsName::A {
            host: host.to_string(),
            port,
        }),
        // RFC 2782: the SRV owner name is _Service._Proto.Name.
        None if host.starts_with('_')
            && host.split('.').nth(1).is_some_and(|p| p.starts_with('_')) =>
        {
            Ok(DnsName::Srv(host.to_string()))
        }
        None => Err(bad(
            "neither an SRV name (_service._proto.name) nor a name:port for A records",
        )),
    }
}

/// A domain name as RFC 1035 2.3.4 bounds it: at most 253 characters
/// written out, labels of 1-63 characters.
fn check_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 253 {
        return Err("the name is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{label:?} is not a DNS label (1-63 characters)"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("{label:?}: letters, digits, '-' and '_' only"));
        }
    }
    Ok(())
}

pub(super) fn section(src: &Source<'_>, d: &RawDns) -> Result<Dns, ConfigError> {
    let defaults = Dns::default();
    let resolvers = match &d.resolvers {
        None => None,
        Some(list) if list.get_ref().is_empty() => {
            return Err(src.at(
                list,
                "dns.resolvers = []: list at least one \"ip:port\" (or leave it out for /etc/resolv.conf)",
            ));
        }
        Some(list) => Some(
            list.get_ref()
                .iter()
                .map(|r| {
                    let text = r.get_ref().trim();
                    // A bare address means port 53.
                    text.parse::<SocketAddr>()
                        .or_else(|_| text.parse().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| {
                            src.at(
                                r,
                                format!(
                                    "dns.resolvers: {:?} is not an address or address:port (e.g. \"127.0.0.53:53\")",
                                    r.get_ref()
                                ),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Dns {
        resolvers,
        min_ttl: millis(
            src,
            d.min_ttl_ms.as_ref(),
            "dns.min_ttl_ms",
            10,
            defaults.min_ttl,
        )?,
    })
}
