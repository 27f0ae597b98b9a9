//! API keys in the kernel: the `limiter` program's request path on crafted TCP segments through
//! `BPF_PROG_TEST_RUN` — which key a request is charged to (against the userspace scanner, on a
//! table of shapes and on generated and mangled requests), the 429 it answers with (parsed as
//! HTTP, checksums verified), retransmissions, and the reset that frees the gateway's socket.

use limiter_common::charge::api_key;
use limiter_common::http::{scan, KeyHeaders, Scan, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST};
use limiter_common::keyhash::KeyHasher;
use limiter_common::maps::{Counter, PERIOD_MINUTE};
use limiter_tests::frame::{
    checksum, ethernet, ipv6, ones_sum, Ipv4, Tcp, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP,
};
use limiter_tests::object::{XdpObject, XDP_DROP, XDP_PASS, XDP_TX};
use limiter_tests::require_root;

const PORT: u16 = 8080;
const SECRET: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
const CLIENT: [u8; 4] = [198, 18, 0, 10];
const GATEWAY: [u8; 4] = [198, 18, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 10];
const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// NOP, NOP, timestamps: TSval 1000, TSecr 2000.
const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x03, 0xe8, 0, 0, 0x07, 0xd0];

fn headers() -> KeyHeaders {
    KeyHeaders::new(&[b"x-api-key", b"authorization"]).unwrap()
}

fn hash(token: &[u8]) -> u64 {
    let mut hasher = KeyHasher::new(SECRET[0], SECRET[1]);
    hasher.write(token);
    hasher.finish()
}

/// A program with generous source limits (they never interfere here) and keys at 1/s, burst
/// `burst`.
fn object(burst: u64) -> XdpObject {
    let mut object = XdpObject::load(1_000_000, 1_000_000);
    object.enable_http(
        &[80, PORT],
        &[b"x-api-key", b"authorization"],
        1,
        burst,
        SECRET,
    );
    object
}

/// A client's segment to the gateway's PORT over IPv4, with timestamps.
fn segment(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    segment_acking(sport, seq, 5000, flags, &TIMESTAMPS, payload)
}

/// A client's segment acknowledging `ack`, with `options`, its TCP checksum right.
fn segment_acking(
    sport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let tcp = Tcp {
        src_port: sport,
        dst_port: PORT,
        seq,
        ack,
        flags,
        options,
    }
    .segment(payload);
    let tcp = with_checksum(tcp, CLIENT, GATEWAY);
    let mut ip = Ipv4::udp(CLIENT, GATEWAY);
    ip.proto = IPPROTO_TCP;
    ethernet(GATEWAY_MAC, CLIENT_MAC, ETH_P_IPV4, &ip.packet(&tcp))
}

/// The gateway's segment to the client (from PORT), its checksum right.
fn from_gateway(dport: u16, seq: u32, ack: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let tcp = Tcp {
        src_port: PORT,
        dst_port: dport,
        seq,
        ack,
        flags: TCP_PSH | TCP_ACK,
        options,
    }
    .segment(payload);
    let tcp = with_checksum(tcp, GATEWAY, CLIENT);
    let mut ip = Ipv4::udp(GATEWAY, CLIENT);
    ip.proto = IPPROTO_TCP;
    ethernet(CLIENT_MAC, GATEWAY_MAC, ETH_P_IPV4, &ip.packet(&tcp))
}

