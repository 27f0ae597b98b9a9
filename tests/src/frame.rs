//! Hand-made packets, layer by layer: Ethernet, IPv4 (with its header checksum), IPv6, UDP.
//! One place for the integration tests (raw frames onto the veth, `BPF_PROG_TEST_RUN` inputs)
//! and for the benchmarks' frames (`cargo xtask bench`).

/// EtherTypes of the frames built here.
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

/// IP protocol numbers of the packets built here.
pub const IPPROTO_UDP: u8 = 17;

/// Where the IPv4 header starts in an untagged Ethernet frame, and where its checksum and source
/// address are, from the start of the frame.
pub const IPV4_AT: usize = 14;
pub const IPV4_CHECKSUM_AT: usize = IPV4_AT + 10;
pub const IPV4_SOURCE_AT: usize = IPV4_AT + 12;

/// An Ethernet frame from `src` to `dst`: `ether_type`, then `payload`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The fields of an IPv4 header that differ between the packets built here; the others are
/// version 4, no type of service, TTL 64.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4<'a> {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub id: u16,
    /// The flags and fragment offset field (0x4000: don't fragment).
    pub frag: u16,
    /// Options, a multiple of 4 bytes.
    pub options: &'a [u8],
}

impl Ipv4<'_> {
    /// A UDP packet from `src` to `dst`, no fragment, no options.
    pub fn udp(src: [u8; 4], dst: [u8; 4]) -> Ipv4<'static> {
        Ipv4 {
            src,
            dst,
            proto: IPPROTO_UDP,
            id: 0,
            frag: 0,
            options: &[],
        }
    }

    /// The packet: the header, its checksum filled in, then `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(
            self.options.len() % 4,
            0,
            "IPv4 options come in 4-byte words"
        );
        let header_len = 20 + self.options.len();
        let mut ip = Vec::with_capacity(header_len + payload.len());
        ip.extend_from_slice(&[0x40 | (header_len / 4) as u8, 0]);
        ip.extend_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[64, self.proto, 0, 0]);
        ip.extend_from_slice(&self.src);
        ip.extend_from_slice(&self.dst);
        ip.extend_from_slice(self.options);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(payload);
        ip
    }
}

/// Writes `source` into the IPv4 header of an untagged Ethernet frame, and the header checksum
/// that goes with it.
pub fn set_ipv4_source(frame: &mut [u8], source: [u8; 4]) {
    frame[IPV4_SOURCE_AT..IPV4_SOURCE_AT + 4].copy_from_slice(&source);
    frame[IPV4_CHECKSUM_AT..IPV4_CHECKSUM_AT + 2].fill(0);
    let header_len = usize::from(frame[IPV4_AT] & 0x0f) * 4;
    let sum = checksum(&frame[IPV4_AT..IPV4_AT + header_len]);
    frame[IPV4_CHECKSUM_AT..IPV4_CHECKSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
}

/// An IPv6 packet from `src` to `dst`: the fixed header (no traffic class, no flow label) with
/// `next_header` and `hop_limit`, then `payload` (extension headers included).
pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = Vec::with_capacity(40 + payload.len());
    ip.extend_from_slice(&[0x60, 0, 0, 0]);
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next_header, hop_limit]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(payload);
    ip
}

/// A UDP datagram from `src_port` to `dst_port`, without a checksum (0: none, which IPv4
/// allows and the XDP program never looks at).
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src_port.to_be_bytes());
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

/// The ones' complement sum of `bytes` as big-endian 16-bit words (an odd last byte padded with
/// zero), not folded: what a checksum is made of, and what a program that rewrites a field
/// starts from.
pub fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// The Internet checksum of `bytes` (RFC 1071), its own field zeroed beforehand.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = ones_sum(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_with_its_checksum_sums_to_zero() {
        let ip = Ipv4 {
            options: &[1, 1, 1, 0],
            frag: 0x4000,
            id: 0x1234,
            ..Ipv4::udp([198, 18, 0, 10], [198, 18, 0, 1])
        }
        .packet(b"payload");
        assert_eq!(checksum(&ip[..24]), 0);
    }

    #[test]
    fn the_rfc_1071_example() {
        // RFC 1071, 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&bytes), !0xddf2);
    }

    #[test]
    fn setting_the_source_keeps_the_checksum_right() {
        let ip = Ipv4::udp([198, 18, 0, 10], [198, 18, 0, 1]).packet(&udp(40000, 9000, b"x"));
        let mut frame = ethernet([2; 6], [4; 6], ETH_P_IPV4, &ip);
        set_ipv4_source(&mut frame, [198, 19, 1, 2]);
        assert_eq!(&frame[IPV4_SOURCE_AT..IPV4_SOURCE_AT + 4], &[198, 19, 1, 2]);
        assert_eq!(checksum(&frame[IPV4_AT..IPV4_AT + 20]), 0);
    }
}

pub const IPPROTO_TCP: u8 = 6;

/// A TCP segment's header fields (the checksum is left 0: the XDP program never checks it).
#[derive(Clone, Copy, Debug)]
pub struct Tcp<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10.
    pub flags: u8,
    /// Options, a multiple of 4 bytes.
    pub options: &'a [u8],
}

impl Tcp<'_> {
    /// The segment: header, options, `payload`.
    pub fn segment(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(
            self.options.len() % 4,
            0,
            "TCP options come in 4-byte words"
        );
        let header_len = 20 + self.options.len();
        let mut tcp = Vec::with_capacity(header_len + payload.len());
        tcp.extend_from_slice(&self.src_port.to_be_bytes());
        tcp.extend_from_slice(&self.dst_port.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.extend_from_slice(&[((header_len / 4) as u8) << 4, self.flags]);
        tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(self.options);
        tcp.extend_from_slice(payload);
        tcp
    }
}
