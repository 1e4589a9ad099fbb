//! Response heads from backends: parsing, body framing (RFC 9112 §6.3) and
//! the head sent to the client. A response the proxy cannot frame with
//! certainty is garbage: the caller answers 502 and drops the connection.

use super::body::Framing;
use super::chunked::ChunkedDecoder;
use super::request::{put_content_length, Writer};
use super::{classify, lines_end_in_crlf, list_tokens, ConnectionTokens, Name};
use crate::buffer::Buf;

const MAX_RESPONSE_HEADERS: usize = 100;

/// What the client side needs to know to answer it.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    pub http10: bool,
    pub keep_alive: bool,
    pub head_request: bool,
    pub upgrade_requested: bool,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend connection may carry another request afterwards.
    pub upstream_reusable: bool,
    /// Strip the chunked coding (the client speaks HTTP/1.0).
    pub strip_chunked: bool,
    /// Close the client connection once this response is sent.
    pub close_client: bool,
    /// 1xx other than 101: an interim answer, the final one follows.
    pub interim: bool,
    /// 101 to an upgrade request: the connection becomes a tunnel.
    pub switching: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbage;

/// Parses a response head at the start of `buf` and writes the head for the
/// client into `out`. `Ok(None)`: incomplete.
pub fn parse_and_rewrite(
    buf: &[u8],
    client: ClientSide,
    out: &mut Buf,
) -> Result<Option<ResponseHead>, Garbage> {
    let mut raw = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Garbage),
    };
    // memchr's vector search, not the slice's word-at-a-time `contains`.
    if memchr::memchr(0, &buf[..head_len]).is_some() {
        return Err(Garbage);
    }
    let status = resp.code.ok_or(Garbage)?;
    let http10 = resp.version == Some(0);
    let reason = resp.reason.unwrap_or("");

    let mut conn = ConnectionTokens::default();
    let mut content_length: Option<u64> = None;
    let mut cl_lines = 0u32;
    let mut te_chunked = None::<bool>;
    let mut te_other_coding = false;
    let mut chunked_count = 0u32;
    // Each name classified once; the rewriting pass below reuses it.
    let mut names = [Name::Other; MAX_RESPONSE_HEADERS];
    for (h, kind) in resp.headers.iter().zip(names.iter_mut()) {
        let name = classify(h.name);
        *kind = name;
        if name == Name::ContentLength {
            let v = h.value.trim_ascii();
            if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Garbage);
            }
            let n = v.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64);
            if content_length.is_some_and(|p| p != n) {
                return Err(Garbage);
            }
            content_length = Some(n);
            cl_lines += 1;
        } else if name == Name::TransferEncoding {
            // The lines of a field are one list: chunked counts over all.
            let mut last = None;
            for t in list_tokens(h.value) {
                let is_chunked = t.eq_ignore_ascii_case(b"chunked");
                chunked_count += is_chunked as u32;
                te_other_coding |= !is_chunked;
                last = Some(is_chunked);
            }
            te_chunked = Some(last.ok_or(Garbage)?);
        } else if name == Name::Connection && !conn.add(h.value) {
            return Err(Garbage);
        }
    }
    // Framing is never hop-by-hop (a client would frame the body otherwise
    // than we did), and chunked is applied at most once (RFC 9112 §6.1).
    if conn.names_any(&["content-length", "transfer-encoding"]) || chunked_count > 1 {
        return Err(Garbage);
    }
    if te_chunked.is_some() && (http10 || (client.http10 && te_other_coding)) {
        // HTTP/1.0 has no transfer codings: an HTTP/1.0 client could not
        // learn that the body is, say, gzip-coded.
        return Err(Garbage);
    }
    let interim = (100..200).contains(&status) && status != 101;
    let switching = status == 101 && client.upgrade_requested;
    if status == 101 && !client.upgrade_requested {
        return Err(Garbage);
    }
    let no_body = client.head_request || interim || status == 101 || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Empty
    } else if let Some(chunked) = te_chunked {
        if chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let upstream_keep_alive = if http10 {
        conn.keep_alive && !conn.close
    } else {
        !conn.close
    };
    let until_close = matches!(framing, Framing::UntilClose);
    // Content-Length beside Transfer-Encoding was smuggled or broken: never reuse.
    let smuggled = te_chunked.is_some() && content_length.is_some();
    let upstream_reusable = upstream_keep_alive && !(until_close || switching || smuggled);
    let chunked = matches!(framing, Framing::Chunked(_));
    let strip_chunked = chunked && client.http10;
    // Content-Length goes out as one line, and not at all where it is not
    // allowed (1xx, 204) or means nothing (beside Transfer-Encoding). One
    // validated line is kept as it came; repeated ones become one of ours.
    let cl_allowed = te_chunked.is_none() && !interim && status != 101 && status != 204;
    let cl_rewrite = cl_lines > 1 || (cl_lines == 1 && !cl_allowed);
    let close_client =
        !switching && !interim && (!client.keep_alive || until_close || strip_chunked);

    let mut w = Writer { out, ok: true };
    if interim && client.http10 {
        // HTTP/1.0 clients do not understand interim responses: swallow it.
    } else {
        let mut code = [0u8; 3];
        code[0] = b'0' + (status / 100 % 10) as u8;
        code[1] = b'0' + (status / 10 % 10) as u8;
        code[2] = b'0' + (status % 10) as u8;
        w.put(if client.http10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        w.put(&code);
        w.put(b" ");
        w.put(reason.as_bytes());
        w.put(b"\r\n");
        let lines = HeaderLines::of(buf, head_len, resp.headers);
        let mut run_start = None;
        for (h, &name) in resp.headers.iter().zip(&names) {
            // Transfer-Encoding is hop-by-hop, but the body goes on coded as
            // it came (unless chunked is stripped for HTTP/1.0): say so.
            let keep_te = name == Name::TransferEncoding && !strip_chunked;
            let drop = (name.is_hop_by_hop() && !keep_te)
                || conn.names(h.name)
                || (cl_rewrite && name == Name::ContentLength);
            match &lines {
                // Kept lines go out verbatim, a run of them in one copy.
                Some(lines) if drop => {
                    if let Some(start) = run_start.take() {
                        w.put(&buf[start..lines.start_of(h)]);
                    }
                }
                Some(lines) => {
                    run_start.get_or_insert(lines.start_of(h));
                }
                None if drop => {}
                None => {
                    w.put(h.name.as_bytes());
                    w.put(b": ");
                    w.put(h.value);
                    w.put(b"\r\n");
                }
            }
        }
        if let (Some(lines), Some(start)) = (&lines, run_start) {
            w.put(&buf[start..lines.end_of_last]);
        }
        if let (true, true, Some(n)) = (cl_rewrite, cl_allowed, content_length) {
            put_content_length(&mut w, n);
        }
        w.put(b"Via: 1.1 speedmimi\r\n");
        if switching {
            w.put(b"Connection: upgrade\r\n");
            if let Some(up) = resp
                .headers
                .iter()
                .find(|h| classify(h.name) == Name::Upgrade)
            {
                w.put(b"Upgrade: ");
                w.put(up.value);
                w.put(b"\r\n");
            }
        } else if !interim {
            if close_client {
                w.put(b"Connection: close\r\n");
            } else if client.http10 {
                w.put(b"Connection: keep-alive\r\n");
            }
        }
        w.put(b"\r\n");
    }
    if !w.ok {
        return Err(Garbage);
    }
    Ok(Some(ResponseHead {
        head_len,
        status,
        framing,
        upstream_reusable,
        strip_chunked,
        close_client,
        interim,
        switching,
    }))
}

/// Header lines of a response head, to be copied as they came. Only when
/// every line ends in CRLF (`of` is `None` when one ends in a bare LF, which
/// must be rewritten).
struct HeaderLines {
    base: usize,
    /// End of the last header line, CRLF included.
    end_of_last: usize,
}

impl HeaderLines {
    fn of(buf: &[u8], head_len: usize, headers: &[httparse::Header]) -> Option<HeaderLines> {
        let lines = HeaderLines {
            base: buf.as_ptr() as usize,
            end_of_last: head_len.checked_sub(2)?,
        };
        let starts = headers.iter().map(|h| lines.start_of(h));
        (!headers.is_empty() && lines_end_in_crlf(&buf[..head_len], starts)).then_some(lines)
    }

    /// httparse hands out slices of the head: a header's name starts its line.
    fn start_of(&self, h: &httparse::Header) -> usize {
        h.name.as_ptr() as usize - self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufPool;

    const CLIENT11: ClientSide = ClientSide {
        http10: false,
        keep_alive: true,
        head_request: false,
        upgrade_requested: false,
    };

    fn run(resp: &str, client: ClientSide) -> (Result<Option<ResponseHead>, Garbage>, String) {
        let mut pool = BufPool::new(4096, 1);
        let mut out = pool.get();
        let r = parse_and_rewrite(resp.as_bytes(), client, &mut out);
        (r, String::from_utf8_lossy(out.data()).into_owned())
    }

    #[test]
    fn keep_alive_response_is_rewritten() {
        let (r, out) = run(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhi",
            CLIENT11,
        );
        let head = r.unwrap().unwrap();
        assert!(head.upstream_reusable && !head.close_client);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 speedmimi\r\n\r\n"
        );
    }

    #[test]
    fn header_lines_go_out_as_they_came_unless_one_ends_in_a_bare_lf() {
        let (r, out) = run(
            "HTTP/1.1 200 OK\r\nX-A:1\r\nConnection: close\r\nX-B:  2 \r\nContent-Length: 0\r\n\r\n",
            CLIENT11,
        );
        assert!(!r.unwrap().unwrap().upstream_reusable);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-A:1\r\nX-B:  2 \r\nContent-Length: 0\r\nVia: 1.1 speedmimi\r\n\r\n"
        );
        let (r, out) = run("HTTP/1.1 200 OK\nX-A:1\nContent-Length: 0\n\n", CLIENT11);
        r.unwrap().unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\nVia: 1.1 speedmimi\r\n\r\n"
        );
    }

    #[test]
    fn framing_of_responses() {
        let (r, _) = run("HTTP/1.1 200 OK\r\n\r\n", CLIENT11);
        let head = r.unwrap().unwrap();
        assert!(matches!(head.framing, Framing::UntilClose));
        assert!(head.close_client && !head.upstream_reusable);
        let (r, _) = run("HTTP/1.1 204 No Content\r\n\r\n", CLIENT11);
        assert!(matches!(r.unwrap().unwrap().framing, Framing::Empty));
        let head_req = ClientSide {
            head_request: true,
            ..CLIENT11
        };
        let (r, _) = run("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head_req);
        assert!(matches!(r.unwrap().unwrap().framing, Framing::Empty));
        let (r, _) = run(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            CLIENT11,
        );
        assert_eq!(r.err(), Some(Garbage));
        let (r, _) = run("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", CLIENT11);
        assert_eq!(r.err(), Some(Garbage));
        let (r, _) = run("garbage\r\n\r\n", CLIENT11);
        assert_eq!(r.err(), Some(Garbage));
    }

    #[test]
    fn framing_fields_are_validated_and_normalized() {
        // Framing named in Connection, chunked twice (on one line or two).
        for resp in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Content-Length\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: x, transfer-encoding\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
        ] {
            assert_eq!(run(resp, CLIENT11).0.err(), Some(Garbage), "{resp:?}");
        }
        // Repeated equal lengths go out as one line of ours.
        let (r, out) = run(
            "HTTP/1.1 200 OK\r\nContent-Length: 05\r\nX: y\r\ncontent-length:5\r\n\r\n",
            CLIENT11,
        );
        assert!(matches!(r.unwrap().unwrap().framing, Framing::Length(5)));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 5\r\nVia: 1.1 speedmimi\r\n\r\n"
        );
        // No length on a 204; the length beside chunked is dropped.
        let (_, out) = run("HTTP/1.1 204 No\r\nContent-Length: 0\r\n\r\n", CLIENT11);
        assert!(!out.contains("Content-Length"), "{out}");
        let (r, out) = run(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
            CLIENT11,
        );
        let head = r.unwrap().unwrap();
        assert!(matches!(head.framing, Framing::Chunked(_)) && !head.upstream_reusable);
        assert!(!out.contains("Content-Length"), "{out}");
        // chunked not last: the body runs until close (RFC 9112 §6.3).
        let (r, _) = run(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            CLIENT11,
        );
        assert!(matches!(r.unwrap().unwrap().framing, Framing::UntilClose));
    }

    #[test]
    fn chunked_to_http10_client_is_stripped() {
        let c10 = ClientSide {
            http10: true,
            keep_alive: true,
            ..CLIENT11
        };
        let (r, out) = run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", c10);
        let head = r.unwrap().unwrap();
        assert!(head.strip_chunked && head.close_client);
        assert_eq!(
            out,
            "HTTP/1.0 200 OK\r\nVia: 1.1 speedmimi\r\nConnection: close\r\n\r\n"
        );
    }
}
