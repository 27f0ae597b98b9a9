//! The XDP program's verdicts on crafted packets, through `BPF_PROG_TEST_RUN` (no interface, no
//! namespace): every packet shape gets its class — limited by its source, never limited (ARP,
//! neighbour discovery), or unparsed — and no packet whatsoever breaks the program.
//!
//! The classes are told apart by the global counters and by the verdicts: with rate 1/s and
//! burst 1, a limited source's first packet passes and its second is dropped, while a packet that
//! is not limited or not parsed always passes and bumps its own counter.

use limiter_common::maps::Counter;
use limiter_tests::frame::{self, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP};
use limiter_tests::object::{XdpObject, XDP_DROP, XDP_PASS};
use limiter_tests::require_root;
use std::fmt::Write as _;

// ---------------------------------------------------------------------------------------------
// Packet shapes
// ---------------------------------------------------------------------------------------------

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ1: u16 = 0x9100;
const ETH_P_LLDP: u16 = 0x88CC;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MOBILITY: u8 = 135;

const ICMPV6_ECHO_REQUEST: u8 = 128;
const ND_TYPES: [(u8, &str); 5] = [
    (133, "RS"),
    (134, "RA"),
    (135, "NS"),
    (136, "NA"),
    (137, "Redirect"),
];

/// An Ethernet frame: `tags` are the TPIDs of the VLAN tags in front of `ether_type`.
fn eth(tags: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in tags.iter().enumerate() {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(100 + i as u16).to_be_bytes()); // TCI: VLAN 100, 101
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn arp() -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 198, 18, 0, 2]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    arp
}

fn udp(payload: &[u8]) -> Vec<u8> {
    frame::udp(40000, 9000, payload)
}

/// An IPv4 packet: `options` (a multiple of 4 bytes), `frag` the flags and fragment offset field.
fn ipv4(src: [u8; 4], proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    frame::Ipv4 {
        src,
        dst: [198, 18, 0, 1],
        proto,
        id: 0x1234,
        frag,
        options,
    }
    .packet(payload)
}

fn ipv4_udp(src: [u8; 4]) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IPV4,
        &ipv4(src, IPPROTO_UDP, &[], 0, &udp(b"limi")),
    )
}

/// An IPv6 extension header in front of the upper layer.
#[derive(Clone, Copy, Debug)]
enum Ext {
    /// Hop-by-Hop, Routing, Destination Options, Mobility: `(units + 1) · 8` bytes.
    HopByHop(u8),
    Routing(u8),
    DstOpts(u8),
    Mobility(u8),
    /// Fragment: 8 bytes; offset in 8-byte units.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header: `(units + 2) · 4` bytes.
    Ah(u8),
}

impl Ext {
    fn proto(self) -> u8 {
        match self {
            Ext::HopByHop(_) => IPPROTO_HOPOPTS,
            Ext::Routing(_) => IPPROTO_ROUTING,
            Ext::DstOpts(_) => IPPROTO_DSTOPTS,
            Ext::Mobility(_) => IPPROTO_MOBILITY,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
            Ext::Ah(_) => IPPROTO_AH,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(units)
            | Ext::Routing(units)
            | Ext::DstOpts(units)
            | Ext::Mobility(units) => {
                // Zero padding: Pad1 options, a routing header of type 0 with nothing left.
                let mut header = vec![0; (usize::from(units) + 1) * 8];
                header[0] = next;
                header[1] = units;
                header
            }
            Ext::Fragment { offset, more } => {
                let mut header = vec![next, 0];
                header.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                header.extend_from_slice(&0xdead_beefu32.to_be_bytes());
                header
            }
            Ext::Ah(units) => {
                let mut header = vec![0; (usize::from(units) + 2) * 4];
                header[0] = next;
                header[1] = units;
                header[4..8].copy_from_slice(&0x100u32.to_be_bytes()); // SPI
                header
            }
        }
    }
}

/// An IPv6 packet from `src`: the extension headers `exts`, then `upper` with `payload`.
fn ipv6(src: [u8; 16], exts: &[Ext], upper: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(upper, |e| e.proto());
        body.extend_from_slice(&ext.bytes(next));
    }
    body.extend_from_slice(payload);
    let first = exts.first().map_or(upper, |e| e.proto());
    let dst = [0x20, 0x01, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // Hop limit 255: neighbour discovery counts only with it.
    frame::ipv6(src, dst, first, 255, &body)
}

