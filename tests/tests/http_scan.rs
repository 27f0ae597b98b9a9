//! API keys, first step (issue 11): the request scanner of `limiter_common::http` runs in the
//! kernel, under the verifier, on TCP segments through `BPF_PROG_TEST_RUN`, and finds what it
//! finds in userspace.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::EbpfLoader;
use limiter_common::http::{scan, KeyHeaders, Scan};
use limiter_tests::frame::{ethernet, Ipv4, ETH_P_IPV4};
use limiter_tests::object::object_path;
use limiter_tests::require_root;

/// A TCP segment (no options) carrying `payload`, in an Ethernet frame.
fn segment(payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp.extend_from_slice(payload);
    let mut ip = Ipv4::udp([198, 18, 0, 10], [198, 18, 0, 1]);
    ip.proto = 6;
    ethernet(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        ETH_P_IPV4,
        &ip.packet(&tcp),
    )
}

#[test]
fn the_scanner_runs_in_the_kernel_and_agrees_with_userspace() {
    require_root();
    let path = object_path().with_file_name("http_scan");
    let mut ebpf = EbpfLoader::new()
        .load_file(&path)
        .unwrap_or_else(|e| panic!("loading {}: {e:#?}", path.display()));
    let program: &mut Xdp = ebpf.program_mut("http_scan").unwrap().try_into().unwrap();
    if let Err(e) = program.load() {
        panic!("the verifier refused the scanner: {e:#?}");
    }
    let headers = KeyHeaders::new(&[b"x-api-key", b"authorization"]).unwrap();
    let mut requests: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: gw\r\nX-API-Key: k1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        b"POST /v1 HTTP/1.1\r\nAuthorization: Bearer  t0k\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    ];
    // A key near the end of a long request.
    let mut long = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    long.resize(1400, b'p');
    long.extend_from_slice(b"\r\nX-API-Key: late\r\n\r\n");
    requests.push(long);
    // Generated requests: key headers in any case and place, Bearer and Basic, spaces, other
    // headers, lengths up to the window and past it, and mangled bytes.
    let mut rng = 0x5eed_u64;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    for _ in 0..400 {
        let mut request = b"GET /v1/chat HTTP/1.1\r\nHost: gw\r\n".to_vec();
        for _ in 0..next(6) {
            let field: Vec<u8> = match next(5) {
                0 => b"X-Api-KEY".to_vec(),
                1 => b"authorization".to_vec(),
                2 => b"X-Api-Keys".to_vec(),
                _ => b"X-Pad".to_vec(),
            };
            request.extend_from_slice(&field);
            request.push(b':');
            request.extend(std::iter::repeat_n(b' ', next(3) as usize));
            if next(2) == 0 {
                request.extend_from_slice(if next(2) == 0 { b"Bearer " } else { b"basic " });
            }
            let len = [0, 1, 8, 40, 300][next(5) as usize];
            request.extend((0..len).map(|_| b"abcXYZ019-._~+/="[next(16) as usize]));
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        match next(4) {
            0 => {
                let at = next(request.len() as u64) as usize;
                request[at] = next(256) as u8;
            }
            1 => request.truncate(next(request.len() as u64) as usize + 1),
            _ => {}
        }
        requests.push(request);
    }
    let mut wrong = Vec::new();
    for request in &requests {
        let expected = match scan(request, &headers) {
            Scan::Key(_) => 1,  // XDP_DROP
            Scan::NoKey => 2,   // XDP_PASS
            Scan::NotHttp => 3, // XDP_TX
        };
        let frame = segment(request);
        let got = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::new()
            })
            .unwrap()
            .return_value;
        if got != expected {
            wrong.push(format!(
                "{:?}: kernel {got}, userspace {expected}",
                String::from_utf8_lossy(&request[..request.len().min(60)])
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests:\n{}",
        wrong.len(),
        requests.len(),
        wrong.join("\n")
    );

    // What it costs, for the record (not asserted): a 400-byte request with the key mid-way.
    let mut request = b"POST /v1/chat HTTP/1.1\r\nHost: gw\r\nUser-Agent: test\r\n".to_vec();
    request.resize(200, b'x');
    request.extend_from_slice(b"\r\nX-API-Key: 0123456789abcdef\r\nAccept: */*\r\n");
    request.resize(398, b'y');
    request.extend_from_slice(b"\r\n\r\n");
    let frame = segment(&request);
    let run = program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: 100_000,
            ..TestRunOptions::new()
        })
        .unwrap();
    eprintln!(
        "a {}-byte request scanned in {:?} per run (BPF_PROG_TEST_RUN, repeat 100 000)",
        request.len(),
        run.duration
    );
}
