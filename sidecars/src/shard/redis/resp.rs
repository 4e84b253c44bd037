//! An incremental RESP parser that borrows: requests become argument ranges into the
//! read buffer, replies are only measured. Nothing here allocates, except that the caller's
//! argument vector grows to the longest command it has seen.

use crate::shard::proxy::ProtoError;

/// Longest bulk string accepted (Redis's own `proto-max-bulk-len` default).
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// Most arguments in one command (Redis's own limit).
pub const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline command line.
pub const MAX_INLINE: usize = 64 * 1024;
/// Deepest nesting accepted in a reply.
const MAX_ELEMENTS: u64 = 1 << 32;

/// Parses the decimal integer line at `buf[pos..]` (after the type byte). Returns the
/// value and the position after its CRLF, or `None` if the line is not complete yet.
fn int_line(buf: &[u8], pos: usize) -> Result<Option<(i64, usize)>, ProtoError> {
    let Some(cr) = memchr::memchr(b'\r', &buf[pos.min(buf.len())..]) else {
        if buf.len() - pos.min(buf.len()) > 21 {
            return Err(ProtoError("invalid length line"));
        }
        return Ok(None);
    };
    let end = pos + cr;
    if end + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[end + 1] != b'\n' {
        return Err(ProtoError("expected CRLF after a length"));
    }
    let digits = &buf[pos..end];
    let (neg, digits) = match digits {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(ProtoError("invalid length"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(ProtoError("invalid length"));
        }
        n = n * 10 + (d - b'0') as i64;
    }
    Ok(Some((if neg { -n } else { n }, end + 2)))
}

/// Parses one command at the start of `buf`, pushing its arguments' byte ranges onto
/// `args`. Returns the command's length in bytes, or `None` (with `args` unchanged) when
/// it is not complete. A command with no arguments (`*0`, an empty inline line) is valid
/// and pushes nothing.
pub fn parse_command(
    buf: &[u8],
    args: &mut Vec<(usize, usize)>,
) -> Result<Option<usize>, ProtoError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, args);
    }
    let mark = args.len();
    let result = parse_multibulk(buf, args);
    if !matches!(result, Ok(Some(_))) {
        args.truncate(mark);
    }
    result
}

fn parse_multibulk(
    buf: &[u8],
    args: &mut Vec<(usize, usize)>,
) -> Result<Option<usize>, ProtoError> {
    let Some((n, mut pos)) = int_line(buf, 1)? else {
        return Ok(None);
    };
    if n > MAX_ARGS as i64 {
        return Err(ProtoError("too many arguments in a command"));
    }
    for _ in 0..n.max(0) {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(ProtoError("expected '$' for a bulk string argument"));
        }
        let Some((len, start)) = int_line(buf, pos + 1)? else {
            return Ok(None);
        };
        if !(0..=MAX_BULK as i64).contains(&len) {
            return Err(ProtoError("invalid bulk length"));
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtoError("expected CRLF after a bulk string"));
        }
        args.push((start, end));
        pos = end + 2;
    }
    Ok(Some(pos))
}

/// How many bytes the command at the start of `buf` needs at least, when it is incomplete
/// and its header says more than `buf` holds: up to the end of the bulk string being
/// received (arguments after it are not known yet). `None` when unknown or complete.
pub fn command_needs(buf: &[u8]) -> Option<usize> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (n, mut pos) = int_line(buf, 1).ok()??;
    for _ in 0..n.max(0) {
        if buf.get(pos) != Some(&b'$') {
            return None;
        }
        let (len, start) = int_line(buf, pos + 1).ok()??;
        let end = start
            .checked_add(usize::try_from(len).ok()?)?
            .checked_add(2)?;
        if buf.len() < end {
            return Some(end);
        }
        pos = end;
    }
    None
}

fn parse_inline(buf: &[u8], args: &mut Vec<(usize, usize)>) -> Result<Option<usize>, ProtoError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_INLINE {
            return Err(ProtoError("too big inline request"));
        }
        return Ok(None);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut i = 0;
    while i < line_end {
        while i < line_end && matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        let start = i;
        while i < line_end && !matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        if i > start {
            args.push((start, i));
        }
    }
    Ok(Some(nl + 1))
}

/// The length of the complete RESP2 or RESP3 reply at the start of `buf`, or `None` if
/// more bytes are needed.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        if pos >= buf.len() {
            return Ok(None);
        }
        pending -= 1;
        let kind = buf[pos];
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                    return Ok(None);
                };
                pos += nl + 1;
            }
            b'$' | b'!' | b'=' => {
                let Some((len, start)) = int_line(buf, pos + 1)? else {
                    return Ok(None);
                };
                if len < 0 {
                    pos = start;
                } else {
                    let end = start + len as usize + 2;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    pos = end;
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let Some((n, next)) = int_line(buf, pos + 1)? else {
                    return Ok(None);
                };
                let n = n.max(0) as u64;
                let elements = match kind {
                    b'%' => n * 2,
                    // An attribute map precedes the reply it annotates.
                    b'|' => n * 2 + 1,
                    _ => n,
                };
                pending += elements;
                if pending > MAX_ELEMENTS {
                    return Err(ProtoError("reply too large"));
                }
                pos = next;
            }
            _ => return Err(ProtoError("unknown reply type")),
        }
    }
    Ok(Some(pos))
}