/// An ICMPv6 message of `icmp_type` (with room for an ND target address).
fn icmpv6(icmp_type: u8) -> Vec<u8> {
    let mut icmp = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&[0x20, 0x01, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    icmp
}

fn ipv6_udp(src: [u8; 16]) -> Vec<u8> {
    eth(&[], ETH_P_IPV6, &ipv6(src, &[], IPPROTO_UDP, &udp(b"limi")))
}

/// Distinct sources, one per case: a limited case's key must be fresh (`ipv6_prefix = 64`, so
/// IPv6 sources differ in their first 64 bits).
struct Sources {
    next: u16,
}

impl Sources {
    fn v4(&mut self) -> [u8; 4] {
        self.next += 1;
        let [hi, lo] = self.next.to_be_bytes();
        [198, 18, hi, lo]
    }

    fn v6(&mut self) -> [u8; 16] {
        self.next += 1;
        let [hi, lo] = self.next.to_be_bytes();
        [0x20, 0x01, 0, 0x02, 0, 0, hi, lo, 0, 0, 0, 0, 0, 0, 0, 0x07]
    }
}

// ---------------------------------------------------------------------------------------------
// Classes, and a reference model of the parser written from the product's rules
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Keyed by its source: rate-limited.
    Limited,
    /// Never limited: non-IP, IPv6 neighbour/router discovery.
    NotLimited,
    /// Truncated, malformed, beyond a bound: passed and counted.
    Unparsed,
}

/// What the XDP program must make of `frame`, written from the rules rather than from its code.
fn model(frame: &[u8]) -> Class {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let Some(mut ether_type) = be16(12) else {
        return Class::Unparsed;
    };
    let mut l3 = 14;
    let is_tag = |t: u16| [ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ1].contains(&t);
    let mut tags = 0;
    while is_tag(ether_type) {
        if tags == 2 {
            return Class::Unparsed;
        }
        let Some(inner) = be16(l3 + 2) else {
            return Class::Unparsed;
        };
        ether_type = inner;
        l3 += 4;
        tags += 1;
    }
    match ether_type {
        ETH_P_IPV4 => {
            let Some(header) = frame.get(l3..l3 + 20) else {
                return Class::Unparsed;
            };
            // Options cut short or not: the source is known, so it is keyed by it.
            let ihl = usize::from(header[0] & 0x0f);
            if header[0] >> 4 != 4 || ihl < 5 {
                return Class::Unparsed;
            }
            Class::Limited
        }
        ETH_P_IPV6 => {
            let Some(header) = frame.get(l3..l3 + 40) else {
                return Class::Unparsed;
            };
            if header[0] >> 4 != 6 {
                return Class::Unparsed;
            }
            let mut next = header[6];
            let mut at = l3 + 40;
            let mut exts = 0;
            loop {
                let is_ext = [
                    IPPROTO_HOPOPTS,
                    IPPROTO_ROUTING,
                    IPPROTO_DSTOPTS,
                    IPPROTO_MOBILITY,
                    IPPROTO_AH,
                    IPPROTO_FRAGMENT,
                ]
                .contains(&next);
                if is_ext {
                    exts += 1;
                    if exts > 6 {
                        return Class::Limited;
                    }
                }
                let len = match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MOBILITY => {
                        frame.get(at + 1).map(|&units| (usize::from(units) + 1) * 8)
                    }
                    IPPROTO_AH => frame.get(at + 1).map(|&units| (usize::from(units) + 2) * 4),
                    IPPROTO_FRAGMENT => {
                        if frame.len() < at + 8 {
                            return Class::Limited;
                        }
                        if be16(at + 2).unwrap() >> 3 != 0 {
                            return Class::Limited;
                        }
                        Some(8)
                    }
                    IPPROTO_ICMPV6 => {
                        // Type, code and checksum must be there.
                        return match frame.get(at..at + 4) {
                            None => Class::Limited,
                            // ND only with hop limit 255 (RFC 4861).
                            Some([133..=137, ..]) if header[7] == 255 => Class::NotLimited,
                            // MLD only with hop limit 1 from fe80::/10 or :: (RFC 3810).
                            Some([130..=132 | 143, ..])
                                if header[7] == 1
                                    && ((header[8] == 0xfe && header[9] & 0xc0 == 0x80)
                                        || header[8..24].iter().all(|b| *b == 0)) =>
                            {
                                Class::NotLimited
                            }
                            Some(_) => Class::Limited,
                        };
                    }
                    _ => return Class::Limited,
                };
                match len {
                    Some(len) if frame.len() >= at + len => {
                        next = frame[at];
                        at += len;
                    }
                    _ => return Class::Limited,
                }
            }
        }
        _ => Class::NotLimited,
    }
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

struct Case {
    name: String,
    frame: Vec<u8>,
    class: Class,
}

