//! The PROXY protocol (HAProxy's specification, versions 1 and 2): the header an
//! L4 balancer in front sends at the start of a connection to say whose it is.
//! `parse` reads one from the front of a connection's first bytes without
//! trusting anything in it; `write_v1`/`write_v2` make one for a backend.
//! `Cidr` is the list of peers allowed to send one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The signature that opens a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included (the specification's figure).
pub const V1_MAX: usize = 107;
/// The most address and TLV bytes a version 2 header may carry here. The
/// addresses take at most 216 (a Unix pair); the rest is TLVs, which the
/// balancers in the field keep short (AWS's VPC endpoint id, Azure's link id,
/// HAProxy's SSL and unique-id TLVs). Anything longer is refused.
pub const V2_MAX_PAYLOAD: usize = 1024;
/// The longest header `parse` accepts: what a caller should look at.
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;

/// Whether a backend's connections begin with a PROXY protocol header, and in
/// which version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendProxy {
    #[default]
    Off,
    V1,
    V2,
}

/// A header read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length: the bytes to consume before the connection's own.
    pub len: usize,
    /// 1 or 2.
    pub version: u8,
    /// The client's address and the address it connected to, as the sender saw
    /// them; `None` when the header says to use the connection's own (a LOCAL
    /// command, `UNKNOWN`, or an address family other than TCP over IPv4/IPv6).
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Why the bytes are no PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// They do not begin like one (a client that speaks HTTP or TLS directly).
    Missing,
    /// They begin like one and then break a rule (the rule is named).
    Malformed(&'static str),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Missing => f.write_str("no PROXY protocol header"),
            Invalid::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
        }
    }
}

