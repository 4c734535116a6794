//! Framing: a message is its tag byte and an i32 length over bytes; only the
//! fields a decision needs are decoded. Writers for the messages the front door
//! makes itself.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One protocol message, whole (tag, length and body), as it came.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Message {
    /// The body (after tag and length).
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// A message longer than the bound.
#[derive(Debug, thiserror::Error)]
#[error("a message of {len} bytes is longer than the limit of {max}")]
pub(crate) struct TooLong {
    pub len: usize,
    pub max: usize,
}

/// Takes the next whole message off the front of `buf`, if one is there.
pub(crate) fn next_message(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, TooLong> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if !(4..=max).contains(&len) {
        return Err(TooLong { len, max });
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let bytes = buf.split_to(len + 1).freeze();
    Ok(Some(Message {
        tag: bytes[0],
        bytes,
    }))
}

/// The length (tag included) of the whole message `buf` starts with, if it
/// holds all of it (a backend's messages: no bound but its own length).
pub(crate) fn whole_message_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 5 {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = usize::try_from(len).ok().filter(|&l| l >= 4)? + 1;
    (buf.len() >= len).then_some(len)
}

/// The length (tag included) of the DataRow or CopyData `buf` starts with, if
/// it is longer than `over` (whether or not all of it is there yet).
pub(crate) fn large_row_len(buf: &[u8], over: usize) -> Option<usize> {
    if buf.len() < 5 || !matches!(buf[0], b'D' | b'd') {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = usize::try_from(len).ok()? + 1;
    (len > over).then_some(len)
}

/// Whether `buf` starts with a whole message.
pub(crate) fn has_message(buf: &[u8]) -> bool {
    if buf.len() < 5 {
        return false;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    usize::try_from(len).is_ok_and(|len| buf.len() > len)
}

/// The text columns of a DataRow's body (None for NULL); None if malformed.
pub(crate) fn row_texts(mut body: &[u8]) -> Option<Vec<Option<String>>> {
    let n = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    body = &body[2..];
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        body = &body[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        out.push(Some(String::from_utf8_lossy(body.get(..len)?).into_owned()));
        body = &body[len..];
    }
    Some(out)
}

/// Reads a NUL-terminated string off the front of `body`.
pub(crate) fn cstr<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = body.iter().position(|&b| b == 0)?;
    let s = &body[..end];
    *body = &body[end + 1..];
    Some(s)
}

/// Starts a message with `tag`; [`finish`] writes its length.
pub(crate) fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

/// Writes the length of the message begun at `at`.
pub(crate) fn finish(out: &mut BytesMut, at: usize) {
    let len = i32::try_from(out.len() - at).expect("messages stay under 2 GiB");
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// An ErrorResponse ('E') or NoticeResponse ('N') with its severity, SQLSTATE
/// and message.
fn response(out: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    let at = begin(out, tag);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(field);
        put_cstr(out, value.as_bytes());
    }
    out.put_u8(0);
    finish(out, at);
}

/// ErrorResponse (severity ERROR or FATAL).
pub(crate) fn error(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    response(out, b'E', severity, code, message);
}

/// NoticeResponse (severity NOTICE).
pub(crate) fn notice(out: &mut BytesMut, code: &str, message: &str) {
    response(out, b'N', "NOTICE", code, message);
}

/// ReadyForQuery with a transaction status.
pub(crate) fn ready(out: &mut BytesMut, status: u8) {
    out.put_slice(&[b'Z', 0, 0, 0, 5, status]);
}

/// ParameterStatus.
pub(crate) fn parameter(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin(out, b'S');
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
    finish(out, at);
}

/// An Authentication message of `kind` with `data`.
pub(crate) fn authentication(out: &mut BytesMut, kind: i32, data: &[u8]) {
    let at = begin(out, b'R');
    out.put_i32(kind);
    out.put_slice(data);
    finish(out, at);
}

/// BackendKeyData.
pub(crate) fn backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u8(b'K');
    out.put_i32(12);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// A simple Query.
pub(crate) fn query(out: &mut BytesMut, sql: &str) {
    let at = begin(out, b'Q');
    put_cstr(out, sql.as_bytes());
    finish(out, at);
}

/// Parse of `sql_and_types` (the body after the statement name) as `name`.
pub(crate) fn parse(out: &mut BytesMut, name: &[u8], sql_and_types: &[u8]) {
    let at = begin(out, b'P');
    put_cstr(out, name);
    out.put_slice(sql_and_types);
    finish(out, at);
}

/// Close of the prepared statement `name`.
pub(crate) fn close_statement(out: &mut BytesMut, name: &[u8]) {
    let at = begin(out, b'C');
    out.put_u8(b'S');
    put_cstr(out, name);
    finish(out, at);
}

/// `message` with its statement name (after `skip` leading C strings of the
/// body) replaced by `name`.
pub(crate) fn renamed(out: &mut BytesMut, message: &Message, skip: usize, name: &[u8]) {
    let mut body = message.body();
    let head_len = {
        let mut rest = body;
        for _ in 0..skip {
            let _ = cstr(&mut rest);
        }
        body.len() - rest.len()
    };
    let at = begin(out, message.tag);
    out.put_slice(&body[..head_len]);
    body.advance(head_len);
    let _ = cstr(&mut body);
    put_cstr(out, name);
    out.put_slice(body);
    finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_taken_only_when_whole() {
        let mut out = BytesMut::new();
        query(&mut out, "SELECT 1");
        let whole = out.clone();
        let mut buf = BytesMut::from(&whole[..7]);
        assert!(next_message(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(&whole[7..]);
        assert!(has_message(&buf));
        let m = next_message(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(m.tag, b'Q');
        assert_eq!(m.body(), b"SELECT 1\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn lengths_out_of_bounds_are_refused() {
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        let e = next_message(&mut buf, 1 << 20).unwrap_err();
        assert_eq!(e.len, 0x7fff_ffff);
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(next_message(&mut buf, 1 << 20).is_err());
    }

    #[test]
    fn bind_and_describe_are_renamed_in_place() {
        // Bind: portal "", statement "s1", then formats and values.
        let mut bind = BytesMut::new();
        let at = begin(&mut bind, b'B');
        bind.put_slice(b"\0s1\0\0\0\0\0\0\0");
        finish(&mut bind, at);
        let m = next_message(&mut bind, 1024).unwrap().unwrap();
        let mut out = BytesMut::new();
        renamed(&mut out, &m, 1, b"pp_7");
        assert_eq!(&out[5..], b"\0pp_7\0\0\0\0\0\0\0");
        assert_eq!(
            i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize,
            out.len() - 1
        );
    }
}