fn table() -> Vec<Case> {
    use Class::*;
    let mut s = Sources { next: 0 };
    let mut cases = Vec::new();
    let mut case = |name: &str, frame: Vec<u8>, class: Class| {
        let name = name.to_owned();
        cases.push(Case { name, frame, class })
    };
    let hbh = Ext::HopByHop(0);
    let dst = Ext::DstOpts(0);
    let frag0 = Ext::Fragment {
        offset: 0,
        more: true,
    };
    let later = |offset| Ext::Fragment {
        offset,
        more: false,
    };
    let (icmp, udp_x) = (IPPROTO_ICMPV6, udp(b"x"));

    // Non-IP.
    case("ARP", eth(&[], ETH_P_ARP, &arp()), NotLimited);
    case(
        "ARP, bare 14-byte header",
        eth(&[], ETH_P_ARP, &[]),
        NotLimited,
    );
    case("LLDP", eth(&[], ETH_P_LLDP, &[0; 40]), NotLimited);
    case(
        "802.3 length, LLC",
        eth(&[], 0x0026, &[0x42, 0x42, 3]),
        NotLimited,
    );

    // IPv4.
    case("IPv4 UDP", ipv4_udp(s.v4()), Limited);
    let tcp = ipv4(s.v4(), IPPROTO_TCP, &[], 0, &[0; 20]);
    case("IPv4 TCP", eth(&[], ETH_P_IPV4, &tcp), Limited);
    let v4 = |src, options: &[u8], frag, payload: &[u8]| {
        eth(
            &[],
            ETH_P_IPV4,
            &ipv4(src, IPPROTO_UDP, options, frag, payload),
        )
    };
    case(
        "IPv4 options, IHL 6",
        v4(s.v4(), &[0x94, 4, 0, 0], 0, &udp_x),
        Limited,
    );
    case(
        "IPv4 options, IHL 15, no payload",
        v4(s.v4(), &[1; 40], 0, &[]),
        Limited,
    );
    case(
        "IPv4 first fragment",
        v4(s.v4(), &[], 0x2000, &udp(&[7; 64])),
        Limited,
    );
    case(
        "IPv4 middle fragment",
        v4(s.v4(), &[], 0x2000 | 185, &[7; 64]),
        Limited,
    );
    case(
        "IPv4 last fragment",
        v4(s.v4(), &[], 370, &[7; 16]),
        Limited,
    );
    case(
        "IPv4 fragment, IHL 8",
        v4(s.v4(), &[1; 12], 0x2003, &[7; 8]),
        Limited,
    );
    for ihl in [0u8, 1, 4] {
        let mut frame = ipv4_udp(s.v4());
        frame[14] = 0x40 | ihl;
        case(&format!("IPv4 IHL {ihl} (< 5)"), frame, Unparsed);
    }
    let mut frame = ipv4_udp(s.v4());
    frame[14] = 0x4f;
    case("IPv4 IHL 15 past the packet's end", frame, Limited);
    let mut frame = v4(s.v4(), &[1; 4], 0, &[]);
    frame.pop();
    case("IPv4 IHL 6, options cut by a byte", frame, Limited);
    for version in [0u8, 5, 6, 15] {
        let mut frame = ipv4_udp(s.v4());
        frame[14] = version << 4 | 5;
        case(
            &format!("IPv4 ethertype, version {version}"),
            frame,
            Unparsed,
        );
    }
    case(
        "IPv4 ethertype, nothing after",
        eth(&[], ETH_P_IPV4, &[]),
        Unparsed,
    );

    // IPv6 without extension headers.
    let v6 = |tags: &[u16], src, exts: &[Ext], upper, payload: &[u8]| {
        eth(tags, ETH_P_IPV6, &ipv6(src, exts, upper, payload))
    };
    case("IPv6 UDP", ipv6_udp(s.v6()), Limited);
    case(
        "IPv6 TCP",
        v6(&[], s.v6(), &[], IPPROTO_TCP, &[0; 20]),
        Limited,
    );
    case(
        "IPv6 ESP",
        v6(&[], s.v6(), &[], IPPROTO_ESP, &[0; 24]),
        Limited,
    );
    case(
        "IPv6 No Next Header",
        v6(&[], s.v6(), &[], IPPROTO_NONE, &[]),
        Limited,
    );
    let echo = icmpv6(ICMPV6_ECHO_REQUEST);
    case(
        "IPv6 ICMPv6 echo request",
        v6(&[], s.v6(), &[], icmp, &echo),
        Limited,
    );
    for t in [132u8, 138] {
        let name = format!("IPv6 ICMPv6 type {t}, next to ND");
        case(&name, v6(&[], s.v6(), &[], icmp, &icmpv6(t)), Limited);
    }
    case(
        "IPv6 ICMPv6, no header",
        v6(&[], s.v6(), &[], icmp, &[]),
        Limited,
    );
    let nd_cut = [135, 0, 0];
    case(
        "IPv6 ICMPv6 NS cut to 3 bytes",
        v6(&[], s.v6(), &[], icmp, &nd_cut),
        Limited,
    );
    for version in [0u8, 4, 7, 15] {
        let mut frame = ipv6_udp(s.v6());
        frame[14] = version << 4;
        case(
            &format!("IPv6 ethertype, version {version}"),
            frame,
            Unparsed,
        );
    }
    case(
        "IPv6 ethertype, nothing after",
        eth(&[], ETH_P_IPV6, &[]),
        Unparsed,
    );

    // IPv6 neighbour and router discovery, plain and behind extension headers.
    for (t, name) in ND_TYPES {
        let nd = icmpv6(t);
        let mut nd_case = |how: &str, tags: &[u16], exts: &[Ext]| {
            let name = format!("IPv6 ND {name}{how}");
            case(&name, v6(tags, s.v6(), exts, icmp, &nd), NotLimited);
        };
        nd_case("", &[], &[]);
        nd_case(" behind Hop-by-Hop", &[], &[hbh]);
        nd_case(" behind Destination Options", &[], &[dst]);
        nd_case(
            " behind Hop-by-Hop and Destination Options",
            &[],
            &[hbh, dst],
        );
        nd_case(" in a first fragment", &[], &[frag0]);
        nd_case(", 802.1Q", &[ETH_P_8021Q], &[]);
    }
    let ns = icmpv6(135);
    // Forged ND (hop limit below 255) must not pass unlimited.
    let mut forged = v6(&[], s.v6(), &[], icmp, &ns);
    forged[14 + 7] = 64;
    case("IPv6 ND NS with hop limit 64 (forged)", forged, Limited);
    // MLD from a link-local address with hop limit 1 keeps the link working: not limited; the
    // same from a global address, or with another hop limit, is limited.
    let mut mld = v6(&[], s.v6(), &[], icmp, &icmpv6(143));
    mld[14 + 7] = 1;
    let mut link_local = mld.clone();
    link_local[14 + 8..14 + 24]
        .copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    case("IPv6 MLDv2 report from a global address", mld, Limited);
    case(
        "IPv6 MLDv2 report from fe80::7, hop limit 1",
        link_local.clone(),
        NotLimited,
    );
    let mut far = link_local;
    far[14 + 7] = 64;
    case("IPv6 MLDv2 report from fe80::7, hop limit 64", far, Limited);
    let name = "IPv6 ND NS behind a 16-byte Hop-by-Hop (8-byte units)";
    case(
        name,
        v6(&[], s.v6(), &[Ext::HopByHop(1)], icmp, &ns),
        NotLimited,
    );
    let name = "IPv6 ND NS behind a 24-byte AH (4-byte units)";
    case(name, v6(&[], s.v6(), &[Ext::Ah(4)], icmp, &ns), NotLimited);

    // IPv6 extension headers, then an upper layer that is limited.
    let exts = [hbh, Ext::Routing(2), Ext::DstOpts(3)];
    let name = "IPv6 Hop-by-Hop, Routing, Destination Options, UDP";
    case(name, v6(&[], s.v6(), &exts, IPPROTO_UDP, &udp_x), Limited);
    let name = "IPv6 a 2 KiB Destination Options header, Routing, UDP";
    let exts = [Ext::DstOpts(255), Ext::Routing(1)];
    case(name, v6(&[], s.v6(), &exts, IPPROTO_UDP, &udp_x), Limited);
    let name = "IPv6 AH, UDP";
    case(
        name,
        v6(&[], s.v6(), &[Ext::Ah(4)], IPPROTO_UDP, &udp_x),
        Limited,
    );
    let name = "IPv6 AH, ESP";
    case(
        name,
        v6(&[], s.v6(), &[Ext::Ah(1)], IPPROTO_ESP, &[0; 16]),
        Limited,
    );
    let name = "IPv6 Mobility, No Next Header";
    case(
        name,
        v6(&[], s.v6(), &[Ext::Mobility(1)], IPPROTO_NONE, &[]),
        Limited,
    );
    let name = "IPv6 first fragment, UDP";
    case(
        name,
        v6(&[], s.v6(), &[frag0], IPPROTO_UDP, &udp_x),
        Limited,
    );
    let name = "IPv6 first fragment, ICMPv6 echo";
    case(name, v6(&[], s.v6(), &[frag0], icmp, &echo), Limited);
    for (offset, more) in [(1, true), (185, false), (8191, false)] {
        // A later fragment says ICMPv6 but holds the middle of a message: its first byte, 135
        // here, is no ICMPv6 type.
        let name = format!("IPv6 fragment at offset {offset}, ICMPv6 (looks like NS)");
        let frag = Ext::Fragment { offset, more };
        case(&name, v6(&[], s.v6(), &[frag], icmp, &ns), Limited);
    }
    let name = "IPv6 later fragment, nothing after its header";
    case(
        name,
        v6(&[], s.v6(), &[later(9)], IPPROTO_UDP, &[]),
        Limited,
    );
    let six = [
        hbh,
        Ext::Routing(0),
        dst,
        Ext::Ah(1),
        Ext::Mobility(0),
        frag0,
    ];
    let name = "IPv6 six extension headers (the bound), UDP";
    case(name, v6(&[], s.v6(), &six, IPPROTO_UDP, &udp_x), Limited);
    let name = "IPv6 six extension headers (the bound), ND NS";
    case(name, v6(&[], s.v6(), &six, icmp, &ns), NotLimited);
    let name = "IPv6 six extension headers (the bound), a later fragment";
    let six_later = [hbh, dst, dst, dst, dst, later(3)];
    case(
        name,
        v6(&[], s.v6(), &six_later, IPPROTO_UDP, &[0; 8]),
        Limited,
    );
    let seven = [six.as_slice(), &[dst]].concat();
    let name = "IPv6 seven extension headers, UDP";
    case(name, v6(&[], s.v6(), &seven, IPPROTO_UDP, &udp_x), Limited);
    let name = "IPv6 seven extension headers, ND NS";
    case(name, v6(&[], s.v6(), &seven, icmp, &ns), Limited);
    let name = "IPv6 seven extension headers, the last a later fragment";
    let seven_later = [six.as_slice(), &[later(3)]].concat();
    case(
        name,
        v6(&[], s.v6(), &seven_later, IPPROTO_UDP, &[0; 8]),
        Limited,
    );
    let name = "IPv6 twenty Destination Options headers";
    case(
        name,
        v6(&[], s.v6(), &[dst; 20], IPPROTO_UDP, &udp_x),
        Limited,
    );
    // A Hop-by-Hop header saying 40 bytes, in a packet with 16 after the IPv6 header.
    let mut frame = v6(&[], s.v6(), &[hbh], IPPROTO_UDP, &udp(b""));
    frame[14 + 40 + 1] = 4;
    case(
        "IPv6 Hop-by-Hop running past the packet's end",
        frame,
        Limited,
    );
    // An AH saying (6 + 2)·4 = 32 bytes, with 24 there.
    let mut frame = v6(&[], s.v6(), &[Ext::Ah(4)], IPPROTO_NONE, &[]);
    frame[14 + 40 + 1] = 6;
    case("IPv6 AH running past the packet's end", frame, Limited);
    let name = "IPv6 Hop-by-Hop cut after its first byte";
    case(name, v6(&[], s.v6(), &[], IPPROTO_HOPOPTS, &[17]), Limited);
    let name = "IPv6 fragment header cut to 4 bytes";
    case(
        name,
        v6(&[], s.v6(), &[], IPPROTO_FRAGMENT, &[17, 0, 0, 0]),
        Limited,
    );
    let name = "IPv6 Destination Options, then ICMPv6 without a header";
    case(name, v6(&[], s.v6(), &[dst], icmp, &[]), Limited);

    // VLAN tags.
    for (tags, name) in [
        (&[ETH_P_8021Q][..], "802.1Q"),
        (&[ETH_P_8021AD, ETH_P_8021Q][..], "QinQ 802.1ad"),
        (&[ETH_P_QINQ1, ETH_P_8021Q][..], "QinQ 0x9100"),
        (&[ETH_P_8021Q, ETH_P_8021Q][..], "802.1Q twice"),
    ] {
        let ip = ipv4(s.v4(), IPPROTO_UDP, &[], 0, &udp_x);
        case(
            &format!("{name} IPv4 UDP"),
            eth(tags, ETH_P_IPV4, &ip),
            Limited,
        );
        let ip = ipv4(s.v4(), IPPROTO_UDP, &[1; 8], 0, &udp_x);
        case(
            &format!("{name} IPv4 options"),
            eth(tags, ETH_P_IPV4, &ip),
            Limited,
        );
        let frame = v6(tags, s.v6(), &[], IPPROTO_UDP, &udp_x);
        case(&format!("{name} IPv6 UDP"), frame, Limited);
        let frame = v6(tags, s.v6(), &[hbh], icmp, &icmpv6(136));
        case(&format!("{name} IPv6 Hop-by-Hop ND NA"), frame, NotLimited);
        case(
            &format!("{name} ARP"),
            eth(tags, ETH_P_ARP, &arp()),
            NotLimited,
        );
        let mut frame = eth(tags, ETH_P_IPV4, &ipv4(s.v4(), IPPROTO_UDP, &[], 0, &udp_x));
        frame.truncate(14 + 4 * tags.len() + 19);
        case(
            &format!("{name} IPv4 cut inside its header"),
            frame,
            Unparsed,
        );
    }
    let three = [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q];
    let ip = ipv4(s.v4(), IPPROTO_UDP, &[], 0, &udp_x);
    case(
        "three VLAN tags (beyond the bound), IPv4",
        eth(&three, ETH_P_IPV4, &ip),
        Unparsed,
    );
    let frame = eth(&[], ETH_P_8021Q, &[0, 100, 0x08]);
    case("802.1Q cut inside the inner ethertype", frame, Unparsed);
    let frame = eth(&[], ETH_P_8021AD, &[0, 100, 0x81, 0x00, 0, 101]);
    case("QinQ cut before the inner ethertype", frame, Unparsed);

    // Valid frames cut at every length down to the Ethernet header.
    let full = ipv4_udp([0; 4]).len();
    for len in (14..=full).rev() {
        let mut frame = ipv4_udp(s.v4());
        frame.truncate(len);
        let class = if len >= 14 + 20 { Limited } else { Unparsed };
        case(
            &format!("IPv4 UDP ({full} bytes) cut to {len}"),
            frame,
            class,
        );
    }
    let full = ipv6_udp([0; 16]).len();
    for len in (14..=full).rev() {
        let mut frame = ipv6_udp(s.v6());
        frame.truncate(len);
        let class = if len >= 14 + 40 { Limited } else { Unparsed };
        case(
            &format!("IPv6 UDP ({full} bytes) cut to {len}"),
            frame,
            class,
        );
    }
    let nd_len = v6(&[ETH_P_8021Q], s.v6(), &[hbh, dst], icmp, &ns).len();
    for len in (14..=nd_len).rev() {
        // A source of its own for each: the cut ones are limited.
        let nd = v6(&[ETH_P_8021Q], s.v6(), &[hbh, dst], icmp, &ns);
        let frame = nd[..len].to_vec();
        // VLAN, IPv6, two extension headers, the 4-byte ICMPv6 header; cut short after the
        // IPv6 header, it is keyed by its source.
        let class = if len >= 18 + 40 + 16 + 4 {
            NotLimited
        } else if len >= 18 + 40 {
            Limited
        } else {
            Unparsed
        };
        let name = format!(
            "802.1Q IPv6 HbH DstOpts ND NS ({} bytes) cut to {len}",
            nd.len()
        );
        case(&name, frame, class);
    }
    cases
}

