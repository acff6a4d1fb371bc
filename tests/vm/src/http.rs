//! A minimal HTTP/1.0 client for the daemon's API: std::net only, so that the suite needs no
//! library beyond libc inside the VM.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// `GET path` from `addr` ("127.0.0.1:9645"): the status and the body.
pub fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("GET {path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("GET {path}: no end of headers in {text:?}") };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {path}: bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Ok((status, body))
}

/// `GET path` as JSON: the status and the document.
pub fn get_json(addr: &str, path: &str) -> Result<(u16, Value)> {
    let (status, body) = get(addr, path)?;
    let v = serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body:?}"))?;
    Ok((status, v))
}

/// The body of a chunked response (HTTP/1.0 requests should not get one, but be safe).
fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else { bail!("truncated chunk size") };
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        rest = after.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}
