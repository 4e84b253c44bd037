//! Requests to Redis and memcached over TCP, each under a deadline: the little of each
//! protocol that the metrics adapter (`INFO`, `stats`) and the health monitor (`PING`,
//! `version`) speak. One command needs no client crate, and owning the bytes lets the
//! adapter reuse its buffers from scrape to scrape.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Replies larger than this are refused: no Redis `INFO` or memcached `stats` comes near
/// it, and a stream of garbage must not grow the buffer without end.
const MAX_REPLY: usize = 16 << 20;

/// What went wrong talking to a server. Every variant names the address.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL of a server did not parse.
    #[error("invalid {scheme} URL {url:?}: {reason}")]
    Url {
        /// `redis` or `memcached`.
        scheme: &'static str,
        /// The URL as given (a password in it is masked).
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading or writing failed, or the server closed the connection.
    #[error("{addr}: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// No complete answer within the deadline.
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The server answered with an error (`-ERR …`, `SERVER_ERROR …`).
    #[error("{addr} answered with an error: {message}")]
    Server {
        /// `host:port`.
        addr: String,
        /// The server's message.
        message: String,
    },
    /// The bytes received are not what the protocol allows here.
    #[error("{addr}: unexpected reply: {message}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// What was unexpected.
        message: String,
    },
}

/// Redis credentials from a URL's user-info (`redis://user:password@…` or
/// `redis://:password@…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// The ACL user (Redis 6+); `None` for the `requirepass` password alone.
    pub user: Option<String>,
    /// The password.
    pub password: String,
}

/// A server to talk to: `host:port` and, for Redis, credentials and a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, as given to `connect`.
    pub addr: String,
    /// Credentials (Redis only).
    pub auth: Option<Auth>,
    /// The URL with any password replaced by `***`, for names, labels and logs.
    pub display: String,
}

impl Target {
    /// Parses `scheme://[[user]:password@]host[:port][/…]`. The path is ignored (a Redis
    /// database number has no bearing on `PING` or `INFO`).
    pub fn parse(url: &str, scheme: &'static str, default_port: u16) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Url {
            scheme,
            url: mask_password(url),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| bad(&format!("must start with {scheme}://")))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let auth = match userinfo {
            None => None,
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or(("", info));
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| bad("user or password is not UTF-8 once decoded"))
                };
                let user = decode(user)?;
                Some(Auth {
                    user: (!user.is_empty()).then_some(user),
                    password: decode(password)?,
                })
            }
        };
        if scheme == "memcached" && auth.is_some() {
            return Err(bad(
                "memcached's text protocol has no password; remove user:password@",
            ));
        }
        let authority: http::uri::Authority = hostport
            .parse()
            .map_err(|_| bad("expected HOST:PORT after the scheme"))?;
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        let addr = format!("{}:{port}", authority.host());
        let display = format!("{scheme}://{addr}");
        Ok(Target {
            addr,
            auth,
            display,
        })
    }
}

/// `url` with the password of its user-info replaced by `***`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((info, _)) => {
            let user = info.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{}", &rest[info.len() + 1..])
        }
        None => url.to_owned(),
    }
}

