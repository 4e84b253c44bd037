//! Response bodies through the cache: a backend body read up to `maxObjectSize` to be
//! stored, and the one that turned out larger, streamed on with what was read of it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Either};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::forwarding::ResponseBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the cache answers with: a response body of the proxy (the backend's streamed
/// through, or a stored one), or a backend body whose start the cache has read.
pub type Body = Either<ResponseBody, Spliced>;

/// The frames already read of a body, then the rest of it.
pub struct Spliced {
    read: VecDeque<Bytes>,
    read_bytes: u64,
    rest: ResponseBody,
}

impl HttpBody for Spliced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.read.pop_front() {
            this.read_bytes -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.read_bytes);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.read_bytes);
        }
        hint
    }
}

/// A backend body after [`read_up_to`].
pub enum Read {
    /// It ended within the limit: here it is whole (trailers, if any, are dropped).
    Whole(Bytes),
    /// It is larger than the limit (by its length, or by what was read of it).
    TooLarge(Spliced),
    /// It failed before its end or the limit.
    Failed(BoxError),
}

/// Reads `body` until its end, or until more than `limit` bytes came; a body whose length
/// says it is larger is not read at all.
pub async fn read_up_to(mut body: ResponseBody, limit: u64) -> Read {
    let mut read = VecDeque::new();
    let mut read_bytes = 0u64;
    if body.size_hint().lower() > limit {
        return Read::TooLarge(Spliced {
            read,
            read_bytes,
            rest: body,
        });
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(chunk) = frame.into_data() {
                    read_bytes += chunk.len() as u64;
                    read.push_back(chunk);
                }
                if read_bytes > limit {
                    return Read::TooLarge(Spliced {
                        read,
                        read_bytes,
                        rest: body,
                    });
                }
            }
            Err(err) => return Read::Failed(err),
        }
    }
    let mut whole = bytes::BytesMut::with_capacity(read_bytes as usize);
    for chunk in read {
        whole.extend_from_slice(&chunk);
    }
    Read::Whole(whole.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn full(n: usize) -> ResponseBody {
        Either::Right(Full::new(Bytes::from(vec![b'a'; n])))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        match read_up_to(full(10), 10).await {
            Read::Whole(bytes) => assert_eq!(bytes.len(), 10),
            _ => panic!("not whole"),
        }
    }

    #[tokio::test]
    async fn a_larger_body_streams_on_with_nothing_lost() {
        let Read::TooLarge(spliced) = read_up_to(full(11), 10).await else {
            panic!("not too large");
        };
        assert_eq!(spliced.size_hint().exact(), Some(11));
        let bytes = spliced.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 11);
    }
}