// ---------------------------------------------------------------------------------------------
// Running packets through the program
// ---------------------------------------------------------------------------------------------

/// A frame for a failure message: its length and its first 128 bytes in hex.
fn hex(frame: &[u8]) -> String {
    let shown: String = frame.iter().take(128).map(|b| format!("{b:02x}")).collect();
    let more = if frame.len() > 128 { " …" } else { "" };
    format!("frame ({} bytes): {shown}{more}", frame.len())
}

/// The counters a packet's class shows in (the exhaustion-event counters are left out: whether
/// an event is emitted or suppressed depends on how many came before).
const WATCHED: [Counter; 11] = [
    Counter::Passed,
    Counter::Dropped,
    Counter::WouldDrop,
    Counter::AllowedByRule,
    Counter::DeniedByRule,
    Counter::NotLimited,
    Counter::Unparsed,
    Counter::InsertFailed,
    Counter::KeysCreated,
    Counter::Unconfigured,
    Counter::ContentionDrops,
];

type Counters = [u64; WATCHED.len()];

fn counters(object: &XdpObject) -> Counters {
    WATCHED.map(|counter| object.counter(counter))
}

/// The watched counters that moved from `before` to `after`, and by how much.
fn diff(before: &Counters, after: &Counters) -> Vec<(Counter, u64)> {
    (0..WATCHED.len())
        .filter(|&i| after[i] != before[i])
        .map(|i| (WATCHED[i], after[i].wrapping_sub(before[i])))
        .collect()
}