/// One reply to a Redis command (error replies come back as [`Error::Server`]).
#[derive(Debug, PartialEq, Eq)]
pub enum RedisReply<'a> {
    /// `+OK`, `+PONG`.
    Simple(&'a [u8]),
    /// `$n` bulk string (`None` for the null bulk string).
    Bulk(Option<&'a [u8]>),
    /// `:n`.
    Integer(i64),
}

/// An open connection to one server, with a receive buffer kept across requests.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    addr: String,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (`host:port`) within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Conn, Error> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout {
                addr: addr.to_owned(),
                timeout,
            })?
            .map_err(|source| Error::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        // Requests are single small writes that wait for their answer: Nagle only delays.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            addr: addr.to_owned(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Connects to a Redis target and authenticates if the target has credentials.
    pub async fn redis_login(target: &Target, timeout: Duration) -> Result<Conn, Error> {
        let mut conn = Conn::connect(&target.addr, timeout).await?;
        if let Some(auth) = &target.auth {
            let reply = match &auth.user {
                Some(user) => {
                    conn.redis(
                        &[b"AUTH", user.as_bytes(), auth.password.as_bytes()],
                        timeout,
                    )
                    .await?
                }
                None => {
                    conn.redis(&[b"AUTH", auth.password.as_bytes()], timeout)
                        .await?
                }
            };
            if reply != RedisReply::Simple(b"OK") {
                let message = format!("AUTH answered {reply:?}, not +OK");
                return Err(protocol(&target.addr, message));
            }
        }
        Ok(conn)
    }

    /// The server this connection talks to, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one Redis command and reads its reply, all within `timeout`.
    pub async fn redis(
        &mut self,
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<RedisReply<'_>, Error> {
        self.redis_encoded(&encode_command(args), timeout).await
    }

    /// [`Self::redis`] with a command encoded once by [`encode_command`] (scrapes repeat
    /// the same command).
    pub async fn redis_encoded(
        &mut self,
        request: &[u8],
        timeout: Duration,
    ) -> Result<RedisReply<'_>, Error> {
        let len = self.exchange(request, timeout, redis_reply_len).await?;
        let reply = &self.buf[..len];
        match reply[0] {
            b'+' => Ok(RedisReply::Simple(&reply[1..len - 2])),
            b':' => std::str::from_utf8(&reply[1..len - 2])
                .ok()
                .and_then(|s| s.parse().ok())
                .map(RedisReply::Integer)
                .ok_or_else(|| protocol(&self.addr, "integer reply is not a number".into())),
            b'$' if reply[1] == b'-' => Ok(RedisReply::Bulk(None)),
            b'$' => {
                let start = memchr::memchr(b'\n', reply).map_or(len, |i| i + 1);
                Ok(RedisReply::Bulk(Some(&reply[start..len - 2])))
            }
            b'-' => Err(Error::Server {
                addr: self.addr.clone(),
                message: String::from_utf8_lossy(&reply[1..len - 2]).into_owned(),
            }),
            _ => unreachable!("redis_reply_len accepts only these first bytes"),
        }
    }

    /// Sends a memcached text command (`stats`, `version`) and reads its reply: up to and
    /// including `END\r\n` for `stats`, one line otherwise. Returns the reply's bytes.
    pub async fn memcached(&mut self, command: &[u8], timeout: Duration) -> Result<&[u8], Error> {
        let multi_line = command.starts_with(b"stats");
        let mut request = Vec::with_capacity(command.len() + 2);
        request.extend_from_slice(command);
        request.extend_from_slice(b"\r\n");
        let len = self
            .exchange(&request, timeout, |buf| {
                memcached_reply_len(buf, multi_line)
            })
            .await?;
        let reply = &self.buf[..len];
        for prefix in [&b"SERVER_ERROR"[..], b"CLIENT_ERROR", b"ERROR"] {
            if reply.starts_with(prefix) {
                return Err(Error::Server {
                    addr: self.addr.clone(),
                    message: String::from_utf8_lossy(reply.trim_ascii_end()).into_owned(),
                });
            }
        }
        Ok(reply)
    }

    /// Writes `request`, then reads until `complete` finds a whole reply in the buffer
    /// (`Ok(Some(len))`), all within `timeout`. The previous reply is dropped first.
    async fn exchange(
        &mut self,
        request: &[u8],
        timeout: Duration,
        complete: impl Fn(&[u8]) -> Result<Option<usize>, String>,
    ) -> Result<usize, Error> {
        self.buf.clear();
        let addr = &self.addr;
        let io = |source| Error::Io {
            addr: addr.clone(),
            source,
        };
        let work = async {
            self.stream.write_all(request).await.map_err(io)?;
            loop {
                if let Some(len) = complete(&self.buf).map_err(|m| protocol(addr, m))? {
                    return Ok(len);
                }
                if self.buf.len() >= MAX_REPLY {
                    return Err(protocol(
                        addr,
                        format!("reply longer than {MAX_REPLY} bytes"),
                    ));
                }
                self.buf.reserve(8192);
                let n = self.stream.read_buf(&mut self.buf).await.map_err(io)?;
                if n == 0 {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed before a complete reply",
                    )));
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                addr: self.addr.clone(),
                timeout,
            })?
    }
}

/// A Redis command as a RESP array of bulk strings.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut request = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request
}

fn protocol(addr: &str, message: String) -> Error {
    Error::Protocol {
        addr: addr.to_owned(),
        message,
    }
}