fn with_checksum(mut tcp: Vec<u8>, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut pseudo = src.to_vec();
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    let sum = !fold(ones_sum(&pseudo) + ones_sum(&tcp));
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

fn request(token: &str) -> Vec<u8> {
    format!("GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: {token}\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// Checks an IPv4 frame's IP and TCP checksums; returns (TCP header, payload).
fn tcp_of(frame: &[u8]) -> (&[u8], &[u8]) {
    let ip = &frame[14..];
    let _ = checksum;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(total, ip.len(), "IP length");
    assert_eq!(checksum(&ip[..ihl]), 0, "IPv4 header checksum");
    let tcp = &ip[ihl..total];
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    let sum = ones_sum(&pseudo) + ones_sum(tcp);
    assert_eq!(fold(sum), 0xffff, "TCP checksum");
    let header = usize::from(tcp[12] >> 4) * 4;
    (&tcp[..header], &tcp[header..])
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().unwrap())
}

#[test]
fn over_its_limit_a_key_gets_a_429_from_the_kernel() {
    require_root();
    let object = object(3);
    let body = request("tok-A");
    let key = api_key(hash(b"tok-A"));
    for i in 0..3u32 {
        let frame = segment(40000 + i as u16, 100, TCP_PSH | TCP_ACK, &body);
        assert_eq!(object.run(&frame), XDP_PASS, "request {i} within the burst");
    }
    let frame = segment(41000, 7000, TCP_PSH | TCP_ACK, &body);
    let (verdict, out) = object.run_out(&frame);
    assert_eq!(verdict, XDP_TX, "the fourth request is answered");
    let state = object.bucket(&key).expect("the key is tracked");
    assert_eq!((state.passed, state.dropped), (3, 1));
    assert_eq!(object.counter(Counter::Rejected), 1);
    assert_eq!(object.counter(Counter::KeyedRequests), 4);

    // Back to the client: addresses and ports swapped, the request acknowledged, FIN.
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!(&out[6..12], &GATEWAY_MAC);
    assert_eq!(&out[26..30], &GATEWAY);
    assert_eq!(&out[30..34], &CLIENT);
    let (tcp, payload) = tcp_of(&out);
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), PORT);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 41000);
    assert_eq!(be32(&tcp[4..]), 5000, "seq: what the client acknowledged");
    assert_eq!(
        be32(&tcp[8..]),
        7000 + body.len() as u32,
        "ack: the whole request"
    );
    assert_eq!(tcp[13], TCP_FIN | TCP_PSH | TCP_ACK);
    // Timestamps echoed: TSval = the request's TSecr + 1, TSecr = its TSval.
    assert_eq!(&tcp[20..24], &[1, 1, 8, 10]);
    assert_eq!((be32(&tcp[24..]), be32(&tcp[28..])), (2001, 1000));

    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut fields);
    let httparse::Status::Complete(head) = response.parse(payload).expect("an HTTP response")
    else {
        panic!("incomplete response: {}", String::from_utf8_lossy(payload));
    };
    assert_eq!(response.code, Some(429));
    let field = |name: &str| {
        let value = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("no {name}"))
            .value;
        String::from_utf8_lossy(value).trim().to_string()
    };
    // At 1/s, the key's next request passes within a second.
    assert_eq!(field("retry-after"), "1");
    assert_eq!(field("content-type"), "application/json");
    assert_eq!(field("connection"), "close");
    assert_eq!(field("ratelimit"), "\"default\";r=0;t=1");
    let json: serde_json::Value = serde_json::from_slice(&payload[head..]).expect("a JSON body");
    assert_eq!(json["retry_after_s"], 1);
    assert!(json["error"].is_string());
    assert_eq!(field("content-length"), (payload.len() - head).to_string());

    // The same segment again (a retransmission: the answer was lost): answered again, not
    // charged again.
    let (verdict, again) = object.run_out(&frame);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(again, out);
    assert_eq!(object.bucket(&key).unwrap().dropped, 1);
    assert_eq!(object.counter(Counter::Retransmits), 1);

    // The client's next segment (its ACK of the answer) becomes a reset at the request's first
    // byte, where the gateway's socket waits.
    let ack = segment(41000, 7000 + body.len() as u32, TCP_ACK, b"");
    let (verdict, reset) = object.run_out(&ack);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(&reset[26..30], &CLIENT, "still from the client");
    let (tcp, payload) = tcp_of(&reset);
    assert_eq!(tcp[13], TCP_RST);
    assert_eq!(be32(&tcp[4..]), 7000);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), PORT);
    assert!(payload.is_empty());
    assert_eq!(object.counter(Counter::GatewayResets), 1);
    // The FIN after it is left to the gateway's stack.
    let fin = segment(41000, 7000 + body.len() as u32, TCP_FIN | TCP_ACK, b"");
    let (verdict, untouched) = object.run_out(&fin);
    assert_eq!((verdict, untouched), (XDP_PASS, fin));
    assert_eq!(object.counter(Counter::GatewayResets), 1);

    // A retransmitted request that had passed passes again, uncharged.
    let first = segment(40000, 100, TCP_PSH | TCP_ACK, &body);
    assert_eq!(object.run(&first), XDP_PASS);
    assert_eq!(object.bucket(&key).unwrap().passed, 3);

    // Another key is untouched.
    let other = segment(42000, 1, TCP_PSH | TCP_ACK, &request("tok-B"));
    assert_eq!(object.run(&other), XDP_PASS);
}

