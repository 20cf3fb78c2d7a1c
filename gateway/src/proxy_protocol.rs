//! PROXY protocol v2 from a TCP load balancer: the agent's own address, ahead of its bytes.
//!
//! A load balancer in TCP mode leaves TLS (and so the client certificate) end to end, but the
//! gateway sees the balancer's address as every agent's. With `send-proxy-v2` the balancer first
//! sends a binary header naming the agent's address. The listener reads one only from the
//! configured balancers (`proxy_protocol_from`): anyone else could claim any address. From those,
//! a connection that does not begin with the header's signature is served as it is (a health
//! probe or an operator on the same host), so the header is detected, not demanded. The header is
//! read exactly (16 bytes, then the length they give, at most 64 KiB), so the TLS or HTTP bytes
//! after it stay in the socket.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Command, Header, PROTOCOL_PREFIX};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The fixed part of a v2 header: signature (12), version and command, family and protocol,
/// length of the rest (2).
const FIXED: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no complete PROXY protocol header in time")]
    Timeout,
    #[error("connection closed within the PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid PROXY protocol v2 header: {0}")]
    Invalid(String),
}

/// Reads the PROXY protocol v2 header `stream` begins with, if it does, by `deadline`. Returns
/// the agent's address it names: `None` without a header, for a `LOCAL` header (the balancer's
/// own health check) and for addresses that are not IP.
pub async fn read_header(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<Option<SocketAddr>, ProxyError> {
    if !begins_with_signature(stream, deadline).await? {
        return Ok(None);
    }
    let mut header = vec![0u8; FIXED];
    read_exact(stream, &mut header, deadline).await?;
    let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(FIXED + rest, 0);
    read_exact(stream, &mut header[FIXED..], deadline).await?;
    let header = Header::try_from(header.as_slice())
        .map_err(|error| ProxyError::Invalid(error.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        Addresses::IPv6(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

/// Whether the first bytes are the v2 signature, deciding as soon as they differ from it.
async fn begins_with_signature(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<bool, ProxyError> {
    let mut first = [0u8; FIXED];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut first))
            .await
            .map_err(|_| ProxyError::Timeout)??;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        let seen = &first[..n.min(PROTOCOL_PREFIX.len())];
        if !PROTOCOL_PREFIX.starts_with(seen) {
            return Ok(false);
        }
        if n >= FIXED {
            return Ok(true);
        }
        // Part of a signature: peek returns at once while anything is buffered, so give the
        // rest a moment to arrive. Balancers send the header in one write; this is the rare
        // case of a split segment.
        if Instant::now() >= deadline {
            return Err(ProxyError::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn read_exact(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    deadline: Instant,
) -> Result<(), ProxyError> {
    match tokio::time::timeout_at(deadline, stream.read_exact(buffer)).await {
        Err(_) => Err(ProxyError::Timeout),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProxyError::Closed)
        }
        Ok(Err(error)) => Err(error.into()),
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: (what the test writes to, what the gateway reads).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn header(command: Command, source: &str) -> Vec<u8> {
        let source: SocketAddr = source.parse().unwrap();
        let destination: SocketAddr = if source.is_ipv4() {
            "192.0.2.1:4320".parse().unwrap()
        } else {
            "[2001:db8::1]:4320".parse().unwrap()
        };
        Builder::with_addresses(
            Version::Two | command,
            Protocol::Stream,
            (source, destination),
        )
        .build()
        .unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[tokio::test]
    async fn the_agents_address_comes_from_the_header_and_what_follows_stays() {
        for source in ["203.0.113.7:4242", "[2001:db8::7]:4242"] {
            let (mut client, mut server) = pair().await;
            let mut bytes = header(Command::Proxy, source);
            bytes.extend_from_slice(b"GET /");
            client.write_all(&bytes).await.unwrap();
            let address = read_header(&mut server, soon()).await.unwrap();
            assert_eq!(address, Some(source.parse().unwrap()));
            let mut next = [0u8; 5];
            server.read_exact(&mut next).await.unwrap();
            assert_eq!(&next, b"GET /");
        }
    }

    #[tokio::test]
    async fn without_a_header_nothing_is_read() {
        let (mut client, mut server) = pair().await;
        // A TLS ClientHello's first bytes.
        client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        assert_eq!(read_header(&mut server, soon()).await.unwrap(), None);
        let mut next = [0u8; 3];
        server.read_exact(&mut next).await.unwrap();
        assert_eq!(next, [0x16, 0x03, 0x01]);
    }

    #[tokio::test]
    async fn a_local_header_keeps_the_socket_address() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(&header(Command::Local, "203.0.113.7:4242"))
            .await
            .unwrap();
        assert_eq!(read_header(&mut server, soon()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_header_split_in_two_writes_is_read_whole() {
        let (mut client, mut server) = pair().await;
        let bytes = header(Command::Proxy, "203.0.113.7:4242");
        client.write_all(&bytes[..5]).await.unwrap();
        let reading = tokio::spawn(async move { read_header(&mut server, soon()).await });
        tokio::task::yield_now().await;
        client.write_all(&bytes[5..]).await.unwrap();
        assert_eq!(
            reading.await.unwrap().unwrap(),
            Some("203.0.113.7:4242".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn a_truncated_or_stalled_header_is_refused() {
        let (mut client, mut server) = pair().await;
        let bytes = header(Command::Proxy, "203.0.113.7:4242");
        client.write_all(&bytes[..20]).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(200);
        let error = read_header(&mut server, deadline).await.unwrap_err();
        assert!(matches!(error, ProxyError::Timeout), "{error}");
        drop(client);

        let (mut client, mut server) = pair().await;
        let mut bad = bytes.clone();
        bad[12] = 0x11; // version 1 in the binary format does not exist
        client.write_all(&bad).await.unwrap();
        let error = read_header(&mut server, soon()).await.unwrap_err();
        assert!(matches!(error, ProxyError::Invalid(_)), "{error}");
    }
}