/// Runs a case's frame twice and checks verdicts and counters against its class; returns what
/// was wrong.
fn check(object: &XdpObject, case: &Case) -> Result<(), String> {
    let before = counters(object);
    let first = object.run(&case.frame);
    let middle = counters(object);
    let second = object.run(&case.frame);
    let after = counters(object);
    let (first_diff, second_diff) = (diff(&before, &middle), diff(&middle, &after));
    let expected = match case.class {
        Class::Limited => (
            (
                XDP_PASS,
                vec![(Counter::Passed, 1), (Counter::KeysCreated, 1)],
            ),
            (XDP_DROP, vec![(Counter::Dropped, 1)]),
        ),
        Class::NotLimited => (
            (XDP_PASS, vec![(Counter::NotLimited, 1)]),
            (XDP_PASS, vec![(Counter::NotLimited, 1)]),
        ),
        Class::Unparsed => (
            (XDP_PASS, vec![(Counter::Unparsed, 1)]),
            (XDP_PASS, vec![(Counter::Unparsed, 1)]),
        ),
    };
    let got = ((first, first_diff), (second, second_diff));
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "{}: expected {:?}, i.e. (verdict, counters moved) {:?}\n  got {:?}\n  {}",
            case.name,
            case.class,
            expected,
            got,
            hex(&case.frame)
        ))
    }
}

