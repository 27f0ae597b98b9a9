//! A webhook receiver for the agent's alerts: a tiny HTTP server on 127.0.0.1 inside a test
//! namespace (where the agent runs) that answers 200 to every POST and keeps its JSON body.

use crate::netns::Netns;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Post {
    pub at: Instant,
    pub path: String,
    pub content_type: String,
    pub body: Value,
}

/// An HTTP server on 127.0.0.1 inside a namespace that answers 200 to every request and keeps
/// what was POSTed.
pub struct WebhookReceiver {
    port: u16,
    posts: Arc<Mutex<Vec<Post>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl WebhookReceiver {
    pub fn start(ns: &Netns) -> WebhookReceiver {
        let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").expect("binding the receiver"));
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (posts, stop) = (Arc::clone(&posts), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Some(post) = answer(stream) {
                                posts.lock().unwrap().push(post);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        WebhookReceiver {
            port,
            posts,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/limiter", self.port)
    }

    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the posts received so far (or `timeout`); returns them.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Post]) -> bool) -> Vec<Post> {
        let deadline = Instant::now() + timeout;
        loop {
            let posts = self.posts();
            if done(&posts) || Instant::now() > deadline {
                return posts;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Reads one HTTP/1.1 request, answers 200 and closes.
fn answer(stream: TcpStream) -> Option<Post> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = reader.into_inner();
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(method, "POST", "the webhook got a {method} request");
    Some(Post {
        at: Instant::now(),
        path,
        content_type,
        body: serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("the webhook got a body that is not JSON ({e})")),
    })
}

/// Every alert in `posts`, in order.
pub fn alerts(posts: &[Post]) -> Vec<Value> {
    posts
        .iter()
        .flat_map(|p| {
            p.body["alerts"]
                .as_array()
                .unwrap_or_else(|| panic!("no alerts array in {}", p.body))
                .clone()
        })
        .collect()
}

/// Sum of a count field over `posts`.
pub fn total(posts: &[Post], field: &str) -> u64 {
    posts
        .iter()
        .map(|p| {
            p.body[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} missing in {}", p.body))
        })
        .sum()
}