/// What the program did with one request: which counter moved, and which key was charged.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Key(Vec<u8>),
    NoKey,
    NotHttp,
}

/// Runs `frame` and tells what it was taken for; `token` is the key userspace expects (to find
/// its bucket).
fn seen(object: &XdpObject, frame: &[u8], token: Option<&[u8]>) -> Seen {
    let counters = [
        Counter::KeyedRequests,
        Counter::KeylessRequests,
        Counter::NotHttp,
    ];
    let before = counters.map(|c| object.counter(c));
    let charged_before = token.and_then(|t| object.bucket(&api_key(hash(t))));
    let verdict = object.run(frame);
    assert!(
        [XDP_PASS, XDP_TX].contains(&verdict),
        "a request's verdict is pass or 429, not {verdict}"
    );
    let after = counters.map(|c| object.counter(c));
    let moved: Vec<usize> = (0..3).filter(|i| after[*i] != before[*i]).collect();
    match moved.as_slice() {
        [0] => {
            let token = token.unwrap_or(b"<no key expected>");
            let charged = object.bucket(&api_key(hash(token)));
            let count = |s: Option<limiter_common::maps::BucketState>| {
                s.map_or(0, |s| s.passed + s.dropped)
            };
            if count(charged) == count(charged_before) + 1 {
                Seen::Key(token.to_vec())
            } else {
                Seen::Key(b"<another key>".to_vec())
            }
        }
        [1] => Seen::NoKey,
        [2] => Seen::NotHttp,
        [] => Seen::NotHttp,
        _ => panic!("several counters moved: {moved:?}"),
    }
}

fn expected(request: &[u8]) -> (Seen, Option<Vec<u8>>) {
    match scan(request, &headers()) {
        Scan::Key(span) => {
            let token = request[span.start as usize..(span.start + span.len) as usize].to_vec();
            (Seen::Key(token.clone()), Some(token))
        }
        Scan::NoKey => (Seen::NoKey, None),
        Scan::NotHttp => (Seen::NotHttp, None),
    }
}