/// Length of the first complete RESP reply in `buf` (simple, error, integer or bulk), or
/// `None` if more bytes are needed.
fn redis_reply_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(first) = buf.first() else {
        return Ok(None);
    };
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err("line not ended by CRLF".into());
    }
    match first {
        b'+' | b'-' | b':' => Ok(Some(nl + 1)),
        b'$' => {
            let n: i64 = std::str::from_utf8(&buf[1..nl - 1])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bulk length is not a number")?;
            if n < 0 {
                return Ok(Some(nl + 1));
            }
            let n = usize::try_from(n).map_err(|_| "bulk length out of range")?;
            if n > MAX_REPLY {
                return Err(format!("bulk reply of {n} bytes is too long"));
            }
            let total = nl + 1 + n + 2;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Err("bulk string not ended by CRLF".into());
            }
            Ok(Some(total))
        }
        other => Err(format!(
            "reply starts with {:?}, expected one of + - : $",
            char::from(*other)
        )),
    }
}

/// Length of a complete memcached reply in `buf`: through `END\r\n` when `multi_line`
/// (or an error line), else through the first line.
fn memcached_reply_len(buf: &[u8], multi_line: bool) -> Result<Option<usize>, String> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    let first = &buf[..=nl];
    let is_error = [&b"ERROR"[..], b"SERVER_ERROR", b"CLIENT_ERROR"]
        .iter()
        .any(|p| first.starts_with(p));
    if !multi_line || is_error {
        return Ok(Some(nl + 1));
    }
    if buf.starts_with(b"END\r\n") {
        return Ok(Some(5));
    }
    Ok(memchr::memmem::find(buf, b"\r\nEND\r\n").map(|i| i + 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_give_address_credentials_and_a_masked_name() {
        let t = Target::parse("redis://app:s%40cret@cache.svc:6380/2", "redis", 6379).unwrap();
        assert_eq!(t.addr, "cache.svc:6380");
        assert_eq!(
            t.auth,
            Some(Auth {
                user: Some("app".into()),
                password: "s@cret".into()
            })
        );
        assert_eq!(t.display, "redis://cache.svc:6380");

        let t = Target::parse("redis://:pw@127.0.0.1", "redis", 6379).unwrap();
        assert_eq!(t.addr, "127.0.0.1:6379");
        assert_eq!(t.auth.unwrap().user, None);

        let err = Target::parse("redis://:pw@", "redis", 6379)
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis://:***@"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(Target::parse("http://x:1", "redis", 6379).is_err());
        let err = Target::parse("memcached://u:p@m:1", "memcached", 11211).unwrap_err();
        assert!(err.to_string().contains("no password"), "{err}");
    }

    #[test]
    fn masking_keeps_the_user_and_hides_the_password() {
        assert_eq!(
            mask_password("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(mask_password("redis://db:6379"), "redis://db:6379");
    }

    #[test]
    fn resp_replies_are_framed_only_when_complete() {
        assert_eq!(redis_reply_len(b"+PONG\r\n"), Ok(Some(7)));
        assert_eq!(redis_reply_len(b"+PON"), Ok(None));
        assert_eq!(redis_reply_len(b"$5\r\nhel"), Ok(None));
        assert_eq!(redis_reply_len(b"$5\r\nhello\r\n+x"), Ok(Some(11)));
        assert_eq!(redis_reply_len(b"$-1\r\n"), Ok(Some(5)));
        assert!(redis_reply_len(b"*1\r\n").is_err());
        assert!(redis_reply_len(b"$x\r\n").is_err());
        assert!(redis_reply_len(b"$2\r\nabcd").is_err());
    }

    #[test]
    fn memcached_stats_end_at_the_end_line() {
        let stats = b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n";
        assert_eq!(memcached_reply_len(&stats[..20], true), Ok(None));
        assert_eq!(memcached_reply_len(stats, true), Ok(Some(stats.len())));
        assert_eq!(memcached_reply_len(b"ERROR\r\n", true), Ok(Some(7)));
        assert_eq!(memcached_reply_len(b"VERSION 1.6\r\n", false), Ok(Some(13)));
        // A value that merely contains END is not the end.
        assert_eq!(memcached_reply_len(b"STAT x ENDING\r\n", true), Ok(None));
    }

    proptest::proptest! {
        /// A frame length, when found, never points past the bytes received.
        #[test]
        fn framing_never_overruns(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300), multi in proptest::bool::ANY) {
            if let Ok(Some(n)) = redis_reply_len(&bytes) {
                proptest::prop_assert!(n <= bytes.len());
            }
            if let Ok(Some(n)) = memcached_reply_len(&bytes, multi) {
                proptest::prop_assert!(n <= bytes.len());
            }
        }
    }
}