/// Read a header from the front of `buf`: `Ok(None)` while the bytes so far are
/// the start of one and more are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    const V1_START: &[u8] = b"PROXY ";
    let seen = buf.len().min(12);
    if buf[..seen] == V2_SIGNATURE[..seen] {
        return if buf.len() < 16 {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let seen = buf.len().min(V1_START.len());
    if buf[..seen] == V1_START[..seen] {
        return if buf.len() < V1_START.len() {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(Invalid::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.contains(&b'\n') {
            return Err(Invalid::Malformed("a line that does not end in CRLF"));
        }
        if buf.len() >= V1_MAX {
            return Err(Invalid::Malformed("a version 1 line over 107 bytes"));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end])
        .ok()
        .filter(|l| l.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .ok_or(Invalid::Malformed("a byte that is not printable ASCII"))?;
    let mut words = line.split(' ');
    words.next(); // "PROXY", checked by `parse`.
    let len = end + 2;
    let addrs = match words.next() {
        // Whatever follows is to be ignored.
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || words.next().ok_or(Invalid::Malformed("too few fields"));
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if words.next().is_some() {
                return Err(Invalid::Malformed("too many fields"));
            }
            let ip = |text: &str| -> Result<IpAddr, Invalid> {
                let ip = if family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| Invalid::Malformed("an address that is not of its family"))
            };
            let src = SocketAddr::new(ip(src)?, port(sport)?);
            let dst = SocketAddr::new(ip(dst)?, port(dport)?);
            Some((src, dst))
        }
        _ => return Err(Invalid::Malformed("an unknown protocol")),
    };
    Ok(Some(Header {
        len,
        version: 1,
        addrs,
    }))
}

/// A port in a version 1 line: decimal, no sign, no leading zero, 0 to 65535.
fn port(text: &str) -> Result<u16, Invalid> {
    let bad = Invalid::Malformed("a port that is not 0 to 65535 in plain decimal");
    if text.is_empty()
        || text.len() > 5
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Invalid> {
    let (version_command, family) = (buf[12], buf[13]);
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version_command >> 4 != 2 {
        return Err(Invalid::Malformed("a version other than 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Invalid::Malformed("a command other than LOCAL or PROXY")),
    };
    if payload > V2_MAX_PAYLOAD {
        return Err(Invalid::Malformed("over 1024 bytes of addresses and TLVs"));
    }
    let len = 16 + payload;
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    let header = |addrs| {
        Ok(Some(Header {
            len,
            version: 2,
            addrs,
        }))
    };
    // A LOCAL header (the balancer's own health check) says nothing about a
    // client: everything after the fixed part is skipped.
    if local {
        return header(None);
    }
    let (addrs, used) = match family {
        0x00 => (None, 0),
        0x11 if body.len() >= 12 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            let addrs = (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            );
            (Some(addrs), 12)
        }
        0x21 if body.len() >= 36 => {
            let ip = |at: usize| {
                let octets: [u8; 16] = body[at..at + 16].try_into().unwrap_or([0; 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            let addrs = (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            );
            (Some(addrs), 36)
        }
        // A Unix stream pair: nothing an IP client address can say.
        0x31 if body.len() >= 216 => (None, 216),
        0x11 | 0x21 | 0x31 => {
            return Err(Invalid::Malformed(
                "an address block shorter than its family's",
            ));
        }
        0x12 | 0x22 | 0x32 => return Err(Invalid::Malformed("a datagram transport")),
        _ => return Err(Invalid::Malformed("an unknown address family")),
    };
    // TLVs: skipped, but each must fit inside the header.
    let mut tlvs = &body[used..];
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(Invalid::Malformed("a TLV cut short"));
        }
        let n = 3 + usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        if tlvs.len() < n {
            return Err(Invalid::Malformed("a TLV longer than the header"));
        }
        tlvs = &tlvs[n..];
    }
    header(addrs)
}

/// A version 1 header for a connection from `src` to `dst`, appended to `out`
/// (`TCP6` with the IPv4 one mapped when their families differ, as HAProxy
/// writes it).
pub fn write_v1(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr) {
    use std::io::Write;
    let (src, dst) = match (canonical(src), canonical(dst)) {
        (s @ SocketAddr::V4(_), d @ SocketAddr::V6(_)) => (mapped(s), d),
        (s @ SocketAddr::V6(_), d @ SocketAddr::V4(_)) => (s, mapped(d)),
        same => same,
    };
    let _ = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => write!(
            out,
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => write!(
            out,
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        _ => write!(out, "PROXY UNKNOWN\r\n"),
    };
}

/// A version 2 PROXY header for a connection from `src` to `dst`, appended to
/// `out`. Addresses of different families are sent as IPv6 (IPv4-mapped).
pub fn write_v2(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (canonical(src), canonical(dst)) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
}

/// The header a health check sends to a backend that gets PROXY headers: it
/// speaks for no client (v1 `UNKNOWN`, v2 `LOCAL`, as the specification has
/// them for a balancer's own connections); nothing when `version` is off.
pub fn health_check_header(version: SendProxy) -> &'static [u8] {
    match version {
        SendProxy::Off => b"",
        SendProxy::V1 => b"PROXY UNKNOWN\r\n",
        SendProxy::V2 => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    }
}

/// An address as IPv6 (an IPv4 one mapped).
fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

/// An IPv4 peer on a dual-stack socket shows as IPv4-mapped IPv6: as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A network, `10.0.0.0/8` or `2001:db8::/32` (a bare address is the one
/// host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, bits) = match text.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (text, None),
        };
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("{text:?}: not an address or network like 10.0.0.0/8"))?;
        // IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) is the IPv4 network: peers
        // are matched in their IPv4 form.
        if let IpAddr::V6(v6) = net
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            let bits = match bits {
                None => 32,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| (96..=128).contains(b))
                    .map(|b| b - 96)
                    .ok_or_else(|| {
                        format!("{text:?}: an IPv4-mapped network needs a prefix of 96 to 128")
                    })?,
            };
            return Cidr::parse(&format!("{v4}/{bits}"));
        }
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => Some(b)
                .filter(|b| !b.is_empty() && b.len() <= 3 && b.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|b| b.parse::<u8>().ok())
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { net, bits };
        if cidr.masked(net) != net {
            return Err(format!(
                "{text:?}: host bits are set; the network is {}/{bits}",
                cidr.masked(net)
            ));
        }
        Ok(cidr)
    }

    /// `ip` is inside (an IPv4-mapped IPv6 address counts as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == self.net
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        let h = parse(line).unwrap().unwrap();
        assert_eq!(h.len, line.len() - 5);
        assert_eq!(h.version, 1);
        assert_eq!(
            h.addrs,
            Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        assert_eq!(
            parse(line).unwrap().unwrap().addrs,
            Some((sa("[2001:db8::1]:1"), sa("[2001:db8::2]:65535")))
        );
        let unknown = b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 1\r\n";
        assert_eq!(parse(unknown).unwrap().unwrap().addrs, None);
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().len, 15);
    }

    #[test]
    fn a_header_cut_short_asks_for_more() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for n in 1..line.len() {
            assert_eq!(parse(&line[..n]), Ok(None), "{n} bytes");
        }
        let mut v2 = Vec::new();
        write_v2(&mut v2, sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        for n in 1..v2.len() {
            assert_eq!(parse(&v2[..n]), Ok(None), "{n} bytes");
        }
    }

    #[test]
    fn bad_version_1_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1\t198.51.100.2 1 2\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Invalid::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // 107 bytes with no CRLF: the line can only be too long.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert!(matches!(parse(&long), Err(Invalid::Malformed(_))));
        long.truncate(V1_MAX - 2);
        long.extend_from_slice(b"\r\n");
        assert!(
            parse(&long).unwrap().is_some(),
            "107 bytes with its CRLF fits"
        );
    }

    #[test]
    fn what_is_no_header_is_missing() {
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"PROXZ",
            b"\r\n\r\n\0\r\nQUIZ",
        ] {
            assert_eq!(parse(other), Err(Invalid::Missing));
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn version_2_headers() {
        let mut out = Vec::new();
        write_v2(&mut out, sa("192.0.2.1:56324"), sa("198.51.100.2:443"));
        out.extend_from_slice(b"GET");
        let h = parse(&out).unwrap().unwrap();
        assert_eq!((h.len, h.version), (28, 2));
        assert_eq!(
            h.addrs,
            Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
        );
        let mut out = Vec::new();
        write_v2(&mut out, sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"));
        assert_eq!(parse(&out).unwrap().unwrap().len, 52);
        // Mixed families go as IPv6, the IPv4 one mapped.
        let mut out = Vec::new();
        write_v2(&mut out, sa("192.0.2.1:1"), sa("[2001:db8::2]:2"));
        let (src, _) = parse(&out).unwrap().unwrap().addrs.unwrap();
        assert_eq!(canonical(src), sa("192.0.2.1:1"));
        // TLVs after the addresses are skipped.
        let mut body = vec![192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2];
        body.extend_from_slice(&[0x04, 0, 3, b'a', b'b', b'c', 0x05, 0, 0]);
        let h = parse(&v2(0x21, 0x11, &body)).unwrap().unwrap();
        assert_eq!(h.len, 16 + body.len());
        assert_eq!(h.addrs.unwrap().0, sa("192.0.2.1:1"));
        // LOCAL: the connection's own addresses, whatever follows.
        let h = parse(&v2(0x20, 0x11, &[1, 2, 3])).unwrap().unwrap();
        assert_eq!((h.len, h.addrs), (19, None));
        // UNSPEC and Unix: no client address.
        assert_eq!(parse(&v2(0x21, 0x00, &[])).unwrap().unwrap().addrs, None);
        assert_eq!(
            parse(&v2(0x21, 0x31, &[0; 216])).unwrap().unwrap().addrs,
            None
        );
    }

    #[test]
    fn bad_version_2_headers_are_refused() {
        let addrs = [192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2];
        let mut tlv_over = addrs.to_vec();
        tlv_over.extend_from_slice(&[0x04, 0, 9, b'a']);
        let mut tlv_cut = addrs.to_vec();
        tlv_cut.extend_from_slice(&[0x04, 0]);
        for (what, bad) in [
            ("version 1 in a v2 header", v2(0x11, 0x11, &addrs)),
            ("command 2", v2(0x22, 0x11, &addrs)),
            ("IPv4 block short", v2(0x21, 0x11, &addrs[..11])),
            ("IPv6 block short", v2(0x21, 0x21, &[0; 35])),
            ("UDP", v2(0x21, 0x12, &addrs)),
            ("family 4", v2(0x21, 0x41, &addrs)),
            ("TLV over the end", v2(0x21, 0x11, &tlv_over)),
            ("TLV cut", v2(0x21, 0x11, &tlv_cut)),
            ("too long", v2(0x21, 0x11, &[0; V2_MAX_PAYLOAD + 1])),
        ] {
            assert!(matches!(parse(&bad), Err(Invalid::Malformed(_))), "{what}");
        }
        // Too long is known from the length field alone.
        let head = &v2(0x21, 0x11, &[0; V2_MAX_PAYLOAD + 1])[..16];
        assert!(matches!(parse(head), Err(Invalid::Malformed(_))));
    }

    #[test]
    fn version_1_headers_written_are_read_back() {
        for (s, d) in [
            ("192.0.2.1:56324", "198.51.100.2:443"),
            ("[2001:db8::1]:1", "[2001:db8::2]:2"),
            ("[::ffff:192.0.2.1]:7", "[::ffff:192.0.2.2]:8"),
        ] {
            let mut out = Vec::new();
            write_v1(&mut out, sa(s), sa(d));
            let h = parse(&out).unwrap().unwrap();
            assert_eq!(h.len, out.len());
            assert_eq!(h.addrs, Some((canonical(sa(s)), canonical(sa(d)))));
        }
        let mut out = Vec::new();
        write_v1(&mut out, sa("192.0.2.1:1"), sa("[2001:db8::2]:2"));
        assert_eq!(out, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n");
    }

    #[test]
    fn networks() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.255.0.1".parse().unwrap()));
        assert!(ten.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        assert!(!ten.contains("::1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("203.0.113.9".parse().unwrap())
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::9".parse().unwrap())
        );
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "10.0.0.0/8/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        let mapped = Cidr::parse("::ffff:127.0.0.0/104").unwrap();
        assert_eq!(mapped.to_string(), "127.0.0.0/8");
        assert!(mapped.contains("127.0.0.9".parse().unwrap()));
        assert!(Cidr::parse("::ffff:127.0.0.0/64").is_err());
    }
}