/// The element count and header length of an array reply (`*N\r\n`), if `reply` is one.
pub fn array_header(reply: &[u8]) -> Option<(usize, usize)> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    match int_line(reply, 1) {
        Ok(Some((n, next))) if n >= 0 => Some((n as usize, next)),
        _ => None,
    }
}

/// The value of an integer reply (`:N\r\n`), if `reply` is one.
pub fn integer(reply: &[u8]) -> Option<i64> {
    if reply.first() != Some(&b':') {
        return None;
    }
    match int_line(reply, 1) {
        Ok(Some((n, _))) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args_of(buf: &[u8]) -> Option<(usize, Vec<Vec<u8>>)> {
        let mut args = Vec::new();
        let n = parse_command(buf, &mut args).unwrap()?;
        Some((n, args.iter().map(|&(s, e)| buf[s..e].to_vec()).collect()))
    }

    #[test]
    fn an_incomplete_command_needs_up_to_the_end_of_the_bulk_string_being_received() {
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nabc";
        assert_eq!(command_needs(head), Some(head.len() - 3 + 1000 + 2));
        assert_eq!(command_needs(b"*3\r\n$3\r\nSE"), Some(4 + 4 + 5));
        assert_eq!(
            command_needs(b"*3\r\n$3\r\nSET\r\n$"),
            None,
            "length not read yet"
        );
        assert_eq!(command_needs(b"*1\r\n$4\r\nPING\r\n"), None, "complete");
        assert_eq!(command_needs(b"PING"), None, "inline");
        assert_eq!(command_needs(b"*1\r\n$-5\r\n"), None);
    }

    #[test]
    fn parses_multibulk_and_inline_commands() {
        let (n, args) = args_of(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nrest").unwrap();
        assert_eq!(n, 22);
        assert_eq!(args, vec![b"GET".to_vec(), b"key".to_vec()]);
        let (n, args) = args_of(b"PING  hello\r\n").unwrap();
        assert_eq!(n, 13);
        assert_eq!(args, vec![b"PING".to_vec(), b"hello".to_vec()]);
        let (_, args) = args_of(b"$3\r\n").unwrap();
        assert_eq!(
            args,
            vec![b"$3".to_vec()],
            "an inline line, not a protocol error"
        );
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        for cut in 1..cmd.len() {
            let mut args = vec![(7, 7)];
            assert_eq!(
                parse_command(&cmd[..cut], &mut args).unwrap(),
                None,
                "cut at {cut}"
            );
            assert_eq!(
                args,
                vec![(7, 7)],
                "args restored after an incomplete parse"
            );
        }
        assert_eq!(args_of(cmd).unwrap().0, cmd.len());
    }

    #[test]
    fn malformed_commands_are_errors() {
        for bad in [
            &b"*1\r\n:3\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$3\r\nGETxx",
            b"*x\r\n",
            b"*1\r",
            b"*99999999999\r\n",
        ] {
            let mut args = Vec::new();
            let r = parse_command(bad, &mut args);
            assert!(
                r.is_err() || r.as_ref().unwrap().is_none(),
                "{bad:?} → {r:?}"
            );
        }
        let mut args = Vec::new();
        assert!(parse_command(b"*1\r\n$3\r\nGETxx", &mut args).is_err());
        assert!(parse_command(b"*99999999999\r\n", &mut args).is_err());
    }

    #[test]
    fn reply_lengths_cover_resp2_and_resp3() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$5\r\nhello\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"_\r\n",
            b"%1\r\n+k\r\n$1\r\nv\r\n",
            b"~2\r\n,1.5\r\n#t\r\n",
            b"|1\r\n+a\r\n+b\r\n:7\r\n",
            b"=8\r\ntxt:abcd\r\n",
        ];
        for case in cases {
            let mut buf = case.to_vec();
            buf.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(reply_len(&buf).unwrap(), Some(case.len()), "{case:?}");
            for cut in 0..case.len() {
                assert_eq!(reply_len(&case[..cut]).unwrap(), None, "{case:?} cut {cut}");
            }
        }
        assert!(reply_len(b"?what\r\n").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut args = Vec::new();
            if let Ok(Some(n)) = parse_command(&bytes, &mut args) {
                prop_assert!(n <= bytes.len());
                for (s, e) in args {
                    prop_assert!(s <= e && e <= bytes.len());
                }
            }
            if let Ok(Some(n)) = reply_len(&bytes) {
                prop_assert!(n <= bytes.len());
            }
        }
    }
}