#[test]
fn the_parser_table() {
    require_root();
    let object = object(1_000);
    let pad = |n: usize| {
        let mut r = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        r.resize(n, b'p');
        r.extend_from_slice(b"\r\n");
        r
    };
    let mut at_end = pad(2048 - b"X-API-Key: k\r\n".len() - 2);
    at_end.extend_from_slice(b"X-API-Key: k\r\n");
    let mut past_end = pad(2048 - b"X-API-Key: k\r\n".len());
    past_end.extend_from_slice(b"X-API-Key: k\r\n");
    let mut long_key = b"GET / HTTP/1.1\r\nX-API-Key: ".to_vec();
    long_key.resize(4096, b'k');
    long_key.extend_from_slice(b"\r\n\r\n");
    let client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh".to_vec();
    let table: Vec<(&str, Vec<u8>, Seen)> = vec![
        (
            "header name in any case",
            b"GET / HTTP/1.1\r\nx-API-kEy: case\r\n\r\n".to_vec(),
            Seen::Key(b"case".to_vec()),
        ),
        (
            "Bearer with extra spaces",
            b"GET / HTTP/1.1\r\nAuthorization:   bearer    tkn  \r\n\r\n".to_vec(),
            Seen::Key(b"tkn".to_vec()),
        ),
        (
            "Basic is no key",
            b"GET / HTTP/1.1\r\nAuthorization: Basic dXNlcg==\r\n\r\n".to_vec(),
            Seen::NoKey,
        ),
        ("key at the window's end", at_end, Seen::Key(b"k".to_vec())),
        ("key just past it", past_end, Seen::NoKey),
        (
            "two key headers: the configured order",
            b"GET / HTTP/1.1\r\nAuthorization: Bearer b\r\nX-API-Key: a\r\n\r\n".to_vec(),
            Seen::Key(b"a".to_vec()),
        ),
        (
            "a header twice: its first line",
            b"GET / HTTP/1.1\r\nX-API-Key: one\r\nX-API-Key: two\r\n\r\n".to_vec(),
            Seen::Key(b"one".to_vec()),
        ),
        (
            "empty key",
            b"GET / HTTP/1.1\r\nX-API-Key:   \r\n\r\n".to_vec(),
            Seen::NoKey,
        ),
        ("4 KiB key", long_key, Seen::NoKey),
        (
            "no key header",
            b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
            Seen::NoKey,
        ),
        (
            "non-HTTP bytes",
            b"\x00\x01binary\xff\xfe".to_vec(),
            Seen::NotHttp,
        ),
        (
            "a body segment",
            b"{\"X-API-Key\": \"not a header\"}\r\nX-API-Key: x\r\n".to_vec(),
            Seen::NotHttp,
        ),
        (
            "h2c preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Seen::NotHttp,
        ),
        (
            "pipelined: the first request's key",
            b"GET /a HTTP/1.1\r\nX-API-Key: p1\r\n\r\nGET /b HTTP/1.1\r\nX-API-Key: p2\r\n\r\n"
                .to_vec(),
            Seen::Key(b"p1".to_vec()),
        ),
    ];
    for (i, (name, request, want)) in table.into_iter().enumerate() {
        assert_eq!(expected(&request).0, want, "userspace, {name}");
        let token = match &want {
            Seen::Key(t) => Some(t.as_slice()),
            _ => None,
        };
        let frame = segment(30000 + i as u16, 1, TCP_PSH | TCP_ACK, &request);
        assert_eq!(seen(&object, &frame, token), want, "kernel, {name}");
    }

    // A TLS ClientHello: passed untouched and counted.
    let hello = segment(31000, 1, TCP_PSH | TCP_ACK, &client_hello);
    assert_eq!(object.run_out(&hello), (XDP_PASS, hello.clone()));
    assert_eq!(object.counter(Counter::TlsHandshakes), 1);

    // IPv6, and VLAN-tagged IPv4.
    let tcp = Tcp {
        src_port: 32000,
        dst_port: PORT,
        seq: 1,
        ack: 1,
        flags: TCP_PSH | TCP_ACK,
        options: &[],
    }
    .segment(&request("v6-key"));
    let mut client6 = [0u8; 16];
    client6[..6].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 0]);
    client6[15] = 10;
    let mut gateway6 = client6;
    gateway6[15] = 1;
    let frame6 = ethernet(
        GATEWAY_MAC,
        CLIENT_MAC,
        ETH_P_IPV6,
        &ipv6(client6, gateway6, IPPROTO_TCP, 64, &tcp),
    );
    assert_eq!(
        seen(&object, &frame6, Some(b"v6-key")),
        Seen::Key(b"v6-key".to_vec())
    );
    let plain = segment(32001, 1, TCP_PSH | TCP_ACK, &request("vlan-key"));
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    tagged.extend_from_slice(&plain[12..]);
    assert_eq!(
        seen(&object, &tagged, Some(b"vlan-key")),
        Seen::Key(b"vlan-key".to_vec())
    );

    // Another port is not scanned.
    let mut other_port = segment(32002, 1, TCP_PSH | TCP_ACK, &request("elsewhere"));
    other_port[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&9090u16.to_be_bytes());
    let before = object.counter(Counter::KeyedRequests);
    assert_eq!(object.run(&other_port), XDP_PASS);
    assert_eq!(object.counter(Counter::KeyedRequests), before);
}

