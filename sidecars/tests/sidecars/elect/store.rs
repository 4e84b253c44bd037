//! A write path fenced by the token: a tiny HTTP store that keeps one value and refuses a
//! write whose `Fencing-Token` is lower than the highest it has accepted (what a database
//! does with `UPDATE … WHERE fence <= $token`), and writers that, like an app, ask their
//! sidecar for the token and write with it while it says they lead.

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Replica;

/// One accepted write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub token: u64,
    pub writer: String,
    pub seq: u64,
}

#[derive(Default)]
struct State {
    highest: u64,
    log: Vec<Accepted>,
}

/// The store, serving until the test process exits.
pub struct FencedStore {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FencedStore {
    pub fn start() -> FencedStore {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the store");
        let addr = listener.local_addr().expect("the store's address");
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        FencedStore { addr, state }
    }

    /// Every accepted write, in the order the store accepted them.
    pub fn log(&self) -> Vec<Accepted> {
        self.state.lock().unwrap().log.clone()
    }

    /// The highest token accepted.
    pub fn highest(&self) -> u64 {
        self.state.lock().unwrap().highest
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut token = None;
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "fencing-token" => token = value.trim().parse::<u64>().ok(),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body);
    let (writer, seq) = body.split_once(' ').unwrap_or(("", "0"));
    let status = match token {
        None => "400 No Token",
        Some(token) => {
            let mut state = state.lock().unwrap();
            // The fence: a token lower than one already accepted is a deposed leader's.
            if token >= state.highest {
                state.highest = token;
                state.log.push(Accepted {
                    token,
                    writer: writer.to_owned(),
                    seq: seq.parse().unwrap_or(0),
                });
                "200 OK"
            } else {
                "409 Stale Token"
            }
        }
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// PUTs `writer seq` with `token`; returns the status.
pub fn put(store: SocketAddr, token: u64, writer: &str, seq: u64) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&store, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let body = format!("{writer} {seq}");
    write!(
        stream,
        "PUT /value HTTP/1.1\r\nHost: store\r\nFencing-Token: {token}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// What a writer did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Writes the store acknowledged.
    pub acked: Vec<Accepted>,
    /// Writes it refused, with their tokens.
    pub refused: Vec<u64>,
}

#[derive(Default)]
struct Pause {
    /// Set by the test: hold the next write, with the token already read.
    requested: bool,
    /// Set by the writer: it holds this token and waits.
    holding: Option<u64>,
}

/// An app beside one sidecar: reads the token, writes with it, again and again.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pause: Arc<(Mutex<Pause>, Condvar)>,
    thread: Option<JoinHandle<Outcome>>,
}

impl Writer {
    pub fn start(replica: &Replica, store: SocketAddr) -> Writer {
        let stop: Arc<AtomicBool> = Arc::default();
        let pause: Arc<(Mutex<Pause>, Condvar)> = Arc::default();
        let (name, admin) = (replica.name.clone(), replica.admin);
        let (stopping, paused) = (stop.clone(), pause.clone());
        let thread = std::thread::spawn(move || {
            let mut outcome = Outcome::default();
            let mut seq = 0;
            while !stopping.load(Ordering::Relaxed) {
                let view = super::get_json(admin, "/leader", Duration::from_secs(10));
                let token = match view {
                    Ok(view) if view["isLeader"] == true => view["fencingToken"].as_u64(),
                    _ => None,
                };
                let Some(token) = token else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                // The app's pause (a long GC) between reading the token and writing.
                {
                    let (lock, wake) = &*paused;
                    let mut pause = lock.lock().unwrap();
                    if pause.requested {
                        pause.holding = Some(token);
                        wake.notify_all();
                        while pause.requested {
                            pause = wake.wait(pause).unwrap();
                        }
                        pause.holding = None;
                    }
                }
                seq += 1;
                match put(store, token, &name, seq) {
                    Some(200) => outcome.acked.push(Accepted {
                        token,
                        writer: name.clone(),
                        seq,
                    }),
                    Some(409) => outcome.refused.push(token),
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            outcome
        });
        Writer {
            stop,
            pause,
            thread: Some(thread),
        }
    }

    /// Makes the writer hold its next write (token in hand) until [`Writer::resume`];
    /// returns the token it holds, once it holds one.
    pub fn pause_with_token(&self, timeout: Duration) -> u64 {
        let (lock, wake) = &*self.pause;
        let mut pause = lock.lock().unwrap();
        pause.requested = true;
        let (pause, _) = wake
            .wait_timeout_while(pause, timeout, |p| p.holding.is_none())
            .unwrap();
        pause
            .holding
            .unwrap_or_else(|| panic!("the writer got no token to hold within {timeout:?}"))
    }

    /// Lets a paused writer write.
    pub fn resume(&self) {
        let (lock, wake) = &*self.pause;
        lock.lock().unwrap().requested = false;
        wake.notify_all();
    }

    /// Stops the writer; what it did.
    pub fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.resume();
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the writer thread")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.resume();
    }
}