/// The reference model agrees with the table: it is what the random packets are checked against.
#[test]
fn model_classifies_the_table_as_expected() {
    let wrong: Vec<String> = table()
        .iter()
        .filter(|case| model(&case.frame) != case.class)
        .map(|case| {
            format!(
                "{}: table {:?}, model {:?}",
                case.name,
                case.class,
                model(&case.frame)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "the model disagrees:\n{}",
        wrong.join("\n")
    );
}

/// Each packet shape of the table, twice, from a source of its own: the verdicts and the counters
/// that moved must be those of its class.
#[test]
fn every_packet_shape_gets_its_class() {
    require_root();
    let object = XdpObject::load(1, 1);
    let cases = table();
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|case| check(&object, case).err())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} packet shapes got the wrong class:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// Wherever the source is known, its rules apply whatever follows its header: a denied source
/// gets nothing through with an extension header too many, one cut short, options cut short or
/// an ICMPv6 header missing. Every shape the table calls limited, from a denied source, is
/// dropped as denied.
#[test]
fn a_denied_source_is_denied_whatever_follows_its_header() {
    require_root();
    let mut object = XdpObject::load(1_000_000, 1_000_000);
    let mut v6 = [0u8; 16];
    v6[..4].copy_from_slice(&[0x20, 0x01, 0, 0x02]);
    object.deny(false, v6, 32);
    let mut link_local = [0u8; 16];
    link_local[..2].copy_from_slice(&[0xfe, 0x80]);
    object.deny(false, link_local, 10);
    let mut v4 = [0u8; 16];
    v4[..2].copy_from_slice(&[198, 18]);
    object.deny(true, v4, 16);
    let mut wrong = Vec::new();
    let limited: Vec<Case> = table()
        .into_iter()
        .filter(|case| case.class == Class::Limited)
        .collect();
    for case in &limited {
        let denied = object.counter(Counter::DeniedByRule);
        let verdict = object.run(&case.frame);
        if verdict != XDP_DROP || object.counter(Counter::DeniedByRule) != denied + 1 {
            wrong.push(format!("{}: verdict {verdict}, not denied", case.name));
        }
    }
    assert!(
        limited.len() > 100 && wrong.is_empty(),
        "{} of {} shapes from a denied source got through:\n{}",
        wrong.len(),
        limited.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Random and mangled packets
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, and reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A random frame of 14..=300 bytes: plain noise, or noise shaped like the headers the parser
/// walks (IP ethertypes, VLAN tags, IPv6 extension header chains, ICMPv6 types) so that the
/// random packets reach every branch, or a valid frame of the table cut and with bits flipped.
fn random_frame(rng: &mut Rng, valid: &[Vec<u8>]) -> Vec<u8> {
    match rng.range(0, 3) {
        0 => {
            let len = rng.range(14, 300);
            rng.bytes(len)
        }
        1 => {
            let tags: Vec<u16> = (0..rng.pick(&[0, 0, 0, 1, 2, 3]))
                .map(|_| rng.pick(&[ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ1]))
                .collect();
            let ether_type = rng.pick(&[ETH_P_IPV4, ETH_P_IPV6, ETH_P_IPV6, ETH_P_ARP, 0x1234]);
            let len = rng.range(0, 300);
            let mut payload = rng.bytes(len);
            if let Some(first) = payload.first_mut() {
                let version = match ether_type {
                    ETH_P_IPV4 => rng.pick(&[4, 4, 4, 6]),
                    _ => rng.pick(&[6, 6, 6, 4]),
                };
                *first = version << 4 | (*first & 0x0f);
            }
            let mut frame = eth(&tags, ether_type, &payload);
            frame.truncate(300);
            frame
        }
        2 => {
            let exts: Vec<Ext> = (0..rng.range(0, 8))
                .map(|_| match rng.range(0, 5) {
                    0 => Ext::HopByHop(rng.range(0, 3) as u8),
                    1 => Ext::Routing(rng.range(0, 3) as u8),
                    2 => Ext::DstOpts(rng.range(0, 3) as u8),
                    3 => Ext::Mobility(rng.range(0, 3) as u8),
                    4 => Ext::Fragment {
                        offset: rng.pick(&[0, 0, 1, 100]),
                        more: rng.chance(50),
                    },
                    _ => Ext::Ah(rng.range(1, 6) as u8),
                })
                .collect();
            let upper = rng.pick(&[IPPROTO_ICMPV6, IPPROTO_ICMPV6, IPPROTO_UDP, IPPROTO_NONE]);
            let mut upper_bytes = icmpv6(rng.range(126, 140) as u8);
            upper_bytes.truncate(rng.range(0, upper_bytes.len()));
            let tags: &[u16] = rng.pick(&[&[][..], &[][..], &[ETH_P_8021Q][..]]);
            let mut src = [0u8; 16];
            src.iter_mut().for_each(|b| *b = rng.byte());
            let mut frame = eth(tags, ETH_P_IPV6, &ipv6(src, &exts, upper, &upper_bytes));
            let len = rng.range(14.min(frame.len()), frame.len().min(300));
            frame.truncate(len);
            frame
        }
        _ => {
            let mut frame = valid[rng.range(0, valid.len() - 1)].clone();
            if rng.chance(50) {
                let len = rng.range(14, frame.len());
                frame.truncate(len);
            }
            for _ in 0..rng.range(0, 3) {
                let bit = rng.range(0, frame.len() * 8 - 1);
                frame[bit / 8] ^= 1 << (bit % 8);
            }
            frame.truncate(300);
            frame
        }
    }
}

const RANDOM_PACKETS: usize = 100_000;

/// Random and mangled frames: every run succeeds, its verdict is PASS or DROP, a frame that is
/// not limited (ARP, ND) or not parsed always passes, and the class the program gives each frame
/// (by the counter it bumps) is the reference model's.
#[test]
fn random_and_mangled_packets_never_break_the_program() {
    require_root();
    let seed = match std::env::var("LIMITER_VERDICTS_SEED") {
        Ok(seed) => seed.parse().expect("LIMITER_VERDICTS_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    let mut rng = Rng(seed);
    let object = XdpObject::load(1, 1);
    let valid: Vec<Vec<u8>> = table()
        .into_iter()
        .filter(|case| case.frame.len() >= 14)
        .map(|case| case.frame)
        .collect();
    let mut seen = [0usize; 3];
    let mut failures = String::new();
    let mut failed = 0;
    for i in 0..RANDOM_PACKETS {
        let frame = random_frame(&mut rng, &valid);
        assert!(
            (14..=300).contains(&frame.len()),
            "generator made {} bytes",
            frame.len()
        );
        let expected = model(&frame);
        let before = counters(&object);
        let verdict = match object.try_run(&frame) {
            Ok(verdict) => verdict,
            Err(e) => panic!(
                "packet {i} (seed {seed}): test_run failed: {e:#?}\n{}",
                hex(&frame)
            ),
        };
        let moved = diff(&before, &counters(&object));
        // The class the program gave the packet, by the counter it bumped.
        let class = match moved.as_slice() {
            [(Counter::NotLimited, 1)] => Some(Class::NotLimited),
            [(Counter::Unparsed, 1)] => Some(Class::Unparsed),
            [(Counter::Passed, 1)]
            | [(Counter::Dropped, 1)]
            | [(Counter::Passed, 1), (Counter::KeysCreated, 1)]
            | [(Counter::Dropped, 1), (Counter::KeysCreated, 1)] => Some(Class::Limited),
            _ => None,
        };
        let verdict_ok = match expected {
            Class::Limited => verdict == XDP_PASS || verdict == XDP_DROP,
            // Never limited, never parsed: never dropped.
            Class::NotLimited | Class::Unparsed => verdict == XDP_PASS,
        };
        if class != Some(expected) || !verdict_ok {
            failed += 1;
            if failed <= 20 {
                let _ = writeln!(
                    failures,
                    "packet {i}: expected {expected:?}, verdict {verdict}, counters moved \
                     {moved:?}\n  {}",
                    hex(&frame)
                );
            }
        }
        seen[expected as usize] += 1;
    }
    assert!(
        failed == 0,
        "{failed} of {RANDOM_PACKETS} random packets (seed {seed}, rerun with \
         LIMITER_VERDICTS_SEED={seed}) went wrong; the first ones:\n{failures}"
    );
    // The generator must reach every class, or the test proves less than it claims.
    for (class, count) in [Class::Limited, Class::NotLimited, Class::Unparsed]
        .iter()
        .zip(seen)
    {
        assert!(
            count >= RANDOM_PACKETS / 50,
            "only {count} random packets were {class:?} (seed {seed})"
        );
    }
}
