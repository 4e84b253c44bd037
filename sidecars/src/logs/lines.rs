//! Splitting a byte stream into lines with large reads and memchr, without copying lines
//! out of the read buffer.

use std::io::{self, Read};

use super::pipeline::MAX_RECORD;

/// A read buffer that hands out complete lines and keeps the partial last one.
pub struct LineBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read returned less than it had room for: the input is caught up.
    short_read: bool,
}

impl Default for LineBuf {
    fn default() -> Self {
        // Zeroed allocations are mapped lazily, so an idle sidecar does not pay for this.
        LineBuf {
            buf: vec![0; MAX_RECORD],
            start: 0,
            end: 0,
            short_read: false,
        }
    }
}

impl LineBuf {
    /// Reads once into the free space (moving a partial line to the front first).
    /// Returns the bytes read; 0 means end of input for now.
    pub fn fill(&mut self, reader: &mut impl Read) -> io::Result<usize> {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match reader.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.short_read = n < self.buf.len() - self.end;
                    self.end += n;
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Whether the last read found less data than it had room for (a pipe or a growing
    /// file that has been read up to its end): time to send out what is buffered.
    pub fn caught_up(&self) -> bool {
        self.short_read
    }

    /// Calls `each` with every complete line (without `\n`) and drops them.
    #[inline]
    pub fn lines<E>(&mut self, mut each: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let data = &self.buf[self.start..self.end];
        let mut pos = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            each(&data[pos..nl])?;
            pos = nl + 1;
        }
        self.start += pos;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(())
    }

    /// A full buffer without a single `\n`: the line is longer than we hold. Takes it
    /// out so reading can go on.
    pub fn take_overlong(&mut self) -> Option<&[u8]> {
        if self.start == 0 && self.end == self.buf.len() {
            self.end = 0;
            Some(&self.buf[..])
        } else {
            None
        }
    }

    /// Takes the partial last line (input ended without a final `\n`).
    pub fn take_partial(&mut self) -> Option<&[u8]> {
        if self.start == self.end {
            return None;
        }
        let (start, end) = (self.start, self.end);
        self.start = 0;
        self.end = 0;
        Some(&self.buf[start..end])
    }
}

/// Which side of the pipeline failed.
#[derive(Debug)]
pub enum StepError {
    /// Reading the input.
    Read(io::Error),
    /// Writing records.
    Write(io::Error),
}

impl StepError {
    /// The sidecar's error for this failure, naming the input or output it happened on.
    pub fn naming(self, input: &str, output: &str) -> super::Error {
        match self {
            StepError::Read(source) => super::Error::Read {
                path: input.to_owned(),
                source,
            },
            StepError::Write(source) => super::Error::Write {
                path: output.to_owned(),
                source,
            },
        }
    }
}

/// Reads once from `reader` and feeds every complete line to `pipe`. Returns the bytes
/// read (0: nothing more for now).
pub fn step<W: io::Write>(
    lines: &mut LineBuf,
    reader: &mut impl Read,
    pipe: &mut super::pipeline::Pipeline<W>,
) -> Result<usize, StepError> {
    let n = lines.fill(reader).map_err(StepError::Read)?;
    pipe.add_bytes(n);
    lines
        .lines(|line| pipe.line(line))
        .map_err(StepError::Write)?;
    if let Some(piece) = lines.take_overlong() {
        pipe.overlong_piece(piece).map_err(StepError::Write)?;
    }
    Ok(n)
}

/// Emits the partial last line, if any, as a record of its own.
pub fn finish_partial<W: io::Write>(
    lines: &mut LineBuf,
    pipe: &mut super::pipeline::Pipeline<W>,
) -> io::Result<()> {
    match lines.take_partial() {
        Some(partial) => pipe.line(partial),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::format::Parser;
    use crate::logs::pipeline::Pipeline;

    /// A reader that returns its data in small pieces, as a pipe would.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn run(input: &[u8], piece: usize) -> Vec<serde_json::Value> {
        let mut pipe = Pipeline::new(Parser::Logfmt, None, Vec::new());
        let mut lines = LineBuf::default();
        let mut reader = Trickle(input, piece);
        while step(&mut lines, &mut reader, &mut pipe).unwrap() > 0 {}
        finish_partial(&mut lines, &mut pipe).unwrap();
        pipe.finish().unwrap();
        let stats = pipe.stats();
        assert_eq!(stats.bytes, input.len() as u64);
        let out = pipe.into_sink();
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_split_across_reads_and_a_partial_last_line_are_kept() {
        let input = b"a=1\r\nb=2\n\nc=3";
        for piece in [1, 2, 3, 1000] {
            let records = run(input, piece);
            let keys: Vec<String> = records
                .iter()
                .map(|r| r.as_object().unwrap().keys().next().unwrap().clone())
                .collect();
            assert_eq!(keys, ["a", "b", "c"], "piece size {piece}");
            assert_eq!(records[0]["a"], "1", "CR dropped");
        }
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_split_not_lost() {
        let mut input = vec![b'x'; MAX_RECORD + 10];
        input.extend_from_slice(b"\nk=v\n");
        let records = run(&input, usize::MAX);
        assert_eq!(records.len(), 3);
        let first = records[0]["message"].as_str().unwrap();
        let second = records[1]["message"].as_str().unwrap();
        assert_eq!(first.len() + second.len(), MAX_RECORD + 10);
        assert!(
            records[0]["error"]
                .as_str()
                .unwrap()
                .contains("longer than")
        );
        assert_eq!(records[2]["k"], "v");
    }
}