#[test]
fn generated_and_mangled_requests_get_the_key_userspace_finds() {
    require_root();
    let object = object(1_000_000);
    let mut rng = 0x5eed_u64;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut wrong = Vec::new();
    for round in 0..600u32 {
        let mut request = b"GET /v1/chat HTTP/1.1\r\nHost: gw\r\n".to_vec();
        for _ in 0..next(6) {
            let field: &[u8] = match next(6) {
                0 => b"X-Api-KEY",
                1 => b"authorization",
                2 => b"X-Api-Keys",
                3 => b"x-api-key",
                _ => b"X-Pad",
            };
            request.extend_from_slice(field);
            request.push(b':');
            request.extend(std::iter::repeat_n(b' ', next(3) as usize));
            if next(2) == 0 {
                request.extend_from_slice(if next(2) == 0 { b"Bearer " } else { b"basic " });
            }
            let len = [0, 1, 7, 8, 9, 40, 300][next(7) as usize];
            request.extend((0..len).map(|_| b"abcXYZ019-._~+/= \t"[next(18) as usize]));
            request.extend_from_slice(if next(4) == 0 { b"\n" } else { b"\r\n" });
        }
        request.extend_from_slice(b"\r\n");
        match next(5) {
            0 => {
                let at = next(request.len() as u64) as usize;
                request[at] = next(256) as u8;
            }
            1 => request.truncate(next(request.len() as u64) as usize + 1),
            2 => {
                // Bytes that are no request at all.
                request = (0..next(200) + 1).map(|_| next(256) as u8).collect();
            }
            _ => {}
        }
        let (want, token) = expected(&request);
        let frame = segment(
            20000 + (round % 20000) as u16,
            round,
            TCP_PSH | TCP_ACK,
            &request,
        );
        let got = seen(&object, &frame, token.as_deref());
        if got != want {
            wrong.push(format!(
                "{:?}: kernel {got:?}, userspace {want:?}",
                String::from_utf8_lossy(&request)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} requests:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(object.counter(Counter::AnswersFailed), 0);
    let _ = XDP_DROP;
}

#[test]
fn keep_alive_answers_leave_the_connection_open_and_shift_it_both_ways() {
    require_root();
    let mut object = XdpObject::load(1_000_000, 1_000_000);
    object.enable_http_with(&[PORT], &[b"x-api-key"], (1, 2), SECRET, true);
    let body = request("tok-ka");
    let len = body.len() as u32;
    let sport = 43000;
    let mut seq = 100;
    for _ in 0..2 {
        let frame = segment_acking(sport, seq, 5000, TCP_PSH | TCP_ACK, &TIMESTAMPS, &body);
        let (verdict, out) = object.run_out(&frame);
        assert_eq!(
            (verdict, &out),
            (XDP_PASS, &frame),
            "within the burst: untouched"
        );
        seq += len;
    }
    // Over the limit: a 429 that keeps the connection (no FIN), TSval = the request's TSecr.
    let frame = segment_acking(sport, seq, 5000, TCP_PSH | TCP_ACK, &TIMESTAMPS, &body);
    let (verdict, answer) = object.run_out(&frame);
    assert_eq!(verdict, XDP_TX);
    let (tcp, payload) = tcp_of(&answer);
    assert_eq!(tcp[13], TCP_PSH | TCP_ACK, "no FIN");
    assert_eq!((be32(&tcp[4..]), be32(&tcp[8..])), (5000, seq + len));
    assert_eq!(be32(&tcp[24..]), 2000, "TSval = the request's TSecr");
    let text = String::from_utf8_lossy(payload);
    assert!(text.contains("Connection: keep-alive"), "{text}");
    let sent = payload.len() as u32;
    seq += len;

    // The client's ACK of the 429 alone: not the gateway's business.
    let ack = segment_acking(sport, seq, 5000 + sent, TCP_ACK, &TIMESTAMPS, b"");
    assert_eq!(object.run(&ack), XDP_DROP);

    // Its next request, another key within its limit: to the gateway in its own view — the
    // answered request's bytes and the 429's taken off, SACK blocks gone, checksum right.
    let other = request("tok-other");
    let sack: [u8; 24] = [
        1, 1, 8, 10, 0, 0, 0, 3, 0, 0, 0, 4, // timestamps
        1, 1, 5, 10, 0, 0, 0x13, 0x88, 0, 0, 0x13, 0x90, // SACK 5000–5008 (client's view)
    ];
    let next = segment_acking(sport, seq, 5000 + sent, TCP_PSH | TCP_ACK, &sack, &other);
    let (verdict, shifted) = object.run_out(&next);
    assert_eq!(verdict, XDP_PASS);
    let (tcp, payload) = tcp_of(&shifted);
    assert_eq!(be32(&tcp[4..]), seq - len, "seq less the answered request");
    assert_eq!(be32(&tcp[8..]), 5000, "ack less the 429");
    assert_eq!(&tcp[32..44], &[1u8; 12], "the SACK option is NOPs");
    assert_eq!(payload, &other[..]);

    // The gateway's answer to it, into the client's view by the egress program.
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let reply = from_gateway(
        sport,
        5000,
        seq - len + other.len() as u32,
        &TIMESTAMPS,
        response,
    );
    let (_, out) = object.run_egress(&reply);
    let (tcp, payload) = tcp_of(&out);
    assert_eq!(be32(&tcp[4..]), 5000 + sent, "seq plus the 429");
    assert_eq!(
        be32(&tcp[8..]),
        seq + other.len() as u32,
        "ack plus the answered request"
    );
    assert_eq!(payload, response);

    // Another connection is untouched both ways.
    let elsewhere = from_gateway(sport + 1, 7, 9, &TIMESTAMPS, response);
    assert_eq!(object.run_egress(&elsewhere).1, elsewhere);
}

/// The `Retry-After` of a 429, in seconds.
fn retry_after(answer: &[u8]) -> u64 {
    let (_, payload) = tcp_of(answer);
    let text = String::from_utf8_lossy(payload);
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Retry-After:"))
        .expect("a Retry-After header");
    line.trim().parse().expect("whole seconds")
}

/// A key with a quota of 3 a minute (`[http]`'s, plan slot 0) and a rate far above it: 3
/// requests pass, the 4th is answered 429 until the window's end (`Retry-After` within the
/// minute) — without spending the key's rate. The next window (the quota clock moved a minute
/// on) passes again from zero; the clock stepped back into the spent window charges the
/// window the count is in, and hands out no second quota.
#[test]
fn a_key_over_its_quota_is_refused_until_its_window_ends() {
    require_root();
    let mut object = object(1000);
    // The quota clock two minutes behind UTC, so that it can be moved a minute on.
    let offset = limiter_tests::object::utc_offset_ns() - 120_000_000_000;
    // Not at a minute's last seconds: the test's requests all fall in one minute.
    limiter_tests::within_one_minute(std::time::Duration::from_secs(3));
    object.set_quota(0, 3, PERIOD_MINUTE, offset);
    let body = request("tok-Q");
    let key = api_key(hash(b"tok-Q"));
    let mut port = 42000u16;
    let mut send = |object: &XdpObject| {
        port += 1;
        object.run_out(&segment(port, 100, TCP_PSH | TCP_ACK, &body))
    };
    for i in 0..3 {
        assert_eq!(send(&object).0, XDP_PASS, "request {i} within the quota");
    }
    let (verdict, answer) = send(&object);
    assert_eq!(verdict, XDP_TX, "the 4th is over the quota");
    let retry = retry_after(&answer);
    assert!(
        (1..=60).contains(&retry),
        "Retry-After {retry}: within the minute"
    );
    assert_eq!(object.counter(Counter::OverQuota), 1);
    assert_eq!(object.counter(Counter::Rejected), 1);
    let state = object.bucket(&key).unwrap();
    assert_eq!(
        (state.passed, state.dropped),
        (3, 0),
        "the refused request did not spend the key's rate"
    );

    // A minute on: a new window.
    object.set_quota(0, 3, PERIOD_MINUTE, offset + 60_000_000_000);
    assert_eq!(send(&object).0, XDP_PASS, "the next window's first");
    // Back into the spent minute: counted in the window the key is in (1 used of 3).
    object.set_quota(0, 3, PERIOD_MINUTE, offset);
    assert_eq!(send(&object).0, XDP_PASS);
    assert_eq!(send(&object).0, XDP_PASS);
    assert_eq!(
        send(&object).0,
        XDP_TX,
        "no second quota for a clock stepped back"
    );
    assert_eq!(object.counter(Counter::OverQuota), 2);
}

/// A request its key's rate refuses does not count against its quota: the place it took is
/// given back.
#[test]
fn a_request_the_rate_refuses_leaves_the_quota_alone() {
    require_root();
    // API keys at 1/s, burst 2.
    let mut object = object(2);
    let offset = limiter_tests::object::utc_offset_ns();
    limiter_tests::within_one_minute(std::time::Duration::from_secs(3));
    object.set_quota(0, 5, PERIOD_MINUTE, offset);
    let body = request("tok-R");
    let hash = hash(b"tok-R");
    let mut port = 44000u16;
    let verdicts: Vec<u32> = (0..4)
        .map(|_| {
            port += 1;
            object
                .run_out(&segment(port, 100, TCP_PSH | TCP_ACK, &body))
                .0
        })
        .collect();
    assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_TX, XDP_TX], "burst 2");
    assert_eq!(object.counter(Counter::OverQuota), 0, "the rate's 429s");
    let usage = object.quota_usage(hash).expect("counted");
    assert_eq!(
        usage.used, 2,
        "the two that passed, not the two the rate refused"
    );
    assert_eq!(usage.tag, limiter_tests::object::quota_minute(offset));
}

/// `limiter quota KEY --add N` as the kernel sees it: a key that used up its quota passes N more
/// in the window of the top-up, and only there.
#[test]
fn a_top_up_lets_a_used_up_key_pass_that_many_more_in_its_window() {
    require_root();
    let mut object = object(1000);
    let offset = limiter_tests::object::utc_offset_ns() - 120_000_000_000;
    limiter_tests::within_one_minute(std::time::Duration::from_secs(3));
    object.set_quota(0, 2, PERIOD_MINUTE, offset);
    let minute = limiter_tests::object::quota_minute(offset);
    let body = request("tok-T");
    let hash = hash(b"tok-T");
    let mut port = 43000u16;
    let mut send = |object: &XdpObject| {
        port += 1;
        object
            .run_out(&segment(port, 100, TCP_PSH | TCP_ACK, &body))
            .0
    };
    let mut verdicts =
        |object: &XdpObject, n: usize| (0..n).map(|_| send(object)).collect::<Vec<_>>();
    assert_eq!(verdicts(&object, 3), [XDP_PASS, XDP_PASS, XDP_TX]);
    // A top-up of the minute before: nothing for this one.
    object.set_top_up(hash, minute - 1, 5);
    assert_eq!(verdicts(&object, 1), [XDP_TX]);
    // Two more for this minute: two pass, the next is refused.
    object.set_top_up(hash, minute, 2);
    assert_eq!(verdicts(&object, 3), [XDP_PASS, XDP_PASS, XDP_TX]);
    assert_eq!(object.counter(Counter::OverQuota), 3);
    // A minute on: the plan's quota alone.
    object.set_quota(0, 2, PERIOD_MINUTE, offset + 60_000_000_000);
    assert_eq!(verdicts(&object, 3), [XDP_PASS, XDP_PASS, XDP_TX]);
}

/// Exact at a window's edge from two CPUs at once: a key with a quota of `Q` a minute, flooded
/// from both CPUs across the end of a minute, passes exactly `Q` in each of the two minutes
/// (both are used up: no lost update hands out more, no contention refuses one within), and the
/// first request after the boundary passes.
#[test]
fn two_cpus_across_a_minutes_end_pass_exactly_the_quota_of_each_minute() {
    require_root();
    const Q: u32 = 300;
    const NS: u64 = 1_000_000_000;
    // Keys at 1/s with a burst no run reaches: only the quota refuses.
    let mut object = object(1_000_000_000);
    let mono = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to write.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec as u64 * NS + t.tv_nsec as u64
    };
    // A quota clock whose minute ends 1.5 s from now.
    let now = mono();
    let real = limiter_tests::object::utc_offset_ns();
    let into = (now + real) % (60 * NS);
    let offset = real + (60 * NS + 60 * NS - NS - NS / 2 - into) % (60 * NS);
    object.set_quota(0, Q, PERIOD_MINUTE, offset);
    let boundary = ((now + offset) / (60 * NS) + 1) * 60 * NS - offset;
    let until = boundary + 3 * NS / 2;

    let body = request("tok-EDGE");
    let object = &object;
    let runs: Vec<Vec<(u64, u64, u32)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = [0usize, 1]
            .into_iter()
            .map(|cpu| {
                let body = &body;
                scope.spawn(move || {
                    limiter_tests::traffic::pin_to_cpu(cpu);
                    let mut runs = Vec::new();
                    let mut n = 0u32;
                    loop {
                        n += 1;
                        // A new connection each run (a port of this CPU's own range).
                        let port = 1024 + (cpu as u32 * 30_000 + n % 30_000) as u16;
                        let frame = segment(port, n.wrapping_mul(4096), TCP_PSH | TCP_ACK, body);
                        let before = mono();
                        let (verdict, _) = object.run_out(&frame);
                        let after = mono();
                        runs.push((before, after, verdict));
                        if after > until {
                            return runs;
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all: Vec<(u64, u64, u32)> = runs.concat();
    let passed = |keep: &dyn Fn(u64, u64) -> bool| {
        all.iter()
            .filter(|&&(b, a, v)| v == XDP_PASS && keep(b, a))
            .count() as u32
    };
    let total = passed(&|_, _| true);
    let before_edge = passed(&|_, a| a < boundary);
    let after_edge = passed(&|b, _| b >= boundary);
    let sent_before = all.iter().filter(|r| r.1 < boundary).count();
    let sent_after = all.iter().filter(|r| r.0 >= boundary).count();
    assert!(
        sent_before > 2 * Q as usize && sent_after > 2 * Q as usize,
        "enough requests on each side to use both minutes up: {sent_before}, {sent_after}"
    );
    assert!(
        before_edge <= Q && after_edge <= Q,
        "{before_edge}, {after_edge}"
    );
    assert_eq!(
        total,
        2 * Q,
        "each minute passed its quota, no more, no less"
    );
    let first_after = all
        .iter()
        .filter(|r| r.0 >= boundary)
        .min_by_key(|r| r.0)
        .unwrap();
    assert_eq!(
        first_after.2, XDP_PASS,
        "the first request of the new minute"
    );
    let cpus_used = runs.iter().filter(|r| !r.is_empty()).count();
    assert_eq!(cpus_used, 2);
    assert_eq!(
        object.counter(Counter::OverQuota),
        all.len() as u64 - u64::from(total)
    );
}

/// Fleet leases: the agent moves a key's count in the kernel (a compare-and-swap in the
/// quota-adjust program), and the request path enforces the moved count as it is.
#[test]
fn a_count_moved_by_the_agent_is_what_the_kernel_enforces() {
    use limiter_common::maps::{ADJUST_DONE, ADJUST_LATER_WINDOW};
    require_root();
    let mut object = object(1000);
    let offset = limiter_tests::object::utc_offset_ns();
    limiter_tests::within_one_minute(std::time::Duration::from_secs(3));
    object.set_quota(0, 5, PERIOD_MINUTE, offset);
    let minute = limiter_tests::object::quota_minute(offset);
    let body = request("tok-F");
    let hash = hash(b"tok-F");
    let mut port = 45000u16;
    let mut send = |object: &XdpObject, n: usize| {
        (0..n)
            .map(|_| {
                port += 1;
                object
                    .run_out(&segment(port, 100, TCP_PSH | TCP_ACK, &body))
                    .0
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(send(&object, 2), [XDP_PASS; 2]);
    // Other hosts used 2: one left here.
    assert_eq!(object.adjust_quota(hash, minute, 2), ADJUST_DONE);
    assert_eq!(send(&object, 2), [XDP_PASS, XDP_TX]);
    // A lease grown by 2.
    assert_eq!(object.adjust_quota(hash, minute, -2), ADJUST_DONE);
    assert_eq!(send(&object, 3), [XDP_PASS, XDP_PASS, XDP_TX]);
    assert_eq!(object.quota_usage(hash).unwrap().used, 5);
    // A move for a window before the count's is left alone.
    assert_eq!(
        object.adjust_quota(hash, minute - 1, -5),
        ADJUST_LATER_WINDOW
    );
    assert_eq!(object.quota_usage(hash).unwrap().used, 5);
}
