//! `aws-chunked` request bodies (`Content-Encoding: aws-chunked`), as botocore sends them with
//! `x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`: `<hex size>[;ext]\r\n<data>\r\n`
//! repeated, a `0` chunk, then trailer lines (`x-amz-checksum-crc32:<base64>`) and a blank line.
//! Decoded incrementally, so a body of any size passes through in bounded memory.

#[derive(Debug, Default)]
pub struct Decoder {
    state: State,
    line: Vec<u8>,
    /// Trailer headers, lower-case names.
    pub trailers: Vec<(String, String)>,
}

#[derive(Debug, Default, PartialEq)]
enum State {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Longest chunk-size or trailer line accepted (signatures and checksums fit well inside).
const MAX_LINE: usize = 4096;

impl Decoder {
    /// Feeds received bytes; decoded data goes to `out`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                State::Data(left) => {
                    let n = (left as usize).min(input.len());
                    out(&input[..n])?;
                    input = &input[n..];
                    self.state = if left as usize == n {
                        State::DataEnd
                    } else {
                        State::Data(left - n as u64)
                    };
                }
                State::Done => return Err("data after the end of an aws-chunked body".into()),
                _ => {
                    let Some(i) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > MAX_LINE {
                            return Err("an aws-chunked line is too long".into());
                        }
                        return Ok(());
                    };
                    self.line.extend_from_slice(&input[..i]);
                    input = &input[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    let line = String::from_utf8(line)
                        .map_err(|_| "an aws-chunked line is not UTF-8".to_string())?;
                    self.line_done(line.trim_end_matches('\r'))?;
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &str) -> Result<(), String> {
        match self.state {
            State::Size => {
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| format!("aws-chunked chunk size {size:?} is not hex"))?;
                self.state = if size == 0 {
                    State::Trailer
                } else {
                    State::Data(size)
                };
            }
            State::DataEnd => {
                if !line.is_empty() {
                    return Err("an aws-chunked chunk is longer than its size".into());
                }
                self.state = State::Size;
            }
            State::Trailer => {
                if line.is_empty() {
                    self.state = State::Done;
                } else {
                    let (k, v) = line
                        .split_once(':')
                        .ok_or_else(|| format!("aws-chunked trailer {line:?} has no ':'"))?;
                    self.trailers
                        .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            State::Data(_) | State::Done => unreachable!("not a line state"),
        }
        Ok(())
    }

    /// Whether the whole body (the final chunk and the trailers) arrived.
    pub fn finished(&self) -> bool {
        // Some senders end right after the trailers without the blank line.
        self.state == State::Done || (self.state == State::Trailer && self.line.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, Decoder), String> {
        let mut d = Decoder::default();
        let mut out = vec![];
        for p in pieces {
            d.feed(p, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
        }
        Ok((out, d))
    }

    #[test]
    fn decodes_botocore_unsigned_trailer_bodies_split_anywhere() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n";
        for cut in 0..body.len() {
            let (out, d) = decode(&[&body[..cut], &body[cut..]]).unwrap();
            assert_eq!(out, b"hello world");
            assert!(d.finished());
            assert_eq!(
                d.trailers,
                vec![("x-amz-checksum-crc32".into(), "DUoRhQ==".into())]
            );
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(decode(&[b"zz\r\n"]).is_err());
        assert!(decode(&[b"2\r\nabc\r\n"]).is_err());
        let (_, d) = decode(&[b"5\r\nhel"]).unwrap();
        assert!(!d.finished());
    }
}
